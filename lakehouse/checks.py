"""Data-quality checks of the derived layers: pure functions returning (passed, metadata) for the asset checks.

Metadata holds only JSON-friendly values (ints, floats, strings, lists), with a few examples of what failed.
"""

from __future__ import annotations

import datetime as dt

import polars as pl

from .indicators import to_ms
from .schema import INDICATOR_COLUMNS
from .timeutil import MINUTE_MS, ms_to_iso

MAX_EXAMPLES = 5
MAX_GAPS = 50

CheckResult = tuple[bool, dict]


def _examples(df: pl.DataFrame, columns: list[str]) -> list[str]:
    rows = df.head(MAX_EXAMPLES).select(
        [pl.col(c).cast(pl.Int64).map_elements(ms_to_iso, return_dtype=pl.String) if c == "timestamp" else pl.col(c)
         for c in columns if c in df.columns]
    )
    return [", ".join(f"{k}={v}" for k, v in row.items()) for row in rows.to_dicts()]


def ohlc_sanity(clean_bars: pl.DataFrame) -> CheckResult:
    """Every bar is finite, has low <= open, close <= high and a non-negative volume."""
    values = ("open", "high", "low", "close", "volume")
    o, h, l, c, v = (pl.col(x) for x in values)
    finite = pl.all_horizontal(pl.col(x).is_finite().fill_null(False) for x in values)
    # polars orders NaN above every number, so range kinds are judged on finite rows only.
    kinds = {
        "non_finite": ~finite,
        "high_below_low": finite & (h < l),
        "open_outside_range": finite & ((o > h) | (o < l)),
        "close_outside_range": finite & ((c > h) | (c < l)),
        "negative_volume": finite & (v < 0),
    }
    flagged = clean_bars.with_columns(**{k: e.fill_null(False) for k, e in kinds.items()})
    bad = flagged.filter(pl.any_horizontal(list(kinds)))
    counts = {k: int(flagged.get_column(k).sum()) for k in kinds}
    return bad.height == 0, {
        "rows": clean_bars.height,
        "violations": bad.height,
        **counts,
        "examples": _examples(bad, ["timestamp", "interval", *values]),
    }


def uniqueness(clean_bars: pl.DataFrame) -> CheckResult:
    """No two bars share (exchange, symbol, interval, timestamp)."""
    key = [k for k in ("exchange", "symbol", "interval", "timestamp") if k in clean_bars.columns]
    if not clean_bars.height or not clean_bars.select(key).is_duplicated().any():
        # The usual answer, at a third of the group-by's cost; the group-by then only runs to describe dupes.
        return True, {"rows": clean_bars.height, "duplicated_keys": 0, "extra_rows": 0, "examples": []}
    dupes = clean_bars.group_by(key).len().filter(pl.col("len") > 1).sort(key)
    extra = int(dupes.get_column("len").sum() - dupes.height) if dupes.height else 0
    return dupes.height == 0, {
        "rows": clean_bars.height,
        "duplicated_keys": dupes.height,
        "extra_rows": extra,
        "examples": _examples(dupes, [*key, "len"]),
    }


def find_gaps(timestamps_ms: list[int], start_ms: int | None = None, end_ms: int | None = None) -> list[tuple]:
    """Missing 1m runs as (first missing minute, end exclusive, minutes), including before/after the bars."""
    edges = ([start_ms - MINUTE_MS] if start_ms is not None else []) + sorted(timestamps_ms)
    edges += [end_ms] if end_ms is not None else []
    gaps = []
    for prev, nxt in zip(edges, edges[1:]):
        if nxt - prev > MINUTE_MS:
            gaps.append((prev + MINUTE_MS, nxt, (nxt - prev) // MINUTE_MS - 1))
    return gaps


def completeness(
    clean_bars: pl.DataFrame,
    expected_minutes: int,
    start: int | dt.date | dt.datetime | None = None,
    end: int | dt.date | dt.datetime | None = None,
) -> CheckResult:
    """The day has its expected 1m bars (timeutil.expected_minutes); gaps are listed, before/after the
    bars too when the window [start, end) is given."""
    one_minute = clean_bars.filter(pl.col("interval") == "1m") if "interval" in clean_bars.columns else clean_bars
    ts = one_minute.get_column("timestamp").cast(pl.Int64).to_list()
    return completeness_of_minutes(ts, expected_minutes, start, end)


def completeness_of_minutes(
    ts: list[int],
    expected_minutes: int,
    start: int | dt.date | dt.datetime | None = None,
    end: int | dt.date | dt.datetime | None = None,
) -> CheckResult:
    """completeness() of a day given its 1m bars' open times in ms: a range run has them at hand for every day."""
    gaps = find_gaps(ts, None if start is None else to_ms(start), None if end is None else to_ms(end))
    return len(ts) >= expected_minutes, {
        "expected_minutes": expected_minutes,
        "present_minutes": len(ts),
        "missing_minutes": max(0, expected_minutes - len(ts)),
        "gap_count": len(gaps),
        "largest_gap_minutes": max((g[2] for g in gaps), default=0),
        "gaps": [(ms_to_iso(s), ms_to_iso(e), m) for s, e, m in gaps[:MAX_GAPS]],
    }


def indicator_sanity(indicators: pl.DataFrame) -> CheckResult:
    """After warm-up no indicator is null; RSI is within [0, 100], bands are ordered, ATR is non-negative."""
    kinds = {
        "null_after_warmup": pl.col("warmup_ok") & pl.any_horizontal(pl.col(c).is_null() for c in INDICATOR_COLUMNS),
        "rsi_out_of_range": (pl.col("rsi_14") < 0) | (pl.col("rsi_14") > 100),
        "bands_disordered": (pl.col("bb_lower") > pl.col("bb_middle")) | (pl.col("bb_middle") > pl.col("bb_upper")),
        "negative_atr": pl.col("atr_14") < 0,
    }
    flagged = indicators.with_columns(**{k: e.fill_null(False) for k, e in kinds.items()})
    bad = flagged.filter(pl.any_horizontal(list(kinds)))
    return bad.height == 0, {
        "rows": indicators.height,
        "warm_rows": int(indicators.get_column("warmup_ok").sum()),
        "violations": bad.height,
        **{k: int(flagged.get_column(k).sum()) for k in kinds},
        "examples": _examples(bad, ["timestamp", "interval", "rsi_14", "bb_lower", "bb_upper", "atr_14"]),
    }


def signals_reference_bars(signals: pl.DataFrame, bars: pl.DataFrame) -> CheckResult:
    """Every signal points at an existing bar of its (exchange, symbol, interval) and carries that bar's close."""
    key = ["exchange", "symbol", "interval", "timestamp"]
    joined = signals.join(bars.select(*key, pl.col("close").alias("_bar_close")), on=key, how="left")
    missing = joined.filter(pl.col("_bar_close").is_null())
    mismatch = joined.filter(pl.col("_bar_close").is_not_null() & (pl.col("_bar_close") != pl.col("close")))
    return missing.height == 0 and mismatch.height == 0, {
        "signals": signals.height,
        "without_bar": missing.height,
        "close_mismatch": mismatch.height,
        "examples": _examples(pl.concat([missing, mismatch]), ["timestamp", "interval", "rule", "close"]),
    }
