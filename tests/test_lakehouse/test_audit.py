import datetime as dt

import polars as pl
import pytest

from lakehouse.audit import Auditor, audited_layers, with_descendants
from lakehouse.config import Settings
from lakehouse.exchange.simulated import SimulatedExchange, SimulatedSource
from lakehouse.ingest import ingest_days
from lakehouse.registry import TrackedSymbol
from lakehouse.schema import CLEAN_BARS, RAW_OHLCV
from lakehouse.status import gap_rows, symbol_rows
from lakehouse.timeutil import MINUTE_MS, day_start_ms

from helpers import NOW_MS

EX = "simulated"
D8, D9, D10 = dt.date(2024, 3, 8), dt.date(2024, 3, 9), dt.date(2024, 3, 10)
RAW_ONLY = [RAW_OHLCV]
WITH_CLEAN = [RAW_OHLCV, CLEAN_BARS]


def tracked(symbol="BTC/USDT", start=D8, listing=dt.date(2017, 8, 17)):
    return TrackedSymbol(symbol, EX, start, listing, "")


class Clock:
    """A wall clock the test moves by hand (retry delays are wall-clock minutes)."""

    def __init__(self):
        self.ms = 1_700_000_000_000

    def __call__(self):
        return self.ms

    def advance(self, minutes):
        self.ms += int(minutes * MINUTE_MS)


def settings(**kw):
    return Settings(**kw)


def auditor(storage, layers=RAW_ONLY, clock=None, **kw):
    return Auditor(storage, settings(**kw), layers, **({"wall_clock": clock} if clock else {}))


def write_clean(storage, symbol, day):
    """A stand-in clean_bars partition built from raw (the real layer is another module's business)."""
    raw = storage.read_partition(RAW_OHLCV, EX, symbol, day)
    storage.write_partition(CLEAN_BARS, EX, symbol, day, raw.with_columns(
        interval=pl.lit("1m"), candles=pl.lit(1, pl.Int32), complete=pl.lit(True)))


def found(audit):
    return [(f.layer, f.symbol, str(f.day), f.state) for f in audit.findings]


def plan(audit):
    return [(r.action, r.symbol, str(r.start), str(r.end), r.layers, r.reasons_text) for r in audit.plan]


def test_layer_graph_uses_only_layers_that_exist():
    assert audited_layers(["raw_ohlcv", "clean_bars", "signals"]) == ["raw_ohlcv", "clean_bars"]
    assert audited_layers(["clean_bars"]) == []
    layers = ["raw_ohlcv", "clean_bars", "rejected_candles", "indicators", "signals"]
    assert with_descendants(["clean_bars"], layers) == ("clean_bars", "indicators", "signals")
    assert with_descendants(["signals", "rejected_candles"], layers) == ("rejected_candles", "signals")


def test_healthy_lakehouse_plans_nothing_and_a_warm_audit_reads_no_file(storage, sim_exchange):
    ingest_days(sim_exchange, storage, "BTC/USDT", [D8, D9, D10])
    cold = auditor(storage)
    audit = cold.run([tracked()], NOW_MS)
    assert (audit.findings, audit.plan, cold.manifest.files_read) == ([], [], 3)
    assert audit.summary() == ("0 missing, 0 incomplete, 0 stale, 0 invalid, 0 outdated; 0 partitions in flight; "
                               "0 confirmed source gaps (audited 3 partitions of 1 symbol(s) x 1 layer(s))")
    warm = auditor(storage)
    assert warm.run([tracked()], NOW_MS).findings == []
    assert warm.manifest.files_read == 0


def test_each_kind_of_damage_is_classified_from_the_files(storage, sim_exchange):
    days = [dt.date(2024, 3, d) for d in range(4, 11)]
    ingest_days(sim_exchange, storage, "BTC/USDT", days)
    for d in days:
        write_clean(storage, "BTC/USDT", d)
    storage.delete_partition(RAW_OHLCV, EX, "BTC/USDT", days[0])                      # 03-04 missing
    raw5 = storage.read_partition(RAW_OHLCV, EX, "BTC/USDT", days[1])
    storage.write_partition(RAW_OHLCV, EX, "BTC/USDT", days[1],                        # 03-05 minutes removed
                            raw5.filter(pl.col("timestamp").dt.hour() != 10))
    path = storage.partition_path(RAW_OHLCV, EX, "BTC/USDT", days[2])                  # 03-06 truncated
    path.write_bytes(path.read_bytes()[:300])
    storage.write_partition(RAW_OHLCV, EX, "BTC/USDT", days[3], raw5.clear())          # 03-07 empty (an outage)
    storage.delete_partition(CLEAN_BARS, EX, "BTC/USDT", days[4])                      # 03-08 derived missing
    storage.write_partition(RAW_OHLCV, EX, "BTC/USDT", days[5],                        # 03-09 upstream rewritten
                            storage.read_partition(RAW_OHLCV, EX, "BTC/USDT", days[5]))
    later = NOW_MS + 10 * MINUTE_MS                                                    # 03-10 is now stale
    audit = auditor(storage, WITH_CLEAN).run([tracked(start=days[0])], later)
    assert found(audit) == [
        ("raw_ohlcv", "BTC/USDT", "2024-03-04", "missing"),
        ("raw_ohlcv", "BTC/USDT", "2024-03-05", "incomplete"),
        ("clean_bars", "BTC/USDT", "2024-03-05", "outdated"),
        ("raw_ohlcv", "BTC/USDT", "2024-03-06", "invalid"),
        ("clean_bars", "BTC/USDT", "2024-03-06", "outdated"),
        ("raw_ohlcv", "BTC/USDT", "2024-03-07", "incomplete"),
        ("clean_bars", "BTC/USDT", "2024-03-07", "outdated"),
        ("clean_bars", "BTC/USDT", "2024-03-08", "missing"),
        ("clean_bars", "BTC/USDT", "2024-03-09", "outdated"),
        ("raw_ohlcv", "BTC/USDT", "2024-03-10", "stale"),
    ]
    details = {(f.layer, str(f.day)): f.detail for f in audit.findings}
    assert details[("raw_ohlcv", "2024-03-05")] == (
        f"gaps {day_start_ms(days[1]) + 600 * MINUTE_MS}-{day_start_ms(days[1]) + 660 * MINUTE_MS}")
    assert details[("raw_ohlcv", "2024-03-06")].startswith("unreadable: ")
    assert details[("raw_ohlcv", "2024-03-10")] == "newest candle 2024-03-10T12:33:00Z"
    # Raw damage is re-fetched with the derived layer in the same run; derived-only damage is only rebuilt.
    assert plan(audit) == [
        ("refetch", "BTC/USDT", "2024-03-10", "2024-03-10", ("raw_ohlcv", "clean_bars"), "1 stale"),
        ("refetch", "BTC/USDT", "2024-03-04", "2024-03-07", ("raw_ohlcv", "clean_bars"),
         "1 missing, 2 incomplete, 1 invalid"),
        ("rebuild", "BTC/USDT", "2024-03-08", "2024-03-09", ("clean_bars",), "1 missing, 1 outdated"),
    ]


def test_derived_partition_waits_for_a_missing_upstream(storage, sim_exchange):
    ingest_days(sim_exchange, storage, "BTC/USDT", [D8, D9])
    write_clean(storage, "BTC/USDT", D8)
    storage.delete_partition(RAW_OHLCV, EX, "BTC/USDT", D9)
    audit = auditor(storage, WITH_CLEAN).run([tracked()], NOW_MS)
    blocked = [(f.layer, str(f.day), f.blocked_by_upstream) for f in audit.findings if f.layer == CLEAN_BARS]
    assert blocked == [("clean_bars", "2024-03-09", True), ("clean_bars", "2024-03-10", True)]
    assert plan(audit) == [("refetch", "BTC/USDT", "2024-03-09", "2024-03-10", ("raw_ohlcv", "clean_bars"), "2 missing")]


def test_in_flight_partitions_are_not_planned_again(storage, sim_exchange):
    ingest_days(sim_exchange, storage, "BTC/USDT", [D8])
    audit = auditor(storage).run([tracked()], NOW_MS, in_flight={"BTC/USDT": [D9]})
    assert plan(audit) == [("refetch", "BTC/USDT", "2024-03-10", "2024-03-10", ("raw_ohlcv",), "1 missing")]
    assert audit.in_flight == 1
    assert "2 missing, 0 incomplete, 0 stale, 0 invalid, 0 outdated; 1 partitions in flight" in audit.summary()


def test_a_source_outage_converges_to_a_confirmed_gap_with_growing_delays(storage):
    start = day_start_ms(D9) + 120 * MINUTE_MS
    source = SimulatedSource(outage_rate=0.0, outages=((start, start + 30 * MINUTE_MS),))
    exchange = SimulatedExchange(source, clock=lambda: NOW_MS)
    ingest_days(exchange, storage, "BTC/USDT", [D9, D10])
    clock = Clock()
    sym = [tracked(start=D9)]
    refetches, waits = 0, []
    while True:
        audit = auditor(storage, clock=clock).run(sym, NOW_MS)
        audit.commit(audit.plan)  # as a sensor tick does, requests or not
        if audit.plan:
            assert plan(audit) == [("refetch", "BTC/USDT", "2024-03-09", "2024-03-09", ("raw_ohlcv",), "1 incomplete")]
            ingest_days(exchange, storage, "BTC/USDT", [D9])  # the source answers the same
            refetches += 1
            assert refetches < 10
            continue
        waiting = [f for f in audit.findings if f.retry_at_ms]
        if not waiting:
            break
        waits.append((waiting[0].retry_at_ms - clock.ms) // MINUTE_MS)
        assert audit.plan == []  # a tick while waiting requests nothing
        clock.advance(waits[-1])
    assert (refetches, waits) == (3, [15, 30])
    assert audit.summary().endswith("1 confirmed source gaps (audited 2 partitions of 1 symbol(s) x 1 layer(s))")
    assert audit.counts()["incomplete"] == 0
    assert gap_rows(audit, "BTC/USDT") == [{
        "start": "2024-03-09T02:00:00Z", "end": "2024-03-09T02:30:00Z", "minutes": 30, "confirmed_at_source": True,
        "kind": "gap", "checks": 3, "first_seen": "2023-11-14T22:13:20Z", "last_checked": "2023-11-14T22:58:20Z",
        "confirmed_at": "2023-11-14T22:58:20Z"}]
    # Confirmed for good: later audits plan nothing for it, without any wait.
    again = auditor(storage, clock=clock).run(sym, NOW_MS)
    assert (again.plan, again.confirmed_gaps) == ([], 1)


def test_a_run_that_writes_nothing_is_retried_after_a_delay_not_every_tick(storage):
    clock = Clock()
    audit = auditor(storage, clock=clock).run([tracked(start=D10)], NOW_MS)
    assert plan(audit) == [("refetch", "BTC/USDT", "2024-03-10", "2024-03-10", ("raw_ohlcv",), "1 missing")]
    audit.commit(audit.plan)  # ... and the run fails: no file appears
    clock.advance(1)
    assert auditor(storage, clock=clock).run([tracked(start=D10)], NOW_MS).plan == []
    clock.advance(15)
    assert len(auditor(storage, clock=clock).run([tracked(start=D10)], NOW_MS).plan) == 1


def test_invalid_content_that_the_source_keeps_sending_is_given_up(storage, sim_exchange):
    ingest_days(sim_exchange, storage, "BTC/USDT", [D9, D10])
    raw = storage.read_partition(RAW_OHLCV, EX, "BTC/USDT", D9)
    # Duplicates are data raw keeps as sent; a candle of another day in the file is not.
    bad = pl.concat([raw, raw.tail(1).with_columns(pl.col("timestamp") + pl.duration(days=1))])
    clock = Clock()
    for _ in range(3):
        storage.write_partition(RAW_OHLCV, EX, "BTC/USDT", D9, bad)
        audit = auditor(storage, clock=clock, retry_delay_minutes=0).run([tracked(start=D9)], NOW_MS)
        assert plan(audit)[0][:2] == ("refetch", "BTC/USDT")
        audit.commit(audit.plan)
    storage.write_partition(RAW_OHLCV, EX, "BTC/USDT", D9, bad)
    audit = auditor(storage, clock=clock, retry_delay_minutes=0).run([tracked(start=D9)], NOW_MS)
    assert [(str(f.day), f.state, f.detail, f.gave_up) for f in audit.findings] == [
        ("2024-03-09", "invalid", "unreadable: candles outside 2024-03-09", True)]
    assert audit.plan == []
    assert "1 invalid given up after 3 attempts" in audit.summary()


def test_listing_day_counts_from_the_listing_candle(storage, sim_exchange):
    listing = dt.date(2020, 8, 11)  # SOL/USDT lists at 06:00 UTC
    ingest_days(sim_exchange, storage, "SOL/USDT", [listing])
    audit = auditor(storage).run([tracked("SOL/USDT", start=listing, listing=listing)], day_start_ms(listing) + 86_400_000)
    assert audit.findings == []
    cov = audit.coverage["SOL/USDT"]
    assert (cov.candles, cov.expected_minutes, cov.completeness_pct) == (18 * 60, 18 * 60, 100.0)


def test_gap_across_midnight_is_one_gap_and_status_counts_it(storage):
    start = day_start_ms(D9) - 30 * MINUTE_MS
    source = SimulatedSource(outage_rate=0.0, outages=((start, start + 60 * MINUTE_MS),))
    ingest_days(SimulatedExchange(source, clock=lambda: NOW_MS), storage, "BTC/USDT", [D8, D9, D10])
    audit = auditor(storage).run([tracked()], NOW_MS)
    assert [(g["start"], g["end"], g["minutes"], g["confirmed_at_source"]) for g in gap_rows(audit, "BTC/USDT")] == [
        ("2024-03-08T23:30:00Z", "2024-03-09T00:30:00Z", 60, False)]
    row = symbol_rows(audit)[0]
    assert {k: row[k] for k in ("first_candle", "last_candle", "days_covered", "days_expected", "completeness_pct",
                                "open_gaps", "open_gap_minutes", "confirmed_gaps", "freshness", "age_minutes")} == {
        "first_candle": "2024-03-08T00:00:00Z", "last_candle": "2024-03-10T12:33:00Z", "days_covered": 3,
        "days_expected": 3, "completeness_pct": round(100 * (3634 - 60) / 3634, 3), "open_gaps": 1,
        "open_gap_minutes": 60, "confirmed_gaps": 0, "freshness": "fresh", "age_minutes": 0}


@pytest.mark.parametrize("hours, tier", [(1, "fresh"), (3, "aging"), (30, "stale")])
def test_freshness_tiers_follow_the_settings(storage, sim_exchange, hours, tier):
    ingest_days(sim_exchange, storage, "BTC/USDT", [D10])
    audit = auditor(storage).run([tracked(start=D10)], NOW_MS + hours * 3_600_000)
    assert symbol_rows(audit)[0]["freshness"] == tier
