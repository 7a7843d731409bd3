"""The live exchange: real ccxt over HTTP, held inside the exchange's request-weight budget.

Three layers keep us out of trouble with an exchange:
1. ccxt's own throttle (`enableRateLimit`, `rateLimit`) paces requests to exchanges that do not report
   their used weight;
2. a weight governor reads the used-weight header (Binance: X-MBX-USED-WEIGHT-1M) after every response and,
   when the next request would cross the budget, sleeps until the exchange's window resets;
3. on 429 we sleep the whole Retry-After before sending anything else, because a request during
   Retry-After is what earns a 418 ban.
Transient failures (5xx, timeouts, network, malformed bodies) retry with exponential backoff and jitter.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import json
import random
import threading
import time
import urllib.parse
from typing import Callable

import ccxt
import numpy as np
import requests

from .. import progress
from ..config import DEFAULT_FETCH_CONCURRENCY
from ..errors import (
    ExchangeError,
    RateLimitedError,
    TransientExchangeError,
    UnknownExchangeError,
    UnknownSymbolError,
)
from ..timeutil import system_clock_ms
from .base import Exchange, Market

WEIGHT_HEADER = "x-mbx-used-weight-1m"
WEIGHT_PREFIX = "x-mbx-used-weight-"
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
    """Keeps used request weight under the exchange's budget, from the exchange's own accounting.

    Thread-safe: requests sent at once reserve their weight before they go, so a pool of workers never
    crosses the budget between two answers. Until the first answer has told how much weight is already used
    (another process may have spent it), only one request is in flight.
    """

    def __init__(self, limit: int = 6000, window_s: float = 60.0, headroom: float = 0.0,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.time):
        self.limit = limit
        self.window_s = window_s
        self.headroom = headroom
        self.used = 0
        self.offset_s = 0.0  # exchange clock - our clock, when the exchange told its time
        self.calibrated = False  # an answer in the current process has told the weight already used
        self.limit_learnt = False  # limit and window come from exchangeInfo once it has been read
        self._window = None
        self._sleep = sleep
        self._clock = clock
        self._lock = threading.Lock()
        self._in_flight: dict[int, tuple[int, int]] = {}  # token -> (window at send, weight)
        self._tokens = itertools.count(1)
        self._blocked_until = 0.0  # after a 429/418 nothing is sent before this
        self.waits = 0
        self.waited_s = 0.0
        self.peak_in_flight = 0
        self._noted = None  # the wait last reported as progress

    def _now(self) -> float:
        return self._clock() + self.offset_s

    def _roll(self, now: float) -> int:
        window = int(now // self.window_s)
        if window != self._window:
            # Requests still in flight from the last window may be counted in this one: assume they are.
            self._window = window
            self.used = sum(w for sent, w in self._in_flight.values() if sent != window)
        return window

    def before_request(self, weight: int) -> int:
        """Wait until `weight` fits in the budget, reserve it and return a token for after_response."""
        while True:
            note = None
            with self._lock:
                now = self._now()
                window = self._roll(now)
                if now < self._blocked_until:
                    delay = self._blocked_until - now
                    if delay >= 1.0 and self._noted != ("blocked", self._blocked_until):
                        self._noted = ("blocked", self._blocked_until)
                        note = f"waiting {delay:.0f}s: the exchange asked for a pause (Retry-After)"
                elif not self.calibrated and self._in_flight:
                    delay = 0.005  # the first answer is on its way; it says how much weight is left
                elif self.used + weight > self.limit * (1 - self.headroom):
                    # Windows reset on epoch multiples of the exchange's clock (Binance: every minute on the minute).
                    delay = (window + 1) * self.window_s - now + 0.05
                    self.waits += 1
                    self.waited_s += max(0.0, delay)
                    if delay >= 1.0 and self._noted != ("window", window):
                        self._noted = ("window", window)  # one line per wait, not one per worker
                        note = (f"waiting {delay:.0f}s for the exchange's request-weight window to reset "
                                f"({self.used}/{self.limit} used)")
                else:
                    self.used += weight
                    token = next(self._tokens)
                    self._in_flight[token] = (window, weight)
                    self.peak_in_flight = max(self.peak_in_flight, len(self._in_flight))
                    return token
            if note:  # outside the lock: a display must not hold up the other workers
                progress.emit(progress.ProgressEvent("waiting", "raw_ohlcv", detail=note))
            self._sleep(max(0.0, delay))

    def after_response(self, headers: dict | None, token: int | None = None) -> None:
        """Take the used weight the exchange reported, if the request was counted in the current window."""
        value, window_s = _used_weight(headers)
        with self._lock:
            resized = window_s is not None and window_s != self.window_s and not self.limit_learnt
            if resized:
                self.window_s = window_s  # the header's name tells the window before exchangeInfo does
            window = self._roll(self._now())  # before the pop: a straddler counts in the new window
            sent = self._in_flight.pop(token, (None, 0))[0] if token is not None else window
            if resized:
                sent = window  # counted under a window size we did not know yet: take the exchange's word
            if value is None:
                return
            try:
                reported = int(value)
            except ValueError:
                return
            self.calibrated = True
            if sent == window:  # an answer about the last window says nothing about this one
                self.used = max(self.used, reported)

    def release(self, token: int) -> None:
        """A request that got no answer (timeout, reset): it may or may not have been counted; keep its weight."""
        with self._lock:
            self._in_flight.pop(token, None)

    def block(self, seconds: float) -> None:
        """Send nothing for `seconds` (a 429's Retry-After): a request during it is what earns a ban. Then
        one request at a time until an answer has told where the budget stands."""
        with self._lock:
            self._blocked_until = max(self._blocked_until, self._now() + seconds)
            self.calibrated = False

    def recalibrate(self) -> None:
        """The next request goes alone and its answer sets the pace (another process may have spent weight
        since we last looked)."""
        with self._lock:
            self.calibrated = False

    def set_server_time(self, server_ms: int, sent_at: float, received_at: float) -> None:
        with self._lock:
            self.offset_s = server_ms / 1000.0 - (sent_at + received_at) / 2


_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _used_weight(headers) -> tuple[str | None, float | None]:
    """(used weight, window seconds) from Binance's X-MBX-USED-WEIGHT-(n)(unit) headers; the shortest window
    wins when several are sent (it resets first and binds first)."""
    best = (None, None)
    for k, v in (headers or {}).items():
        name = k.lower()
        if not name.startswith(WEIGHT_PREFIX):
            continue
        suffix = name[len(WEIGHT_PREFIX):]
        if len(suffix) < 2 or not suffix[:-1].isdigit() or suffix[-1] not in _UNIT_SECONDS:
            continue
        seconds = float(int(suffix[:-1]) * _UNIT_SECONDS[suffix[-1]])
        if best[1] is None or seconds < best[1]:
            best = (v, seconds)
    return best


def _header(headers, name: str):
    if not headers:
        return None
    for k, v in headers.items():
        if k.lower() == name:
            return v
    return None


@dataclasses.dataclass
class _Shared:
    """What every client of one exchange endpoint in this process shares: one weight budget, one bound of
    requests in flight (the first client's concurrency), one market list."""

    governor: WeightGovernor
    slots: threading.BoundedSemaphore
    markets: dict[str, Market] | None = None
    loaded_at: float = 0.0
    listings: dict = dataclasses.field(default_factory=dict)  # symbol -> first candle ms (listing never moves)
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)


_SHARED: dict[tuple[str, str | None], _Shared] = {}
_SHARED_LOCK = threading.Lock()
MARKETS_TTL_S = 600.0  # markets change rarely; a symbol not found forces a fresh load anyway


def _shared(exchange_id: str, url: str | None, sleep, concurrency: int) -> _Shared:
    with _SHARED_LOCK:
        key = (exchange_id, url)
        if key not in _SHARED:
            _SHARED[key] = _Shared(WeightGovernor(sleep=sleep), threading.BoundedSemaphore(max(1, concurrency)))
        return _SHARED[key]


def forget_shared_state() -> None:
    """Forget budgets and markets learnt by this process (what a new process starts from)."""
    with _SHARED_LOCK:
        _SHARED.clear()


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
        concurrency: int = DEFAULT_FETCH_CONCURRENCY,
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
        self.binance_like = exchange_id.startswith("binance")  # Binance's REST shape: klines, weight header
        options = {"fetchMarkets": {"types": ["spot"]}} if self.binance_like else {}
        # Where the exchange reports its used weight, the governor keeps to the real budget (a window, which
        # allows bursts); ccxt's fixed interval per request would only add waits, e.g. 0.2 s before every
        # process's exchangeInfo. Elsewhere ccxt's throttle is the only pacing there is.
        self.client: ccxt.Exchange = getattr(ccxt, exchange_id)(
            {"enableRateLimit": not self.binance_like, "timeout": int(timeout_s * 1000), "options": options}
        )
        if url:
            self.client.urls = override_api_url(self.client.urls, url)
        self.concurrency = max(1, int(concurrency))
        # The worker threads share ccxt's session, whose pools keep 10 connections per host: with more requests
        # in flight each extra one opened a connection, dropped it after its answer and logged a warning.
        adapter = requests.adapters.HTTPAdapter(pool_maxsize=max(10, self.concurrency))
        self.client.session.mount("https://", adapter)
        self.client.session.mount("http://", adapter)
        self.max_retries = max_retries
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self._sleep = sleep
        self._shared = _shared(exchange_id, url, sleep, self.concurrency)
        self.governor = self._shared.governor
        self._listings = self._shared.listings
        self.governor.recalibrate()
        self._stats_lock = threading.Lock()
        # ccxt keeps the last response on the client, which worker threads share; record each thread's own.
        self._local = threading.local()
        on_rest_response = self.client.on_rest_response

        def record(code, reason, url, method, headers, body, request_headers, request_body):
            self._local.response = (code, headers, body)
            return on_rest_response(code, reason, url, method, headers, body, request_headers, request_body)

        self.client.on_rest_response = record

    # plumbing -----------------------------------------------------------------------------------
    def _count(self, **deltas: float) -> None:
        with self._stats_lock:
            for name, delta in deltas.items():
                setattr(self.stats, name, getattr(self.stats, name) + delta)

    def _call(self, fn, *args, weight: int = 1, **kwargs):
        """One exchange call with budget, Retry-After and backoff handling; maps ccxt errors to ours."""
        attempt = 0
        while True:
            # A slot of the endpoint's bound of requests in flight, held for the request only (not the backoff):
            # clients fetching symbols side by side never send more at once than one client would.
            self._shared.slots.acquire()
            try:
                token = self.governor.before_request(weight)
                self._count(requests=1)
                self._local.response = None
                try:
                    result = fn(*args, **kwargs)
                    self.governor.after_response(self._headers(), token)
                    return result
                except ccxt.BadSymbol as exc:
                    self.governor.after_response(self._headers(), token)
                    raise UnknownSymbolError(f"{self.id}: {exc}") from exc
                except (ccxt.DDoSProtection, ccxt.RateLimitExceeded) as exc:
                    # ccxt raises DDoSProtection for both 429 and 418; the header tells how long to stay away.
                    headers = self._headers() or {}
                    self.governor.after_response(headers, token)
                    retry_after = _float_or_none(_header(headers, "retry-after"))
                    banned = "418" in str(exc)[:200] or (retry_after or 0) > 120
                    self._count(**({"banned": 1} if banned else {"rate_limited": 1}))
                    error = RateLimitedError(f"{self.id} rate limit: {exc}", retry_after, banned)
                    # Every worker stops, not just this one: a request during Retry-After earns a ban.
                    self.governor.block((retry_after if retry_after is not None else 1.0) + 0.1)
                except ccxt.OperationFailed as exc:
                    # ccxt's family of failures that may pass: network, timeouts, 5xx, maintenance, bad responses.
                    self._settle(token)
                    error = TransientExchangeError(f"{self.id}: {exc.__class__.__name__}: {str(exc)[:300]}")
                except TransientExchangeError as exc:
                    self._settle(token)
                    error = exc
                except ccxt.BaseError as exc:
                    self._settle(token)
                    raise ExchangeError(f"{self.id}: {exc.__class__.__name__}: {str(exc)[:300]}") from exc
                except BaseException:
                    self._settle(token)  # a request left "in flight" would hold every later one back
                    raise
            finally:
                self._shared.slots.release()
            attempt += 1
            if attempt > self.max_retries:
                raise error
            self._count(retries=1)
            if isinstance(error, RateLimitedError):
                delay = 0.0  # the governor holds every worker until Retry-After has passed
            else:
                delay = min(self.backoff_max_s, self.backoff_base_s * 2 ** (attempt - 1))
                delay *= random.uniform(0.5, 1.5)  # jitter: parallel clients do not retry in lockstep
            self._count(waited_s=delay)
            self._sleep(delay)

    def _headers(self):
        response = getattr(self._local, "response", None)
        return response[1] if response else None

    def _body(self):
        response = getattr(self._local, "response", None)
        return response[2] if response else None

    def _settle(self, token: int) -> None:
        headers = self._headers()
        if headers is not None:
            self.governor.after_response(headers, token)
        else:
            self.governor.release(token)

    # Exchange interface --------------------------------------------------------------------------
    def markets(self, reload: bool = False) -> dict[str, Market]:
        shared = self._shared
        with shared.lock:  # workers and clients of this process load the list once
            fresh = shared.markets is not None and time.monotonic() - shared.loaded_at < MARKETS_TTL_S
            if reload or not fresh:
                progress.emit(progress.ProgressEvent("waiting", "raw_ohlcv", detail=f"loading {self.id}'s markets"))
                if not self.governor.calibrated:
                    self._probe()
                shared.markets = self._call(self._load_markets, weight=20)
                shared.loaded_at = time.monotonic()
        return shared.markets

    def _probe(self) -> None:
        """A cheap first call (weight 1): how much of the budget is already spent, and the exchange's clock."""
        if not self.binance_like:
            return
        sent = time.time()
        try:
            answer = self._call(self.client.publicGetTime, weight=1)
        except ExchangeError:
            return  # exchangeInfo right after will say what is wrong
        server_ms = answer.get("serverTime") if isinstance(answer, dict) else None
        if isinstance(server_ms, (int, float)):
            self.governor.set_server_time(int(server_ms), sent, time.time())

    def _load_markets(self) -> dict[str, Market]:
        loaded = self.client.load_markets(reload=True)
        body = self._body()
        if self.binance_like:
            # ccxt turns a truncated, empty or HTML exchangeInfo into an empty market list without raising;
            # only a well-formed list may say that a symbol is not listed.
            try:
                info = json.loads(body) if body else None
            except ValueError:
                info = None
            if not isinstance(info, dict) or not isinstance(info.get("symbols"), list):
                raise TransientExchangeError(f"{self.id}: malformed 200 response for exchangeInfo: {str(body)[:80]!r}")
            self._learn_budget(info)
        if not loaded:
            raise TransientExchangeError(f"{self.id}: the exchange returned no markets; nothing to trade is not an answer")
        return {
            s: Market(s, m.get("base", ""), m.get("quote", ""), bool(m.get("active", True)), str(m.get("id") or ""))
            for s, m in loaded.items()
            if m.get("spot", True)
        }

    def _learn_budget(self, info: dict) -> None:
        """Take the request-weight budget from exchangeInfo when the exchange publishes one (Binance does)."""
        for rule in info.get("rateLimits", []):
            if isinstance(rule, dict) and rule.get("rateLimitType") == "REQUEST_WEIGHT":
                try:
                    seconds = _INTERVAL_SECONDS.get(rule.get("interval"), 60) * int(rule.get("intervalNum", 1))
                    limit = int(rule["limit"])
                except (KeyError, TypeError, ValueError):
                    return
                with self.governor._lock:
                    self.governor.limit, self.governor.window_s = limit, float(seconds)
                    self.governor.limit_learnt = True
                return

    def check_symbol(self, symbol: str) -> str:
        try:
            return super().check_symbol(symbol)
        except UnknownSymbolError:
            if time.monotonic() - self._shared.loaded_at < 1.0:
                raise
            self.markets(reload=True)  # the list may predate a new listing: look again before saying no
            return super().check_symbol(symbol)

    def now_ms(self) -> int:
        return system_clock_ms()

    def fetch_page(self, symbol: str, since_ms: int, until_ms: int, limit: int) -> np.ndarray:
        market = self.markets().get(symbol)
        if market is None:
            self.check_symbol(symbol)  # raises UnknownSymbolError with close matches
            market = self.markets()[symbol]
        limit = min(limit, self.page_limit)
        if not self.binance_like or not market.id:
            return self._fetch_page_ccxt(symbol, since_ms, until_ms, limit)
        params = {"symbol": market.id, "interval": "1m", "startTime": int(since_ms), "endTime": int(until_ms),
                  "limit": int(limit)}

        def fetch():
            answer = self.client.publicGetKlines(params)
            # Our own reading of the body: ccxt's parse_ohlcv sorts rows, drops some and truncates to the
            # limit, which would hide what the exchange sent (duplicates, misaligned open times) from raw.
            rows = parse_klines(answer)
            if rows is None:
                raise TransientExchangeError(
                    f"{self.id}: malformed 200 response for {symbol} klines: {str(self._body())[:80]!r}"
                )
            return rows

        return self._call(fetch, weight=_KLINES_WEIGHT)

    def _fetch_page_ccxt(self, symbol: str, since_ms: int, until_ms: int, limit: int) -> np.ndarray:
        """Exchanges without Binance's klines shape: ccxt's unified fetch_ohlcv (it normalises rows)."""

        def fetch():
            page = self.client.fetch_ohlcv(symbol, "1m", since=since_ms, limit=limit, params={"until": until_ms})
            body = self._body()
            try:
                parsed = json.loads(body) if body else None
            except ValueError:
                parsed = None
            if parsed is None:  # each exchange wraps its rows its own way; only JSON is required here
                raise TransientExchangeError(f"{self.id}: malformed 200 response for {symbol} klines: {str(body)[:80]!r}")
            return np.asarray([r[:6] for r in page], dtype=np.float64).reshape(-1, 6)

        return self._call(fetch, weight=_KLINES_WEIGHT)

    def close(self) -> None:
        session = getattr(self.client, "session", None)
        if session is not None:
            session.close()


def parse_klines(answer) -> np.ndarray | None:
    """Binance kline arrays -> (n, 6) float64 [open time ms, open, high, low, close, volume], in the order
    sent, every row kept; None when the answer is not a list of kline rows (a malformed body)."""
    if not isinstance(answer, list):
        return None
    if not answer:
        return np.empty((0, 6))
    try:
        rows = np.array([r[:6] for r in answer], dtype=np.float64)
    except (TypeError, ValueError, IndexError, KeyError):
        return None
    if rows.ndim != 2 or rows.shape[1] != 6 or not np.isfinite(rows[:, 0]).all():
        return None
    return rows


def _float_or_none(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
