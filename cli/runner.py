"""Synchronous, in-process work for the CLI: one run per symbol over a range of days, with the truth at the end."""

from __future__ import annotations

import dataclasses
import datetime as dt

from dagster import AssetKey, DagsterInstance, materialize

from lakehouse import progress
from lakehouse.ingest import contiguous_ranges
from lakehouse.run_tags import range_tags


@dataclasses.dataclass
class RangeOutcome:
    symbol: str
    start: dt.date
    end: dt.date
    run_id: str | None
    success: bool
    error: str | None = None

    @property
    def days(self) -> int:
        return (self.end - self.start).days + 1

    def as_dict(self) -> dict:
        return {"symbol": self.symbol, "start": str(self.start), "end": str(self.end), "days": self.days,
                "run_id": self.run_id, "success": self.success, "error": self.error}


def run_range(instance: DagsterInstance, defs, selection: list[str], symbol: str, start: dt.date, end: dt.date,
              tags: dict | None = None) -> RangeOutcome:
    """Materialize `selection` for one symbol over [start, end] as a single run (as a UI backfill would)."""
    run_tags = {
        **range_tags(symbol, start, end),
        "lakehouse/launched_by": "cli",
        **(tags or {}),
    }
    from definitions import build_resources

    try:
        result = materialize(
            assets=list(defs.assets or []) + list(defs.asset_checks or []),
            selection=[AssetKey(s) for s in selection],
            instance=instance,
            resources=build_resources(),
            tags=run_tags,
            raise_on_error=False,
            # The CLI shows its own progress; Dagster's per-event console log would drown it.
            run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
        )
    except Exception as exc:  # a definition-level error must still be reported per range, not crash the CLI
        return RangeOutcome(symbol, start, end, None, False, f"{exc.__class__.__name__}: {exc}")
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
    return RangeOutcome(symbol, start, end, result.run_id, result.success, error)


def run_plan(instance, defs, selection, plan: dict[str, list[dt.date]], display=None, tags=None,
             tables=()) -> list[RangeOutcome]:
    """Run every contiguous day range of every symbol, advancing `display` as each layer writes a partition.

    `tables` (unpartitioned layers such as scores) are rebuilt at the end of each run; they write no partition,
    so the progress bar does not count them."""
    outcomes: list[RangeOutcome] = []
    written = [0]

    def on_event(event: progress.ProgressEvent) -> None:
        if event.kind == "partition_done":
            written[0] += 1
            if display is not None:
                display.advance(rows=event.rows, note=f"{event.layer} {event.symbol} {event.day}")

    with progress.subscribe(on_event):
        for symbol, days in plan.items():
            for start, end in contiguous_ranges(days):
                written[0] = 0
                outcome = run_range(instance, defs, [*selection, *tables], symbol, start, end, tags)
                outcomes.append(outcome)
                if not outcome.success and display is not None:
                    # What the failed run did not write counts as failed, so the bar still reaches its total.
                    display.update(failed=display.failed + max(0, outcome.days * len(selection) - written[0]),
                                   note=f"{symbol} failed")
    return outcomes
