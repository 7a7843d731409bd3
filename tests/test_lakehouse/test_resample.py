import datetime as dt

import numpy as np
import polars as pl
import pytest

from lakehouse.clean import clean_candles
from lakehouse.exchange.simulated import SimulatedSource
from lakehouse.resample import resample
from lakehouse.schema import CLEAN_BARS, LAYERS
from lakehouse.timeutil import DAY_MS, day_start_ms

T0 = dt.datetime(2024, 1, 2, tzinfo=dt.timezone.utc)


def at(minute):
    return T0 + dt.timedelta(minutes=minute)


def bars_1m(minutes, symbol="BTC/USDT"):
    """1m bars at the given minutes after T0: open = minute, close = minute + 0.5, volume 1."""
    return pl.DataFrame({
        "timestamp": [at(m) for m in minutes],
        "open": [float(m) for m in minutes],
        "high": [m + 1.0 for m in minutes],
        "low": [m - 1.0 for m in minutes],
        "close": [m + 0.5 for m in minutes],
        "volume": [1.0] * len(minutes),
        "exchange": ["simulated"] * len(minutes),
        "symbol": [symbol] * len(minutes),
    }, schema_overrides={"timestamp": pl.Datetime("ms", "UTC")})


def simulated_bars(start_day, days, symbol="BTC/USDT", outages=()):
    src = SimulatedSource(outage_rate=0.0, outages=outages)
    arr = src.candles(symbol, day_start_ms(start_day), day_start_ms(start_day) + days * DAY_MS)
    raw = pl.DataFrame({
        "timestamp": pl.Series(arr[:, 0].astype(np.int64)).cast(pl.Datetime("ms", "UTC")),
        "open": arr[:, 1], "high": arr[:, 2], "low": arr[:, 3], "close": arr[:, 4], "volume": arr[:, 5],
    }).with_columns(exchange=pl.lit("simulated"), symbol=pl.lit(symbol), fetched_at=pl.col("timestamp"))
    return clean_candles(raw).bars


def test_five_minute_bars_from_literal_minutes():
    # Minute 3 is missing, minutes 5..9 are all missing, 10..14 are complete.
    out = resample(bars_1m([0, 1, 2, 4, 10, 11, 12, 13, 14]), intervals=("5m",))
    assert out.filter(pl.col("interval") == "5m").drop("exchange", "symbol").rows() == [
        (at(0), "5m", 0.0, 5.0, -1.0, 4.5, 4.0, 4, False),
        (at(10), "5m", 10.0, 15.0, 9.0, 14.5, 5.0, 5, True),
    ]


def test_one_minute_rows_are_kept_with_one_candle_each():
    out = resample(bars_1m([0, 1]), intervals=())
    assert out.rows() == [
        (at(0), "1m", 0.0, 1.0, -1.0, 0.5, 1.0, 1, True, "simulated", "BTC/USDT"),
        (at(1), "1m", 1.0, 2.0, 0.0, 1.5, 1.0, 1, True, "simulated", "BTC/USDT"),
    ]


def test_layer_schema_and_order():
    out = resample(bars_1m(range(0, 300, 7)))
    assert out.schema == pl.Schema(LAYERS[CLEAN_BARS])
    assert out.get_column("interval").unique(maintain_order=True).to_list() == ["1m", "5m", "15m", "1h", "4h", "1d"]
    assert out.filter(pl.col("interval") == "1d").select("timestamp", "candles", "complete").rows() == [
        (at(0), 43, False),
    ]


def test_full_day_builds_complete_bars_aligned_to_utc():
    day = dt.date(2024, 1, 2)
    one = simulated_bars(day, 1)
    out = resample(one)
    counts = dict(out.group_by("interval").len().iter_rows())
    assert counts == {"1m": 1440, "5m": 288, "15m": 96, "1h": 24, "4h": 6, "1d": 1}
    assert out.get_column("complete").all()
    daily = out.filter(pl.col("interval") == "1d").row(0, named=True)
    assert daily["timestamp"] == T0 and daily["candles"] == 1440
    assert daily["open"] == one.get_column("open")[0]
    assert daily["close"] == one.get_column("close")[-1]
    assert daily["high"] == one.get_column("high").max() and daily["low"] == one.get_column("low").min()
    assert daily["volume"] == pytest.approx(one.get_column("volume").sum(), rel=1e-12)
    four_hours = out.filter(pl.col("interval") == "4h").get_column("timestamp").dt.hour().to_list()
    assert four_hours == [0, 4, 8, 12, 16, 20]


def test_gaps_stay_gaps_and_days_stay_apart():
    day = dt.date(2024, 1, 2)
    outage = (day_start_ms(day) + 60 * 60_000, day_start_ms(day) + 130 * 60_000)  # 01:00-02:10 missing
    out = resample(simulated_bars(day, 2, outages=(outage,)))
    hourly = out.filter(pl.col("interval") == "1h")
    assert hourly.height == 47  # 01:00 has no candle at all: no invented bar
    assert hourly.filter(pl.col("timestamp") == at(120)).select("candles", "complete").row(0) == (50, False)
    daily = out.filter(pl.col("interval") == "1d").select("timestamp", "candles", "complete").rows()
    assert daily == [(T0, 1370, False), (at(1440), 1440, True)]


def test_symbols_are_resampled_apart():
    both = pl.concat([bars_1m([0, 1, 2, 3, 4], "BTC/USDT"), bars_1m([0, 1], "ETH/USDT")])
    out = resample(both, intervals=("5m",)).filter(pl.col("interval") == "5m")
    assert out.select("symbol", "candles", "complete").rows() == [("BTC/USDT", 5, True), ("ETH/USDT", 2, False)]


def test_unknown_interval_is_refused():
    with pytest.raises(ValueError, match="unknown interval '2m'"):
        resample(bars_1m([0]), intervals=("2m",))
