"""The emulator's copy of Binance's bulk kline archive (data.binance.vision layout), with fault injection.

    GET /data/spot/daily/klines/BTCUSDT/1m/BTCUSDT-1m-2024-01-15.zip(.CHECKSUM)
    GET /data/spot/monthly/klines/BTCUSDT/1m/BTCUSDT-1m-2024-01.zip(.CHECKSUM)

Files are built from the emulator's own SimulatedSource with the same number formatting as its klines
endpoint, so archive and REST carry the same candles; from 2025-01-01 open and close times are in
microseconds, as in Binance's spot files. A day is published `daily_delay_s` after it ends and a month
`monthly_delay_s` after it ends (by the emulator's clock); before that, and for a period without any candle,
the file is a 404. Archive downloads are outside the REST weight budget, as on Binance.

Faults (`inject`, or POST /_emulator/archive/faults): "corrupt" (bytes changed, so the sha256 no longer
matches its .CHECKSUM), "bad_zip" and "malformed" (a broken zip, or a zip whose CSV has a 11-field row; the
file's .CHECKSUM matches the broken body, whether it is asked for before or after the zip, so only the content
check can catch it), "gappy" (ten rows left out, or every `stride`-th row, checksum matching), "missing" (404), "truncated" (Content-Length promises the whole
file, the connection closes halfway), "500" and "timeout" (answers after `delay` seconds). `match` picks the
files a fault applies to (a substring of the path, e.g. a file name; default every .zip).
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import hashlib
import io
import json
import re
import threading
import zipfile

from ..timeutil import DAY_MS, day_start_ms

ARCHIVE_PREFIX = "/data/"
CONTROL_PATH = "/_emulator/archive"
FAULT_KINDS = ("corrupt", "bad_zip", "malformed", "gappy", "missing", "truncated", "500", "timeout")
_CONTENT_FAULTS = ("bad_zip", "malformed", "gappy")  # a file published wrong: its .CHECKSUM matches the wrong body
MICROSECONDS_FROM_MS = day_start_ms(dt.date(2025, 1, 1))
_CACHED_FILES = 16

_PATH = re.compile(
    r"^/data/spot/(?P<kind>daily|monthly)/klines/(?P<id>[A-Z0-9]+)/1m/"
    r"(?P=id)-1m-(?P<period>\d{4}-\d{2}(?:-\d{2})?)\.zip(?P<checksum>\.CHECKSUM)?$"
)


@dataclasses.dataclass
class _Fault:
    kind: str
    remaining: int
    match: str | None
    params: dict


class ArchiveRoutes:
    """Serves the archive layout for a BinanceEmulator; mounted by it under /data/."""

    def __init__(self, emulator, daily_delay_s: float = 6 * 3600, monthly_delay_s: float = 30 * 3600):
        self.emulator = emulator
        self.daily_delay_s = daily_delay_s
        self.monthly_delay_s = monthly_delay_s
        self._lock = threading.Lock()
        self._faults: collections.deque[_Fault] = collections.deque()
        # A content fault pairs one download of a zip with one of its .CHECKSUM, in either order: file path ->
        # the fault its zip was just served with (its checksum is next), or the fault its checksum, asked for
        # first, promised to the zip's next download.
        self._served: dict[str, _Fault] = {}
        self._promised: dict[str, _Fault] = {}
        self._cache_size = _CACHED_FILES
        self._cache: collections.OrderedDict[tuple[str, str], tuple[bytes, str] | None] = collections.OrderedDict()
        self.reset_counters()

    # controls -----------------------------------------------------------------------------------
    def reset_counters(self) -> None:
        with self._lock:
            self.counts: collections.Counter[str] = collections.Counter()

    def stats(self) -> dict:
        with self._lock:
            return {"requests": sum(v for k, v in self.counts.items() if k.startswith("status_")),
                    **dict(self.counts), "faults_pending": sum(f.remaining for f in self._faults),
                    "daily_delay_s": self.daily_delay_s, "monthly_delay_s": self.monthly_delay_s}

    def inject(self, kind: str, count: int = 1, match: str | None = None, **params) -> None:
        """Queue `count` faults of `kind` for the next .zip downloads whose path contains `match`, FIFO."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown archive fault kind {kind!r}; expected one of {', '.join(FAULT_KINDS)}")
        if int(count) < 1:
            raise ValueError("count must be >= 1")
        with self._lock:
            self._faults.append(_Fault(kind, int(count), match, dict(params)))

    def prebuild(self, symbol: str, days) -> int:
        """Build now the files a client asking for these days would download (benchmarks time the client, and a
        real archive serves files it already has); returns how many."""
        from .archive import plan_files

        files = plan_files(symbol.replace("/", ""), days)
        with self._lock:
            self._cache_size += len(files)  # every symbol prebuilt stays served from memory
        for f in files:
            self._file(symbol, f.period, *_period_ms(f.period))
        return len(files)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()
            self._served.clear()
            self._promised.clear()

    def control(self, method: str, path: str, body: bytes):
        from .emulator import _json_response

        try:
            payload = json.loads(body) if body else {}
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            return _json_response(400, {"error": "body must be a JSON object"})
        if path == CONTROL_PATH + "/stats" and method == "GET":
            return _json_response(200, self.stats())
        if path == CONTROL_PATH + "/faults" and method == "POST":
            params = dict(payload)
            try:
                self.inject(params.pop("kind", None), count=params.pop("count", 1), match=params.pop("match", None),
                            **params)
            except (TypeError, ValueError) as exc:
                return _json_response(400, {"error": str(exc)})
            return _json_response(200, {"queued": True})
        if path == CONTROL_PATH + "/faults" and method == "DELETE":
            self.clear_faults()
            return _json_response(200, {"cleared": True})
        if path == CONTROL_PATH + "/delays" and method == "POST":
            try:
                daily = float(payload.get("daily_delay_s", self.daily_delay_s))
                monthly = float(payload.get("monthly_delay_s", self.monthly_delay_s))
            except (TypeError, ValueError):
                return _json_response(400, {"error": "delays must be numbers of seconds"})
            self.daily_delay_s, self.monthly_delay_s = daily, monthly
            return _json_response(200, self.stats())
        return _json_response(404, {"error": f"no control endpoint {method} {path}"})

    # requests -----------------------------------------------------------------------------------
    def handle(self, method: str, path: str):
        resp = self._answer(method, path)
        with self._lock:
            self.counts[f"status_{resp.status}"] += 1
            self.counts["checksum" if path.endswith(".CHECKSUM") else "zip"] += 1
        return resp

    def _answer(self, method: str, path: str):
        from .emulator import _Response

        m = _PATH.match(path)
        unified = self.emulator._ids.get(m["id"]) if m else None
        if method != "GET" or m is None or unified is None or (m["kind"] == "monthly") != (len(m["period"]) == 7):
            return _not_found()
        try:
            start, end = _period_ms(m["period"])
        except ValueError:
            return _not_found()
        delay = self.monthly_delay_s if m["kind"] == "monthly" else self.daily_delay_s
        if self.emulator.clock() < end + delay * 1000:
            return _not_found()  # not published yet
        zip_path = path[: -len(".CHECKSUM")] if m["checksum"] else path
        if m["checksum"]:
            built = self._file(unified, m["period"], start, end, m["id"])
            if built is None:
                return _not_found()
            with self._lock:
                fault = self._served.pop(zip_path, None) or self._promised.get(zip_path)
                if fault is None:
                    fault = self._take_fault(zip_path, kinds=_CONTENT_FAULTS)
                    if fault is not None:
                        self._promised[zip_path] = fault
            digest = built[1] if fault is None else hashlib.sha256(
                self._broken(fault, unified, m["id"], m["period"], start, end, built[0])).hexdigest()
            name = zip_path.rsplit("/", 1)[1]
            return _Response(200, f"{digest}  {name}\n".encode(), "text/plain")
        with self._lock:
            fault = self._promised.pop(zip_path, None)
            if fault is None:
                fault = self._take_fault(zip_path)
                if fault is not None and fault.kind in _CONTENT_FAULTS:
                    self._served[zip_path] = fault  # its checksum, asked for next, matches this body
        if fault is not None and fault.kind == "missing":
            return _not_found()
        built = self._file(unified, m["period"], start, end, m["id"])
        if built is None:
            return _not_found()
        body = built[0]
        if fault is None:
            return _Response(200, body, "application/zip")
        return self._faulty(fault, zip_path, unified, m["id"], m["period"], start, end, body)

    def _take_fault(self, path: str, kinds: tuple[str, ...] | None = None) -> _Fault | None:
        """The next fault for `path`'s download, taken (the caller holds the lock); with `kinds`, only if it is
        one of those."""
        for fault in self._faults:
            if fault.match is None or fault.match in path:
                if kinds is not None and fault.kind not in kinds:
                    return None
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self._faults.remove(fault)
                self.counts[f"fault_{fault.kind}"] += 1
                return fault
        return None

    def _faulty(self, fault: _Fault, zip_path: str, unified: str, market_id: str, period: str, start: int, end: int,
                body: bytes):
        from .emulator import _Response

        kind = fault.kind
        if kind == "corrupt":
            mid = len(body) // 2
            return _Response(200, body[:mid] + bytes([body[mid] ^ 0xFF]) + body[mid + 1:], "application/zip")
        if kind == "truncated":
            return _Response(200, body[: len(body) // 2], "application/zip", declared_length=len(body))
        if kind == "500":
            return _Response(500, b"<html><body>500 Internal Server Error</body></html>", "text/html")
        if kind == "timeout":
            return _Response(200, body, "application/zip", delay_s=float(fault.params.get("delay", 5.0)))
        return _Response(200, self._broken(fault, unified, market_id, period, start, end, body), "application/zip")

    def _broken(self, fault: _Fault, unified: str, market_id: str, period: str, start: int, end: int,
                body: bytes) -> bytes:
        """The wrong body a content fault publishes in place of `body`."""
        if fault.kind == "bad_zip":
            return b"PK\x03\x04" + body[4: len(body) // 3]
        # malformed / gappy: a well-formed zip of a CSV that is not what the exchange has
        lines = _csv(self.emulator, unified, start, end).splitlines(keepends=True)
        if fault.kind == "malformed":
            row = lines[len(lines) // 2].rstrip(b"\n").split(b",")
            lines[len(lines) // 2] = b",".join(row[:11]) + b"\n"
        elif fault.params.get("stride"):  # every n-th row left out: many small gaps
            lines = [line for i, line in enumerate(lines) if i % int(fault.params["stride"])]
        else:
            del lines[len(lines) // 3: len(lines) // 3 + 10]
        return _zip(period, market_id, b"".join(lines))

    def _file(self, unified: str, period: str, start: int, end: int,
              market_id: str | None = None) -> tuple[bytes, str] | None:
        """(zip bytes, sha256) of a published file, None if the period has no candle; the last few are kept
        because a download, its CHECKSUM and a retry all need the same file. Its CSV is named by the market id
        asked for, as the exchange names its files."""
        market_id = market_id or unified.replace("/", "")
        key = (market_id, period)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        csv = _csv(self.emulator, unified, start, end)
        built = None
        if csv:
            body = _zip(period, market_id, csv)
            built = body, hashlib.sha256(body).hexdigest()
        with self._lock:
            self._cache[key] = built
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return built


def _not_found():
    from .emulator import _Response

    # What S3 behind CloudFront answers for a key that does not exist.
    body = b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>NoSuchKey</Code><Message>The specified key does not exist.</Message></Error>'
    return _Response(404, body, "application/xml")


def _period_ms(period: str) -> tuple[int, int]:
    if len(period) == 7:
        first = dt.date.fromisoformat(period + "-01")
        nxt = dt.date(first.year + first.month // 12, first.month % 12 + 1, 1)
        return day_start_ms(first), day_start_ms(nxt)
    start = day_start_ms(dt.date.fromisoformat(period))
    return start, start + DAY_MS


def _csv(emulator, unified: str, start: int, end: int) -> bytes:
    """The period's klines as Binance's archive CSV: the klines endpoint's 12 fields, no header."""
    from .emulator import _klines_json

    rows = emulator.source.candles(unified, start, end)
    if len(rows) == 0:
        return b""
    # The klines JSON is [[ts,"o",...],[...]]: the same fields, comma-separated, quoted strings.
    text = _klines_json(rows, emulator.source.markets[unified].decimals)[2:-2].replace('"', "")
    lines = text.split("],[")
    if start >= MICROSECONDS_FROM_MS:
        # open_us = open_ms * 1000 and close_us = (close_ms + 1) * 1000 - 1: append digits, no arithmetic.
        for i, line in enumerate(lines):
            f = line.split(",", 7)
            f[0] += "000"
            f[6] += "999"
            lines[i] = ",".join(f)
    return ("\n".join(lines) + "\n").encode()


def _zip(period: str, market_id: str, csv: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        # A fixed timestamp: the same file is the same bytes whenever it is built.
        info = zipfile.ZipInfo(f"{market_id}-1m-{period}.csv", date_time=(2000, 1, 1, 0, 0, 0))
        info.compress_type = zipfile.ZIP_DEFLATED
        zf.writestr(info, csv, compresslevel=1)
    return buf.getvalue()

