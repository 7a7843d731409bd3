"""Health of a lakehouse deployment: one state per component, the rules that set it, and how they combine.

Each component is `ok`, `degraded` or `down` with a one-line reason. The rules (README "lakehouse health"):

| component | down | degraded |
|---|---|---|
| storage | the Dagster instance storage (or the deployment's API) does not answer | |
| daemon | remote: no heartbeat, or the newest is older than 2 min | some daemons silent or reporting errors; locally: no heartbeat at all (no `lakehouse dev`) |
| repair_sensor | | stopped, not defined, its last tick failed, or no tick for 3 intervals (at least 5 min) |
| exchange | unreachable or unknown | less than 20 % of the request-weight budget left |
| disk | LAKEHOUSE_ROOT unreadable, or less than 100 MiB free | less than 1 GiB or 5 % free, or some folders unreadable |
| runs | every one of at least 3 runs of the last 24 h failed | more than 20 % of the runs finished in the last 24 h failed |
| stuck_runs | | a run not finished whose process is gone, or a pool slot held by a finished run |
| notifications | | the last webhook delivery failed |

Overall: `down` when storage, daemon or disk is down (the lakehouse cannot work); otherwise `degraded` when any
component is not ok (an exchange that is down only stops new data; the repair sensor catches up later);
otherwise `ok`. Exit codes 0, 1, 2.

This module holds the rules and the checks that need no Dagster (exchange, disk, notifications); the caller
gathers what Dagster knows (cli/health.py) and passes plain values in.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import shutil
from pathlib import Path
from typing import Sequence

from .config import SIMULATED, Settings

OK, DEGRADED, DOWN = "ok", "degraded", "down"
STATES = (OK, DEGRADED, DOWN)
EXIT_CODES = {OK: 0, DEGRADED: 1, DOWN: 2}

STORAGE, DAEMON, REPAIR_SENSOR, EXCHANGE, DISK, RUNS, STUCK_RUNS, NOTIFICATIONS = (
    "storage", "daemon", "repair_sensor", "exchange", "disk", "runs", "stuck_runs", "notifications")
COMPONENTS = (STORAGE, DAEMON, REPAIR_SENSOR, EXCHANGE, DISK, RUNS, STUCK_RUNS, NOTIFICATIONS)
# Without these the lakehouse cannot work at all; the others only slow it down.
CRITICAL = (STORAGE, DAEMON, DISK)

# Daemons heartbeat every 30 s; four missed beats is no longer a hiccup.
HEARTBEAT_MAX_AGE_S = 120.0
SENSOR_LATE_INTERVALS = 3
SENSOR_LATE_MIN_S = 300.0
RUNS_WINDOW_HOURS = 24
FAILURE_RATE_DEGRADED = 0.20
RUNS_ALL_FAILED_MIN = 3
WEIGHT_HEADROOM_DEGRADED = 0.20
DISK_FREE_DOWN_BYTES = 100 * 2**20
DISK_FREE_DEGRADED_BYTES = 2**30
DISK_FREE_DEGRADED_FRACTION = 0.05
NO_DAEMON_LOCAL = "no daemon heartbeat: is `lakehouse dev` running?"


@dataclasses.dataclass(frozen=True)
class Component:
    name: str
    state: str
    reason: str
    details: dict = dataclasses.field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"component": self.name, "state": self.state, "reason": self.reason, "details": self.details}


def overall(components: Sequence[Component]) -> tuple[str, str]:
    """(state, reason) of the whole deployment from its components (rules in the module docstring)."""
    # A component left unchecked because another one is down is not a second cause.
    checked = [c for c in components if not c.details.get("not_checked")]
    down = [c for c in checked if c.state == DOWN and c.name in CRITICAL]
    unchecked_critical = [c for c in components if c.details.get("not_checked") and c.name in CRITICAL]
    if down or unchecked_critical:
        return DOWN, "; ".join(f"{c.name} down" for c in down or unchecked_critical)
    not_ok = [c for c in checked if c.state != OK]
    if not_ok:
        return DEGRADED, "; ".join(f"{c.name} {c.state}" for c in not_ok)
    return OK, "every component ok"


def exit_code(state: str) -> int:
    return EXIT_CODES[state]


def unknown(name: str, why: str) -> Component:
    """A component that could not be checked because something it depends on is down."""
    return Component(name, DOWN, f"not checked: {why}", {"not_checked": True})


# Dagster-side components: the caller passes what it read ------------------------------------------------
def storage_component(error: str | None, description: str) -> Component:
    if error:
        return Component(STORAGE, DOWN, f"{description}: {error}")
    return Component(STORAGE, OK, description)


@dataclasses.dataclass(frozen=True)
class DaemonBeat:
    daemon_type: str
    last_heartbeat: float | None  # epoch seconds
    errors: tuple[str, ...] = ()


def daemon_component(beats: Sequence[DaemonBeat], now: float, local: bool) -> Component:
    """Required daemons' heartbeats. Locally a missing daemon is normal (no `lakehouse dev`): degraded, not down."""
    details = {b.daemon_type: (None if b.last_heartbeat is None else round(now - b.last_heartbeat, 1)) for b in beats}
    seen = [b for b in beats if b.last_heartbeat is not None]
    if not seen:
        if local:
            return Component(DAEMON, DEGRADED, NO_DAEMON_LOCAL, details)
        return Component(DAEMON, DOWN, "no daemon heartbeat: is dagster-daemon running?", details)
    newest = min(now - b.last_heartbeat for b in seen)
    if newest > HEARTBEAT_MAX_AGE_S:
        if local:
            return Component(DAEMON, DEGRADED, f"no daemon heartbeat for {_age(newest)}: is `lakehouse dev` running?",
                             details)
        return Component(DAEMON, DOWN, f"newest daemon heartbeat is {_age(newest)} old (limit "
                                       f"{_age(HEARTBEAT_MAX_AGE_S)}): the daemon has stopped", details)
    silent = sorted(b.daemon_type for b in beats if b.last_heartbeat is None or now - b.last_heartbeat > HEARTBEAT_MAX_AGE_S)
    if silent:
        return Component(DAEMON, DEGRADED, f"{len(beats) - len(silent)} of {len(beats)} daemons heartbeating; silent: "
                                           f"{', '.join(silent)}", details)
    failing = [b for b in beats if b.errors]
    if failing:
        b = failing[0]
        return Component(DAEMON, DEGRADED, f"{b.daemon_type} daemon reports an error: {one_line(b.errors[0])}", details)
    oldest = max(now - b.last_heartbeat for b in beats)
    return Component(DAEMON, OK, f"{len(beats)} daemons heartbeating (the oldest beat {_age(oldest)} ago)", details)


def daemon_alive(beats: Sequence[DaemonBeat], now: float, daemon_type: str = "SENSOR") -> bool:
    return any(b.daemon_type == daemon_type and b.last_heartbeat is not None
               and now - b.last_heartbeat <= HEARTBEAT_MAX_AGE_S for b in beats)


@dataclasses.dataclass(frozen=True)
class Tick:
    status: str  # STARTED | SKIPPED | SUCCESS | FAILURE
    timestamp: float
    error: str | None = None
    skip_reason: str | None = None
    runs: int = 0


def sensor_component(name: str, status: str | None, ticks: Sequence[Tick], interval_s: float, now: float,
                     ticking: bool) -> Component:
    """The repair sensor: `status` RUNNING / STOPPED (None: not in the code location), newest tick first;
    `ticking`: a sensor daemon is alive to tick it."""
    details = {"status": status, "interval_s": interval_s}
    if status is None:
        return Component(REPAIR_SENSOR, DEGRADED, f"{name} is not defined in the code location", details)
    if status != "RUNNING":
        return Component(REPAIR_SENSOR, DEGRADED, f"{name} is stopped: start it in the UI (Automation) so the "
                                                  f"lakehouse repairs itself", details)
    if not ticks:
        if ticking:
            return Component(REPAIR_SENSOR, OK, f"{name} running, first tick pending", details)
        return Component(REPAIR_SENSOR, DEGRADED, f"{name} running but never ticked: no daemon to tick it", details)
    newest = ticks[0]
    age = now - newest.timestamp
    details["last_tick_age_s"] = round(age, 1)
    finished = next((t for t in ticks if t.status != "STARTED"), None)
    if finished is not None and finished.status == "FAILURE":
        return Component(REPAIR_SENSOR, DEGRADED, f"{name}'s last tick failed {_age(now - finished.timestamp)} ago: "
                                                  f"{one_line(finished.error or 'no error recorded')}", details)
    late = max(SENSOR_LATE_INTERVALS * interval_s, SENSOR_LATE_MIN_S)
    if age > late:
        why = "" if ticking else ": no daemon to tick it"
        return Component(REPAIR_SENSOR, DEGRADED, f"{name} running but last ticked {_age(age)} ago (every "
                                                  f"{_age(interval_s)} expected){why}", details)
    what = "requested no runs"
    if finished is not None and finished.runs:
        what = f"requested {finished.runs} run(s)"
    elif finished is not None and finished.skip_reason:
        what = finished.skip_reason
    return Component(REPAIR_SENSOR, OK, f"{name} running, last tick {_age(age)} ago: {one_line(what, 160)}", details)


def runs_component(succeeded: int, failed: int, canceled: int = 0, last_failed: str | None = None,
                   window_hours: int = RUNS_WINDOW_HOURS) -> Component:
    """Failure rate of the runs that finished in the window (canceled runs are counted, not rated)."""
    finished = succeeded + failed
    details = {"succeeded": succeeded, "failed": failed, "canceled": canceled, "window_hours": window_hours}
    if last_failed:
        details["last_failed_run"] = last_failed
    if not finished:
        return Component(RUNS, OK, f"no finished runs in the last {window_hours} h"
                                   + (f" ({canceled} canceled)" if canceled else ""), details)
    rate = failed / finished
    details["failure_rate"] = round(rate, 4)
    text = f"{failed} of {finished} runs failed in the last {window_hours} h ({rate:.0%})" + (
        f", {canceled} canceled" if canceled else "") + (f"; last failed: {last_failed}" if last_failed and failed else "")
    if failed == finished and finished >= RUNS_ALL_FAILED_MIN:
        return Component(RUNS, DOWN, text, details)
    if rate > FAILURE_RATE_DEGRADED:
        return Component(RUNS, DEGRADED, text, details)
    return Component(RUNS, OK, text, details)


STUCK_FIX = ("the repair sensor and the next `lakehouse backfill` or `lakehouse repair` mark such runs failed and "
             "free the slots")


def stuck_runs_component(dead: Sequence[dict], leaked: Sequence[dict], elsewhere: int = 0) -> Component:
    """Runs still STARTED (or starting, canceling) whose process is gone, and pool slots held by finished runs;
    each dict has a `text` for people. `elsewhere`: unfinished CLI runs on other hosts, not checkable here."""
    details = {"dead_runs": list(dead), "leaked_slots": list(leaked), "not_checked_other_hosts": elsewhere}
    found = [d["text"] for d in dead] + [s["text"] for s in leaked]
    if found:
        more = f" and {len(found) - 2} more" if len(found) > 2 else ""
        return Component(STUCK_RUNS, DEGRADED, f"{len(dead)} run(s) with no live process, {len(leaked)} pool "
                                               f"slot(s) held by finished runs: {'; '.join(found[:2])}{more}; "
                                               f"{STUCK_FIX}", details)
    text = "every unfinished run has a live process; no pool slot is held by a finished run"
    if elsewhere:
        text += f" ({elsewhere} run(s) started on other hosts not checked from here)"
    return Component(STUCK_RUNS, OK, text, details)


# components checked here --------------------------------------------------------------------------------
def exchange_component(settings: Settings, timeout_s: float = 5.0) -> Component:
    """Reach the configured exchange once (no retries) and read its request-weight headroom where it reports it."""
    if settings.exchange == SIMULATED:
        from .exchange.simulated import SimulatedExchange, SimulatedSource

        n = len(SimulatedExchange(SimulatedSource()).markets())
        return Component(EXCHANGE, OK, f"simulated exchange (offline): {n} markets, no request weight to watch",
                         {"exchange": SIMULATED, "markets": n})
    from .errors import LakehouseError
    from .exchange.ccxt_client import WEIGHT_HEADER, CcxtExchange

    where = settings.exchange + (f" via {settings.exchange_url}" if settings.exchange_url else "")
    details: dict = {"exchange": settings.exchange, "url": settings.exchange_url}
    try:
        client = CcxtExchange(settings.exchange, url=settings.exchange_url,
                              timeout_s=min(settings.request_timeout_s, timeout_s), max_retries=0)
    except LakehouseError as exc:
        return Component(EXCHANGE, DOWN, f"{where}: {exc}", details)
    try:
        markets = client.markets(reload=True)  # a health check looks now, not at this process's cached list
        headers = client.client.last_response_headers or {}
        used = next((v for k, v in headers.items() if k.lower() == WEIGHT_HEADER), None)
    except Exception as exc:  # noqa: BLE001  (any failure to answer is the finding)
        return Component(EXCHANGE, DOWN, f"{where} unreachable: {one_line(str(exc), 200)}", details)
    finally:
        client.close()
    details["markets"] = len(markets)
    if used is None:
        return Component(EXCHANGE, OK, f"{where}: reachable, {len(markets)} markets; it reports no request weight",
                         details)
    limit, window = client.governor.limit, client.governor.window_s
    used = int(used)
    headroom = max(0.0, 1 - used / limit) if limit else 0.0
    details.update(weight_used=used, weight_limit=limit, weight_window_s=window, headroom=round(headroom, 4))
    text = (f"{where}: reachable, {len(markets)} markets; request weight {used}/{limit} per {_age(window)} used "
            f"({headroom:.1%} headroom)")
    return Component(EXCHANGE, DEGRADED if headroom < WEIGHT_HEADROOM_DEGRADED else OK, text, details)


def disk_component(root: Path | str) -> Component:
    """Bytes under LAKEHOUSE_ROOT and the free space of its file system (or the bucket's reachability)."""
    if str(root).startswith("s3://"):
        return object_store_component(str(root))
    root = Path(root)
    where = root if root.exists() else next((p for p in root.absolute().parents if p.exists()), Path("/"))
    details: dict = {"root": str(root.absolute())}
    if root.exists():
        try:
            with os.scandir(root):
                pass
        except OSError as exc:
            return Component(DISK, DOWN, f"cannot read LAKEHOUSE_ROOT {root}: {exc.strerror or exc}", details)
    used, unreadable = tree_bytes(root) if root.exists() else (0, [])
    usage = shutil.disk_usage(where)
    free_fraction = usage.free / usage.total if usage.total else 0.0
    details.update(used_bytes=used, free_bytes=usage.free, total_bytes=usage.total,
                   free_fraction=round(free_fraction, 4), unreadable=unreadable[:10])
    text = (f"{human_bytes(used)} under {root}" if root.exists() else f"{root} does not exist yet (no data)") + \
        f"; {human_bytes(usage.free)} free of {human_bytes(usage.total)} ({free_fraction:.0%})"
    state, why = disk_verdict(usage.free, usage.total)
    if state == OK and unreadable:
        state, why = DEGRADED, f"{len(unreadable)} folder(s) unreadable, e.g. {unreadable[0]}"
    return Component(DISK, state, f"{text}: {why}" if why else text, details)


def object_store_component(root: str) -> Component:
    """An s3:// lakehouse: whether the bucket lists, and the bytes under the prefix (no free-space notion)."""
    from .errors import StorageError
    from .storage import Storage

    details: dict = {"root": root}
    try:
        used = Storage(root).disk_usage_bytes()
    except StorageError as exc:
        return Component(DISK, DOWN, str(exc), details)
    details.update(used_bytes=used)
    return Component(DISK, OK, f"{human_bytes(used)} under {root}", details)


def disk_verdict(free: int, total: int) -> tuple[str, str | None]:
    """(state, why) from the free space of the lakehouse's file system."""
    if free < DISK_FREE_DOWN_BYTES:
        return DOWN, "writes will fail"
    if free < DISK_FREE_DEGRADED_BYTES or (total and free / total < DISK_FREE_DEGRADED_FRACTION):
        return DEGRADED, "running out of space"
    return OK, None


def tree_bytes(root: Path) -> tuple[int, list[str]]:
    """(bytes of every file under root, folders that could not be listed)."""
    total, unreadable = 0, []
    for dirpath, _dirs, files in os.walk(root, onerror=lambda e: unreadable.append(str(e.filename))):
        for name in files:
            try:
                total += os.stat(os.path.join(dirpath, name), follow_symlinks=False).st_size
            except OSError:
                pass  # removed while we walked (an atomic rename): not ours to count
    return total, unreadable


def notifications_component(settings: Settings, last_delivery: dict | None) -> Component:
    """Whether notifications get through: the webhook setting and the last recorded delivery."""
    if not settings.webhook_url:
        return Component(NOTIFICATIONS, OK, "no LAKEHOUSE_WEBHOOK_URL: the sensors log failed runs and freshness "
                                            "changes only", {"webhook": None})
    from .notify import redact

    details = {"webhook": redact(settings.webhook_url), "last_delivery": last_delivery}
    if last_delivery is None:
        return Component(NOTIFICATIONS, OK, f"webhook {redact(settings.webhook_url)}; nothing sent yet", details)
    if not last_delivery.get("sent"):
        return Component(NOTIFICATIONS, DEGRADED,
                         f"last notification ({last_delivery.get('kind')}, {last_delivery.get('at')}) was not "
                         f"delivered to {last_delivery.get('channel')}: {one_line(str(last_delivery.get('error')))}",
                         details)
    return Component(NOTIFICATIONS, OK, f"last notification delivered to {last_delivery.get('channel')} at "
                                        f"{last_delivery.get('at')}", details)


# report -------------------------------------------------------------------------------------------------
def report(components: Sequence[Component], mode: str, target: str, now: float) -> dict:
    """The JSON document `lakehouse health --json` prints."""
    state, reason = overall(components)
    return {
        "state": state,
        "exit_code": exit_code(state),
        "reason": reason,
        "mode": mode,
        "target": target,
        "checked_at": dt.datetime.fromtimestamp(now, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "components": [c.as_dict() for c in components],
    }


def format_text(doc: dict) -> str:
    """One line per component (name, state, reason) under the overall verdict."""
    lines = [f"{doc['state'].upper()}: {doc['reason']} ({doc['mode']}: {doc['target']})"]
    width = max(len(c["component"]) for c in doc["components"]) if doc["components"] else 0
    for c in doc["components"]:
        lines.append(f"  {c['component']:<{width}}  {c['state']:<8}  {c['reason']}")
    return "\n".join(lines)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 600:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
