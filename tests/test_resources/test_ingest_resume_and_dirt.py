"""Resume, raw-as-sent, market validation and the weight budget over real ccxt + HTTP to the loopback emulator.

Requests are counted on the emulator (what the exchange saw), not by the client.
"""

from __future__ import annotations

import datetime as dt
import json
import os

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

from lakehouse import progress
from lakehouse.audit import Ledger, gap_detail, ledger_key
from lakehouse.errors import TransientExchangeError, UnknownSymbolError
from lakehouse.exchange.ccxt_client import CcxtExchange, forget_shared_state
from lakehouse.exchange.emulator import BinanceEmulator
from lakehouse.exchange.simulated import SimulatedSource
from lakehouse.ingest import ingest_days, ingest_symbols
from lakehouse.schema import RAW_OHLCV
from lakehouse.storage import Storage
from lakehouse.timeutil import DAY_MS, MINUTE_MS, day_start_ms

D1 = dt.date(2024, 1, 1)
KLINES, INFO = "/api/v3/klines", "/api/v3/exchangeInfo"


def days(first, n):
    return [first + dt.timedelta(days=i) for i in range(n)]


@pytest.fixture(autouse=True)
def _new_process():
    """Each test starts like a new process: no budget or market list learnt yet."""
    forget_shared_state()
    yield
    forget_shared_state()


def client_for(emu, **kw):
    return CcxtExchange("binance", url=emu.url, **{"timeout_s": 2.0, "max_retries": 3, "backoff_base_s": 0.01, **kw})


def mtimes(storage, symbol, ds):
    return {d: os.stat(storage.partition_path(RAW_OHLCV, "binance", symbol, d)).st_mtime_ns for d in ds}


# resume ------------------------------------------------------------------------------------------
def test_a_rerun_fetches_only_the_days_not_already_complete(emulator, storage, source):
    client = client_for(emulator)
    five = days(D1, 5)
    ingest_days(client, storage, "BTC/USDT", five)
    for d in five[3:]:  # a crash before these two were written
        storage.partition_path(RAW_OHLCV, "binance", "BTC/USDT", d).unlink()
    before = mtimes(storage, "BTC/USDT", five[:3])
    emulator.reset_counters()
    report = ingest_days(client_for(emulator), storage, "BTC/USDT", five)
    assert emulator.path_counts[KLINES] == 3  # 2880 candles in pages of up to 999 minutes; no listing probe
    assert [d.skipped for d in report.days] == [True, True, True, False, False]
    assert [d.candles for d in report.days] == [1440] * 5  # kept days report their stored figures
    assert mtimes(storage, "BTC/USDT", five[:3]) == before  # untouched
    for d in five:
        got = storage.read_partition(RAW_OHLCV, "binance", "BTC/USDT", d).height
        assert got == 1440

    emulator.reset_counters()
    ingest_days(client_for(emulator), storage, "BTC/USDT", five, refetch=True)
    assert emulator.path_counts[KLINES] == 8  # ceil(7200 / 999): every day again


def test_a_day_cut_short_gets_only_its_missing_tail(emulator, storage):
    client = client_for(emulator)
    ingest_days(client, storage, "BTC/USDT", [D1])
    path = storage.partition_path(RAW_OHLCV, "binance", "BTC/USDT", D1)
    full = storage.read_partition(RAW_OHLCV, "binance", "BTC/USDT", D1)
    storage.write_partition(RAW_OHLCV, "binance", "BTC/USDT", D1, full.head(600))  # written while the day was young
    emulator.reset_counters()
    report = ingest_days(client_for(emulator), storage, "BTC/USDT", [D1])
    assert emulator.path_counts[KLINES] == 1  # minutes 600..1439 only
    assert report.days[0].candles == 1440 and report.days[0].gaps == []
    again = storage.read_partition(RAW_OHLCV, "binance", "BTC/USDT", D1)
    assert again.drop("fetched_at").equals(full.drop("fetched_at"))
    assert path.exists()


def test_a_gap_confirmed_at_the_source_is_not_fetched_again(storage):
    gap = (day_start_ms(D1) + 100 * MINUTE_MS, day_start_ms(D1) + 130 * MINUTE_MS)
    source = SimulatedSource(outage_rate=0.0, outages=(gap,))
    with BinanceEmulator(source=source) as emu:
        ingest_days(client_for(emu), storage, "BTC/USDT", [D1])
        emu.reset_counters()
        ingest_days(client_for(emu), storage, "BTC/USDT", [D1])
        assert emu.path_counts[KLINES] == 2  # an open gap may still be filled: asked again
        ledger = Ledger(storage)
        ledger.confirmed[ledger_key(RAW_OHLCV, "binance", "BTC/USDT", D1.isoformat())] = {
            "fp": gap_detail([list(gap)]), "attempts": 3}
        ledger.dirty = True
        ledger.save()
        emu.reset_counters()
        report = ingest_days(client_for(emu), storage, "BTC/USDT", [D1])
        assert emu.path_counts[KLINES] == 0
        assert report.days[0].skipped and report.days[0].gaps == [gap]


def test_rerun_of_an_up_to_date_range_asks_only_for_todays_tail(emulator, storage):
    today = dt.datetime.now(dt.timezone.utc).date()
    span = days(today - dt.timedelta(days=2), 3)
    ingest_days(client_for(emulator), storage, "BTC/USDT", span)
    forget_shared_state()  # a new process
    emulator.reset_counters()
    ingest_days(client_for(emulator), storage, "BTC/USDT", span)
    assert emulator.path_counts[KLINES] <= 1
    assert emulator.path_counts[INFO] == 1


def test_cli_backfill_skips_complete_days_and_refetch_reaches_the_run(emulator, monkeypatch, tmp_path):
    from cli.main import cli

    monkeypatch.setenv("LAKEHOUSE_EXCHANGE", "binance")
    monkeypatch.setenv("LAKEHOUSE_EXCHANGE_URL", emulator.url)
    runner = CliRunner()
    assert runner.invoke(cli, ["symbols", "add", "ETH/USDT", "BTC/USDT", "--start", "2024-01-01"]).exit_code == 0
    args = ["backfill", "--start", "2024-01-01", "--end", "2024-01-02", "--assets", "raw_ohlcv"]
    emulator.reset_counters()
    assert runner.invoke(cli, args).exit_code == 0
    # One run per symbol, one market list for the process: loaded by `symbols add`, not again per symbol.
    assert (emulator.path_counts[INFO], emulator.path_counts[KLINES]) == (0, 6)
    emulator.reset_counters()
    assert runner.invoke(cli, [*args, "--symbols", "ETH/USDT"]).exit_code == 0
    assert emulator.path_counts[KLINES] == 0  # every day closed and complete
    result = runner.invoke(cli, [*args, "--symbols", "ETH/USDT", "--refetch"])
    assert result.exit_code == 0, result.output
    assert emulator.path_counts[KLINES] == 3  # 2880 minutes again


# raw as sent -------------------------------------------------------------------------------------
DIRT = {"duplicate": 998, "misaligned": 10, "high_below_low": 20, "negative_volume": 30}  # minute of D1


def test_dirty_klines_are_stored_as_sent_and_cleaning_rejects_each(emulator, monkeypatch, tmp_path):
    from cli.main import cli

    for kind, minute in DIRT.items():
        emulator.dirty("ETH/USDT", kind, day_start_ms(D1) + minute * MINUTE_MS)
    monkeypatch.setenv("LAKEHOUSE_EXCHANGE", "binance")
    monkeypatch.setenv("LAKEHOUSE_EXCHANGE_URL", emulator.url)
    runner = CliRunner()
    assert runner.invoke(cli, ["symbols", "add", "ETH/USDT", "--start", "2024-01-01"]).exit_code == 0
    result = runner.invoke(cli, ["backfill", "--start", "2024-01-01", "--end", "2024-01-02",
                                 "--assets", "raw_ohlcv,clean_bars,rejected_candles"])
    assert result.exit_code == 0, result.output
    storage = Storage(tmp_path / "lake")
    raw = storage.read_partition(RAW_OHLCV, "binance", "ETH/USDT", D1)
    ts = raw.get_column("timestamp").dt.epoch("ms").to_numpy()
    start = day_start_ms(D1)
    # 1440 minutes + the duplicate (its two copies straddle a full page) ; the misaligned row replaces its minute
    assert raw.height == 1441
    assert (ts == start + 998 * MINUTE_MS).sum() == 2
    assert (ts == start + 10 * MINUTE_MS + 30_000).sum() == 1
    assert raw.filter(pl.col("high") < pl.col("low")).height == 1
    assert raw.filter(pl.col("volume") < 0).height == 1
    assert storage.read_partition(RAW_OHLCV, "binance", "ETH/USDT", D1 + dt.timedelta(days=1)).height == 1440

    rejects = storage.read_partition("rejected_candles", "binance", "ETH/USDT", D1)
    assert sorted(rejects.get_column("reason").to_list()) == [
        "duplicate", "high_below_low", "misaligned_timestamp", "negative_volume"]
    bars = storage.read_partition("clean_bars", "binance", "ETH/USDT", D1).filter(pl.col("interval") == "1m")
    bts = bars.get_column("timestamp").dt.epoch("ms").to_numpy()
    assert bars.height == 1437  # 1440 minutes - misaligned - high<low - negative volume
    assert not (bts % MINUTE_MS).any() and np.unique(bts).size == bars.height
    assert bars.filter((pl.col("high") < pl.col("low")) | (pl.col("volume") < 0)).height == 0


@pytest.mark.parametrize("kind", ["truncated", "html", "empty"])
def test_a_malformed_body_still_retries(emulator, storage, source, kind):
    emulator.inject(kind, count=2, path=KLINES)
    report = ingest_days(client_for(emulator), storage, "BTC/USDT", [D1], workers=1)
    assert report.retries == 2
    raw = storage.read_partition(RAW_OHLCV, "binance", "BTC/USDT", D1)
    expected = source.candles("BTC/USDT", day_start_ms(D1), day_start_ms(D1) + DAY_MS)
    assert raw.height == len(expected)


# markets -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["truncated", "html", "empty"])
def test_malformed_exchange_info_is_retried_not_an_unknown_symbol(emulator, kind):
    emulator.inject(kind, count=2, path=INFO)
    client = client_for(emulator)
    assert client.check_symbol("BTC/USDT") == "BTC/USDT"
    assert emulator.path_counts[INFO] == 3
    assert client.stats.retries == 2

    forget_shared_state()
    emulator.inject(kind, count=10, path=INFO)
    with pytest.raises(TransientExchangeError, match="malformed 200 response for exchangeInfo"):
        client_for(emulator, max_retries=1).check_symbol("BTC/USDT")


def test_symbols_available_fails_loudly_when_markets_fail(emulator, monkeypatch):
    from cli.main import cli

    monkeypatch.setenv("LAKEHOUSE_EXCHANGE", "binance")
    monkeypatch.setenv("LAKEHOUSE_EXCHANGE_URL", emulator.url)
    monkeypatch.setenv("LAKEHOUSE_MAX_RETRIES", "1")
    emulator.inject("html", count=10, path=INFO)
    result = CliRunner().invoke(cli, ["symbols", "available"])
    assert result.exit_code == 1
    assert "could not load markets from binance" in result.output
    assert "BTC/USDT" not in result.output
    added = CliRunner().invoke(cli, ["symbols", "add", "BTC/USDT"])
    assert added.exit_code == 1 and "could not reach binance to check BTC/USDT" in added.output
    assert "does not list" not in added.output  # a malformed market list says nothing about the symbol
    emulator.clear_faults()
    forget_shared_state()
    ok = CliRunner().invoke(cli, ["symbols", "available", "--quote", "USDT"])
    assert ok.exit_code == 0 and "BTC/USDT" in ok.output


# weight budget -----------------------------------------------------------------------------------
def test_a_new_process_reads_the_weight_already_used_before_sending(source, storage):
    import time

    with BinanceEmulator(source=source, weight_window_s=2.0) as emu:
        time.sleep(2.0 - time.time() % 2.0 + 0.05)  # a fresh window, so the one below is still running
        emu.use_weight(5990)  # another process on this IP spent almost all of the window
        client = client_for(emu)
        notes = []
        with progress.subscribe(lambda e: notes.append(e.detail) if e.kind == "waiting" else None):
            ingest_days(client, storage, "BTC/USDT", [D1])
        assert (emu.count_429, emu.count_418) == (0, 0)
        assert client.governor.waits >= 1  # it waited for the window to reset instead of sending exchangeInfo
        assert notes[0] == "loading binance's markets"
        assert "for the exchange's request-weight window to reset (5991/6000 used)" in notes[1]
        assert emu.stats()["paths"]["/api/v3/time"] == 1  # the cheap first call


def test_only_the_governor_paces_an_exchange_that_reports_its_weight(source, storage):
    # ccxt's throttle waits rateLimit x cost after every request (0.2 s before each process's exchangeInfo);
    # Binance reports its used weight, so the governor alone keeps to the budget there.
    with BinanceEmulator(source=source) as emu:
        client = client_for(emu)
        throttled = []
        client.client.throttle = lambda cost=None: throttled.append(cost)
        ingest_days(client, storage, "BTC/USDT", [D1])
        assert emu.stats()["paths"]["/api/v3/exchangeInfo"] == 1
        assert throttled == []
        assert (emu.count_429, emu.count_418) == (0, 0)
    assert CcxtExchange("kraken").client.enableRateLimit  # no weight header: ccxt's throttle is the pacing


def test_overlapping_requests_under_latency_stay_inside_the_budget(source, storage):
    with BinanceEmulator(source=source, weight_limit=50, weight_window_s=1.0, latency_ms=50, jitter_ms=20) as emu:
        client = client_for(emu, concurrency=4)
        span = days(D1, 8)  # 12 pages at 2 weight: the budget binds after exchangeInfo (20)
        ingest_days(client, storage, "BTC/USDT", span)
        stats = emu.stats()
        assert (emu.count_429, emu.count_418) == (0, 0)
        assert stats["peak_used_weight"] <= 50
        assert stats["peak_in_flight"] >= 2  # requests did overlap
        for d in span:
            truth = source.candles("BTC/USDT", day_start_ms(d), day_start_ms(d) + DAY_MS)
            raw = storage.read_partition(RAW_OHLCV, "binance", "BTC/USDT", d)
            got = raw.select(pl.col("timestamp").dt.epoch("ms").cast(pl.Float64), "open", "high", "low", "close",
                             "volume").to_numpy()
            np.testing.assert_array_equal(got, truth)


def test_emulator_control_endpoints_for_dirt_and_weight(emulator):
    import urllib.request

    def post(path, body):
        req = urllib.request.Request(emulator.url + path, data=json.dumps(body).encode(), method="POST")
        with urllib.request.urlopen(req) as r:
            return r.status

    assert post("/_emulator/dirt", {"symbol": "BTC/USDT", "kind": "duplicate", "ts": day_start_ms(D1)}) == 200
    assert post("/_emulator/weight", {"used": 7}) == 200
    assert emulator.stats()["clients"]["127.0.0.1"]["used_weight"] == 7
    rows = emulator.candles("BTC/USDT", day_start_ms(D1), day_start_ms(D1) + 2 * MINUTE_MS, 10)
    assert rows[:, 0].tolist() == [day_start_ms(D1)] * 2 + [day_start_ms(D1) + MINUTE_MS] * 1 + [
        day_start_ms(D1) + 2 * MINUTE_MS]


def test_kline_rows_are_read_as_sent_and_anything_else_is_malformed():
    from lakehouse.exchange.ccxt_client import parse_klines

    dirty = [[60_030, "1.5", "0.5", "2.0", "1.0", "-3", 119_999, "0", 1, "0", "0", "0"],
             [0, "1", "2", "0.5", "1", "NaN", 59_999, "0", 1, "0", "0", "0"],
             [0, "1", "2", "0.5", "1", "NaN", 59_999, "0", 1, "0", "0", "0"]]
    rows = parse_klines(dirty)
    np.testing.assert_array_equal(rows[:, :5], [[60_030, 1.5, 0.5, 2.0, 1.0], [0, 1, 2, 0.5, 1], [0, 1, 2, 0.5, 1]])
    assert rows[0, 5] == -3 and np.isnan(rows[1:, 5]).all()  # order, duplicates and odd values kept
    assert parse_klines([]).shape == (0, 6)
    for junk in ("<html>", None, {"code": -1}, [[0, "1", "2"]], [[0, "x", "2", "1", "1", "1"]], [None], [[None] * 6]):
        assert parse_klines(junk) is None, junk


# several symbols side by side ---------------------------------------------------------------------
SYMBOLS = ["BTC/USDT", "ETH/USDT", "LTC/USDT", "BNB/USDT"]


def test_symbols_side_by_side_overlap_within_one_bound_and_store_what_each_alone_would(source, tmp_path):
    with BinanceEmulator(source=source, latency_ms=40, jitter_ms=10) as emu:
        # Each symbol-day is one window, fetched one after the other when alone; 4 clients may overlap them,
        # but only as far as the endpoint's bound of 2 requests in flight.
        clients = [client_for(emu, concurrency=2) for _ in range(4)]
        together = Storage(tmp_path / "together")
        reports = ingest_symbols(clients, together, {s: [D1] for s in SYMBOLS})
        stats = emu.stats()
        assert stats["peak_in_flight"] == 2
        assert [r.symbol for r in reports] == SYMBOLS
        assert sum(r.requests for r in reports) == stats["paths"][KLINES]  # each report counts its own
        forget_shared_state()
        alone = Storage(tmp_path / "alone")
        for s in SYMBOLS:
            ingest_days(client_for(emu), alone, s, [D1])
    for s in SYMBOLS:
        a, b = (st.read_partition(RAW_OHLCV, "binance", s, D1).drop("fetched_at") for st in (together, alone))
        assert a.height == 1440 and a.equals(b), s


def test_a_failing_symbol_stops_the_symbols_not_yet_started_and_is_raised(source, tmp_path):
    with BinanceEmulator(source=source) as emu:
        clients = [client_for(emu) for _ in range(2)]
        storage = Storage(tmp_path)
        with pytest.raises(UnknownSymbolError, match="NOPE/USDT"):
            ingest_symbols(clients, storage, {"BTC/USDT": [D1], "NOPE/USDT": [D1], "ETH/USDT": [D1],
                                              "LTC/USDT": [D1], "BNB/USDT": [D1]})
        # BTC ran beside NOPE; after NOPE failed at most one more symbol had started.
        stored = {p.ref.symbol for p in storage.list_partitions(RAW_OHLCV)}
        assert "BTC/USDT" in stored and len(stored) <= 2
