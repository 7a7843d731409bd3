"""Binance's bulk kline archive (data.binance.vision): closed days as verified zipped CSV files.

Why: REST history is bounded by the request-weight budget (a symbol-year of 1m is ~527 klines requests), while
the exchange publishes the same candles as files outside that budget:

    {base}/data/spot/monthly/klines/BTCUSDT/1m/BTCUSDT-1m-2024-01.zip      (a whole month)
    {base}/data/spot/daily/klines/BTCUSDT/1m/BTCUSDT-1m-2024-01-15.zip     (one day)

each next to a `.zip.CHECKSUM` holding its sha256. A file is used only after its sha256 matches, it unzips to
exactly one CSV of 12 columns without a header, and every row lies inside the file's period, on the minute,
strictly increasing. Open times are milliseconds before 2025 and microseconds from 2025-01-01 in spot files;
both become the UTC milliseconds REST returns.

A 404 means "not published yet" (a day appears some hours after it ends, a month some time after it ends):
the day is left to REST. A checksum mismatch, a bad zip or a malformed row is retried once, network errors,
timeouts and 5xx like REST (backoff with jitter); after that the day is left to REST with the reason. When the
archive cannot be reached at all, the rest of the run does not wait on it again.
"""

from __future__ import annotations

import calendar
import collections
import concurrent.futures
import dataclasses
import datetime as dt
import hashlib
import io
import random
import struct
import tempfile
import threading
import time
import zipfile
import zlib
from typing import BinaryIO, Callable, Iterable, Iterator, TypeVar

import deflate
import numpy as np
import polars as pl
import requests
import urllib3

from ..timeutil import DAY_MS, MINUTE_MS, day_start_ms

BINANCE_ARCHIVE_URL = "https://data.binance.vision"
MICROSECONDS_FROM = dt.date(2025, 1, 1)  # Binance spot files switched open/close times to microseconds
WORKERS = 4  # files one symbol works on at once (download, verify, store): enough to hide latency
# Downloads at once to one archive host from this process, however many symbols are fetched side by side: a
# few connections fill a link, and each download in progress holds a file's CSV in memory.
HOST_DOWNLOADS = 16
_CHUNK = 1 << 20
_SPOOL_BYTES = 16 << 20  # a download larger than this spills to a temporary file instead of memory
_MAX_CSV_BYTES = 256 << 20  # far past any 1m kline file (a month is about 9 MB): a larger claim is a bad zip
_MAX_FILE_BYTES = 512 << 20  # no kline file is anywhere near this; a larger body is not one
T = TypeVar("T")
_US_THRESHOLD = 10**14  # ms timestamps stay below this until the year 5138, us timestamps are above it

# The 12 columns of a kline row, as Binance documents them; only the first seven are stored or checked.
_COLUMNS = {
    "open_time": pl.Int64, "open": pl.Float64, "high": pl.Float64, "low": pl.Float64, "close": pl.Float64,
    "volume": pl.Float64, "close_time": pl.Int64, "quote_volume": pl.Float64, "trades": pl.Int64,
    "taker_buy_volume": pl.Float64, "taker_buy_quote_volume": pl.Float64, "ignore": pl.String,
}


class ArchiveFileError(Exception):
    """A file could not be used; `reason` is what the metadata says about the days it covered."""

    @property
    def reason(self) -> str:
        return str(self)


class NotPublished(ArchiveFileError):
    """404: the archive does not have this file (yet)."""


class CorruptFile(ArchiveFileError):
    """Checksum mismatch, bad zip or malformed CSV: retried once."""


class TransientArchiveError(ArchiveFileError):
    """Timeout, dropped connection, 429 or 5xx: retried with backoff."""


class ArchiveUnreachable(ArchiveFileError):
    """The archive cannot be connected to: after the retries it is not asked again during this run."""


class ArchiveRefused(ArchiveUnreachable):
    """401/403: the archive will not serve us; not retried, not asked again during this run."""


@dataclasses.dataclass(frozen=True)
class ArchiveFile:
    """One archive file: a whole month or a single day of one symbol's 1m klines."""

    market_id: str  # the exchange's id, e.g. BTCUSDT
    period: str  # YYYY-MM (monthly) or YYYY-MM-DD (daily)

    @property
    def monthly(self) -> bool:
        return len(self.period) == 7

    @property
    def first_day(self) -> dt.date:
        return dt.date.fromisoformat(self.period + "-01" if self.monthly else self.period)

    @property
    def days(self) -> list[dt.date]:
        if not self.monthly:
            return [self.first_day]
        first = self.first_day
        n = calendar.monthrange(first.year, first.month)[1]
        return [first + dt.timedelta(days=i) for i in range(n)]

    @property
    def name(self) -> str:
        return f"{self.market_id}-1m-{self.period}.zip"

    @property
    def path(self) -> str:
        kind = "monthly" if self.monthly else "daily"
        return f"data/spot/{kind}/klines/{self.market_id}/1m/{self.name}"

    def window_ms(self) -> tuple[int, int]:
        days = self.days
        return day_start_ms(days[0]), day_start_ms(days[-1]) + DAY_MS


@dataclasses.dataclass
class ArchiveDay:
    """A day's candles from the archive (`rows`), or why the archive could not give them (`reason`)."""

    day: dt.date
    rows: np.ndarray | None  # (n, 6) float64 [ts_ms, open, high, low, close, volume]; None: left to REST
    reason: str | None = None  # set when rows is None: which file, and what was wrong with it


@dataclasses.dataclass
class ArchiveStats:
    requests: int = 0  # zip and CHECKSUM downloads, 404s included
    files: int = 0  # files verified and used
    bytes: int = 0
    not_published: int = 0
    retries: int = 0
    failed: int = 0  # files given up on after their retries

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def plan_files(market_id: str, days: Iterable[dt.date]) -> list[ArchiveFile]:
    """Monthly files for the months whose every day is asked for, daily files for the other days."""
    wanted = sorted(set(days))
    by_month: dict[tuple[int, int], list[dt.date]] = collections.defaultdict(list)
    for d in wanted:
        by_month[(d.year, d.month)].append(d)
    files = []
    for (year, month), month_days in sorted(by_month.items()):
        if len(month_days) == calendar.monthrange(year, month)[1]:
            files.append(ArchiveFile(market_id, f"{year:04d}-{month:02d}"))
        else:
            files.extend(ArchiveFile(market_id, d.isoformat()) for d in month_days)
    return files


def parse_klines_csv(data: bytes, start_ms: int, end_ms: int) -> np.ndarray:
    """Strictly parse a kline CSV into (n, 6) float64 [ts_ms, open, high, low, close, volume] rows.

    Raises CorruptFile for a header, a row without exactly 12 fields, an empty field, mixed or unknown time
    units, a close time that does not end its minute, or a row outside [start_ms, end_ms), off the minute or
    out of order.
    """
    try:
        # No quoting: Binance quotes no field, and a quoted one is then malformed (and the parse 6% faster).
        df = pl.read_csv(data, has_header=False, schema=_COLUMNS, truncate_ragged_lines=False, quote_char=None)
    except pl.exceptions.NoDataError:
        raise CorruptFile("malformed CSV: empty file") from None
    except (pl.exceptions.PolarsError, ValueError) as exc:
        raise CorruptFile(f"malformed CSV: {str(exc).splitlines()[0][:160]}") from None
    if df.height == 0:
        raise CorruptFile("malformed CSV: empty file")
    nulls = [c for c, n in zip(df.columns, df.null_count().row(0)) if n]
    if nulls:
        # polars fills the fields of a short row with nulls; a row with fewer than 12 fields is malformed.
        raise CorruptFile(f"malformed CSV: rows with missing fields ({', '.join(nulls[:3])})")
    open_t = df["open_time"].to_numpy()
    close_t = df["close_time"].to_numpy()
    micro = open_t >= _US_THRESHOLD
    if micro.any() and not micro.all():
        raise CorruptFile("malformed CSV: open times mix milliseconds and microseconds")
    if micro.all():
        if (open_t % 1000).any():
            raise CorruptFile("malformed CSV: microsecond open time that is not a whole millisecond")
        open_ms, minute = open_t // 1000, MINUTE_MS * 1000
    else:
        open_ms, minute = open_t, MINUTE_MS
    if (close_t != open_t + minute - 1).any():
        raise CorruptFile("malformed CSV: a close time does not end its open time's minute")
    # On the minute and increasing: the first row on a minute and every step a positive whole number of minutes
    # (a remainder over every row cost four times as much; a step of exactly one minute is the rule).
    step = np.diff(open_ms)
    if (open_ms[0] % MINUTE_MS or open_ms[0] < start_ms or open_ms[-1] >= end_ms or (step <= 0).any()
            or ((step != MINUTE_MS).any() and (step % MINUTE_MS).any())):
        raise CorruptFile("malformed CSV: rows outside the file's period, off the minute or out of order")
    out = np.empty((6, df.height), dtype=np.float64).T  # (n, 6) with each column contiguous: filled and read by column
    out[:, 0] = open_ms
    for i, col in enumerate(("open", "high", "low", "close", "volume"), start=1):
        out[:, i] = df[col].to_numpy()
    return out


def _read_member(zf: zipfile.ZipFile, buf: BinaryIO, member: str, whole: bytes | None = None) -> bytes:
    """A deflated member inflated by libdeflate, checked against its size and CRC-32 as zipfile would; `whole`,
    when given, is the zip's bytes (`buf` reads them), inflated from where they are rather than from a copy.

    zipfile inflates with zlib, which took a third of a month file's whole cost; libdeflate, which inflates a
    whole buffer of known size at once, took a month file in 7.4 ms here, ISA-L 10-15 ms and zlib 26 ms.
    """
    info = zf.getinfo(member)
    if info.compress_type != zipfile.ZIP_DEFLATED or info.flag_bits & 0x1:  # stored or encrypted: rare
        return zf.read(member)
    buf.seek(info.header_offset)
    header = buf.read(30)
    if len(header) != 30 or header[:4] != b"PK\x03\x04":
        raise CorruptFile("bad zip (no local file header)")
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    start = info.header_offset + 30 + name_len + extra_len
    if whole is not None:
        compressed = memoryview(whole)[start:start + info.compress_size]
    else:
        buf.seek(start)
        compressed = buf.read(info.compress_size)
    if info.file_size > _MAX_CSV_BYTES:  # the size is the zip's word: a bomb would claim any size
        raise CorruptFile(f"bad zip (the CSV claims {info.file_size} bytes; a month of 1m is about 9 MB)")
    try:
        data = bytes(deflate.deflate_decompress(compressed, info.file_size))  # polars reads bytes, not bytearray
    except deflate.DeflateError:
        raise CorruptFile("bad zip (the CSV does not inflate to its stated size)") from None
    if len(compressed) != info.compress_size or len(data) != info.file_size or deflate.crc32(data) != info.CRC:
        raise CorruptFile("bad zip (size or CRC-32 of the CSV does not match)")
    return data


class _Body:
    """A download's bytes: the one bytes object a body read whole arrives as (`whole`, used where it lies), or
    chunks spooled to a temporary file past 16 MiB."""

    def __init__(self):
        self.whole: bytes | None = None
        self._spool: tempfile.SpooledTemporaryFile | None = None

    def write(self, chunk: bytes) -> None:
        if self._spool is None and self.whole is None:
            self.whole = chunk
            return
        if self._spool is None:
            self._spool = tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES)
            self._spool.write(self.whole)
            self.whole = None
        self._spool.write(chunk)

    def open(self) -> BinaryIO:
        if self._spool is None:
            return io.BytesIO(self.whole or b"")  # shares the bytes: no copy
        self._spool.seek(0)
        return self._spool

    def __enter__(self) -> "_Body":
        return self

    def __exit__(self, *exc) -> None:
        if self._spool is not None:
            self._spool.close()
        self.whole = None


_HOSTS: dict[str, threading.BoundedSemaphore] = {}
_HOSTS_LOCK = threading.Lock()


def _host_slots(base_url: str, downloads: int) -> threading.BoundedSemaphore:
    """The one bound of downloads in progress per archive host, shared by every client of the process (the
    first client to use a host sets it)."""
    with _HOSTS_LOCK:
        return _HOSTS.setdefault(base_url, threading.BoundedSemaphore(max(1, downloads)))


def forget_hosts() -> None:
    """Forget the download bounds set per host (what a new process starts from)."""
    with _HOSTS_LOCK:
        _HOSTS.clear()


class KlineArchive:
    """Downloads, verifies and splits archive files into days; see the module docstring."""

    def __init__(
        self,
        base_url: str = BINANCE_ARCHIVE_URL,
        *,
        timeout_s: float = 10.0,
        max_retries: int = 5,
        workers: int = WORKERS,
        host_downloads: int = HOST_DOWNLOADS,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.workers = max(1, workers)
        self._slots = _host_slots(self.base_url, host_downloads)
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self._sleep = sleep
        self.stats = ArchiveStats()
        self._lock = threading.Lock()
        self._local = threading.local()
        self._down: str | None = None  # why the archive is not asked again during this run
        self._sessions: list[requests.Session] = []
        self._side: concurrent.futures.ThreadPoolExecutor | None = None  # .CHECKSUM downloads

    # HTTP ---------------------------------------------------------------------------------------
    def _session(self) -> requests.Session:
        # requests sessions are not documented as thread-safe: one per download thread.
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.headers["User-Agent"] = "ohlcv-lakehouse"
            self._local.session = session
            with self._lock:
                self._sessions.append(session)
        return session

    def _count(self, **deltas: int) -> None:
        with self._lock:
            for name, delta in deltas.items():
                setattr(self.stats, name, getattr(self.stats, name) + delta)

    def _get(self, path: str, sink) -> None:
        """Stream GET {base}/{path} into sink(chunk); typed errors for every way it can fail."""
        url = f"{self.base_url}/{path}"
        self._count(requests=1)
        try:
            resp = self._session().get(url, stream=True, timeout=self.timeout_s)
        except requests.exceptions.ConnectionError as exc:  # refused, DNS, connect timeout
            raise ArchiveUnreachable(f"cannot connect to the archive ({exc.__class__.__name__})") from None
        except requests.exceptions.RequestException as exc:  # no answer in time
            raise TransientArchiveError(f"no answer ({exc.__class__.__name__}, timeout {self.timeout_s:g}s)") from None
        with resp:
            if resp.status_code == 404:
                raise NotPublished("not published yet (404)")
            if resp.status_code in (401, 403):
                raise ArchiveRefused(f"archive refused the download (HTTP {resp.status_code})")
            if resp.status_code == 429 or resp.status_code >= 500:
                raise TransientArchiveError(f"HTTP {resp.status_code}")
            if resp.status_code != 200:
                raise CorruptFile(f"unexpected HTTP {resp.status_code}")
            # Content-Length counts encoded bytes; with a Content-Encoding the decoded body is longer.
            declared = "" if resp.headers.get("Content-Encoding") else resp.headers.get("Content-Length", "")
            length = int(declared) if declared.isdigit() else None
            received = 0
            try:
                if length is not None and length <= _SPOOL_BYTES:
                    # Known and modest (every kline file): read whole, at a third of the CPU of the same body
                    # through iter_content's 1 MiB chunks (bench/ingest.py --archive).
                    body = resp.raw.read(length)
                    received = len(body)
                    if received != length:  # the connection closed before the end
                        raise TransientArchiveError(f"download broken off after {received} of {length} bytes")
                    sink(body)
                else:
                    for chunk in resp.iter_content(_CHUNK):
                        received += len(chunk)
                        if received > _MAX_FILE_BYTES:
                            raise CorruptFile("download larger than any kline file")
                        sink(chunk)
            except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError) as exc:
                # The connection broke off or stalled while the body was streaming.
                raise TransientArchiveError(f"download broken off after {received} bytes ({exc.__class__.__name__})") from None
            if length is not None and received != length:
                raise TransientArchiveError(f"truncated download ({received} of {length} bytes)")
            self._count(bytes=received)

    # one file -----------------------------------------------------------------------------------
    def _checksum(self, file: ArchiveFile) -> str:
        """The sha256 the archive publishes beside `file` (its .CHECKSUM's first word), lower case."""
        body = bytearray()
        self._get(file.path + ".CHECKSUM", body.extend)
        words = bytes(body[:1024]).decode("ascii", "replace").split()
        return words[0].lower() if words else ""

    def _checksums(self) -> concurrent.futures.ThreadPoolExecutor:
        with self._lock:
            if self._side is None:
                self._side = concurrent.futures.ThreadPoolExecutor(self.workers, thread_name_prefix="archive-checksum")
            return self._side

    def _download_verified(self, file: ArchiveFile) -> np.ndarray:
        digest = hashlib.sha256()
        # The .CHECKSUM is asked for alongside its zip, not after it: a round trip less per file (at 50 ms of
        # latency the symbol-year took 0.70 s instead of 0.79).
        published = self._checksums().submit(self._checksum, file)
        with _Body() as body:

            def sink(chunk: bytes) -> None:
                digest.update(chunk)
                body.write(chunk)

            try:
                self._get(file.path, sink)
            except BaseException:
                concurrent.futures.wait([published])  # no request of a failed try outlives it
                raise
            if published.result() != digest.hexdigest():
                raise CorruptFile("checksum mismatch (sha256 differs from .CHECKSUM)")
            buf = body.open()
            try:
                with zipfile.ZipFile(buf) as zf:
                    names = zf.namelist()
                    member = file.name[:-4] + ".csv"
                    if names != [member]:
                        raise CorruptFile(f"bad zip: expected one member {member}, found {names[:3]}")
                    data = _read_member(zf, buf, member, body.whole)
            except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
                raise CorruptFile(f"bad zip ({str(exc)[:80]})") from None
        return parse_klines_csv(data, *file.window_ms())

    def fetch(self, file: ArchiveFile) -> np.ndarray:
        """The file's rows, verified; retries as the module docstring says, then raises ArchiveFileError."""
        corrupt_retried = False
        attempt = 0
        while True:
            if self._down:
                raise ArchiveUnreachable(self._down)
            try:
                with self._slots:  # for the download and its parse only, not for a backoff
                    rows = self._download_verified(file)
                self._count(files=1)
                return rows
            except NotPublished:
                self._count(not_published=1)
                raise
            except ArchiveUnreachable as exc:
                attempt += 1
                if attempt > self.max_retries or isinstance(exc, ArchiveRefused):
                    self._down = f"archive unreachable: {exc.reason}"
                    self._count(failed=1)
                    raise ArchiveUnreachable(self._down) from None
                self._backoff(attempt)
            except CorruptFile as exc:
                if corrupt_retried:
                    self._count(failed=1)
                    raise CorruptFile(f"{exc.reason} (retried once)") from None
                corrupt_retried = True
                self._count(retries=1)
            except TransientArchiveError as exc:
                attempt += 1
                if attempt > self.max_retries:
                    self._count(failed=1)
                    raise TransientArchiveError(f"{exc.reason} ({self.max_retries} retries)") from None
                self._backoff(attempt)

    def _backoff(self, attempt: int) -> None:
        self._count(retries=1)
        delay = min(self.backoff_max_s, self.backoff_base_s * 2 ** (attempt - 1))
        self._sleep(delay * random.uniform(0.5, 1.5))  # jitter, as for REST

    # days ---------------------------------------------------------------------------------------
    def days(self, symbol: str, days: Iterable[dt.date], *, listing_ms: int | None, closed_end_ms: int,
             market_id: str | None = None, store: Callable[[list[ArchiveDay]], T] = list) -> Iterator[T]:
        """`store(file_days)` for each archive file of the closed days asked for from the symbol's listing on,
        in date order: its ArchiveDays, each with rows or the reason there are none.

        Days still open or before the listing are not offered: they are REST's. Files download concurrently (at
        most `workers` at once), and `store` runs on the thread that verified the file, so that files are stored
        while others download and a file's rows are dropped once stored; for a file that could not be used it
        runs on the caller's thread. Files are named by the exchange's `market_id` (BASE + QUOTE when not given;
        ccxt renames a few currencies).
        """
        market_id = market_id or symbol.replace("/", "")
        offered = [
            d for d in sorted(set(days))
            if day_start_ms(d) + DAY_MS <= closed_end_ms and (listing_ms is None or day_start_ms(d) + DAY_MS > listing_ms)
        ]
        wanted = set(offered)

        def fetch_and_store(file: ArchiveFile) -> T:
            return store(self._split(file, self.fetch(file), wanted))

        try:
            for file, stored, error in self._fetch_all(plan_files(market_id, offered), fetch_and_store):
                if error is not None and file.monthly and not isinstance(error, ArchiveUnreachable):
                    # A month not (yet) usable as one file: its days may still be there as daily files.
                    daily = [ArchiveFile(market_id, d.isoformat()) for d in file.days if d in wanted]
                    for f, s, e in self._fetch_all(daily, fetch_and_store):
                        yield s if e is None else store(self._unusable(f, e, wanted))
                else:
                    yield stored if error is None else store(self._unusable(file, error, wanted))
        finally:
            self.close()  # the download threads are gone; so are their connections

    @staticmethod
    def _split(file: ArchiveFile, rows: np.ndarray, wanted) -> list[ArchiveDay]:
        days = [d for d in file.days if d in wanted]
        starts = np.asarray([day_start_ms(d) for d in days] + [day_start_ms(days[-1]) + DAY_MS], dtype=np.float64)
        bounds = np.searchsorted(rows[:, 0], starts)
        return [ArchiveDay(d, rows[bounds[i]:bounds[i + 1]]) for i, d in enumerate(days)]

    @staticmethod
    def _unusable(file: ArchiveFile, error: ArchiveFileError, wanted) -> list[ArchiveDay]:
        return [ArchiveDay(d, None, f"{file.name}: {error.reason}") for d in file.days if d in wanted]

    def _fetch_all(self, files: list[ArchiveFile], fetch: Callable[[ArchiveFile], T],
                   ) -> Iterator[tuple[ArchiveFile, T | None, ArchiveFileError | None]]:
        """(file, fetch(file), None) or (file, None, why it could not be used), in order, with up to `workers`
        files in progress."""
        if not files:
            return
        with concurrent.futures.ThreadPoolExecutor(self.workers, thread_name_prefix="archive") as pool:
            pending: collections.deque = collections.deque()
            queue = iter(files)
            # Queued further ahead than the threads, so that a slow file does not leave the others idle; a
            # file's rows are held only while its thread works on it.
            for f in queue:
                pending.append((f, pool.submit(fetch, f)))
                if len(pending) >= 2 * self.workers:
                    break
            try:
                while pending:
                    f, fut = pending.popleft()
                    nxt = next(queue, None)
                    if nxt is not None:
                        pending.append((nxt, pool.submit(fetch, nxt)))
                    try:
                        got, error = fut.result(), None
                    except ArchiveFileError as exc:
                        got, error = None, exc
                    yield f, got, error
            finally:  # the consumer stopped early (e.g. a failed write): do not download the rest
                for _, fut in pending:
                    fut.cancel()

    def close(self) -> None:
        with self._lock:
            sessions, self._sessions = self._sessions, []
            side, self._side = self._side, None
        if side is not None:
            side.shutdown(wait=True, cancel_futures=True)
        for session in sessions:
            session.close()

