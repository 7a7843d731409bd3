"""The exchange interface every layer relies on: markets, listing times and Binance-style 1m kline pages."""

from __future__ import annotations

import abc
import dataclasses
import difflib

import numpy as np

from ..errors import UnknownSymbolError
from ..symbols import validate_symbol

Candle = list  # [timestamp_ms, open, high, low, close, volume]
Page = np.ndarray  # (n, 6) float64 rows of Candle fields, in the order the exchange sent them


@dataclasses.dataclass(frozen=True)
class Market:
    symbol: str
    base: str
    quote: str
    active: bool = True
    id: str = ""  # the exchange's own name for the market, e.g. BTCUSDT


@dataclasses.dataclass
class FetchStats:
    """Counters a fetch reports as Dagster metadata and the benchmark prints."""

    requests: int = 0
    rate_limited: int = 0  # 429s seen
    banned: int = 0  # 418s seen
    retries: int = 0
    weight_waits: int = 0
    waited_s: float = 0.0

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


class Exchange(abc.ABC):
    """A source of 1m OHLCV candles. Implementations: CcxtExchange (live) and SimulatedExchange (offline)."""

    id: str
    page_limit: int = 1000
    concurrency: int = 1  # pages fetched at once (the live client overlaps requests to hide latency)
    archive = None  # a KlineArchive (exchange/archive.py) that closed days are taken from first; None: REST only

    def __init__(self) -> None:
        self.stats = FetchStats()
        self._listings: dict[str, int | None] = {}

    @abc.abstractmethod
    def markets(self) -> dict[str, Market]:
        """Symbol -> market for every market the exchange lists."""

    @abc.abstractmethod
    def fetch_page(self, symbol: str, since_ms: int, until_ms: int, limit: int) -> Page:
        """Up to `limit` 1m candles with since_ms <= ts <= until_ms, as the exchange sent them: every row kept,
        in its order, duplicates and odd values included (cleaning judges them, not the fetch).

        Raises TransientExchangeError for anything worth retrying; an empty page means the exchange really
        has no candle in the window (a malformed body must raise, never come back empty).
        """

    @abc.abstractmethod
    def now_ms(self) -> int:
        """The exchange's notion of now, used to tell the still-forming candle from closed ones."""

    def listing_ms(self, symbol: str) -> int | None:
        """Timestamp of the symbol's first 1m candle (its listing), found by asking from the epoch."""
        symbol = self.check_symbol(symbol)
        if symbol not in self._listings:
            page = self.fetch_page(symbol, 0, self.now_ms(), 1)
            self._listings[symbol] = int(page[0][0]) if len(page) else None
        return self._listings[symbol]

    def check_symbol(self, symbol: str) -> str:
        """Canonical symbol if the exchange lists it; UnknownSymbolError with close matches otherwise."""
        symbol = validate_symbol(symbol)
        markets = self.markets()
        if symbol not in markets:
            close = difflib.get_close_matches(symbol, list(markets), n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise UnknownSymbolError(
                f"{self.id} does not list {symbol}.{hint} Run 'lakehouse symbols available' to see its markets."
            )
        return symbol

    def close(self) -> None:
        """Release connections; the default has none."""

