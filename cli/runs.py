"""`lakehouse runs` and `lakehouse retry-failed`: what ran and how it ended, and rerunning only what failed."""

from __future__ import annotations

import json

import click

from .dagster_api import Backfill, RunInfo
from .common import UsageFailure, get_instance
from .remote import (
    DEFAULT_TIMEOUT,
    DeploymentFailure,
    FAILED_BACKFILL,
    FAILED_RUN,
    Duration,
    backfill_row,
    call,
    connect,
    print_rows,
    remote_options,
    remote_rows,
    run_row,
    newest_first,
    watch,
)


def _innermost(error) -> str:
    while error is not None and getattr(error, "cause", None) is not None:
        error = error.cause
    return (error.message if error is not None else "failed").strip()


def _local_errors(instance, run_id: str) -> str | None:
    from dagster import DagsterEventType

    messages = []
    for record in instance.all_logs(run_id, of_type=DagsterEventType.STEP_FAILURE):
        event = record.dagster_event
        messages.append(f"{event.step_key}: {_innermost(event.step_failure_data.error)}")
    if not messages:
        for record in instance.all_logs(run_id, of_type=DagsterEventType.RUN_FAILURE):
            messages.append(record.message or "run failed")
    return "; ".join(messages) or None


def local_rows(limit: int, failed_only: bool) -> list[dict]:
    """Runs and backfills of the local instance (DAGSTER_HOME), newest first."""
    from dagster import DagsterRunStatus, RunsFilter
    from dagster._core.execution.backfill import BulkActionsFilter, BulkActionStatus

    instance = get_instance()
    run_filter = RunsFilter(statuses=[DagsterRunStatus(s) for s in sorted(FAILED_RUN)]) if failed_only else None
    rows = []
    for record in instance.get_run_records(filters=run_filter, limit=limit):
        run = record.dagster_run
        info = RunInfo(run.run_id, run.status.value, dict(run.tags), record.create_timestamp.timestamp(),
                       record.start_time, record.end_time, run.job_name)
        rows.append(run_row(info, _local_errors(instance, run.run_id) if run.status.value == "FAILURE" else None))
    backfill_filter = (BulkActionsFilter(statuses=[BulkActionStatus(s) for s in sorted(FAILED_BACKFILL)])
                       if failed_only else None)
    for b in instance.get_backfills(filters=backfill_filter, limit=limit):
        error = _innermost(b.error) if b.error else None
        info = Backfill(b.backfill_id, b.status.value, b.backfill_timestamp, getattr(b, "backfill_end_timestamp", None),
                        [], error, b.title, dict(b.tags))
        rows.append(backfill_row(info))
    return newest_first(rows, limit)


@click.command("runs")
@click.option("--failed", "failed_only", is_flag=True, help="Only failed or canceled runs and backfills.")
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True,
              help="How many runs and backfills to show, newest first.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--url", envvar="DAGSTER_URL", default=None, metavar="http://HOST:PORT",
              help="Ask this running deployment instead of the local instance; default: env DAGSTER_URL.")
def runs(failed_only, limit, as_json, url):
    """Recent runs and backfills with their outcome, newest first; failed runs with their error.

    Reads the local instance (DAGSTER_HOME) by default, or a running deployment with --url.

    \b
    Example:
        lakehouse runs --failed --limit 10
        lakehouse runs --url http://127.0.0.1:3000 --json
    """
    if url:
        api = connect(url)
        rows = call(remote_rows, api, limit, failed_only)
    else:
        rows = local_rows(limit, failed_only)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    print_rows(rows, failed_only)


@click.command("retry-failed")
@click.argument("backfill_id")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary at the end (progress on stderr).")
@remote_options
def retry_failed(backfill_id, as_json, url, wait, timeout):
    """Rerun only the partitions a finished backfill did not materialize, as a new backfill, and wait like backfill.

    Uses the deployment's own re-execution (FROM_FAILURE): partitions that succeeded are not run again.
    Exit codes as for `lakehouse backfill --url`: 0, 1 (failed again: which, and why), 3 timed out, 4 deployment.

    \b
    Example:
        lakehouse retry-failed eogxfgpf --url http://127.0.0.1:3000 --timeout 30m
    """
    if not url:
        raise UsageFailure("retry-failed reruns a backfill on a running deployment: pass --url http://HOST:PORT "
                           "or set DAGSTER_URL (`lakehouse dev` serves http://127.0.0.1:3000)")
    api = connect(url)
    parent = call(api.backfill, backfill_id)
    say = (lambda m: click.echo(m, err=True)) if as_json else click.echo
    if parent.succeeded:
        say(f"backfill {backfill_id} succeeded ({parent.status}); nothing to retry")
        if as_json:
            click.echo(json.dumps({"status": "nothing_to_retry", "backfill_id": backfill_id,
                                   "backfill_status": parent.status}, indent=2))
        return
    if not parent.finished:
        raise DeploymentFailure(f"backfill {backfill_id} is still {parent.status}; wait for it to finish "
                           f"({api.backfill_link(backfill_id)}), then retry")
    new_id = call(api.retry_backfill, backfill_id)
    say(f"retrying the failed partitions of {backfill_id}")
    watch(api, [new_id], f"retry {new_id}", wait=wait is not False,
          timeout_s=timeout or Duration().convert(DEFAULT_TIMEOUT, None, None), as_json=as_json)
