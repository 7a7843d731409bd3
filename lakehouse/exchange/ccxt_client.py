"""The live exchange: real ccxt over HTTP, held inside the exchange's request-weight budget.

Three layers keep us out of trouble with an exchange:
1. ccxt's own throttle (`enableRateLimit`, `rateLimit`) paces requests;
2. a weight governor reads the used-weight header (Binance: X-MBX-USED-WEIGHT-1M) after every response and,
   when the next request would cross the budget, sleeps until the exchange's window resets;
3. on 429 we sleep the whole Retry-After before sending anything else, because a request during
   Retry-After is what earns a 418 ban.
Transient failures (5xx, timeouts, network, malformed bodies) retry with exponential backoff and jitter.
"""

from __future__ import annotations

import difflib
import json
import random
import time
import urllib.parse
from typing import Callable

import ccxt

from ..errors import (
    ExchangeError,
    RateLimitedError,
    TransientExchangeError,
    UnknownExchangeError,
    UnknownSymbolError,
)
from ..timeutil import system_clock_ms
from .base import Candle, Exchange, Market

WEIGHT_HEADER = "x-mbx-used-weight-1m"
_KLINES_WEIGHT = 2  # Binance: klines with limit <= 1000
_INTERVAL_SECONDS = {"SECOND": 1, "MINUTE": 60, "HOUR": 3600, "DAY": 86400}


def override_api_url(urls: dict, base_url: str) -> dict:
    """Point every API URL at base_url, keeping each URL's path (so /api/v3 stays /api/v3 behind a proxy)."""
    base = urllib.parse.urlsplit(base_url.rstrip("/"))

    def rewrite(value):
        if isinstance(value, str):
            path = urllib.parse.urlsplit(value).path
            return urllib.parse.urlunsplit((base.scheme, base.netloc, base.path + path, "", ""))
        if isinstance(value, dict):
            return {k: rewrite(v) for k, v in value.items()}
        return value

    out = dict(urls)
    out["api"] = rewrite(urls["api"])
    return out


class WeightGovernor:
    """Keeps used request weight under the exchange's budget, from the exchange's own accounting."""

    def __init__(self, limit: int = 6000, window_s: float = 60.0, headroom: float = 0.0,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.time):
        self.limit = limit
        self.window_s = window_s
        self.headroom = headroom
        self.used = 0
        self._window = None
        self._sleep = sleep
        self._clock = clock
        self.waits = 0
        self.waited_s = 0.0

    def _current_window(self) -> int:
        return int(self._clock() // self.window_s)

    def before_request(self, weight: int) -> None:
        window = self._current_window()
        if window != self._window:
            self._window, self.used = window, 0
        if self.used + weight > self.limit * (1 - self.headroom):
            # Windows reset on epoch multiples (Binance: every minute on the minute).
            delay = (window + 1) * self.window_s - self._clock() + 0.05
            self.waits += 1
            self.waited_s += max(0.0, delay)
            self._sleep(max(0.0, delay))
            self._window, self.used = self._current_window(), 0
        self.used += weight

    def after_response(self, headers: dict | None) -> None:
        value = _header(headers, WEIGHT_HEADER)
        if value is not None:
            try:
                self._window, self.used = self._current_window(), int(value)
            except ValueError:
                pass


def _header(headers, name: str):
    if not headers:
        return None
    for k, v in headers.items():
        if k.lower() == name:
            return v
    return None


class CcxtExchange(Exchange):
    """Any ccxt exchange (default binance), optionally behind LAKEHOUSE_EXCHANGE_URL."""

    def __init__(
        self,
        exchange_id: str = "binance",
        url: str | None = None,
        timeout_s: float = 10.0,
        max_retries: int = 5,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
    ):
        super().__init__()
        exchange_id = exchange_id.strip().lower()
        if exchange_id not in ccxt.exchanges:
            close = difflib.get_close_matches(exchange_id, ccxt.exchanges, n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise UnknownExchangeError(
                f"unknown exchange {exchange_id!r}.{hint} Use a ccxt exchange id (e.g. binance) "
                f"or 'simulated' for the offline exchange."
            )
        self.id = exchange_id
        options = {"fetchMarkets": {"types": ["spot"]}} if exchange_id.startswith("binance") else {}
        self.client: ccxt.Exchange = getattr(ccxt, exchange_id)(
            {"enableRateLimit": True, "timeout": int(timeout_s * 1000), "options": options}
        )
        if url:
            self.client.urls = override_api_url(self.client.urls, url)
        self.max_retries = max_retries
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self._sleep = sleep
        self.governor = WeightGovernor(sleep=sleep)
        self._markets: dict[str, Market] | None = None

    # plumbing -----------------------------------------------------------------------------------
    def _call(self, fn, *args, weight: int = 1, **kwargs):
        """One exchange call with budget, Retry-After and backoff handling; maps ccxt errors to ours."""
        attempt = 0
        while True:
            self.governor.before_request(weight)
            self.stats.requests += 1
            try:
                result = fn(*args, **kwargs)
                self.governor.after_response(self.client.last_response_headers)
                return result
            except ccxt.BadSymbol as exc:
                raise UnknownSymbolError(f"{self.id}: {exc}") from exc
            except (ccxt.DDoSProtection, ccxt.RateLimitExceeded) as exc:
                # ccxt raises DDoSProtection for both 429 and 418; the header tells how long to stay away.
                headers = self.client.last_response_headers or {}
                self.governor.after_response(headers)
                retry_after = _float_or_none(_header(headers, "retry-after"))
                banned = "418" in str(exc)[:200] or (retry_after or 0) > 120
                if banned:
                    self.stats.banned += 1
                else:
                    self.stats.rate_limited += 1
                error = RateLimitedError(f"{self.id} rate limit: {exc}", retry_after, banned)
            except ccxt.OperationFailed as exc:
                # ccxt's family of failures that may pass: network, timeouts, 5xx, maintenance, bad responses.
                error = TransientExchangeError(f"{self.id}: {exc.__class__.__name__}: {str(exc)[:300]}")
            except TransientExchangeError as exc:
                error = exc
            except ccxt.BaseError as exc:
                raise ExchangeError(f"{self.id}: {exc.__class__.__name__}: {str(exc)[:300]}") from exc
            attempt += 1
            if attempt > self.max_retries:
                raise error
            self.stats.retries += 1
            if isinstance(error, RateLimitedError) and error.retry_after is not None:
                delay = error.retry_after + 0.1
            else:
                delay = min(self.backoff_max_s, self.backoff_base_s * 2 ** (attempt - 1))
                delay *= random.uniform(0.5, 1.5)  # jitter: parallel clients do not retry in lockstep
            self.stats.waited_s += delay
            self._sleep(delay)

    # Exchange interface --------------------------------------------------------------------------
    def markets(self) -> dict[str, Market]:
        if self._markets is None:
            loaded = self._call(self.client.load_markets, weight=20)
            self._learn_budget()
            self._markets = {
                s: Market(s, m.get("base", ""), m.get("quote", ""), bool(m.get("active", True)))
                for s, m in loaded.items()
                if m.get("spot", True)
            }
        return self._markets

    def _learn_budget(self) -> None:
        """Take the request-weight budget from exchangeInfo when the exchange publishes one (Binance does)."""
        try:
            info = json.loads(self.client.last_http_response or "")
        except (TypeError, ValueError):
            return
        for rule in info.get("rateLimits", []) if isinstance(info, dict) else []:
            if rule.get("rateLimitType") == "REQUEST_WEIGHT":
                seconds = _INTERVAL_SECONDS.get(rule.get("interval"), 60) * int(rule.get("intervalNum", 1))
                self.governor.limit, self.governor.window_s = int(rule["limit"]), float(seconds)
                return

    def now_ms(self) -> int:
        return system_clock_ms()

    def fetch_page(self, symbol: str, since_ms: int, until_ms: int, limit: int) -> list[Candle]:
        self.markets()

        def fetch():
            page = self.client.fetch_ohlcv(
                symbol, "1m", since=since_ms, limit=min(limit, self.page_limit), params={"until": until_ms}
            )
            # ccxt is lenient with bodies: a 200 that is truncated, empty or HTML comes back as [] or as
            # half-parsed junk without raising. Only a body that is a well-formed JSON list is an answer.
            body = self.client.last_http_response
            try:
                parsed = json.loads(body) if body else None
            except ValueError:
                parsed = None
            if not isinstance(parsed, list) or len(parsed) != len(page):
                raise TransientExchangeError(
                    f"{self.id}: malformed 200 response for {symbol} klines: {str(body)[:80]!r}"
                )
            return page

        return self._call(fetch, weight=_KLINES_WEIGHT)

    def close(self) -> None:
        session = getattr(self.client, "session", None)
        if session is not None:
            session.close()


def _float_or_none(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
