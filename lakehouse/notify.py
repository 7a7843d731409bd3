"""Notifications: say what went wrong in one message and post it to one webhook, without ever raising.

The channel is a Slack-compatible incoming webhook (LAKEHOUSE_WEBHOOK_URL): a JSON body with `text` (what
every Slack-compatible receiver shows) and `blocks` (Slack's richer layout). Unset, messages are only logged by
the caller.

Sensors send these, so a dead or slow webhook must not break a sensor tick: `send` retries once, then gives up
and returns a `Delivery` saying why. Callers log it and keep it in `DeliveryLog` (`_meta/notify/deliveries.json`)
so `lakehouse health` can tell that notifications are not getting through.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import threading
import time
import urllib.parse
from typing import Callable, Sequence

from .errors import StorageError
from .storage import Storage

FAIL, WARN = "FAIL", "WARN"
TIMEOUT_S = 5.0
RETRY_WAIT_S = 1.0
# Slack rejects a section longer than 3000 characters; errors with tracebacks easily get there.
MAX_SECTION_CHARS = 2900
MAX_LINE_CHARS = 600
DELIVERY_LOG = "notify/deliveries.json"
KEEP_DELIVERIES = 50


@dataclasses.dataclass(frozen=True)
class Notification:
    """One message: a title line, detail lines and an optional link to the Dagster UI."""

    kind: str  # run_failure | freshness
    severity: str  # FAIL | WARN
    title: str
    lines: tuple[str, ...] = ()
    link: str | None = None
    link_label: str = "Open in Dagster"

    def text(self) -> str:
        """Plain text: what a log line and the webhook's `text` field carry."""
        body = [f"[{self.severity}] {self.title}", *(_clip(line) for line in self.lines)]
        if self.link:
            body.append(f"{self.link_label}: {self.link}")
        return "\n".join(body)

    def payload(self) -> dict:
        """Slack-compatible JSON: `text` for any receiver, `blocks` for Slack's layout."""
        section = "\n".join([f"*[{self.severity}] {_escape(self.title)}*", *(_escape(_clip(l)) for l in self.lines)])
        blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": section[:MAX_SECTION_CHARS]}}]
        if self.link:
            blocks.append({"type": "context", "elements": [
                {"type": "mrkdwn", "text": f"<{self.link}|{_escape(self.link_label)}>"}]})
        return {"text": self.text(), "blocks": blocks}


@dataclasses.dataclass(frozen=True)
class Delivery:
    """What happened to one notification."""

    sent: bool
    channel: str  # "webhook <host>" or "log"
    attempts: int = 0
    status: int | None = None
    error: str | None = None
    at: str = dataclasses.field(default_factory=lambda: _now_iso())

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def describe(self) -> str:
        if self.channel == "log":
            return "logged only (no LAKEHOUSE_WEBHOOK_URL)"
        if self.sent:
            return f"sent to {self.channel}"
        return f"not delivered to {self.channel} after {self.attempts} attempt(s): {self.error}"


def redact(url: str) -> str:
    """scheme://host[:port] only: webhook paths are secrets (Slack's carry the token)."""
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}"


HIDDEN = "<hidden>"


def scrub(text: str | None, url: str | None) -> str | None:
    """`text` without any secret part of the webhook `url`: the whole URL, its path, query, fragment and user
    info, each path segment and query value, raw or percent-encoded, are replaced by <hidden>. Exception texts
    (requests names the URL it failed on) and receiver answers (which may echo the path) go through this before
    they are logged, recorded or printed."""
    if not text or not url:
        return text
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return text.replace(url, HIDDEN)
    userinfo = parts.netloc.rpartition("@")[0]
    pieces = {url, parts.path, parts.query, parts.fragment, userinfo, *userinfo.split(":"),
              *parts.path.split("/"), *(v for _, v in urllib.parse.parse_qsl(parts.query))}
    pieces |= {urllib.parse.quote(p, safe="/") for p in pieces} | {urllib.parse.unquote(p) for p in pieces}
    # Pieces of one or two characters would blank out ordinary words and say nothing about the token.
    for piece in sorted((p for p in pieces if len(p) >= 3), key=len, reverse=True):
        text = text.replace(piece, HIDDEN)
    return text


class _ScrubWebhook(logging.Filter):
    """urllib3 logs every request line ("POST /services/T.../B.../XXXX") at DEBUG: a log configured that verbose
    must still not show the webhook's path."""

    def __init__(self, url: str):
        super().__init__()
        self.url = url

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        clean = scrub(text, self.url)
        if clean != text:
            record.msg, record.args = clean, ()
        return True


def send(notification: Notification, url: str | None, timeout_s: float = TIMEOUT_S, retries: int = 1,
         retry_wait_s: float = RETRY_WAIT_S, sleep: Callable[[float], None] = time.sleep) -> Delivery:
    """POST the notification's JSON to `url`; one retry on network errors, 5xx and 429. Never raises."""
    if not url:
        return Delivery(sent=False, channel="log")
    channel = f"webhook {redact(url)}"
    body = json.dumps(notification.payload()).encode()
    request_log = logging.getLogger("urllib3.connectionpool")
    guard = _ScrubWebhook(url)
    request_log.addFilter(guard)
    try:
        return _post(url, body, channel, timeout_s, retries, retry_wait_s, sleep)
    finally:
        request_log.removeFilter(guard)


def _post(url: str, body: bytes, channel: str, timeout_s: float, retries: int, retry_wait_s: float,
          sleep: Callable[[float], None]) -> Delivery:
    import requests

    status, error, attempts = None, None, 0
    for attempt in range(retries + 1):
        attempts = attempt + 1
        try:
            response = requests.post(url, data=body, headers={"Content-Type": "application/json"}, timeout=timeout_s)
            status = response.status_code
            if 200 <= status < 300:
                return Delivery(sent=True, channel=channel, attempts=attempts, status=status)
            error = scrub(f"HTTP {status}: {response.text[:200].strip()}", url)
            if status < 500 and status != 429:
                break  # the receiver refused this message (bad URL or payload); sending it again cannot help
        except Exception as exc:  # noqa: BLE001  (whatever the network does, the sensor must go on)
            # Scrubbed before clipping, so a clipped URL cannot leave part of its token behind.
            status, error = None, f"{exc.__class__.__name__}: {scrub(str(exc), url)[:200]}"
        if attempt < retries:
            sleep(retry_wait_s)
    return Delivery(sent=False, channel=channel, attempts=attempts, status=status, error=error)


class DeliveryLog:
    """The last deliveries (newest last), kept so a webhook that stopped working shows up in `lakehouse health`."""

    _lock = threading.Lock()  # the sensor daemon runs sensors in threads of one process

    def __init__(self, storage: Storage, url: str | None = None):
        """`url`: the webhook, whose secret parts are scrubbed from what is read back (a log written by an
        older version may hold them)."""
        self.storage = storage
        self.url = url

    def load(self) -> list[dict]:
        try:
            raw = self.storage.read_meta(DELIVERY_LOG)
            value = json.loads(raw) if raw else []
        except (OSError, ValueError, StorageError):
            return []
        if not isinstance(value, list):
            return []
        return [{**e, "error": scrub(e.get("error"), self.url)} if isinstance(e, dict) and e.get("error") else e
                for e in value]

    def record(self, notification: Notification, delivery: Delivery) -> None:
        """Append one delivery; a failure to write is swallowed like a failure to send."""
        entry = {**delivery.as_dict(), "kind": notification.kind, "severity": notification.severity,
                 "title": notification.title}
        def change(body: bytes | None) -> bytes:
            try:
                entries = json.loads(body) if body else []
            except ValueError:
                entries = []
            entries = (entries if isinstance(entries, list) else []) + [entry]
            return json.dumps(entries[-KEEP_DELIVERIES:], indent=1).encode()

        try:
            with self._lock:  # the sensor daemon runs sensors in threads; update_meta serializes processes
                self.storage.update_meta(DELIVERY_LOG, change)
        except (OSError, StorageError):
            pass

    def last(self) -> dict | None:
        entries = [e for e in self.load() if e.get("channel") != "log"]
        return entries[-1] if entries else None


def notify(notification: Notification, url: str | None, log: Callable[[str], None],
           error_log: Callable[[str], None] | None = None, storage: Storage | None = None, **send_kw) -> Delivery:
    """Send (or only log, without a URL), log the outcome, record it; what the sensors call."""
    delivery = send(notification, url, **send_kw)
    if delivery.channel == "log":
        log(f"notification (no LAKEHOUSE_WEBHOOK_URL set, logged only):\n{notification.text()}")
    elif delivery.sent:
        log(f"notification {delivery.describe()}: {notification.title}")
    else:
        (error_log or log)(f"notification {delivery.describe()}\n{notification.text()}")
    if storage is not None:
        DeliveryLog(storage, url).record(notification, delivery)
    return delivery


# messages ---------------------------------------------------------------------------------------
def run_failure_notification(run_id: str, job_name: str, assets: Sequence[str], partitions: str | None,
                             errors: Sequence[str], tags: dict | None = None, ui_url: str | None = None) -> Notification:
    """A failed run: which run, what it was building, for which partitions, and why it failed."""
    tags = tags or {}
    what = ", ".join(sorted(assets)) if assets else job_name
    title = f"lakehouse run failed: {what}" + (f" for {partitions}" if partitions else "")
    lines = [f"run {run_id}" + (f" ({job_name})" if assets and job_name and not job_name.startswith("__") else "")]
    for error in errors or ["run failed (no step error recorded)"]:
        lines.append(f"error: {error}")
    launched = tags.get("lakehouse/launched_by")
    if launched:
        why = tags.get("lakehouse/repair")
        reasons = tags.get("lakehouse/reasons")
        lines.append(f"launched by {launched}" + (f" ({why}: {reasons})" if why and reasons else ""))
    if tags.get("dagster/will_retry") == "true":
        # With run_retries on, the first failure may heal itself; say so rather than stay quiet until the retry.
        lines.append("Dagster will retry this run (run_retries); a retry that fails is reported too")
    link = f"{ui_url.rstrip('/')}/runs/{run_id}" if ui_url else None
    return Notification("run_failure", FAIL, title, tuple(lines), link, "Open the run in Dagster")


@dataclasses.dataclass(frozen=True)
class FreshnessChange:
    """A subject (a symbol of raw_ohlcv, or a whole asset) that became WARN or FAIL."""

    subject: str
    severity: str  # WARN | FAIL
    since: str  # "was fresh", "was UNKNOWN", "new symbol" or FIRST_LOOK
    detail: str


FIRST_LOOK = "already so at the sensor's first look"
# A symbol's freshness tier (lakehouse.audit.freshness_tier) as a check severity: aging warns, stale fails.
TIER_LEVEL = {"fresh": 0, "aging": 1, "stale": 2, "empty": 2}
LEVEL_NAME = {0: "OK", 1: WARN, 2: FAIL}


def symbol_freshness_changes(previous: dict[str, str] | None, current: dict[str, dict]) -> list[FreshnessChange]:
    """Symbols whose tier got worse into aging (WARN) or stale/empty (FAIL) since `previous` (symbol -> tier;
    None on the sensor's first look, when what is already WARN/FAIL is reported once).

    `current` is symbol -> {"tier", "last_candle", "age_minutes"}. A symbol first seen without candles is not
    news: a symbol just added is empty until its first backfill lands (a backfill that fails is reported as a
    failed run).
    """
    out = []
    for symbol, row in sorted(current.items()):
        tier = row.get("tier")
        level = TIER_LEVEL.get(tier, 0)
        if level == 0:
            continue
        before = None if previous is None else previous.get(symbol)
        if before is None:
            if tier == "empty":
                continue
            since = FIRST_LOOK if previous is None else "new symbol"
        elif TIER_LEVEL.get(before, 0) >= level:
            continue
        else:
            since = f"was {before}"
        detail = ("no candles" if tier == "empty" else
                  f"{tier}, last candle {row.get('last_candle')} ({_hours(row.get('age_minutes'))} old)")
        out.append(FreshnessChange(symbol, LEVEL_NAME[level], since, detail))
    return out


def asset_freshness_change(asset: str, previous_state: str | None, new_state: str, detail: str) -> FreshnessChange | None:
    """Dagster's freshness state of a whole asset moved to WARN or FAIL (PASS, UNKNOWN and recoveries are quiet);
    previous_state None: the sensor's first look at an asset already in that state."""
    if new_state not in (WARN, FAIL) or new_state == previous_state:
        return None
    return FreshnessChange(asset, new_state, FIRST_LOOK if previous_state is None else f"was {previous_state}", detail)


def _hours(minutes) -> str:
    if minutes is None:
        return "?"
    return f"{minutes} min" if minutes < 120 else f"{minutes / 60:.1f} h"


def freshness_notification(changes: Sequence[FreshnessChange], ui_url: str | None = None) -> Notification:
    """One message per tick for every subject that became WARN or FAIL, the worst first.

    Subjects are symbols (of raw_ohlcv, named BASE/QUOTE) or asset keys; the link opens raw_ohlcv, whose
    symbol_freshness check has the per-symbol table, or the asset when only assets changed.
    """
    ordered = sorted(changes, key=lambda c: (c.severity != FAIL, c.subject))
    asset_path = "raw_ohlcv" if any("/" in c.subject for c in ordered) or not ordered else ordered[0].subject
    severity = FAIL if any(c.severity == FAIL for c in changes) else WARN
    subjects = ", ".join(c.subject for c in ordered[:5]) + (f" and {len(ordered) - 5} more" if len(ordered) > 5 else "")
    title = f"lakehouse freshness {severity}: {subjects}"
    lines = tuple(f"{c.subject}: {c.severity} ({c.since}): {c.detail}" for c in ordered)
    link = f"{ui_url.rstrip('/')}/assets/{asset_path}" if ui_url else None
    return Notification("freshness", severity, title, lines, link, f"Open {asset_path} in Dagster")


def _clip(line: str) -> str:
    line = " ".join(str(line).split())
    return line if len(line) <= MAX_LINE_CHARS else line[: MAX_LINE_CHARS - 1] + "…"


def _escape(text: str) -> str:
    # Slack mrkdwn reads <...> as links and &...; as entities.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
