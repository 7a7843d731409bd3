import datetime as dt

import numpy as np
import polars as pl
import pytest

from lakehouse.clean import clean_candles
from lakehouse.exchange.simulated import SimulatedSource
from lakehouse.indicators import compute_indicators
from lakehouse.resample import resample
from lakehouse.schema import INDICATOR_COLUMNS, INDICATORS, LAYERS, SIGNALS
from lakehouse.signals import RULES, Rule, compute_signals, fmt_number
from lakehouse.timeutil import DAY_MS, day_start_ms

T0 = dt.datetime(2024, 1, 2, tzinfo=dt.timezone.utc)
FIRST = dt.date(2024, 1, 1)


def at(hour):
    return T0 + dt.timedelta(hours=hour)


def indicators(rows, symbol="BTC/USDT", interval="1h"):
    """An indicators frame from dicts holding only the columns a test cares about."""
    full = [
        {"timestamp": at(i), "interval": interval, "exchange": "simulated", "symbol": symbol, "close": 1.0,
         **{c: None for c in INDICATOR_COLUMNS}, "warmup_ok": True, **row}
        for i, row in enumerate(rows)
    ]
    return pl.DataFrame(full, schema=LAYERS[INDICATORS])


@pytest.fixture(scope="module")
def simulated_indicators():
    arr = SimulatedSource().candles("BTC/USDT", day_start_ms(FIRST), day_start_ms(FIRST) + 4 * DAY_MS)
    raw = pl.DataFrame({
        "timestamp": pl.Series(arr[:, 0].astype(np.int64)).cast(pl.Datetime("ms", "UTC")),
        "open": arr[:, 1], "high": arr[:, 2], "low": arr[:, 3], "close": arr[:, 4], "volume": arr[:, 5],
    }).with_columns(exchange=pl.lit("simulated"), symbol=pl.lit("BTC/USDT"), fetched_at=pl.col("timestamp"))
    bars = resample(clean_candles(raw).bars, intervals=("5m", "15m", "1h"))
    return compute_indicators(bars, FIRST, FIRST + dt.timedelta(days=4))


def test_ema_cross_literal():
    out = compute_signals(indicators([
        {"ema_9": 62_080.0, "ema_21": 62_085.0},
        {"ema_9": 62_085.0, "ema_21": 62_085.0},  # touching is not crossing
        {"ema_9": 62_101.5, "ema_21": 62_090.2, "close": 62_110.0},
        {"ema_9": 62_101.5, "ema_21": 62_090.2},  # still above: no new signal
        {"ema_9": 62_050.25, "ema_21": 62_070.0, "close": 62_000.0},
    ]))
    assert out.schema == pl.Schema(LAYERS[SIGNALS])
    assert out.rows() == [
        (at(2), "simulated", "BTC/USDT", "1h", "ema_9_21_cross", 1, "EMA9 62,101.5 crossed above EMA21 62,090.2",
         62_110.0),
        (at(4), "simulated", "BTC/USDT", "1h", "ema_9_21_cross", -1, "EMA9 62,050.2 crossed below EMA21 62,070.0",
         62_000.0),
    ]


def test_each_rule_literal():
    out = compute_signals(indicators([
        {"rsi_14": 28.0, "macd": -2.0, "macd_signal": -1.0, "close": 99.0, "sma_200": 100.0,
         "bb_upper": 110.0, "bb_lower": 90.0},
        {"rsi_14": 31.5, "macd": -0.5, "macd_signal": -0.75, "close": 100.5, "sma_200": 100.0,
         "bb_upper": 100.25, "bb_lower": 90.0},
        {"rsi_14": 72.0, "macd": -0.5, "macd_signal": -0.75, "close": 100.5, "sma_200": 100.0,
         "bb_upper": 110.0, "bb_lower": 90.0},
        {"rsi_14": 69.5, "macd": -0.8, "macd_signal": -0.7, "close": 85.0, "sma_200": 100.0,
         "bb_upper": 110.0, "bb_lower": 88.0},
    ]))
    assert out.select("timestamp", "rule", "direction", "reason").rows() == [
        (at(1), "bollinger_breakout", 1, "close 100.5 broke above the upper Bollinger band 100.25"),
        (at(1), "macd_signal_cross", 1, "MACD -0.5 crossed above MACD signal -0.75"),
        (at(1), "rsi_30_70", 1, "RSI14 31.5 crossed above 30"),
        (at(1), "sma_200_trend", 1, "close 100.5 crossed above SMA200 100.0"),
        (at(3), "bollinger_breakout", -1, "close 85.0 broke below the lower Bollinger band 88.0"),
        (at(3), "macd_signal_cross", -1, "MACD -0.8 crossed below MACD signal -0.7"),
        (at(3), "rsi_30_70", -1, "RSI14 69.5 crossed below 70"),
        (at(3), "sma_200_trend", -1, "close 85.0 crossed below SMA200 100.0"),
    ]


def test_nulls_never_fire():
    out = compute_signals(indicators([{"ema_9": None, "ema_21": 1.0}, {"ema_9": 2.0, "ema_21": 1.0}]))
    assert out.height == 0


def test_series_do_not_leak_into_each_other():
    a = indicators([{"ema_9": 1.0, "ema_21": 2.0}], symbol="AAA/USDT")
    b = indicators([{"ema_9": 3.0, "ema_21": 2.0}], symbol="BBB/USDT")
    five = indicators([{"ema_9": 1.0, "ema_21": 2.0}], interval="5m")
    assert compute_signals(pl.concat([a, b, five])).height == 0


def test_a_rule_is_a_line_of_data():
    rsi_50 = Rule("rsi_50", "rsi_14", up=50.0, down=None, template="{line_label} {line} rose {dir} {ref}")
    out = compute_signals(indicators([{"rsi_14": 45.0}, {"rsi_14": 55.0}, {"rsi_14": 45.0}]), rules=(rsi_50,))
    assert out.select("rule", "direction", "reason").rows() == [("rsi_50", 1, "RSI14 55.0 rose above 50")]
    assert [r.name for r in RULES] == [
        "ema_9_21_cross", "rsi_30_70", "macd_signal_cross", "sma_200_trend", "bollinger_breakout",
    ]


def test_fmt_number():
    assert [fmt_number(v) for v in (62_101.5, 31.2345, 0.00451234, -1_056.62, 0.0, 1_234_567.0, 3e-9, 100.5, 85.0)] == [
        "62,101.5", "31.2345", "0.00451234", "-1,056.62", "0", "1,234,567.0", "3e-09", "100.5", "85.0",
    ]


def test_no_look_ahead(simulated_indicators):
    """Truncating the future never changes a past signal."""
    full = compute_signals(simulated_indicators)
    assert set(full.get_column("rule")) == {r.name for r in RULES}
    for hours in (7, 30, 61, 95):
        cut = pl.lit(T0 + dt.timedelta(hours=hours)).cast(pl.Datetime("ms", "UTC"))
        truncated = compute_signals(simulated_indicators.filter(pl.col("timestamp") < cut))
        assert truncated.equals(full.filter(pl.col("timestamp") < cut))


def test_day_window_with_the_previous_day_equals_one_shot(simulated_indicators):
    full = compute_signals(simulated_indicators)
    ts = pl.col("timestamp").dt.date()
    by_day = pl.concat([
        compute_signals(simulated_indicators.filter((ts >= d - dt.timedelta(days=1)) & (ts <= d)),
                        start=d, end=d + dt.timedelta(days=1))
        for d in (FIRST + dt.timedelta(days=i) for i in range(1, 4))
    ]).sort("exchange", "symbol", "interval", "timestamp", "rule")
    expected = full.filter(ts >= FIRST + dt.timedelta(days=1))
    expected = expected.sort("exchange", "symbol", "interval", "timestamp", "rule")
    assert by_day.height > 100 and by_day.equals(expected)


def test_order_of_input_rows_does_not_matter(simulated_indicators):
    expected = compute_signals(simulated_indicators)
    assert compute_signals(simulated_indicators.sample(fraction=1.0, shuffle=True, seed=5)).equals(expected)


def test_empty():
    assert compute_signals(pl.DataFrame(schema=LAYERS[INDICATORS])).schema == pl.Schema(LAYERS[SIGNALS])


def test_column_wise_formatting_equals_pythons_on_any_number():
    """Reasons are built column-wise for speed; every number must read exactly as Python formats it."""
    from lakehouse.signals import _fmt_many, _fmt_one

    rng = np.random.default_rng(7)
    values = np.concatenate([
        rng.normal(0, 1, 20_000) * 10.0 ** rng.integers(-9, 13, 20_000),
        [0.0, -0.0, np.nan, np.inf, -np.inf, 1e-7, 0.5, 2.5, 1e20, -1e25, 999_999.95, 1e-6, 9.99999e-7, 12_345.675],
    ])
    assert _fmt_many(values) == [_fmt_one(v) for v in values.tolist()]
