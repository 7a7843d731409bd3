import datetime as dt

import numpy as np
import polars as pl
import pytest

from lakehouse.checks import (
    completeness, find_gaps, indicator_sanity, ohlc_sanity, signals_reference_bars, uniqueness,
)
from lakehouse.clean import clean_candles
from lakehouse.exchange.simulated import SimulatedSource
from lakehouse.indicators import compute_indicators
from lakehouse.resample import resample
from lakehouse.signals import compute_signals
from lakehouse.timeutil import DAY_MS, MINUTE_MS, day_start_ms

DAY = dt.date(2024, 1, 2)
T0 = dt.datetime(2024, 1, 2, tzinfo=dt.timezone.utc)


def at(minute):
    return T0 + dt.timedelta(minutes=minute)


def bars(rows, interval="1m"):
    """rows of (minute, open, high, low, close, volume)."""
    return pl.DataFrame(
        [{"timestamp": at(m), "interval": interval, "open": o, "high": h, "low": l, "close": c, "volume": v,
          "candles": 1, "complete": True, "exchange": "simulated", "symbol": "BTC/USDT"}
         for m, o, h, l, c, v in rows],
        schema_overrides={"timestamp": pl.Datetime("ms", "UTC"), "candles": pl.Int32},
    )


@pytest.fixture(scope="module")
def derived():
    """Two simulated days with a 70-minute outage on the second: clean_bars, indicators and signals."""
    outage = (day_start_ms(DAY) + 60 * MINUTE_MS, day_start_ms(DAY) + 130 * MINUTE_MS)
    src = SimulatedSource(outage_rate=0.0, outages=(outage,))
    arr = src.candles("BTC/USDT", day_start_ms(DAY) - DAY_MS, day_start_ms(DAY) + DAY_MS)
    raw = pl.DataFrame({
        "timestamp": pl.Series(arr[:, 0].astype(np.int64)).cast(pl.Datetime("ms", "UTC")),
        "open": arr[:, 1], "high": arr[:, 2], "low": arr[:, 3], "close": arr[:, 4], "volume": arr[:, 5],
    }).with_columns(exchange=pl.lit("simulated"), symbol=pl.lit("BTC/USDT"), fetched_at=pl.col("timestamp"))
    clean = resample(clean_candles(raw).bars)
    ind = compute_indicators(clean, DAY - dt.timedelta(days=1), DAY + dt.timedelta(days=1))
    return clean, ind, compute_signals(ind)


def test_ohlc_sanity(derived):
    clean, _, _ = derived
    assert ohlc_sanity(clean)[0]
    passed, meta = ohlc_sanity(bars([
        (0, 10.0, 11.0, 9.0, 10.0, 1.0),
        (1, 10.0, 9.0, 11.0, 10.0, 1.0),
        (2, 10.0, 11.0, 9.0, 12.0, -1.0),
        (3, float("nan"), 11.0, 9.0, 10.0, 1.0),
    ]))
    assert not passed
    assert meta == {
        "rows": 4, "violations": 3, "non_finite": 1, "high_below_low": 1, "open_outside_range": 1,
        "close_outside_range": 2, "negative_volume": 1,
        "examples": [
            "timestamp=2024-01-02T00:01:00Z, interval=1m, open=10.0, high=9.0, low=11.0, close=10.0, volume=1.0",
            "timestamp=2024-01-02T00:02:00Z, interval=1m, open=10.0, high=11.0, low=9.0, close=12.0, volume=-1.0",
            "timestamp=2024-01-02T00:03:00Z, interval=1m, open=nan, high=11.0, low=9.0, close=10.0, volume=1.0",
        ],
    }


def test_uniqueness(derived):
    clean, _, _ = derived
    assert uniqueness(clean) == (True, {"rows": clean.height, "duplicated_keys": 0, "extra_rows": 0, "examples": []})
    same_minute = bars([(0, 1.0, 1.0, 1.0, 1.0, 1.0)] * 3 + [(1, 1.0, 1.0, 1.0, 1.0, 1.0)])
    five = bars([(0, 1.0, 1.0, 1.0, 1.0, 1.0)], interval="5m")  # another interval: not a duplicate
    passed, meta = uniqueness(pl.concat([same_minute, five]))
    assert not passed
    assert meta["duplicated_keys"] == 1 and meta["extra_rows"] == 2
    assert meta["examples"] == [
        "exchange=simulated, symbol=BTC/USDT, interval=1m, timestamp=2024-01-02T00:00:00Z, len=3"
    ]


def test_find_gaps_literal():
    ts = [day_start_ms(DAY) + m * MINUTE_MS for m in (2, 3, 7, 8)]
    assert find_gaps(ts) == [(ts[1] + MINUTE_MS, ts[2], 3)]
    start, end = day_start_ms(DAY), day_start_ms(DAY) + 10 * MINUTE_MS
    assert [(s // MINUTE_MS % 1440, e // MINUTE_MS % 1440, n) for s, e, n in find_gaps(ts, start, end)] == [
        (0, 2, 2), (4, 7, 3), (9, 10, 1),
    ]
    assert find_gaps([], start, end) == [(start, end, 10)]


def test_completeness_lists_the_outage(derived):
    clean, _, _ = derived
    day = clean.filter(pl.col("timestamp").dt.date() == DAY)
    passed, meta = completeness(day, 1440, DAY, DAY + dt.timedelta(days=1))
    assert not passed
    assert meta == {
        "expected_minutes": 1440, "present_minutes": 1370, "missing_minutes": 70, "gap_count": 1,
        "largest_gap_minutes": 70, "gaps": [("2024-01-02T01:00:00Z", "2024-01-02T02:10:00Z", 70)],
    }
    previous = clean.filter(pl.col("timestamp").dt.date() == DAY - dt.timedelta(days=1))
    assert completeness(previous, 1440, DAY - dt.timedelta(days=1), DAY)[0]


def test_indicator_sanity(derived):
    _, ind, _ = derived
    passed, meta = indicator_sanity(ind)
    assert passed and meta["warm_rows"] > 0 and meta["violations"] == 0
    warm = ind.get_column("warmup_ok").arg_true()
    row = pl.int_range(pl.len())
    broken = ind.with_columns(
        rsi_14=pl.when(row == warm[-1]).then(101.0).otherwise(pl.col("rsi_14")),
        sma_200=pl.when(row == warm[-2]).then(None).otherwise(pl.col("sma_200")),
    )
    passed, meta = indicator_sanity(broken)
    assert not passed
    assert (meta["violations"], meta["rsi_out_of_range"], meta["null_after_warmup"]) == (2, 1, 1)


def test_signals_reference_bars(derived):
    clean, _, sig = derived
    assert sig.height > 0
    assert signals_reference_bars(sig, clean) == (
        True, {"signals": sig.height, "without_bar": 0, "close_mismatch": 0, "examples": []}
    )
    moved = sig.head(2).with_columns(pl.col("timestamp") + dt.timedelta(seconds=30))
    wrong_close = sig.slice(2, 1).with_columns(pl.col("close") + 1)
    passed, meta = signals_reference_bars(pl.concat([moved, wrong_close, sig.slice(3)]), clean)
    assert not passed
    assert (meta["without_bar"], meta["close_mismatch"], len(meta["examples"])) == (2, 1, 3)
