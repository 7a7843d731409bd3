"""All file access of the lakehouse: one Parquet file per (layer, exchange, symbol, UTC day), written atomically.

Layout (Hive-style, so DuckDB and polars can prune by path):
    {root}/{layer}/exchange={exchange}/symbol={BASE-QUOTE}/date={YYYY-MM-DD}/part.parquet

The root is a local folder (`Storage`) or an object-store URL `s3://bucket/prefix` (`Storage(...)` then returns
an `ObjectStorage`, lakehouse/objectstore.py): callers use the methods below and never touch paths themselves.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import fcntl
import functools
import os
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator, Sequence

import polars as pl

from .errors import CorruptPartitionError, StorageError
from .schema import LAYERS, UNPARTITIONED_LAYERS, conform, empty
from .symbols import decode_symbol, encode_symbol
from .timeutil import parse_day

PART_FILE = "part.parquet"
META_DIR = "_meta"
_TMP_PREFIX = ".tmp-"
# A temp file this old belongs to no write in progress: one a killed writer left behind (see _sweep_stale_temp).
STALE_TEMP_S = 3600.0
_SCAN_CHUNKS = 4  # scans run at once over many files (see scan_files)
_SCAN_CHUNK_FILES = 32  # fewer files than this per scan gain nothing from splitting


@dataclasses.dataclass(frozen=True)
class PartitionRef:
    layer: str
    exchange: str
    symbol: str
    day: dt.date


@dataclasses.dataclass(frozen=True)
class PartitionStat:
    ref: PartitionRef
    path: Path
    size: int
    mtime_ns: int


class Storage:
    """A lakehouse rooted at a local folder; the only module that touches partition files."""

    def __new__(cls, root: str | os.PathLike | None = None, *args, **kwargs):
        if cls is Storage and str(root).startswith("s3://"):
            from .objectstore import ObjectStorage

            return super().__new__(ObjectStorage)
        return super().__new__(cls)

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser().resolve()
        self._symbol_dirs: dict[tuple[str, str, str], Path] = {}  # checked once: a day's write asked ~8 lstats

    def __repr__(self) -> str:
        return f"Storage({str(self.root)!r})"

    # paths -----------------------------------------------------------------------------------
    def _layer_dir(self, layer: str) -> Path:
        if layer not in LAYERS:
            raise StorageError(f"unknown layer {layer!r}; known: {sorted(LAYERS)}")
        return self.root / layer

    def symbol_dir(self, layer: str, exchange: str, symbol: str) -> Path:
        key = (layer, exchange, symbol)
        if (known := self._symbol_dirs.get(key)) is not None:
            return known
        path = self._layer_dir(layer) / f"exchange={_safe_segment(exchange)}" / f"symbol={encode_symbol(symbol)}"
        # Belt and braces: encode_symbol already refuses path characters.
        if self.root not in path.resolve().parents:
            raise StorageError(f"refusing a path outside the lakehouse root: {path}")
        self._symbol_dirs[key] = path
        return path

    def partition_path(self, layer: str, exchange: str, symbol: str, day: dt.date | str) -> Path:
        return self.symbol_dir(layer, exchange, symbol) / f"date={parse_day(day).isoformat()}" / PART_FILE

    def glob(self, layer: str) -> str:
        # Exactly the partition files: a writer's .tmp-*.parquet is never half-read by a query.
        return str(self._layer_dir(layer) / "exchange=*" / "symbol=*" / "date=*" / PART_FILE)

    # writes ----------------------------------------------------------------------------------
    def write_partition(self, layer: str, exchange: str, symbol: str, day: dt.date, df: pl.DataFrame) -> Path:
        """Replace the partition's file atomically: readers see the old file or the new one, never a torn one."""
        return self.write_encoded(layer, exchange, symbol, day, self.encode(layer, df)[0])

    def encode(self, layer: str, df: pl.DataFrame, lengths: Sequence[int] | None = None) -> list[bytes]:
        """The layer files' bytes, for write_encoded, of `df` cut into consecutive parts of `lengths` rows (one
        part when None): several days encode faster as one frame."""
        check_partitioned(layer)
        return parquet_bytes_many(conform(df, layer), lengths)

    def write_encoded(self, layer: str, exchange: str, symbol: str, day: dt.date, data: bytes) -> Path:
        """write_partition for a frame already turned into bytes by `encode`."""
        return self.write_encoded_many(layer, exchange, symbol, [(day, data)])[0]

    def write_encoded_many(self, layer: str, exchange: str, symbol: str,
                           files: Sequence[tuple[dt.date, bytes]]) -> list[Path]:
        """write_encoded for several days of one symbol, each replaced atomically; their files reach the disk
        together, which costs a third of one sync per file."""
        check_partitioned(layer)
        paths = [self.partition_path(layer, exchange, symbol, day) for day, _ in files]
        _write_atomic_many([data for _, data in files], paths)
        return paths

    def delete_partition(self, layer: str, exchange: str, symbol: str, day: dt.date) -> bool:
        path = self.partition_path(layer, exchange, symbol, day)
        try:
            path.unlink()
            return True
        except FileNotFoundError:
            return False

    def partition_modified_ns(self, layer: str, exchange: str, symbol: str, day: dt.date) -> int | None:
        """When the partition's file was last written (ns since the epoch), or None when it does not exist."""
        try:
            return self.partition_path(layer, exchange, symbol, day).stat().st_mtime_ns
        except FileNotFoundError:
            return None

    def has_partitions(self, layer: str) -> bool:
        """Whether the layer holds at least one partition file."""
        return next(iter(self._layer_dir(layer).glob(f"exchange=*/symbol=*/date=*/{PART_FILE}")), None) is not None

    def day_locator(self, layer: str, exchange: str, symbol: str) -> Callable[[str], str]:
        """day ('YYYY-MM-DD') -> the location read_stored accepts, built without a filesystem call per day."""
        base = os.path.join(self.symbol_dir(layer, exchange, symbol), "date=")
        return lambda day: f"{base}{day}{os.sep}{PART_FILE}"

    # unpartitioned tables (scores): one file per layer, rewritten whole ------------------------
    def table_path(self, layer: str) -> Path:
        if layer not in UNPARTITIONED_LAYERS:
            raise StorageError(f"{layer} is partitioned by symbol x day: use write_partition/read_partition")
        return self._layer_dir(layer) / PART_FILE

    def write_table(self, layer: str, df: pl.DataFrame) -> Path:
        """Replace an unpartitioned layer's single file atomically ({root}/{layer}/part.parquet)."""
        path = self.table_path(layer)
        _write_atomic(parquet_bytes(conform(df, layer)), path)
        return path

    def table_exists(self, layer: str) -> bool:
        return self.table_path(layer).exists()

    def read_table(self, layer: str) -> pl.DataFrame:
        """The whole unpartitioned layer; an empty typed frame before its first write."""
        path = self.table_path(layer)
        if not path.exists():
            return empty(layer)
        try:
            return conform(pl.read_parquet(path), layer)
        except Exception as exc:
            raise CorruptPartitionError(f"{path} is unreadable ({exc.__class__.__name__}: {exc})") from exc

    # small metadata documents (registry, audit state) ------------------------------------------
    def meta_path(self, name: str) -> Path:
        path = (self.root / META_DIR / name).resolve()
        if (self.root / META_DIR).resolve() not in path.parents:
            raise StorageError(f"refusing a metadata path outside {self.root / META_DIR}: {name!r}")
        return path

    def read_meta(self, name: str) -> bytes | None:
        try:
            return self.meta_path(name).read_bytes()
        except FileNotFoundError:
            return None

    def write_meta(self, name: str, data: bytes) -> None:
        """Replace a metadata document atomically (the same temp + fsync + rename as partitions)."""
        _write_atomic(data, self.meta_path(name))

    def update_meta(self, name: str, change: Callable[[bytes | None], bytes | None]) -> None:
        """Read-modify-write of a metadata document that concurrent writers cannot interleave.

        `change` gets the current body (None when absent) and returns the new one (None = leave it). Here a
        file lock serializes writers on this machine; ObjectStorage uses conditional PUTs instead.
        """
        path = self.meta_path(name)
        lock_path = path.parent / (path.name + ".lock")
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with open(lock_path, "a") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                body = change(self.read_meta(name))
                if body is not None:
                    self.write_meta(name, body)
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def attach_duckdb(self, con) -> None:
        """Let a DuckDB connection read this lakehouse's files (local files need nothing)."""

    # reads -----------------------------------------------------------------------------------
    def read_partition(self, layer: str, exchange: str, symbol: str, day: dt.date) -> pl.DataFrame | None:
        path = self.partition_path(layer, exchange, symbol, day)
        if not path.exists():
            return None
        try:
            return conform(pl.read_parquet(path), layer)
        except Exception as exc:  # polars raises several kinds for torn files
            raise CorruptPartitionError(f"{path} is unreadable ({exc.__class__.__name__}: {exc})") from exc

    def read_range(
        self, layer: str, exchange: str, symbol: str, start: dt.date, end: dt.date,
        *, columns: Sequence[str] | None = None, filter: pl.Expr | None = None,
    ) -> pl.DataFrame:
        """Concatenate the existing partitions of [start, end]; missing days are simply absent.

        With `columns` and/or `filter` (a polars expression over the layer's columns), the files are scanned
        lazily in one pass, so only the wanted rows and columns are materialized: e.g. the 1d bars of 601
        days of clean_bars without building 601 days of 1m bars.
        """
        if columns is not None or filter is not None:
            return self._scan_range(layer, exchange, symbol, start, end, columns, filter)
        frames = []
        for stat in self.list_partitions(layer, exchange, symbol):
            if start <= stat.ref.day <= end:
                frames.append(self.read_partition(layer, exchange, symbol, stat.ref.day))
        if not frames:
            return empty(layer)
        return pl.concat(frames, how="vertical").sort("timestamp") if "timestamp" in LAYERS[layer] else pl.concat(frames)

    def read_days(self, layer: str, exchange: str, symbol: str, days: Sequence[dt.date],
                  day_column: str = "_day") -> pl.DataFrame:
        """The rows of the days' files, conformed to the layer, each tagged in `day_column` with the day of the file
        it came from (a row may lie outside it); days without a file are absent. One lazy scan of the files, each
        read in full: a torn file raises CorruptPartitionError naming it, as read_partition would."""
        wanted = set(days)
        paths = {str(s.path): s.ref.day for s in self.list_partitions(layer, exchange, symbol) if s.ref.day in wanted}
        if not paths:
            return empty(layer).with_columns(pl.lit(None, dtype=pl.Date).alias(day_column))
        schema = LAYERS[layer]
        try:
            df = pl.scan_parquet(list(paths), include_file_paths="_path", hive_partitioning=False).select(
                *[pl.col(c).cast(t) for c, t in schema.items()], "_path").collect()
        except Exception:  # a torn or foreign file: read one by one, which names it
            return pl.concat([self.read_partition(layer, exchange, symbol, d).with_columns(pl.lit(d).alias(day_column))
                              for d in sorted(paths.values())], how="vertical")
        by_path = pl.DataFrame({"_path": list(paths), day_column: list(paths.values())},
                               schema={"_path": pl.String, day_column: pl.Date})
        return df.join(by_path, on="_path", how="left", maintain_order="left").drop("_path")

    def _scan_range(self, layer, exchange, symbol, start, end, columns, filter) -> pl.DataFrame:
        schema = LAYERS[layer]
        cols = list(columns) if columns is not None else list(schema)
        unknown = [c for c in cols if c not in schema]
        if unknown:
            raise StorageError(f"{layer} has no column(s) {unknown}; known: {list(schema)}")
        first, last = start.isoformat(), end.isoformat()
        locate = self.day_locator(layer, exchange, symbol)
        # stat_days, not list_partitions: a year's listing in 0.9 ms instead of 3.5 (a twentieth of the read).
        paths = [locate(day) for day in sorted(self.stat_days(layer, exchange, symbol)) if first <= day <= last]
        if not paths:
            return empty(layer).select(cols)
        try:
            df = scan_files(paths, filter, [pl.col(c).cast(schema[c]) for c in cols])
        except Exception as exc:
            for path in paths:  # name the torn file, as read_partition would
                try:
                    pl.read_parquet_schema(path)
                except Exception as inner:
                    raise CorruptPartitionError(
                        f"{path} is unreadable ({inner.__class__.__name__}: {inner})") from inner
            raise StorageError(f"reading {layer} {symbol} {start}..{end} failed: {exc}") from exc
        if "timestamp" in cols and not df.get_column("timestamp").is_sorted():
            df = df.sort("timestamp", maintain_order=True)
        return df

    def list_partitions(
        self, layer: str, exchange: str | None = None, symbol: str | None = None
    ) -> Iterator[PartitionStat]:
        """Every partition file of a layer, with size and mtime from one directory scan (no file is opened)."""
        layer_dir = self._layer_dir(layer)
        for ex_dir in _subdirs(layer_dir, "exchange="):
            ex = ex_dir.name.split("=", 1)[1]
            if exchange is not None and ex != exchange:
                continue
            for sym_dir in _subdirs(ex_dir, "symbol="):
                try:
                    sym = decode_symbol(sym_dir.name.split("=", 1)[1])
                except Exception:
                    continue  # a foreign folder is not ours to interpret
                if symbol is not None and sym != symbol:
                    continue
                for date_dir in _subdirs(sym_dir, "date="):
                    value = date_dir.name.split("=", 1)[1]
                    if not is_day_name(value):
                        continue
                    day = dt.date.fromisoformat(value)
                    try:
                        st = (date_dir / PART_FILE).stat()
                    except FileNotFoundError:
                        continue
                    yield PartitionStat(
                        PartitionRef(layer, ex, sym, day), date_dir / PART_FILE, st.st_size, st.st_mtime_ns
                    )

    def symbols(self, layer: str, exchange: str | None = None) -> list[tuple[str, str]]:
        out = []
        for ex_dir in _subdirs(self._layer_dir(layer), "exchange="):
            ex = ex_dir.name.split("=", 1)[1]
            if exchange is None or ex == exchange:
                for sym_dir in _subdirs(ex_dir, "symbol="):
                    try:
                        out.append((ex, decode_symbol(sym_dir.name.split("=", 1)[1])))
                    except Exception:
                        continue
        return sorted(out)

    def disk_usage_bytes(self) -> int:
        total = 0
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                try:
                    total += os.stat(os.path.join(dirpath, name)).st_size
                except FileNotFoundError:
                    pass
        return total

    def stat_days(self, layer: str, exchange: str, symbol: str) -> dict[str, tuple[int, int]]:
        """{'YYYY-MM-DD': (size, mtime_ns)} of one symbol's partition files: one scandir and one stat per file.
        Only folders naming a real day count (a foreign date=2024-01-02x is not ours to read or summarize).

        (ObjectStorage adds a third value, a digest of the ETag, as its listings' times have 1 s resolution.)

        The audit calls this every tick for every symbol, so it builds no Path or PartitionStat objects
        (list_partitions is ~5x slower over 36,500 files).
        """
        out: dict[str, tuple[int, int]] = {}
        try:
            fd = os.open(self.symbol_dir(layer, exchange, symbol), os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            return out
        try:
            # Relative to the folder's descriptor: the kernel does not walk the long absolute path 36,500 times.
            with os.scandir(fd) as it:
                names = [e.name for e in it if e.name.startswith("date=") and is_day_name(e.name[5:])]
            tail = os.sep + PART_FILE
            for name in names:
                try:
                    st = os.stat(name + tail, dir_fd=fd)
                except (FileNotFoundError, NotADirectoryError):
                    continue
                out[name[5:]] = (st.st_size, st.st_mtime_ns)
        finally:
            os.close(fd)
        return out

    def read_stored(self, path: str | os.PathLike) -> pl.DataFrame:
        """A partition file exactly as stored (not conformed to its schema), read in full so a torn page raises
        CorruptPartitionError. For the audit, which checks columns itself: about twice as fast as read_partition."""
        if not str(path).startswith(str(self.root) + os.sep):
            raise StorageError(f"refusing a path outside the lakehouse root: {path}")
        try:
            # One small file per call: polars' own threads cost more than they save here.
            return pl.read_parquet(path, parallel="none")
        except FileNotFoundError:
            raise
        except Exception as exc:
            raise CorruptPartitionError(f"{path} is unreadable ({exc.__class__.__name__}: {exc})") from exc


def scan_files(paths: Sequence[str], filter: pl.Expr | None = None, select: Sequence[pl.Expr] | None = None,
               ) -> pl.DataFrame:
    """The rows of `paths` (partition files of one schema), in order, filtered, then selected: one lazy pass."""

    def scan(some: Sequence[str]) -> pl.LazyFrame:
        # A day's file is one row group holding every interval (or rule), so its statistics never let a filter
        # skip it; reading them costs a tenth of a year's scan.
        lf = pl.scan_parquet(list(some), hive_partitioning=False, use_statistics=False)
        lf = lf if filter is None else lf.filter(filter)
        return lf if select is None else lf.select(list(select))

    # Many files as a few scans run at once, concatenated in order: one scan opens its files one after another,
    # and several overlap those opens (a year of day files: 58 -> 52 ms, bench/derive.py).
    size = max(_SCAN_CHUNK_FILES, -(-len(paths) // _SCAN_CHUNKS))
    frames = pl.collect_all([scan(paths[i:i + size]) for i in range(0, len(paths), size)])
    return frames[0] if len(frames) == 1 else pl.concat(frames, how="vertical")


def check_partitioned(layer: str) -> None:
    if layer in UNPARTITIONED_LAYERS:
        raise StorageError(f"{layer} is one table, not partitioned by day: use write_table")


def parquet_bytes(df: pl.DataFrame) -> bytes:
    """The one Parquet encoding of every layer file, local or in object storage."""
    return parquet_bytes_many(df)[0]


def parquet_bytes_many(df: pl.DataFrame, lengths: Sequence[int] | None = None) -> list[bytes]:
    """parquet_bytes of consecutive parts of `df`, `lengths` rows each (the whole frame when None)."""
    # pyarrow's writer, not polars': a day file costs it 0.37 ms of CPU against polars' 0.70 (polars runs a
    # HyperLogLog over the timestamp and every string column of every file to choose dictionary encoding,
    # and starts its streaming engine per file). Dictionary encoding for the string columns only, whose few
    # values repeat on every row; timestamps and prices stay plain. The frame goes to Arrow once and is cut
    # there: each part converted on its own cost a third as much again. LZ4 (LZ4_RAW), not zstd: a year of a
    # symbol's day files reads in 39 ms instead of 54, for files a third larger; a small file's read is mostly
    # decompression (bench/derive.py).
    import pyarrow as pa  # on first use: 30-70 ms that a command which only reads should not pay
    import pyarrow.parquet as pq

    if lengths is None:
        lengths = [df.height]
    elif sum(lengths) != df.height or min(lengths, default=0) < 0:
        raise ValueError(f"parts of {list(lengths)} rows do not cut a frame of {df.height}")
    table = df.to_arrow()
    strings = [name for name, dtype in df.schema.items() if dtype == pl.String]
    out, at = [], 0
    for n in lengths:
        sink = pa.BufferOutputStream()
        pq.write_table(table.slice(at, n), sink, compression="lz4", use_dictionary=strings, write_statistics=True)
        out.append(sink.getvalue().to_pybytes())
        at += n
    return out


def _write_atomic(data: bytes, path: Path) -> None:
    """Readers see the old file or the new one, never a torn one: temp file, fsync, rename."""
    _write_atomic_many([data], [path])


def _write_atomic_many(datas: Sequence[bytes], paths: Sequence[Path]) -> None:
    """_write_atomic for each file: all temp files written, made durable, then each renamed over its path.

    Several files are made durable by one sync of their file system instead of one fsync each (30 day files:
    4 ms instead of 11 here); a file is renamed into place only once its bytes are on disk, so a crash, even a
    power cut, leaves each path's old file or its new one.
    """
    # Bytes encoded in memory, written in one call: a Parquet writer writing to the file itself makes many small
    # writes, which for a day's file cost more than the encoding (1.8 ms against 1.1 ms here, polars' writer).
    syncfs = _syncfs() if len(paths) > 1 else None
    temps: list[str] = []
    renamed = 0
    try:
        for data, path in zip(datas, paths):
            # Plain strings: building Path objects for the folder and the temp file of each of a month's
            # files held the GIL longer than the writing.
            folder, name = os.path.split(os.fspath(path))
            try:
                os.mkdir(folder)  # a folder just made holds no leftovers to sweep
            except FileExistsError:
                _sweep_stale_temp(folder)
            except FileNotFoundError:
                os.makedirs(folder, exist_ok=True)
            tmp = f"{folder}/{_TMP_PREFIX}{uuid.uuid4().hex}{os.path.splitext(name)[1]}"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            temps.append(tmp)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                if syncfs is None:
                    os.fsync(fd)
            finally:
                os.close(fd)
        if syncfs is not None and temps:
            syncfs(os.path.dirname(temps[-1]))
        for tmp, path in zip(temps, paths):
            os.replace(tmp, path)
            renamed += 1
    except BaseException:
        for tmp in temps[renamed:]:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        raise


@functools.cache
def _syncfs() -> Callable[[str | Path], None] | None:
    """Linux's syncfs(2) as a function of a folder (everything written to its file system reaches the disk),
    or None where there is none (then each file is fsynced)."""
    import ctypes

    try:
        call = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    call.argtypes, call.restype = [ctypes.c_int], ctypes.c_int

    def syncfs(folder: str | Path) -> None:
        fd = os.open(folder, os.O_RDONLY)
        try:
            if call(fd) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"syncfs: {os.strerror(err)}", str(folder))
        finally:
            os.close(fd)

    return syncfs


def _sweep_stale_temp(folder: str | Path) -> None:
    """Remove the temp files a killed or crashed writer left in `folder` (no reader ever sees them: globs and
    listings name part.parquet only), so they do not pile up; the next write there sweeps them. Only old ones:
    a fresh temp file may be another writer's, still in progress."""
    cutoff = time.time() - STALE_TEMP_S
    try:
        with os.scandir(folder) as entries:
            stale = [e.path for e in entries if e.name.startswith(_TMP_PREFIX) and e.stat().st_mtime < cutoff]
    except FileNotFoundError:
        return
    for leftover in stale:
        try:
            os.unlink(leftover)
        except FileNotFoundError:
            pass


def is_day_name(value: str) -> bool:
    """Whether a `date=` folder's value is a day as this module writes it, YYYY-MM-DD (fromisoformat alone
    also takes 20240102, which would sort among the days wrongly)."""
    if len(value) != 10:
        return False
    try:
        dt.date.fromisoformat(value)
    except ValueError:
        return False
    return True


def _subdirs(path: Path, prefix: str) -> Iterator[Path]:
    try:
        with os.scandir(path) as it:
            entries = sorted((e for e in it if e.is_dir() and e.name.startswith(prefix)), key=lambda e: e.name)
    except FileNotFoundError:
        return
    for e in entries:
        yield Path(e.path)


def _safe_segment(value: str) -> str:
    if not value or not all(c.isalnum() or c in "_" for c in value):
        raise StorageError(f"invalid exchange id {value!r}: letters, digits and '_' only")
    return value
