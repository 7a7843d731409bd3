"""The Dagster code location: every asset, check, sensor and resource of the lakehouse."""

from __future__ import annotations

from dagster import Definitions

from assets.raw import raw_ohlcv
from lakehouse.config import Settings
from resources import LakehouseResource, exchange_resource

settings = Settings.from_env()

defs = Definitions(
    assets=[raw_ohlcv],
    resources={
        "exchange": exchange_resource(settings),
        "lakehouse": LakehouseResource(root=str(settings.root_path.resolve())),
    },
)
