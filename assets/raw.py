"""raw_ohlcv: 1-minute OHLCV candles exactly as the exchange sent them, one Parquet file per symbol x UTC day."""


import datetime as dt

from dagster import (
    AssetExecutionContext,
    Backoff,
    BackfillPolicy,
    Failure,
    Jitter,
    MaterializeResult,
    MetadataValue,
    RetryPolicy,
    asset,
)

from lakehouse.errors import UnknownSymbolError, UserInputError
from lakehouse.ingest import IngestReport, ingest_days
from lakehouse.run_tags import REFETCH_TAG
from lakehouse.schema import RAW_OHLCV
from resources import ExchangeResource, LakehouseResource

from .freshness import freshness_policy
from .glue import add_partition_metadata, run_metadata, to_metadata
from .partitions import days_by_symbol, symbol_day_partitions

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
    client = exchange.client()
    reports: list[IngestReport] = []
    try:
        keep = _resume_filter(context, storage, client.id)
        refetch = _refetch(context)
        plan = days_by_symbol(context.partition_keys)
        try:
            # Every symbol first: in a run over several, one the exchange does not list fails the run before
            # any other symbol's file is written (a failed step records no partition, so those files would
            # stand without a materialization).
            for symbol in plan:
                client.check_symbol(symbol)
            for symbol, days in plan.items():
                context.log.info(f"fetching {symbol} {days[0]}..{days[-1]} ({len(days)} days) from {client.id}")
                report = ingest_days(client, storage, symbol, days, keep=(lambda d, s=symbol: keep(s, d)) if keep else None,
                                     refetch=refetch)
                reports.append(report)
                kept = sum(1 for d in report.days if d.skipped)
                context.log.info(
                    f"{symbol}: {report.candles}/{report.expected} candles ({kept} closed day(s) already complete, kept), "
                    f"{report.requests} requests, "
                    f"{report.rate_limited} x 429 in {report.duration_s:.1f}s"
                )
        except (UnknownSymbolError, UserInputError) as exc:
            # Retrying cannot make an exchange list a symbol: fail now, skip the retry policy.
            raise Failure(description=str(exc), allow_retries=False) from exc
    finally:
        client.close()

    # Each partition's materialization carries its own day's figures; what only the fetch as a whole knows
    # (requests, 429s, retries, duration) is shared, next to the range it was fetched with.
    for report in reports:
        add_partition_metadata(context, RAW_OHLCV, report.symbol, {d.day: d.metadata() for d in report.days})
    combined = IngestReport.combine(reports).metadata()
    shared = {k: combined[k] for k in ("requests", "rate_limited_429", "banned_418", "retries", "duration_s",
                                       "archive_requests", "sources", "archive_fallbacks")
              if k in combined}
    days = sorted(d.day for r in reports for d in r.days)
    metadata = to_metadata(run_metadata(days, **shared))
    metadata["lakehouse_root"] = MetadataValue.path(str(storage.root))
    return MaterializeResult(metadata=metadata)
