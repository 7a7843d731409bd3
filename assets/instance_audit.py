"""The audit as the Dagster instance sees it: tracked symbols, in-flight runs and the asset graph's layers.

Shared by the per-symbol freshness check (assets/symbol_freshness.py), the repair sensor (sensors/repair.py)
and the CLI; it sits below all of them so none has to import another.
"""

import datetime as dt
from typing import Sequence

from dagster import AssetCheckKey, AssetKey, AssetSelection, DagsterRunStatus, RunsFilter

from assets.partitions import SYMBOLS_PARTITION, parse_partition_key, symbol_day_partitions
from lakehouse.audit import Audit, Auditor, audited_layers
from lakehouse.config import Settings
from lakehouse.registry import Registry, TrackedSymbol
from lakehouse.schema import RAW_OHLCV
from lakehouse.status import ACTIVE_RUN_STATUSES, RunSummary, in_flight, last_runs, tracked_entries
from resources import ExchangeResource, LakehouseResource

SYMBOL_FRESHNESS_CHECK = "symbol_freshness"
SYMBOL_FRESHNESS_CHECK_KEY = AssetCheckKey(AssetKey(RAW_OHLCV), SYMBOL_FRESHNESS_CHECK)

ACTIVE_STATUSES = [DagsterRunStatus(s) for s in ACTIVE_RUN_STATUSES]


def run_selection(asset_names: Sequence[str]) -> AssetSelection:
    """The assets of a run with their checks, except the per-symbol freshness report.

    That check is a report over every symbol, recorded by the repair sensor, not a property of one run's
    range; inside a run it also costs Dagster a walk over every partition key of raw_ohlcv (0.6 s per run
    at 5 symbols since 2017, growing with symbols x days).
    """
    return AssetSelection.assets(*[AssetKey(n) for n in asset_names]) - AssetSelection.checks(SYMBOL_FRESHNESS_CHECK_KEY)


def tracked_symbols(instance, registry: Registry) -> tuple[list[TrackedSymbol], list[str]]:
    """Symbols that are both registered (start day) and a Dagster partition (can be materialized)."""
    return tracked_entries(registry.load(), set(instance.get_dynamic_partitions(SYMBOLS_PARTITION)))


def _summary(record) -> RunSummary:
    run = record.dagster_run
    at = record.end_time or record.start_time or record.create_timestamp.timestamp()
    return RunSummary(run.run_id, run.status.value, run.tags, at)


def in_flight_partitions(instance) -> dict[str, set[dt.date]]:
    """symbol -> days that a queued or running run, or a backfill still in progress, already covers."""
    order = instance.get_dynamic_partitions(SYMBOLS_PARTITION)
    from assets.run_guard import process_gone

    # A killed CLI's run stays STARTED, yet nothing is coming from it: its partitions are repairable.
    records = [r for r in instance.get_run_records(RunsFilter(statuses=ACTIVE_STATUSES))
               if not process_gone(instance, r.dagster_run)]
    out = in_flight((_summary(r) for r in records), order)
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
    order = instance.get_dynamic_partitions(SYMBOLS_PARTITION)
    return last_runs((_summary(r) for r in instance.get_run_records(limit=limit)), order)


def exchange_now(exchange: ExchangeResource) -> tuple[str, int]:
    """The configured exchange's id and its clock (pinned in tests, the wall clock for real exchanges)."""
    client = exchange.client()
    try:
        return client.id, client.now_ms()
    finally:
        client.close()


def partitioned_keys(asset_graph) -> list[AssetKey]:
    """Every asset on the symbol x day partitioning, the ones a range run can carry."""
    return [k for k in asset_graph.materializable_asset_keys
            if asset_graph.get(k).partitions_def == symbol_day_partitions]


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
