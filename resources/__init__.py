"""Dagster resources: thin wrappers that hand the plain library its exchange client and storage."""

from .exchange import CcxtExchangeResource, ExchangeResource, SimulatedExchangeResource, exchange_resource
from .lakehouse import LakehouseResource

__all__ = [
    "CcxtExchangeResource",
    "ExchangeResource",
    "LakehouseResource",
    "SimulatedExchangeResource",
    "exchange_resource",
]
