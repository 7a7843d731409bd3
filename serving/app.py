"""The ASGI application: read-only endpoints over every layer, the status data, and the coverage page."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import threading
from pathlib import Path
from typing import Callable, Iterator

import polars as pl
from fastapi import FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

import lakehouse.api as lh
from lakehouse.config import Settings
from lakehouse.errors import CorruptPartitionError, LakehouseError, UserInputError
from lakehouse.registry import Registry
from lakehouse.resample import INTERVAL_MINUTES
from lakehouse.schema import CLEAN_BARS, INDICATORS, RAW_OHLCV, SCORES, SIGNALS
from lakehouse.signals import RULES
from lakehouse.storage import Storage
from lakehouse.symbols import decode_symbol, encode_symbol
from lakehouse.timeutil import check_range, parse_day, utc_today

from . import formats
from .cache import Validators, make_cache
from .settings import ApiSettings
from .status import RunsSource, StatusService

log = logging.getLogger("lakehouse.api")
STATIC = Path(__file__).parent / "static"
STREAM_DAYS = 31  # ranges longer than this are read and sent in pieces of this many days
# Cache-Control: closed history may still be repaired, so clients revalidate after a while; today moves.
HISTORY_CACHE = "public, max-age=300"
LIVE_CACHE = "public, max-age=10"
ROWS_PER_DAY = {iv: 1440 // m for iv, m in INTERVAL_MINUTES.items()}
SYMBOL_DOC = "Path-safe symbol, BASE-QUOTE, e.g. BTC-USDT"
FORMAT_DOC = "json (records, ISO-8601 UTC timestamps), csv, arrow (IPC stream) or parquet; default from Accept, else json"


class ApiError(Exception):
    """A request we refuse: HTTP status, and a message saying what was wrong and how to ask instead."""

    def __init__(self, status: int, message: str, **extra):
        super().__init__(message)
        self.status, self.message, self.extra = status, message, extra


def _short(value: object, n: int = 40) -> str:
    text = str(value)
    return text if len(text) <= n else text[: n - 3] + "..."


def create_app(root: str | None = None, *, settings: Settings | None = None, api_settings: ApiSettings | None = None,
               clock: Callable[[], int] | None = None, dagster_instance: Callable[[], object] | None = None,
               warm_status: bool = False) -> FastAPI:
    """The app over the lakehouse at `root` (default: LAKEHOUSE_ROOT). `clock` (ms) pins "now" for the audit;
    `dagster_instance` returns the instance whose runs are shown (default: DAGSTER_HOME's, opened lazily);
    `warm_status` starts the first audit at start-up, so the page's first visitor does not wait for a cold one."""
    settings = settings or Settings.from_env()
    api_settings = api_settings or ApiSettings.from_env()
    root = str(Path(root or settings.root).resolve())
    storage = Storage(root)
    cache = make_cache(api_settings.redis_url)
    status_service = StatusService(root, settings, RunsSource(dagster_instance), clock)
    today = (lambda: utc_today(clock)) if clock else utc_today

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        if warm_status:
            threading.Thread(target=status_service.current, name="warm-audit", daemon=True).start()
        yield

    app = FastAPI(
        lifespan=lifespan,
        title="OHLCV lakehouse API",
        version="1",
        description="Read-only access to clean bars, indicators, signals, scores and coverage of the lakehouse.",
        docs_url="/docs", redoc_url=None,
    )
    app.state.cache = cache
    app.state.root = root

    # errors ------------------------------------------------------------------------------------------
    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError):
        return JSONResponse({"error": exc.message, **exc.extra}, status_code=exc.status)

    @app.exception_handler(LakehouseError)
    async def _lakehouse_error(_request: Request, exc: LakehouseError):
        # Not the request's fault (e.g. a damaged registry file): say what is wrong on the server.
        log.warning("request failed: %s", exc)
        return JSONResponse({"error": _relative(str(exc), root)}, status_code=503)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError):
        problems = []
        for e in exc.errors():
            where = ".".join(str(p) for p in e.get("loc", ()) if p not in ("query", "path", "header"))
            problems.append(f"{where or 'request'}: {e.get('msg')} (got {_short(e.get('input'))!r})")
        return JSONResponse({"error": "; ".join(problems)}, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException):
        message = {404: "no such endpoint; see /openapi.json", 405: "method not allowed: this API is read-only (GET)"}
        return JSONResponse({"error": message.get(exc.status_code, str(exc.detail))}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    # helpers -----------------------------------------------------------------------------------------
    def symbol_of(path_symbol: str) -> tuple[str, str]:
        """'BTC-USDT' -> ('BTC/USDT', exchange it is tracked on); 400 if malformed, 404 if the lakehouse has none."""
        try:
            symbol = decode_symbol(path_symbol.strip())
        except UserInputError:
            raise ApiError(400, f"invalid symbol {_short(path_symbol)!r}: use BASE-QUOTE with letters and digits, "
                           "e.g. BTC-USDT") from None
        entry = Registry(root).load().get(symbol)
        if entry is not None:
            return symbol, entry.exchange
        for ex, sym in storage.symbols(RAW_OHLCV):
            if sym == symbol:
                return symbol, ex
        raise ApiError(404, f"unknown symbol {symbol}: the lakehouse has no data for it; see /v1/symbols")

    def day_range(start: str | None, end: str | None) -> tuple[dt.date, dt.date]:
        try:
            end_day = parse_day(end, "end") if end else today()
            start_day = parse_day(start, "start") if start else end_day
            check_range(start_day, end_day)
        except UserInputError as exc:
            raise ApiError(400, str(exc)) from None
        return start_day, end_day

    def interval_of(interval: str | None, allow_all: bool) -> str | None:
        if interval is None or (allow_all and interval == "all"):
            return None
        if interval not in INTERVAL_MINUTES:
            raise ApiError(400, f"unknown interval {_short(interval)!r}; choose one of {', '.join(INTERVAL_MINUTES)}"
                           + (" or all" if allow_all else ""))
        return interval

    def fmt_of(request: Request, fmt: str | None) -> str:
        try:
            return formats.negotiate(fmt, request.headers.get("accept"))
        except formats.FormatError as exc:
            raise ApiError(406 if fmt is None else 400, str(exc)) from None

    def limit_of(limit: int | None) -> int:
        if limit is None:
            return api_settings.max_rows
        if limit > api_settings.max_rows:
            raise ApiError(400, f"limit {limit} is above the server's maximum of {api_settings.max_rows} rows "
                           "(LAKEHOUSE_API_MAX_ROWS)")
        return limit

    def too_many(rows: int, limit: int, what: str) -> ApiError:
        return ApiError(400, f"{what} holds up to {rows} rows, more than the limit of {limit}; ask for fewer days "
                        "(start/end), a coarser interval, or a higher ?limit= (at most LAKEHOUSE_API_MAX_ROWS)",
                        rows=rows, limit=limit)

    def partition_stats(layer: str, exchange: str, symbol: str, start: dt.date, end: dt.date):
        return [(s.ref.day.isoformat(), s.size, s.mtime_ns)
                for s in storage.list_partitions(layer, exchange, symbol) if start <= s.ref.day <= end]

    def respond(request: Request, fmt: str, validators: Validators, cache_control: str, produce: Callable[[], Iterator[bytes]],
                *, stream: bool, shared: bool) -> Response:
        """304 when the client's copy is current; else the body, from the cache when `shared` and present."""
        early = answer_from_memory(request, fmt, validators, cache_control, shared=shared, local_only=False)
        if early is not None:
            return early
        headers = response_headers(request, fmt, validators, cache_control)
        media = formats.MEDIA_TYPES[fmt]
        if stream:
            return StreamingResponse(_guard(produce()), media_type=media, headers=headers)
        body = b"".join(produce())
        if shared:
            cache.set(validators.digest, body)
            headers["X-Cache"] = "miss"
        return Response(body, media_type=media, headers=headers)

    def response_headers(request: Request, fmt: str, validators: Validators, cache_control: str) -> dict[str, str]:
        headers = validators.headers(cache_control)
        headers["Vary"] = "Accept"
        if fmt in (formats.CSV, formats.PARQUET):
            headers["Content-Disposition"] = f'inline; filename="{request.url.path.rsplit("/", 1)[-1]}.{fmt}"'
        return headers

    def answer_from_memory(request: Request, fmt: str, validators: Validators, cache_control: str, *, shared: bool,
                           local_only: bool) -> Response | None:
        """A 304, or a cached body (`local_only`: only what this process holds, so no I/O); None otherwise."""
        headers = response_headers(request, fmt, validators, cache_control)
        if validators.not_modified(request.headers.get("if-none-match"), request.headers.get("if-modified-since")):
            return Response(status_code=304, headers=headers)
        if shared:
            body = cache.get_local(validators.digest) if local_only else cache.get(validators.digest)
            if body is not None:
                headers["X-Cache"] = "hit"
                return Response(body, media_type=formats.MEDIA_TYPES[fmt], headers=headers)
        return None

    def layer_response(request: Request, layer: str, path_symbol: str, reader: Callable[[str, str, dt.date, dt.date], pl.DataFrame],
                       rows_per_day: int | None, start, end, limit, fmt, key_extra: str) -> Response:
        symbol, exchange = symbol_of(path_symbol)
        start_day, end_day = day_range(start, end)
        fmt = fmt_of(request, fmt)
        limit = limit_of(limit)
        stats = partition_stats(layer, exchange, symbol, start_day, end_day)
        what = f"{layer} of {symbol} {start_day}..{end_day}"
        if rows_per_day is not None and len(stats) * rows_per_day > limit:
            raise too_many(len(stats) * rows_per_day, limit, what)
        key = f"{layer}|{exchange}|{symbol}|{start_day}|{end_day}|{key_extra}|{fmt}|{limit}"
        validators = Validators(key, stats)
        live = end_day >= today()
        stream = len(stats) > STREAM_DAYS

        def frames() -> Iterator[pl.DataFrame]:
            rows = 0
            chunk_start = start_day
            while chunk_start <= end_day:
                chunk_end = min(end_day, chunk_start + dt.timedelta(days=STREAM_DAYS - 1))
                df = read(lambda: reader(symbol, exchange, chunk_start, chunk_end))
                rows += df.height
                if rows > limit:
                    raise too_many(rows, limit, what)
                yield df
                chunk_start = chunk_end + dt.timedelta(days=1)

        if not stream:
            df = pl.concat(list(frames()), how="vertical")  # raises the row limit before any byte is sent
            return respond(request, fmt, validators, LIVE_CACHE if live else HISTORY_CACHE,
                           lambda: formats.encode_chunks([df], fmt), stream=False, shared=live)
        return respond(request, fmt, validators, LIVE_CACHE if live else HISTORY_CACHE,
                       lambda: formats.encode_chunks(frames(), fmt), stream=True, shared=False)

    def read(fn: Callable[[], pl.DataFrame]) -> pl.DataFrame:
        try:
            return fn()
        except CorruptPartitionError as exc:
            raise ApiError(503, _relative(str(exc), root) + "; the repair sensor re-fetches unreadable partitions "
                           "(or run: lakehouse repair)") from None
        except UserInputError as exc:
            raise ApiError(400, str(exc)) from None
        except LakehouseError as exc:
            raise ApiError(503, _relative(str(exc), root)) from None

    # endpoints ---------------------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str):
        path = STATIC / name
        if name not in _STATIC_FILES:
            raise ApiError(404, f"no static file {_short(name)!r}")
        return FileResponse(path, headers={"Cache-Control": "public, max-age=3600"})

    @app.get("/v1/health", summary="Liveness: the lakehouse root is readable and the cache answers")
    def health():
        readable = os.access(root, os.R_OK)
        body = {"status": "ok" if readable else "down", "lakehouse_readable": readable, "cache": cache.name}
        if cache.name == "redis":
            body["redis"] = "ok" if cache.ping() else "unreachable (serving uncached)"
        return JSONResponse(body, status_code=200 if readable else 503, headers={"Cache-Control": "no-store"})

    @app.get("/v1/symbols", summary="Tracked symbols and the symbols the lakehouse holds data for")
    def symbols():
        entries = Registry(root).load()
        present = {sym: ex for ex, sym in storage.symbols(RAW_OHLCV)}
        out = []
        for symbol in sorted(set(entries) | set(present)):
            e = entries.get(symbol)
            out.append({"symbol": symbol, "path": encode_symbol(symbol), "exchange": e.exchange if e else present[symbol],
                        "tracked": e is not None, "start": e.start.isoformat() if e else None,
                        "listing": e.listing.isoformat() if e and e.listing else None})
        return JSONResponse(out, headers={"Cache-Control": LIVE_CACHE})

    @app.get("/v1/bars/{symbol}", summary="Clean bars of one symbol (1m and resamples), oldest first")
    def bars(request: Request, symbol: str = _path(), interval: str = _interval("1h"),
             start: str | None = _start(), end: str | None = _end(), limit: int | None = _limit(),
             format: str | None = _format()):
        iv = interval_of(interval, allow_all=False)
        return layer_response(request, CLEAN_BARS, symbol,
                              lambda s, ex, a, b: lh.read_bars(s, iv, a, b, exchange=ex, root=root),
                              ROWS_PER_DAY[iv], start, end, limit, format, iv)

    @app.get("/v1/indicators/{symbol}", summary="Indicators (SMA, EMA, RSI, MACD, Bollinger, ATR) of one symbol")
    def indicators(request: Request, symbol: str = _path(), interval: str = _interval("1h"),
                   start: str | None = _start(), end: str | None = _end(), limit: int | None = _limit(),
                   format: str | None = _format()):
        iv = interval_of(interval, allow_all=False)
        return layer_response(request, INDICATORS, symbol,
                              lambda s, ex, a, b: lh.read_indicators(s, iv, a, b, exchange=ex, root=root),
                              ROWS_PER_DAY[iv], start, end, limit, format, iv)

    rule_names = [r.name for r in RULES]

    @app.get("/v1/signals/{symbol}", summary="Signal firings of one symbol, with their reason")
    def signals(request: Request, symbol: str = _path(),
                interval: str | None = _interval(None, allow_all=True),
                rule: str | None = Query(None, description="One rule: " + ", ".join(rule_names)),
                start: str | None = _start(), end: str | None = _end(), limit: int | None = _limit(),
                format: str | None = _format()):
        iv = interval_of(interval, allow_all=True)
        if rule is not None and rule not in rule_names:
            raise ApiError(400, f"unknown rule {_short(rule)!r}; choose one of {', '.join(rule_names)}")
        return layer_response(request, SIGNALS, symbol,
                              lambda s, ex, a, b: lh.read_signals(s, a, b, interval=iv, rule=rule, exchange=ex, root=root),
                              None, start, end, limit, format, f"{iv}|{rule}")

    @app.get("/v1/scores", summary="The latest score per symbol")
    async def scores(request: Request, symbols: str | None = Query(None, description="Comma-separated, e.g. BTC-USDT,ETH-USDT"),
                     format: str | None = _format()):
        # The hottest read: answered on the event loop when this process holds it (one stat, no thread hop).
        fmt = fmt_of(request, format)
        names = None
        if symbols:
            try:
                names = [decode_symbol(s.strip()) for s in symbols.split(",") if s.strip()]
            except UserInputError:
                raise ApiError(400, f"invalid symbols {_short(symbols)!r}: comma-separated BASE-QUOTE, "
                               "e.g. BTC-USDT,ETH-USDT") from None
        path = storage.table_path(SCORES)
        try:
            st = path.stat()
            stats = [("scores", st.st_size, st.st_mtime_ns)]
        except FileNotFoundError:
            stats = []
        validators = Validators(f"scores|{','.join(names or [])}|{fmt}", stats)
        early = answer_from_memory(request, fmt, validators, LIVE_CACHE, shared=True, local_only=True)
        if early is not None:
            return early

        def produce():
            df = read(lambda: lh.read_scores(names, root=root))
            return formats.encode_chunks([df], fmt)

        return await run_in_threadpool(respond, request, fmt, validators, LIVE_CACHE, produce, stream=False, shared=True)

    @app.get("/v1/status", summary="Per-symbol coverage, gaps, freshness tier and last run (lakehouse status)")
    def status():
        return JSONResponse(status_service.status(), headers={"Cache-Control": "no-cache"})

    @app.get("/v1/coverage", summary="The coverage heatmap: one state per symbol and UTC day, for the page")
    def coverage(days: int = Query(365, ge=1, le=3660, description="Days ending today")):
        return JSONResponse(status_service.coverage(days), headers={"Cache-Control": "no-cache"})

    return app


_STATIC_FILES = {"index.html", "page.js", "page.css"}


def _path():
    return PathParam(..., description=SYMBOL_DOC, examples=["BTC-USDT"], max_length=64,
                     json_schema_extra={"pattern": "^[A-Za-z0-9]{1,20}-[A-Za-z0-9]{1,20}$"})


# The schema documents the allowed values (enum, date format, symbol pattern) without FastAPI enforcing them, so a
# wrong value gets this API's own message naming the choices, and schema-driven clients generate valid requests.
def _interval(default, allow_all=False):
    choices = [*INTERVAL_MINUTES, *(["all"] if allow_all else [])]
    return Query(default, description=" ".join(choices) + (" (default: all)" if allow_all else ""),
                 json_schema_extra={"enum": choices}, max_length=16)


def _start():
    return Query(None, description="First UTC day, YYYY-MM-DD (default: end)", examples=["2024-03-08"], max_length=32,
                 json_schema_extra={"format": "date"})


def _end():
    return Query(None, description="Last UTC day, YYYY-MM-DD, included (default: today)", examples=["2024-03-10"],
                 max_length=32, json_schema_extra={"format": "date"})


def _limit():
    return Query(None, ge=1, description="Most rows to return; more is an error (default and maximum: "
                 "LAKEHOUSE_API_MAX_ROWS)")


def _format():
    return Query(None, description=FORMAT_DOC, examples=["json"], max_length=16,
                 json_schema_extra={"enum": list(formats.MEDIA_TYPES)})


def _guard(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """Once streaming has begun the status line is sent; a failure can only cut the body short (and is logged)."""
    try:
        yield from chunks
    except ApiError as exc:
        log.warning("stream cut short: %s", exc.message)
    except Exception:
        log.exception("stream cut short")


def _relative(message: str, root: str) -> str:
    """Error text without the server's absolute paths."""
    return message.replace(root + os.sep, "").replace(root, "<lakehouse>")
