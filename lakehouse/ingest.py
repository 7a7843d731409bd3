"""Fetch 1m candles for whole UTC days, verify them against what was asked, and store one file per day.

A range of days is fetched in one pass (pages of up to 1000 candles run across day boundaries) and each day
is written as soon as the stream has moved past it, so memory stays flat and an interrupted range keeps the
days it finished.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import datetime as dt
import time
from typing import Callable, Iterable, Iterator

import numpy as np
import polars as pl

from . import progress
from .errors import IncompleteFetchError
from .exchange.base import Exchange
from .schema import RAW_OHLCV, TS
from .storage import Storage
from .timeutil import DAY_MS, MINUTE_MS, day_start_ms, ms_to_iso

_ARCHIVE_WRITERS = 2  # archive days written in parallel (see _from_archive)


@dataclasses.dataclass
class DayResult:
    symbol: str
    day: dt.date
    candles: int
    expected: int
    first_ms: int | None
    last_ms: int | None
    gaps: list[tuple[int, int]]  # [start_ms, end_ms) windows without a candle
    skipped: bool = False
    source: str = "rest"  # "archive", "archive+rest" (archive gaps REST had candles for) or "rest"
    archive_fallback: str | None = None  # why a day the archive should have had came from REST

    @property
    def missing_minutes(self) -> int:
        return max(0, self.expected - self.candles)

    def metadata(self) -> dict:
        return {
            "candles": self.candles,
            "expected": self.expected,
            "missing_minutes": self.missing_minutes,
            "coverage_pct": round(100.0 * self.candles / self.expected, 3) if self.expected else 100.0,
            "gaps": len(self.gaps),
            "first_candle": ms_to_iso(self.first_ms),
            "last_candle": ms_to_iso(self.last_ms),
            "source": self.source,
            **({"archive_fallback": self.archive_fallback} if self.archive_fallback else {}),
        }


@dataclasses.dataclass
class IngestReport:
    exchange: str
    symbol: str
    days: list[DayResult]
    requests: int
    rate_limited: int
    banned: int
    retries: int
    duration_s: float
    archive_requests: int = 0

    @property
    def candles(self) -> int:
        return sum(d.candles for d in self.days)

    @property
    def expected(self) -> int:
        return sum(d.expected for d in self.days)

    @classmethod
    def combine(cls, reports: list["IngestReport"]) -> "IngestReport":
        return cls(
            exchange=",".join(sorted({r.exchange for r in reports})),
            symbol=",".join(r.symbol for r in reports),
            days=[d for r in reports for d in r.days],
            requests=sum(r.requests for r in reports),
            rate_limited=sum(r.rate_limited for r in reports),
            banned=sum(r.banned for r in reports),
            retries=sum(r.retries for r in reports),
            duration_s=sum(r.duration_s for r in reports),
            archive_requests=sum(r.archive_requests for r in reports),
        )

    def metadata(self) -> dict:
        firsts = [d.first_ms for d in self.days if d.first_ms is not None]
        lasts = [d.last_ms for d in self.days if d.last_ms is not None]
        return {
            "candles": self.candles,
            "expected": self.expected,
            "missing_minutes": self.expected - self.candles,
            "coverage_pct": round(100.0 * self.candles / self.expected, 3) if self.expected else 100.0,
            "gaps": sum(len(d.gaps) for d in self.days),
            "first_candle": ms_to_iso(min(firsts)) if firsts else None,
            "last_candle": ms_to_iso(max(lasts)) if lasts else None,
            "days": len(self.days),
            "first_day": str(self.days[0].day) if self.days else None,
            "last_day": str(self.days[-1].day) if self.days else None,
            "requests": self.requests,
            "rate_limited_429": self.rate_limited,
            "banned_418": self.banned,
            "retries": self.retries,
            "duration_s": round(self.duration_s, 3),
            **_source_metadata(self.days, self.archive_requests),
        }


def contiguous_ranges(days: Iterable[dt.date]) -> list[tuple[dt.date, dt.date]]:
    """[d1, d2, d3, d7] -> [(d1, d3), (d7, d7)]: the runs of consecutive days, each fetched in one pass."""
    ranges: list[tuple[dt.date, dt.date]] = []
    for d in sorted(set(days)):
        if ranges and d == ranges[-1][1] + dt.timedelta(days=1):
            ranges[-1] = (ranges[-1][0], d)
        else:
            ranges.append((d, d))
    return ranges


def iter_pages(exchange: Exchange, symbol: str, start_ms: int, end_ms: int) -> Iterator[list]:
    """Pages of closed candles in [start_ms, end_ms), each verified before it is yielded."""
    since = start_ms
    while since < end_ms:
        page = exchange.fetch_page(symbol, since, end_ms - 1, exchange.page_limit)
        if not page:
            return  # a well-formed empty answer: the exchange has nothing left in the window
        prev = since - MINUTE_MS
        for candle in page:
            ts = int(candle[0])
            if ts % MINUTE_MS or ts < since or ts >= end_ms or ts <= prev:
                raise IncompleteFetchError(
                    f"{exchange.id} {symbol}: candle at {ms_to_iso(ts)} is outside the requested window "
                    f"[{ms_to_iso(since)}, {ms_to_iso(end_ms)}) or out of order; nothing was written"
                )
            if len(candle) < 6:
                raise IncompleteFetchError(f"{exchange.id} {symbol}: candle {candle!r} lacks OHLCV fields")
            prev = ts
        yield page
        since = prev + MINUTE_MS


def _gaps(ts: np.ndarray, start_ms: int, end_ms: int) -> list[tuple[int, int]]:
    """Windows inside [start_ms, end_ms) with no candle."""
    if end_ms <= start_ms:
        return []
    if ts.size == 0:
        return [(start_ms, end_ms)]
    bounds = np.concatenate([[start_ms - MINUTE_MS], ts, [end_ms]])
    jumps = np.nonzero(np.diff(bounds) > MINUTE_MS)[0]
    return [(int(bounds[i] + MINUTE_MS), int(bounds[i + 1])) for i in jumps]


def _frame(rows: list[list], exchange_id: str, symbol: str, fetched_at_ms: int) -> pl.DataFrame:
    arr = rows[:, :6] if isinstance(rows, np.ndarray) else np.asarray([r[:6] for r in rows], dtype=np.float64).reshape(-1, 6)
    return pl.DataFrame(
        {
            "timestamp": pl.Series(arr[:, 0].astype(np.int64)).cast(pl.Datetime("ms")).dt.replace_time_zone("UTC"),
            "open": arr[:, 1],
            "high": arr[:, 2],
            "low": arr[:, 3],
            "close": arr[:, 4],
            "volume": arr[:, 5],
            "exchange": [exchange_id] * len(arr),
            "symbol": [symbol] * len(arr),
            "fetched_at": pl.Series([fetched_at_ms] * len(arr), dtype=pl.Int64).cast(TS),
        },
        schema_overrides={"timestamp": TS},
    )


def ingest_days(
    exchange: Exchange,
    storage: Storage,
    symbol: str,
    days: Iterable[dt.date],
    keep: Callable[[dt.date], bool] | None = None,
) -> IngestReport:
    """Fetch and store raw 1m candles for each day; `keep(day)` True means that day's file is kept as is
    (used to resume an interrupted range run without fetching again what it already wrote)."""
    symbol = exchange.check_symbol(symbol)
    started = time.monotonic()
    before = dataclasses.replace(exchange.stats)
    listing = exchange.listing_ms(symbol)
    now = exchange.now_ms()
    closed_end = (now // MINUTE_MS) * MINUTE_MS  # the forming candle starts here and is never stored
    results: list[DayResult] = []
    todo = sorted(set(days))
    rest_days = [d for d in todo if not (keep and keep(d))]
    fallbacks: dict[dt.date, str] = {}  # closed days the archive could not give, and why
    archive_requests = 0
    if exchange.archive is not None:  # closed days come from the bulk archive first; REST gets the rest
        results, fallbacks, archive_requests = _from_archive(exchange, storage, symbol, rest_days, listing, closed_end, now)
        rest_days = [d for d in rest_days if d not in {r.day for r in results}]
    for first, last in contiguous_ranges(rest_days):
        start_ms = day_start_ms(first)
        if listing is not None:
            start_ms = max(start_ms, listing)
        end_ms = min(day_start_ms(last) + DAY_MS, closed_end)
        buffers: dict[dt.date, list[list]] = {}
        pending = list(_days_between(first, last))

        def flush(until_day: dt.date | None) -> None:
            while pending and (until_day is None or pending[0] < until_day):
                day = pending.pop(0)
                results.append(_store_day(storage, exchange, symbol, day, buffers.pop(day, []), listing, closed_end, now))

        for page in iter_pages(exchange, symbol, start_ms, end_ms) if start_ms < end_ms else ():
            for candle in page:
                day = dt.datetime.fromtimestamp(candle[0] / 1000, tz=dt.timezone.utc).date()
                buffers.setdefault(day, []).append(candle)
            flush(dt.datetime.fromtimestamp(page[-1][0] / 1000, tz=dt.timezone.utc).date())
        flush(None)
    for d in todo:
        if keep and keep(d):
            results.append(DayResult(symbol, d, 0, 0, None, None, [], skipped=True))
    results.sort(key=lambda r: r.day)
    for r in results:
        r.archive_fallback = fallbacks.get(r.day)
    s = exchange.stats
    return IngestReport(
        exchange=exchange.id,
        symbol=symbol,
        days=results,
        requests=s.requests - before.requests,
        rate_limited=s.rate_limited - before.rate_limited,
        banned=s.banned - before.banned,
        retries=s.retries - before.retries,
        duration_s=time.monotonic() - started,
        archive_requests=archive_requests,
    )


def _days_between(first: dt.date, last: dt.date) -> Iterator[dt.date]:
    d = first
    while d <= last:
        yield d
        d += dt.timedelta(days=1)


def _store_day(storage, exchange, symbol, day, rows, listing, closed_end, now) -> DayResult:
    start = day_start_ms(day)
    window_start = max(start, listing) if listing is not None else start
    window_end = min(start + DAY_MS, closed_end)
    expected = max(0, (window_end - window_start) // MINUTE_MS)
    ts = rows[:, 0].astype(np.int64) if isinstance(rows, np.ndarray) else np.asarray([int(r[0]) for r in rows], dtype=np.int64)
    if ts.size > expected:
        raise IncompleteFetchError(f"{symbol} {day}: {ts.size} candles for {expected} minutes; nothing was written")
    storage.write_partition(RAW_OHLCV, exchange.id, symbol, day, _frame(rows, exchange.id, symbol, now))
    result = DayResult(
        symbol, day, int(ts.size), int(expected),
        int(ts[0]) if ts.size else None, int(ts[-1]) if ts.size else None,
        _gaps(ts, window_start, window_end) if expected else [],
    )
    progress.emit(progress.ProgressEvent("partition_done", RAW_OHLCV, symbol, day.isoformat(), result.candles))
    return result


def _from_archive(exchange, storage, symbol, days, listing, closed_end, now) -> tuple[list[DayResult], dict, int]:
    """Store the closed days the exchange's bulk archive has, through the same checks as REST days.

    A day the archive has with missing minutes is asked of REST for exactly those minutes: what REST has is
    added, and a gap both agree on stays a gap (the audit then confirms it like any source gap). Returns the
    stored days, the reason for each day left to REST that the archive should have had, and the number of
    archive requests made.
    """
    results, fallbacks, pending = [], {}, collections.deque()
    requests_before = exchange.archive.stats.requests

    def collect(item) -> None:
        source, future = item
        result = future.result()
        result.source = source
        results.append(result)

    # Days arrive far faster than REST pages, so writing them is what remains: a few writers overlap the
    # fsyncs, and a short queue keeps memory bounded.
    with concurrent.futures.ThreadPoolExecutor(_ARCHIVE_WRITERS, thread_name_prefix="store") as writers, \
            contextlib.closing(exchange.archive.days(symbol, days, listing_ms=listing, closed_end_ms=closed_end)) as got_days:
        for got in got_days:
            if got.rows is None:
                if got.reason:
                    fallbacks[got.day] = got.reason
                continue
            rows, source = _with_rest_gaps(exchange, symbol, got.day, got.rows, listing)
            pending.append((source, writers.submit(_store_day, storage, exchange, symbol, got.day, rows, listing,
                                                   closed_end, now)))
            while len(pending) > 4 * _ARCHIVE_WRITERS:
                collect(pending.popleft())
        while pending:
            collect(pending.popleft())
    return results, fallbacks, exchange.archive.stats.requests - requests_before


def _with_rest_gaps(exchange, symbol, day, rows, listing) -> tuple[np.ndarray, str]:
    """An archive day plus the candles REST has in the minutes the file lacks, and the day's source."""
    start = day_start_ms(day)
    window_start = max(start, listing) if listing is not None else start
    ts = rows[:, 0].astype(np.int64)
    gaps = _gaps(ts, window_start, start + DAY_MS)
    if not gaps:
        return rows, "archive"
    # A few gaps are asked for exactly; for many, one pass over the day takes fewer requests.
    windows = gaps if len(gaps) <= 2 else [(window_start, start + DAY_MS)]
    extra = np.asarray([c[:6] for s, e in windows for page in iter_pages(exchange, symbol, s, e) for c in page],
                       dtype=np.float64).reshape(-1, 6)
    extra = extra[~np.isin(extra[:, 0].astype(np.int64), ts)]
    if not len(extra):
        return rows, "archive"
    rows = np.vstack([rows, extra])
    return rows[np.argsort(rows[:, 0], kind="stable")], "archive+rest"


def _source_metadata(days: list[DayResult], archive_requests: int) -> dict:
    """Where a run's days came from: counts per source and the days the archive could not give."""
    counts: dict[str, int] = {}
    for d in days:
        if not d.skipped:
            counts[d.source] = counts.get(d.source, 0) + 1
    fallbacks = [f"{d.day}: {d.archive_fallback}" for d in days if d.archive_fallback]
    out: dict = {"sources": counts, "archive_requests": archive_requests}
    if fallbacks:
        out["archive_fallbacks"] = len(fallbacks)
        out["archive_fallback_days"] = fallbacks[:20] + ([f"... and {len(fallbacks) - 20} more"] if len(fallbacks) > 20 else [])
    return out
