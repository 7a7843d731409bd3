"""What every derived layer's code shares: reading the run's days, writing them, refusing gated or missing
inputs, per-partition metadata, and the book that turns check outcomes into Dagster check results."""

from __future__ import annotations

import datetime as dt
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterable, Mapping

import polars as pl
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    AssetKey,
    AssetSpec,
    Failure,
    MetadataValue,
)

from lakehouse import progress
from lakehouse.config import SIMULATED
from lakehouse.gates import Gates
from lakehouse.schema import CLEAN_BARS, INDICATORS, SIGNALS, conform
from lakehouse.storage import Storage
from resources import ExchangeResource, SimulatedExchangeResource

from .freshness import freshness_policy
from .partitions import partition_key

GROUP = "derived"
# Day files written at once by one layer of one run (see DayWriter).
WRITE_THREADS = 4
# Rows a derived step keeps in memory for its next layer (see Handoff): a few symbol-years of 1m bars with
# resamples and indicators (a symbol-year of both is 1.36 M rows), a few hundred MB at most.
HANDOFF_ROWS = 2_000_000
ONE_DAY = dt.timedelta(days=1)

# Check names; the blocking ones close the gate for later runs too.
OHLC_SANITY = "ohlc_sanity"
UNIQUE_BARS = "unique_bars"
ROWS_ACCOUNTED = "rows_accounted"
COMPLETENESS = "completeness"
INDICATOR_SANITY = "indicator_sanity"
SIGNALS_REFERENCE_BARS = "signals_reference_bars"
ONE_ROW_PER_SYMBOL = "one_row_per_symbol"
BLOCKING: dict[str, set[str]] = {
    CLEAN_BARS: {OHLC_SANITY, UNIQUE_BARS, ROWS_ACCOUNTED},
    INDICATORS: {INDICATOR_SANITY},
    SIGNALS: {SIGNALS_REFERENCE_BARS},
}


def exchange_id(resource: ExchangeResource) -> str:
    """The exchange id raw_ohlcv stored its files under, without opening a client when the config says it."""
    if isinstance(resource, SimulatedExchangeResource):
        return SIMULATED
    configured = getattr(resource, "exchange_id", None)
    if isinstance(configured, str) and configured.strip():
        return configured.strip().lower()
    client = resource.client()
    try:
        return client.id
    finally:
        client.close()


def day_expr() -> pl.Expr:
    return pl.col("timestamp").dt.date().alias("_day")


def split_days(df: pl.DataFrame, days: Iterable[dt.date], day_col: str = "_day") -> dict[dt.date, pl.DataFrame]:
    """{day: rows of that day} for every requested day (empty frames where none), without the day column."""
    if day_col not in df.columns:
        df = df.with_columns(day_expr())
    parts = {k[0]: v.drop(day_col) for k, v in df.partition_by(day_col, as_dict=True, maintain_order=True).items()}
    template = df.drop(day_col).clear()
    return {d: parts.get(d, template) for d in days}


class DayWriter:
    """Writes a layer's day files (atomically, through Storage) on a few threads while the layer goes on with its
    metadata and checks: encoding and fsync release the GIL. Progress is reported as each file lands.

    Leaving the `with` block waits for every file and raises the first failure, so a layer's results are only
    returned once its files are on disk; on an exception inside the block, files not yet started are dropped.
    """

    def __init__(self, threads: int = WRITE_THREADS):
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="write")
        self._pending: list = []

    def write(self, storage: Storage, layer: str, exchange: str, symbol: str, frames: dict[dt.date, pl.DataFrame],
              after: Mapping[dt.date, Future] | None = None) -> dict[dt.date, Future]:
        """Queue each day's file, each only once the same day's write in `after` (its upstream layer's) has
        landed; first waits for the batches queued before the last one, so at most two batches of frames (say,
        one symbol's while the next is computed) are held at once. Returns each day's write."""
        if len(self._pending) > 1:
            self._wait(self._pending[:-1])
            del self._pending[:-1]
        after = after or {}
        batch = {day: self._pool.submit(_write_day, storage, layer, exchange, symbol, day, df, after.get(day))
                 for day, df in frames.items()}
        self._pending.append(list(batch.values()))
        return batch

    @staticmethod
    def _wait(batches) -> None:
        for batch in batches:
            for future in batch:
                future.result()

    def landed(self) -> None:
        """Wait for every file queued so far; raises the first failure."""
        self._wait(self._pending)
        self._pending.clear()

    def __enter__(self) -> "DayWriter":
        return self

    def close(self, cancel: bool = False) -> None:
        """Wait for every file (raising the first failure), or with `cancel` drop those not yet started."""
        try:
            if not cancel:
                self.landed()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=cancel)

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(cancel=exc_type is not None)


class Handoff:
    """What one layer of the derived step computed for the run's days, for the next layer to use instead of
    reading those files back: the next layer need not wait for them to land (they are written meanwhile) nor
    decode them again. A frame holds the same rows as the layer's day files, conformed as Storage writes them
    (the layers sort what they read, so the order does not matter). Bounded: past HANDOFF_ROWS rows (a run
    over many symbols), later symbols' frames are not kept and are read from their files once they have landed.
    """

    def __init__(self, max_rows: int | None = None):
        self.max_rows = HANDOFF_ROWS if max_rows is None else max_rows
        self._frames: dict[tuple[str, str], tuple[list[dt.date], pl.DataFrame]] = {}
        self._rows = 0
        self._writers: dict[str, DayWriter] = {}
        self._writes: dict[tuple[str, str], dict[dt.date, Future]] = {}

    def writing(self, layer: str, writer: DayWriter) -> None:
        """`writer` is writing `layer`'s files in this step (what `landed` waits for)."""
        self._writers[layer] = writer

    def keep(self, layer: str, symbol: str, days: list[dt.date], whole: pl.DataFrame,
             writes: dict[dt.date, Future]) -> None:
        """`whole`: the rows of `days` whose files were queued on this step's writer (`writes`: each day's write,
        what the next layer's files wait for)."""
        self._writes[(layer, symbol)] = writes
        if not days or self._rows + whole.height > self.max_rows:
            return
        ts = whole.get_column("timestamp")
        if whole.height and (ts.min().date() < days[0] or ts.max().date() > days[-1]):
            return  # rows outside the days would not be in their files
        self._frames[(layer, symbol)] = (list(days), conform(whole, layer))
        self._rows += whole.height

    def frame(self, layer: str, symbol: str, days: list[dt.date]) -> pl.DataFrame | None:
        """The layer's rows of exactly `days` computed in this step; else None, once the files this step queued
        for the layer have landed, so they can be read."""
        kept = self._frames.get((layer, symbol))
        # A layer reading a span reads every file in it: only a whole span of days stands in.
        if kept is not None and kept[0] == list(days) and (days[-1] - days[0]).days + 1 == len(days):
            return kept[1]
        self.landed(layer)
        return None

    def release(self, symbol: str) -> None:
        """The symbol's frames are used up (the last layer has them): free them."""
        for key in [k for k in self._frames if k[1] == symbol]:
            self._rows -= self._frames.pop(key)[1].height

    def writes(self, layer: str, symbol: str) -> dict[dt.date, Future]:
        """Each day's write of `layer` queued by this step (none when it was not built here)."""
        return self._writes.get((layer, symbol), {})

    def landed(self, layer: str) -> None:
        """Wait until the files this step queued for `layer` are on disk (nothing to wait for when it queued none)."""
        writer = self._writers.get(layer)
        if writer is not None:
            writer.landed()


def _write_day(storage: Storage, layer: str, exchange: str, symbol: str, day: dt.date, df: pl.DataFrame,
               upstream: Future | None = None) -> None:
    if upstream is not None:
        # Never before the upstream day's file: the audit takes a file older than its upstream for outdated,
        # and a failed upstream write fails this one too, so no layer is on disk above a missing one.
        upstream.result()
    storage.write_partition(layer, exchange, symbol, day, df)
    progress.emit(progress.ProgressEvent("partition_done", layer, symbol, day.isoformat(), df.height))


def refuse(message: str, **metadata) -> Failure:
    """A failure retrying cannot fix (missing or gated input): skip the retry policy, say what to do."""
    return Failure(description=message, metadata=metadata, allow_retries=False)


def require(storage: Storage, layer: str, exchange: str, symbol: str, days: list[dt.date], asset_name: str) -> None:
    have = {s.ref.day for s in storage.list_partitions(layer, exchange, symbol)}
    missing = [d for d in days if d not in have]
    if missing:
        shown = ", ".join(str(d) for d in missing[:10]) + (" ..." if len(missing) > 10 else "")
        raise refuse(
            f"{asset_name} {symbol}: {layer} has no partition for {len(missing)} day(s) ({shown}); "
            f"materialize {layer} for them first (e.g. lakehouse backfill --symbols {symbol} "
            f"--start {missing[0]} --end {missing[-1]})",
            missing_days=[str(d) for d in missing[:100]],
        )


def gate(storage: Storage, layer: str, exchange: str, symbol: str, start: dt.date, end: dt.date,
         asset_name: str) -> None:
    """Refuse to build on a partition of `layer` in [start, end] whose latest blocking check failed."""
    blocked = Gates(storage).blocked_days(layer, exchange, symbol, start, end)
    if blocked:
        shown = "; ".join(f"{d}: {', '.join(c)}" for d, c in list(blocked.items())[:10])
        first, last = min(blocked), max(blocked)
        raise refuse(
            f"{asset_name} {symbol}: refusing to build on {layer} partitions whose latest blocking check "
            f"failed ({shown}). Fix and rematerialize {layer} for {first}..{last} "
            f"(lakehouse backfill --symbols {symbol} --start {first} --end {last}), then run this again.",
            blocked_days={str(d): c for d, c in blocked.items()},
        )


def to_metadata(values: dict) -> dict:
    """Dagster metadata from plain values: lists and dicts as JSON."""
    return {k: MetadataValue.json(v) if isinstance(v, (list, dict)) else v for k, v in values.items()}


def add_partition_metadata(context: AssetExecutionContext, layer: str, symbol: str,
                           per_day: Mapping[dt.date, dict]) -> None:
    """Give each partition of the run its own day's figures on its own materialization.

    This is Dagster's add_asset_metadata(partition_key=...), without its check that the key is targeted:
    that check enumerates the partitions definition's keys on every call (quadratic over a year's range, and
    growing with every tracked symbol). The days here come from days_by_symbol(context.partition_keys).
    """
    key = AssetKey(layer)
    by_key = {str(partition_key(symbol, day)): to_metadata(md) for day, md in per_day.items()}
    step = getattr(context.op_execution_context, "_step_execution_context", None)
    acc = getattr(step, "_metadata_accumulator", None)
    try:
        from dagster._core.execution.context.metadata_logging import AssetMetadataHandle, OutputMetadataAccumulator
    except ImportError:
        AssetMetadataHandle = None  # noqa: N806
    if AssetMetadataHandle is None or not isinstance(acc, OutputMetadataAccumulator):  # another Dagster
        for pk, md in by_key.items():
            context.add_asset_metadata(md, asset_key=key, partition_key=pk)
        return
    # One new accumulator for all the days (adding them one by one copies and re-checks the whole map each time).
    merged = dict(acc.per_output_metadata)
    for pk, md in by_key.items():
        handle = AssetMetadataHandle(asset_key=key, partition_key=pk)
        merged[handle] = {**merged.get(handle, {}), **md}
    step._metadata_accumulator = OutputMetadataAccumulator(per_output_metadata=merged)


def run_metadata(days: list[dt.date], **extra) -> dict:
    """What every partition of a range run shares: which range it was computed with (not the range's totals);
    `days` has a day once per symbol, so a run over several symbols also says how many partitions it had."""
    distinct = sorted(set(days))
    if not distinct:
        return dict(extra)
    shared = {"run_range": f"{distinct[0]}..{distinct[-1]}", "run_days": len(distinct)}
    if len(days) > len(distinct):
        shared["run_partitions"] = len(days)
    return {**shared, **extra}


def blocking_failed(results: Iterable) -> bool:
    """Did any blocking check among these results fail (so later layers of the step must not run)?"""
    return any(isinstance(r, AssetCheckResult) and not r.passed and r.severity == AssetCheckSeverity.ERROR
               and r.check_name in BLOCKING.get(r.asset_key.to_user_string(), set()) for r in results)


class CheckBook:
    """Collects one check's outcome per (symbol, day) over a run and turns it into the AssetCheckResult."""

    def __init__(self, layer: str, name: str, severity: AssetCheckSeverity = AssetCheckSeverity.ERROR):
        self.layer, self.name, self.severity = layer, name, severity
        self.by_symbol: dict[str, dict[dt.date, bool]] = {}
        self.metadata: dict = {}
        self.failed: list[str] = []

    def run(self, symbol: str, frames: dict[dt.date, pl.DataFrame], fn: Callable[[pl.DataFrame], tuple],
            whole: pl.DataFrame | None = None) -> None:
        """Run `fn` on the whole range (`whole`: the frames' rows in one frame, if the caller has it); only if it
        fails, day by day to tell which days fail."""
        if whole is None:
            whole = pl.concat(list(frames.values()), how="vertical") if frames else pl.DataFrame()
        passed, md = fn(whole) if frames else (True, {})
        if passed:
            outcome = {d: True for d in frames}
        else:
            outcome = {d: fn(f)[0] if f.height else True for d, f in frames.items()}
        self.add(symbol, outcome, md)

    def add(self, symbol: str, outcome: dict[dt.date, bool], md: dict) -> None:
        self.by_symbol.setdefault(symbol, {}).update(outcome)
        self.failed += [f"{symbol} {d}" for d, ok in outcome.items() if not ok]
        for k, v in md.items():  # one symbol per run in practice; with more, numbers add up
            if isinstance(v, (int, float)) and not isinstance(v, bool) and isinstance(self.metadata.get(k), (int, float)):
                self.metadata[k] += v
            elif k not in self.metadata:
                self.metadata[k] = v

    @staticmethod
    def record_all(books: Iterable["CheckBook"], storage: Storage, exchange: str, run_id: str) -> None:
        """Write the books' outcomes to the gate record: one locked update per (layer, symbol)."""
        merged: dict[tuple[str, str], dict[dt.date, dict[str, bool]]] = {}
        for book in books:
            for symbol, outcome in book.by_symbol.items():
                days = merged.setdefault((book.layer, symbol), {})
                for d, ok in outcome.items():
                    days.setdefault(d, {})[book.name] = ok
        gates = Gates(storage)
        for (layer, symbol), outcomes in merged.items():
            gates.record(layer, exchange, symbol, outcomes, blocking=BLOCKING.get(layer, set()), run_id=run_id)

    def result(self, context: AssetExecutionContext | None = None) -> AssetCheckResult:
        """The check's result over the run; a failure is also logged, naming the failing partitions."""
        if context is not None and self.failed:
            log = context.log.warning if self.severity == AssetCheckSeverity.WARN else context.log.error
            log(f"check {self.layer}.{self.name} failed for {', '.join(self.failed[:10])}"
                + (" ..." if len(self.failed) > 10 else ""))
        days = sum(len(o) for o in self.by_symbol.values())
        md = {**self.metadata, "days_checked": days, "failed_days": len(self.failed)}
        if self.failed:
            md["failed_partitions"] = self.failed[:100]
        return AssetCheckResult(
            asset_key=AssetKey(self.layer), check_name=self.name, passed=not self.failed,
            severity=self.severity, metadata=to_metadata(md),
        )


def selected_checks(context: AssetExecutionContext, layer: str) -> set[str]:
    return {k.name for k in context.selected_asset_check_keys if k.asset_key == AssetKey(layer)}


def layer_spec(layer: str, description: str, deps: list) -> AssetSpec:
    return AssetSpec(
        layer, deps=deps, description=description, group_name=GROUP, kinds={"parquet", "polars"},
        freshness_policy=freshness_policy(),
    )
