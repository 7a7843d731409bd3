"""Explainable trading signals: crossings of indicator lines, declared as data in RULES.

A rule watches one line (a column) against a reference (another column or a constant level). It fires +1
at bar t when the line goes from at-or-below the `up` reference at t-1 to strictly above it at t, and -1 when
it goes from at-or-above the `down` reference to strictly below it. Only bars t-1 and t of the same
(exchange, symbol, interval) are read, so a signal never depends on the future.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import string

import numpy as np
import polars as pl

from .indicators import to_ms
from .resample import interval_rank
from .schema import SIGNALS, conform, empty

_SERIES = ("exchange", "symbol", "interval")

# How reasons name the columns.
LABELS: dict[str, str] = {
    "close": "close",
    "ema_9": "EMA9",
    "ema_21": "EMA21",
    "rsi_14": "RSI14",
    "macd": "MACD",
    "macd_signal": "MACD signal",
    "sma_200": "SMA200",
    "bb_upper": "upper Bollinger band",
    "bb_lower": "lower Bollinger band",
}

DEFAULT_TEMPLATE = "{line_label} {line} crossed {dir} {ref_label} {ref}"


@dataclasses.dataclass(frozen=True)
class Rule:
    """A crossing rule: `line` crossing above `up` fires +1, crossing below `down` fires -1 (None: never)."""

    name: str
    line: str
    up: str | float | None
    down: str | float | None
    template: str = DEFAULT_TEMPLATE


# Adding a rule is one line here (plus a label if it reads a new column).
RULES: tuple[Rule, ...] = (
    Rule("ema_9_21_cross", "ema_9", up="ema_21", down="ema_21"),
    Rule("rsi_30_70", "rsi_14", up=30.0, down=70.0, template="{line_label} {line} crossed {dir} {ref}"),
    Rule("macd_signal_cross", "macd", up="macd_signal", down="macd_signal"),
    Rule("sma_200_trend", "close", up="sma_200", down="sma_200"),
    Rule("bollinger_breakout", "close", up="bb_upper", down="bb_lower",
         template="{line_label} {line} broke {dir} the {ref_label} {ref}"),
)


def fmt_number(value: float) -> str:
    """At most six significant digits, thousands separators, no trailing zeros: 62,101.5 / 31.2345 / 85.0."""
    return _fmt_many([value])[0]


def _decimals(values: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        digits = np.floor(np.log10(np.abs(values)))
    return np.clip(5 - np.nan_to_num(digits, nan=0.0, posinf=0.0, neginf=0.0), 1, 12).astype(np.int64)


def _trim(text: str) -> str:
    """Drop trailing zeros but keep one decimal: 100.500 -> 100.5, 85.0000 -> 85.0."""
    text = text.rstrip("0")
    return text + "0" if text.endswith(".") else text


def _fmt_many(values) -> list[str]:
    """fmt_number over many values, built column-wise (a year of firings has ~350,000 numbers to print)."""
    return _fmt_series(values).to_list()


def _fmt_series(values) -> pl.Series:
    """fmt_number of every value as a string Series: digits and separators assembled by polars, Python's
    formatting only for the few values it cannot place exactly (non-finite, tiny, huge, or a rounding tie)."""
    arr = np.asarray(values, dtype=np.float64)
    decimals = _decimals(arr)
    with np.errstate(invalid="ignore", over="ignore"):
        scaled = np.abs(arr) * np.power(10.0, decimals)
        rounded = np.rint(scaled)
        # Python rounds the exact binary value; within 1e-6 of a tie, the scaled float may round otherwise.
        exact = (np.isfinite(scaled) & (rounded < 2.0**53) & (np.abs(scaled - np.floor(scaled) - 0.5) > 1e-6)
                 & ~((arr != 0) & (np.abs(arr) < 1e-6)))
    n = np.where(exact, rounded, 0).astype(np.int64)
    scale = np.power(10, decimals).astype(np.int64)
    whole = pl.Series(n // scale).cast(pl.String).str.reverse().str.extract_all(r"\d{1,3}").list.join(",").str.reverse()
    frac = pl.Series(n % scale).cast(pl.String).str.zfill(pl.Series(decimals)).str.strip_chars_end("0")
    frac = pl.when(frac.str.len_chars() == 0).then(pl.lit("0")).otherwise(frac)
    sign = pl.when(pl.Series(arr < 0)).then(pl.lit("-")).otherwise(pl.lit(""))
    out = pl.select(pl.concat_str([sign, whole, pl.lit("."), frac]).alias("s")).to_series()
    out = pl.select(pl.when(pl.Series(arr == 0)).then(pl.lit("0")).otherwise(out)).to_series()
    odd = np.flatnonzero(~exact & (arr != 0))
    if odd.size:
        out = out.scatter(odd, [_fmt_one(v) for v in arr[odd].tolist()])
    return out.alias("")


def _fmt_one(value: float) -> str:
    """fmt_number by Python's own formatting: the reference the column-wise path reproduces."""
    if value == 0:
        return "0"
    if abs(value) < 1e-6 and value == value:
        return f"{value:.6g}"
    return _trim(f"{{:,.{int(_decimals(np.array([value]))[0])}f}}".format(value))


def _template(template: str, fields: dict[str, pl.Expr]) -> pl.Expr:
    """Render a str.format template column-wise: literal text and string columns concatenated."""
    parts = []
    for text, field, _spec, _conv in string.Formatter().parse(template):
        if text:
            parts.append(pl.lit(text))
        if field is not None:
            parts.append(fields[field])
    return pl.concat_str(parts)


def _ordered(indicators: pl.DataFrame) -> pl.DataFrame:
    """The frame with each series contiguous and oldest first, plus `_new` marking a series' first row."""
    new = pl.any_horizontal(pl.col(k).ne_missing(pl.col(k).shift(1)) for k in _SERIES)
    df = indicators.with_columns(new.alias("_new"))
    runs = df.get_column("_new").sum()
    ordered = (
        df.select((pl.col("_new") | (pl.col("timestamp") > pl.col("timestamp").shift(1))).all()).item()
        and runs == df.select(pl.struct(_SERIES).n_unique()).item()
    )
    if ordered:  # the indicators layer is already in this order; sorting strings is the costly part
        return df
    return indicators.sort(*_SERIES, "timestamp").with_columns(new.alias("_new"))


def _prev(expr: pl.Expr) -> pl.Expr:
    return pl.when(pl.col("_new")).then(None).otherwise(expr.shift(1))


def _leg(rule: Rule, direction: int) -> tuple[pl.Expr, pl.Expr] | None:
    """(the reference expression, whether the rule fires at this bar) for one direction of a rule."""
    ref = rule.up if direction > 0 else rule.down
    if ref is None:
        return None
    line = pl.col(rule.line)
    level = pl.col(ref) if isinstance(ref, str) else pl.lit(float(ref))
    prev_level = _prev(level) if isinstance(ref, str) else level
    if direction > 0:
        fired = (_prev(line) <= prev_level) & (line > level)
    else:
        fired = (_prev(line) >= prev_level) & (line < level)
    return level, fired.fill_null(False)


def _firings(df: pl.DataFrame, rule: Rule, direction: int, fired_col: str) -> pl.DataFrame:
    ref = rule.up if direction > 0 else rule.down
    level, _ = _leg(rule, direction)
    # Lazily, so the filter copies only the columns a firing keeps, not every indicator.
    hits = df.lazy().filter(pl.col(fired_col)).select(
        "timestamp", *_SERIES, "close", pl.col(rule.line).alias("_line"), level.alias("_ref"),
    ).collect()
    fields = {
        "line_label": pl.lit(LABELS.get(rule.line, rule.line)),
        "line": _fmt_series(hits.get_column("_line")),
        "dir": pl.lit("above" if direction > 0 else "below"),
        "ref_label": pl.lit(LABELS.get(ref, ref) if isinstance(ref, str) else ""),
        "ref": _fmt_series(hits.get_column("_ref")) if isinstance(ref, str) else pl.lit(f"{ref:g}"),
    }
    return hits.select(
        "timestamp", *_SERIES, "close",
        pl.lit(rule.name).alias("rule"),
        pl.lit(direction, dtype=pl.Int8).alias("direction"),
        _template(rule.template, fields).alias("reason"),
    )


def compute_signals(
    indicators: pl.DataFrame,
    start: int | dt.date | dt.datetime | None = None,
    end: int | dt.date | dt.datetime | None = None,
    rules: tuple[Rule, ...] = RULES,
) -> pl.DataFrame:
    """Every firing of every rule over the indicators frame (any symbols and intervals), oldest first.

    With start/end, only firings with start <= timestamp < end are returned; pass at least the bar before
    `start` of each series (the previous day's indicators) so that a crossing at `start` is seen.
    """
    df = _ordered(indicators)
    legs = [(rule, d, leg[1]) for rule in rules for d in (1, -1) if (leg := _leg(rule, d)) is not None]
    df = df.with_columns(fired.alias(f"_fired{i}") for i, (_, _, fired) in enumerate(legs))
    if start is not None:
        df = df.filter(pl.col("timestamp").cast(pl.Int64) >= to_ms(start))
    if end is not None:
        df = df.filter(pl.col("timestamp").cast(pl.Int64) < to_ms(end))
    frames = [_firings(df, rule, d, f"_fired{i}") for i, (rule, d, _) in enumerate(legs)]
    frames = [f for f in frames if f.height]
    if not frames:
        return empty(SIGNALS)
    out = conform(pl.concat(frames, how="vertical"), SIGNALS)
    return out.sort("exchange", "symbol", interval_rank(), "timestamp", "rule", "direction")
