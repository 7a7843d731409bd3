"""Is the process that started a run still alive? A stamp (host, pid, process start time) recorded at launch
answers it later from any process on the same host, without Dagster.

The start time guards against PID reuse: after a crash or a reboot the same pid may belong to another process.
Also here, as plain values shared by the Dagster glue (assets/run_guard.py) and the GraphQL client (`health
--url`, remote progress): which unfinished runs are dead, which pool slots leaked, and who holds a pool.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from typing import Mapping

import psutil

HOST_TAG = "lakehouse/host"
PID_TAG = "lakehouse/pid"
PID_STARTED_TAG = "lakehouse/pid_started"
ALIVE, DEAD, ELSEWHERE = "alive", "dead", "elsewhere"
# psutil's create_time is rounded differently across calls and platforms; a reused pid starts much later.
START_TOLERANCE_S = 2.0


def this_host() -> str:
    return socket.gethostname()


@dataclasses.dataclass(frozen=True)
class ProcessStamp:
    host: str
    pid: int
    started: float  # epoch seconds the process was created

    @classmethod
    def current(cls) -> "ProcessStamp":
        return cls(this_host(), os.getpid(), psutil.Process().create_time())

    @classmethod
    def from_tags(cls, tags: Mapping[str, str]) -> "ProcessStamp | None":
        try:
            return cls(tags[HOST_TAG], int(tags[PID_TAG]), float(tags[PID_STARTED_TAG]))
        except (KeyError, ValueError):
            return None

    def as_tags(self) -> dict[str, str]:
        return {HOST_TAG: self.host, PID_TAG: str(self.pid), PID_STARTED_TAG: f"{self.started:.2f}"}

    def state(self) -> str:
        """ALIVE, DEAD (this host, the process is gone or its pid now belongs to another), or ELSEWHERE."""
        if self.host != this_host():
            return ELSEWHERE
        return _pid_state(self.pid, lambda created: abs(created - self.started) <= START_TOLERANCE_S)

    def __str__(self) -> str:
        return f"pid {self.pid} on {self.host}"


def pid_state(pid: int, started_before: float) -> str:
    """ALIVE when process `pid` exists on this host and was created by `started_before` (epoch seconds), else
    DEAD: for a run worker whose pid Dagster recorded, but not its start time."""
    return _pid_state(pid, lambda created: created <= started_before + START_TOLERANCE_S)


def _pid_state(pid: int, same_process) -> str:
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return DEAD
        return ALIVE if same_process(proc.create_time()) else DEAD
    except psutil.NoSuchProcess:
        return DEAD
    except psutil.Error:  # e.g. access denied: it exists, so it is not ours to declare dead
        return ALIVE


def stop_processes(procs: list[psutil.Process], grace_s: float) -> None:
    """SIGTERM each process, SIGKILL those still running `grace_s` later, and reap them: a graceful stop first
    (a daemon stops its threads, a worker hands back its task), never a process left behind."""
    for proc in procs:
        try:
            proc.terminate()
        except psutil.Error:
            pass
    _gone, alive = psutil.wait_procs(procs, timeout=grace_s)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=5)


# runs and pool slots, judged from plain values (Dagster's objects here, GraphQL answers for `health --url`) --
# A retry (Dagster's run_retries) copies its parent's tags, process stamp included, but runs in another process.
PARENT_RUN_TAG = "dagster/parent_run_id"
LAUNCHED_BY_TAG = "lakehouse/launched_by"
FINISHED = ("SUCCESS", "FAILURE", "CANCELED")


def short_id(run_id: str) -> str:
    return run_id[:8]


def process_state(tags: Mapping[str, str]) -> str | None:
    """ALIVE / DEAD / ELSEWHERE for a run that names its process, None for one that does not (or a retry)."""
    stamp = ProcessStamp.from_tags(tags)
    if stamp is None or PARENT_RUN_TAG in tags:
        return None
    return stamp.state()


def run_label(tags: Mapping[str, str], job_name: str = "") -> str:
    """'BTC/USDT 2024-01-01..2024-01-07, cli, pid 123 on host': what a run is, for people."""
    from .run_tags import describe_partitions

    stamp = ProcessStamp.from_tags(tags)
    parts = [describe_partitions(tags) or job_name, tags.get(LAUNCHED_BY_TAG), str(stamp) if stamp else None]
    return ", ".join(p for p in parts if p)


@dataclasses.dataclass(frozen=True)
class DeadRun:
    run_id: str
    status: str
    label: str
    started_at: str | None

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "text": str(self)}

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
        return {**dataclasses.asdict(self), "text": str(self)}

    def __str__(self) -> str:
        what = "holds a slot" if self.claimed else "has a queued claim"
        return f"run {short_id(self.run_id)} ({self.status}) {what} in pool '{self.pool}'"


def leaked(held: list[tuple[str, str, str | None, bool]], statuses: Mapping[str, str]) -> list[LeakedSlot]:
    """Of (pool, run_id, step_key, claimed) entries, those whose run has finished or no longer exists
    (`statuses`: run_id -> status name, for the runs that exist)."""
    out = []
    for pool, run_id, step_key, claimed in held:
        status = statuses.get(run_id, "DELETED")
        if status in FINISHED or status == "DELETED":
            out.append(LeakedSlot(pool, run_id, step_key, status, claimed))
    return out


def holdings(pool: str, claimed, pending) -> list[tuple[str, str, str | None, bool]]:
    """(pool, run_id, step_key, claimed) for a pool's claimed slots (run_id, step_key) and its queued claims
    (a claimed step stays queued until it frees its slot; it is listed once)."""
    claimed = list(claimed)
    taken = set(claimed)
    return [(pool, r, s, True) for r, s in claimed] + [(pool, r, s, False) for r, s in pending if (r, s) not in taken]


# who holds a pool ----------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class PoolState:
    """One pool as Dagster's concurrency tables hold it (read from the instance, or from GraphQL)."""

    pool: str
    slot_count: int
    claimed: tuple[tuple[str, str], ...]  # (run_id, step_key) holding a slot
    pending: tuple[tuple[str, str, float, float | None], ...]  # (run_id, step_key, enqueued, assigned) epoch s


@dataclasses.dataclass(frozen=True)
class Holder:
    run_id: str
    since: float | None  # when the slot was handed to it


@dataclasses.dataclass(frozen=True)
class Waiting:
    pool: str
    holders: tuple[Holder, ...]
    queued_ahead: int = 0

    def text(self, labels: Mapping[str, str] | None = None) -> str:
        """'waiting for a slot in pool 'exchange', held by run 1a2b3c4d (ETH/USDT 2024-03-01, cli, pid 42 on
        host1) since 14:30:05 UTC'; `labels`: run_id -> what the run is."""
        labels = labels or {}
        if self.holders:
            who = "; ".join(_holder_text(h, labels.get(h.run_id)) for h in self.holders[:2])
            more = f" and {len(self.holders) - 2} more" if len(self.holders) > 2 else ""
            return f"waiting for a slot in pool '{self.pool}', held by {who}{more}"
        if self.queued_ahead:
            return f"waiting for a slot in pool '{self.pool}', {self.queued_ahead} step(s) queued ahead"
        return f"waiting for a slot in pool '{self.pool}'"


def _holder_text(holder: Holder, label: str | None) -> str:
    import datetime as dt

    since = "" if holder.since is None else \
        f" since {dt.datetime.fromtimestamp(holder.since, dt.timezone.utc).strftime('%H:%M:%S')} UTC"
    return f"run {short_id(holder.run_id)}" + (f" ({label})" if label else "") + since


def _holders(state: PoolState, exclude: str | None = None) -> tuple[Holder, ...]:
    assigned = {(r, s): a for r, s, _e, a in state.pending}
    return tuple(Holder(r, assigned.get((r, s))) for r, s in state.claimed if r != exclude)


def waiting_in(pools: list[PoolState], run_id: str) -> Waiting | None:
    """What `run_id` waits for: a pool where it has a queued claim but no slot, and who holds that pool."""
    for state in pools:
        mine = {s for r, s in state.claimed if r == run_id}
        waiting = [p for p in state.pending if p[0] == run_id and p[1] not in mine]
        if waiting:
            ahead = sum(1 for r, _s, e, a in state.pending if r != run_id and a is None and e < waiting[0][2])
            return Waiting(state.pool, _holders(state, exclude=run_id), ahead)
    return None


def busy_in(pools: list[PoolState]) -> Waiting | None:
    """A pool with no slot left for a new claim (claimed or already handed out), and who holds it."""
    for state in pools:
        taken = set(state.claimed) | {(r, s) for r, s, _e, a in state.pending if a is not None}
        if state.slot_count and len(taken) >= state.slot_count:
            return Waiting(state.pool, _holders(state))
    return None
