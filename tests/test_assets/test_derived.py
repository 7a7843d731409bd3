"""The derived layers through real materializations on a temporary instance: raw -> clean -> indicators ->
signals -> scores, day-by-day vs one range run, dirty raw data, and the gates that blocking checks close."""

import datetime as dt

import numpy as np
import polars as pl
import pytest
from dagster import AssetKey, DagsterEventType, materialize

import lakehouse
import lakehouse.resample
from assets import clean_layer
from assets.derived import DERIVED_ASSETS, derived, scores
from assets.partitions import partition_key
from assets.raw import raw_ohlcv
from lakehouse import progress
from lakehouse.catalog import query
from lakehouse.gates import Gates
from lakehouse.schema import (
    CLEAN_BARS, INDICATOR_COLUMNS, INDICATORS, RAW_OHLCV, REJECTED_CANDLES, SCORES, SIGNALS,
)
from resources import SimulatedExchangeResource

from helpers import NOW_MS, add_symbols

D1 = dt.date(2024, 1, 1)
EX = "simulated"
LAYERS = (RAW_OHLCV, CLEAN_BARS, REJECTED_CANDLES, INDICATORS, SIGNALS)
CLEAN = [CLEAN_BARS, REJECTED_CANDLES]


def resources(lakehouse_resource):
    return {"exchange": SimulatedExchangeResource(outage_rate=0.0, now_ms=NOW_MS), "lakehouse": lakehouse_resource}


def range_tags(symbol, first, last):
    return {"dagster/asset_partition_range_start": str(partition_key(symbol, first)),
            "dagster/asset_partition_range_end": str(partition_key(symbol, last))}


def run(assets, lakehouse_resource, instance, *, key=None, tags=None, selection=None):
    return materialize(assets, partition_key=str(key) if key else None, tags=tags, selection=selection,
                       resources=resources(lakehouse_resource), instance=instance, raise_on_error=False)


def mats(result, layer):
    """{partition: metadata} of the layer's materializations in a run (multi-asset steps included)."""
    found = (e.event_specific_data.materialization for e in result.get_asset_materialization_events())
    return {m.partition: m.metadata for m in found if m.asset_key == AssetKey(layer)}


def check_evaluations(result):
    return {(e.event_specific_data.asset_key.to_user_string(), e.event_specific_data.check_name): e.event_specific_data
            for e in result.all_events if e.event_type == DagsterEventType.ASSET_CHECK_EVALUATION}


def failure_messages(result):
    out = []
    for event in result.all_events:
        if event.is_step_failure:
            err = event.step_failure_data.error
            out.append(event.step_key + ": " + " | ".join(e.message for e in _chain(err)))
    return out


def _chain(err):
    while err is not None:
        yield err
        err = err.cause


# raw -> scores ---------------------------------------------------------------------------------------------
def test_range_run_from_raw_to_scores_serves_every_layer(instance, storage, root, lakehouse_resource):
    add_symbols(instance, "BTC/USDT", "ETH/USDT")
    events = []
    with progress.subscribe(events.append):
        result = run([raw_ohlcv, *DERIVED_ASSETS], lakehouse_resource, instance,
                     tags=range_tags("BTC/USDT", D1, D1 + dt.timedelta(days=2)))
        assert result.success, failure_messages(result)
        eth = run([raw_ohlcv, *DERIVED_ASSETS], lakehouse_resource, instance, key=partition_key("ETH/USDT", D1))
        assert eth.success, failure_messages(eth)

    # One materialization per partition per layer; every written partition counted by the CLI's progress bar.
    keys = [f"2024-01-0{i}|BTC/USDT" for i in (1, 2, 3)]
    for layer in LAYERS:
        assert sorted(mats(result, layer)) == keys, layer
        assert sorted((e.symbol, e.day) for e in events if e.kind == "partition_done" and e.layer == layer) == [
            ("BTC/USDT", f"2024-01-0{i}") for i in (1, 2, 3)] + [("ETH/USDT", "2024-01-01")], layer

    # Each partition of the range run carries its own day's figures (not the run's totals), and says which
    # range it was computed with; no extra observation per day.
    for key in keys:
        clean_md = mats(result, CLEAN_BARS)[key]
        assert {k: clean_md[k].value for k in ("raw_rows", "bars_1m", "rejected_rows", "expected_minutes",
                                               "completeness_pct", "run_range", "run_days")} == {
            "raw_rows": 1440, "bars_1m": 1440, "rejected_rows": 0, "expected_minutes": 1440,
            "completeness_pct": 100.0, "run_range": "2024-01-01..2024-01-03", "run_days": 3}
        assert clean_md["bars"].value == {"1m": 1440, "5m": 288, "15m": 96, "1h": 24, "4h": 6, "1d": 1}
        raw_md = mats(result, RAW_OHLCV)[key]
        assert (raw_md["candles"].value, raw_md["first_candle"].value) == (1440, key[:10] + "T00:00:00Z")
    ind = {k: mats(result, INDICATORS)[k] for k in keys}
    # The first day has no 1d bar before it; the third has the first two: each day's warm-up is its own.
    assert ind[keys[0]]["warmup"].value["1d"] == {
        "history_days_read": 601, "warmup_bars_needed": 600, "warmup_bars_available": 0,
        "rows": 1, "rows_without_full_warmup": 1, "null_values": 13}
    assert ind[keys[2]]["warmup"].value["1d"]["warmup_bars_available"] == 2
    assert ind[keys[0]]["warmup"].value["1m"]["rows_without_full_warmup"] == 600
    assert "short history" in ind[keys[0]]["warmup_note"].value
    assert ind[keys[2]]["warmup"].value["1m"]["rows_without_full_warmup"] == 0
    assert [ind[k]["rows"].value for k in keys] == [1440 + 288 + 96 + 24 + 6 + 1] * 3
    signal_rows = {k: mats(result, SIGNALS)[k]["rows"].value for k in keys}
    assert signal_rows == {k: storage.read_partition(SIGNALS, EX, "BTC/USDT", dt.date.fromisoformat(k[:10])).height
                           for k in keys} and all(signal_rows.values())
    assert instance.fetch_observations(AssetKey(CLEAN_BARS), limit=10).records == []

    evaluations = check_evaluations(result)
    assert set(evaluations) == {(CLEAN_BARS, "ohlc_sanity"), (CLEAN_BARS, "unique_bars"),
                                (CLEAN_BARS, "rows_accounted"), (CLEAN_BARS, "completeness"),
                                (INDICATORS, "indicator_sanity"), (SIGNALS, "signals_reference_bars"),
                                (SCORES, "one_row_per_symbol")}
    assert all(e.passed for e in evaluations.values())
    assert Gates(storage).outcomes(CLEAN_BARS, EX, "BTC/USDT")[D1]["ohlc_sanity"].passed

    # Files: one per partition and layer, scores one table with a row per symbol.
    for layer in LAYERS:
        assert [s.ref.day for s in storage.list_partitions(layer, EX, "BTC/USDT")] == [
            D1 + dt.timedelta(days=i) for i in range(3)]
    table = storage.read_table(SCORES)
    assert table.get_column("symbol").to_list() == ["BTC/USDT", "ETH/USDT"]
    btc = table.row(0, named=True)
    assert btc["interval"] == "1h" and btc["timestamp"].isoformat() == "2024-01-03T23:00:00+00:00"
    assert -100 <= btc["score"] <= 100 and "EMA9" in btc["ingredients"]

    # The catalog exposes every layer as a view, scores included.
    counts = query(storage, " union all ".join(
        f"select '{layer}' as layer, count(*) as n from {layer}" for layer in (*LAYERS, SCORES))).rows()
    n = dict(counts)
    assert n[RAW_OHLCV] == 4320 + 1440 and n[REJECTED_CANDLES] == 0 and n[SCORES] == 2
    assert n[CLEAN_BARS] == 3 * (1440 + 288 + 96 + 24 + 6 + 1) + (1440 + 288 + 96 + 24 + 6 + 1)
    assert query(storage, "select count(*) from clean_bars where date = '2024-01-02' and interval = '1h' "
                          "and symbol = 'BTC/USDT'").item() == 24

    # ...and the Python API reads them.
    bars = lakehouse.read_bars("BTC/USDT", "1h", "2024-01-02", "2024-01-03", root=str(root))
    assert (bars.height, bars["interval"].unique().to_list(), bars["complete"].all()) == (48, ["1h"], True)
    ind = lakehouse.read_indicators("BTC/USDT", "1m", "2024-01-03", "2024-01-03", root=str(root))
    assert ind.height == 1440 and ind["warmup_ok"].all() and ind.select(INDICATOR_COLUMNS).null_count().sum_horizontal().item() == 0
    sig = lakehouse.read_signals("BTC/USDT", "2024-01-01", "2024-01-03", interval="1h", root=str(root))
    assert sig.height > 0 and set(sig["interval"]) == {"1h"} and sig["timestamp"].is_sorted()
    assert lakehouse.read_scores("ETH/USDT", root=str(root)).get_column("symbol").to_list() == ["ETH/USDT"]
    with pytest.raises(lakehouse.errors.UserInputError, match="unknown interval '2h'"):
        lakehouse.read_bars("BTC/USDT", "2h", "2024-01-01", root=str(root))


# day by day == one range run ---------------------------------------------------------------------------------
def _snapshot(storage, first, last):
    return {layer: storage.read_range(layer, EX, "BTC/USDT", first, last).sort(
        *(["interval"] if layer != REJECTED_CANDLES else []), "timestamp", *(["rule", "direction"] if layer == SIGNALS else []))
        for layer in (CLEAN_BARS, INDICATORS, SIGNALS)}


def test_day_by_day_runs_equal_one_range_run(instance, storage, lakehouse_resource):
    add_symbols(instance, "BTC/USDT")
    first, last = D1, D1 + dt.timedelta(days=3)
    assert run([raw_ohlcv], lakehouse_resource, instance, tags=range_tags("BTC/USDT", first, last)).success
    derived_assets = [raw_ohlcv, derived]
    selection = [CLEAN_BARS, REJECTED_CANDLES, INDICATORS, SIGNALS]

    ranged = run(derived_assets, lakehouse_resource, instance, tags=range_tags("BTC/USDT", first, last),
                 selection=selection)
    assert ranged.success, failure_messages(ranged)
    # The whole range in one step for the three layers: one read, one warm-up, one pass each.
    assert [e.step_key for e in ranged.all_events if e.event_type == DagsterEventType.STEP_START] == ["derived"]
    assert len(mats(ranged, INDICATORS)) == 4
    one_pass = _snapshot(storage, first, last)

    for i in range(4):  # the same days again, one single-partition run each, oldest first
        day = first + dt.timedelta(days=i)
        result = run(derived_assets, lakehouse_resource, instance, key=partition_key("BTC/USDT", day),
                     selection=selection)
        assert result.success, failure_messages(result)
    daily = _snapshot(storage, first, last)

    assert daily[CLEAN_BARS].equals(one_pass[CLEAN_BARS])
    a, b = daily[INDICATORS], one_pass[INDICATORS]
    assert a.select("timestamp", "interval", "close", "warmup_ok").equals(b.select("timestamp", "interval", "close", "warmup_ok"))
    for col in INDICATOR_COLUMNS:
        x, y = a[col].to_numpy(), b[col].to_numpy()
        assert (np.isnan(x) == np.isnan(y)).all(), col
        # Day 3's 1m values come from a run anchored 600 bars back, the range's from day 1: equal to ~1e-14.
        np.testing.assert_allclose(x, y, rtol=1e-9, atol=1e-9, err_msg=col)
    assert daily[SIGNALS].equals(one_pass[SIGNALS])
    assert daily[SIGNALS].height > 0


# one layer to the next in memory ---------------------------------------------------------------------------
SELECTION = [CLEAN_BARS, REJECTED_CANDLES, INDICATORS, SIGNALS]


def _files(storage, first, last):
    """{(layer, day): the day's file as read} of the derived layers."""
    days = [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]
    return {(layer, d): storage.read_partition(layer, EX, "BTC/USDT", d) for layer in (CLEAN_BARS, INDICATORS, SIGNALS)
            for d in days}


def test_each_layer_computes_from_the_one_before_in_memory_exactly_as_from_its_files(
        instance, storage, lakehouse_resource, monkeypatch):
    add_symbols(instance, "BTC/USDT")
    history, first, last = D1, D1 + dt.timedelta(days=2), D1 + dt.timedelta(days=5)
    assert run([raw_ohlcv], lakehouse_resource, instance, tags=range_tags("BTC/USDT", history, last)).success
    # Days before the range are on disk: the warm-up and the day before still come from files.
    assert run([raw_ohlcv, derived], lakehouse_resource, instance, selection=SELECTION,
               tags=range_tags("BTC/USDT", history, first - dt.timedelta(days=1))).success
    reads = []
    real_read_range = type(storage).read_range

    def spy(self, layer, exchange, symbol, start, end, **kw):
        reads.append((layer, start, end))
        return real_read_range(self, layer, exchange, symbol, start, end, **kw)

    monkeypatch.setattr(type(storage), "read_range", spy)
    in_memory = run([raw_ohlcv, derived], lakehouse_resource, instance, selection=SELECTION,
                    tags=range_tags("BTC/USDT", first, last))
    assert in_memory.success, failure_messages(in_memory)
    # Nothing this run computed was read back from its files.
    assert [r for r in reads if r[0] in (CLEAN_BARS, INDICATORS) and r[2] >= first] == []
    handed = _files(storage, first, last)

    monkeypatch.setattr("assets.glue.HANDOFF_ROWS", 0)  # over the budget: every layer reads the files back
    reads.clear()
    from_files = run([raw_ohlcv, derived], lakehouse_resource, instance, selection=SELECTION,
                     tags=range_tags("BTC/USDT", first, last))
    assert from_files.success, failure_messages(from_files)
    assert {r[0] for r in reads if r[2] == last} == {CLEAN_BARS, INDICATORS}  # read back, through the range
    read_back = _files(storage, first, last)
    for key, frame in handed.items():
        assert frame.equals(read_back[key]), key
    assert mats(in_memory, SIGNALS).keys() == mats(from_files, SIGNALS).keys()
    for layer in SELECTION:
        assert mats(in_memory, layer) == mats(from_files, layer), layer


def test_a_days_file_lands_after_its_upstream_days_file_and_not_at_all_when_that_write_fails(
        instance, storage, lakehouse_resource, monkeypatch):
    import time

    add_symbols(instance, "BTC/USDT")
    first, last = D1, D1 + dt.timedelta(days=3)
    assert run([raw_ohlcv], lakehouse_resource, instance, tags=range_tags("BTC/USDT", first, last)).success
    real_write = type(storage).write_partition

    def slow_clean(self, layer, exchange, symbol, day, df):
        if layer == CLEAN_BARS:
            time.sleep(0.15)  # later layers are computed and queued long before these land
        return real_write(self, layer, exchange, symbol, day, df)

    monkeypatch.setattr(type(storage), "write_partition", slow_clean)
    result = run([raw_ohlcv, derived], lakehouse_resource, instance, selection=SELECTION,
                 tags=range_tags("BTC/USDT", first, last))
    assert result.success, failure_messages(result)
    for i in range(4):
        day = first + dt.timedelta(days=i)
        clean, ind, sig = (storage.partition_modified_ns(layer, EX, "BTC/USDT", day)
                           for layer in (CLEAN_BARS, INDICATORS, SIGNALS))
        assert clean <= ind <= sig, day
        # (The audit takes a file older than its upstream day's file for outdated and rebuilds it.)

    broken = first + dt.timedelta(days=2)

    def failing_clean(self, layer, exchange, symbol, day, df):
        if layer == CLEAN_BARS and day == broken:
            time.sleep(0.15)
            raise OSError("No space left on device")
        return real_write(self, layer, exchange, symbol, day, df)

    for layer in (CLEAN_BARS, INDICATORS, SIGNALS):
        storage.delete_partition(layer, EX, "BTC/USDT", broken)
    monkeypatch.setattr(type(storage), "write_partition", failing_clean)
    failed = run([raw_ohlcv, derived], lakehouse_resource, instance, selection=SELECTION,
                 tags=range_tags("BTC/USDT", first, last))
    assert not failed.success
    assert any("No space left on device" in m for m in failure_messages(failed)), failure_messages(failed)
    # Neither the layer whose file failed nor any built on it is recorded as materialized, and no file of a
    # later layer stands above the missing one.
    assert not mats(failed, CLEAN_BARS) and not mats(failed, INDICATORS) and not mats(failed, SIGNALS)
    assert [storage.partition_modified_ns(layer, EX, "BTC/USDT", broken) for layer in (CLEAN_BARS, INDICATORS, SIGNALS)] \
        == [None, None, None]


# dirty raw data -------------------------------------------------------------------------------------------
def _raw_row(minute, o=100.0, h=101.0, lo=99.0, c=100.5, v=5.0, fetched=0, seconds=0, day=D1):
    ts = dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc) + dt.timedelta(minutes=minute, seconds=seconds)
    return {"timestamp": ts, "open": o, "high": h, "low": lo, "close": c, "volume": v, "exchange": EX,
            "symbol": "BTC/USDT", "fetched_at": dt.datetime(2024, 1, 2, tzinfo=dt.timezone.utc) + dt.timedelta(seconds=fetched)}


def test_dirty_raw_rows_end_in_rejects_with_their_reason(instance, storage, lakehouse_resource):
    add_symbols(instance, "BTC/USDT")
    rows = [_raw_row(m) for m in range(10)]  # 00:00..00:09 good
    rows += [
        _raw_row(3),                                   # exact duplicate of 00:03
        _raw_row(4, c=100.7, fetched=-60),             # conflicting duplicate fetched earlier: loses
        _raw_row(20, h=98.0, lo=99.0, o=98.5, c=98.5),  # high < low
        _raw_row(21, v=-1.0),                          # negative volume
        _raw_row(22, seconds=30),                      # misaligned timestamp
        _raw_row(23, c=float("nan")),                  # non-finite
        _raw_row(24, o=102.0),                         # open above high
        _raw_row(5, day=D1 + dt.timedelta(days=1)),    # a candle of another day stored in this day's file
    ]
    storage.write_partition(RAW_OHLCV, EX, "BTC/USDT", D1, pl.DataFrame(rows))
    result = run([derived], lakehouse_resource, instance, key=partition_key("BTC/USDT", D1), selection=CLEAN)
    assert result.success, failure_messages(result)  # completeness only warns

    rejects = storage.read_partition(REJECTED_CANDLES, EX, "BTC/USDT", D1)
    assert sorted(rejects["reason"].to_list()) == sorted([
        "duplicate", "conflicting_duplicate", "high_below_low", "negative_volume", "misaligned_timestamp",
        "non_finite", "open_outside_range", "outside_partition_day"])
    loser = rejects.filter(pl.col("reason") == "conflicting_duplicate").row(0, named=True)
    assert (loser["close"], loser["timestamp"].minute) == (100.7, 4)  # the raw row, as fetched
    assert rejects.filter(pl.col("reason") == "negative_volume")["volume"].to_list() == [-1.0]

    bars = storage.read_partition(CLEAN_BARS, EX, "BTC/USDT", D1)
    one_minute = bars.filter(pl.col("interval") == "1m")
    assert one_minute.height == 10 and one_minute["timestamp"].is_unique().all()
    assert len(rows) == one_minute.height + rejects.height  # nothing silently dropped
    five = bars.filter(pl.col("interval") == "5m").select("candles", "complete").rows()
    assert five == [(5, True), (5, True)]  # gaps stay gaps: no bar for 00:10..23:59

    md = mats(result, CLEAN_BARS)[str(partition_key("BTC/USDT", D1))]
    assert {k: md[k].value for k in ("raw_rows", "bars_1m", "rejected_rows", "missing_minutes")} == {
        "raw_rows": 18, "bars_1m": 10, "rejected_rows": 8, "missing_minutes": 1430}
    assert md["rejected"].value == {
        "non_finite": 1, "misaligned_timestamp": 1, "high_below_low": 1, "open_outside_range": 1,
        "close_outside_range": 0, "negative_volume": 1, "duplicate": 1, "conflicting_duplicate": 1,
        "outside_partition_day": 1}
    assert mats(result, REJECTED_CANDLES)[str(partition_key("BTC/USDT", D1))]["reasons"].value == md["rejected"].value
    evaluations = check_evaluations(result)
    assert evaluations[(CLEAN_BARS, "rows_accounted")].passed
    completeness = evaluations[(CLEAN_BARS, "completeness")]
    assert not completeness.passed and completeness.severity.value == "WARN"
    assert completeness.metadata["gaps"].value == [["2024-01-01", "2024-01-01T00:10:00Z", "2024-01-02T00:00:00Z", 1430]]
    assert Gates(storage).failed_blocking(CLEAN_BARS, EX, "BTC/USDT", D1) == []  # a WARN does not close the gate


# gates --------------------------------------------------------------------------------------------------
def _corrupt_resample(original):
    def corrupted(bars_1m, intervals=lakehouse.resample.DEFAULT_INTERVALS):
        out = original(bars_1m, intervals)
        bad = (pl.col("interval") == "1h") & (pl.col("timestamp").dt.hour() == 5)
        return out.with_columns(pl.when(bad).then(pl.col("low") - 1e6).otherwise(pl.col("high")).alias("high"))
    return corrupted


def test_blocking_check_stops_the_run_and_gates_later_runs(instance, storage, lakehouse_resource, monkeypatch):
    add_symbols(instance, "BTC/USDT")
    key = partition_key("BTC/USDT", D1)
    assert run([raw_ohlcv], lakehouse_resource, instance, tags=range_tags("BTC/USDT", D1, D1 + dt.timedelta(days=1))).success
    monkeypatch.setattr(clean_layer, "resample", _corrupt_resample(clean_layer.resample))

    # Same run: clean_bars is written (and says why it failed) but nothing downstream runs.
    result = run([raw_ohlcv, *DERIVED_ASSETS], lakehouse_resource, instance, key=key,
                 selection=[CLEAN_BARS, REJECTED_CANDLES, INDICATORS, SIGNALS, SCORES])
    assert not result.success
    assert any("blocking asset check failed" in m and "ohlc_sanity" in m for m in failure_messages(result))
    sanity = check_evaluations(result)[(CLEAN_BARS, "ohlc_sanity")]
    assert not sanity.passed and sanity.metadata["high_below_low"].value == 1
    assert sanity.metadata["failed_partitions"].value == ["BTC/USDT 2024-01-01"]
    assert not mats(result, INDICATORS)
    assert list(storage.list_partitions(INDICATORS)) == [] and not storage.table_path(SCORES).exists()
    assert Gates(storage).failed_blocking(CLEAN_BARS, EX, "BTC/USDT", D1) == ["ohlc_sanity"]

    # Later runs: refuse to build on it, without retries; the next day too, since its warm-up reads it.
    monkeypatch.undo()
    for day in (D1, D1 + dt.timedelta(days=1)):
        if day != D1:
            assert run([derived], lakehouse_resource, instance, key=partition_key("BTC/USDT", day), selection=CLEAN).success
        later = run([derived], lakehouse_resource, instance, key=partition_key("BTC/USDT", day), selection=[INDICATORS])
        assert not later.success
        [message] = failure_messages(later)
        assert "refusing to build on clean_bars partitions whose latest blocking check failed" in message
        assert "2024-01-01: ohlc_sanity" in message and "rematerialize clean_bars" in message
        assert not [e for e in later.all_events if e.event_type == DagsterEventType.STEP_UP_FOR_RETRY]
        assert list(storage.list_partitions(INDICATORS)) == []

    # Rematerializing clean_bars with the bug fixed reopens the gate.
    assert run([derived], lakehouse_resource, instance, key=key, selection=CLEAN).success
    assert Gates(storage).failed_blocking(CLEAN_BARS, EX, "BTC/USDT", D1) == []
    assert run([derived], lakehouse_resource, instance, key=key, selection=[INDICATORS]).success


def test_missing_upstream_partition_is_refused_clearly(instance, storage, lakehouse_resource):
    add_symbols(instance, "BTC/USDT")
    result = run([derived], lakehouse_resource, instance, key=partition_key("BTC/USDT", D1), selection=[INDICATORS])
    assert not result.success
    [message] = failure_messages(result)
    assert "clean_bars has no partition for 1 day(s) (2024-01-01); materialize clean_bars for them first" in message


def test_scores_keep_the_last_good_row_of_a_gated_symbol(instance, storage, lakehouse_resource):
    add_symbols(instance, "BTC/USDT")
    assert run([raw_ohlcv, *DERIVED_ASSETS], lakehouse_resource, instance, key=partition_key("BTC/USDT", D1)).success
    before = storage.read_table(SCORES)
    # A later check of the latest signals partition failed (e.g. its bars were rewritten): scores must not use it.
    Gates(storage).record_check(SIGNALS, EX, "BTC/USDT", D1, "signals_reference_bars", False)
    storage.write_partition(SIGNALS, EX, "BTC/USDT", D1, storage.read_partition(SIGNALS, EX, "BTC/USDT", D1).clear())
    result = run([scores], lakehouse_resource, instance)
    assert result.success
    md = result.asset_materializations_for_node(SCORES)[0].metadata
    assert md["symbols_kept_blocked"].value == 1
    assert md["blocked"].value == {"BTC/USDT": {"signals 2024-01-01": ["signals_reference_bars"]}}
    assert storage.read_table(SCORES).equals(before)


def test_every_layer_has_the_freshness_policy_from_settings():
    from definitions import defs

    graph = defs.resolve_asset_graph()
    for layer in (*LAYERS, SCORES):
        policy = graph.get(AssetKey(layer)).freshness_policy
        assert policy is not None, layer
        assert (policy.fail_window.to_timedelta(), policy.warn_window.to_timedelta()) == (
            dt.timedelta(hours=24), dt.timedelta(hours=2)), layer
