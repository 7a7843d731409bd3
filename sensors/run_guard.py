"""Runs whose process is gone, and pool slots nobody will give back: found, explained, and released.

A run started by the CLI carries a process stamp (lakehouse.liveness: host, pid, process start time). When that
process is gone (kill -9, a crash, a reboot), Dagster never hears the run end: it stays STARTED, so the audit
counts its partitions in flight, and any pool slot it claimed stays claimed, so every later run that needs the
pool waits forever. `reap` marks such a run failed (CANCELING ones canceled) with Dagster's own run events and
frees its slots with `free_concurrency_slots_for_run`; it also frees slots still held by runs that have finished.
Runs launched by a daemon are first Dagster's to watch (run monitoring in dagster.yaml; the code server fails a
run whose worker died). When the code server died with the worker (a killed `lakehouse dev`, a reboot) nothing
would: on a single-host (SQLite) instance the worker pid Dagster recorded ("Started process for run") is checked
the same way. Their leaked slots are freed here too.

Called by every in-process `lakehouse backfill` / `repair` before it plans and while it waits for a slot, and by
the repair sensor each tick; `lakehouse health` reports the same findings without changing anything.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Iterable

from dagster import DagsterRunStatus, RunsFilter
from dagster._core.events import JobFailureData, RunFailureReason

from lakehouse.liveness import (DEAD, DeadRun, LeakedSlot, ProcessStamp, holdings, leaked, pid_state,
                                process_state, run_label, short_id)

# A run in these states should have a live process behind it.
LIVE_STATUSES = [DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING, DagsterRunStatus.STARTED,
                 DagsterRunStatus.CANCELING]


def _utc(ts: float | None) -> str | None:
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


WORKER_EVENT = "Started process for run (pid: "


def single_host(instance) -> bool:
    """A SQLite instance lives on one machine's disk, so every run worker it records ran on this host."""
    from dagster._core.storage.runs import SqliteRunStorage

    return isinstance(instance.run_storage, SqliteRunStorage)


def run_worker(instance, run_id: str) -> tuple[int, float] | None:
    """(pid, when) of the run worker Dagster's code server started for `run_id` (its engine event), if any."""
    from dagster import DagsterEventType

    records = instance.get_records_for_run(run_id, of_type=DagsterEventType.ENGINE_EVENT, ascending=False,
                                           limit=200).records
    for record in records:
        entry = record.event_log_entry
        if (entry.message or "").startswith(WORKER_EVENT):
            try:
                return int(entry.message[len(WORKER_EVENT):].split(")")[0]), entry.timestamp
            except ValueError:
                return None
    return None


def _gone(instance, run, local: bool) -> bool:
    state = process_state(run.tags)
    if state is not None:
        return state == DEAD
    # Launched by a daemon: its code server fails a run whose worker died, but not when it died with it (a
    # killed `lakehouse dev`, a reboot). On one host the worker's recorded pid tells.
    if not local:
        return False
    worker = run_worker(instance, run.run_id)
    return worker is not None and pid_state(*worker) == DEAD


def dead_runs(instance) -> list[DeadRun]:
    """Unfinished runs whose process is gone: a CLI run's stamped process, or (single host) a daemon-launched
    run's worker."""
    out = []
    local = single_host(instance)
    for record in instance.get_run_records(RunsFilter(statuses=LIVE_STATUSES)):
        run = record.dagster_run
        if not _gone(instance, run, local):
            continue
        started = record.start_time or record.create_timestamp.timestamp()
        out.append(DeadRun(run.run_id, run.status.value, run_label(run.tags, run.job_name), _utc(started)))
    return out


def _concurrency_infos(instance) -> dict:
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return {}
    pools = sorted(storage.get_concurrency_keys())
    return dict(storage.get_concurrency_infos(pools)) if pools else {}


def leaked_slots(instance, infos: dict | None = None) -> list[LeakedSlot]:
    """Slots (and queued claims) held by runs that have finished or no longer exist."""
    infos = _concurrency_infos(instance) if infos is None else infos
    held = [h for pool, info in infos.items()
            for h in holdings(pool, [(s.run_id, s.step_key) for s in info.claimed_slots],
                              [(p.run_id, p.step_key) for p in info.pending_steps])]
    if not held:
        return []
    run_ids = sorted({run_id for _, run_id, _, _ in held})
    return leaked(held, {r.run_id: r.status.value for r in instance.get_runs(RunsFilter(run_ids=run_ids))})


@dataclasses.dataclass
class Reaped:
    failed: list[DeadRun]
    freed: list[LeakedSlot]

    def __bool__(self) -> bool:
        return bool(self.failed or self.freed)

    def lines(self) -> list[str]:
        out = [f"{d}: marked {'canceled' if d.status == 'CANCELING' else 'failed'}, its pool slots freed"
               for d in self.failed]
        out += [f"{s}: freed" for s in self.freed]
        return out


def reap(instance, by: str) -> Reaped:
    """Fail every dead run and free its slots, then free every slot a finished run still holds."""
    storage = instance.event_log_storage
    failed = []
    for dead in dead_runs(instance):
        run = instance.get_run_by_id(dead.run_id)
        if run is None or run.is_finished:  # it ended between the two reads
            continue
        who = ProcessStamp.from_tags(run.tags) if process_state(run.tags) is not None else "its run worker"
        message = (f"The process that ran this run ({who}) is gone: killed, crashed "
                   f"or its machine restarted. Marked by {by} so its partitions can be repaired and its pool "
                   f"slots are freed.")
        if run.status == DagsterRunStatus.CANCELING:
            instance.report_run_canceled(run, message)
        else:
            instance.report_run_failed(run, message, JobFailureData(
                error=None, failure_reason=RunFailureReason.UNEXPECTED_TERMINATION))
        if storage.supports_global_concurrency_limits:
            storage.free_concurrency_slots_for_run(run.run_id)
        failed.append(dead)
    leaks = leaked_slots(instance)
    for run_id in dict.fromkeys(s.run_id for s in leaks):
        storage.free_concurrency_slots_for_run(run_id)
    return Reaped(failed, leaks)


# who holds a pool -------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Holder:
    run_id: str
    label: str
    status: str
    since: dt.datetime | None

    def __str__(self) -> str:
        since = f" since {self.since.strftime('%H:%M:%S')} UTC" if self.since else ""
        return f"run {short_id(self.run_id)} ({self.label}){since}"


@dataclasses.dataclass(frozen=True)
class Waiting:
    pool: str
    holders: tuple[Holder, ...]
    queued_ahead: int

    def text(self) -> str:
        if self.holders:
            who = "; ".join(str(h) for h in self.holders[:2]) + (
                f" and {len(self.holders) - 2} more" if len(self.holders) > 2 else "")
            return f"waiting for a slot in pool '{self.pool}', held by {who}"
        if self.queued_ahead:
            return f"waiting for a slot in pool '{self.pool}', {self.queued_ahead} step(s) queued ahead"
        return f"waiting for a slot in pool '{self.pool}'"


def waiting_for(instance, run_id: str) -> Waiting | None:
    """What `run_id` waits for: a pool in which it has a queued claim but no slot, and who holds that pool."""
    infos = _concurrency_infos(instance)
    for pool, info in infos.items():
        mine = [p for p in info.pending_steps if p.run_id == run_id]
        claimed_by_me = {s.step_key for s in info.claimed_slots if s.run_id == run_id}
        waiting = [p for p in mine if p.step_key not in claimed_by_me]
        if not waiting:
            continue
        return Waiting(pool, tuple(holders(instance, pool, info, exclude=run_id)),
                       sum(1 for p in info.pending_steps if p.run_id != run_id and p.assigned_timestamp is None
                           and p.enqueued_timestamp < waiting[0].enqueued_timestamp))
    return None


def pool_is_busy(instance, pools: Iterable[str]) -> Waiting | None:
    """A pool among `pools` with no slot free for a new claim, and who holds it; None when every one has room."""
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return None
    known = storage.get_concurrency_keys()
    pools = [p for p in pools if p in known]
    if not pools:
        return None
    for pool, info in storage.get_concurrency_infos(pools).items():
        taken = len({(s.run_id, s.step_key) for s in info.claimed_slots}
                    | {(p.run_id, p.step_key) for p in info.pending_steps if p.assigned_timestamp})
        if info.slot_count and taken >= info.slot_count:
            return Waiting(pool, tuple(holders(instance, pool, info)), 0)
    return None


def holders(instance, pool: str, info, exclude: str | None = None) -> list[Holder]:
    assigned = {(p.run_id, p.step_key): p.assigned_timestamp for p in info.pending_steps}
    out = []
    for slot in info.claimed_slots:
        if slot.run_id == exclude:
            continue
        run = instance.get_run_by_id(slot.run_id)
        out.append(Holder(slot.run_id, run_label(run.tags, run.job_name) if run else "deleted run",
                          run.status.value if run else "DELETED", assigned.get((slot.run_id, slot.step_key))))
    return out


def process_gone(instance, run) -> bool:
    """True when `run`'s process is known to be gone (read-only; `reap` acts on it)."""
    return not run.is_finished and _gone(instance, run, single_host(instance))
