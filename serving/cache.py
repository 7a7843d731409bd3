"""HTTP validators from the partition files a response reads, and the optional shared response cache.

A response's identity is (what was asked, the stat of every file it reads): a rematerialized partition is
written by an atomic rename, so its (size, mtime_ns) change, the ETag changes, and a cache entry keyed by it is
never served again (it simply ages out). Nothing has to be invalidated by hand.
"""

from __future__ import annotations

import collections
import email.utils
import hashlib
import logging
import threading
import time
from typing import Iterable

log = logging.getLogger("lakehouse.api")

Stat = tuple[str, int, int]  # (name, size, mtime_ns)
KEY_PREFIX = "lakehouse:api:v1:"
TTL_S = 600  # entries of superseded files expire on their own


class Validators:
    """ETag and Last-Modified of one response, from the stats of the files behind it."""

    def __init__(self, request_key: str, stats: Iterable[Stat]):
        stats = sorted(stats)
        h = hashlib.blake2b(request_key.encode(), digest_size=16)
        for name, size, mtime in stats:
            h.update(f"\0{name}\0{size}\0{mtime}".encode())
        self.digest = h.hexdigest()
        self.etag = f'"{self.digest}"'
        newest = max((m for _n, _s, m in stats), default=None)
        self.last_modified_s = None if newest is None else newest // 1_000_000_000
        self.last_modified = None if newest is None else email.utils.formatdate(self.last_modified_s, usegmt=True)

    def not_modified(self, if_none_match: str | None, if_modified_since: str | None) -> bool:
        """RFC 9110: If-None-Match decides when present; else If-Modified-Since against Last-Modified."""
        if if_none_match is not None:
            tags = [t.strip() for t in if_none_match.split(",")]
            return "*" in tags or self.etag in tags or f"W/{self.etag}" in tags
        if if_modified_since and self.last_modified_s is not None:
            try:
                since = email.utils.parsedate_to_datetime(if_modified_since)
            except (TypeError, ValueError):
                return False
            if since is None or since.tzinfo is None:
                return False
            return self.last_modified_s <= int(since.timestamp())
        return False

    def headers(self, cache_control: str) -> dict[str, str]:
        out = {"ETag": self.etag, "Cache-Control": cache_control}
        if self.last_modified:
            out["Last-Modified"] = self.last_modified
        return out


class MemoryCache:
    """A small per-process LRU of response bodies (used when no Redis is configured)."""

    def __init__(self, max_bytes: int = 64 * 1024 * 1024):
        self.max_bytes = max_bytes
        self._items: collections.OrderedDict[str, tuple[float, bytes]] = collections.OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.name = "memory"

    def get(self, key: str) -> bytes | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            if item[0] < time.monotonic():
                self._drop(key)
                return None
            self._items.move_to_end(key)
            return item[1]

    get_local = get  # what can be answered without leaving the event loop

    def set(self, key: str, body: bytes) -> None:
        if len(body) > self.max_bytes // 8:
            return
        with self._lock:
            if key in self._items:
                self._drop(key)
            self._items[key] = (time.monotonic() + TTL_S, body)
            self._bytes += len(body)
            while self._bytes > self.max_bytes:
                self._drop(next(iter(self._items)))

    def _drop(self, key: str) -> None:
        _exp, body = self._items.pop(key)
        self._bytes -= len(body)


class RedisCache:
    """The shared cache: every worker and every API process on the host sees the same entries.

    A Redis that is down or slow costs a log line and an uncached read, never a failed request.
    """

    def __init__(self, url: str):
        import redis

        self.name = "redis"
        self.url_host = _host_only(url)
        self._client = redis.Redis.from_url(url, socket_timeout=0.25, socket_connect_timeout=0.25)
        self._down_until = 0.0

    def _usable(self) -> bool:
        return time.monotonic() >= self._down_until

    def _failed(self, exc: Exception) -> None:
        log.warning("Redis cache at %s unavailable (%s); serving uncached for 10 s", self.url_host,
                    exc.__class__.__name__)
        self._down_until = time.monotonic() + 10

    def get(self, key: str) -> bytes | None:
        if not self._usable():
            return None
        try:
            return self._client.get(KEY_PREFIX + key)
        except Exception as exc:  # redis.RedisError and socket errors alike
            self._failed(exc)
            return None

    def set(self, key: str, body: bytes) -> None:
        if not self._usable():
            return
        try:
            self._client.set(KEY_PREFIX + key, body, ex=TTL_S)
        except Exception as exc:
            self._failed(exc)

    def ping(self) -> bool:
        try:
            return bool(self._client.ping())
        except Exception:
            return False


def _host_only(url: str) -> str:
    """'redis://:secret@host:6379/0' -> 'host:6379': a password never reaches a log or a response."""
    import urllib.parse

    parts = urllib.parse.urlsplit(url)
    return f"{parts.hostname or '?'}:{parts.port or 6379}"


class TieredCache:
    """A per-process LRU in front of Redis: a hot key costs no network round trip, and a key one process
    computed is a hit for every other process. Both levels are keyed by the files' stats, so neither can serve
    a superseded partition."""

    def __init__(self, redis_cache: RedisCache, memory: MemoryCache | None = None):
        self.redis = redis_cache
        self.memory = memory or MemoryCache(16 * 1024 * 1024)
        self.name = "redis"

    def get(self, key: str) -> bytes | None:
        body = self.memory.get(key)
        if body is None:
            body = self.redis.get(key)
            if body is not None:
                self.memory.set(key, body)
        return body

    def get_local(self, key: str) -> bytes | None:
        return self.memory.get(key)

    def set(self, key: str, body: bytes) -> None:
        self.memory.set(key, body)
        self.redis.set(key, body)

    def ping(self) -> bool:
        return self.redis.ping()


def make_cache(redis_url: str | None):
    return TieredCache(RedisCache(redis_url)) if redis_url else MemoryCache()
