import datetime as dt

import numpy as np
import polars as pl
import pytest
import talib

from lakehouse.clean import clean_candles
from lakehouse.exchange.simulated import SimulatedSource
from lakehouse.indicators import WARMUP_BARS, compute_indicators, history_days_needed
from lakehouse.resample import resample
from lakehouse.schema import CLEAN_BARS, INDICATOR_COLUMNS, INDICATORS, LAYERS
from lakehouse.timeutil import DAY_MS, day_start_ms

FIRST = dt.date(2024, 1, 1)
DAYS = 30
SHORT = ("1m", "5m", "15m", "1h")  # what 30 simulated days can warm up
RECURSIVE = ("ema_9", "ema_21", "rsi_14", "macd", "macd_signal", "macd_hist", "atr_14")


@pytest.fixture(scope="module")
def bars():
    """30 days of clean_bars for BTC/USDT, with the simulator's random outages left in."""
    arr = SimulatedSource().candles("BTC/USDT", day_start_ms(FIRST), day_start_ms(FIRST) + DAYS * DAY_MS)
    raw = pl.DataFrame({
        "timestamp": pl.Series(arr[:, 0].astype(np.int64)).cast(pl.Datetime("ms", "UTC")),
        "open": arr[:, 1], "high": arr[:, 2], "low": arr[:, 3], "close": arr[:, 4], "volume": arr[:, 5],
    }).with_columns(exchange=pl.lit("simulated"), symbol=pl.lit("BTC/USDT"), fetched_at=pl.col("timestamp"))
    return resample(clean_candles(raw).bars, intervals=SHORT[1:])


def daily_bars(n, interval="1d", seed=7):
    """n synthetic bars of `interval` (a volatile random walk), as clean_bars rows."""
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.04, n)))
    open_ = np.concatenate([[100.0], close[:-1]])
    step = {"1d": 86_400_000, "4h": 14_400_000}[interval]
    return pl.DataFrame({
        "timestamp": pl.Series(day_start_ms(dt.date(2020, 1, 1)) + step * np.arange(n)).cast(pl.Datetime("ms", "UTC")),
        "interval": interval,
        "open": open_, "high": np.maximum(open_, close) * 1.02, "low": np.minimum(open_, close) * 0.98,
        "close": close, "volume": 1.0, "candles": 1440, "complete": True,
        "exchange": "simulated", "symbol": "SIM000/USDT",
    }).pipe(lambda df: df.select([pl.col(c).cast(t) for c, t in LAYERS[CLEAN_BARS].items()]))


def talib_reference(series: pl.DataFrame) -> dict[str, np.ndarray]:
    c, h, l = (series.get_column(x).to_numpy() for x in ("close", "high", "low"))
    macd, signal, hist = talib.MACD(c, 12, 26, 9)
    upper, middle, lower = talib.BBANDS(c, 20, 2, 2, 0)
    return {
        "sma_20": talib.SMA(c, 20), "sma_50": talib.SMA(c, 50), "sma_200": talib.SMA(c, 200),
        "ema_9": talib.EMA(c, 9), "ema_21": talib.EMA(c, 21), "rsi_14": talib.RSI(c, 14),
        "macd": macd, "macd_signal": signal, "macd_hist": hist,
        "bb_upper": upper, "bb_middle": middle, "bb_lower": lower, "atr_14": talib.ATR(h, l, c, 14),
    }


def max_scaled_diff(a: pl.DataFrame, b: pl.DataFrame) -> float:
    """Largest difference of any indicator, relative to the bar's close (RSI: to 100)."""
    assert a.select("timestamp", "interval").equals(b.select("timestamp", "interval"))
    worst = 0.0
    for col in INDICATOR_COLUMNS:
        x, y = a.get_column(col).to_numpy(), b.get_column(col).to_numpy()
        assert np.array_equal(np.isnan(x), np.isnan(y)), col
        scale = 100.0 if col == "rsi_14" else np.abs(a.get_column("close").to_numpy())
        worst = max(worst, float(np.nanmax(np.abs(x - y) / scale, initial=0.0)))
    return worst


def test_history_days_needed():
    assert WARMUP_BARS == {iv: 600 for iv in ("1m", "5m", "15m", "1h", "4h", "1d")}
    assert {iv: history_days_needed([iv]) for iv in WARMUP_BARS} == {
        "1m": 2, "5m": 4, "15m": 8, "1h": 26, "4h": 101, "1d": 601,
    }
    assert history_days_needed() == 601
    assert history_days_needed(SHORT) == 26


def test_values_are_talibs_on_the_whole_history(bars):
    out = compute_indicators(bars, FIRST, FIRST + dt.timedelta(days=DAYS))
    assert out.schema == pl.Schema(LAYERS[INDICATORS])
    for interval in SHORT:
        series = bars.filter(pl.col("interval") == interval)
        mine = out.filter(pl.col("interval") == interval)
        assert mine.get_column("timestamp").equals(series.get_column("timestamp"))
        for col, expected in talib_reference(series).items():
            got = mine.get_column(col)
            # TA-Lib's NaN warm-up is null here, never a number.
            assert got.null_count() == np.isnan(expected).sum() and not got.is_nan().any(), (interval, col)
            np.testing.assert_array_equal(got.fill_null(np.nan).to_numpy(), expected, err_msg=f"{interval} {col}")


def test_a_late_start_matches_the_whole_history_after_warm_up(bars):
    start = FIRST + dt.timedelta(days=DAYS - 2)
    full = compute_indicators(bars, FIRST, FIRST + dt.timedelta(days=DAYS))
    late = compute_indicators(bars, start, FIRST + dt.timedelta(days=DAYS))
    assert late.get_column("warmup_ok").all()
    same_rows = full.filter(pl.col("timestamp") >= pl.lit(start).cast(pl.Datetime("ms", "UTC")))
    assert max_scaled_diff(same_rows, late) <= 1e-9
    # Stronger than the 1e-9 contract: after 600 bars the restarted recursions land on the very same doubles.
    assert same_rows.select(RECURSIVE).equals(late.select(RECURSIVE))


def test_day_by_day_equals_one_shot(bars):
    """Each day computed with exactly history_days_needed() days before it, as the glue does."""
    history = dt.timedelta(days=history_days_needed(SHORT))
    days = [FIRST + dt.timedelta(days=d) for d in range(DAYS - 3, DAYS)]

    def window(lo, hi):
        lo_ts, hi_ts = (pl.lit(x).cast(pl.Datetime("ms", "UTC")) for x in (lo, hi))
        return bars.filter((pl.col("timestamp") >= lo_ts) & (pl.col("timestamp") < hi_ts))

    one_shot = compute_indicators(window(days[0] - history, days[-1] + dt.timedelta(days=1)),
                                  days[0], days[-1] + dt.timedelta(days=1))
    by_day = pl.concat([
        compute_indicators(window(d - history, d + dt.timedelta(days=1)), d, d + dt.timedelta(days=1)) for d in days
    ]).sort("interval", "timestamp")
    one_shot = one_shot.sort("interval", "timestamp")
    assert by_day.get_column("warmup_ok").all()
    assert max_scaled_diff(by_day, one_shot) <= 1e-9
    assert by_day.select(RECURSIVE).equals(one_shot.select(RECURSIVE))


@pytest.mark.parametrize("interval", ["1d", "4h"])
def test_day_by_day_equals_one_shot_for_long_intervals(interval):
    """A 1d SMA(200) and the EMA warm-up need 600 days: synthetic bars stand in for 800 days of data."""
    bars = daily_bars(800 if interval == "1d" else 6 * 700, interval)
    history = dt.timedelta(days=history_days_needed([interval]))
    last = bars.get_column("timestamp").max().date()
    days = [last - dt.timedelta(days=d) for d in range(4, -1, -1)]
    ts = pl.col("timestamp").dt.date()
    one_shot = compute_indicators(bars.filter(ts >= days[0] - history), days[0], last + dt.timedelta(days=1))
    by_day = pl.concat([
        compute_indicators(bars.filter((ts >= d - history) & (ts <= d)), d, d + dt.timedelta(days=1)) for d in days
    ])
    whole = compute_indicators(bars, bars.get_column("timestamp").min(), last + dt.timedelta(days=1))
    whole = whole.filter(ts >= days[0])
    assert by_day.height == one_shot.height == whole.height == (5 if interval == "1d" else 30)
    assert by_day.get_column("warmup_ok").all()
    assert max_scaled_diff(by_day, one_shot) <= 1e-9
    assert max_scaled_diff(by_day, whole) <= 1e-9


def test_too_little_history_gives_nulls_not_numbers():
    out = compute_indicators(daily_bars(60), dt.date(2020, 1, 1), dt.date(2021, 1, 1))
    assert out.height == 60
    assert out.get_column("sma_200").null_count() == 60
    assert out.get_column("sma_50").null_count() == 49
    assert out.get_column("ema_9").null_count() == 8
    assert out.get_column("macd").null_count() == 33
    assert out.get_column("rsi_14").null_count() == 14 and out.get_column("atr_14").null_count() == 14
    assert not out.get_column("warmup_ok").any()
    assert not any(out.get_column(c).is_nan().any() for c in INDICATOR_COLUMNS)


def test_rows_only_within_start_end(bars):
    start = dt.datetime(2024, 1, 20, 6, tzinfo=dt.timezone.utc)
    end = dt.datetime(2024, 1, 20, 7, tzinfo=dt.timezone.utc)
    out = compute_indicators(bars, start, end)
    assert dict(out.group_by("interval").len().iter_rows()) == {"1m": 60, "5m": 12, "15m": 4, "1h": 1}
    assert out.get_column("timestamp").min() >= start and out.get_column("timestamp").max() < end
    assert compute_indicators(bars, dt.date(2030, 1, 1), dt.date(2030, 1, 2)).height == 0


def test_input_order_does_not_matter(bars):
    day = FIRST + dt.timedelta(days=20)
    expected = compute_indicators(bars, day, day + dt.timedelta(days=1))
    shuffled = bars.sample(fraction=1.0, shuffle=True, seed=3)
    assert compute_indicators(shuffled, day, day + dt.timedelta(days=1)).equals(expected)


def test_one_symbol_at_a_time(bars):
    other = bars.head(10).with_columns(symbol=pl.lit("ETH/USDT"))
    with pytest.raises(ValueError, match="one \\(exchange, symbol\\)"):
        compute_indicators(pl.concat([bars.head(10), other]), FIRST, FIRST + dt.timedelta(days=1))
