"""A Binance-compatible spot REST emulator on 127.0.0.1, serving SimulatedSource candles, with fault injection.

Why it exists: the live client (ccxt_client.CcxtExchange) must be tested against real HTTP, real ccxt parsing
and Binance's real rate-limit rules, without touching the internet. The emulator therefore speaks Binance's
exact JSON, headers and status codes for the few public endpoints the lakehouse uses:

    GET /api/v3/ping          weight 1   {}
    GET /api/v3/time          weight 1   {"serverTime": ms}
    GET /api/v3/exchangeInfo  weight 20  markets and the REQUEST_WEIGHT budget
    GET /api/v3/klines        weight 2   1m candles from SimulatedSource (the ground truth)
    GET /data/spot/...        no weight  the bulk kline archive's zip + CHECKSUM files (emulator_archive.py)

Rate limiting follows Binance: weight is counted per client IP in fixed windows aligned to epoch multiples of
the window; a request that would cross the limit gets 429 with Retry-After (seconds until the window resets);
any request sent while that Retry-After runs earns a 418 ban of `ban_s` seconds, during which everything is 418.
Every response (4xx included) carries X-MBX-USED-WEIGHT-1M (and, for another window, the header named after it).

Faults are queued in-process with `inject()` or over HTTP with POST /_emulator/faults; GET /_emulator/stats
returns the counters. Control endpoints under /_emulator/ are never weight-counted or faulted.

Beyond one-off faults: `dirty()` makes a symbol's klines carry dirt every time they are served (a duplicated
row, a misaligned open time, high < low, negative volume), as a real exchange's closed history sometimes does;
`use_weight()` spends weight as another process sharing the IP would; `latency_ms` (+- `jitter_ms`) delays
every request, half before it is counted and half before the answer, like a network round trip.

Run standalone: python -m lakehouse.exchange.emulator --port 8090
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import math
import random
import socket
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

import numpy as np

from ..errors import UnknownSymbolError
from ..timeutil import MINUTE_MS, Clock, system_clock_ms
from .emulator_archive import ARCHIVE_PREFIX, ArchiveRoutes
from .emulator_archive import CONTROL_PATH as ARCHIVE_CONTROL
from .simulated import SimulatedSource

WEIGHTS = {
    "/api/v3/ping": 1,
    "/api/v3/time": 1,
    "/api/v3/exchangeInfo": 20,
    "/api/v3/klines": 2,
}
DEFAULT_WEIGHT = 1  # unknown paths still reach the server and cost something
KLINES_DEFAULT_LIMIT = 500
KLINES_MAX_LIMIT = 1000  # Binance spot silently caps larger limits

FAULT_KINDS = ("429", "418", "500", "502", "503_maintenance", "timeout", "truncated", "empty", "html", "short")
# Dirt a symbol's klines can carry on every request (what clean_bars must reject, see lakehouse.clean).
DIRT_KINDS = ("duplicate", "misaligned", "high_below_low", "negative_volume")
MISALIGN_MS = 30_000  # a "misaligned" candle opens half a minute late
CONTROL_PREFIX = "/_emulator/"

_HTML_PAGE = (
    "<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n<center><h1>{title}</h1></center>\r\n"
    "<hr><center>CloudFront</center>\r\n</body>\r\n</html>\r\n"
)


def _err(code: int, msg: str) -> dict:
    return {"code": code, "msg": msg}


@dataclasses.dataclass
class _Fault:
    kind: str
    remaining: int
    path: str | None  # None matches every non-control path
    params: dict

    def matches(self, path: str) -> bool:
        return self.path is None or self.path == path


@dataclasses.dataclass
class _ClientState:
    """Binance accounts per IP; on loopback that is effectively one shared budget."""

    window: int = -1
    used: int = 0
    retry_after_until: float = 0.0  # a request before this earns a ban
    banned_until: float = 0.0


@dataclasses.dataclass
class _Response:
    status: int
    body: bytes
    content_type: str = "application/json;charset=UTF-8"
    headers: dict = dataclasses.field(default_factory=dict)
    delay_s: float = 0.0
    declared_length: int | None = None  # a Content-Length larger than the body: the connection drops mid-body


def _json_response(status: int, payload, **headers) -> _Response:
    return _Response(status, json.dumps(payload, separators=(",", ":")).encode(), headers=headers)


def _rate_limit_interval(window_s: float) -> tuple[str, int]:
    """Express the window as Binance does (interval, intervalNum); sub-second windows round up to 1 SECOND."""
    seconds = max(1, int(round(window_s)))
    for name, size in (("DAY", 86_400), ("HOUR", 3_600), ("MINUTE", 60)):
        if seconds % size == 0:
            return name, seconds // size
    return "SECOND", seconds


def _fmt(value: float, decimals: int) -> str:
    # Binance prints fixed 8 decimals; markets with finer ticks (e.g. DOGE) need more to stay exact.
    return f"{value:.{max(8, decimals)}f}"


class BinanceEmulator:
    """Binance spot REST look-alike served from a daemon thread; see the module docstring."""

    def __init__(
        self,
        *,
        source: SimulatedSource | None = None,
        clock: Clock = system_clock_ms,
        weight_limit: int = 6000,
        weight_window_s: float = 60.0,
        ban_s: float = 120,
        host: str = "127.0.0.1",
        port: int = 0,
        rate_clock: Callable[[], float] = time.time,
        latency_ms: float = 0.0,
        jitter_ms: float = 0.0,
    ):
        """`clock` (ms) decides which candles exist and serverTime; `rate_clock` (epoch seconds) drives weight
        windows, Retry-After and bans, so a test can pin candle time while rate limits still reset in real time."""
        self.source = source or SimulatedSource()
        self.clock = clock
        self.rate_clock = rate_clock
        self.weight_limit = int(weight_limit)
        self.weight_window_s = float(weight_window_s)
        self.ban_s = float(ban_s)
        self.latency_ms = float(latency_ms)
        self.jitter_ms = float(jitter_ms)
        self._rng = random.Random(0)
        self._dirt: dict[str, dict[int, str]] = {}  # symbol -> {minute ts: dirt kind}
        self.host = host
        self._requested_port = port
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self._clients: dict[str, _ClientState] = {}
        self._faults: collections.deque[_Fault] = collections.deque()
        self._outage = False
        # exchange ids ("BTCUSDT") -> unified symbols, as Binance names markets
        self._ids = {m.replace("/", ""): m for m in self.source.markets}
        self.archive = ArchiveRoutes(self)  # the bulk archive (data.binance.vision layout), outside the budget
        self.reset_counters()

    # lifecycle ----------------------------------------------------------------------------------
    def start(self) -> "BinanceEmulator":
        if self._server is not None:
            return self
        self._stopping.clear()
        server = _Server((self.host, self._requested_port), _Handler)
        server.daemon_threads = True  # a handler stuck in a "timeout" fault must not block exit
        server.emulator = self  # type: ignore[attr-defined]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name=f"binance-emulator-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()  # wakes handlers sleeping in a "timeout" fault
        server.shutdown()
        # Keep-alive connections outlive serve_forever; close them so clients see the emulator go away.
        with self._lock:
            conns = list(self._connections)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> "BinanceEmulator":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("emulator is not running: call start() first")
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # counters and controls ----------------------------------------------------------------------
    def reset_counters(self) -> None:
        with self._lock:
            self.requests = 0
            self.weight_used_total = 0
            self.count_429 = 0
            self.count_418 = 0
            self.faults_served = 0
            self.path_counts: collections.Counter[str] = collections.Counter()
            self.peak_used = 0  # the highest weight any client reached in one window
            self.in_flight = 0
            self.peak_in_flight = 0  # most requests in flight at once (from arrival to the answer sent)

    def reset_limits(self) -> None:
        """Forget used weight, pending Retry-Afters and bans (counters are kept)."""
        with self._lock:
            self._clients.clear()

    def stats(self) -> dict:
        with self._lock:
            now = self.rate_clock()
            window = self._window(now)
            clients = {
                ip: {
                    "used_weight": c.used if c.window == window else 0,
                    "retry_after_s": max(0.0, c.retry_after_until - now),
                    "banned_s": max(0.0, c.banned_until - now),
                }
                for ip, c in self._clients.items()
            }
            return {
                "requests": self.requests,
                "weight_used_total": self.weight_used_total,
                "count_429": self.count_429,
                "count_418": self.count_418,
                "faults_served": self.faults_served,
                "faults_pending": sum(f.remaining for f in self._faults),
                "paths": dict(self.path_counts),
                "outage": self._outage,
                "peak_used_weight": self.peak_used,
                "peak_in_flight": self.peak_in_flight,
                "weight_limit": self.weight_limit,
                "weight_window_s": self.weight_window_s,
                "clients": clients,
            }

    def inject(self, kind: str, count: int = 1, path: str | None = "/api/v3/klines", **params) -> None:
        """Queue `count` faults of `kind` for the next requests to `path` (None or "*": any path), FIFO.

        Params: retry_after (s) for "429"/"418" (418 defaults to ban_s); delay (s, default 5) for "timeout";
        body (str) replaces the default body of "500"/"502"/"503_maintenance"/"html". By default an injected
        429/418 is a one-off answer; sticky=True also arms the real Retry-After trap / ban, as the limiter would.
        An injected fault still costs the request's weight (the request reached the exchange).
        """
        kind = str(kind)
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; expected one of {', '.join(FAULT_KINDS)}")
        if int(count) < 1:
            raise ValueError("count must be >= 1")
        with self._lock:
            self._faults.append(_Fault(kind, int(count), None if path in (None, "*") else path, dict(params)))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def dirty(self, symbol: str, kind: str, ts_ms: int) -> None:
        """Serve the candle of `symbol` at minute `ts_ms` with dirt of `kind` on every request from now on:
        "duplicate" sends it twice, "misaligned" shifts its open time by 30 s, "high_below_low" swaps its high
        and low, "negative_volume" negates its volume."""
        if kind not in DIRT_KINDS:
            raise ValueError(f"unknown dirt kind {kind!r}; expected one of {', '.join(DIRT_KINDS)}")
        unified = self._ids.get(str(symbol).replace("/", "").upper())
        if unified is None:
            raise ValueError(f"the emulator does not list {symbol!r}")
        with self._lock:
            self._dirt.setdefault(unified, {})[int(ts_ms) // MINUTE_MS * MINUTE_MS] = kind

    def use_weight(self, weight: int, client_ip: str = "127.0.0.1") -> None:
        """Spend `weight` of the current window for `client_ip`, as another process sharing the IP would."""
        with self._lock:
            now = self.rate_clock()
            client = self._clients.setdefault(client_ip, _ClientState())
            window = self._window(now)
            if client.window != window:
                client.window, client.used = window, 0
            client.used += int(weight)

    def set_outage(self, on: bool = True) -> None:
        """Full outage: every exchange request answers 503 until switched off."""
        with self._lock:
            self._outage = bool(on)

    # request pipeline ---------------------------------------------------------------------------
    def round_trip_s(self) -> float:
        """One simulated network round trip: latency_ms +- jitter_ms (uniform), never negative."""
        if not self.latency_ms and not self.jitter_ms:
            return 0.0
        with self._lock:
            jitter = self._rng.uniform(-self.jitter_ms, self.jitter_ms)
        return max(0.0, self.latency_ms + jitter) / 1000.0

    def _window(self, now: float) -> int:
        return int(now // self.weight_window_s)

    def handle(self, method: str, raw_path: str, client_ip: str, body: bytes) -> _Response:
        parsed = urllib.parse.urlsplit(raw_path)
        path = parsed.path.rstrip("/") or "/"
        if path.startswith(ARCHIVE_PREFIX):
            return self.archive.handle(method, path)
        if path.startswith(ARCHIVE_CONTROL):
            return self.archive.control(method, path, body)
        if path.startswith(CONTROL_PREFIX.rstrip("/")):
            return self._control(method, path, body)
        query = {k: v[-1] for k, v in urllib.parse.parse_qs(parsed.query, keep_blank_values=True).items()}

        with self._lock:
            self.requests += 1
            self.path_counts[path] += 1
            now = self.rate_clock()
            client = self._clients.setdefault(client_ip, _ClientState())
            window = self._window(now)
            if client.window != window:
                client.window, client.used = window, 0
            used_header = self._used_headers(client.used)
            if self._outage:
                # What the CDN in front of a down exchange sends: no Binance JSON, just a 503 page.
                page = _HTML_PAGE.format(title="503 Service Temporarily Unavailable").encode()
                return _Response(503, page, "text/html", headers=used_header)

            if now < client.banned_until:
                self.count_418 += 1
                retry = max(1, math.ceil(client.banned_until - now))
                return self._banned_response(retry, used_header)
            if now < client.retry_after_until:
                # Ignoring a Retry-After is exactly what gets an IP banned on Binance.
                client.banned_until = now + self.ban_s
                self.count_418 += 1
                return self._banned_response(max(1, math.ceil(self.ban_s)), used_header)

            weight = WEIGHTS.get(path, DEFAULT_WEIGHT)
            if client.used + weight > self.weight_limit:
                window_end = (window + 1) * self.weight_window_s
                # The trap lasts until the budget resets: a client that waits for the reset is not punished.
                client.retry_after_until = window_end
                self.count_429 += 1
                return self._rate_limited_response(max(1, math.ceil(window_end - now)), used_header)
            client.used += weight
            self.weight_used_total += weight
            self.peak_used = max(self.peak_used, client.used)
            used_header = self._used_headers(client.used)

            fault = self._pop_fault(path)
            if fault is not None:
                self.faults_served += 1
                if fault.kind == "429":
                    self.count_429 += 1
                    retry = max(1, math.ceil(float(fault.params.get("retry_after", 1))))
                    if fault.params.get("sticky"):
                        client.retry_after_until = now + retry
                    return self._rate_limited_response(retry, used_header)
                if fault.kind == "418":
                    self.count_418 += 1
                    retry = max(1, math.ceil(float(fault.params.get("retry_after", self.ban_s))))
                    if fault.params.get("sticky"):
                        client.banned_until = now + retry
                    return self._banned_response(retry, used_header)

        # Outside the lock: building klines can take a moment and must not serialise other clients.
        if method != "GET":
            resp = _json_response(405, _err(-1000, "Method not allowed."))
        else:
            resp = self._route(path, query)
        if fault is not None:
            resp = self._apply_fault(fault, resp)
        resp.headers.update(used_header)
        return resp

    def _used_headers(self, used: int) -> dict:
        """Binance names the header after its window, X-MBX-USED-WEIGHT-(intervalNum)(intervalLetter); the 1M
        name is always sent too, as clients written for Binance's default look for it."""
        interval, num = _rate_limit_interval(self.weight_window_s)
        headers = {"X-MBX-USED-WEIGHT": str(used), "X-MBX-USED-WEIGHT-1M": str(used)}
        headers[f"X-MBX-USED-WEIGHT-{num}{interval[0]}"] = str(used)
        return headers

    def _pop_fault(self, path: str) -> _Fault | None:
        for fault in self._faults:
            if fault.matches(path):
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self._faults.remove(fault)
                return fault
        return None

    def _rate_limited_response(self, retry_after: int, headers: dict) -> _Response:
        window = _rate_limit_interval(self.weight_window_s)
        msg = (f"Too much request weight used; current limit is {self.weight_limit} request weight per "
               f"{window[1]} {window[0]}. Please use WebSocket Streams for live updates to avoid polling the API.")
        return _json_response(429, _err(-1003, msg), **headers, **{"Retry-After": str(retry_after)})

    def _banned_response(self, retry_after: int, headers: dict) -> _Response:
        until = int((self.rate_clock() + retry_after) * 1000)
        msg = f"Way too much request weight used; IP banned until {until}. Please use WebSocket Streams for live updates to avoid bans."
        return _json_response(418, _err(-1003, msg), **headers, **{"Retry-After": str(retry_after)})

    def _apply_fault(self, fault: _Fault, resp: _Response) -> _Response:
        kind = fault.kind
        if "body" in fault.params and kind in ("500", "502", "503_maintenance", "html"):
            status = {"500": 500, "502": 502, "503_maintenance": 503, "html": 200}[kind]
            body = str(fault.params["body"])
            ctype = "text/html" if body.lstrip().startswith("<") else "application/json;charset=UTF-8"
            return _Response(status, body.encode(), ctype)
        if kind == "500":
            return _json_response(500, _err(-1000, "An unknown error occured while processing the request."))
        if kind == "502":
            return _Response(502, _HTML_PAGE.format(title="502 Bad Gateway").encode(), "text/html")
        if kind == "503_maintenance":
            return _json_response(503, {"code": 1, "msg": "System is under maintenance."})
        if kind == "timeout":
            resp.delay_s = float(fault.params.get("delay", 5.0))
            return resp
        if kind == "truncated":
            resp.body = resp.body[: len(resp.body) // 2]
            return resp
        if kind == "empty":
            resp.body = b""
            return resp
        if kind == "html":
            return _Response(200, _HTML_PAGE.format(title="Service temporarily unavailable").encode(), "text/html")
        if kind == "short":
            payload = json.loads(resp.body) if resp.status == 200 and resp.body else None
            if isinstance(payload, list):
                resp.body = json.dumps(payload[: len(payload) // 2], separators=(",", ":")).encode()
            return resp
        raise AssertionError(kind)

    # endpoints ----------------------------------------------------------------------------------
    def _route(self, path: str, query: dict) -> _Response:
        if path == "/api/v3/ping":
            return _json_response(200, {})
        if path == "/api/v3/time":
            return _json_response(200, {"serverTime": int(self.clock())})
        if path == "/api/v3/exchangeInfo":
            return _json_response(200, self.exchange_info())
        if path == "/api/v3/klines":
            return self._klines(query)
        return _Response(404, _HTML_PAGE.format(title="404 Not Found").encode(), "text/html")

    def exchange_info(self) -> dict:
        interval, interval_num = _rate_limit_interval(self.weight_window_s)
        return {
            "timezone": "UTC",
            "serverTime": int(self.clock()),
            "rateLimits": [
                {"rateLimitType": "REQUEST_WEIGHT", "interval": interval, "intervalNum": interval_num,
                 "limit": self.weight_limit},
                {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 100},
                {"rateLimitType": "ORDERS", "interval": "DAY", "intervalNum": 1, "limit": 200000},
                {"rateLimitType": "RAW_REQUESTS", "interval": "MINUTE", "intervalNum": 5, "limit": 61000},
            ],
            "exchangeFilters": [],
            "symbols": [self._symbol_info(sym) for sym in self.source.markets],
        }

    def _symbol_info(self, symbol: str) -> dict:
        m = self.source.markets[symbol]
        base, quote = symbol.split("/")
        tick = _fmt(10.0 ** -m.decimals, m.decimals)
        step_decimals = min(8, max(0, m.decimals - 2))
        step = _fmt(10.0 ** -step_decimals, 8)
        return {
            "symbol": base + quote,
            "status": "TRADING",
            "baseAsset": base,
            "baseAssetPrecision": 8,
            "quoteAsset": quote,
            "quotePrecision": 8,
            "quoteAssetPrecision": 8,
            "baseCommissionPrecision": 8,
            "quoteCommissionPrecision": 8,
            "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET", "STOP_LOSS", "STOP_LOSS_LIMIT", "TAKE_PROFIT",
                           "TAKE_PROFIT_LIMIT"],
            "icebergAllowed": True,
            "ocoAllowed": True,
            "otoAllowed": True,
            "quoteOrderQtyMarketAllowed": True,
            "allowTrailingStop": True,
            "cancelReplaceAllowed": True,
            "isSpotTradingAllowed": True,
            "isMarginTradingAllowed": False,
            "filters": [
                {"filterType": "PRICE_FILTER", "minPrice": tick, "maxPrice": "1000000.00000000", "tickSize": tick},
                {"filterType": "LOT_SIZE", "minQty": step, "maxQty": "9000000.00000000", "stepSize": step},
                {"filterType": "ICEBERG_PARTS", "limit": 10},
                {"filterType": "NOTIONAL", "minNotional": "5.00000000", "applyMinToMarket": True,
                 "maxNotional": "9000000.00000000", "applyMaxToMarket": False, "avgPriceMins": 5},
                {"filterType": "MAX_NUM_ORDERS", "maxNumOrders": 200},
            ],
            "permissions": ["SPOT"],
            "permissionSets": [["SPOT"]],
            "defaultSelfTradePreventionMode": "EXPIRE_MAKER",
            "allowedSelfTradePreventionModes": ["EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH"],
        }

    def _klines(self, query: dict) -> _Response:
        for name in ("symbol", "interval"):
            if not query.get(name):
                return _json_response(400, _err(
                    -1102, f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed."))
        ints = {}
        for name in ("startTime", "endTime", "limit"):
            raw = query.get(name)
            if raw is None or raw == "":
                continue
            if not raw.isdigit() or len(raw) > 20:
                return _json_response(400, _err(
                    -1100, f"Illegal characters found in parameter '{name}'; legal range is '^[0-9]{{1,20}}$'."))
            ints[name] = int(raw)
        unified = self._ids.get(query["symbol"].upper())
        if unified is None:
            return _json_response(400, _err(-1121, "Invalid symbol."))
        if query["interval"] != "1m":
            return _json_response(400, _err(-1120, "Invalid interval."))
        limit = ints.get("limit", KLINES_DEFAULT_LIMIT)
        if limit < 1:
            return _json_response(400, _err(-1130, "Data sent for parameter 'limit' is not valid."))
        limit = min(limit, KLINES_MAX_LIMIT)
        start, end = ints.get("startTime"), ints.get("endTime")
        if start is not None and end is not None and start > end:
            return _json_response(400, _err(-1023, "Start time is greater than end time."))
        try:
            rows = self.candles(unified, start, end, limit)
        except UnknownSymbolError:
            return _json_response(400, _err(-1121, "Invalid symbol."))
        decimals = self.source.markets[unified].decimals
        return _Response(200, _klines_json(rows, decimals).encode())

    def candles(self, symbol: str, start_ms: int | None, end_ms: int | None, limit: int):
        """What GET /klines returns as (n, 6) rows: startTime <= ts <= endTime, never past the forming candle;
        from startTime forwards when given, otherwise the most recent `limit` up to endTime (or now)."""
        m = self.source.market(symbol)
        listing = -(-m.listed_at_ms // MINUTE_MS) * MINUTE_MS
        forming = (int(self.clock()) // MINUTE_MS) * MINUTE_MS
        stop = forming + MINUTE_MS if end_ms is None else min(end_ms + 1, forming + MINUTE_MS)  # exclusive
        # Outages leave gaps, so a window of `limit` minutes may hold fewer candles: widen until filled.
        span = limit * MINUTE_MS
        if start_ms is not None:
            lo = max(start_ms, listing)
            while True:
                hi = min(stop, lo + span)
                rows = self._served(symbol, lo, hi)
                if len(rows) >= limit or hi >= stop:
                    return rows[:limit]
                span *= 2
        while True:
            lo = max(listing, stop - span)
            rows = self._served(symbol, lo, stop)
            if len(rows) >= limit or lo <= listing:
                return rows[len(rows) - limit:] if len(rows) > limit else rows
            span *= 2

    def _served(self, symbol: str, lo: int, hi: int):
        """The rows with lo <= open time < hi as served, dirt included, in the order the exchange sends them."""
        dirt = self._dirt.get(symbol)
        if not dirt:
            return self.source.candles(symbol, lo, hi)
        # A misaligned candle keeps its place in the sequence, so read whole minutes around the window.
        rows = self.source.candles(symbol, lo // MINUTE_MS * MINUTE_MS, -(-hi // MINUTE_MS) * MINUTE_MS).copy()
        extra = []
        for i, ts in enumerate(rows[:, 0].astype(np.int64)):
            kind = dirt.get(int(ts))
            if kind == "duplicate":
                extra.append((i, rows[i].copy()))
            elif kind == "misaligned":
                rows[i, 0] = ts + MISALIGN_MS
            elif kind == "high_below_low":
                rows[i, 2], rows[i, 3] = rows[i, 3], rows[i, 2]
            elif kind == "negative_volume":
                rows[i, 5] = -rows[i, 5]
        for i, row in reversed(extra):
            rows = np.insert(rows, i + 1, row, axis=0)
        keep = (rows[:, 0] >= lo) & (rows[:, 0] < hi)
        return rows[keep]

    def _control(self, method: str, path: str, body: bytes) -> _Response:
        try:
            payload = json.loads(body) if body else {}
        except ValueError:
            return _json_response(400, {"error": "body must be JSON"})
        if not isinstance(payload, dict):
            return _json_response(400, {"error": "body must be a JSON object"})
        if path == "/_emulator/stats" and method == "GET":
            return _json_response(200, self.stats())
        if path == "/_emulator/faults" and method == "POST":
            params = dict(payload)
            kind = params.pop("kind", None)
            count = params.pop("count", 1)
            path_param = params.pop("path", "/api/v3/klines")
            try:
                self.inject(kind, count=count, path=path_param, **params)
            except (TypeError, ValueError) as exc:
                return _json_response(400, {"error": str(exc)})
            return _json_response(200, {"queued": int(count), "kind": kind, "path": path_param})
        if path == "/_emulator/faults" and method == "DELETE":
            self.clear_faults()
            return _json_response(200, {"cleared": True})
        if path == "/_emulator/dirt" and method == "POST":
            try:
                self.dirty(payload.get("symbol", ""), payload.get("kind", ""), int(payload.get("ts", 0)))
            except (TypeError, ValueError) as exc:
                return _json_response(400, {"error": str(exc)})
            return _json_response(200, {"dirty": payload})
        if path == "/_emulator/weight" and method == "POST":
            self.use_weight(int(payload.get("used", 0)))
            return _json_response(200, {"used": int(payload.get("used", 0))})
        if path == "/_emulator/outage" and method == "POST":
            self.set_outage(bool(payload.get("on", True)))
            return _json_response(200, {"outage": self._outage})
        if path == "/_emulator/reset" and method == "POST":
            self.clear_faults()
            self.reset_limits()
            self.reset_counters()
            self.set_outage(False)
            return _json_response(200, {"reset": True})
        return _json_response(404, {"error": f"no control endpoint {method} {path}"})


def _klines_json(rows, decimals: int) -> str:
    """Binance's 12-field kline arrays, numbers as strings; the extra fields are derived so they are stable."""
    parts = []
    for ts, o, h, l, c, v in rows:
        ts = int(ts)
        quote_volume = v * (o + c) / 2
        taker = 0.55 if c >= o else 0.45
        trades = max(1, int(v * 7) % 5000 + 1)
        parts.append(
            f'[{ts},"{_fmt(o, decimals)}","{_fmt(h, decimals)}","{_fmt(l, decimals)}","{_fmt(c, decimals)}",'
            f'"{_fmt(v, 8)}",{ts + MINUTE_MS - 1},"{_fmt(quote_volume, 8)}",{trades},'
            f'"{_fmt(v * taker, 8)}","{_fmt(quote_volume * taker, 8)}","0"]'
        )
    return "[" + ",".join(parts) + "]"


class _Server(ThreadingHTTPServer):
    # socketserver's backlog of 5 drops the SYNs of a client opening more connections at once (a pool of
    # download threads does), which then waits the kernel's 1 s SYN retransmit: a stall no exchange has.
    request_queue_size = 128


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as ccxt's requests session expects from a real exchange
    # Headers and body go out as two writes; with Nagle on, a small body waits for the client's delayed ACK of
    # the headers, 40 ms on Linux: a stall on every small answer that no exchange or file host has.
    disable_nagle_algorithm = True
    server_version = "BinanceEmulator"
    sys_version = ""

    @property
    def emulator(self) -> BinanceEmulator:
        return self.server.emulator  # type: ignore[attr-defined]

    def setup(self) -> None:
        super().setup()
        with self.emulator._lock:
            self.emulator._connections.add(self.connection)

    def finish(self) -> None:
        with self.emulator._lock:
            self.emulator._connections.discard(self.connection)
        try:
            super().finish()
        except OSError:
            pass

    def log_message(self, format, *args) -> None:  # noqa: A002 - stdlib signature
        pass

    def _serve(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        emu = self.emulator
        control = self.path.startswith(CONTROL_PREFIX)
        # A request is in flight from its arrival until its answer goes out. Not until this thread ends: the
        # client may have read the answer and sent its next request by then, which would count twice.
        landed = [control]

        def answered() -> None:
            if not landed[0]:
                landed[0] = True
                with emu._lock:
                    emu.in_flight -= 1

        if not control:
            with emu._lock:
                emu.in_flight += 1
                emu.peak_in_flight = max(emu.peak_in_flight, emu.in_flight)
        try:
            self._answer(method, body, 0.0 if control else emu.round_trip_s() / 2, answered)
        finally:
            answered()

    def _answer(self, method: str, body: bytes, half: float, answered=lambda: None) -> None:
        emu = self.emulator
        if half and emu._stopping.wait(half):  # on the way in: the request is counted when it arrives
            self.close_connection = True
            return
        resp = emu.handle(method, self.path, self.client_address[0], body)
        resp.delay_s += half  # on the way back
        if resp.delay_s and emu._stopping.wait(resp.delay_s):
            self.close_connection = True
            return
        answered()
        try:
            self.send_response(resp.status)
            self.send_header("Content-Type", resp.content_type)
            self.send_header("Content-Length", str(resp.declared_length or len(resp.body)))
            self.close_connection = self.close_connection or resp.declared_length is not None
            for name, value in resp.headers.items():
                self.send_header(name, value)
            self.end_headers()
            if method != "HEAD":
                self.wfile.write(resp.body)
        except OSError:
            # The client gave up (e.g. it timed out during a "timeout" fault); nothing to answer.
            self.close_connection = True

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        self._serve("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._serve("POST")

    def do_DELETE(self) -> None:  # noqa: N802
        self._serve("DELETE")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Binance-compatible exchange emulator on 127.0.0.1")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--weight-limit", type=int, default=6000, help="request weight per window (Binance: 6000)")
    parser.add_argument("--window", type=float, default=60.0, help="weight window in seconds (Binance: 60)")
    parser.add_argument("--ban", type=float, default=120.0, help="418 ban length in seconds")
    parser.add_argument("--outage-rate", type=float, default=0.02,
                        help="daily chance of an exchange-wide gap in the simulated candles")
    parser.add_argument("--synthetic", type=int, default=0, help="extra SIMnnn/USDT markets (benchmarks)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--latency-ms", type=float, default=0.0, help="network round trip added to every request")
    parser.add_argument("--jitter-ms", type=float, default=0.0, help="+- uniform jitter on that round trip")
    args = parser.parse_args(argv)
    source = SimulatedSource(synthetic=args.synthetic, outage_rate=args.outage_rate, seed=args.seed)
    emulator = BinanceEmulator(source=source, weight_limit=args.weight_limit, weight_window_s=args.window,
                               ban_s=args.ban, host=args.host, port=args.port, latency_ms=args.latency_ms,
                               jitter_ms=args.jitter_ms).start()
    print(f"Binance emulator serving on {emulator.url} (ccxt: urls['api']['public'] = '{emulator.url}/api/v3')",
          flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        emulator.stop()


if __name__ == "__main__":
    main()
