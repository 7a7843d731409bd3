import json

import pytest
from click.testing import CliRunner
from dagster import AssetKey, DagsterInstance

from assets.partitions import SYMBOLS_PARTITION
from cli.main import cli
from lakehouse.registry import Registry


@pytest.fixture
def run(monkeypatch):
    def invoke(*args):
        return CliRunner().invoke(cli, list(args), catch_exceptions=False)

    return invoke


def tracked():
    return DagsterInstance.get().get_dynamic_partitions(SYMBOLS_PARTITION)


def test_add_list_remove(run, tmp_path):
    result = run("symbols", "add", "btc/usdt", "ETH/USDT", "--start", "2024-01-01")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "added BTC/USDT on simulated from 2024-01-01 (listed 2017-08-17)",
        "added ETH/USDT on simulated from 2024-01-01 (listed 2017-08-17)",
    ]
    assert sorted(tracked()) == ["BTC/USDT", "ETH/USDT"]
    listed = json.loads(run("symbols", "list", "--json").output)
    assert [(r["symbol"], r["start"], r["in_dagster"]) for r in listed] == [
        ("BTC/USDT", "2024-01-01", True), ("ETH/USDT", "2024-01-01", True)]
    assert run("symbols", "remove", "ETH/USDT").exit_code == 0
    assert tracked() == ["BTC/USDT"]


def test_unknown_symbol_is_a_clear_error_and_nothing_is_added(run, tmp_path):
    result = run("symbols", "add", "BTC/USDT", "FOO/USDT")
    assert result.exit_code == 2
    assert "simulated does not list FOO/USDT" in result.output and "Nothing was added" in result.output
    assert tracked() == []
    assert Registry(tmp_path / "lake").load() == {}


@pytest.mark.parametrize("symbol", ["../../etc/passwd", "BTC\\USDT", "BTC|USDT"])
def test_symbol_with_path_characters_is_refused(run, symbol):
    result = run("symbols", "add", symbol)
    assert result.exit_code == 2
    assert "invalid symbol" in result.output
    assert tracked() == []


def test_start_before_listing_is_clamped_and_said(run):
    result = run("symbols", "add", "SOL/USDT", "--start", "2019-01-01")
    assert result.exit_code == 0
    assert "SOL/USDT: start 2019-01-01 is before its listing on 2020-08-11; history starts 2020-08-11." in result.output
    assert "added SOL/USDT on simulated from 2020-08-11" in result.output


def test_unknown_exchange_id(run, monkeypatch):
    monkeypatch.setenv("LAKEHOUSE_EXCHANGE", "binanse")
    result = run("symbols", "add", "BTC/USDT")
    assert result.exit_code == 2
    assert "unknown exchange 'binanse'. Did you mean binance" in result.output


@pytest.mark.parametrize("args, message", [
    (["--start", "2024-02-30"], "invalid --start '2024-02-30': expected YYYY-MM-DD"),
    (["--start", "yesterday"], "invalid --start 'yesterday'"),
    (["--start", "2024-01-05", "--end", "2024-01-01"], "start 2024-01-05 is after end 2024-01-01"),
    (["--symbols", "XRP/USDT"], "not tracked: XRP/USDT; add with: lakehouse symbols add XRP/USDT"),
    (["--assets", "bogus"], "unknown asset(s) bogus"),
])
def test_backfill_usage_errors_exit_2_and_write_nothing(run, tmp_path, args, message):
    assert run("symbols", "add", "BTC/USDT", "--start", "2024-01-01").exit_code == 0
    result = run("backfill", *args)
    assert result.exit_code == 2
    assert message in result.output
    assert not (tmp_path / "lake" / "raw_ohlcv").exists()


def materialized(asset: str = "raw_ohlcv") -> list[str]:
    return sorted(DagsterInstance.get().get_materialized_partitions(AssetKey(asset)))


def test_backfill_succeeds_with_progress_and_summary(run):
    run("symbols", "add", "BTC/USDT", "ETH/USDT", "--start", "2024-01-01")
    result = run("backfill", "--start", "2024-01-01", "--end", "2024-01-03", "--assets", "raw_ohlcv")
    assert result.exit_code == 0, result.output
    assert "backfill: 6/6 done (0 failed)" in result.output
    # Both symbols have the same days: one run covers them, and each partition is still its own in Dagster.
    assert result.output.splitlines()[-1] == "6 partitions x 1 asset(s) in 1 run(s): 1 succeeded, 0 failed"
    assert materialized() == [f"2024-01-0{d}|{s}" for d in (1, 2, 3) for s in ("BTC/USDT", "ETH/USDT")]
    [run_record] = DagsterInstance.get().get_run_records()
    assert (run_record.dagster_run.tags["dagster/asset_partition_range_start"],
            run_record.dagster_run.tags["dagster/asset_partition_range_end"]) == (
        "2024-01-01|BTC/USDT", "2024-01-03|ETH/USDT")
    event = DagsterInstance.get().get_latest_materialization_event(AssetKey("raw_ohlcv"))
    assert (event.asset_materialization.metadata["run_days"].value,
            event.asset_materialization.metadata["run_partitions"].value) == (3, 6)
    out = run("query", "select symbol, count(*) as n from raw_ohlcv group by 1 order by 1", "--format", "csv")
    assert out.output == "symbol,n\nBTC/USDT,4320\nETH/USDT,4320\n"


def test_backfill_failure_exits_1_naming_what_failed(run):
    run("symbols", "add", "BTC/USDT", "--start", "2024-01-01")
    DagsterInstance.get().add_dynamic_partitions(SYMBOLS_PARTITION, ["NOPE/USDT"])  # added behind our back
    result = run("backfill", "--start", "2024-01-01", "--end", "2024-01-02", "--assets", "raw_ohlcv", "--json")
    assert result.exit_code == 1
    summary = json.loads(result.output[result.output.index("{"):])
    # The two symbols shared a run, which failed; each then ran alone, so only the bad one fails.
    assert "run over BTC/USDT..NOPE/USDT 2024-01-01..2024-01-02 failed" in result.output
    assert [(r["symbols"], r["success"], r["split"]) for r in summary["runs_detail"]] == [
        (["BTC/USDT", "NOPE/USDT"], False, True), (["BTC/USDT"], True, False), (["NOPE/USDT"], False, False)]
    assert (summary["succeeded_runs"], summary["failed_runs"], summary["split_runs"]) == (1, 1, 1)
    failed = summary["failed"][0]
    assert (failed["symbol"], failed["start"], failed["end"]) == ("NOPE/USDT", "2024-01-01", "2024-01-02")
    assert "does not list NOPE/USDT" in failed["error"]
    assert materialized() == ["2024-01-01|BTC/USDT", "2024-01-02|BTC/USDT"]
    assert "backfill: 4/4 done (2 failed)" in result.output  # each partition counted once


def test_query_formats_and_bad_sql(run):
    assert run("query", "select 1 as a, 'x' as b", "--format", "json").stdout.strip() == '[\n  {\n    "a": 1,\n    "b": "x"\n  }\n]'
    bad = run("query", "select * from nowhere")
    assert bad.exit_code == 2 and "query failed" in bad.output


def test_python_dash_m_cli_is_the_lakehouse_command():
    import subprocess
    import sys
    from pathlib import Path

    result = subprocess.run([sys.executable, "-m", "cli", "backfill", "--help"], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[2], timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage: lakehouse backfill [OPTIONS]")


# The console script ends with os._exit (no interpreter teardown): what Python's exit would still do must happen.
FAST_EXIT_PROBE = """
import atexit, sys, threading, time
from pathlib import Path
import click
from cli.main import cli, main

out = Path(sys.argv[1])

@cli.command("probe")
@click.argument("code", type=int)
def probe(code):
    def late():
        time.sleep(0.5)
        (out / "thread").write_text("done")
    threading.Thread(target=late).start()  # not a daemon: Python waits for it, so must we
    atexit.register(lambda: (out / "atexit").write_text("ran"))
    click.echo("x" * 200_000)  # more than a pipe holds: all of it must reach the reader
    sys.exit(code)

sys.argv = ["lakehouse", "probe", sys.argv[2]]
main()
"""


@pytest.mark.parametrize("code", [0, 1, 2])
def test_console_script_exit_waits_for_threads_runs_atexit_and_keeps_the_code(tmp_path, code):
    import subprocess
    import sys
    from pathlib import Path

    result = subprocess.run([sys.executable, "-c", FAST_EXIT_PROBE, str(tmp_path), str(code)], capture_output=True,
                            text=True, cwd=Path(__file__).resolve().parents[2], timeout=60)
    assert result.returncode == code, result.stderr
    assert result.stdout == "x" * 200_000 + "\n"
    assert (tmp_path / "thread").read_text() == "done"
    assert (tmp_path / "atexit").read_text() == "ran"


def test_console_script_usage_error_exits_2_with_its_message():
    import subprocess
    import sys
    from pathlib import Path

    result = subprocess.run([sys.executable, "-m", "cli", "backfill", "--start", "nope"], capture_output=True,
                            text=True, cwd=Path(__file__).resolve().parents[2], timeout=60)
    assert result.returncode == 2
    assert "invalid --start 'nope'" in result.stderr and "Traceback" not in result.stderr


def test_eta_counts_the_pace_since_the_first_partition_not_the_start(monkeypatch):
    import io

    from cli import progress as cli_progress

    now = [100.0]
    monkeypatch.setattr(cli_progress.time, "monotonic", lambda: now[0])
    out = io.StringIO()
    with cli_progress.ProgressDisplay(10, "backfill", stream=out, force_plain=True, interval_s=0) as display:
        now[0] = 104.0  # 4 s of starting the run before the first partition lands
        display.advance(rows=1440)
        assert display.eta_s() is None  # one partition tells no pace yet
        now[0] = 105.0
        display.advance(rows=1440)
        assert display.eta_s() == 8.0  # 1 s a partition, 8 left (counting the start: 20 s)
    assert "backfill: 2/10 done (0 failed) 2,880 rows, elapsed 5s, ETA 8s" in out.getvalue()
