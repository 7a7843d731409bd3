"""OHLCV lakehouse: the plain library (storage, exchange clients, layers, audit) under the Dagster glue."""

from .api import read_raw

__all__ = ["read_raw"]
