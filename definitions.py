"""The Dagster code location: every asset, check, sensor and resource of the lakehouse."""

from __future__ import annotations

from dagster import Definitions

from assets.derived import DERIVED_ASSETS
from assets.raw import raw_ohlcv
from lakehouse.config import Settings
from resources import LakehouseResource, exchange_resource
from resources.celery_steps import build_executor


def build_resources(settings: Settings | None = None) -> dict:
    """Resources for the current environment; the CLI calls this again at run time so settings are fresh."""
    settings = settings or Settings.from_env()
    return {
        "exchange": exchange_resource(settings),
        "lakehouse": LakehouseResource(root=settings.root_location),
    }


_settings = Settings.from_env()
defs = Definitions(
    assets=[raw_ohlcv, *DERIVED_ASSETS],
    resources=build_resources(_settings),
    # LAKEHOUSE_CELERY_BROKER_URL: steps of launched runs go to Celery workers (README "Deployment").
    executor=build_executor(_settings),
)

# The repair sensor targets whatever partitioned assets are defined above, so new layers join it as they land.
from assets.symbol_freshness import symbol_freshness  # noqa: E402
from sensors.notify import NOTIFY_SENSORS  # noqa: E402
from sensors.repair import build_repair_sensor  # noqa: E402

defs = Definitions.merge(defs, Definitions(asset_checks=[symbol_freshness],
                                           sensors=[build_repair_sensor(defs.assets), *NOTIFY_SENSORS]))
