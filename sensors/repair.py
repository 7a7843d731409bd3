"""The repair sensor: each tick audits the lakehouse's files and requests runs for exactly the partitions that need work.

Thin glue over lakehouse.audit: it adds what only Dagster knows (tracked symbols, queued and running runs, the
asset graph) and turns the audit's plan into range RunRequests. Everything it decides is in the tick's
SkipReason or in each run's tags.
"""


import datetime as dt
import hashlib
import json
import time
from typing import Sequence

from dagster import (
    AssetCheckKey,
    AssetKey,
    AssetSelection,
    DagsterRunStatus,
    DefaultSensorStatus,
    RunRequest,
    RunsFilter,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from assets.partitions import SYMBOLS_PARTITION, parse_partition_key, symbol_day_partitions
from lakehouse.audit import Audit, Auditor, RepairRequest, audited_layers
from lakehouse.config import Settings
from lakehouse.registry import Registry, TrackedSymbol
from lakehouse.run_tags import covered_partitions, range_tags
from lakehouse.schema import RAW_OHLCV
from resources import ExchangeResource, LakehouseResource
from sensors.cursor import load_cursor
from sensors.run_guard import process_gone, reap

REPAIR_SENSOR_NAME = "lakehouse_repair"
SYMBOL_FRESHNESS_CHECK = "symbol_freshness"
# Queued runs count: a request the daemon has not started yet must not be requested again.
ACTIVE_STATUSES = [DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING,
                   DagsterRunStatus.STARTED, DagsterRunStatus.CANCELING]
FRESHNESS_REPORT_EVERY_MS = 10 * 60_000
# Time a tick may spend re-reading changed files; a cold manifest of a big lakehouse fills over a few ticks
# instead of running into the sensor timeout (60 s by default).
READ_BUDGET_S = 20.0


# what Dagster knows ---------------------------------------------------------------------------------
def tracked_symbols(instance, registry: Registry) -> tuple[list[TrackedSymbol], list[str]]:
    """Symbols that are both registered (start day) and a Dagster partition (can be materialized)."""
    partitions = set(instance.get_dynamic_partitions(SYMBOLS_PARTITION))
    entries = registry.load()
    notes = [f"{s} is a Dagster partition but not in the registry; re-add it with lakehouse symbols add {s}"
             for s in sorted(partitions - set(entries))]
    return [e for s, e in sorted(entries.items()) if s in partitions], notes


def in_flight_partitions(instance) -> dict[str, set[dt.date]]:
    """symbol -> days that a queued or running run, or a backfill still in progress, already covers."""
    out: dict[str, set[dt.date]] = {}
    order = instance.get_dynamic_partitions(SYMBOLS_PARTITION)
    for record in instance.get_run_records(RunsFilter(statuses=ACTIVE_STATUSES)):
        if process_gone(instance, record.dagster_run):  # a killed CLI's run: nothing is coming, so it is repairable
            continue
        for symbol, day in covered_partitions(record.dagster_run.tags, order) or ():
            out.setdefault(symbol, set()).add(day)
    try:
        from dagster._core.execution.backfill import BulkActionsFilter, BulkActionStatus

        backfills = instance.get_backfills(filters=BulkActionsFilter(statuses=[BulkActionStatus.REQUESTED]))
    except Exception:
        backfills = []
    for backfill in backfills:
        data = backfill.asset_backfill_data if backfill.is_asset_backfill else None
        if data is None:
            continue
        for akpk in data.target_subset.iterate_asset_partitions():
            if akpk.partition_key and "|" in akpk.partition_key:
                symbol, day = parse_partition_key(akpk.partition_key)
                out.setdefault(symbol, set()).add(day)
    return out


def last_runs_by_symbol(instance, limit: int = 300) -> dict[str, dict]:
    """The newest finished-or-running run of each symbol among the last `limit` runs (one query)."""
    out: dict[str, dict] = {}
    order = instance.get_dynamic_partitions(SYMBOLS_PARTITION)
    for record in instance.get_run_records(limit=limit):
        run = record.dagster_run
        for symbol in {s for s, _ in covered_partitions(run.tags, order) or ()}:
            if symbol not in out:
                ended = record.end_time or record.start_time or record.create_timestamp.timestamp()
                out[symbol] = {"status": run.status.value, "run_id": run.run_id,
                               "at": dt.datetime.fromtimestamp(ended, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    return out


def exchange_now(exchange: ExchangeResource) -> tuple[str, int]:
    """The configured exchange's id and its clock (pinned in tests, the wall clock for real exchanges)."""
    client = exchange.client()
    try:
        return client.id, client.now_ms()
    finally:
        client.close()


# from the plan to RunRequests -------------------------------------------------------------------------
def partitioned_keys(asset_graph) -> list[AssetKey]:
    """Every asset on the symbol x day partitioning, the ones a range run can carry."""
    return [k for k in asset_graph.materializable_asset_keys
            if asset_graph.get(k).partitions_def == symbol_day_partitions]


def selection_for(request: RepairRequest, asset_graph) -> tuple[list[AssetKey], list[AssetCheckKey]]:
    """The request's layers plus every partitioned asset downstream of them, and those assets' checks
    except the per-symbol freshness check (a report over all symbols, not a property of this range)."""
    allowed = set(partitioned_keys(asset_graph))
    picked = {AssetKey(layer) for layer in request.layers} & allowed
    frontier = list(picked)
    while frontier:
        for child in asset_graph.get(frontier.pop()).child_keys:
            if child in allowed and child not in picked:
                picked.add(child)
                frontier.append(child)
    keys = sorted(picked, key=lambda k: k.to_user_string())
    checks = [c for c in asset_graph.asset_check_keys
              if c.asset_key in picked and c.name != SYMBOL_FRESHNESS_CHECK]
    return keys, sorted(checks, key=lambda c: (c.asset_key.to_user_string(), c.name))


def request_tags(request: RepairRequest, summary: str, launched_by: str) -> dict[str, str]:
    return {
        **range_tags(request.symbol, request.start, request.end),
        "lakehouse/launched_by": launched_by,
        "lakehouse/symbol": request.symbol,
        "lakehouse/repair": request.action,
        "lakehouse/reasons": request.reasons_text,
        "lakehouse/audit": summary[:250],
    }


def run_requests(audit: Audit, requests: Sequence[RepairRequest], asset_graph) -> list[RunRequest]:
    out = []
    for r in requests:
        keys, checks = selection_for(r, asset_graph)
        out.append(RunRequest(tags=request_tags(r, audit.summary(), REPAIR_SENSOR_NAME),
                              asset_selection=keys, asset_check_keys=checks))
    return out


def audit_now(instance, lakehouse: LakehouseResource, exchange: ExchangeResource, asset_graph,
              settings: Settings | None = None, layers: Sequence[str] | None = None,
              read_budget_s: float | None = None) -> tuple[Audit, list[str]]:
    """One audit of the whole lakehouse as Dagster sees it: tracked symbols, in-flight runs, present layers."""
    settings = settings or Settings.from_env()
    storage = lakehouse.storage()
    tracked, notes = tracked_symbols(instance, lakehouse.registry())
    exchange_id, now_ms = exchange_now(exchange)
    if layers is None:
        layers = audited_layers(k.to_user_string() for k in partitioned_keys(asset_graph))
    audit = Auditor(storage, settings, layers, read_budget_s=read_budget_s).run(
        tracked, now_ms, in_flight=in_flight_partitions(instance), exchange=exchange_id)
    audit.notes[:0] = notes
    return audit, notes


# the sensor -------------------------------------------------------------------------------------------
def build_repair_sensor(
    assets: Sequence = (),
    *,
    name: str = REPAIR_SENSOR_NAME,
    minimum_interval_seconds: int | None = None,
    default_status: DefaultSensorStatus = DefaultSensorStatus.RUNNING,
):
    """The repair sensor over the given assets (those on the symbol x day partitioning are its target)."""
    keys = [k for a in assets if getattr(a, "partitions_def", None) == symbol_day_partitions for k in a.keys]
    if not keys:
        keys = [AssetKey(RAW_OHLCV)]
    interval = minimum_interval_seconds or Settings.from_env().repair_interval_s

    @sensor(
        name=name,
        target=AssetSelection.assets(*keys),
        minimum_interval_seconds=interval,
        default_status=default_status,
        description="Audits the Parquet files every tick and requests range runs for exactly the partitions "
                    "that are missing, incomplete, stale, invalid or outdated.",
    )
    def _repair(context: SensorEvaluationContext, lakehouse: LakehouseResource, exchange: ExchangeResource):
        started = time.perf_counter()
        for line in reap(context.instance, f"sensor {name}").lines():  # dead runs failed, leaked slots freed
            context.log.warning(line)
        settings = Settings.from_env()
        asset_graph = context.repository_def.asset_graph
        audit, _ = audit_now(context.instance, lakehouse, exchange, asset_graph, settings, read_budget_s=READ_BUDGET_S)
        requests = audit.plan[: settings.repair_max_runs]
        audit.commit(requests)
        cursor = load_cursor(context.cursor)
        _report_freshness(context, audit, asset_graph, cursor)
        summary = audit.summary()
        deferred = len(audit.plan) - len(requests)
        elapsed = time.perf_counter() - started
        cursor.update(ticks=cursor.get("ticks", 0) + 1, last=summary, audit_s=round(elapsed, 3))
        for note in audit.notes:
            context.log.warning(note)
        if not requests:
            return SensorResult(skip_reason=SkipReason(f"nothing to request: {summary}; audit took {elapsed:.2f}s"),
                                cursor=json.dumps(cursor))
        context.log.info(f"requesting {len(requests)} run(s)"
                         + (f", {deferred} more next tick" if deferred else "") + f": {summary}")
        return SensorResult(run_requests=run_requests(audit, requests, asset_graph), cursor=json.dumps(cursor))

    return _repair


def _report_freshness(context: SensorEvaluationContext, audit: Audit, asset_graph, cursor: dict) -> None:
    """Record the per-symbol freshness check (runless) when its table changed, or every 10 minutes."""
    key = AssetCheckKey(AssetKey(RAW_OHLCV), SYMBOL_FRESHNESS_CHECK)
    if key not in asset_graph.asset_check_keys:
        return
    from assets.symbol_freshness import freshness_evaluation

    evaluation, digest_source = freshness_evaluation(audit, last_runs_by_symbol(context.instance))
    digest = hashlib.sha1(digest_source.encode()).hexdigest()[:16]
    now = int(time.time() * 1000)
    if digest == cursor.get("freshness_digest") and now - cursor.get("freshness_at", 0) < FRESHNESS_REPORT_EVERY_MS:
        return
    context.instance.report_runless_asset_event(evaluation)
    cursor.update(freshness_digest=digest, freshness_at=now)
