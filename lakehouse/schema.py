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


def empty(layer: str) -> pl.DataFrame:
    return pl.DataFrame(schema=LAYERS[layer])


def conform(df: pl.DataFrame, layer: str) -> pl.DataFrame:
    """Cast and order columns to the layer's schema; a missing column is a programming error."""
    schema = LAYERS[layer]
    missing = [c for c in schema if c not in df.columns]
    if missing:
        raise ValueError(f"{layer}: frame lacks columns {missing}")
    return df.select([pl.col(c).cast(t) for c, t in schema.items()])
