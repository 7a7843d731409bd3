"""What `/v1/status`, `/v1/coverage` and the page show: one raw-layer audit (as `lakehouse status` runs it), the
symbol x day heatmap derived from it, and what the Dagster instance knows about runs (imported lazily)."""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from typing import Callable

from lakehouse.audit import INCOMPLETE, INVALID, MISSING, STALE, Audit, Auditor
from lakehouse.config import Settings
from lakehouse.registry import Registry
from lakehouse.schema import RAW_OHLCV
from lakehouse.status import gap_rows, symbol_rows
from lakehouse.storage import Storage
from lakehouse.symbols import encode_symbol
from lakehouse.timeutil import DAY_MS, ms_to_day

log = logging.getLogger("lakehouse.api")

# One character per symbol x day in the heatmap; upper case when a run in flight covers that day.
CELL_CODES = {"complete": "c", "incomplete": "i", "confirmed_gap": "g", "missing": "m", "stale": "s",
              "invalid": "x", "untracked": "."}
_FINDING_CELL = {INCOMPLETE: "i", MISSING: "m", STALE: "s", INVALID: "x"}
AUDIT_TTL_S = 5.0  # the page and /v1/status share one audit for this long
# An older audit is still served while a fresh one runs in the background (a warm audit of 100 symbols x 365
# days takes about a second); past this age a request waits for the fresh one.
AUDIT_MAX_STALE_S = 60.0


class RunsSource:
    """Runs in flight (with progress) and the last run per symbol, from the Dagster instance.

    Dagster is imported only here, on first use; without an instance (no DAGSTER_HOME, a broken one) the API still
    serves everything else and says why runs are unknown.
    """

    def __init__(self, instance_factory: Callable[[], object] | None = None):
        self._factory = instance_factory
        self._instance = None
        self._lock = threading.Lock()

    def instance(self):
        with self._lock:
            if self._instance is None:
                if self._factory is not None:
                    self._instance = self._factory()
                else:
                    from cli.instance import get_instance

                    self._instance = get_instance()
            return self._instance

    def snapshot(self) -> dict:
        """{'available', 'reason', 'in_flight': {symbol: {days}}, 'runs': [...], 'last_runs': {symbol: run}}."""
        try:
            instance = self.instance()
            from sensors.repair import ACTIVE_STATUSES, in_flight_partitions, last_runs_by_symbol

            return {"available": True, "reason": None, "in_flight": in_flight_partitions(instance),
                    "runs": _active_runs(instance, ACTIVE_STATUSES), "last_runs": last_runs_by_symbol(instance)}
        except Exception as exc:  # the API serves data without Dagster; it only loses the runs
            log.warning("Dagster instance unavailable: %s", exc)
            return {"available": False, "reason": f"Dagster instance unavailable: {exc.__class__.__name__}: "
                    f"{str(exc)[:200]}", "in_flight": {}, "runs": [], "last_runs": {}}


def _active_runs(instance, statuses) -> list[dict]:
    """Queued and running runs, newest first, with progress: materializations so far of those planned."""
    from dagster import DagsterEventType, RunsFilter

    from lakehouse.run_tags import describe_partitions

    out = []
    for record in instance.get_run_records(RunsFilter(statuses=statuses), limit=50):
        run = record.dagster_run
        planned = done = 0
        try:
            conn = instance.get_records_for_run(run.run_id, of_type={
                DagsterEventType.ASSET_MATERIALIZATION_PLANNED, DagsterEventType.ASSET_MATERIALIZATION})
            for r in conn.records:
                if r.event_log_entry.dagster_event_type == DagsterEventType.ASSET_MATERIALIZATION_PLANNED:
                    planned += 1
                else:
                    done += 1
        except Exception:  # progress is a nicety; the run is still listed
            pass
        started = record.start_time or record.create_timestamp.timestamp()
        out.append({
            "run_id": run.run_id, "status": run.status.value, "job": run.job_name,
            "partitions": describe_partitions(run.tags), "launched_by": run.tags.get("lakehouse/launched_by")
            or run.tags.get("dagster/sensor_name") or run.tags.get("dagster/backfill"),
            "started": dt.datetime.fromtimestamp(started, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "materialized": done, "planned": planned,
            "progress_pct": round(100.0 * done / planned, 1) if planned else None,
        })
    return out


class StatusService:
    """Runs the raw-layer audit at most every AUDIT_TTL_S (refreshing in the background) and shapes it for the API
    and the page."""

    def __init__(self, root: str, settings: Settings, runs: RunsSource, clock: Callable[[], int] | None = None):
        self.storage = Storage(root)
        self.settings = settings
        self.runs = runs
        self.clock = clock or (lambda: int(time.time() * 1000))
        self._lock = threading.Lock()  # one audit at a time
        self._refreshing = threading.Lock()  # at most one background refresh
        self._cached: tuple[float, Audit, dict] | None = None

    def current(self) -> tuple[Audit, dict]:
        cached = self._cached
        if cached is not None:
            age = time.monotonic() - cached[0]
            if age < AUDIT_TTL_S:
                return cached[1], cached[2]
            if age < AUDIT_MAX_STALE_S:
                if not self._refreshing.locked():
                    threading.Thread(target=self._refresh_in_background, name="audit", daemon=True).start()
                return cached[1], cached[2]
        with self._lock:
            if self._cached is not cached:  # another request refreshed it meanwhile
                return self._cached[1], self._cached[2]
            return self._audit()

    def _refresh_in_background(self) -> None:
        if self._refreshing.acquire(blocking=False):
            try:
                with self._lock:
                    self._audit()
            except Exception:
                log.exception("background audit failed; the next request retries")
            finally:
                self._refreshing.release()

    def _audit(self) -> tuple[Audit, dict]:
        runs = self.runs.snapshot()
        tracked = list(Registry(self.storage.root).load().values())
        try:
            audit = Auditor(self.storage, self.settings, [RAW_OHLCV]).run(tracked, self.clock(),
                                                                          in_flight=runs["in_flight"])
        except OSError:  # a read-only lakehouse: audit without saving the summary cache
            audit = Auditor(self.storage, self.settings, [RAW_OHLCV]).run(
                tracked, self.clock(), in_flight=runs["in_flight"], persist_cache=False)
        self._cached = (time.monotonic(), audit, runs)
        return audit, runs

    def status(self) -> dict:
        audit, runs = self.current()
        rows = symbol_rows(audit, runs["last_runs"])
        for row in rows:
            row["path"] = encode_symbol(row["symbol"])
            row["gaps"] = gap_rows(audit, row["symbol"])
        return {"generated_at": _iso(audit.now_ms), "symbols": rows, "audit": audit.summary(),
                "counts": audit.counts(), "confirmed_gaps": audit.confirmed_gaps,
                "dagster": {"available": runs["available"], "reason": runs["reason"]},
                "runs_in_flight": runs["runs"]}

    def coverage(self, days: int) -> dict:
        """The heatmap: for each symbol, one character per UTC day of the window ending today (CELL_CODES)."""
        audit, runs = self.current()
        today = ms_to_day(audit.now_ms)
        first = today - dt.timedelta(days=days - 1)
        cells: dict[str, list[str]] = {}
        for symbol, cov in audit.coverage.items():
            row = ["."] * days
            for i in range(max(0, (cov.start - first).days), days):
                row[i] = "c"
            for g in cov.gaps:
                if g.confirmed:
                    for ms in range(g.start_ms - g.start_ms % DAY_MS, g.end_ms, DAY_MS):
                        i = (ms_to_day(ms) - first).days
                        if 0 <= i < days and row[i] == "c":
                            row[i] = "g"
            cells[symbol] = row
        for f in audit.findings:
            i = (f.day - first).days
            row = cells.get(f.symbol)
            if row is not None and 0 <= i < days:
                code = _FINDING_CELL.get(f.state, "i")
                row[i] = code.upper() if f.in_flight else code
        for symbol, flight_days in runs["in_flight"].items():
            row = cells.get(symbol)
            for d in flight_days:
                i = (d - first).days
                if row is not None and 0 <= i < days and row[i] != ".":
                    row[i] = row[i].upper()
        status = self.status()
        for row in status["symbols"]:
            row["cells"] = "".join(cells.get(row["symbol"], ["."] * days))
        return {"generated_at": status["generated_at"], "first_day": first.isoformat(), "last_day": today.isoformat(),
                "days": days, "codes": CELL_CODES, "symbols": status["symbols"], "audit": status["audit"],
                "counts": status["counts"], "dagster": status["dagster"], "runs_in_flight": status["runs_in_flight"],
                "ui_url": self.settings.ui_url}


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
