"""OHLCV lakehouse: the plain library (storage, exchange clients, layers, audit) under the Dagster glue."""

__all__ = ["read_bars", "read_indicators", "read_raw", "read_scores", "read_signals"]


def __getattr__(name):
    # The readers pull in polars; importing a light submodule (config, symbols) must not pay for it.
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'lakehouse' has no attribute {name!r}")
