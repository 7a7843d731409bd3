"""Settings of the HTTP API, read from the environment and validated like lakehouse.config's."""

from __future__ import annotations

import dataclasses
import os
import urllib.parse
from typing import Mapping

from lakehouse.errors import ConfigError

REDIS_SCHEMES = ("redis", "rediss", "unix")


@dataclasses.dataclass(frozen=True)
class ApiSettings:
    redis_url: str | None = None
    max_rows: int = 1_000_000

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "ApiSettings":
        env = os.environ if env is None else env
        url = (env.get("LAKEHOUSE_REDIS_URL") or "").strip() or None
        if url is not None:
            parts = urllib.parse.urlsplit(url)
            if parts.scheme not in REDIS_SCHEMES or (parts.scheme != "unix" and not parts.hostname):
                # The URL may hold a password: name the variable and the expected form, not the value.
                raise ConfigError("LAKEHOUSE_REDIS_URL must be a redis:// URL such as redis://127.0.0.1:6379/0")
            try:
                parts.port  # noqa: B018  (a port like ':abc' only fails when read)
            except ValueError:
                raise ConfigError("LAKEHOUSE_REDIS_URL has an invalid port; use e.g. redis://127.0.0.1:6379/0") from None
        raw = (env.get("LAKEHOUSE_API_MAX_ROWS") or "").strip()
        max_rows = cls.max_rows
        if raw:
            try:
                max_rows = int(raw)
            except ValueError:
                raise ConfigError(f"LAKEHOUSE_API_MAX_ROWS={raw[:20]!r} is not a whole number; e.g. 1000000") from None
            if max_rows < 1:
                raise ConfigError(f"LAKEHOUSE_API_MAX_ROWS={raw[:20]!r} must be at least 1")
        return cls(redis_url=url, max_rows=max_rows)
