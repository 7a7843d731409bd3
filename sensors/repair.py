"""The repair sensor: each tick audits the lakehouse's files and requests runs for exactly the partitions that need work.

Thin glue over lakehouse.audit: it adds what only Dagster knows (tracked symbols, queued and running runs, the
asset graph) and turns the audit's plan into range RunRequests. Everything it decides is in the tick's
SkipReason or in each run's tags.
"""


import hashlib
import json
import time
from typing import Collection, Sequence

from dagster import (
    AssetCheckKey,
    AssetKey,
    AssetSelection,
    DefaultSensorStatus,
    RunRequest,
    RunsFilter,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

# The instance's view of the audit lives below both this sensor and the symbol_freshness check (which this sensor
# records); its names stay importable from here.
from assets.instance_audit import (  # noqa: F401
    ACTIVE_STATUSES,
    SYMBOL_FRESHNESS_CHECK,
    SYMBOL_FRESHNESS_CHECK_KEY,
    audit_now,
    in_flight_partitions,
    last_runs_by_symbol,
    partitioned_keys,
    tracked_symbols,
)
from assets.partitions import SYMBOLS_PARTITION, symbol_day_partitions
from assets.run_guard import reap
from assets.symbol_freshness import freshness_evaluation
from lakehouse.audit import Audit, RepairRequest
from lakehouse.config import Settings
from lakehouse.run_tags import RunGroup, group_runs
from lakehouse.schema import RAW_OHLCV
from resources import ExchangeResource, LakehouseResource
from sensors.cursor import load_cursor

REPAIR_SENSOR_NAME = "lakehouse_repair"
FRESHNESS_REPORT_EVERY_MS = 10 * 60_000
# Time a tick may spend re-reading changed files; a cold manifest of a big lakehouse fills over a few ticks
# instead of running into the sensor timeout (60 s by default).
READ_BUDGET_S = 20.0


# from the plan to RunRequests -------------------------------------------------------------------------
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


def reasons_tag(requests: Sequence[RepairRequest]) -> str:
    """Why these requests' partitions need work: '3 missing' for one symbol, 'A: 3 missing; B: 1 stale' for several."""
    if len({r.symbol for r in requests}) == 1:
        return "; ".join(r.reasons_text for r in requests)
    return "; ".join(f"{r.symbol}: {r.reasons_text}" for r in requests)[:250]


def request_buckets(requests: Sequence[RepairRequest]) -> list[list[RepairRequest]]:
    """The plan's requests by action and layers (what one run or backfill can carry), in the plan's order."""
    buckets: dict[tuple, list[RepairRequest]] = {}
    for r in requests:
        buckets.setdefault((r.action, r.layers), []).append(r)
    return list(buckets.values())


def request_groups(requests: Sequence[RepairRequest], symbol_order: Sequence[str],
                   alone: Collection[str] = ()) -> list[tuple[RunGroup, list[RepairRequest]]]:
    """The plan as range runs, in its order: requests with the same action and layers whose symbols are
    neighbours with the same days share a run (group_runs). Symbols in `alone` (say, whose last run failed)
    run alone, so a bad symbol fails its neighbours' run at most once."""
    out = []
    for bucket in request_buckets(requests):
        by_range = {(r.symbol, r.start, r.end): r for r in bucket}
        ranges: dict[str, list] = {}
        for r in bucket:
            ranges.setdefault(r.symbol, []).append((r.start, r.end))
        for group in group_runs(ranges, symbol_order, alone=alone):
            out.append((group, [by_range[(s, group.start, group.end)] for s in group.symbols]))
    return out


def group_tags(group: RunGroup, requests: Sequence[RepairRequest], summary: str, launched_by: str) -> dict[str, str]:
    tags = {
        **group.tags(),
        "lakehouse/launched_by": launched_by,
        "lakehouse/repair": requests[0].action,
        "lakehouse/reasons": reasons_tag(requests),
        "lakehouse/audit": summary[:250],
    }
    if len(group.symbols) == 1:
        tags["lakehouse/symbol"] = group.symbols[0]
    return tags


def run_requests(audit: Audit, groups: Sequence[tuple[RunGroup, list[RepairRequest]]], asset_graph) -> list[RunRequest]:
    out = []
    for group, requests in groups:
        keys, checks = selection_for(requests[0], asset_graph)
        out.append(RunRequest(tags=group_tags(group, requests, audit.summary(), REPAIR_SENSOR_NAME),
                              asset_selection=keys, asset_check_keys=checks))
    return out


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
    # Tables built from the partitioned layers (scores) are rebuilt by this sensor too, once those settle.
    keys += [k for a in assets if getattr(a, "partitions_def", None) is None
             and any(dep in keys for dep in getattr(a, "dependency_keys", ())) for k in a.keys]
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
        order = context.instance.get_dynamic_partitions(SYMBOLS_PARTITION)
        last_runs = last_runs_by_symbol(context.instance)
        failed_last = {s for s, run in last_runs.items() if run["status"] == "FAILURE"}
        groups = request_groups(audit.plan, order, alone=failed_last)
        deferred = sum(len(reqs) for _, reqs in groups[settings.repair_max_runs:])
        groups = groups[: settings.repair_max_runs]
        requests = [r for _, reqs in groups for r in reqs]
        audit.commit(requests)
        cursor = load_cursor(context.cursor)
        _report_freshness(context, audit, asset_graph, cursor, last_runs)
        summary = audit.summary()
        elapsed = time.perf_counter() - started
        cursor.update(ticks=cursor.get("ticks", 0) + 1, last=summary, audit_s=round(elapsed, 3))
        for note in audit.notes:
            context.log.warning(note)
        if not requests:
            tables, why = table_requests(context.instance, asset_graph, lakehouse.storage(), audit)
            if tables:
                context.log.info(f"requesting a rebuild of {', '.join(why)}")
                return SensorResult(run_requests=tables, cursor=json.dumps(cursor))
            return SensorResult(skip_reason=SkipReason(f"nothing to request: {summary}; audit took {elapsed:.2f}s"),
                                cursor=json.dumps(cursor))
        context.log.info(f"requesting {len(groups)} run(s) for {len(requests)} symbol range(s)"
                         + (f", {deferred} more next tick" if deferred else "") + f": {summary}")
        return SensorResult(run_requests=run_requests(audit, groups, asset_graph), cursor=json.dumps(cursor))

    return _repair


def table_keys(asset_graph) -> list[AssetKey]:
    """Unpartitioned assets built from the symbol x day layers (scores): one table each, rebuilt whole."""
    partitioned = set(partitioned_keys(asset_graph))
    return sorted((k for k in asset_graph.materializable_asset_keys
                   if asset_graph.get(k).partitions_def is None and asset_graph.get(k).parent_keys & partitioned),
                  key=lambda k: k.to_user_string())


def table_requests(instance, asset_graph, storage, audit: Audit) -> tuple[list[RunRequest], list[str]]:
    """A rebuild of each table whose inputs were materialized after it (or that was never built, or whose file
    is gone), once no run is queued or running: a table rebuilt mid-repair would be stale again at once.

    The run key names the newest input and the table's own last materialization, so a rebuild is requested
    once per change of its inputs (a failed rebuild is retried when new input lands, not every tick)."""
    keys = table_keys(asset_graph)
    if not keys or instance.get_run_records(RunsFilter(statuses=ACTIVE_STATUSES), limit=1):
        return [], []
    requests, why = [], []
    for key in keys:
        parents = sorted(asset_graph.get(key).parent_keys, key=lambda k: k.to_user_string())
        latest = {r.asset_entry.asset_key: r.asset_entry.last_materialization_record
                  for r in instance.get_asset_records([key, *parents])}
        inputs = max((latest[p].storage_id for p in parents if latest.get(p) is not None), default=None)
        if inputs is None:
            continue  # nothing to build it from yet
        own = latest.get(key)
        own_id = own.storage_id if own is not None else 0
        name = key.to_user_string()
        gone = own is not None and not storage.table_path(name).exists()
        if own is not None and own_id > inputs and not gone:
            continue
        reason = "never built" if own is None else ("its file is missing" if gone else "inputs changed since built")
        why.append(f"{name} ({reason})")
        requests.append(RunRequest(run_key=f"{name}:{inputs}:{own_id}", asset_selection=[key],
                                   tags={"lakehouse/launched_by": REPAIR_SENSOR_NAME, "lakehouse/repair": "rebuild",
                                         "lakehouse/reasons": f"{name}: {reason}",
                                         "lakehouse/audit": audit.summary()[:250]}))
    return requests, why


def _report_freshness(context: SensorEvaluationContext, audit: Audit, asset_graph, cursor: dict,
                      last_runs: dict[str, dict]) -> None:
    """Record the per-symbol freshness check (runless) when its table changed, or every 10 minutes."""
    key = SYMBOL_FRESHNESS_CHECK_KEY
    if key not in asset_graph.asset_check_keys:
        return
    evaluation, digest_source = freshness_evaluation(audit, last_runs)
    digest = hashlib.sha1(digest_source.encode()).hexdigest()[:16]
    now = int(time.time() * 1000)
    if digest == cursor.get("freshness_digest") and now - cursor.get("freshness_at", 0) < FRESHNESS_REPORT_EVERY_MS:
        return
    context.instance.report_runless_asset_event(evaluation)
    cursor.update(freshness_digest=digest, freshness_at=now)
