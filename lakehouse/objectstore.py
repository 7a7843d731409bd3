"""The object-store side of the lakehouse: `LAKEHOUSE_ROOT=s3://bucket/prefix` on S3 or any S3-compatible server.

Settings: `LAKEHOUSE_S3_ENDPOINT_URL` (e.g. http://127.0.0.1:9000 for MinIO; unset = AWS) and the usual
`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`/`AWS_DEFAULT_REGION`.
obstore (Rust object_store) does the I/O: a PUT replaces an object whole, so readers never see a torn file.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime as dt
import hashlib
import io
import os
import random
import time
import urllib.parse
from typing import Callable, Iterator, Mapping, Sequence

import polars as pl

from .errors import ConfigError, CorruptPartitionError, StorageError
from .schema import LAYERS, UNPARTITIONED_LAYERS, conform, empty
from .storage import (META_DIR, PART_FILE, PartitionRef, PartitionStat, Storage, _safe_segment, check_partitioned,
                      is_day_name, parquet_bytes)
from .symbols import decode_symbol, encode_symbol
from .timeutil import parse_day

SCHEME = "s3://"
ENDPOINT_ENV = "LAKEHOUSE_S3_ENDPOINT_URL"


class ObjectStoreError(StorageError, ConfigError):
    """The bucket does not exist, access is denied or the endpoint is unreachable: a setting to fix."""


def is_object_url(root: str | os.PathLike) -> bool:
    return str(root).startswith(SCHEME)


@dataclasses.dataclass(frozen=True)
class S3Location:
    bucket: str
    prefix: str  # no leading or trailing '/'; '' = the whole bucket
    endpoint: str | None
    region: str

    @property
    def url(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.prefix}" if self.prefix else f"{SCHEME}{self.bucket}"

    def key_url(self, key: str) -> str:
        return f"{self.url}/{key}"


def parse_location(root: str, env: Mapping[str, str] | None = None) -> S3Location:
    """s3://bucket/prefix plus the endpoint and region from the environment; ConfigError names a bad value."""
    env = os.environ if env is None else env
    rest = str(root)[len(SCHEME):]
    bucket, _, prefix = rest.partition("/")
    # S3 bucket naming rules, loosely: what would fail later with a confusing 400 fails here with the fix.
    if not bucket or not all(c.isalnum() or c in "-." for c in bucket) or not 3 <= len(bucket) <= 63:
        raise ConfigError(f"LAKEHOUSE_ROOT={str(root)[:80]!r} has no valid bucket name; use s3://my-bucket/lakehouse")
    prefix = prefix.strip("/")
    if any(part in ("", ".", "..") for part in prefix.split("/")) and prefix:
        raise ConfigError(f"LAKEHOUSE_ROOT={str(root)[:80]!r} has an empty, '.' or '..' path segment")
    endpoint = (env.get(ENDPOINT_ENV) or "").strip() or None
    if endpoint is not None:
        parts = urllib.parse.urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"{ENDPOINT_ENV}={endpoint[:80]!r} must be an http(s) URL such as http://127.0.0.1:9000")
        endpoint = endpoint.rstrip("/")
    region = (env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1").strip()
    return S3Location(bucket, prefix, endpoint, region)


def open_store(loc: S3Location, env: Mapping[str, str] | None = None):
    """An obstore S3Store for the location; credentials come from AWS_* (or the instance's role when unset)."""
    from obstore.store import S3Store

    env = os.environ if env is None else env
    config: dict[str, str] = {"region": loc.region}
    if loc.endpoint:
        config["endpoint"] = loc.endpoint
        # S3-compatible servers (MinIO, moto, SeaweedFS) serve buckets by path, not by DNS name.
        config["virtual_hosted_style_request"] = "false"
    for key, name in (("access_key_id", "AWS_ACCESS_KEY_ID"), ("secret_access_key", "AWS_SECRET_ACCESS_KEY"),
                      ("session_token", "AWS_SESSION_TOKEN")):
        if env.get(name):
            config[key] = env[name]
    # Conditional PUTs (If-Match / If-None-Match) serialize read-modify-writes of the small metadata documents.
    config["conditional_put"] = "etag"
    client_options = {"allow_http": True, "timeout": "30s", "connect_timeout": "5s"}
    retry_config = {"max_retries": 3, "retry_timeout": dt.timedelta(seconds=30),
                    "backoff": {"init_backoff": dt.timedelta(milliseconds=100), "max_backoff": dt.timedelta(seconds=2),
                                "base": 2}}
    return S3Store(loc.bucket, prefix=loc.prefix or None, config=config, client_options=client_options,
                   retry_config=retry_config)


def explain(exc: BaseException, loc: S3Location) -> ObjectStoreError | None:
    """An ObjectStoreError saying what to fix for a missing bucket, denied access or unreachable endpoint."""
    from obstore import exceptions as oe

    text = str(exc)
    where = loc.endpoint or "AWS S3"
    if "NoSuchBucket" in text or "bucket does not exist" in text.lower():
        return ObjectStoreError(f"bucket {loc.bucket!r} does not exist at {where}: create it, or fix LAKEHOUSE_ROOT "
                                f"({loc.url})")
    if isinstance(exc, (oe.PermissionDeniedError, oe.UnauthenticatedError)) or any(
            code in text for code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403")):
        return ObjectStoreError(f"access to {loc.url} at {where} denied: check AWS_ACCESS_KEY_ID / "
                                f"AWS_SECRET_ACCESS_KEY and the bucket's policy")
    if any(s in text for s in ("onnection refused", "error sending request", "dns error", "timed out",
                               "Connect", "tcp connect")):
        return ObjectStoreError(f"cannot reach the object store at {where} for {loc.url}: check "
                                f"{ENDPOINT_ENV} and the network")
    return None


def duckdb_attach(con, loc: S3Location, env: Mapping[str, str] | None = None) -> None:
    """Let a DuckDB connection read s3:// paths of this location: httpfs from its PyPI wheel, a scoped secret.

    Nothing is downloaded: the extension file ships in the `duckdb-extension-httpfs` package.
    """
    import duckdb_extension_httpfs  # the wheel's extension, built for the pinned duckdb version
    import duckdb

    env = os.environ if env is None else env
    ext_dir = os.path.join(os.path.dirname(duckdb_extension_httpfs.__file__), "extensions", f"v{duckdb.__version__}")
    path = os.path.join(ext_dir, "httpfs.duckdb_extension")
    if not os.path.exists(path):
        raise ObjectStoreError(f"duckdb {duckdb.__version__} has no matching duckdb-extension-httpfs; install "
                               f"duckdb-extension-httpfs=={duckdb.__version__}")
    con.execute("SET autoinstall_known_extensions = false")
    con.execute("SET autoload_known_extensions = false")
    con.execute(f"LOAD '{path}'")
    opts = [f"SCOPE '{_sql_str(loc.url)}'", f"REGION '{_sql_str(loc.region)}'"]
    if env.get("AWS_ACCESS_KEY_ID"):
        opts += [f"KEY_ID '{_sql_str(env['AWS_ACCESS_KEY_ID'])}'",
                 f"SECRET '{_sql_str(env.get('AWS_SECRET_ACCESS_KEY', ''))}'"]
        if env.get("AWS_SESSION_TOKEN"):
            opts.append(f"SESSION_TOKEN '{_sql_str(env['AWS_SESSION_TOKEN'])}'")
    if loc.endpoint:
        parts = urllib.parse.urlsplit(loc.endpoint)
        opts += [f"ENDPOINT '{_sql_str(parts.netloc)}'", "URL_STYLE 'path'",
                 f"USE_SSL {'true' if parts.scheme == 'https' else 'false'}"]
    # A temporary (in-memory) secret: never written to disk, gone with the connection.
    con.execute(f"CREATE OR REPLACE TEMPORARY SECRET lakehouse_s3 (TYPE s3, {', '.join(opts)})")


def _sql_str(value: str) -> str:
    return value.replace("'", "''")




# The lakehouse on an object store ------------------------------------------------------------------------------

_FETCH_THREADS = 16  # GETs of small objects are latency-bound: overlap them
_CAS_ATTEMPTS = 50


class ObjectStorage(Storage):
    """The same lakehouse as Storage with the files as objects of s3://bucket/prefix (keys mirror the paths).

    Every object is written by one PUT (never visible half-written); change detection uses the listing's
    size + ETag + last-modified; read-modify-writes of metadata use conditional PUTs (If-Match/If-None-Match).
    """

    def __init__(self, root: str, env: Mapping[str, str] | None = None):
        self.loc = parse_location(str(root), env)
        self.root = self.loc.url
        self._store = open_store(self.loc, env)

    def __repr__(self) -> str:
        return f"ObjectStorage({self.root!r})"

    # keys and locations ----------------------------------------------------------------------
    def _layer_dir(self, layer: str) -> str:
        if layer not in LAYERS:
            raise StorageError(f"unknown layer {layer!r}; known: {sorted(LAYERS)}")
        return layer

    def _symbol_key(self, layer: str, exchange: str, symbol: str) -> str:
        return f"{self._layer_dir(layer)}/exchange={_safe_segment(exchange)}/symbol={encode_symbol(symbol)}"

    def _partition_key(self, layer: str, exchange: str, symbol: str, day) -> str:
        return f"{self._symbol_key(layer, exchange, symbol)}/date={parse_day(day).isoformat()}/{PART_FILE}"

    def _key_of(self, location: str) -> str:
        head = self.loc.url + "/"
        if not str(location).startswith(head):
            raise StorageError(f"refusing a location outside the lakehouse root: {location}")
        return str(location)[len(head):]

    def symbol_dir(self, layer: str, exchange: str, symbol: str) -> str:
        return self.loc.key_url(self._symbol_key(layer, exchange, symbol))

    def partition_path(self, layer: str, exchange: str, symbol: str, day) -> str:
        return self.loc.key_url(self._partition_key(layer, exchange, symbol, day))

    def glob(self, layer: str) -> str:
        return self.loc.key_url(f"{self._layer_dir(layer)}/exchange=*/symbol=*/date=*/{PART_FILE}")

    def table_path(self, layer: str) -> str:
        if layer not in UNPARTITIONED_LAYERS:
            raise StorageError(f"{layer} is partitioned by symbol x day: use write_partition/read_partition")
        return self.loc.key_url(f"{layer}/{PART_FILE}")

    def meta_path(self, name: str) -> str:
        return self.loc.key_url(self._meta_key(name))

    def _meta_key(self, name: str) -> str:
        parts = str(name).split("/")
        if not name or any(p in ("", ".", "..") for p in parts):
            raise StorageError(f"refusing a metadata path outside {self.loc.key_url(META_DIR)}: {name!r}")
        return f"{META_DIR}/{name}"

    def day_locator(self, layer: str, exchange: str, symbol: str) -> Callable[[str], str]:
        base = self.loc.key_url(self._symbol_key(layer, exchange, symbol))
        return lambda day: f"{base}/date={day}/{PART_FILE}"

    # object I/O with errors that say what to fix ---------------------------------------------
    def _fail(self, exc: BaseException, what: str) -> StorageError:
        return explain(exc, self.loc) or StorageError(f"{what} failed on {self.loc.url}: {_short(exc)}")

    def _read(self, key: str, call):
        """call(store, key) or None when the key does not exist; a missing bucket is an error, not a miss."""
        try:
            return call(self._store, key)
        except FileNotFoundError as exc:
            if "NoSuchBucket" in str(exc):
                raise self._fail(exc, f"reading {key}") from None
            return None
        except Exception as exc:
            raise self._fail(exc, f"reading {key}") from None

    def _get(self, key: str, with_meta: bool = False):
        import obstore

        def get(store, k):
            result = obstore.get(store, k)
            body = bytes(result.bytes())
            return (body, result.meta) if with_meta else body

        return self._read(key, get)

    def _put(self, key: str, body: bytes, mode=None) -> None:
        import obstore

        try:
            # One PUT request: S3 makes an object visible only once it is complete.
            obstore.put(self._store, key, body, mode=mode, use_multipart=False)
        except FileNotFoundError as exc:
            raise self._fail(exc, f"writing {key}") from None

    def _head(self, key: str) -> dict | None:
        import obstore

        return self._read(key, obstore.head)

    def _list(self, prefix: str) -> Iterator[dict]:
        import obstore

        try:
            for chunk in obstore.list(self._store, prefix, chunk_size=1000):
                yield from chunk
        except Exception as exc:
            raise self._fail(exc, f"listing {prefix}") from None

    def _list_dirs(self, prefix: str) -> list[str]:
        import obstore

        try:
            return sorted(obstore.list_with_delimiter(self._store, prefix)["common_prefixes"])
        except Exception as exc:
            raise self._fail(exc, f"listing {prefix}") from None

    def check(self) -> None:
        """Raise ObjectStoreError unless the bucket exists and lists: a missing bucket fails early and clearly."""
        self._list_dirs(None)

    # writes ----------------------------------------------------------------------------------
    def write_encoded(self, layer: str, exchange: str, symbol: str, day: dt.date, data: bytes) -> str:
        check_partitioned(layer)
        key = self._partition_key(layer, exchange, symbol, day)
        self._put_bytes(key, data)
        return self.loc.key_url(key)

    def write_encoded_many(self, layer: str, exchange: str, symbol: str,
                           files: Sequence[tuple[dt.date, bytes]]) -> list[str]:
        if len(files) < 2:
            return [self.write_encoded(layer, exchange, symbol, day, data) for day, data in files]
        with concurrent.futures.ThreadPoolExecutor(min(_FETCH_THREADS, len(files))) as pool:  # PUTs are round trips
            return list(pool.map(lambda file: self.write_encoded(layer, exchange, symbol, *file), files))

    def _put_bytes(self, key: str, data: bytes) -> None:
        try:
            self._put(key, data)
        except StorageError:
            raise
        except Exception as exc:
            raise self._fail(exc, f"writing {key}") from None

    def delete_partition(self, layer: str, exchange: str, symbol: str, day: dt.date) -> bool:
        import obstore

        key = self._partition_key(layer, exchange, symbol, day)
        if self._head(key) is None:
            return False
        try:
            obstore.delete(self._store, key)
        except Exception as exc:
            raise self._fail(exc, f"deleting {key}") from None
        return True

    def write_table(self, layer: str, df: pl.DataFrame) -> str:
        path = self.table_path(layer)
        self._put_bytes(self._key_of(path), parquet_bytes(conform(df, layer)))
        return path

    def write_meta(self, name: str, data: bytes) -> None:
        try:
            self._put(self._meta_key(name), data)
        except StorageError:
            raise
        except Exception as exc:
            raise self._fail(exc, f"writing {name}") from None

    def update_meta(self, name: str, change: Callable[[bytes | None], bytes | None]) -> None:
        """Optimistic read-modify-write: a PUT conditional on the ETag read, retried when another writer won."""
        from obstore.exceptions import AlreadyExistsError, PreconditionError

        key = self._meta_key(name)
        for attempt in range(_CAS_ATTEMPTS):
            got = self._get(key, with_meta=True)
            body = change(got[0] if got else None)
            if body is None:
                return
            mode = {"e_tag": got[1]["e_tag"]} if got else "create"
            try:
                self._put(key, body, mode=mode)
                return
            except (AlreadyExistsError, PreconditionError):
                time.sleep(random.uniform(0.005, 0.05) * (1 + attempt))  # another writer won: read again
            except StorageError:
                raise
            except Exception as exc:
                raise self._fail(exc, f"writing {name}") from None
        raise StorageError(f"{self.meta_path(name)}: {_CAS_ATTEMPTS} concurrent updates in a row lost; try again")

    def attach_duckdb(self, con) -> None:
        duckdb_attach(con, self.loc)

    # reads -----------------------------------------------------------------------------------
    def read_meta(self, name: str) -> bytes | None:
        return self._get(self._meta_key(name))

    def _read_parquet(self, key: str, **kw) -> pl.DataFrame | None:
        body = self._get(key)
        if body is None:
            return None
        try:
            return pl.read_parquet(io.BytesIO(body), **kw)
        except Exception as exc:
            raise CorruptPartitionError(f"{self.loc.key_url(key)} is unreadable "
                                        f"({exc.__class__.__name__}: {exc})") from exc

    def read_partition(self, layer: str, exchange: str, symbol: str, day: dt.date) -> pl.DataFrame | None:
        df = self._read_parquet(self._partition_key(layer, exchange, symbol, day))
        return None if df is None else conform(df, layer)

    def read_table(self, layer: str) -> pl.DataFrame:
        df = self._read_parquet(self._key_of(self.table_path(layer)))
        return empty(layer) if df is None else conform(df, layer)

    def table_exists(self, layer: str) -> bool:
        return self._head(self._key_of(self.table_path(layer))) is not None

    def has_partitions(self, layer: str) -> bool:
        return next(self.list_partitions(layer), None) is not None

    def partition_modified_ns(self, layer: str, exchange: str, symbol: str, day: dt.date) -> int | None:
        meta = self._head(self._partition_key(layer, exchange, symbol, day))
        return None if meta is None else int(meta["last_modified"].timestamp() * 1e9)

    def read_range(
        self, layer: str, exchange: str, symbol: str, start: dt.date, end: dt.date,
        *, columns: Sequence[str] | None = None, filter: pl.Expr | None = None,
    ) -> pl.DataFrame:
        schema = LAYERS[layer]
        cols = list(columns) if columns is not None else list(schema)
        unknown = [c for c in cols if c not in schema]
        if unknown:
            raise StorageError(f"{layer} has no column(s) {unknown}; known: {list(schema)}")
        frames = [f for _day, f in self._fetch_days(layer, exchange, symbol, lambda d: start <= d <= end)]
        if not frames:
            return empty(layer).select(cols)
        df = pl.concat(frames, how="vertical")
        if filter is not None:
            df = df.filter(filter)
        df = df.select(cols)
        if "timestamp" in cols and not df.get_column("timestamp").is_sorted():
            df = df.sort("timestamp", maintain_order=True)
        return df

    def read_days(self, layer: str, exchange: str, symbol: str, days: Sequence[dt.date],
                  day_column: str = "_day") -> pl.DataFrame:
        # Each object through our own client (endpoint, credentials, retries): polars given s3:// URLs would go to
        # AWS itself, whatever endpoint the lakehouse is configured with.
        wanted = set(days)
        none = empty(layer).with_columns(pl.lit(None, dtype=pl.Date).alias(day_column))
        return pl.concat([none, *(f.with_columns(pl.lit(day, dtype=pl.Date).alias(day_column))
                                  for day, f in self._fetch_days(layer, exchange, symbol, wanted.__contains__))],
                         how="vertical")

    def _fetch_days(self, layer: str, exchange: str, symbol: str,
                    wanted: Callable[[dt.date], bool]) -> list[tuple[dt.date, pl.DataFrame]]:
        """(day, conformed frame) of the symbol's partitions whose day is wanted, fetched in parallel, in day
        order; an object deleted since the listing is left out."""
        found = [(s.ref.day, self._key_of(str(s.path))) for s in self.list_partitions(layer, exchange, symbol)
                 if wanted(s.ref.day)]
        if not found:
            return []
        with concurrent.futures.ThreadPoolExecutor(min(_FETCH_THREADS, len(found))) as pool:
            frames = list(pool.map(self._read_parquet, [key for _day, key in found]))
        return [(day, conform(f, layer)) for (day, _key), f in zip(found, frames) if f is not None]

    def read_stored(self, path: str) -> pl.DataFrame:
        key = self._key_of(path)
        body = self._get(key)
        if body is None:
            raise FileNotFoundError(path)
        try:
            return pl.read_parquet(io.BytesIO(body), parallel="none")
        except Exception as exc:
            raise CorruptPartitionError(f"{path} is unreadable ({exc.__class__.__name__}: {exc})") from exc

    # listings --------------------------------------------------------------------------------
    def list_partitions(
        self, layer: str, exchange: str | None = None, symbol: str | None = None
    ) -> Iterator[PartitionStat]:
        """Every partition object of a layer with its size and last-modified time, from listings only."""
        if exchange is not None and symbol is not None:
            prefix = self._symbol_key(layer, exchange, symbol)
        elif exchange is not None:
            prefix = f"{self._layer_dir(layer)}/exchange={_safe_segment(exchange)}"
        else:
            prefix = self._layer_dir(layer)
        found = []
        for meta in self._list(prefix):
            ref = _parse_key(layer, meta["path"])
            if ref is None or (symbol is not None and ref.symbol != symbol):
                continue
            found.append(PartitionStat(ref, self.loc.key_url(meta["path"]), meta["size"],
                                       int(meta["last_modified"].timestamp() * 1e9)))
        found.sort(key=lambda s: (s.ref.exchange, s.ref.symbol, s.ref.day))
        yield from found

    def symbols(self, layer: str, exchange: str | None = None) -> list[tuple[str, str]]:
        out = []
        for ex_prefix in self._list_dirs(self._layer_dir(layer)):
            ex = ex_prefix.rsplit("/", 1)[-1].partition("=")[2]
            if not ex_prefix.rsplit("/", 1)[-1].startswith("exchange=") or (exchange is not None and ex != exchange):
                continue
            for sym_prefix in self._list_dirs(ex_prefix):
                name = sym_prefix.rsplit("/", 1)[-1]
                if name.startswith("symbol="):
                    try:
                        out.append((ex, decode_symbol(name.partition("=")[2])))
                    except Exception:
                        continue
        return sorted(out)

    def disk_usage_bytes(self) -> int:
        return sum(meta["size"] for meta in self._list(None))

    def stat_days(self, layer: str, exchange: str, symbol: str) -> dict[str, tuple[int, int, int]]:
        """{'YYYY-MM-DD': (size, last_modified_ns, etag_token)} from one listing, no object opened.

        Listings give last-modified to the second, so the ETag's digest tells a same-size rewrite within the
        same second apart (the manifest compares all three); the audit orders layers by last-modified.
        """
        out: dict[str, tuple[int, int, int]] = {}
        tail = "/" + PART_FILE
        for meta in self._list(self._symbol_key(layer, exchange, symbol)):
            path = meta["path"]
            if not path.endswith(tail):
                continue
            date_part = path[: -len(tail)].rsplit("/", 1)[-1]
            if date_part.startswith("date=") and is_day_name(date_part[5:]):
                out[date_part[5:]] = (meta["size"], int(meta["last_modified"].timestamp() * 1e9), _etag_token(meta))
        return out


def _etag_token(meta: Mapping) -> int:
    """A 62-bit integer that changes when the object's content (ETag) or version changes."""
    raw = f"{meta.get('e_tag')}|{meta.get('version')}".encode()
    return int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "big") >> 2


def _parse_key(layer: str, key: str) -> PartitionRef | None:
    parts = key.split("/")
    if len(parts) != 5 or parts[0] != layer or parts[4] != PART_FILE:
        return None
    try:
        ex = parts[1].split("=", 1)[1] if parts[1].startswith("exchange=") else None
        sym = decode_symbol(parts[2].split("=", 1)[1]) if parts[2].startswith("symbol=") else None
        value = parts[3].split("=", 1)[1] if parts[3].startswith("date=") else ""
        day = dt.date.fromisoformat(value) if is_day_name(value) else None
    except Exception:
        return None  # a foreign object is not ours to interpret
    if ex is None or sym is None or day is None:
        return None
    return PartitionRef(layer, ex, sym, day)


def _short(exc: BaseException) -> str:
    text = str(exc).split("\n\nDebug source", 1)[0]
    return text if len(text) <= 300 else text[:297] + "..."

__all__ = ["ENDPOINT_ENV", "ObjectStorage", "ObjectStoreError", "S3Location", "duckdb_attach", "explain", "is_object_url",
           "open_store", "parse_location"]
