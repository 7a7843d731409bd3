"""`lakehouse backfill` builds every layer by default and ends each run with fresh scores; `query` sees them all."""

import json

from click.testing import CliRunner

from cli.main import cli


def invoke(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_default_backfill_builds_every_layer_and_the_scores(tmp_path, monkeypatch):
    from dagster._core.definitions.partitions.subset.all import AllPartitionsSubset

    def walk(*_args, **_kwargs):
        raise AssertionError("a run listed every symbol x day partition key")

    # Listing every key costs seconds at 100 symbols since 2017; no step of a run may need it.
    monkeypatch.setattr(AllPartitionsSubset, "get_partition_keys", walk)
    assert invoke("symbols", "add", "BTC/USDT", "--start", "2024-01-01").exit_code == 0
    result = invoke("backfill", "--start", "2024-01-01", "--end", "2024-01-02")
    assert result.exit_code == 0, result.output
    # 2 days x (raw_ohlcv, clean_bars, rejected_candles, indicators, signals): each written partition counted.
    assert "backfill: 10/10 done (0 failed)" in result.output
    assert result.output.splitlines()[-1] == "2 partitions x 5 asset(s) in 1 run(s): 1 succeeded, 0 failed"

    out = invoke("query", "select symbol, interval, trend, score from scores", "--format", "json")
    [row] = json.loads(out.output)
    assert (row["symbol"], row["interval"]) == ("BTC/USDT", "1h") and -100 <= row["score"] <= 100
    out = invoke("query", "select count(*) as n from clean_bars where date = '2024-01-02' and interval = '1d'",
                 "--format", "csv")
    assert out.output == "n\n1\n"
    for layer in ("rejected_candles", "indicators", "signals"):
        assert invoke("query", f"select count(*) as n from {layer}", "--format", "csv").exit_code == 0

    # Each layer's own checks ran in the run; the per-symbol freshness report did not (the repair sensor
    # records it: inside a run it would cost a walk over every partition key of raw_ohlcv).
    from dagster import AssetCheckKey, AssetKey, DagsterInstance

    from assets.instance_audit import SYMBOL_FRESHNESS_CHECK_KEY

    with DagsterInstance.get() as instance:
        checked = instance.get_latest_asset_check_evaluation_record(AssetCheckKey(AssetKey("clean_bars"), "ohlc_sanity"))
        assert checked is not None and checked.event.dagster_event.event_specific_data.passed
        assert instance.get_latest_asset_check_evaluation_record(SYMBOL_FRESHNESS_CHECK_KEY) is None


def test_symbols_sharing_a_run_get_the_same_files_as_each_alone(tmp_path, monkeypatch):
    import polars as pl
    from dagster import AssetKey, DagsterInstance

    def lakehouse(name: str, *backfills: list[str]):
        monkeypatch.setenv("LAKEHOUSE_ROOT", str(tmp_path / name / "lake"))
        monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / name / "home"))
        (tmp_path / name / "home").mkdir(parents=True)
        assert invoke("symbols", "add", "BTC/USDT", "ETH/USDT", "SOL/USDT", "--start", "2024-03-01").exit_code == 0
        lines = []
        for args in backfills:
            result = invoke("backfill", "--start", "2024-03-01", "--end", "2024-03-03", *args)
            assert result.exit_code == 0, result.output
            lines.append(result.output.splitlines()[-1])
        with DagsterInstance.get() as instance:
            statuses = {a: sorted(instance.get_materialized_partitions(AssetKey(a)))
                        for a in ("raw_ohlcv", "clean_bars", "rejected_candles", "indicators", "signals")}
        return tmp_path / name / "lake", lines, statuses

    together, lines, statuses = lakehouse("together", [])
    assert lines == ["9 partitions x 5 asset(s) in 1 run(s): 1 succeeded, 0 failed"]
    alone, _, statuses_alone = lakehouse("alone", *[["--symbols", s] for s in ("BTC/USDT", "ETH/USDT", "SOL/USDT")])
    assert statuses == statuses_alone and len(statuses["signals"]) == 9

    files = sorted(p.relative_to(together) for p in together.rglob("*.parquet"))
    assert files == sorted(p.relative_to(alone) for p in alone.rglob("*.parquet"))
    assert {p.parts[0] for p in files} == {"raw_ohlcv", "clean_bars", "rejected_candles", "indicators", "signals",
                                           "scores"}
    for path in files:
        a, b = (pl.read_parquet(root / path) for root in (together, alone))
        stamps = [c for c in a.columns if c.endswith("_at")]  # when it was fetched or computed
        assert a.drop(stamps).equals(b.drop(stamps)), path


def test_scores_build_again_when_signals_land_while_they_are_built(tmp_path, monkeypatch):
    from dagster import AssetMaterialization, DagsterInstance, materialize

    import assets.scores as scores_module
    from definitions import build_resources

    assert invoke("symbols", "add", "BTC/USDT", "ETH/USDT", "--start", "2024-01-01").exit_code == 0
    assert invoke("backfill", "--start", "2024-01-01", "--end", "2024-01-02").exit_code == 0
    real = scores_module._latest_inputs
    landed = []

    def eth_not_yet_there(storage, exchange, symbol):
        # Another run's ETH signals land while this build reads: it sees none, then they are recorded.
        if symbol == "ETH/USDT" and not landed:
            landed.append(True)
            DagsterInstance.get().report_runless_asset_event(
                AssetMaterialization(asset_key="signals", partition="2024-01-02|ETH/USDT"))
            return None
        return real(storage, exchange, symbol)

    monkeypatch.setattr(scores_module, "_latest_inputs", eth_not_yet_there)
    with DagsterInstance.get() as instance:
        result = materialize([scores_module.scores], instance=instance, resources=build_resources())
        assert result.success and landed
        [event] = result.asset_materializations_for_node("scores")
        assert (event.metadata["builds"].value, event.metadata["symbols_scored"].value) == (2, 2)
    out = invoke("query", "select symbol from scores order by 1", "--format", "csv")
    assert out.output == "symbol\nBTC/USDT\nETH/USDT\n"
