"""raw_ohlcv: 1-minute OHLCV candles exactly as the exchange sent them, one Parquet file per symbol x UTC day."""


import datetime as dt

from dagster import (
    AssetExecutionContext,
    AssetObservation,
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
from lakehouse.schema import RAW_OHLCV
from resources import ExchangeResource, LakehouseResource

from .freshness import freshness_policy
from .partitions import days_by_symbol, partition_key, symbol_day_partitions

EXCHANGE_POOL = "exchange"


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
        for symbol, days in days_by_symbol(context.partition_keys).items():
            context.log.info(f"fetching {symbol} {days[0]}..{days[-1]} ({len(days)} days) from {client.id}")
            try:
                report = ingest_days(client, storage, symbol, days, keep=(lambda d, s=symbol: keep(s, d)) if keep else None)
            except (UnknownSymbolError, UserInputError) as exc:
                # Retrying cannot make an exchange list a symbol: fail now, skip the retry policy.
                raise Failure(description=str(exc), allow_retries=False) from exc
            reports.append(report)
            context.log.info(
                f"{symbol}: {report.candles}/{report.expected} candles, {report.requests} requests, "
                f"{report.rate_limited} x 429 in {report.duration_s:.1f}s"
            )
    finally:
        client.close()

    days = [d for r in reports for d in r.days]
    if len(days) > 1:
        # A range run records one materialization per partition with the run's totals; the per-day
        # figures go on each partition as an observation so the UI still shows them day by day.
        for d in days:
            context.log_event(
                AssetObservation(asset_key=context.asset_key, partition=partition_key(d.symbol, d.day), metadata=d.metadata())
            )
    metadata = IngestReport.combine(reports).metadata()
    metadata["lakehouse_root"] = MetadataValue.path(str(storage.root))
    return MaterializeResult(metadata=metadata)
