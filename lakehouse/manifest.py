"""A cache of per-partition summaries keyed by file stat, so an audit re-reads only the files that changed.

One small JSON document per (layer, exchange, symbol) under {root}/_meta/audit/manifest/:

    {"version": 2, "days": {"2024-01-02": [size, mtime_ns, rows, first_ms, last_ms, gaps, error]}}

`gaps` lists the [start_ms, end_ms) runs without a candle *between* the first and the last candle (raw layer
only; the edges depend on the listing time and the clock, so the audit adds them); `error` says why a file is
unreadable or malformed, else null. An entry is trusted only while the file's (size, mtime_ns) still match:
every write goes through an atomic rename, so any rewrite, truncation or corruption changes the stat.
The document is a cache: deleting it costs one cold audit, never correctness.
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import json
import os
import time

import numpy as np
import polars as pl

from .errors import CorruptPartitionError
from .schema import LAYERS, RAW_OHLCV
from .storage import Storage
from .symbols import encode_symbol
from .timeutil import DAY_MS, MINUTE_MS, day_start_ms

MANIFEST_DIR = "audit/manifest"
VERSION = 2  # 2: raw duplicates / misaligned rows are data, not errors

# Entry fields, kept as a plain list: a warm audit touches tens of thousands of them.
SIZE, MTIME, ROWS, FIRST, LAST, GAPS, ERROR, ETAG = range(8)  # ETAG: object stores only (Storage.stat_days)

Stat = tuple[int, ...]  # (size, mtime_ns) for files; (size, last_modified_ns, etag digest) for objects
_CHUNK = 64  # files summarized between two looks at the deadline


def manifest_name(layer: str, exchange: str, symbol: str) -> str:
    return f"{MANIFEST_DIR}/{layer}/{exchange}/{encode_symbol(symbol)}.json"


def summarize(storage: Storage, layer: str, day: str, path: str, stat: Stat) -> list:
    """Read one partition file in full (so a torn page shows up) and describe it."""
    try:
        df = storage.read_stored(path)
    except CorruptPartitionError as exc:
        return [stat[0], stat[1], 0, None, None, [], _short(exc)]
    except FileNotFoundError:  # deleted since the scan; the next scan will not list it
        return [stat[0], stat[1], 0, None, None, [], "file vanished while reading"]
    missing = [c for c in LAYERS[layer] if c not in df.columns]
    if missing:
        return [stat[0], stat[1], df.height, None, None, [], f"file lacks column(s) {missing}"]
    if "timestamp" not in LAYERS[layer] or df.height == 0:
        return [stat[0], stat[1], df.height, None, None, [], None]
    try:
        ts = df.get_column("timestamp").cast(pl.Int64).to_numpy()
    except Exception as exc:  # e.g. a timestamp column of strings
        return [stat[0], stat[1], df.height, None, None, [], f"timestamp column unusable: {_short(exc)}"]
    first, last = int(ts.min()), int(ts.max())
    if layer != RAW_OHLCV:
        return [stat[0], stat[1], df.height, first, last, [], None]
    start = day_start_ms(dt.date.fromisoformat(day))
    if first < start or last >= start + DAY_MS:
        return [stat[0], stat[1], df.height, first, last, [], f"candles outside {day}"]
    # Raw keeps what the exchange sent, duplicates and misaligned open times included (cleaning rejects
    # them); coverage counts the whole minutes that have a candle.
    minutes = np.unique(ts[ts % MINUTE_MS == 0])
    if minutes.size == 0:
        return [stat[0], stat[1], df.height, None, None, [], None]
    steps = np.diff(minutes)
    gaps = [[int(minutes[i]) + MINUTE_MS, int(minutes[i + 1])] for i in np.nonzero(steps > MINUTE_MS)[0]]
    return [stat[0], stat[1], df.height, int(minutes[0]), int(minutes[-1]), gaps, None]


def _short(exc: Exception) -> str:
    text = str(exc)
    return text if len(text) <= 300 else text[:297] + "..."


class Manifest:
    """Loads, refreshes and saves the per-symbol summary documents of one lakehouse."""

    def __init__(self, storage: Storage, workers: int | None = None):
        self.storage = storage
        self.workers = workers or min(8, os.cpu_count() or 1)
        self.files_read = 0  # summaries recomputed by this instance (the benchmark reports it)
        self.unread = 0  # changed files left for a later audit (deadline reached)

    def load(self, layer: str, exchange: str, symbol: str) -> dict[str, list]:
        body = self.storage.read_meta(manifest_name(layer, exchange, symbol))
        if body is None:
            return {}
        try:
            doc = json.loads(body)
        except ValueError:
            return {}  # a damaged cache is rebuilt from the files
        if doc.get("version") != VERSION or not isinstance(doc.get("days"), dict):
            return {}
        return doc["days"]

    def save(self, layer: str, exchange: str, symbol: str, days: dict[str, list]) -> None:
        body = json.dumps({"version": VERSION, "days": days}, separators=(",", ":"))
        self.storage.write_meta(manifest_name(layer, exchange, symbol), body.encode())

    def refresh(
        self, layer: str, exchange: str, symbol: str, stats: dict[str, Stat], *, persist: bool = True,
        deadline: float | None = None,
    ) -> dict[str, list]:
        """Summaries of the files in `stats`, reading only those whose stat is not cached.

        Past `deadline` (time.monotonic()) no more files are read: their days are left out of the result and
        counted in `unread`, so a cold audit spreads over several sensor ticks instead of timing one out.
        """
        cached = self.load(layer, exchange, symbol)
        stale = [d for d, st in stats.items() if (e := cached.get(d)) is None or e[SIZE] != st[0] or e[MTIME] != st[1]
                 or e[ETAG:] != list(st[2:])]
        gone = [d for d in cached if d not in stats]
        for d in gone:
            del cached[d]
        done = 0
        if stale:
            locate = self.storage.day_locator(layer, exchange, symbol)
            for i in range(0, len(stale), _CHUNK):
                if deadline is not None and time.monotonic() > deadline:
                    break
                chunk = stale[i:i + _CHUNK]
                for day, entry in zip(chunk, self._summarize_many(layer, locate, chunk, stats)):
                    cached[day] = entry
                done += len(chunk)
            for d in stale[done:]:
                cached.pop(d, None)  # its old summary describes a file that is gone
            self.unread += len(stale) - done
        if persist and (done or gone):
            self.save(layer, exchange, symbol, dict(sorted(cached.items())))
        return cached

    def _summarize_many(self, layer: str, locate, days: list[str], stats: dict[str, Stat]) -> list[list]:
        self.files_read += len(days)

        def one(day: str) -> list:
            return summarize(self.storage, layer, day, locate(day), stats[day]) + list(stats[day][2:])

        if len(days) < 8 or self.workers == 1:
            return [one(d) for d in days]
        # Parquet decoding releases the GIL, so a cold audit scales with cores.
        with concurrent.futures.ThreadPoolExecutor(self.workers) as pool:
            return list(pool.map(one, days))
