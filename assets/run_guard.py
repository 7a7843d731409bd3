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

from lakehouse.liveness import (DEAD, DeadRun, LeakedSlot, PoolState, ProcessStamp, Waiting, busy_in, holdings,
                                leaked, pid_state, process_state, run_label, waiting_in)

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


def leaked_slots(instance) -> list[LeakedSlot]:
    """Slots (and queued claims) held by runs that have finished or no longer exist."""
    held = [h for st in pool_states(instance) for h in holdings(st.pool, st.claimed, [p[:2] for p in st.pending])]
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
def pool_states(instance, pools: Iterable[str] | None = None) -> list[PoolState]:
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return []
    known = storage.get_concurrency_keys()
    keys = sorted(known if pools is None else [p for p in pools if p in known])
    if not keys:
        return []
    return [PoolState(pool, info.slot_count, tuple((c.run_id, c.step_key) for c in info.claimed_slots),
                      tuple((p.run_id, p.step_key, p.enqueued_timestamp.timestamp(),
                             p.assigned_timestamp.timestamp() if p.assigned_timestamp else None)
                            for p in info.pending_steps))
            for pool, info in storage.get_concurrency_infos(keys).items()]


def describe(instance, waiting: Waiting | None) -> str | None:
    """The waiting line, each holder named by what its run is."""
    if waiting is None:
        return None
    labels = {}
    for holder in waiting.holders[:2]:
        run = instance.get_run_by_id(holder.run_id)
        labels[holder.run_id] = run_label(run.tags, run.job_name) if run else "deleted run"
    return waiting.text(labels)


def waiting_for(instance, run_id: str) -> str | None:
    """What `run_id` waits for, and who holds it; None when it waits for no pool."""
    return describe(instance, waiting_in(pool_states(instance), run_id))


def pool_is_busy(instance, pools: Iterable[str]) -> str | None:
    """Which of `pools` has no slot free for a new claim, and who holds it; None when every one has room."""
    return describe(instance, busy_in(pool_states(instance, pools)))


def process_gone(instance, run) -> bool:
    """True when `run`'s process is known to be gone (read-only; `reap` acts on it)."""
    return not run.is_finished and _gone(instance, run, single_host(instance))
