"""Synchronous, in-process work for the CLI: range runs over days (several symbols' same days in one run when
they can share it), with the truth at the end.

Each run executes in a worker thread while the main thread watches it (`Guard`): it says what the run waits for
and who holds it, frees pool slots of runs whose process is gone, stops at --timeout, and turns Ctrl-C / SIGTERM
into a canceled run with its slots freed. Dagster's in-process executor cannot do this itself: a step waiting
for a pool slot loops in `InstanceConcurrencyContext.claim` and never looks at signals.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import os
import signal
import sys
import threading
import time
import uuid

from dagster import AssetKey, DagsterInstance, RunsFilter, materialize

from assets.partitions import SYMBOLS_PARTITION
from lakehouse import progress
from lakehouse.ingest import contiguous_ranges
from lakehouse.liveness import ProcessStamp
from lakehouse.run_tags import RunGroup, group_runs

from .common import user_stderr

# Identifies the run a worker thread is executing, before materialize() returns its id.
LAUNCH_TAG = "lakehouse/launch"
EXIT_TIMEOUT = 3
SIGNAL_EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}
POLL_S = 0.2  # how soon a signal or the end of a run is noticed
WAIT_CHECK_S = 1.0  # how often the pool is read while a run may be waiting for it


@dataclasses.dataclass
class RangeOutcome:
    group: RunGroup
    run_id: str | None
    success: bool
    error: str | None = None
    split: bool = False  # failed over several symbols, then each symbol ran again alone (their own outcomes)

    symbols = property(lambda self: self.group.symbols)
    start = property(lambda self: self.group.start)
    end = property(lambda self: self.group.end)
    days = property(lambda self: self.group.days)
    symbol = property(lambda self: self.group.label)

    @property
    def counts_as_failed(self) -> bool:
        return not self.success and not self.split

    def as_dict(self) -> dict:
        return {"symbol": self.symbol, "symbols": list(self.symbols), "start": str(self.start), "end": str(self.end),
                "days": self.days, "run_id": self.run_id, "success": self.success, "error": self.error,
                "split": self.split}


def run_counts(outcomes: list[RangeOutcome]) -> dict:
    """How a command's runs ended; a split run's symbols count in their own runs, not as a failure."""
    failed = sum(1 for o in outcomes if o.counts_as_failed)
    split = sum(1 for o in outcomes if o.split)
    return {"runs": len(outcomes), "succeeded_runs": len(outcomes) - failed - split, "failed_runs": failed,
            "split_runs": split}


def runs_text(counts: dict) -> str:
    """'3 run(s): 1 succeeded, 1 failed, 1 failed over several symbols and ran again symbol by symbol'."""
    text = f"{counts['runs']} run(s): {counts['succeeded_runs']} succeeded, {counts['failed_runs']} failed"
    return text + (f", {counts['split_runs']} failed over several symbols and ran again symbol by symbol"
                   if counts["split_runs"] else "")


def _say(message: str) -> None:
    print(message, file=user_stderr(), flush=True)


class Guard:
    """Watches the runs of one in-process command: signals, --timeout, pool waits and dead slot holders.

    `with Guard(instance, "backfill", timeout_s, display) as guard: run_plan(..., guard=guard)`."""

    def __init__(self, instance: DagsterInstance, command: str, timeout_s: float | None = None, display=None):
        self.instance = instance
        self.command = command
        self.timeout_s = timeout_s
        self.display = display
        self.stamp = ProcessStamp.current()
        self.by = f"lakehouse {command} ({self.stamp})"
        self._started = time.monotonic()
        self._signal: int | None = None
        self._previous: dict = {}
        self.finished: list[RangeOutcome] = []

    def __enter__(self) -> "Guard":
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNAL_EXIT:
                self._previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, exc_type, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        if exc_type is None and self._signal is not None:  # arrived after the last run ended: still honoured
            self.check(None, None, None)

    def _on_signal(self, signum, _frame) -> None:
        # Only a flag: the main thread may be inside a database call; the watch loop acts within POLL_S.
        self._signal = signum

    # the checks ----------------------------------------------------------------------------------------
    def reap(self) -> None:
        """Fail runs whose process is gone and free the slots nobody will give back, saying so."""
        from assets.run_guard import reap

        for line in reap(self.instance, self.by).lines():
            _say(line)

    def _expired(self) -> bool:
        return self.timeout_s is not None and time.monotonic() - self._started >= self.timeout_s

    def check(self, run_id: str | None, launch: str | None, waiting: str | None) -> None:
        """Stop the command (canceling the run in progress) on a signal or at the deadline."""
        if self._signal is not None:
            name = signal.Signals(self._signal).name
            self.stop(run_id, launch, SIGNAL_EXIT[self._signal], f"interrupted by {name}")
        if self._expired():
            why = f"timed out after {self.timeout_s:g}s (--timeout)" + (f" {waiting}" if waiting else "")
            self.stop(run_id, launch, EXIT_TIMEOUT, why)

    def note(self, text: str | None) -> None:
        if self.display is not None:
            self.display.update(note=text or "")
        elif text:
            _say(text)

    def wait_for_pools(self, pools: list[str]) -> None:
        """Before a run that needs a pool: wait (sleeping, not spinning) while every slot is taken, saying by whom."""
        from assets.run_guard import pool_is_busy

        if not pools:
            return
        busy = pool_is_busy(self.instance, pools)
        started, last_reap = time.monotonic(), 0.0
        while busy is not None:
            self.note(f"{busy}; waited {time.monotonic() - started:.0f}s")
            self.check(None, None, busy)
            if time.monotonic() - last_reap >= WAIT_CHECK_S * 2:
                self.reap()
                last_reap = time.monotonic()
            time.sleep(POLL_S)
            busy = pool_is_busy(self.instance, pools)
        if time.monotonic() - started > POLL_S:
            self.note("")

    def watch(self, worker: threading.Thread, launch: str) -> str | None:
        """Wait for the worker thread's run to end, watching it; returns the run id."""
        from assets.run_guard import waiting_for

        run_id = None
        last_check, last_reap, wait_started, waiting = 0.0, 0.0, None, None
        while worker.is_alive():
            worker.join(POLL_S)
            if run_id is None:
                run_id = find_run(self.instance, launch)
            self.check(run_id, launch, waiting)
            now = time.monotonic()
            if run_id is None or now - last_check < WAIT_CHECK_S or not worker.is_alive():
                continue
            last_check = now
            state = waiting_for(self.instance, run_id)
            if state is None:
                if waiting is not None:
                    self.note("")
                waiting, wait_started = None, None
                continue
            wait_started = wait_started or now
            waiting = state
            self.note(f"{waiting}; waited {now - wait_started:.0f}s")
            if now - last_reap >= WAIT_CHECK_S * 2:
                self.reap()
                last_reap = now
        return run_id

    def stop(self, run_id: str | None, launch: str | None, code: int, why: str) -> None:
        """Cancel the run in progress, free its slots, say what stays, and exit `code` at once.

        At once (os._exit): the worker thread is still inside Dagster and must not write anything after its run
        was marked canceled. Files are written atomically, so what finished stays and nothing is torn."""
        storage = self.instance.event_log_storage
        # The worker may be looping in InstanceConcurrencyContext.claim, which re-queues its claim after we free
        # it; from here on this process claims nothing.
        storage.claim_concurrency_slot = _refuse_claim
        run_id = run_id or (find_run(self.instance, launch) if launch else None)
        lines = [f"{self.command} {why}."]
        if run_id:
            run = self.instance.get_run_by_id(run_id)
            if run is not None and not run.is_finished:
                self.instance.report_run_canceled(run, f"Canceled: {self.command} {why} ({self.stamp}).")
                lines.append(f"run {run_id} canceled; its pool slots freed.")
            if storage.supports_global_concurrency_limits:
                storage.free_concurrency_slots_for_run(run_id)
        done = sum(1 for o in self.finished if o.success)
        lines.append(f"{done} range run(s) finished before and stay written; every partition written so far "
                     f"stays (files are replaced atomically). Rerun the same command, or `lakehouse repair`, to "
                     f"finish the rest.")
        if self.display is not None:
            try:
                self.display.__exit__(None, None, None)
            except Exception:  # noqa: BLE001  (a display that cannot close must not keep the process alive)
                pass
        _say("\n".join(lines))
        sys.stdout.flush()
        os._exit(code)


def exit_on_signals() -> None:
    """Until a run starts (its Guard takes over), Ctrl-C / SIGTERM end the command at once with 130 / 143:
    planning writes nothing that needs undoing."""
    if threading.current_thread() is not threading.main_thread():
        return

    def leave(signum, _frame):
        _say(f"interrupted by {signal.Signals(signum).name} before any run started.")
        sys.exit(SIGNAL_EXIT[signum])

    for sig in SIGNAL_EXIT:
        signal.signal(sig, leave)


def _refuse_claim(concurrency_key, run_id, step_key, priority=None):
    from dagster._core.storage.event_log.base import ConcurrencyClaimStatus, ConcurrencySlotStatus

    return ConcurrencyClaimStatus(concurrency_key=concurrency_key, slot_status=ConcurrencySlotStatus.BLOCKED)


def find_run(instance, launch: str) -> str | None:
    records = instance.get_run_records(RunsFilter(tags={LAUNCH_TAG: launch}), limit=1)
    return records[0].dagster_run.run_id if records else None


def selection_pools(defs, selection: list[str]) -> list[str]:
    """Pools the selected assets' steps claim (raw_ohlcv: 'exchange')."""
    keys = {AssetKey.from_user_string(s) for s in selection}
    pools: set[str] = set()
    for assets_def in defs.assets or []:
        if keys & set(getattr(assets_def, "keys", ())):
            pools |= set(getattr(assets_def.node_def, "pools", ()) or ())
    return sorted(pools)


def run_range(instance: DagsterInstance, defs, selection: list[str], group: RunGroup, tags: dict | None = None,
              guard: Guard | None = None) -> RangeOutcome:
    """Materialize `selection` over the group's days and symbols as a single run (for one symbol, as a UI
    backfill would)."""
    launch = uuid.uuid4().hex
    stamp = guard.stamp if guard is not None else ProcessStamp.current()
    run_tags = {
        **group.tags(),
        "lakehouse/launched_by": "cli",
        **(tags or {}),
        # Who runs it: lets any later command, the repair sensor and `lakehouse health` tell a dead run.
        **stamp.as_tags(),
        LAUNCH_TAG: launch,
    }
    from assets.instance_audit import run_selection
    from definitions import build_resources

    if guard is not None:
        guard.wait_for_pools(selection_pools(defs, selection))
        guard.note(f"starting the run for {group.label} {group.start}..{group.end}")
    box: dict = {}

    def work() -> None:
        try:
            box["result"] = materialize(
                assets=list(defs.assets or []) + list(defs.asset_checks or []),
                selection=run_selection(selection),
                instance=instance,
                resources=build_resources(),
                tags=run_tags,
                raise_on_error=False,
                # The CLI shows its own progress; Dagster's per-event console log would drown it.
                run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
            )
        except BaseException as exc:  # noqa: BLE001  (reported per range below, never a crash of the CLI)
            box["error"] = exc

    if guard is None:
        work()
    else:
        worker = threading.Thread(target=work, name=f"run {group.label} {group.start}..{group.end}", daemon=True)
        worker.start()
        guard.watch(worker, launch)
    if "error" in box:
        exc = box["error"]
        return RangeOutcome(group, find_run(instance, launch), False, f"{exc.__class__.__name__}: {exc}")
    result = box["result"]
    error = None
    if not result.success:
        failures = [e for e in result.all_events if e.is_step_failure]
        messages = []
        for event in failures:
            err = event.step_failure_data.error
            # The user-facing cause sits at the bottom of Dagster's wrapping chain.
            while err is not None and err.cause is not None:
                err = err.cause
            messages.append(f"{event.step_key}: {(err.message if err else 'failed').strip()}")
        error = "; ".join(messages) or "run failed"
    return RangeOutcome(group, result.run_id, result.success, error)


def run_plan(instance, defs, selection, plan: dict[str, list[dt.date]], display=None, tags=None,
             tables=(), guard: Guard | None = None, timeout_s: float | None = None,
             command: str = "backfill") -> list[RangeOutcome]:
    """Run every contiguous day range of every symbol, advancing `display` as each layer writes a partition.

    Symbols with the same days share a run (`group_runs`). When such a run fails, each of its symbols runs again
    alone, so one bad symbol fails only itself; days already fetched are kept, so the retry costs little.
    `tables` (unpartitioned layers such as scores) are rebuilt at the end of each run; they write no partition,
    so the progress bar does not count them. Without a `guard`, one is made for this plan (signals, timeout)."""
    if guard is None:
        with Guard(instance, command, timeout_s, display) as own:
            own.reap()
            return run_plan(instance, defs, selection, plan, display, tags, tables, guard=own)
    outcomes: list[RangeOutcome] = []
    # The partitions written by the run in progress (layer, symbol, day): counted once on the bar even when a
    # failed group's symbols run again and write them anew.
    seen: list[set] = [set()]

    def on_event(event: progress.ProgressEvent) -> None:
        if event.kind == "waiting" and display is not None:
            display.update(note=event.detail or "")
        elif event.kind == "partition_done":
            key = (event.layer, event.symbol, event.day)
            if key in seen[0]:
                return
            seen[0].add(key)
            if display is not None:
                display.advance(rows=event.rows, note=f"{event.layer} {event.symbol} {event.day}")

    ranges = {symbol: contiguous_ranges(days) for symbol, days in plan.items()}
    order = instance.get_dynamic_partitions(SYMBOLS_PARTITION) if len(ranges) > 1 else []
    pending = collections.deque((group, set()) for group in group_runs(ranges, order))
    with progress.subscribe(on_event):
        while pending:
            group, seen[0] = pending.popleft()
            outcome = run_range(instance, defs, [*selection, *tables], group, tags, guard=guard)
            outcomes.append(outcome)
            guard.finished.append(outcome)
            if outcome.success:
                continue
            if len(group.symbols) > 1:
                outcome.split = True
                _say(f"run over {outcome.symbol} {group.start}..{group.end} failed ({outcome.error}); "
                     f"running each of its {len(group.symbols)} symbols alone")
                pending.extendleft(reversed([(dataclasses.replace(group, symbols=(s,)), seen[0])
                                             for s in group.symbols]))
            elif display is not None:
                # What the failed run did not write counts as failed, so the bar still reaches its total.
                written = sum(1 for _layer, symbol, _day in seen[0] if symbol == group.symbols[0])
                display.update(failed=display.failed + max(0, outcome.days * len(selection) - written),
                               note=f"{outcome.symbol} failed")
    return outcomes
