"""Raw 1m candles -> clean 1m bars plus the rejected rows, each with the reason it was refused.

Every raw row ends in exactly one of the two outputs (len(bars) + len(rejects) == len(raw)), so nothing is
lost silently. A row is judged in this order and gets the first reason that applies:

    non_finite            timestamp, open, high, low, close or volume is null, NaN or infinite
    misaligned_timestamp  the timestamp is not on a whole UTC minute
    high_below_low        high < low
    open_outside_range    open outside [low, high]
    close_outside_range   close outside [low, high]
    negative_volume       volume < 0

Among the valid rows, several with one (exchange, symbol, timestamp) keep a single winner: the latest
fetched_at (a later answer saw the settled candle, an earlier one may have caught it still forming), then the
largest volume (volume only grows while a candle forms), then the largest close, high, low, open (an arbitrary
but total order, so the result never depends on input order). A loser with the winner's OHLCV is a
"duplicate"; one with other values is a "conflicting_duplicate".
"""

from __future__ import annotations

import dataclasses

import polars as pl

from .schema import RAW_OHLCV, REJECTED_CANDLES, conform
from .timeutil import MINUTE_MS

VALUES = ("open", "high", "low", "close", "volume")
KEY = ("exchange", "symbol", "timestamp")
BAR_COLUMNS = ("timestamp", *VALUES, "exchange", "symbol")

VALIDITY_REASONS = (
    "non_finite",
    "misaligned_timestamp",
    "high_below_low",
    "open_outside_range",
    "close_outside_range",
    "negative_volume",
)
REASONS = (*VALIDITY_REASONS, "duplicate", "conflicting_duplicate")

# Winner first within a key: see the module docstring.
_PREFERENCE = ("fetched_at", "volume", "close", "high", "low", "open")


@dataclasses.dataclass(frozen=True)
class CleanResult:
    bars: pl.DataFrame  # 1m bars: timestamp, open, high, low, close, volume, exchange, symbol
    rejects: pl.DataFrame  # the rejected_candles layer: raw columns + reason
    stats: dict[str, int]  # raw_rows, clean_rows, rejected_rows and one count per reason


def _validity_reason() -> pl.Expr:
    o, h, l, c, v = (pl.col(x) for x in VALUES)
    finite = pl.all_horizontal(pl.col(x).is_finite().fill_null(False) for x in VALUES)
    return (
        pl.when(pl.col("timestamp").is_null() | ~finite).then(pl.lit("non_finite"))
        .when(pl.col("timestamp").cast(pl.Int64) % MINUTE_MS != 0).then(pl.lit("misaligned_timestamp"))
        .when(h < l).then(pl.lit("high_below_low"))
        .when((o > h) | (o < l)).then(pl.lit("open_outside_range"))
        .when((c > h) | (c < l)).then(pl.lit("close_outside_range"))
        .when(v < 0).then(pl.lit("negative_volume"))
        .otherwise(pl.lit(None, dtype=pl.String))
    )


def _deduplicate(valid: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Split valid rows into one winner per key and the losers (with their reason)."""
    ranked = valid.sort(
        [*KEY, *_PREFERENCE],
        descending=[False] * len(KEY) + [True] * len(_PREFERENCE),
        nulls_last=True,
    )
    first = pl.any_horizontal(pl.col(k).ne_missing(pl.col(k).shift(1)) for k in KEY)
    ranked = ranked.with_columns(first.alias("_first"))
    winners = ranked.filter(pl.col("_first")).drop("_first")
    # The winner's values reach its losers by forward fill: rows are sorted by key, winner first.
    same = pl.all_horizontal(
        pl.col(x) == pl.when(pl.col("_first")).then(pl.col(x)).forward_fill() for x in VALUES
    )
    losers = ranked.with_columns(
        pl.when(same).then(pl.lit("duplicate")).otherwise(pl.lit("conflicting_duplicate")).alias("reason")
    ).filter(~pl.col("_first")).drop("_first")
    return winners, losers


def clean_candles(raw: pl.DataFrame) -> CleanResult:
    """Validate and de-duplicate raw 1m candles; see the module docstring for the rules."""
    df = conform(raw, RAW_OHLCV).with_columns(_validity_reason().alias("reason"))
    invalid = df.filter(pl.col("reason").is_not_null())
    winners, losers = _deduplicate(df.filter(pl.col("reason").is_null()).drop("reason"))

    bars = winners.select(BAR_COLUMNS)
    # Same order as the winner's choice: within a key, the runner-up comes first.
    rejects = conform(pl.concat([invalid, losers], how="vertical"), REJECTED_CANDLES).sort(
        [*KEY, "reason", *_PREFERENCE],
        descending=[False] * (len(KEY) + 1) + [True] * len(_PREFERENCE),
        nulls_last=True,
    )
    counts = dict(rejects.group_by("reason").len().iter_rows())
    stats = {
        "raw_rows": df.height,
        "clean_rows": bars.height,
        "rejected_rows": rejects.height,
        **{r: int(counts.get(r, 0)) for r in REASONS},
    }
    return CleanResult(bars, rejects, stats)
