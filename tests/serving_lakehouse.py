"""Build a served lakehouse by real materializations (raw -> clean -> indicators -> signals -> scores) on a
temporary Dagster instance at the pinned NOW_MS, and the API app over it (tests/test_serving, bench/api.py)."""

from __future__ import annotations

import datetime as dt

from dagster import materialize

from assets.derived import DERIVED_ASSETS
from assets.partitions import partition_key
from assets.raw import raw_ohlcv
from lakehouse.config import Settings
from lakehouse.registry import Registry, TrackedSymbol
from resources import LakehouseResource, SimulatedExchangeResource

from helpers import NOW_MS, add_symbols

FIRST_DAY = dt.date(2024, 3, 7)
LAST_DAY = dt.date(2024, 3, 10)  # NOW_MS's day: today in these tests
SYMBOLS = ("BTC/USDT", "ETH/USDT")


def build_lakehouse(root, instance, symbols=SYMBOLS, first=FIRST_DAY, last=LAST_DAY) -> None:
    """Track the symbols and materialize every layer over first..last, one range run per symbol."""
    add_symbols(instance, *symbols)
    registry = Registry(root)
    resources = {"exchange": SimulatedExchangeResource(outage_rate=0.0, now_ms=NOW_MS),
                 "lakehouse": LakehouseResource(root=str(root))}
    for symbol in symbols:
        registry.upsert(TrackedSymbol(symbol, "simulated", first, dt.date(2017, 8, 17), ""))
        tags = {"dagster/asset_partition_range_start": str(partition_key(symbol, first)),
                "dagster/asset_partition_range_end": str(partition_key(symbol, last))}
        result = materialize([raw_ohlcv, *DERIVED_ASSETS], tags=tags, resources=resources, instance=instance,
                             raise_on_error=False)
        assert result.success


def make_app(root, instance=None, *, dagster_instance=None, clock=lambda: NOW_MS, env=None, **kwargs):
    """The app over `root` at the pinned clock, showing the runs of `instance`; `env`: more settings."""
    from serving import create_app

    if dagster_instance is None and instance is not None:
        dagster_instance = lambda: instance  # noqa: E731
    return create_app(str(root), settings=Settings.from_env({"LAKEHOUSE_ROOT": str(root), **(env or {})}), clock=clock,
                      dagster_instance=dagster_instance, **kwargs)
