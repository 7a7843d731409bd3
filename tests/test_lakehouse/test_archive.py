"""The bulk archive fast path: real ccxt and real downloads over HTTP from the loopback emulator, whose archive
files are built from the same simulated source as its klines.

Every test ends with the stored candles equal, bit for bit, to what the REST path stores for the same days
(a REST-only reference run over the same emulator) and to the emulator's ground truth.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import threading
import time
import zipfile

import numpy as np
import polars as pl
import pytest
import requests

from lakehouse.config import Settings
from lakehouse.exchange.archive import ArchiveFile, CorruptFile, KlineArchive, _read_member, parse_klines_csv, plan_files
from lakehouse.exchange.ccxt_client import CcxtExchange
from lakehouse.exchange.emulator import BinanceEmulator
from lakehouse.exchange.simulated import SimulatedSource
from lakehouse.ingest import ingest_days, ingest_symbols
from lakehouse.schema import RAW_OHLCV
from lakehouse.storage import Storage
from lakehouse.timeutil import DAY_MS, MINUTE_MS, day_start_ms
from resources.exchange import exchange_resource

from helpers import free_port

D = dt.date
NOW = day_start_ms(D(2025, 1, 3)) + (12 * 60 + 34) * MINUTE_MS + 30_000  # 2025-01-03 12:34:30 UTC
OUTAGE = (day_start_ms(D(2024, 12, 10)) + 300 * MINUTE_MS, day_start_ms(D(2024, 12, 10)) + 345 * MINUTE_MS)
FIRST, LAST = D(2024, 11, 29), D(2025, 1, 3)
SYMBOL = "BTC/USDT"


def span(first: dt.date, last: dt.date) -> list[dt.date]:
    return [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]


class PinnedBinance(CcxtExchange):
    """The live client with the emulator's clock, so "today" and "published" are the same for both."""

    def now_ms(self) -> int:
        return NOW


@pytest.fixture(scope="module")
def source():
    return SimulatedSource(outage_rate=0.0, outages=(OUTAGE,))


@pytest.fixture(scope="module")
def module_emulator(source):
    with BinanceEmulator(source=source, clock=lambda: NOW, ban_s=1) as emu:
        yield emu


@pytest.fixture
def emulator(module_emulator):
    emu = module_emulator
    emu.archive.clear_faults()
    emu.archive.daily_delay_s, emu.archive.monthly_delay_s = 18 * 3600, 30 * 3600
    emu.reset_counters()
    emu.archive.reset_counters()
    yield emu
    emu.archive.clear_faults()


def client(emu, archive_url: str | None = "same", **archive_kw) -> CcxtExchange:
    c = PinnedBinance("binance", url=emu.url, timeout_s=2.0, max_retries=2, backoff_base_s=0.01)
    if archive_url:
        kw = {"timeout_s": 10.0, "max_retries": 2, "backoff_base_s": 0.01, **archive_kw}
        c.archive = KlineArchive(emu.url if archive_url == "same" else archive_url, **kw)
    return c


def frame(storage: Storage, day: dt.date) -> pl.DataFrame:
    return storage.read_partition(RAW_OHLCV, "binance", SYMBOL, day).drop("fetched_at")


@pytest.fixture(scope="module")
def rest_reference(module_emulator, tmp_path_factory):
    """What REST alone stores for every day the tests use."""
    storage = Storage(tmp_path_factory.mktemp("rest"))
    ingest_days(client(module_emulator, archive_url=None), storage, SYMBOL, span(FIRST, LAST))
    return {d: frame(storage, d) for d in span(FIRST, LAST)}


def assert_exact(storage, rest_reference, source, days):
    for day in days:
        got = frame(storage, day)
        assert got.equals(rest_reference[day]), f"{day} differs from the REST path"
        start = day_start_ms(day)
        truth = source.candles(SYMBOL, start, min(start + DAY_MS, NOW // MINUTE_MS * MINUTE_MS))
        arr = got.select(pl.col("timestamp").dt.epoch("ms").cast(pl.Float64), "open", "high", "low", "close",
                         "volume").to_numpy()
        np.testing.assert_array_equal(arr, truth, err_msg=str(day))


def sources(report) -> dict:
    return {d.day: d.source for d in report.days}


def test_closed_month_comes_from_one_archive_file_identical_to_rest(emulator, storage, source, rest_reference):
    days = span(D(2024, 12, 1), D(2024, 12, 31))
    report = ingest_days(client(emulator), storage, SYMBOL, days)
    assert set(sources(report).values()) == {"archive"}
    assert_exact(storage, rest_reference, source, days)
    assert emulator.archive.stats()["zip"] == 1  # the monthly file
    # REST: exchangeInfo, the listing probe, and one look at the 45 minutes the file lacks (REST agrees).
    assert emulator.path_counts["/api/v3/klines"] == 2
    gap_day = next(d for d in report.days if d.day == D(2024, 12, 10))
    assert (gap_day.candles, gap_day.gaps) == (1395, [OUTAGE])
    md = report.metadata()
    assert md["sources"] == {"archive": 31} and md["archive_requests"] == 2 and "archive_fallbacks" not in md


def test_mixed_range_across_month_boundary_and_the_2025_microsecond_switch(emulator, storage, source, rest_reference):
    days = span(FIRST, LAST)  # Nov 29-30 daily, Dec monthly, Jan 1 daily (us), Jan 2 unpublished, Jan 3 today
    report = ingest_days(client(emulator), storage, SYMBOL, days)
    got = sources(report)
    assert [got[d] for d in (D(2024, 11, 29), D(2024, 11, 30), D(2024, 12, 15), D(2025, 1, 1))] == ["archive"] * 4
    assert (got[D(2025, 1, 2)], got[D(2025, 1, 3)]) == ("rest", "rest")
    assert_exact(storage, rest_reference, source, days)
    today = next(d for d in report.days if d.day == LAST)
    assert (today.candles, today.expected) == (754, 754)  # up to 12:33, the forming candle never stored
    fallback = next(d for d in report.days if d.day == D(2025, 1, 2)).archive_fallback
    assert fallback == "BTCUSDT-1m-2025-01-02.zip: not published yet (404)"
    # The file really is in microseconds, and its first row is the same instant as REST's first candle.
    body = requests.get(f"{emulator.url}/{ArchiveFile('BTCUSDT', '2025-01-01').path}", timeout=5).content
    first_row = zipfile.ZipFile(io.BytesIO(body)).read("BTCUSDT-1m-2025-01-01.csv").split(b"\n")[0].split(b",")
    assert (int(first_row[0]), int(first_row[6])) == (day_start_ms(D(2025, 1, 1)) * 1000,
                                                      (day_start_ms(D(2025, 1, 1)) + MINUTE_MS) * 1000 - 1)


def test_newest_days_not_yet_published_come_from_rest(emulator, storage, source, rest_reference):
    emulator.archive.daily_delay_s = 48 * 3600  # Jan 1 ended 36.5 h ago, Jan 2 12.5 h ago: neither is out
    days = span(D(2024, 12, 30), LAST)
    report = ingest_days(client(emulator), storage, SYMBOL, days)
    assert list(sources(report).values()) == ["archive", "archive", "rest", "rest", "rest"]
    assert_exact(storage, rest_reference, source, days)
    assert [d.archive_fallback is not None for d in report.days] == [False, False, True, True, False]
    assert emulator.archive.stats()["status_404"] == 4  # each unpublished day's zip and its .CHECKSUM


@pytest.mark.parametrize("kind, count, expected, reason", [
    ("corrupt", 1, "archive", None),  # retried once, then fine
    ("corrupt", 2, "rest", "checksum mismatch (sha256 differs from .CHECKSUM) (retried once)"),
    ("bad_zip", 2, "rest", "bad zip"),
    ("malformed", 1, "archive", None),
    ("malformed", 2, "rest", "malformed CSV: rows with missing fields"),
    ("truncated", 1, "archive", None),  # the connection drops halfway: retried like a REST network error
    ("truncated", 3, "rest", "download broken off"),
    ("500", 3, "rest", "HTTP 500"),
])
def test_a_bad_file_is_retried_then_its_day_falls_back_to_rest_exactly(
        emulator, storage, source, rest_reference, kind, count, expected, reason):
    days = span(D(2024, 12, 28), D(2024, 12, 30))
    emulator.archive.inject(kind, count=count, match="2024-12-29")
    report = ingest_days(client(emulator), storage, SYMBOL, days)
    assert sources(report) == {days[0]: "archive", days[1]: expected, days[2]: "archive"}
    assert_exact(storage, rest_reference, source, days)
    day = report.days[1]
    assert (day.archive_fallback is None) if reason is None else (reason in day.archive_fallback)
    md = report.metadata()
    assert md.get("archive_fallbacks", 0) == (0 if reason is None else 1)
    if reason:
        assert md["archive_fallback_days"] == [f"2024-12-29: {day.archive_fallback}"]


@pytest.mark.parametrize("checksum_first", [True, False])
def test_a_file_published_wrong_has_a_checksum_of_its_wrong_body_in_either_order(emulator, checksum_first):
    import hashlib

    file = ArchiveFile("BTCUSDT", "2024-12-29")
    emulator.archive.inject("malformed", match=file.name)
    zip_url, sum_url = f"{emulator.url}/{file.path}", f"{emulator.url}/{file.path}.CHECKSUM"
    if checksum_first:
        published = requests.get(sum_url, timeout=5).text.split()[0]
        body = requests.get(zip_url, timeout=5).content
    else:
        body = requests.get(zip_url, timeout=5).content
        published = requests.get(sum_url, timeout=5).text.split()[0]
    assert hashlib.sha256(body).hexdigest() == published  # only the content check can catch this file
    with pytest.raises(CorruptFile, match="missing fields"):
        parse_klines_csv(zipfile.ZipFile(io.BytesIO(body)).read(file.name[:-4] + ".csv"), *file.window_ms())
    again = requests.get(zip_url, timeout=5).content  # the fault was one download: the next is the real file
    assert hashlib.sha256(again).hexdigest() == requests.get(sum_url, timeout=5).text.split()[0] != published


def test_a_files_checksum_is_asked_for_alongside_its_zip(source):
    with BinanceEmulator(source=source, clock=lambda: NOW, latency_ms=200) as emu:
        rows = KlineArchive(emu.url, workers=1).fetch(ArchiveFile("BTCUSDT", "2024-12-29"))
        assert len(rows) == 1440 and emu.peak_in_flight == 2  # one round trip for the two, not one each


@pytest.mark.parametrize("how", ["chunked", "gzip"])
def test_a_body_without_a_plain_length_is_streamed_through_the_same_checks(emulator, how):
    """Kline files come with a Content-Length and are read whole; a body without one (chunked, or compressed
    on the way) is streamed instead, to the same verified rows."""
    import gzip
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    file = ArchiveFile("BTCUSDT", "2024-12-29")
    served = {f"/{file.path}{suffix}": requests.get(f"{emulator.url}/{file.path}{suffix}").content
              for suffix in ("", ".CHECKSUM")}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            data = served[self.path]
            self.send_response(200)
            if how == "gzip":
                data = gzip.compress(data)
                self.send_header("Content-Encoding", "gzip")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                return
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(0, len(data), 10_000):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data[i:i + 10_000]), data[i:i + 10_000]))
            self.wfile.write(b"0\r\n\r\n")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        got = KlineArchive(f"http://127.0.0.1:{server.server_address[1]}", max_retries=0).fetch(file)
    finally:
        server.shutdown()
        server.server_close()
    np.testing.assert_array_equal(got, KlineArchive(emulator.url).fetch(file))
    assert len(got) == 1440


def test_a_download_that_times_out_is_retried(emulator, storage, source, rest_reference):
    emulator.archive.inject("timeout", match="2024-12-29", delay=3.0)  # the answer comes after the client gave up
    days = span(D(2024, 12, 28), D(2024, 12, 29))
    c = client(emulator, timeout_s=1.5)
    report = ingest_days(c, storage, SYMBOL, days)
    assert list(sources(report).values()) == ["archive", "archive"]
    assert (c.archive.stats.retries, c.archive.stats.requests) == (1, 6)  # each try: the zip and its .CHECKSUM
    assert_exact(storage, rest_reference, source, days)


def test_missing_files_fall_back_to_daily_files_then_to_rest(emulator, storage, source, rest_reference):
    emulator.archive.inject("missing", match="BTCUSDT-1m-2024-12.zip")  # the month: 404
    emulator.archive.inject("missing", match="2024-12-05")  # and one of its days
    days = span(D(2024, 12, 1), D(2024, 12, 31))
    report = ingest_days(client(emulator), storage, SYMBOL, days)
    assert [d.day for d in report.days if d.source == "rest"] == [D(2024, 12, 5)]
    assert_exact(storage, rest_reference, source, days)
    assert emulator.archive.stats()["status_404"] == 2


@pytest.mark.parametrize("params, klines", [
    ({}, 2),  # ten rows left out: the listing probe and one request for exactly those minutes
    ({"stride": 50}, 3),  # 29 small gaps: one pass over the day (2 pages) instead of 29 requests
])
def test_an_archive_day_missing_minutes_rest_has_is_completed_from_rest(
        emulator, storage, source, rest_reference, params, klines):
    emulator.archive.inject("gappy", match="2024-12-29", **params)  # with a checksum that matches
    days = [D(2024, 12, 29)]
    report = ingest_days(client(emulator), storage, SYMBOL, days)
    assert (report.days[0].source, report.days[0].candles, report.days[0].gaps) == ("archive+rest", 1440, [])
    assert_exact(storage, rest_reference, source, days)
    assert emulator.path_counts["/api/v3/klines"] == klines


def test_a_failed_write_stops_the_run_and_leaves_only_complete_files(emulator, storage, source, rest_reference):
    blocked = storage.partition_path(RAW_OHLCV, "binance", SYMBOL, D(2024, 12, 29)).parent
    blocked.parent.mkdir(parents=True)
    blocked.write_text("a file where the day's folder should be")  # a real filesystem fault
    days = span(D(2024, 12, 26), D(2024, 12, 31))
    with pytest.raises(OSError):
        ingest_days(client(emulator), storage, SYMBOL, days)
    written = [p.ref.day for p in storage.list_partitions(RAW_OHLCV)]
    assert D(2024, 12, 28) in written and D(2024, 12, 29) not in written
    assert_exact(storage, rest_reference, source, written)
    assert not [p for p in storage.root.rglob("*") if p.name.startswith(".tmp")]


def test_a_months_complete_archive_days_are_encoded_in_one_run(emulator, storage, source, rest_reference, monkeypatch):
    import lakehouse.storage

    runs = []
    encode = lakehouse.storage.parquet_bytes_many

    def counted(df, lengths=None):
        runs.append(len(lengths or [df.height]))
        return encode(df, lengths)

    monkeypatch.setattr(lakehouse.storage, "parquet_bytes_many", counted)
    days = span(D(2024, 12, 1), D(2024, 12, 31))  # one monthly file; 2024-12-10 has an outage REST agrees on
    report = ingest_days(client(emulator), storage, SYMBOL, days)
    assert sorted(runs) == [1, 30]  # the day with a gap on its own, after asking REST for its missing minutes
    assert set(sources(report).values()) == {"archive"}
    assert_exact(storage, rest_reference, source, days)


@pytest.mark.services
def test_archive_days_go_to_an_object_store_exactly_with_their_puts_overlapping(
        emulator, source, rest_reference, s3_env, monkeypatch):
    from lakehouse.objectstore import ObjectStorage

    storage = Storage(s3_env["LAKEHOUSE_ROOT"])
    assert isinstance(storage, ObjectStorage)
    at_once = peak = 0
    lock = threading.Lock()
    put = ObjectStorage._put_bytes

    def counted(self, key, data):
        nonlocal at_once, peak
        with lock:
            at_once += 1
            peak = max(peak, at_once)
        try:
            time.sleep(0.01)  # a round trip, so that overlapping PUTs show
            return put(self, key, data)
        finally:
            with lock:
                at_once -= 1

    monkeypatch.setattr(ObjectStorage, "_put_bytes", counted)
    days = span(D(2024, 11, 29), D(2024, 12, 31))  # daily files, then a month
    report = ingest_days(client(emulator), storage, SYMBOL, days)
    assert set(sources(report).values()) == {"archive"}
    assert_exact(storage, rest_reference, source, days)
    assert peak > 4  # more than the download threads: the month's days are PUT side by side


def test_an_unreachable_archive_is_given_up_for_the_run(emulator, storage, source, rest_reference):
    days = span(D(2024, 11, 30), D(2024, 12, 31))  # a daily file, then a month: neither is tried once given up
    c = client(emulator, archive_url=f"http://127.0.0.1:{free_port()}", max_retries=1, workers=1)
    report = ingest_days(c, storage, SYMBOL, days)
    assert set(sources(report).values()) == {"rest"}
    assert_exact(storage, rest_reference, source, days)
    assert all("archive unreachable: cannot connect" in d.archive_fallback for d in report.days)
    assert c.archive.stats.requests == 4  # the first file tried twice (zip and .CHECKSUM), then left alone


def test_resume_keeps_days_already_written_and_does_not_download_them(emulator, storage, source, rest_reference):
    days = span(D(2024, 12, 28), D(2024, 12, 30))
    report = ingest_days(client(emulator), storage, SYMBOL, days, keep=lambda d: d == D(2024, 12, 29))
    assert [(d.source, d.skipped) for d in report.days] == [("archive", False), ("rest", True), ("archive", False)]
    assert emulator.archive.stats()["zip"] == 2
    assert report.metadata()["sources"] == {"archive": 2}
    assert_exact(storage, rest_reference, source, [days[0], days[2]])


class CountingArchive(KlineArchive):
    """Counts the downloads in progress at once over every instance; each takes a while, so they overlap."""

    lock = threading.Lock()
    active = peak = 0

    def _download_verified(self, file):
        cls = CountingArchive
        with cls.lock:
            cls.active += 1
            cls.peak = max(cls.peak, cls.active)
        try:
            time.sleep(0.03)
            return super()._download_verified(file)
        finally:
            with cls.lock:
                cls.active -= 1


def test_symbols_side_by_side_share_one_bound_of_downloads_per_archive_host(emulator, tmp_path, source):
    # Three symbols fetched side by side, each downloading up to 4 files ahead: without one bound per host
    # that is 12 downloads at once.
    clients = []
    for _ in range(3):
        c = client(emulator, archive_url=None)
        c.archive = CountingArchive(emulator.url, timeout_s=10.0, workers=4, host_downloads=2)
        clients.append(c)
    days = span(D(2024, 12, 20), D(2024, 12, 25))
    symbols = ["BTC/USDT", "ETH/USDT", "LTC/USDT"]
    storage = Storage(tmp_path)
    reports = ingest_symbols(clients, storage, {s: days for s in symbols})
    assert CountingArchive.peak == 2
    assert [r.metadata()["sources"] for r in reports] == [{"archive": 6}] * 3
    for s in symbols:
        for day in days:
            got = storage.read_partition(RAW_OHLCV, "binance", s, day)
            start = day_start_ms(day)
            truth = source.candles(s, start, start + DAY_MS)
            assert got.height == len(truth) and (got["open"].to_numpy() == truth[:, 1]).all(), (s, day)


def test_archive_files_are_named_by_the_exchanges_market_id(emulator, storage, source, rest_reference, monkeypatch):
    # ccxt renames a few currencies (Binance's YOYOBTC is YOYOW/BTC): the archive names files by the exchange's id.
    monkeypatch.setitem(emulator._ids, "XBTUSDT", SYMBOL)  # the host serves BTC/USDT's files under that id too
    c = client(emulator, archive_url=None)
    c.archive = KlineArchive(emulator.url, timeout_s=10.0, max_retries=2, backoff_base_s=0.01)
    real = c.markets
    monkeypatch.setattr(c, "markets", lambda reload=False: {
        **real(reload), SYMBOL: dataclasses.replace(real(reload)[SYMBOL], id="XBTUSDT")})
    asked = []
    monkeypatch.setattr(c.archive, "fetch", lambda file, fetch=c.archive.fetch: asked.append(file.name) or fetch(file))
    days = span(D(2024, 12, 28), D(2024, 12, 30))
    report = ingest_days(c, storage, SYMBOL, days)
    assert asked == [f"XBTUSDT-1m-{d}.zip" for d in days]
    assert report.metadata()["sources"] == {"archive": 3}
    assert_exact(storage, rest_reference, source, days)


def test_cli_backfill_takes_the_archive_from_the_environment(emulator, source, rest_reference, monkeypatch, tmp_path):
    from click.testing import CliRunner

    from cli.main import cli

    monkeypatch.setenv("LAKEHOUSE_EXCHANGE", "binance")
    monkeypatch.setenv("LAKEHOUSE_EXCHANGE_URL", emulator.url)
    monkeypatch.setenv("LAKEHOUSE_ARCHIVE_URL", emulator.url)
    runner = CliRunner()
    assert runner.invoke(cli, ["symbols", "add", SYMBOL, "--start", "2024-12-01"]).exit_code == 0
    emulator.archive.inject("corrupt", count=2, match="2024-12-02")
    result = runner.invoke(cli, ["backfill", "--start", "2024-12-01", "--end", "2024-12-03", "--assets", "raw_ohlcv"],
                           catch_exceptions=False)
    assert result.exit_code == 0, result.output
    days = span(D(2024, 12, 1), D(2024, 12, 3))
    assert_exact(Storage(tmp_path / "lake"), rest_reference, source, days)
    assert emulator.archive.stats()["zip"] == 4  # two good days, the bad one twice
    # The fallback day's 2 pages and 1 gap check; `symbols add` already learnt the listing in this process.
    assert emulator.path_counts["/api/v3/klines"] == 3
    # Each day's provenance is on its own partition's materialization, beside the run's totals.
    from dagster import AssetKey, DagsterInstance

    with DagsterInstance.get() as instance:
        records = instance.fetch_materializations(AssetKey(RAW_OHLCV), limit=10).records
        observed = {r.partition_key: r.asset_materialization.metadata for r in records}
        materialized = records[0]
    assert {k.split("|")[0]: md["source"].value for k, md in observed.items()} == {
        "2024-12-01": "archive", "2024-12-02": "rest", "2024-12-03": "archive"}
    assert "checksum mismatch" in observed["2024-12-02|BTC/USDT"]["archive_fallback"].value
    md = materialized.asset_materialization.metadata
    assert (md["sources"].value, md["archive_fallbacks"].value) == ({"archive": 2, "rest": 1}, 1)


# pure parts ---------------------------------------------------------------------------------------------
START = day_start_ms(D(2024, 1, 1))
ROW = "{t},42283.58000000,42298.62000000,42283.57000000,42298.61000000,35.92724000,{c},1519456.04,1405,21.47,908029.1,0"


def csv(*rows: str) -> bytes:
    return ("\n".join(rows) + "\n").encode()


def test_parse_keeps_a_run_with_a_gap_of_whole_minutes():
    rows = parse_klines_csv(csv(*(ROW.format(t=START + i * MINUTE_MS, c=START + (i + 1) * MINUTE_MS - 1)
                                  for i in (0, 1, 4, 5))), START, START + DAY_MS)
    assert rows[:, 0].tolist() == [START + i * MINUTE_MS for i in (0, 1, 4, 5)]


def test_parse_converts_microseconds_to_the_same_milliseconds():
    ms = parse_klines_csv(csv(ROW.format(t=START, c=START + MINUTE_MS - 1)), START, START + DAY_MS)
    us = parse_klines_csv(csv(ROW.format(t=START * 1000, c=(START + MINUTE_MS) * 1000 - 1)), START, START + DAY_MS)
    np.testing.assert_array_equal(ms, us)
    assert ms.tolist() == [[START, 42283.58, 42298.62, 42283.57, 42298.61, 35.92724]]


@pytest.mark.parametrize("data, message", [
    (csv("open_time,open,high,low,close,volume,close_time,quote_volume,count,taker_buy_volume,"
         "taker_buy_quote_volume,ignore", ROW.format(t=START, c=START + MINUTE_MS - 1)), "malformed CSV"),
    (csv(ROW.format(t=START, c=START + MINUTE_MS - 1) + ",7"), "malformed CSV"),
    (csv(ROW.format(t=START, c=START + MINUTE_MS - 1).rsplit(",", 1)[0]), "malformed CSV"),
    (csv(ROW.format(t=START, c=START + MINUTE_MS - 1),
         ROW.format(t=START + MINUTE_MS, c=START + 2 * MINUTE_MS - 1).rsplit(",", 1)[0]), "missing fields"),
    (csv(ROW.format(t=START, c=START + MINUTE_MS - 1), ROW.format(t=(START + MINUTE_MS) * 1000,
                                                              c=(START + 2 * MINUTE_MS) * 1000 - 1)), "mix"),
    (csv(ROW.format(t=START, c=START + MINUTE_MS)), "close time"),
    (csv(ROW.format(t=START - MINUTE_MS, c=START - 1)), "outside the file's period"),
    (csv(ROW.format(t=START + 1000, c=START + 1000 + MINUTE_MS - 1)), "off the minute"),
    (csv(ROW.format(t=START, c=START + MINUTE_MS - 1),
         ROW.format(t=START + 90_000, c=START + 90_000 + MINUTE_MS - 1)), "off the minute"),
    (csv(ROW.format(t=START, c=START + MINUTE_MS - 1), ROW.format(t=START, c=START + MINUTE_MS - 1)), "out of order"),
    (csv(ROW.format(t=START, c=START + MINUTE_MS - 1).replace(",42298.62000000,", ',"42298.62000000",')),
     "malformed CSV"),  # Binance quotes no field
    (b"", "empty"),
])
def test_parse_is_strict(data, message):
    with pytest.raises(CorruptFile, match=message):
        parse_klines_csv(data, START, START + DAY_MS)


@pytest.mark.parametrize("method", [zipfile.ZIP_DEFLATED, zipfile.ZIP_STORED])
def test_a_zip_member_is_read_only_when_its_crc_matches(method):
    data = csv(ROW.format(t=START, c=START + MINUTE_MS - 1), ROW.format(t=START + MINUTE_MS, c=START + 2 * MINUTE_MS - 1))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as zf:
        zf.writestr("X-1m-2024-01-01.csv", data)
    good = buf.getvalue()
    with zipfile.ZipFile(io.BytesIO(good)) as zf:
        assert _read_member(zf, io.BytesIO(good), "X-1m-2024-01-01.csv") == data
    at = good.index(b"PK\x01\x02") + 16  # the CRC-32 the central directory records for the member
    bad = good[:at] + bytes([good[at] ^ 0x01]) + good[at + 1:]
    with zipfile.ZipFile(io.BytesIO(bad)) as zf, pytest.raises((CorruptFile, zipfile.BadZipFile), match="CRC"):
        _read_member(zf, io.BytesIO(bad), "X-1m-2024-01-01.csv")


def _deflated_zip(data: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("X-1m-2024-01-01.csv", data)
    return buf.getvalue()


def _with_stated_size(zipped: bytes, size: int) -> bytes:
    at = zipped.index(b"PK\x01\x02") + 24  # the uncompressed size the central directory records
    return zipped[:at] + size.to_bytes(4, "little") + zipped[at + 4:]


@pytest.mark.parametrize("damage, message", [
    (lambda z, n: _with_stated_size(z, n + 7), "inflate to its stated size|size or CRC"),
    (lambda z, n: _with_stated_size(z, n - 7), "inflate to its stated size|size or CRC"),
    (lambda z, n: _with_stated_size(z, 3 << 30), "claims 3221225472 bytes"),  # refused before any allocation
    (lambda z, n: z[:40] + bytes(b ^ 0x5A for b in z[40:60]) + z[60:], "bad zip"),  # the deflate stream itself
])
def test_a_zip_member_whose_size_or_stream_is_wrong_is_a_bad_zip(damage, message):
    data = csv(*(ROW.format(t=START + i * MINUTE_MS, c=START + (i + 1) * MINUTE_MS - 1) for i in range(50)))
    bad = damage(_deflated_zip(data), len(data))
    with zipfile.ZipFile(io.BytesIO(bad)) as zf, pytest.raises(CorruptFile, match=message):
        _read_member(zf, io.BytesIO(bad), "X-1m-2024-01-01.csv", bad)


def test_whole_months_are_one_file_other_days_daily_files():
    days = span(D(2024, 1, 30), D(2024, 3, 2))
    assert [f.name for f in plan_files("BTCUSDT", days)] == [
        "BTCUSDT-1m-2024-01-30.zip", "BTCUSDT-1m-2024-01-31.zip", "BTCUSDT-1m-2024-02.zip",
        "BTCUSDT-1m-2024-03-01.zip", "BTCUSDT-1m-2024-03-02.zip"]
    assert ArchiveFile("BTCUSDT", "2024-02").path == "data/spot/monthly/klines/BTCUSDT/1m/BTCUSDT-1m-2024-02.zip"


@pytest.mark.parametrize("env, expected", [
    ({"LAKEHOUSE_EXCHANGE": "binance"}, "https://data.binance.vision"),
    ({"LAKEHOUSE_EXCHANGE": "binance", "LAKEHOUSE_ARCHIVE_URL": "off"}, None),
    ({"LAKEHOUSE_EXCHANGE": "binance", "LAKEHOUSE_ARCHIVE_URL": "OFF"}, None),
    # Behind a proxy or the emulator, files from the real exchange must not be mixed in unasked.
    ({"LAKEHOUSE_EXCHANGE": "binance", "LAKEHOUSE_EXCHANGE_URL": "http://127.0.0.1:8090"}, None),
    ({"LAKEHOUSE_EXCHANGE": "binance", "LAKEHOUSE_EXCHANGE_URL": "http://127.0.0.1:8090",
      "LAKEHOUSE_ARCHIVE_URL": "http://127.0.0.1:8090"}, "http://127.0.0.1:8090"),
    ({"LAKEHOUSE_EXCHANGE": "kraken"}, None),
    ({}, None),
])
def test_archive_url_setting(env, expected):
    settings = Settings.from_env(env)
    assert settings.archive_url == expected
    if settings.exchange != "simulated":
        assert exchange_resource(settings).archive_url == expected


def test_archive_url_setting_must_be_a_url():
    from lakehouse.errors import ConfigError

    with pytest.raises(ConfigError, match="LAKEHOUSE_ARCHIVE_URL='data.binance.vision' must be an http"):
        Settings.from_env({"LAKEHOUSE_EXCHANGE": "binance", "LAKEHOUSE_ARCHIVE_URL": "data.binance.vision"})


def test_the_audit_refetches_an_archive_day_with_a_gap_and_confirms_what_archive_and_rest_agree_on(emulator, storage):
    from lakehouse.audit import Auditor
    from lakehouse.registry import TrackedSymbol

    c = client(emulator)
    ingest_days(c, storage, SYMBOL, span(D(2024, 12, 9), LAST))
    wall = [1_700_000_000_000]
    auditor = Auditor(storage, Settings(), [RAW_OHLCV], wall_clock=lambda: wall[0])
    tracked = [TrackedSymbol(SYMBOL, "binance", D(2024, 12, 9), D(2017, 8, 17), "")]
    refetches = []
    for _ in range(20):
        audit = auditor.run(tracked, NOW)
        audit.commit(audit.plan)
        if audit.plan:
            assert [(r.action, str(r.start), str(r.end)) for r in audit.plan] == [("refetch", "2024-12-10", "2024-12-10")]
            refetches.append(ingest_days(c, storage, SYMBOL, [D(2024, 12, 10)]).days[0].source)
            continue
        waiting = [f.retry_at_ms for f in audit.findings if f.retry_at_ms]
        if not waiting:
            break
        wall[0] = max(waiting)
    assert refetches == ["archive"] * 3  # the archive again each time, its gap checked against REST each time
    assert audit.counts()["incomplete"] == 0
    assert audit.summary().endswith("1 confirmed source gaps (audited 26 partitions of 1 symbol(s) x 1 layer(s))")
