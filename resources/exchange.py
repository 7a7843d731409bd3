"""The exchange client resource: one abstract interface, a live ccxt implementation and the offline default."""

from __future__ import annotations

import abc
from typing import Optional

from dagster import ConfigurableResource

from lakehouse.config import DEFAULT_FETCH_CONCURRENCY, SIMULATED, Settings
from lakehouse.exchange.base import Exchange


class ExchangeResource(ConfigurableResource, abc.ABC):
    """Hands assets an `Exchange`; which one is a deployment choice (LAKEHOUSE_EXCHANGE)."""

    @abc.abstractmethod
    def client(self) -> Exchange: ...


class CcxtExchangeResource(ExchangeResource):
    """A real ccxt exchange over HTTP (default binance); `url` points it at a proxy or emulator."""

    exchange_id: str = "binance"
    url: Optional[str] = None
    timeout_s: float = 10.0
    max_retries: int = 5
    # Requests in flight at once, always inside the exchange's weight budget.
    concurrency: int = DEFAULT_FETCH_CONCURRENCY
    archive_url: Optional[str] = None  # bulk kline archive for closed days (LAKEHOUSE_ARCHIVE_URL); None: REST only

    def client(self) -> Exchange:
        from lakehouse.exchange.archive import KlineArchive
        from lakehouse.exchange.ccxt_client import CcxtExchange

        client = CcxtExchange(self.exchange_id, url=self.url, timeout_s=self.timeout_s, max_retries=self.max_retries,
                              concurrency=self.concurrency)
        if self.archive_url:
            client.archive = KlineArchive(self.archive_url, timeout_s=self.timeout_s, max_retries=self.max_retries)
        return client


class SimulatedExchangeResource(ExchangeResource):
    """The deterministic offline exchange a new user gets with no network (outages included)."""

    outage_rate: float = 0.02
    now_ms: Optional[int] = None  # pins the clock (tests, reproducible demos); None = wall clock

    def client(self) -> Exchange:
        from lakehouse.exchange.simulated import SimulatedExchange, SimulatedSource
        from lakehouse.timeutil import system_clock_ms

        clock = (lambda: self.now_ms) if self.now_ms is not None else system_clock_ms
        return SimulatedExchange(SimulatedSource(outage_rate=self.outage_rate), clock=clock)


def exchange_resource(settings: Settings) -> ExchangeResource:
    if settings.exchange == SIMULATED:
        return SimulatedExchangeResource()
    return CcxtExchangeResource(
        exchange_id=settings.exchange,
        url=settings.exchange_url,
        timeout_s=settings.request_timeout_s,
        max_retries=settings.max_request_retries,
        concurrency=settings.fetch_concurrency,
        archive_url=settings.archive_url,
    )
