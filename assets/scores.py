"""scores: one table, per symbol the latest composite view, rebuilt from each tracked symbol's latest partitions."""


import datetime as dt

import polars as pl
from dagster import (
    AssetCheckResult,
    AssetCheckSpec,
    AssetDep,
    AssetExecutionContext,
    AssetKey,
    MaterializeResult,
    MetadataValue,
    SpecificPartitionsPartitionMapping,
    asset,
)

from lakehouse import progress
from lakehouse.gates import Gates
from lakehouse.schema import INDICATORS, SCORES, SIGNALS, empty
from lakehouse.scores import RECENT_BARS, REFERENCE_INTERVAL, compute_scores
from lakehouse.storage import Storage
from lakehouse.timeutil import ms_to_iso
from resources import ExchangeResource, LakehouseResource

from .freshness import freshness_policy
from .glue import GROUP, ONE_ROW_PER_SYMBOL, exchange_id, selected_checks, to_metadata
from .partitions import SYMBOLS_PARTITION

SCORE_CHECKS = [
    AssetCheckSpec(ONE_ROW_PER_SYMBOL, asset=SCORES,
                   description="One row per (exchange, symbol) and every score within [-100, 100]."),
]


def _latest_inputs(storage: Storage, exchange: str, symbol: str) -> tuple[pl.DataFrame, pl.DataFrame, dict] | None:
    """The reference interval's indicators and signals of the symbol's latest two days (at least RECENT_BARS
    bars of 1h), or None if it has none; plus the blocked days among them."""
    days = sorted(s.ref.day for s in storage.list_partitions(INDICATORS, exchange, symbol))
    if not days:
        return None
    last = days[-1]
    first = last - dt.timedelta(days=-(-RECENT_BARS // 24))
    gates = Gates(storage)
    blocked = {**{f"{INDICATORS} {d}": c for d, c in gates.blocked_days(INDICATORS, exchange, symbol, first, last).items()},
               **{f"{SIGNALS} {d}": c for d, c in gates.blocked_days(SIGNALS, exchange, symbol, first, last).items()}}
    ref = pl.col("interval") == REFERENCE_INTERVAL
    ind = storage.read_range(INDICATORS, exchange, symbol, first, last, filter=ref)
    sig = storage.read_range(SIGNALS, exchange, symbol, first, last, filter=ref)
    return ind, sig, blocked


# scores reads each symbol's latest partitions, which no partition mapping can name. The default for an
# unpartitioned asset (all partitions) made Dagster list every symbol x day key at the start of each run's
# scores step just to look up data versions (about 1 s per run at 5 symbols since 2017, growing with
# symbols x days); naming no partition keeps the lineage edge without that walk.
_LATEST_PARTITIONS = SpecificPartitionsPartitionMapping([])


@asset(
    name=SCORES,
    deps=[AssetDep(SIGNALS, partition_mapping=_LATEST_PARTITIONS), AssetDep(INDICATORS, partition_mapping=_LATEST_PARTITIONS)],
    check_specs=SCORE_CHECKS,
    group_name=GROUP,
    kinds={"parquet", "polars"},
    freshness_policy=freshness_policy(),
    description="Per symbol, the latest composite view: close, trend, active signals and a score in [-100, 100] "
                "with its ingredients; one table rebuilt from each tracked symbol's latest partitions.",
)
def scores(context: AssetExecutionContext, exchange: ExchangeResource, lakehouse: LakehouseResource):
    storage = lakehouse.storage()
    ex = exchange_id(exchange)
    tracked = set(context.instance.get_dynamic_partitions(SYMBOLS_PARTITION))
    # Two runs can rebuild the table at once; one that read its inputs before the other's signals landed could
    # be written last and leave them out. The inputs' newest materializations are recorded after their files
    # land, so if they moved while this build ran it builds again; if they move later, that run's own rebuild
    # starts later than this one's write.
    for attempt in range(1, _MAX_BUILDS + 1):
        inputs = _inputs_version(context.instance)
        table, fresh, blocked_symbols = _build(context, storage, ex, tracked)
        storage.write_table(SCORES, table)
        if _inputs_version(context.instance) == inputs:
            break
        if attempt < _MAX_BUILDS:
            context.log.info("signals or indicators were materialized while the table was built: building again")
    progress.emit(progress.ProgressEvent("table_done", SCORES, None, None, table.height))

    preview = table.filter(pl.col("exchange") == ex).select("symbol", "trend", "score", "close", "timestamp")
    md = {
        "rows": table.height,
        "symbols_scored": fresh.height,
        "symbols_kept_blocked": len(blocked_symbols),
        "blocked": blocked_symbols,
        "builds": attempt,
        "latest_bar": ms_to_iso(int(fresh.get_column("timestamp").cast(pl.Int64).max())) if fresh.height else None,
        "lakehouse_root": MetadataValue.path(str(storage.root)),
    }
    md = to_metadata(md)
    md["preview"] = MetadataValue.md(_markdown(preview))
    yield MaterializeResult(metadata=md)
    if selected_checks(context, SCORES):
        dupes = table.group_by("exchange", "symbol").len().filter(pl.col("len") > 1)
        out_of_range = table.filter((pl.col("score") < -100) | (pl.col("score") > 100))
        yield AssetCheckResult(
            check_name=ONE_ROW_PER_SYMBOL, asset_key=AssetKey(SCORES),
            passed=dupes.height == 0 and out_of_range.height == 0,
            metadata={"rows": table.height, "duplicated_symbols": dupes.height,
                      "scores_out_of_range": out_of_range.height},
        )


_MAX_BUILDS = 3


def _inputs_version(instance) -> tuple:
    """The newest materialization of each input layer (their storage ids)."""
    records = instance.get_asset_records([AssetKey(SIGNALS), AssetKey(INDICATORS)])
    return tuple(sorted((r.asset_entry.asset_key.to_user_string(),
                         r.asset_entry.last_materialization_record.storage_id
                         if r.asset_entry.last_materialization_record else None) for r in records))


def _build(context, storage: Storage, ex: str, tracked: set[str]) -> tuple[pl.DataFrame, pl.DataFrame, dict]:
    """The whole table from each tracked symbol's latest partitions: (table, this exchange's fresh rows,
    the symbols kept as they were because a blocking check failed)."""
    previous = storage.read_table(SCORES)
    inds, sigs, kept, blocked_symbols = [], [], [], {}
    for _, symbol in storage.symbols(INDICATORS, ex):
        if tracked and symbol not in tracked:
            continue
        inputs = _latest_inputs(storage, ex, symbol)
        if inputs is None:
            continue
        ind, sig, blocked = inputs
        if blocked:
            # Do not build on a gated partition: keep the symbol's last good row, if any.
            blocked_symbols[symbol] = {k: v for k, v in blocked.items()}
            kept.append(previous.filter((pl.col("exchange") == ex) & (pl.col("symbol") == symbol)))
            context.log.warning(f"{symbol}: latest partitions failed a blocking check ({blocked}); score kept as was")
            continue
        inds.append(ind)
        sigs.append(sig)
    fresh = compute_scores(pl.concat(inds, how="vertical") if inds else empty(INDICATORS),
                           pl.concat(sigs, how="vertical") if sigs else empty(SIGNALS))
    others = previous.filter(pl.col("exchange") != ex)  # another exchange's rows are not ours to drop
    table = pl.concat([others, *kept, fresh], how="vertical").sort("exchange", "symbol")
    return table, fresh, blocked_symbols


def _markdown(df: pl.DataFrame) -> str:
    if not df.height:
        return "_no scores yet_"
    head = "| " + " | ".join(df.columns) + " |\n|" + "---|" * len(df.columns) + "\n"
    return head + "\n".join("| " + " | ".join(str(v) for v in row) + " |" for row in df.iter_rows())
