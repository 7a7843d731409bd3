"""Fetch 1m candles for whole UTC days, keep them as the exchange sent them, and store one file per day.

- Resume: a closed day whose stored file is valid and complete (every minute of its window, or gaps already
  confirmed at the source) is not asked for again unless `refetch`; a file holding an unbroken run of
  candles from the day's start (today, or a day cut short) gets only the minutes after it.
- The rest is planned per day, grouped into contiguous streams and cut into windows of `page_limit - 1`
  minutes. Windows are fetched by a bounded pool (`Exchange.concurrency`; the live client's weight governor
  keeps every request inside the exchange's budget), consumed in order, and each day is written as soon as
  the stream has passed it, so memory stays flat and an interrupted range keeps the days it finished.
- Rows are stored as sent: duplicates, misaligned open times and impossible values included (clean_bars
  rejects them with a reason). Only rows outside the window asked for fail the fetch.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import datetime as dt
import itertools
import threading
import time
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import polars as pl
import pyarrow.parquet  # noqa: F401 - storage's Parquet writer, loaded with the module that writes most files
# (30-70 ms) rather than when a load's first day files are ready; commands that only read never import it.

from . import progress
from .errors import IncompleteFetchError, LakehouseError
from .exchange.base import Exchange
from .memory import keep_freed_buffers
from .schema import RAW_OHLCV, RAW_SCHEMA, TS
from .storage import Storage
from .timeutil import DAY_MS, MINUTE_MS, day_start_ms, ms_to_iso

if TYPE_CHECKING:
    from .exchange.archive import ArchiveDay

_GAP_DAYS_AT_ONCE = 4  # archive days with gaps being completed from REST at once


@dataclasses.dataclass
class DayResult:
    symbol: str
    day: dt.date
    candles: int
    expected: int
    first_ms: int | None
    last_ms: int | None
    gaps: list[tuple[int, int]]  # [start_ms, end_ms) windows without a candle
    skipped: bool = False  # kept as stored, not fetched again
    present: int | None = None  # whole minutes with a candle (rows may hold duplicates and misaligned ones)
    source: str = "rest"  # "archive", "archive+rest" (archive gaps REST had candles for) or "rest"
    archive_fallback: str | None = None  # why a day the archive should have had came from REST

    @property
    def missing_minutes(self) -> int:
        return max(0, self.expected - (self.candles if self.present is None else self.present))

    def metadata(self) -> dict:
        return {
            "candles": self.candles,
            "expected": self.expected,
            "missing_minutes": self.missing_minutes,
            "coverage_pct": round(100.0 * (self.expected - self.missing_minutes) / self.expected, 3)
            if self.expected else 100.0,
            "gaps": len(self.gaps),
            "first_candle": ms_to_iso(self.first_ms),
            "last_candle": ms_to_iso(self.last_ms),
            "source": "stored" if self.skipped else self.source,
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

    @property
    def missing_minutes(self) -> int:
        return sum(d.missing_minutes for d in self.days)

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
            "missing_minutes": self.missing_minutes,
            "coverage_pct": round(100.0 * (self.expected - self.missing_minutes) / self.expected, 3)
            if self.expected else 100.0,
            "gaps": sum(len(d.gaps) for d in self.days),
            "first_candle": ms_to_iso(min(firsts)) if firsts else None,
            "last_candle": ms_to_iso(max(lasts)) if lasts else None,
            "days": len(self.days),
            "days_kept": sum(1 for d in self.days if d.skipped),
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


def fetch_window(exchange: Exchange, symbol: str, lo: int, hi: int, stop: threading.Event | None = None) -> np.ndarray:
    """Every row the exchange sends for open times in [lo, hi), in the order sent, paging as needed.

    A full page may stop in the middle of a timestamp's rows (a duplicated candle split across two pages), so
    the next page starts *at* the page's last open time and that timestamp's rows are taken from it alone.
    """
    limit = exchange.page_limit
    parts: list[np.ndarray] = []
    since = lo
    while since < hi:
        if stop is not None and stop.is_set():
            raise IncompleteFetchError(f"{exchange.id} {symbol}: fetch stopped; nothing more was written")
        page = np.asarray(exchange.fetch_page(symbol, since, hi - 1, limit), dtype=np.float64).reshape(-1, 6)
        if not len(page):
            break  # a well-formed empty answer: the exchange has nothing left in the window
        ts = page[:, 0]
        bad = (ts < since) | (ts >= hi)
        if bad.any():
            raise IncompleteFetchError(
                f"{exchange.id} {symbol}: candle at {ms_to_iso(int(ts[bad][0]))} is outside the requested window "
                f"[{ms_to_iso(since)}, {ms_to_iso(hi)}); nothing was written"
            )
        last = int(ts.max())
        if len(page) >= limit and last > since and (ts != last).any():
            parts.append(page[ts < last])
            since = last
        else:
            parts.append(page)
            since = (last // MINUTE_MS + 1) * MINUTE_MS
    if not parts:
        return np.empty((0, 6))
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _chunks(start_ms: int, end_ms: int, minutes: int) -> Iterator[tuple[int, int]]:
    span = minutes * MINUTE_MS
    lo = start_ms
    while lo < end_ms:
        yield lo, min(end_ms, lo + span)
        lo += span


def iter_windows(exchange: Exchange, symbol: str, windows: list[tuple[int, int]],
                 workers: int | None = None) -> Iterator[tuple[int, int, np.ndarray]]:
    """(lo, hi, rows) for each window in order; up to `workers` windows are fetched at once (a bounded pool,
    so latency overlaps while the exchange client keeps the weight budget), and at most twice that many wait
    to be consumed, so memory stays flat over long ranges."""
    workers = max(1, workers or exchange.concurrency)
    if workers == 1 or len(windows) == 1:
        for lo, hi in windows:
            yield lo, hi, fetch_window(exchange, symbol, lo, hi)
        return
    pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix=f"fetch-{exchange.id}")
    stop = threading.Event()
    pending: collections.deque = collections.deque()
    todo = iter(windows)
    finished = False
    try:
        for lo, hi in itertools.islice(todo, 2 * workers):
            pending.append((lo, hi, pool.submit(fetch_window, exchange, symbol, lo, hi, stop)))
        while pending:
            lo, hi, future = pending.popleft()
            rows = future.result()
            nxt = next(todo, None)
            if nxt is not None:
                pending.append((*nxt, pool.submit(fetch_window, exchange, symbol, *nxt, stop)))
            yield lo, hi, rows
        finished = True
    finally:
        # On failure or interruption the other windows stop at their next page instead of running on.
        stop.set()
        pool.shutdown(wait=finished, cancel_futures=True)


def _gaps(ts: np.ndarray, start_ms: int, end_ms: int) -> list[tuple[int, int]]:
    """Windows inside [start_ms, end_ms) with no candle; `ts` are sorted unique whole minutes."""
    if end_ms <= start_ms:
        return []
    if ts.size == 0:
        return [(start_ms, end_ms)]
    if ts.size == (end_ms - start_ms) // MINUTE_MS and ts[0] == start_ms and ts[-1] == end_ms - MINUTE_MS:
        return []  # as many minutes as the window has, from its first to its last: every one
    bounds = np.concatenate([[start_ms - MINUTE_MS], ts, [end_ms]])
    jumps = np.nonzero(np.diff(bounds) > MINUTE_MS)[0]
    return [(int(bounds[i] + MINUTE_MS), int(bounds[i + 1])) for i in jumps]


def _frame(rows: np.ndarray, exchange_id: str, symbol: str, fetched_at_ms: int) -> pl.DataFrame:
    # Columns laid out one after another first: polars takes contiguous columns three times faster than the
    # strided columns of (n, 6) rows.
    cols = np.ascontiguousarray(np.asarray(rows, dtype=np.float64).reshape(-1, 6).T)
    columns = {"timestamp": cols[0].astype(np.int64)}
    columns.update((name, cols[i]) for i, name in enumerate(("open", "high", "low", "close", "volume"), start=1))
    # One select with literals: a third of the cost of building each constant column separately.
    return pl.DataFrame(columns).select(
        pl.col("timestamp").cast(TS), "open", "high", "low", "close", "volume",
        pl.lit(exchange_id, pl.String).alias("exchange"), pl.lit(symbol, pl.String).alias("symbol"),
        pl.lit(fetched_at_ms, pl.Int64).cast(TS).alias("fetched_at"),
    )


@dataclasses.dataclass
class _DayPlan:
    day: dt.date
    start_ms: int  # first open time to fetch: the day's window start, or just after the stored candles kept
    end_ms: int  # the day's window end (exclusive): midnight, or the forming candle today
    kept: pl.DataFrame | None = None  # stored rows kept as they are (a tail fetch appends to them)


class _Listing:
    """The symbol's listing time, asked of the exchange only when a day's window depends on it."""

    def __init__(self, exchange: Exchange, symbol: str):
        self.exchange, self.symbol, self._value, self._asked = exchange, symbol, None, False

    def __call__(self) -> int | None:
        if not self._asked:
            self._value, self._asked = self.exchange.listing_ms(self.symbol), True
        return self._value

    def window_start(self, day_start: int) -> int:
        listing = self()
        return max(day_start, listing) if listing is not None else day_start


def ingest_days(
    exchange: Exchange,
    storage: Storage,
    symbol: str,
    days: Iterable[dt.date],
    keep: Callable[[dt.date], bool] | None = None,
    *,
    refetch: bool = False,
    workers: int | None = None,
) -> IngestReport:
    """Fetch and store raw 1m candles for each day.

    A closed day whose stored file is valid and complete (every minute of its window, or gaps already
    confirmed at the source) is kept without asking the exchange, unless `refetch`; a day whose file holds
    an unbroken run of candles from its start gets only the minutes after them. `keep(day)` True keeps that
    day's file as is regardless (an interrupted run resuming what it already wrote).
    """
    symbol = exchange.check_symbol(symbol)
    started = time.monotonic()
    before = dataclasses.replace(exchange.stats)
    now = exchange.now_ms()
    closed_end = (now // MINUTE_MS) * MINUTE_MS  # the forming candle starts here and is never stored
    listing = _Listing(exchange, symbol)
    results: list[DayResult] = []
    todo = sorted(set(days))
    forced = {d for d in todo if keep and keep(d)}
    stored = {} if refetch else _stored_summaries(storage, exchange.id, symbol, todo)
    confirmed = _confirmed_gaps(storage, exchange.id, symbol) if stored else {}
    plans: list[_DayPlan] = []
    for day in todo:
        ws = day_start_ms(day)
        we = min(ws + DAY_MS, closed_end)
        entry = stored.get(day)
        if day in forced:
            results.append(_kept_result(symbol, day, entry, ws, we, listing))
            continue
        plan = _plan_day(storage, exchange.id, symbol, day, ws, we, entry, confirmed, listing)
        if plan is None:
            results.append(_kept_result(symbol, day, entry, ws, we, listing))
        else:
            plans.append(plan)
    fallbacks: dict[dt.date, str] = {}  # closed days the archive could not give, and why
    archive_requests = 0
    whole = [p for p in plans if p.kept is None and p.start_ms == day_start_ms(p.day) and p.end_ms - p.start_ms == DAY_MS]
    if exchange.archive is not None and whole:  # whole closed days come from the bulk archive first; REST gets the rest
        got, fallbacks, archive_requests = _from_archive(exchange, storage, symbol, [p.day for p in whole], listing,
                                                         closed_end, now)
        results.extend(got)
        done = {r.day for r in got}
        plans = [p for p in plans if p.day not in done]
    for group in _contiguous(plans):
        # No listing clamp here: asking for it costs a request, and the exchange sends nothing before it anyway.
        start_ms = group[0].start_ms
        end_ms = group[-1].end_ms
        buffers: dict[dt.date, list[np.ndarray]] = {}
        pending = list(group)

        def flush(until_ms: int | None) -> None:
            while pending and (until_ms is None or pending[0].end_ms <= until_ms):
                plan = pending.pop(0)
                rows = buffers.pop(plan.day, [])
                results.append(_store_day(storage, exchange, symbol, plan, rows, listing, closed_end, now))

        windows = list(_chunks(start_ms, end_ms, exchange.page_limit - 1)) if start_ms < end_ms else []
        for lo, hi, rows in iter_windows(exchange, symbol, windows, workers):
            if len(rows):
                day_index = rows[:, 0].astype(np.int64) // DAY_MS
                for index in np.unique(day_index):
                    day = dt.date(1970, 1, 1) + dt.timedelta(days=int(index))
                    buffers.setdefault(day, []).append(rows[day_index == index])
            flush(hi)
        flush(None)
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


def ingest_symbols(clients: Sequence[Exchange], storage: Storage, plan: Mapping[str, Sequence[dt.date]],
                   keep: Callable[[str, dt.date], bool] | None = None, *, refetch: bool = False,
                   done: list[IngestReport] | None = None) -> list[IngestReport]:
    """ingest_days for each symbol of `plan`, as many side by side as there are `clients` (one client a symbol at
    a time, so each report's request counts are its own). Clients of one exchange share its weight budget and
    its bound of requests in flight, so this overlaps symbols without sending more at once: one symbol's first
    pages go out while another's last are still answered, and a daily update of many symbols costs a few round
    trips rather than one per symbol. Reports come in the plan's order; the first failure stops symbols not yet
    started and is raised once the others end. `done`, if given, gets each symbol's report as it ends, so the
    caller still has the symbols that finished when another one fails.
    """
    symbols = list(plan)
    done = [] if done is None else done
    todo = collections.deque(symbols)
    lock = threading.Lock()
    reports: dict[str, IngestReport] = {}
    errors: list[BaseException] = []

    def work(client: Exchange) -> None:
        while True:
            with lock:
                if errors or not todo:
                    return
                symbol = todo.popleft()
            try:
                reports[symbol] = report = ingest_days(client, storage, symbol, plan[symbol],
                                                       (lambda d, s=symbol: keep(s, d)) if keep else None,
                                                       refetch=refetch)
                with lock:
                    done.append(report)
            except BaseException as exc:  # noqa: BLE001  (re-raised below, in the caller's thread)
                with lock:
                    errors.append(exc)
                return

    threads = [threading.Thread(target=work, args=(c,), name=f"ingest-{i}", daemon=True)
               for i, c in enumerate(clients[:len(symbols)])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return [reports[s] for s in symbols]


def _contiguous(plans: list[_DayPlan]) -> Iterator[list[_DayPlan]]:
    """Plans whose windows abut are fetched as one stream (pages run across day boundaries)."""
    group: list[_DayPlan] = []
    for plan in plans:
        if group and (plan.start_ms != group[-1].end_ms or plan.kept is not None):
            yield group
            group = []
        group.append(plan)
    if group:
        yield group


def _stored_summaries(storage: Storage, exchange_id: str, symbol: str, days: list[dt.date]) -> dict[dt.date, list]:
    """Manifest summaries (cached by file stat, see lakehouse.manifest) of the stored files among `days`."""
    if not days:
        return {}
    from .manifest import Manifest

    stats = storage.stat_days(RAW_OHLCV, exchange_id, symbol)
    wanted = {d.isoformat(): stats[d.isoformat()] for d in days if d.isoformat() in stats}
    if not wanted:
        return {}
    summaries = Manifest(storage).refresh(RAW_OHLCV, exchange_id, symbol, wanted, persist=False)
    blocked = _blocked_days(storage, exchange_id, symbol)
    return {dt.date.fromisoformat(iso): e for iso, e in summaries.items() if iso not in blocked}


def _blocked_days(storage: Storage, exchange_id: str, symbol: str) -> set[str]:
    from .gates import Gates

    try:
        return {d.isoformat() for d in Gates(storage).blocked_days(RAW_OHLCV, exchange_id, symbol)}
    except LakehouseError:
        return set()


def _confirmed_gaps(storage: Storage, exchange_id: str, symbol: str) -> dict[str, str]:
    """Day -> fingerprint of the gaps confirmed at the source (the repair audit's ledger)."""
    from .audit import Ledger, ledger_key

    prefix = ledger_key(RAW_OHLCV, exchange_id, symbol, "")
    return {k[len(prefix):]: v.get("fp") for k, v in Ledger(storage).confirmed.items() if k.startswith(prefix)}


def _plan_day(storage, exchange_id, symbol, day, ws, we, entry, confirmed, listing) -> _DayPlan | None:
    """None when the stored file already holds the day; else what to fetch for it."""
    if entry is None:
        return _DayPlan(day, ws, we)
    from .audit import gap_detail, raw_day_gaps
    from .manifest import ERROR, FIRST, GAPS, LAST

    if entry[ERROR] or entry[FIRST] is None or we <= ws:
        return _DayPlan(day, ws, we)
    closed = we == ws + DAY_MS
    wstart = ws if entry[FIRST] <= ws else listing.window_start(ws)
    gaps = raw_day_gaps(entry, wstart, we, closed)
    if closed and (not gaps or confirmed.get(day.isoformat()) == gap_detail(gaps)):
        return None  # closed days are immutable at the source: nothing new to learn
    if entry[FIRST] <= wstart and not entry[GAPS]:
        tail = (entry[LAST] // MINUTE_MS + 1) * MINUTE_MS
        if tail >= we:
            return None  # today, already up to its newest closed candle
        kept = storage.read_partition(RAW_OHLCV, exchange_id, symbol, day)
        if kept is not None and kept.height:
            # Right after the newest row kept, misaligned ones included, so no row is asked for twice.
            since = max(tail, int(kept.get_column("timestamp").dt.epoch("ms").max()) + 1)
            return None if since >= we else _DayPlan(day, since, we, kept.select(list(RAW_SCHEMA)))
    return _DayPlan(day, ws, we)


def _kept_result(symbol, day, entry, ws, we, listing) -> DayResult:
    """The figures of a day kept as stored, from its manifest summary when there is one."""
    from .audit import raw_day_gaps
    from .manifest import FIRST, LAST, ROWS

    if entry is None or entry[FIRST] is None:
        return DayResult(symbol, day, 0, 0, None, None, [], skipped=True)
    wstart = ws if entry[FIRST] <= ws else listing.window_start(ws)
    expected = max(0, (we - wstart) // MINUTE_MS)
    gaps = [tuple(g) for g in raw_day_gaps(entry, wstart, we, we == ws + DAY_MS)]
    present = expected - sum((e - s) // MINUTE_MS for s, e in gaps)
    return DayResult(symbol, day, int(entry[ROWS]), int(expected), entry[FIRST], entry[LAST], gaps,
                     skipped=True, present=int(present))


def _store_day(storage, exchange, symbol, plan: _DayPlan, parts, listing: _Listing, closed_end, now) -> DayResult:
    day = plan.day
    rows = np.concatenate(parts) if parts else np.empty((0, 6))
    frame = _frame(rows, exchange.id, symbol, now)
    if plan.kept is not None:
        frame = pl.concat([plan.kept, frame], how="vertical_relaxed")
    ts = frame.get_column("timestamp").dt.epoch("ms").to_numpy() if frame.height else np.empty(0, np.int64)
    return _store_frame(storage, exchange.id, symbol, day, frame, ts, listing, closed_end)


def _store_frame(storage, exchange_id, symbol, day, frame: pl.DataFrame, ts: np.ndarray, listing: _Listing,
                 closed_end, source: str = "rest") -> DayResult:
    """Write one day's rows (`ts`: their open times in ms) and measure them against the day's window."""
    storage.write_partition(RAW_OHLCV, exchange_id, symbol, day, frame)
    return _stored(symbol, day, frame.height, ts, listing, closed_end, source)


def _stored(symbol, day, candles: int, ts: np.ndarray, listing: _Listing, closed_end, source: str) -> DayResult:
    """A day just written (`ts`: its rows' open times in ms) measured against its window, and reported done."""
    start = day_start_ms(day)
    # Rows as the exchange sends them are almost always a run of consecutive minutes: no remainders, no sort.
    step = np.diff(ts)
    if ts.size and ts[0] % MINUTE_MS == 0 and (step == MINUTE_MS).all():
        minutes = ts
    else:
        on_minute = ts % MINUTE_MS == 0
        minutes = ts if on_minute.all() and (step > 0).all() else np.unique(ts[on_minute])
    window_end = min(start + DAY_MS, closed_end)
    window_start = start if (minutes.size and minutes[0] == start) else listing.window_start(start)
    expected = max(0, (window_end - window_start) // MINUTE_MS)
    result = DayResult(
        symbol, day, int(candles), int(expected),
        int(minutes[0]) if minutes.size else None, int(minutes[-1]) if minutes.size else None,
        _gaps(minutes, window_start, window_end) if expected else [],
        present=int(minutes.size),
        source=source,
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
    keep_freed_buffers()
    requests_before = exchange.archive.stats.requests
    market = exchange.markets().get(symbol)
    market_id = market.id if market is not None and market.id else None
    progress.emit(progress.ProgressEvent("waiting", RAW_OHLCV, symbol,
                                         detail=f"{symbol}: downloading {days[0]}..{days[-1]} from the archive"))
    # Days arrive far faster than REST pages, so storing them is what remains: each file's complete days are
    # stored by the thread that verified it, as one frame cut into day files as it is encoded (a frame per day
    # cost as much as the encoding itself), their files written together (one sync to disk for all of them);
    # handing days between threads cost more CPU than it saved. A day with gaps is completed from REST on a
    # thread of its own, so its requests do not hold up the files.

    def store(got: list[ArchiveDay]) -> tuple[list[DayResult], list[concurrent.futures.Future], dict]:
        complete, with_gaps, failed = [], [], {}
        for d in got:
            if d.rows is None:
                if d.reason:
                    failed[d.day] = d.reason
                continue
            start = day_start_ms(d.day)
            if _gaps(d.rows[:, 0].astype(np.int64), listing.window_start(start), start + DAY_MS):
                with_gaps.append(gap_fillers.submit(_store_with_rest_gaps, exchange, storage, symbol, d.day, d.rows,
                                                    listing, closed_end, now))
            else:
                complete.append(d)
        return _store_archive_days(exchange, storage, symbol, complete, listing, closed_end, now), with_gaps, failed

    results, fallbacks, filling = [], {}, []
    with concurrent.futures.ThreadPoolExecutor(_GAP_DAYS_AT_ONCE, thread_name_prefix="gaps") as gap_fillers, \
            contextlib.closing(exchange.archive.days(symbol, days, listing_ms=listing(), closed_end_ms=closed_end,
                                                     market_id=market_id, store=store)) as stored:
        for done, with_gaps, failed in stored:
            results.extend(done)
            filling.extend(with_gaps)
            fallbacks.update(failed)
        results.extend(f.result() for f in filling)
    return results, fallbacks, exchange.archive.stats.requests - requests_before


def _store_archive_days(exchange, storage, symbol, got: list[ArchiveDay], listing, closed_end, now) -> list[DayResult]:
    """Write complete archive days: one frame for all of them, encoded into a file per day, written together."""
    if not got:
        return []
    rows = np.concatenate([d.rows.T for d in got], axis=1).T  # each column contiguous, as the file's rows were
    frame, ts = _frame(rows, exchange.id, symbol, now), rows[:, 0].astype(np.int64)
    lengths = [len(d.rows) for d in got]
    offsets = np.cumsum([0] + lengths)
    storage.write_encoded_many(RAW_OHLCV, exchange.id, symbol,
                               list(zip([d.day for d in got], storage.encode(RAW_OHLCV, frame, lengths))))
    return [_stored(symbol, d.day, len(d.rows), ts[offsets[i]:offsets[i + 1]], listing, closed_end, "archive")
            for i, d in enumerate(got)]


def _store_with_rest_gaps(exchange, storage, symbol, day, rows, listing, closed_end, now) -> DayResult:
    rows, source = _with_rest_gaps(exchange, symbol, day, rows, listing)
    frame = _frame(rows, exchange.id, symbol, now)
    return _store_frame(storage, exchange.id, symbol, day, frame, rows[:, 0].astype(np.int64), listing, closed_end,
                        source)


def _with_rest_gaps(exchange, symbol, day, rows, listing) -> tuple[np.ndarray, str]:
    """An archive day plus the candles REST has in the minutes the file lacks, and the day's source."""
    start = day_start_ms(day)
    window_start = listing.window_start(start)
    ts = rows[:, 0].astype(np.int64)
    gaps = _gaps(ts, window_start, start + DAY_MS)
    if not gaps:
        return rows, "archive"
    # A few gaps are asked for exactly; for many, one pass over the day takes fewer requests.
    windows = gaps if len(gaps) <= 2 else [(window_start, start + DAY_MS)]
    extra = np.concatenate([fetch_window(exchange, symbol, s, e) for s, e in windows])
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
