"""Clean 1m bars -> the clean_bars layer: the 1m bars and every coarser interval, in one frame.

Windows are aligned to the UTC epoch, so every interval divides the UTC day and no bar straddles two day
partitions. A window without any 1m candle yields no bar (gaps stay gaps); a window with some missing
minutes yields a bar with complete=false and `candles` telling how many minutes built it.
"""

from __future__ import annotations

from typing import Iterable

import polars as pl

from .schema import CLEAN_BARS, conform, empty

# interval -> minutes; also the canonical order of intervals in the layer.
INTERVAL_MINUTES: dict[str, int] = {"1m": 1, "5m": 5, "15m": 15, "1h": 60, "4h": 240, "1d": 1440}
DEFAULT_INTERVALS: tuple[str, ...] = ("5m", "15m", "1h", "4h", "1d")
ALL_INTERVALS: tuple[str, ...] = tuple(INTERVAL_MINUTES)

_GROUP = ("exchange", "symbol")


def interval_minutes(interval: str) -> int:
    """Minutes in `interval`; a ValueError naming the known intervals otherwise."""
    try:
        return INTERVAL_MINUTES[interval]
    except KeyError:
        raise ValueError(f"unknown interval {interval!r}; known: {', '.join(INTERVAL_MINUTES)}") from None


def interval_rank() -> pl.Expr:
    """Sort key putting intervals in their natural order (1m, 5m, ..., 1d) rather than alphabetical."""
    return pl.col("interval").replace_strict(list(INTERVAL_MINUTES), list(range(len(INTERVAL_MINUTES))))


def _one_minute(bars_1m: pl.DataFrame) -> pl.DataFrame:
    return bars_1m.select(
        "timestamp",
        pl.lit("1m").alias("interval"),
        "open", "high", "low", "close", "volume",
        pl.lit(1, dtype=pl.Int32).alias("candles"),
        pl.lit(True).alias("complete"),
        "exchange", "symbol",
    )


def _aggregate(bars_1m: pl.DataFrame, interval: str) -> pl.DataFrame:
    """One symbol's bars of `interval` from its 1m bars (sorted by timestamp)."""
    minutes = interval_minutes(interval)
    return (
        bars_1m.group_by_dynamic("timestamp", every=f"{minutes}m", closed="left", label="left", start_by="window")
        .agg(
            pl.col("open").first(),
            pl.col("high").max(),
            pl.col("low").min(),
            pl.col("close").last(),
            pl.col("volume").sum(),
            pl.len().cast(pl.Int32).alias("candles"),
            pl.col("exchange").first(),
            pl.col("symbol").first(),
        )
        .with_columns(
            pl.lit(interval).alias("interval"),
            (pl.col("candles") == minutes).alias("complete"),
        )
    )


def resample(bars_1m: pl.DataFrame, intervals: Iterable[str] = DEFAULT_INTERVALS) -> pl.DataFrame:
    """The clean_bars frame: the 1m bars (candles=1, complete=true) plus one OHLCV bar per non-empty window."""
    wanted = sorted((iv for iv in set(intervals) if interval_minutes(iv) > 1), key=interval_minutes)
    frames = []
    # Symbol by symbol, intervals in their natural order: the result comes out sorted without a final sort.
    for one in bars_1m.sort([*_GROUP, "timestamp"]).partition_by(list(_GROUP), maintain_order=True):
        frames.append(conform(_one_minute(one), CLEAN_BARS))
        frames.extend(conform(_aggregate(one, iv), CLEAN_BARS) for iv in wanted)
    if not frames:
        return empty(CLEAN_BARS)
    return pl.concat(frames, how="vertical")
