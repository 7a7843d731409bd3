"""Technical indicators per (symbol, interval), computed by TA-Lib so that the definitions are TA-Lib's own.

Warm-up design (why a day partition equals one computation over the whole history):
SMA and Bollinger bands have finite memory (at most 200 bars), but EMA, MACD, RSI and ATR are recursions
seeded at the first bar TA-Lib sees, so their values depend on where the series starts. Every computation
therefore starts exactly WARMUP_BARS bars of the interval before the first requested bar (or at the symbol's
first bar, if it is younger), whatever extra history the caller passes. The difference a later start makes
shrinks by the slowest decay factor at each bar, Wilder's 13/14 (RSI, ATR), then EMA(26)'s 25/27: after 600
bars it is 13/14 ** 586 ~ 1.5e-19 times the initial one, below half an ulp, so the recursions land on the
very same doubles as a run from the symbol's first bar. SMA and Bollinger keep TA-Lib's running sums, whose
rounding depends on where they started: about 1e-14 of the price. So a day computed alone, a month computed
in one go and the whole history agree within 1e-9 of the price (EMA, RSI, MACD, ATR: bit for bit in every
case tested); tests/test_lakehouse/test_indicators.py checks both.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Iterable

import numpy as np
import polars as pl
import talib

from .resample import ALL_INTERVALS, INTERVAL_MINUTES, interval_minutes
from .schema import INDICATOR_COLUMNS, INDICATORS, conform, empty
from .timeutil import MINUTES_PER_DAY, day_start_ms

CONVERGENCE_BARS = 600
# Prior bars of the same interval a bar needs before its values no longer depend on the history's start.
WARMUP_BARS: dict[str, int] = {iv: CONVERGENCE_BARS for iv in INTERVAL_MINUTES}


def history_days_needed(intervals: Iterable[str] = ALL_INTERVALS) -> int:
    """Previous day partitions to read so that every bar of a day has its full warm-up (one spare day
    absorbs an exchange outage)."""
    return max(math.ceil(WARMUP_BARS[iv] * interval_minutes(iv) / MINUTES_PER_DAY) + 1 for iv in intervals)


def talib_indicators(close: np.ndarray, high: np.ndarray, low: np.ndarray) -> dict[str, np.ndarray]:
    """Every indicator column for one series, NaN where TA-Lib has too few bars."""
    macd, macd_signal, macd_hist = talib.MACD(close, fastperiod=12, slowperiod=26, signalperiod=9)
    bb_upper, bb_middle, bb_lower = talib.BBANDS(close, timeperiod=20, nbdevup=2, nbdevdn=2, matype=0)
    return {
        "sma_20": talib.SMA(close, 20),
        "sma_50": talib.SMA(close, 50),
        "sma_200": talib.SMA(close, 200),
        "ema_9": talib.EMA(close, 9),
        "ema_21": talib.EMA(close, 21),
        "rsi_14": talib.RSI(close, 14),
        "macd": macd,
        "macd_signal": macd_signal,
        "macd_hist": macd_hist,
        "bb_upper": bb_upper,
        "bb_middle": bb_middle,
        "bb_lower": bb_lower,
        "atr_14": talib.ATR(high, low, close, 14),
    }


def to_ms(value: int | dt.date | dt.datetime) -> int:
    """Epoch milliseconds of an int (passed through), a UTC date (its midnight) or an aware datetime."""
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value}: pass an aware (UTC) datetime")
        return int(value.timestamp() * 1000)
    if isinstance(value, dt.date):
        return day_start_ms(value)
    return int(value)


def _one_interval(part: pl.DataFrame, interval: str, start_ms: int, end_ms: int) -> pl.DataFrame | None:
    ts = part.get_column("timestamp").cast(pl.Int64).to_numpy()
    if ts.size > 1 and not (np.diff(ts) > 0).all():
        part = part.sort("timestamp")
        ts = part.get_column("timestamp").cast(pl.Int64).to_numpy()
        if not (np.diff(ts) > 0).all():
            raise ValueError(f"{interval} bars have duplicate timestamps; clean and resample them first")
    first, stop = np.searchsorted(ts, [start_ms, end_ms])
    if stop <= first:
        return None
    anchor = max(0, first - WARMUP_BARS[interval])  # the fixed start: see the module docstring
    window = part.slice(anchor, stop - anchor)
    close, high, low = (window.get_column(c).to_numpy() for c in ("close", "high", "low"))
    values = talib_indicators(close, high, low)
    skip = first - anchor
    out = part.slice(first, stop - first).select("timestamp", "interval", "exchange", "symbol", "close")
    return out.with_columns(
        *(pl.Series(name, arr[skip:], nan_to_null=True) for name, arr in values.items()),
        pl.Series("warmup_ok", np.arange(skip, stop - anchor) >= WARMUP_BARS[interval]),
    )


def _by_interval(bars: pl.DataFrame) -> dict[str, pl.DataFrame]:
    """Split by interval; clean_bars keeps each interval contiguous, so runs are sliced instead of hashed."""
    runs = bars.get_column("interval").rle().struct.unnest()
    if runs.get_column("value").is_unique().all():
        offsets = np.concatenate([[0], np.cumsum(runs.get_column("len").to_numpy())])
        return {iv: bars.slice(int(offsets[i]), int(offsets[i + 1] - offsets[i]))
                for i, iv in enumerate(runs.get_column("value"))}
    return {iv: part for (iv,), part in bars.partition_by("interval", as_dict=True, maintain_order=True).items()}


def compute_indicators(
    bars: pl.DataFrame, start: int | dt.date | dt.datetime, end: int | dt.date | dt.datetime
) -> pl.DataFrame:
    """Indicators of the bars with start <= timestamp < end, one symbol, every interval present in `bars`.

    `bars` is clean_bars of one (exchange, symbol) including the warm-up history before `start`
    (history_days_needed days). Values are null where the symbol has too little history for them, and
    warmup_ok says that the bar had its full WARMUP_BARS, hence values independent of where history starts.
    """
    if bars.height and bars.select(
        ((pl.col("exchange") != pl.col("exchange").first()) | (pl.col("symbol") != pl.col("symbol").first())).any()
    ).item():
        raise ValueError("compute_indicators takes the bars of one (exchange, symbol); split them first")
    start_ms, end_ms = to_ms(start), to_ms(end)
    frames = []
    for interval, part in sorted(_by_interval(bars).items(), key=lambda kv: interval_minutes(kv[0])):
        frame = _one_interval(part, interval, start_ms, end_ms)
        if frame is not None:
            frames.append(frame)
    if not frames:
        return empty(INDICATORS)
    return conform(pl.concat(frames, how="vertical"), INDICATORS)


__all__ = [
    "CONVERGENCE_BARS", "INDICATOR_COLUMNS", "WARMUP_BARS", "compute_indicators", "history_days_needed",
    "talib_indicators", "to_ms",
]
