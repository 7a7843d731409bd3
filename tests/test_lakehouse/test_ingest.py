import datetime as dt

import numpy as np
import pytest

from lakehouse.errors import IncompleteFetchError
from lakehouse.exchange.simulated import SimulatedExchange, SimulatedSource
from lakehouse.ingest import contiguous_ranges, ingest_days
from lakehouse.schema import RAW_OHLCV
from lakehouse.timeutil import DAY_MS, MINUTE_MS, day_start_ms

from helpers import NOW_MS

D1 = dt.date(2024, 1, 1)


def days(first, n):
    return [first + dt.timedelta(days=i) for i in range(n)]


def stored(storage, symbol, day):
    return storage.read_partition(RAW_OHLCV, "simulated", symbol, day)


def test_range_is_fetched_in_one_pass_and_equals_ground_truth(storage, sim_exchange, source):
    report = ingest_days(sim_exchange, storage, "BTC/USDT", days(D1, 3))
    assert [d.candles for d in report.days] == [1440, 1440, 1440]
    assert report.requests == 5  # 4320 candles in pages of 1000 across day boundaries, plus none wasted
    truth = source.candles("BTC/USDT", day_start_ms(D1), day_start_ms(D1) + 3 * DAY_MS)
    got = np.vstack([stored(storage, "BTC/USDT", d).select(
        (__import__("polars").col("timestamp").dt.epoch("ms").cast(float)), "open", "high", "low", "close", "volume"
    ).to_numpy() for d in days(D1, 3)])
    np.testing.assert_array_equal(got, truth)


def test_rerun_gives_identical_candles(storage, sim_exchange):
    ingest_days(sim_exchange, storage, "ETH/USDT", [D1])
    first = stored(storage, "ETH/USDT", D1).drop("fetched_at")
    ingest_days(sim_exchange, storage, "ETH/USDT", [D1])
    assert stored(storage, "ETH/USDT", D1).drop("fetched_at").equals(first)


def test_source_outage_is_a_real_gap_not_a_failure(storage):
    start = day_start_ms(D1) + 600 * MINUTE_MS
    source = SimulatedSource(outage_rate=0.0, outages=((start, start + 45 * MINUTE_MS),))
    report = ingest_days(SimulatedExchange(source, clock=lambda: NOW_MS), storage, "BTC/USDT", [D1])
    day = report.days[0]
    assert (day.candles, day.expected, day.missing_minutes) == (1395, 1440, 45)
    assert day.gaps == [(start, start + 45 * MINUTE_MS)]


def test_whole_day_outage_writes_an_empty_partition(storage):
    source = SimulatedSource(outage_rate=0.0, outages=((day_start_ms(D1), day_start_ms(D1) + DAY_MS),))
    report = ingest_days(SimulatedExchange(source, clock=lambda: NOW_MS), storage, "BTC/USDT", [D1])
    assert (report.days[0].candles, report.days[0].expected) == (0, 1440)
    assert stored(storage, "BTC/USDT", D1).height == 0


def test_current_day_never_stores_the_forming_candle(storage, sim_exchange):
    today = dt.date(2024, 3, 10)  # NOW_MS is 12:34:30 on that day
    report = ingest_days(sim_exchange, storage, "BTC/USDT", [today])
    assert (report.days[0].candles, report.days[0].expected) == (754, 754)
    last = stored(storage, "BTC/USDT", today)["timestamp"].max()
    assert last == dt.datetime(2024, 3, 10, 12, 33, tzinfo=dt.timezone.utc)


def test_days_before_listing_expect_nothing(storage, sim_exchange):
    report = ingest_days(sim_exchange, storage, "SOL/USDT", [dt.date(2020, 8, 10), dt.date(2020, 8, 11)])
    assert [(d.candles, d.expected) for d in report.days] == [(0, 0), (1080, 1080)]  # listed 06:00 UTC


class _Lying(SimulatedExchange):
    """Answers with a candle outside the window asked for (a proxy serving the wrong page)."""

    def fetch_page(self, symbol, since_ms, until_ms, limit):
        page = super().fetch_page(symbol, since_ms, until_ms, limit).copy()
        if since_ms > 0 and len(page):
            page[-1, 0] = until_ms + MINUTE_MS
        return page


def test_a_page_outside_the_window_fails_and_writes_nothing(storage, source):
    with pytest.raises(IncompleteFetchError, match="outside the requested window"):
        ingest_days(_Lying(source, clock=lambda: NOW_MS), storage, "BTC/USDT", [D1])
    assert list(storage.list_partitions(RAW_OHLCV)) == []


def test_keep_skips_days_already_done(storage, sim_exchange):
    report = ingest_days(sim_exchange, storage, "BTC/USDT", days(D1, 3), keep=lambda d: d == D1)
    assert [(str(d.day), d.skipped) for d in report.days] == [("2024-01-01", True), ("2024-01-02", False), ("2024-01-03", False)]
    assert stored(storage, "BTC/USDT", D1) is None


def test_contiguous_ranges():
    d = dt.date(2024, 1, 1)
    assert contiguous_ranges([d, d + dt.timedelta(1), d + dt.timedelta(5), d + dt.timedelta(2)]) == [
        (d, d + dt.timedelta(2)), (d + dt.timedelta(5), d + dt.timedelta(5))]


def test_gaps_of_a_window_from_its_open_times():
    from lakehouse.ingest import _gaps

    m = 60_000
    minutes = lambda *i: np.asarray(i, dtype=np.int64) * m  # noqa: E731
    assert _gaps(minutes(0, 1, 2, 3), 0, 4 * m) == []
    assert _gaps(minutes(0, 1, 3), 0, 4 * m) == [(2 * m, 3 * m)]
    assert _gaps(minutes(1, 2, 3, 4), 0, 4 * m) == [(0, m)]  # as many rows as minutes, one past the end
    assert _gaps(minutes(0, 1, 2), 0, 4 * m) == [(3 * m, 4 * m)]
    assert _gaps(minutes(), 0, 2 * m) == [(0, 2 * m)]


def test_day_start_ms_is_midnight_utc():
    from lakehouse.timeutil import day_start_ms

    assert day_start_ms(dt.date(1970, 1, 1)) == 0
    assert day_start_ms(dt.date(2024, 1, 1)) == 1_704_067_200_000
    assert day_start_ms(dt.date(2024, 3, 1)) - day_start_ms(dt.date(2024, 2, 28)) == 2 * 86_400_000  # leap day
    assert day_start_ms(dt.datetime(2025, 1, 1, 23, 59)) == 1_735_689_600_000  # the time of day is ignored
