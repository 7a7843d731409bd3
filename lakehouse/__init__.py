"""OHLCV lakehouse: the plain library (storage, exchange clients, layers, audit) under the Dagster glue."""

from .api import read_bars, read_indicators, read_raw, read_scores, read_signals

__all__ = ["read_bars", "read_indicators", "read_raw", "read_scores", "read_signals"]
