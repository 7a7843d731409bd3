"""raw_ohlcv: 1-minute OHLCV candles exactly as the exchange sent them, one Parquet file per symbol x UTC day."""


import datetime as dt
import time

from dagster import (
    AssetExecutionContext,
    AssetMaterialization,
    Backoff,
    BackfillPolicy,
    Failure,
    Jitter,
    MaterializeResult,
    MetadataValue,
    RetryPolicy,
    asset,
)

from lakehouse.config import SYMBOLS_AT_ONCE
from lakehouse.errors import UnknownSymbolError, UserInputError
from lakehouse.ingest import IngestReport, ingest_symbols
from lakehouse.run_tags import REFETCH_TAG
from lakehouse.schema import RAW_OHLCV
from resources import ExchangeResource, LakehouseResource

from .freshness import freshness_policy
from .glue import add_partition_metadata, run_metadata, to_metadata
from .partitions import days_by_symbol, partition_key, symbol_day_partitions

EXCHANGE_POOL = "exchange"


def _refetch(context: AssetExecutionContext) -> bool:
    """`lakehouse backfill --refetch` tags its runs; repair refetches days its audit found wanting, so its word
    is final too (a day skipped here would never count as the refetch the audit waits for)."""
    tags = context.run.tags
    return tags.get(REFETCH_TAG) == "true" or tags.get("lakehouse/repair") == "refetch"


def _resume_filter(context: AssetExecutionContext, storage, exchange_id: str):
    """On a retry of the same run, keep the closed days the earlier attempt already wrote."""
    if context.retry_number == 0:
        return None
    record = context.instance.get_run_record_by_id(context.run_id)
    started_ns = int(record.create_timestamp.timestamp() * 1e9) if record else None
    today = dt.datetime.now(dt.timezone.utc).date()

    def keep(symbol: str, day: dt.date) -> bool:
        if started_ns is None or day >= today:
            return False
        modified_ns = storage.partition_modified_ns(RAW_OHLCV, exchange_id, symbol, day)
        return modified_ns is not None and modified_ns >= started_ns

    return keep


def _record_finished(context: AssetExecutionContext, reports: list[IngestReport]) -> None:
    """When one symbol of a run fails, record the days of those that finished: a failed step records no
    partition, and their complete files would otherwise stand without a materialization (the audit would never
    fetch them again, so Dagster would show them failed for good)."""
    for report in reports:
        for day in report.days:
            metadata = to_metadata({**day.metadata(), "recorded": "its run failed on another symbol"})
            key = str(partition_key(report.symbol, day.day))
            context.log_event(AssetMaterialization(asset_key=RAW_OHLCV, partition=key, metadata=metadata))


@asset(
    name=RAW_OHLCV,
    partitions_def=symbol_day_partitions,
    pool=EXCHANGE_POOL,
    backfill_policy=BackfillPolicy.single_run(),
    retry_policy=RetryPolicy(max_retries=3, delay=5, backoff=Backoff.EXPONENTIAL, jitter=Jitter.PLUS_MINUS),
    group_name="market_data",
    kinds={"parquet", "python"},
    freshness_policy=freshness_policy(),
    description="1-minute OHLCV candles as the exchange sent them; grain: symbol x UTC day; source: ccxt.",
)
def raw_ohlcv(context: AssetExecutionContext, exchange: ExchangeResource, lakehouse: LakehouseResource):
    storage = lakehouse.storage()
    plan = days_by_symbol(context.partition_keys)
    clients = [exchange.client() for _ in range(min(SYMBOLS_AT_ONCE, len(plan)) or 1)]
    started = time.monotonic()
    try:
        keep = _resume_filter(context, storage, clients[0].id)
        # Every symbol first: in a run over several, one the exchange does not list fails the run before any
        # other symbol's file is written (a failed step records no partition, so those files would stand
        # without a materialization).
        for symbol in plan:
            clients[0].check_symbol(symbol)
        first, last = min(min(d) for d in plan.values()), max(max(d) for d in plan.values())
        context.log.info(f"fetching {len(plan)} symbol(s) {first}..{last} from {clients[0].id}, "
                         f"{len(clients)} side by side")
        finished: list[IngestReport] = []
        try:
            reports = ingest_symbols(clients, storage, plan, keep, refetch=_refetch(context), done=finished)
        except Exception:
            _record_finished(context, finished)
            raise
    except (UnknownSymbolError, UserInputError) as exc:
        # Retrying cannot make an exchange list a symbol: fail now, skip the retry policy.
        raise Failure(description=str(exc), allow_retries=False) from exc
    finally:
        for client in clients:
            client.close()
    for report in reports:
        kept = sum(1 for d in report.days if d.skipped)
        context.log.info(f"{report.symbol}: {report.candles}/{report.expected} candles ({kept} closed day(s) already "
                         f"complete, kept), {report.requests} requests, {report.rate_limited} x 429 in "
                         f"{report.duration_s:.1f}s")

    # Each partition's materialization carries its own day's figures; what only the fetch as a whole knows
    # (requests, 429s, retries, duration) is shared, next to the range it was fetched with.
    for report in reports:
        add_partition_metadata(context, RAW_OHLCV, report.symbol, {d.day: d.metadata() for d in report.days})
    combined = {**IngestReport.combine(reports).metadata(), "duration_s": round(time.monotonic() - started, 3)}
    shared = {k: combined[k] for k in ("requests", "rate_limited_429", "banned_418", "retries", "duration_s",
                                       "archive_requests", "sources", "archive_fallbacks")
              if k in combined}
    days = sorted(d.day for r in reports for d in r.days)
    metadata = to_metadata(run_metadata(days, **shared))
    metadata["lakehouse_root"] = MetadataValue.path(str(storage.root))
    return MaterializeResult(metadata=metadata)
