"""Notification sensors: a failed run, and freshness turning WARN or FAIL, post one message each (lakehouse.notify).

Thin glue: Dagster says what happened (the failed run and its step errors, the symbol_freshness check the repair
sensor records, the FRESHNESS_STATE_CHANGE events of the daemon's freshness policies); lakehouse.notify words it,
sends it to LAKEHOUSE_WEBHOOK_URL (or only logs it) and records the delivery. A webhook that is down never fails
a tick: the failure is logged and shows in `lakehouse health`.
"""

from __future__ import annotations

import json

from dagster import (
    AssetCheckEvaluation,
    DagsterEventType,
    DefaultSensorStatus,
    EventRecordsFilter,
    RunFailureSensorContext,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    run_failure_sensor,
    sensor,
)

from assets.instance_audit import SYMBOL_FRESHNESS_CHECK_KEY
from lakehouse.config import Settings
from lakehouse.notify import (
    asset_freshness_change,
    freshness_notification,
    notify,
    run_failure_notification,
    symbol_freshness_changes,
)
from lakehouse.run_tags import describe_partitions
from resources import LakehouseResource
from sensors.cursor import load_cursor

RUN_FAILURE_SENSOR_NAME = "lakehouse_notify_run_failure"
FRESHNESS_SENSOR_NAME = "lakehouse_notify_freshness"
# On its first tick the freshness sensor looks this far back for each asset's current state.
FIRST_TICK_EVENTS = 500
EVENTS_PER_TICK = 200


# run failures -------------------------------------------------------------------------------------
def failure_messages(context: RunFailureSensorContext) -> tuple[list[str], list[str]]:
    """(failed step keys, one line per failed step with the user-facing cause: the bottom of Dagster's error chain)."""
    steps, out = [], []
    for event in context.get_step_failure_events():
        err = event.step_failure_data.error if event.step_failure_data else None
        while err is not None and err.cause is not None:
            err = err.cause
        steps.append(event.step_key)
        out.append(f"{event.step_key}: {(err.message if err else 'failed').strip()}")
    if not out and context.failure_event is not None:
        out.append((context.failure_event.message or "run failed").strip())
    return steps, out


@run_failure_sensor(
    name=RUN_FAILURE_SENSOR_NAME,
    # Runs the CLI executes in-process (`lakehouse backfill`, `repair`) have no code location; watching every
    # location is what makes their failures reach the channel too.
    monitor_all_code_locations=True,
    minimum_interval_seconds=Settings.from_env().notify_interval_s,
    default_status=DefaultSensorStatus.RUNNING,
    description="Posts every failed run (run id, assets, partitions, error) to LAKEHOUSE_WEBHOOK_URL, or logs it "
                "when no URL is set.",
)
def notify_run_failure(context: RunFailureSensorContext, lakehouse: LakehouseResource) -> None:
    settings = Settings.from_env()
    run = context.dagster_run
    steps, errors = failure_messages(context)
    # In-process runs (materialize, the CLI) carry no asset selection; their failed steps name the assets.
    assets = sorted(k.to_user_string() for k in (run.asset_selection or ())) or steps
    message = run_failure_notification(run.run_id, run.job_name, assets, describe_partitions(run.tags), errors,
                                       dict(run.tags), settings.ui_url)
    notify(message, settings.webhook_url, context.log.info, context.log.error, lakehouse.storage())


# freshness ----------------------------------------------------------------------------------------
def _symbol_changes(instance, cursor: dict) -> list:
    """Per-symbol tiers from the newest symbol_freshness evaluation, against those the cursor saw last."""
    record = instance.get_latest_asset_check_evaluation_record(SYMBOL_FRESHNESS_CHECK_KEY)
    if record is None or record.event is None or record.id == cursor.get("check_id"):
        return []
    evaluation = record.event.dagster_event.event_specific_data
    if not isinstance(evaluation, AssetCheckEvaluation):
        return []  # a run that includes the check has planned it and not run it yet: its result comes later
    entry = (evaluation.metadata or {}).get("freshness_by_symbol")
    current = entry.value if entry is not None and isinstance(entry.value, dict) else {}
    changes = symbol_freshness_changes(cursor.get("tiers"), current)
    cursor.update(check_id=record.id, tiers={s: r.get("tier") for s, r in current.items()})
    return changes


def _asset_changes(instance, cursor: dict) -> list:
    """FRESHNESS_STATE_CHANGE events since the cursor; on the first tick, each asset's latest state."""
    # DagsterInstance.get_event_records is deprecated and has no fetch_* successor for this event type; the
    # storage method it wraps is the supported one.
    events = instance.event_log_storage
    first = "event_id" not in cursor
    if first:
        records = events.get_event_records(EventRecordsFilter(event_type=DagsterEventType.FRESHNESS_STATE_CHANGE),
                                           limit=FIRST_TICK_EVENTS, ascending=False)
        latest = {}
        for r in records:  # newest first: keep each asset's newest change
            latest.setdefault(r.event_log_entry.dagster_event.event_specific_data.key, r)
        records = sorted(latest.values(), key=lambda r: r.storage_id)
        cursor["event_id"] = max((r.storage_id for r in latest.values()), default=0)
    else:
        records = events.get_event_records(
            EventRecordsFilter(event_type=DagsterEventType.FRESHNESS_STATE_CHANGE, after_cursor=cursor["event_id"]),
            limit=EVENTS_PER_TICK, ascending=True)
    changes = []
    for r in records:
        data = r.event_log_entry.dagster_event.event_specific_data
        new, old = data.new_state.value, data.previous_state.value
        detail = (f"no materialization of {data.key.to_user_string()} within its freshness policy's "
                  f"{'fail' if new == 'FAIL' else 'warn'} window")
        change = asset_freshness_change(data.key.to_user_string(), None if first else old, new, detail)
        if change is not None:
            changes.append(change)
        cursor["event_id"] = max(cursor["event_id"], r.storage_id)
    return changes


@sensor(
    name=FRESHNESS_SENSOR_NAME,
    minimum_interval_seconds=60,
    default_status=DefaultSensorStatus.RUNNING,
    description="Posts a message when a symbol's freshness (the symbol_freshness check) or an asset's Dagster "
                "freshness state turns WARN or FAIL; once per transition, not every tick.",
)
def notify_freshness(context: SensorEvaluationContext, lakehouse: LakehouseResource):
    settings = Settings.from_env()
    cursor = load_cursor(context.cursor)
    changes = _symbol_changes(context.instance, cursor) + _asset_changes(context.instance, cursor)
    if not changes:
        return SensorResult(skip_reason=SkipReason("no symbol or asset turned WARN or FAIL since the last tick"),
                            cursor=json.dumps(cursor))
    message = freshness_notification(changes, settings.ui_url)
    delivery = notify(message, settings.webhook_url, context.log.info, context.log.error, lakehouse.storage())
    return SensorResult(skip_reason=SkipReason(f"{message.title}: {delivery.describe()}"), cursor=json.dumps(cursor))


NOTIFY_SENSORS = [notify_run_failure, notify_freshness]
