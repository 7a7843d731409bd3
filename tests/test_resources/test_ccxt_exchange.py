"""The live code path: real ccxt over HTTP to the loopback Binance emulator, one test per fault kind.

Each test ends in one of two states: the stored partitions equal the emulator's ground truth exactly, or
the fetch fails loudly and every file that exists is complete (never a silent partial write).
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pytest

from lakehouse.errors import TransientExchangeError, UnknownExchangeError, UnknownSymbolError
from lakehouse.exchange.ccxt_client import CcxtExchange, override_api_url
from lakehouse.exchange.emulator import BinanceEmulator
from lakehouse.exchange.simulated import SimulatedSource
from lakehouse.ingest import ingest_days
from lakehouse.schema import RAW_OHLCV
from lakehouse.timeutil import DAY_MS, MINUTE_MS, day_start_ms

D1 = dt.date(2024, 1, 1)
DAYS = [D1, D1 + dt.timedelta(days=1), D1 + dt.timedelta(days=2)]  # 4320 candles: 5 pages


def client_for(emu, **kw):
    kw = {"timeout_s": 2.0, "max_retries": 4, "backoff_base_s": 0.01, **kw}
    return CcxtExchange("binance", url=emu.url, **kw)


def stored_array(storage, symbol, day):
    df = storage.read_partition(RAW_OHLCV, "binance", symbol, day)
    if df is None:
        return None
    return df.select(pl.col("timestamp").dt.epoch("ms").cast(pl.Float64), "open", "high", "low", "close", "volume").to_numpy()


def assert_exact(storage, source, symbol, days):
    for day in days:
        truth = source.candles(symbol, day_start_ms(day), day_start_ms(day) + DAY_MS)
        np.testing.assert_array_equal(stored_array(storage, symbol, day), truth, err_msg=str(day))


def test_clean_fetch_equals_ground_truth(emulator, storage, source):
    client = client_for(emulator)
    report = ingest_days(client, storage, "BTC/USDT", DAYS)
    assert_exact(storage, source, "BTC/USDT", DAYS)
    assert (report.candles, report.requests) == (4320, 5)  # 5 pages; no listing probe: the days start at midnight
    assert client.governor.limit == 6000  # learnt from exchangeInfo's rateLimits


@pytest.mark.parametrize("kind, params", [
    ("500", {}),
    ("502", {}),
    ("503_maintenance", {}),
    ("truncated", {}),
    ("empty", {}),
    ("html", {}),
    ("short", {}),
    ("timeout", {"delay": 1.5}),
])
def test_transient_faults_are_retried_and_data_is_exact(emulator, storage, source, kind, params):
    client = client_for(emulator, timeout_s=0.5 if kind == "timeout" else 2.0)
    client.markets()
    emulator.inject(kind, count=2, **params)
    report = ingest_days(client, storage, "BTC/USDT", DAYS)
    assert_exact(storage, source, "BTC/USDT", DAYS)
    # "short" is a well-formed half page: nothing to retry, the next page simply starts later.
    assert report.retries == (0 if kind == "short" else 2)


def test_requests_in_flight_keep_their_connections(emulator, storage, source, caplog):
    """As many pooled connections as requests in flight: none is opened and dropped per request (urllib3 says
    "Connection pool is full, discarding connection" when that happens)."""
    import logging

    client = client_for(emulator)
    assert client.concurrency > 10  # more than requests' default pool of 10 connections per host
    month = [D1 + dt.timedelta(days=i) for i in range(30)]  # 44 pages
    with caplog.at_level(logging.WARNING, logger="urllib3"):
        ingest_days(client, storage, "BTC/USDT", month)
    assert [r.getMessage() for r in caplog.records if "pool is full" in r.getMessage()] == []
    assert_exact(storage, source, "BTC/USDT", month)


def test_429_retry_after_is_honoured_and_never_earns_a_418(emulator, storage, source):
    client = client_for(emulator)
    client.markets()
    emulator.inject("429", retry_after=1, sticky=True)  # a request during Retry-After would be banned
    # One request at a time: requests already in flight when a surprise 429 lands cannot be called back.
    report = ingest_days(client, storage, "BTC/USDT", DAYS, workers=1)
    assert_exact(storage, source, "BTC/USDT", DAYS)
    assert (report.rate_limited, report.banned, emulator.count_429, emulator.count_418) == (1, 0, 1, 0)


def test_418_ban_is_waited_out(emulator, storage, source):
    client = client_for(emulator)
    client.markets()
    emulator.inject("418", retry_after=1)
    report = ingest_days(client, storage, "BTC/USDT", DAYS)
    assert_exact(storage, source, "BTC/USDT", DAYS)
    assert (report.banned, emulator.count_418) == (1, 1)


def test_weight_budget_is_respected_without_any_429(source, storage):
    # 24 weight per 1 s window: exchangeInfo (20) + 2 klines per window, so the governor must pace.
    with BinanceEmulator(source=source, weight_limit=24, weight_window_s=1.0) as emu:
        client = client_for(emu)
        ingest_days(client, storage, "BTC/USDT", DAYS[:2])
        assert_exact(storage, source, "BTC/USDT", DAYS[:2])
        assert (emu.count_429, emu.count_418) == (0, 0)
        assert client.governor.waits >= 1


def test_source_outage_is_stored_as_a_real_gap(storage):
    gap = (day_start_ms(D1) + 100 * MINUTE_MS, day_start_ms(D1) + 1300 * MINUTE_MS)  # longer than a page
    source = SimulatedSource(outage_rate=0.0, outages=(gap,))
    with BinanceEmulator(source=source) as emu:
        report = ingest_days(client_for(emu), storage, "BTC/USDT", DAYS[:1])
    assert_exact(storage, source, "BTC/USDT", DAYS[:1])
    assert (report.days[0].candles, report.days[0].gaps) == (240, [gap])


def test_persistent_outage_fails_loudly_and_leaves_only_complete_files(emulator, storage, source):
    client = client_for(emulator, max_retries=2)
    client.markets()
    emulator.inject("500", count=1, path="/api/v3/klines")  # retried fine
    calls = {"n": 0}
    real = client.client.publicGetKlines

    def fetch_then_outage(*a, **k):
        calls["n"] += 1
        if calls["n"] == 4:  # page 1 (500, then retried) and page 2 done the first day; now the exchange dies
            emulator.set_outage(True)
        return real(*a, **k)

    client.client.publicGetKlines = fetch_then_outage
    with pytest.raises(TransientExchangeError, match="ExchangeNotAvailable"):
        ingest_days(client, storage, "BTC/USDT", DAYS, workers=1)
    written = [s.ref.day for s in storage.list_partitions(RAW_OHLCV)]
    assert written == [D1]
    assert_exact(storage, source, "BTC/USDT", written)


def test_unknown_symbol_and_exchange(emulator):
    with pytest.raises(UnknownSymbolError, match="binance does not list FOO/USDT"):
        client_for(emulator).check_symbol("FOO/USDT")
    with pytest.raises(UnknownExchangeError, match="unknown exchange 'nosuchex'"):
        CcxtExchange("nosuchex")


def test_url_override_keeps_each_path():
    urls = {"api": {"public": "https://api.binance.com/api/v3", "sapi": "https://api.binance.com/sapi/v1"}, "www": "x"}
    assert override_api_url(urls, "http://127.0.0.1:8090/") == {
        "api": {"public": "http://127.0.0.1:8090/api/v3", "sapi": "http://127.0.0.1:8090/sapi/v1"}, "www": "x"}


def test_cli_backfill_over_the_live_path_configured_by_environment(emulator, source, monkeypatch, tmp_path):
    from click.testing import CliRunner

    from cli.main import cli
    from lakehouse.storage import Storage

    monkeypatch.setenv("LAKEHOUSE_EXCHANGE", "binance")
    monkeypatch.setenv("LAKEHOUSE_EXCHANGE_URL", emulator.url)
    runner = CliRunner()
    added = runner.invoke(cli, ["symbols", "add", "ETH/USDT", "--start", "2024-01-01"], catch_exceptions=False)
    assert added.output == "added ETH/USDT on binance from 2024-01-01 (listed 2017-08-17)\n"
    emulator.inject("429", retry_after=1, sticky=True)
    emulator.inject("truncated")
    result = runner.invoke(cli, ["backfill", "--start", "2024-01-01", "--end", "2024-01-03", "--assets", "raw_ohlcv"],
                           catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert_exact(Storage(tmp_path / "lake"), source, "ETH/USDT", DAYS)
    assert emulator.count_418 == 0
