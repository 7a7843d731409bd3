"""Settings read from the environment, validated once, each with a documented default."""

from __future__ import annotations

import dataclasses
import datetime as dt
import difflib
import importlib.util
import math
import os
import re
import tempfile
import urllib.parse
from pathlib import Path
from typing import Mapping

from .errors import ConfigError, UserInputError, shorten
from .timeutil import parse_day

SIMULATED = "simulated"
# Kline requests in flight per fetch. At 50 ms +- 20 of latency 8 left a symbol's 44 pages about six round
# trips long and throughput at 0.75-0.78 of the no-latency figure; 16 halves the round trips (bench/ingest.py's
# latency ratio), and lets a distant client reach the weight budget, which still binds.
DEFAULT_FETCH_CONCURRENCY = 16
# Symbols of one run fetched side by side (ingest_symbols: a client each, all within that one bound of requests
# in flight): with 8, a daily update of 100 symbols waits ~13 round trips instead of 100, and one symbol's first
# pages overlap another's last (bench/ingest.py).
SYMBOLS_AT_ONCE = 8
ARCHIVE_DEFAULTS = {"binance": "https://data.binance.vision"}  # exchanges whose bulk kline archive we can read


def _float(env: Mapping[str, str], name: str, default: float, minimum: float = 0.0) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={shorten(raw)!r} is not a number; set it to e.g. {default}") from None
    if not math.isfinite(value):
        raise ConfigError(f"{name}={shorten(raw)!r} must be a finite number; set it to e.g. {default}")
    if value < minimum:
        raise ConfigError(f"{name}={shorten(raw)!r} must be >= {minimum}; set it to e.g. {default}")
    return value


def _exchange(env: Mapping[str, str]) -> str:
    raw = env.get("LAKEHOUSE_EXCHANGE") or SIMULATED
    exchange = raw.strip().lower()
    if exchange == SIMULATED:
        return exchange
    known = ccxt_exchange_ids()
    if exchange not in known:
        close = difflib.get_close_matches(exchange, known, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"LAKEHOUSE_EXCHANGE: unknown exchange {shorten(raw)!r}.{hint} Use a ccxt exchange id "
                          f"(e.g. binance) or {SIMULATED!r} for the offline exchange.")
    return exchange


def ccxt_exchange_ids() -> list[str]:
    """The exchange ids ccxt ships (one module each), read from its package without importing it: importing
    ccxt loads every exchange, which no command should pay for just to check a setting."""
    spec = importlib.util.find_spec("ccxt")
    folders = spec.submodule_search_locations if spec is not None else None
    return sorted(p.stem for folder in folders or () for p in Path(folder).glob("*.py")
                  if re.fullmatch(r"[a-z][a-z0-9_]*", p.stem))


def _http_url(env: Mapping[str, str], name: str, example: str, secret_path: bool = False) -> str | None:
    raw = (env.get(name) or "").strip()
    if not raw:
        return None
    # A webhook URL's path is its secret: a message may show the scheme and host only.
    shown = shorten(raw) if not secret_path else _origin(raw)
    try:
        parts = urllib.parse.urlsplit(raw)
    except ValueError:
        raise ConfigError(f"{name}={shown!r} is not a URL; use e.g. {example}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{name}={shown!r} must be an http(s) URL such as {example}")
    try:
        parts.port  # noqa: B018  (a port like ':abc' only fails when read)
    except ValueError:
        raise ConfigError(f"{name}={shown!r} has an invalid port; use e.g. {example}") from None
    return raw


def _archive_url(env: Mapping[str, str], exchange: str, exchange_url: str | None) -> str | None:
    """LAKEHOUSE_ARCHIVE_URL: a URL, `off`, or unset for the exchange's own archive. Behind
    LAKEHOUSE_EXCHANGE_URL (a proxy or the emulator) the default is off: files from the real exchange must
    not be mixed with whatever that URL serves, so the archive is then named explicitly."""
    if (env.get("LAKEHOUSE_ARCHIVE_URL") or "").strip().lower() == "off":
        return None
    url = _http_url(env, "LAKEHOUSE_ARCHIVE_URL", "https://data.binance.vision (or off)")
    if url or exchange_url:
        return url
    return ARCHIVE_DEFAULTS.get(exchange)


def _service_url(env: Mapping[str, str], name: str, schemes: tuple[str, ...], example: str) -> str | None:
    raw = (env.get(name) or "").strip()
    if not raw:
        return None
    parts = urllib.parse.urlsplit(raw)
    if parts.scheme.split("+")[0] not in schemes or not parts.hostname:
        # The value may hold a password: name the setting and the expected form, never echo it.
        raise ConfigError(f"{name} must be a URL such as {example} (scheme {parts.scheme or 'missing'!r} "
                          f"is not one of {', '.join(schemes)})")
    try:
        parts.port  # noqa: B018
    except ValueError:
        raise ConfigError(f"{name} has an invalid port; use e.g. {example}") from None
    return raw
def _origin(url: str) -> str:
    """scheme://host[:port] of a URL, or a placeholder when even that does not parse."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.netloc.rsplit("@", 1)[-1]
    except ValueError:
        return "<unparseable URL>"
    return f"{parts.scheme}://{host}/..." if parts.scheme and host else "<not a URL, value hidden>"


@dataclasses.dataclass(frozen=True)
class Settings:
    """Every knob of the lakehouse; README's "Configuration" table documents each one."""

    root: str = "data"
    exchange: str = SIMULATED
    exchange_url: str | None = None
    request_timeout_s: float = 10.0
    max_request_retries: int = 5
    history_start: dt.date = dt.date(2017, 7, 1)
    freshness_warn_hours: float = 2.0
    freshness_fail_hours: float = 24.0
    stale_lag_minutes: float = 5.0
    repair_interval_s: int = 60
    notify_interval_s: int = 30
    webhook_url: str | None = None
    ui_url: str | None = None
    # A refetch that returns the same gaps is retried after retry_delay_minutes, doubling up to the max;
    # after gap_confirm_attempts identical answers the gap is recorded as confirmed at the source.
    gap_confirm_attempts: int = 3
    retry_delay_minutes: float = 15.0
    retry_max_delay_minutes: float = 360.0
    repair_max_runs: int = 20
    fetch_concurrency: int = DEFAULT_FETCH_CONCURRENCY
    # Where closed days are downloaded as verified bulk files instead of REST pages; None: REST only.
    archive_url: str | None = None
    # Scale-out (README "Deployment"): a Postgres instance and steps on Celery workers; unset = embedded SQLite
    # and steps in the run's own process.
    postgres_url: str | None = None
    celery_broker_url: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        env = os.environ if env is None else env
        exchange = _exchange(env)
        url = _http_url(env, "LAKEHOUSE_EXCHANGE_URL", "http://127.0.0.1:8090")
        warn = _float(env, "LAKEHOUSE_FRESHNESS_WARN_HOURS", cls.freshness_warn_hours, 0.01)
        fail = _float(env, "LAKEHOUSE_FRESHNESS_FAIL_HOURS", cls.freshness_fail_hours, 0.01)
        if fail < warn:
            raise ConfigError(
                f"LAKEHOUSE_FRESHNESS_FAIL_HOURS ({fail}) must be >= LAKEHOUSE_FRESHNESS_WARN_HOURS ({warn})"
            )
        history_start = env.get("LAKEHOUSE_HISTORY_START")
        try:
            history_day = parse_day(history_start, "LAKEHOUSE_HISTORY_START") if history_start else cls.history_start
        except UserInputError as exc:
            raise ConfigError(str(exc)) from None
        root = (env.get("LAKEHOUSE_ROOT") or cls.root).strip()
        if root.startswith("s3://"):
            from .objectstore import parse_location

            parse_location(root, env)  # a bad bucket or endpoint fails here, naming the setting
        elif "://" in root:
            raise ConfigError(f"LAKEHOUSE_ROOT={root[:80]!r}: only local folders and s3://bucket/prefix are supported")
        postgres_url = _service_url(env, "LAKEHOUSE_POSTGRES_URL", ("postgresql", "postgres"),
                                    "postgresql://postgres@127.0.0.1:5432/lakehouse")
        broker = _service_url(env, "LAKEHOUSE_CELERY_BROKER_URL", ("amqp", "pyamqp", "redis", "rediss"),
                              "amqp://guest:guest@127.0.0.1:5672//")
        return cls(
            postgres_url=postgres_url,
            celery_broker_url=broker,
            root=root,
            exchange=exchange,
            exchange_url=url,
            request_timeout_s=_float(env, "LAKEHOUSE_TIMEOUT_S", cls.request_timeout_s, 0.1),
            max_request_retries=int(_float(env, "LAKEHOUSE_MAX_RETRIES", cls.max_request_retries)),
            history_start=history_day,
            freshness_warn_hours=warn,
            freshness_fail_hours=fail,
            stale_lag_minutes=_float(env, "LAKEHOUSE_STALE_LAG_MINUTES", cls.stale_lag_minutes),
            repair_interval_s=int(_float(env, "LAKEHOUSE_REPAIR_INTERVAL_S", cls.repair_interval_s, 1)),
            notify_interval_s=int(_float(env, "LAKEHOUSE_NOTIFY_INTERVAL_S", cls.notify_interval_s, 1)),
            webhook_url=_http_url(env, "LAKEHOUSE_WEBHOOK_URL", "https://hooks.slack.com/services/T000/B000/XXXX",
                                  secret_path=True),
            ui_url=(_http_url(env, "LAKEHOUSE_UI_URL", "http://127.0.0.1:3000") or "").rstrip("/") or None,
            gap_confirm_attempts=int(_float(env, "LAKEHOUSE_GAP_CONFIRM_ATTEMPTS", cls.gap_confirm_attempts, 1)),
            retry_delay_minutes=_float(env, "LAKEHOUSE_RETRY_DELAY_MINUTES", cls.retry_delay_minutes),
            retry_max_delay_minutes=_float(env, "LAKEHOUSE_RETRY_MAX_DELAY_MINUTES", cls.retry_max_delay_minutes),
            repair_max_runs=int(_float(env, "LAKEHOUSE_REPAIR_MAX_RUNS", cls.repair_max_runs, 1)),
            fetch_concurrency=int(_float(env, "LAKEHOUSE_FETCH_CONCURRENCY", cls.fetch_concurrency, 1)),
            archive_url=_archive_url(env, exchange, url),
        )

    @property
    def root_path(self) -> Path:
        return Path(self.root)

    @property
    def root_location(self) -> str:
        """LAKEHOUSE_ROOT as every process should see it: an absolute folder, or the s3:// URL unchanged."""
        return self.root if self.root.startswith("s3://") else str(Path(self.root).expanduser().resolve())

    def check_root(self, write: bool = False) -> None:
        """LAKEHOUSE_ROOT must be a folder (or not exist yet); with `write`, one this process can write to.
        An s3:// root was checked when the settings were read (its bucket is checked on first use)."""
        if self.root.startswith("s3://"):
            return
        path = self.root_path
        shown = shorten(self.root, 200)  # a path is only useful whole; 200 characters still fit a line
        if path.exists() and not path.is_dir():
            raise ConfigError(f"LAKEHOUSE_ROOT={shown!r} is a file, not a folder; point it at a folder "
                              f"(it is created if missing)")
        if not write:
            return
        existing = path
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        try:
            # A real write, not os.access: that says yes to root on a folder a read-only mount still refuses.
            fd, probe = tempfile.mkstemp(prefix=".lakehouse-write-check-", dir=existing)
            os.close(fd)
            os.unlink(probe)
        except OSError:
            where = "" if existing == path else f" (nor is its nearest existing folder {shorten(str(existing))!r})"
            raise ConfigError(f"LAKEHOUSE_ROOT={shown!r} is not writable{where}; fix its permissions or point "
                              f"LAKEHOUSE_ROOT at a folder you can write to")
