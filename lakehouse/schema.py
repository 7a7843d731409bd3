"""Column schemas of each lakehouse layer; the catalog builds a DuckDB view per entry of LAYERS."""

from __future__ import annotations

import polars as pl

TS = pl.Datetime("ms", "UTC")

RAW_OHLCV = "raw_ohlcv"

RAW_SCHEMA: dict[str, pl.DataType] = {
    "timestamp": TS,
    "open": pl.Float64,
    "high": pl.Float64,
    "low": pl.Float64,
    "close": pl.Float64,
    "volume": pl.Float64,
    "exchange": pl.String,
    "symbol": pl.String,
    "fetched_at": TS,
}

# layer name -> schema. Later layers register here so that storage, catalog and audit know them.
LAYERS: dict[str, dict[str, pl.DataType]] = {RAW_OHLCV: RAW_SCHEMA}

CLEAN_BARS = "clean_bars"
REJECTED_CANDLES = "rejected_candles"
INDICATORS = "indicators"
SIGNALS = "signals"
SCORES = "scores"

# Every interval of a (symbol, day) lives in one clean_bars partition, told apart by `interval`.
CLEAN_BARS_SCHEMA: dict[str, pl.DataType] = {
    "timestamp": TS,
    "interval": pl.String,
    "open": pl.Float64,
    "high": pl.Float64,
    "low": pl.Float64,
    "close": pl.Float64,
    "volume": pl.Float64,
    "candles": pl.Int32,
    "complete": pl.Boolean,
    "exchange": pl.String,
    "symbol": pl.String,
}

# A rejected raw row is kept as fetched, so that the reason can be checked against the original values.
REJECTED_CANDLES_SCHEMA: dict[str, pl.DataType] = {**RAW_SCHEMA, "reason": pl.String}

INDICATOR_COLUMNS: tuple[str, ...] = (
    "sma_20", "sma_50", "sma_200", "ema_9", "ema_21", "rsi_14", "macd", "macd_signal", "macd_hist",
    "bb_upper", "bb_middle", "bb_lower", "atr_14",
)

INDICATORS_SCHEMA: dict[str, pl.DataType] = {
    "timestamp": TS,
    "interval": pl.String,
    "exchange": pl.String,
    "symbol": pl.String,
    "close": pl.Float64,
    **{c: pl.Float64 for c in INDICATOR_COLUMNS},
    "warmup_ok": pl.Boolean,
}

SIGNALS_SCHEMA: dict[str, pl.DataType] = {
    "timestamp": TS,
    "exchange": pl.String,
    "symbol": pl.String,
    "interval": pl.String,
    "rule": pl.String,
    "direction": pl.Int8,
    "reason": pl.String,
    "close": pl.Float64,
}

# One row per (exchange, symbol): not day-partitioned, rewritten whole.
SCORES_SCHEMA: dict[str, pl.DataType] = {
    "exchange": pl.String,
    "symbol": pl.String,
    "interval": pl.String,
    "timestamp": TS,
    "close": pl.Float64,
    "trend": pl.String,
    "score": pl.Int32,
    "active_signals": pl.String,
    "ingredients": pl.String,
}

LAYERS.update({
    CLEAN_BARS: CLEAN_BARS_SCHEMA,
    REJECTED_CANDLES: REJECTED_CANDLES_SCHEMA,
    INDICATORS: INDICATORS_SCHEMA,
    SIGNALS: SIGNALS_SCHEMA,
    SCORES: SCORES_SCHEMA,
})

# Layers kept as one file ({root}/{layer}/part.parquet, Storage.write_table) rather than per symbol x day.
UNPARTITIONED_LAYERS: frozenset[str] = frozenset({SCORES})


def empty(layer: str) -> pl.DataFrame:
    return pl.DataFrame(schema=LAYERS[layer])


def conform(df: pl.DataFrame, layer: str) -> pl.DataFrame:
    """Cast and order columns to the layer's schema; a missing column is a programming error."""
    schema = LAYERS[layer]
    # Already conformed: skip building a cast per column (most writes). Names and dtypes compared as lists: a
    # third of the cost of building the frame's Schema to compare it.
    if df.columns == list(schema) and df.dtypes == list(schema.values()):
        return df
    missing = [c for c in schema if c not in df.columns]
    if missing:
        raise ValueError(f"{layer}: frame lacks columns {missing}")
    return df.select([pl.col(c).cast(t) for c, t in schema.items()])
