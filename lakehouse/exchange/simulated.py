"""A deterministic offline exchange: realistic 1m candles, listing times and exchange-wide outages.

Every closed candle is a pure function of (symbol, minute), so any window can be generated on its own and
the same window always gives the same numbers: the emulator serves it over HTTP and tests compare stored data
against it as ground truth.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import math
import zlib

import numpy as np

from ..errors import UnknownSymbolError
from ..symbols import validate_symbol
from ..timeutil import DAY_MS, MINUTE_MS, MINUTES_PER_DAY, Clock, day_start_ms, system_clock_ms
from .base import Exchange, Market

_MAX_DAYS = 40_000  # daily anchors drawn once per symbol; ~110 years


@dataclasses.dataclass(frozen=True)
class SimMarket:
    symbol: str
    listed_at_ms: int
    price0: float
    daily_vol: float = 0.035

    @property
    def decimals(self) -> int:
        return max(2, 6 - int(math.floor(math.log10(self.price0))))


def _listed(day: str, hour: int) -> int:
    return day_start_ms(dt.date.fromisoformat(day)) + hour * 3_600_000


# Listing dates and first prices close to Binance's, so that demos look like the real thing.
DEFAULT_MARKETS: tuple[SimMarket, ...] = (
    SimMarket("BTC/USDT", _listed("2017-08-17", 4), 4261.48, 0.035),
    SimMarket("ETH/USDT", _listed("2017-08-17", 4), 301.13, 0.045),
    SimMarket("LTC/USDT", _listed("2017-12-13", 3), 310.0, 0.05),
    SimMarket("BNB/USDT", _listed("2017-11-06", 3), 1.5, 0.05),
    SimMarket("XRP/USDT", _listed("2018-05-04", 8), 0.95, 0.05),
    SimMarket("ADA/USDT", _listed("2018-04-17", 4), 0.25, 0.05),
    SimMarket("DOGE/USDT", _listed("2019-07-05", 12), 0.0045, 0.06),
    SimMarket("SOL/USDT", _listed("2020-08-11", 6), 2.85, 0.07),
    SimMarket("ETH/BTC", _listed("2017-08-17", 4), 0.0707, 0.03),
)


def _seed(*parts: object) -> int:
    return zlib.crc32("|".join(map(str, parts)).encode())


class SimulatedSource:
    """Ground truth for the offline exchange and the HTTP emulator."""

    def __init__(
        self,
        markets: tuple[SimMarket, ...] = DEFAULT_MARKETS,
        synthetic: int = 0,
        outage_rate: float = 0.02,
        outages: tuple[tuple[int, int], ...] = (),
        seed: int = 0,
    ):
        """`synthetic` adds SIM000/USDT.. markets listed 2021-01-01 (benchmarks); `outages` are extra
        exchange-wide [start_ms, end_ms) windows with no candles; `outage_rate` is the daily chance of one."""
        all_markets = list(markets)
        for i in range(synthetic):
            all_markets.append(SimMarket(f"SIM{i:03d}/USDT", _listed("2021-01-01", 0), 10.0 + i, 0.04))
        self.markets = {m.symbol: m for m in all_markets}
        self.outage_rate = outage_rate
        self.extra_outages = tuple(outages)
        self.seed = seed
        self._anchors: dict[str, np.ndarray] = {}

    def market(self, symbol: str) -> SimMarket:
        try:
            return self.markets[validate_symbol(symbol)]
        except KeyError:
            raise UnknownSymbolError(f"simulated exchange does not list {symbol}") from None

    # outages ---------------------------------------------------------------------------------
    def day_outages(self, day_index: int) -> list[tuple[int, int]]:
        """Exchange-wide [start_ms, end_ms) windows without candles on the day `day_index` (days since epoch)."""
        start = day_index * DAY_MS
        out = []
        if self.outage_rate > 0:
            rng = np.random.default_rng(_seed("outage", self.seed, day_index))
            if rng.random() < self.outage_rate:
                first = int(rng.integers(0, MINUTES_PER_DAY))
                length = int(rng.integers(2, 91))
                out.append((start + first * MINUTE_MS, min(start + DAY_MS, start + (first + length) * MINUTE_MS)))
        for s, e in self.extra_outages:
            if s < start + DAY_MS and e > start:
                out.append((max(s, start), min(e, start + DAY_MS)))
        return out

    # candles ---------------------------------------------------------------------------------
    def _anchor_logs(self, m: SimMarket) -> np.ndarray:
        if m.symbol not in self._anchors:
            rng = np.random.default_rng(_seed("anchor", self.seed, m.symbol))
            rets = rng.normal(0.0005, m.daily_vol, size=_MAX_DAYS)
            self._anchors[m.symbol] = math.log(m.price0) + np.concatenate([[0.0], np.cumsum(rets)])
        return self._anchors[m.symbol]

    @functools.lru_cache(maxsize=2048)
    def _day(self, symbol: str, day_index: int) -> np.ndarray:
        """All 1440 candles of a day as if the exchange never paused: (1440, 6) float64."""
        m = self.markets[symbol]
        listing_day = m.listed_at_ms // DAY_MS
        anchors = self._anchor_logs(m)
        k = day_index - listing_day
        l0, l1 = anchors[k], anchors[k + 1]
        rng = np.random.default_rng(_seed("day", self.seed, symbol, day_index))
        sigma = m.daily_vol / math.sqrt(MINUTES_PER_DAY)
        walk = np.concatenate([[0.0], np.cumsum(rng.normal(0.0, sigma, MINUTES_PER_DAY))])
        t = np.linspace(0.0, 1.0, MINUTES_PER_DAY + 1)
        path = l0 + t * (l1 - l0) + walk - t * walk[-1]  # Brownian bridge: days join seamlessly
        prices = np.exp(path)
        opens, closes = prices[:-1], prices[1:]
        wick = np.abs(rng.normal(0.0, sigma * 0.6, (2, MINUTES_PER_DAY)))
        highs = np.maximum(opens, closes) * (1 + wick[0])
        lows = np.minimum(opens, closes) * (1 - wick[1])
        volume = rng.lognormal(math.log(5e4 / m.price0), 0.8, MINUTES_PER_DAY)
        ts = day_index * DAY_MS + np.arange(MINUTES_PER_DAY, dtype=np.int64) * MINUTE_MS
        d = m.decimals
        out = np.column_stack(
            [ts.astype(np.float64), np.round(opens, d), np.round(highs, d), np.round(lows, d),
             np.round(closes, d), np.round(volume, 4)]
        )
        out.setflags(write=False)
        return out

    def candles(self, symbol: str, start_ms: int, end_ms: int) -> np.ndarray:
        """Every closed-or-not candle with start_ms <= ts < end_ms that the exchange has: (n, 6) float64."""
        m = self.market(symbol)
        start_ms = max(start_ms, -(-m.listed_at_ms // MINUTE_MS) * MINUTE_MS)
        if end_ms <= start_ms:
            return np.empty((0, 6))
        parts = []
        for day_index in range(start_ms // DAY_MS, (end_ms - 1) // DAY_MS + 1):
            arr = self._day(m.symbol, day_index)
            ts = arr[:, 0]
            keep = (ts >= start_ms) & (ts < end_ms)
            for s, e in self.day_outages(day_index):
                keep &= ~((ts >= s) & (ts < e))
            parts.append(arr[keep])
        return np.concatenate(parts) if parts else np.empty((0, 6))


class SimulatedExchange(Exchange):
    """The offline default: answers like Binance's klines endpoint, from SimulatedSource, with no network."""

    id = "simulated"

    def __init__(self, source: SimulatedSource | None = None, clock: Clock = system_clock_ms):
        super().__init__()
        self.source = source or SimulatedSource()
        self._clock = clock

    def now_ms(self) -> int:
        return self._clock()

    def markets(self) -> dict[str, Market]:
        return {s: Market(s, *s.split("/")) for s in self.source.markets}

    def listing_ms(self, symbol: str) -> int | None:
        listed = self.source.market(self.check_symbol(symbol)).listed_at_ms
        return -(-listed // MINUTE_MS) * MINUTE_MS

    def fetch_page(self, symbol: str, since_ms: int, until_ms: int, limit: int) -> np.ndarray:
        self.stats.requests += 1
        now = self.now_ms()
        # Like a real exchange, the still-forming candle (ts <= now < ts + 1m) is included.
        end = min(until_ms + 1, (now // MINUTE_MS) * MINUTE_MS + MINUTE_MS)
        return self.source.candles(symbol, since_ms, end)[: min(limit, self.page_limit)]
