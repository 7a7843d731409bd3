"""Runs whose process is gone, and pool slots nobody will give back: found, explained, and released.

A run started by the CLI carries a process stamp (lakehouse.liveness: host, pid, process start time). When that
process is gone (kill -9, a crash, a reboot), Dagster never hears the run end: it stays STARTED, so the audit
counts its partitions in flight, and any pool slot it claimed stays claimed, so every later run that needs the
pool waits forever. `reap` marks such a run failed (CANCELING ones canceled) with Dagster's own run events and
frees its slots with `free_concurrency_slots_for_run`; it also frees slots still held by runs that have finished.
Runs launched by a daemon are Dagster's to watch (run monitoring in dagster.yaml; the code server fails a run
whose worker died); their leaked slots are freed here too.

Called by every in-process `lakehouse backfill` / `repair` before it plans and while it waits for a slot, and by
the repair sensor each tick; `lakehouse health` reports the same findings without changing anything.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Iterable

from dagster import DagsterRunStatus, RunsFilter
from dagster._core.events import JobFailureData, RunFailureReason
from dagster._core.storage.tags import PARENT_RUN_ID_TAG

from lakehouse.liveness import DEAD, ProcessStamp
from lakehouse.run_tags import describe_partitions

# A run in these states should have a live process behind it.
LIVE_STATUSES = [DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING, DagsterRunStatus.STARTED,
                 DagsterRunStatus.CANCELING]
LAUNCHED_BY_TAG = "lakehouse/launched_by"


def short_id(run_id: str) -> str:
    return run_id[:8]


def _utc(ts: float | None) -> str | None:
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def run_label(run) -> str:
    """'BTC/USDT 2024-01-01..2024-01-07, lakehouse backfill, pid 123 on host': what a run is, for people."""
    parts = [describe_partitions(run.tags) or run.job_name, run.tags.get(LAUNCHED_BY_TAG)]
    stamp = ProcessStamp.from_tags(run.tags)
    if stamp is not None:
        parts.append(str(stamp))
    return ", ".join(p for p in parts if p)


@dataclasses.dataclass(frozen=True)
class DeadRun:
    run_id: str
    status: str
    label: str
    started_at: str | None

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        since = f" since {self.started_at}" if self.started_at else ""
        return f"run {short_id(self.run_id)} ({self.label}) {self.status}{since} but its process is gone"


@dataclasses.dataclass(frozen=True)
class LeakedSlot:
    pool: str
    run_id: str
    step_key: str | None
    status: str  # the run's final status, or "DELETED"
    claimed: bool  # a claimed slot (False: a queued claim that would be handed a slot)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        what = "holds a slot" if self.claimed else "has a queued claim"
        return f"run {short_id(self.run_id)} ({self.status}) {what} in pool '{self.pool}'"


def _is_ours_to_judge(run) -> bool:
    # A retry (run_retries) copies its parent's tags, process stamp included, but runs in another process.
    return PARENT_RUN_ID_TAG not in run.tags


def dead_runs(instance) -> list[DeadRun]:
    """Unfinished runs whose recorded process, on this host, no longer exists."""
    out = []
    for record in instance.get_run_records(RunsFilter(statuses=LIVE_STATUSES)):
        run = record.dagster_run
        stamp = ProcessStamp.from_tags(run.tags)
        if stamp is None or not _is_ours_to_judge(run) or stamp.state() != DEAD:
            continue
        started = record.start_time or record.create_timestamp.timestamp()
        out.append(DeadRun(run.run_id, run.status.value, run_label(run), _utc(started)))
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
    held: list[tuple[str, str, str | None, bool]] = []
    for pool, info in infos.items():
        held += [(pool, s.run_id, s.step_key, True) for s in info.claimed_slots]
        claimed = {(s.run_id, s.step_key) for s in info.claimed_slots}
        held += [(pool, p.run_id, p.step_key, False) for p in info.pending_steps if (p.run_id, p.step_key) not in claimed]
    if not held:
        return []
    run_ids = sorted({run_id for _, run_id, _, _ in held})
    runs = {r.run_id: r for r in instance.get_runs(RunsFilter(run_ids=run_ids))}
    out = []
    for pool, run_id, step_key, claimed in held:
        run = runs.get(run_id)
        if run is None or run.is_finished:
            out.append(LeakedSlot(pool, run_id, step_key, run.status.value if run else "DELETED", claimed))
    return out


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
        message = (f"The process that ran this run ({ProcessStamp.from_tags(run.tags)}) is gone: killed, crashed "
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
        out.append(Holder(slot.run_id, run_label(run) if run else "deleted run",
                          run.status.value if run else "DELETED", assigned.get((slot.run_id, slot.step_key))))
    return out


def process_gone(run) -> bool:
    """True when `run` names a process on this host that no longer exists (read-only; `reap` acts on it)."""
    stamp = ProcessStamp.from_tags(run.tags)
    return stamp is not None and _is_ours_to_judge(run) and not run.is_finished and stamp.state() == DEAD
