"""The derived layers: clean_bars (+ rejected_candles) -> indicators -> signals -> scores, each behind its checks.

Every partitioned layer uses the raw layer's partitions (symbol x UTC day) and BackfillPolicy.single_run(): a
range run reads its inputs once, computes the whole range in one pass (one warm-up for indicators) and writes
each day's file atomically through Storage. The checks run inside the asset on the frames just computed; their
outcome per day goes to the gate record (lakehouse.gates), and a derived asset refuses, without retries, to
read an upstream partition whose latest blocking check failed: Dagster only stops the rest of the same run.
"""

import datetime as dt
from typing import Callable, Iterable

import polars as pl
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    AssetObservation,
    AssetSpec,
    BackfillPolicy,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
    multi_asset,
)

from lakehouse import checks, progress
from lakehouse.clean import REASONS, clean_candles
from lakehouse.config import SIMULATED
from lakehouse.errors import LakehouseError
from lakehouse.gates import Gates
from lakehouse.indicators import WARMUP_BARS, compute_indicators, history_days_needed
from lakehouse.registry import Registry
from lakehouse.resample import ALL_INTERVALS, DEFAULT_INTERVALS, interval_rank, resample
from lakehouse.schema import (
    CLEAN_BARS,
    INDICATOR_COLUMNS,
    INDICATORS,
    RAW_OHLCV,
    REJECTED_CANDLES,
    SCORES,
    SIGNALS,
    conform,
    empty,
)
from lakehouse.scores import RECENT_BARS, REFERENCE_INTERVAL, compute_scores
from lakehouse.signals import RULES, compute_signals
from lakehouse.storage import Storage
from lakehouse.timeutil import DAY_MS, MINUTE_MS, day_start_ms, ms_to_iso, system_clock_ms
from resources import ExchangeResource, LakehouseResource, SimulatedExchangeResource

from .freshness import freshness_policy
from .partitions import SYMBOLS_PARTITION, days_by_symbol, partition_key, symbol_day_partitions

GROUP = "derived"
ONE_DAY = dt.timedelta(days=1)
# A raw row whose timestamp lies outside the day of the file it was stored in cannot belong to that partition.
OUTSIDE_DAY = "outside_partition_day"

# Check names; the blocking ones close the gate for later runs too.
OHLC_SANITY = "ohlc_sanity"
UNIQUE_BARS = "unique_bars"
ROWS_ACCOUNTED = "rows_accounted"
COMPLETENESS = "completeness"
INDICATOR_SANITY = "indicator_sanity"
SIGNALS_REFERENCE_BARS = "signals_reference_bars"
ONE_ROW_PER_SYMBOL = "one_row_per_symbol"

CLEAN_CHECKS = [
    AssetCheckSpec(OHLC_SANITY, asset=CLEAN_BARS, blocking=True,
                   description="Every bar is finite with low <= open, close <= high and volume >= 0."),
    AssetCheckSpec(UNIQUE_BARS, asset=CLEAN_BARS, blocking=True,
                   description="No two bars share (exchange, symbol, interval, timestamp)."),
    AssetCheckSpec(ROWS_ACCOUNTED, asset=CLEAN_BARS, blocking=True,
                   description="Every raw row is either a clean 1m bar or a rejected candle: nothing dropped."),
    AssetCheckSpec(COMPLETENESS, asset=CLEAN_BARS, blocking=False,
                   description="Expected vs present 1m bars per day, gaps listed; WARN only, since the source "
                               "itself can have gaps."),
]
INDICATOR_CHECKS = [
    AssetCheckSpec(INDICATOR_SANITY, asset=INDICATORS, blocking=True,
                   description="No null after the warm-up, RSI in [0, 100], bands ordered, ATR >= 0."),
]
SIGNAL_CHECKS = [
    AssetCheckSpec(SIGNALS_REFERENCE_BARS, asset=SIGNALS, blocking=True,
                   description="Every signal points at an existing clean bar and carries its close."),
]
SCORE_CHECKS = [
    AssetCheckSpec(ONE_ROW_PER_SYMBOL, asset=SCORES,
                   description="One row per (exchange, symbol) and every score within [-100, 100]."),
]
BLOCKING: dict[str, set[str]] = {
    CLEAN_BARS: {OHLC_SANITY, UNIQUE_BARS, ROWS_ACCOUNTED},
    INDICATORS: {INDICATOR_SANITY},
    SIGNALS: {SIGNALS_REFERENCE_BARS},
}


# shared glue --------------------------------------------------------------------------------------
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


def _day_expr() -> pl.Expr:
    return pl.col("timestamp").dt.date().alias("_day")


def _split_days(df: pl.DataFrame, days: Iterable[dt.date], day_col: str = "_day") -> dict[dt.date, pl.DataFrame]:
    """{day: rows of that day} for every requested day (empty frames where none), without the day column."""
    if day_col not in df.columns:
        df = df.with_columns(_day_expr())
    parts = {k[0]: v.drop(day_col) for k, v in df.partition_by(day_col, as_dict=True, maintain_order=True).items()}
    template = df.drop(day_col).clear()
    return {d: parts.get(d, template) for d in days}


def _write_days(storage: Storage, layer: str, exchange: str, symbol: str, frames: dict[dt.date, pl.DataFrame]) -> None:
    for day, frame in frames.items():
        storage.write_partition(layer, exchange, symbol, day, frame)
        progress.emit(progress.ProgressEvent("partition_done", layer, symbol, day.isoformat(), frame.height))


def _refuse(message: str, **metadata) -> Failure:
    """A failure retrying cannot fix (missing or gated input): skip the retry policy, say what to do."""
    return Failure(description=message, metadata=metadata, allow_retries=False)


def _require(storage: Storage, layer: str, exchange: str, symbol: str, days: list[dt.date], asset_name: str) -> None:
    have = {s.ref.day for s in storage.list_partitions(layer, exchange, symbol)}
    missing = [d for d in days if d not in have]
    if missing:
        shown = ", ".join(str(d) for d in missing[:10]) + (" ..." if len(missing) > 10 else "")
        raise _refuse(
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
        raise _refuse(
            f"{asset_name} {symbol}: refusing to build on {layer} partitions whose latest blocking check "
            f"failed ({shown}). Fix and rematerialize {layer} for {first}..{last} "
            f"(lakehouse backfill --symbols {symbol} --start {first} --end {last}), then run this again.",
            blocked_days={str(d): c for d, c in blocked.items()},
        )


def _metadata(values: dict) -> dict:
    """Dagster metadata from plain values: lists and dicts as JSON."""
    return {k: MetadataValue.json(v) if isinstance(v, (list, dict)) else v for k, v in values.items()}


def _observe(context: AssetExecutionContext, key: str, symbol: str, per_day: dict[dt.date, dict]) -> None:
    """In a range run, each partition also gets its own figures (the materializations carry the run's totals)."""
    if len(context.partition_keys) <= 1:
        return
    for day, md in per_day.items():
        context.log_event(AssetObservation(asset_key=AssetKey(key), partition=partition_key(symbol, day),
                                           metadata=_metadata(md)))


class CheckBook:
    """Collects one check's outcome per (symbol, day) over a run and turns it into the AssetCheckResult."""

    def __init__(self, layer: str, name: str, severity: AssetCheckSeverity = AssetCheckSeverity.ERROR):
        self.layer, self.name, self.severity = layer, name, severity
        self.by_symbol: dict[str, dict[dt.date, bool]] = {}
        self.metadata: dict = {}
        self.failed: list[str] = []

    def run(self, symbol: str, frames: dict[dt.date, pl.DataFrame], fn: Callable[[pl.DataFrame], tuple]) -> None:
        """Run `fn` on the whole range; only if it fails, day by day to tell which days fail."""
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
            severity=self.severity, metadata=_metadata(md),
        )


def _selected_checks(context: AssetExecutionContext, layer: str) -> set[str]:
    return {k.name for k in context.selected_asset_check_keys if k.asset_key == AssetKey(layer)}


def _spec(layer: str, description: str, deps: list) -> AssetSpec:
    return AssetSpec(
        layer, deps=deps, description=description, group_name=GROUP, kinds={"parquet", "polars"},
        freshness_policy=freshness_policy(),
    )


# clean_bars + rejected_candles ------------------------------------------------------------------------
def _listing_day(storage: Storage, symbol: str) -> dt.date | None:
    try:
        entry = Registry(storage.root).get(symbol)
    except LakehouseError:
        return None
    return entry.listing if entry else None


def _expected_window(day: dt.date, raw_day: pl.DataFrame, listing: dt.date | None) -> tuple[int, int]:
    """[start, end) in ms of the minutes a day's raw file could hold: up to when it was fetched (the current day
    is partial), from the listing on."""
    start = day_start_ms(day)
    fetched = raw_day.get_column("fetched_at").max() if raw_day.height else None
    now = int(fetched.timestamp() * 1000) if fetched is not None else system_clock_ms()
    end = min(start + DAY_MS, (now // MINUTE_MS) * MINUTE_MS)
    if listing is not None and day < listing:
        end = start
    elif listing is not None and day == listing and raw_day.height:
        first = raw_day.get_column("timestamp").min()
        if first is not None:
            start = max(start, -(-int(first.timestamp() * 1000) // MINUTE_MS) * MINUTE_MS)
    return start, max(start, end)


def _read_raw_days(storage: Storage, exchange: str, symbol: str, days: list[dt.date]) -> pl.DataFrame:
    """The raw rows of the days, each tagged with the day of the file it came from (`_day`)."""
    frames = []
    for day in days:
        df = storage.read_partition(RAW_OHLCV, exchange, symbol, day)
        if df is not None and df.height:
            frames.append(df.with_columns(pl.lit(day).alias("_day")))
    if not frames:
        return empty(RAW_OHLCV).with_columns(pl.lit(None, dtype=pl.Date).alias("_day"))
    return pl.concat(frames, how="vertical")


def clean_range(raw: pl.DataFrame, days: list[dt.date]) -> tuple[dict, dict, dict]:
    """(bars by day, rejects by day, stats) for raw rows tagged with their file's day.

    A row with no timestamp, or one outside its file's day, is rejected here (it has no other day to go to);
    everything else goes through lakehouse.clean and lands in the day of its timestamp.
    """
    ts_day = pl.col("timestamp").dt.date()
    stray = pl.col("timestamp").is_null() | (ts_day != pl.col("_day"))
    pre = raw.filter(stray).with_columns(
        pl.when(pl.col("timestamp").is_null()).then(pl.lit("non_finite")).otherwise(pl.lit(OUTSIDE_DAY)).alias("reason")
    )
    result = clean_candles(raw.filter(~stray).drop("_day"))
    bars = resample(result.bars, DEFAULT_INTERVALS)
    pre_rejects = conform(pre, REJECTED_CANDLES).with_columns(pre.get_column("_day"))
    rejects = pl.concat([pre_rejects, result.rejects.with_columns(ts_day.alias("_day"))], how="vertical")
    return _split_days(bars, days), _split_days(rejects, days), result.stats


def _clean_day_metadata(bars: pl.DataFrame, rejects: pl.DataFrame, raw_rows: int, completeness: dict) -> dict:
    counts = dict(bars.group_by("interval").len().iter_rows()) if bars.height else {}
    reasons = dict(rejects.group_by("reason").len().iter_rows()) if rejects.height else {}
    md = {
        "rows": bars.height,
        "raw_rows": raw_rows,
        **{f"bars_{iv}": int(counts.get(iv, 0)) for iv in ALL_INTERVALS},
        "incomplete_bars": int(bars.filter(~pl.col("complete")).height),
        "rejected_rows": rejects.height,
        **{f"rejected_{r}": int(reasons.get(r, 0)) for r in (*REASONS, OUTSIDE_DAY)},
    }
    md.update({k: completeness[k] for k in ("expected_minutes", "present_minutes", "missing_minutes", "gap_count")})
    md["completeness_pct"] = (round(100.0 * min(md["present_minutes"], md["expected_minutes"]) / md["expected_minutes"], 3)
                              if md["expected_minutes"] else 100.0)
    return md


def _sum_metadata(per_day: dict[dt.date, dict]) -> dict:
    total: dict = {}
    for md in per_day.values():
        for k, v in md.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                total[k] = total.get(k, 0) + v
    if "expected_minutes" in total:
        total["completeness_pct"] = (round(100.0 * (total["expected_minutes"] - total["missing_minutes"])
                                           / total["expected_minutes"], 3) if total["expected_minutes"] else 100.0)
    if per_day:
        total.update(days=len(per_day), first_day=str(min(per_day)), last_day=str(max(per_day)))
    return total


@multi_asset(
    name="clean",
    specs=[
        _spec(CLEAN_BARS, "Cleaned 1m bars and their 5m/15m/1h/4h/1d resamples (candles used, complete flag); "
                          "grain: symbol x UTC day, every interval in one file.", [RAW_OHLCV]),
        _spec(REJECTED_CANDLES, "Raw rows refused by cleaning, kept as fetched with the reason; "
                                "grain: symbol x UTC day.", [RAW_OHLCV]),
    ],
    check_specs=CLEAN_CHECKS,
    partitions_def=symbol_day_partitions,
    backfill_policy=BackfillPolicy.single_run(),
    can_subset=True,
)
def clean(context: AssetExecutionContext, exchange: ExchangeResource, lakehouse: LakehouseResource):
    storage = lakehouse.storage()
    ex = exchange_id(exchange)
    selected = {k.to_user_string() for k in context.selected_asset_keys}
    wanted_checks = _selected_checks(context, CLEAN_BARS)
    books = {name: CheckBook(CLEAN_BARS, name, AssetCheckSeverity.WARN if name == COMPLETENESS
                             else AssetCheckSeverity.ERROR) for name in wanted_checks}
    bar_days: dict[dt.date, dict] = {}
    reject_days: dict[dt.date, dict] = {}
    for symbol, days in days_by_symbol(context.partition_keys).items():
        _require(storage, RAW_OHLCV, ex, symbol, days, "clean_bars")
        gate(storage, RAW_OHLCV, ex, symbol, days[0], days[-1], "clean_bars")
        raw = _read_raw_days(storage, ex, symbol, days)
        bars, rejects, _stats = clean_range(raw, days)
        raw_by_day = _split_days(raw, days)
        listing = _listing_day(storage, symbol)
        if CLEAN_BARS in selected:
            _write_days(storage, CLEAN_BARS, ex, symbol, bars)
        if REJECTED_CANDLES in selected:
            _write_days(storage, REJECTED_CANDLES, ex, symbol, rejects)

        per_day = {}
        complete_outcome, gaps = {}, []
        for day in days:
            start, end = _expected_window(day, raw_by_day[day], listing)
            ok, cmd = checks.completeness(bars[day], (end - start) // MINUTE_MS, start, end)
            complete_outcome[day] = ok
            gaps += [[str(day), *g] for g in cmd["gaps"]]
            per_day[day] = _clean_day_metadata(bars[day], rejects[day], raw_by_day[day].height, cmd)
        bar_days.update(per_day)
        reject_days.update({d: {"rows": rejects[d].height,
                                **{f"rejected_{r}": per_day[d][f"rejected_{r}"] for r in (*REASONS, OUTSIDE_DAY)}}
                            for d in days})
        if OHLC_SANITY in books:
            books[OHLC_SANITY].run(symbol, bars, checks.ohlc_sanity)
        if UNIQUE_BARS in books:
            books[UNIQUE_BARS].run(symbol, bars, checks.uniqueness)
        if ROWS_ACCOUNTED in books:
            accounted = {d: per_day[d]["raw_rows"] == per_day[d]["bars_1m"] + per_day[d]["rejected_rows"] for d in days}
            books[ROWS_ACCOUNTED].add(symbol, accounted, {
                "raw_rows": raw.height, "clean_1m_rows": sum(per_day[d]["bars_1m"] for d in days),
                "rejected_rows": sum(per_day[d]["rejected_rows"] for d in days),
                "unaccounted_days": [str(d) for d, ok in accounted.items() if not ok][:50]})
        if COMPLETENESS in books:
            total = _sum_metadata({d: per_day[d] for d in days})
            books[COMPLETENESS].add(symbol, complete_outcome, {
                k: total[k] for k in ("expected_minutes", "present_minutes", "missing_minutes", "gap_count",
                                      "completeness_pct")} | {
                "incomplete_days": [str(d) for d, ok in complete_outcome.items() if not ok][:100],
                "gaps": gaps[: checks.MAX_GAPS]})
        context.log.info(
            f"{symbol} {days[0]}..{days[-1]}: {raw.height} raw -> {sum(per_day[d]['bars_1m'] for d in days)} "
            f"clean 1m bars, {sum(per_day[d]['rejected_rows'] for d in days)} rejected")
        # Per-day figures go on clean_bars only (they include the rejects by reason): each event costs a
        # write to Dagster's event log, which dominates a long range run.
        if CLEAN_BARS in selected:
            _observe(context, CLEAN_BARS, symbol, per_day)

    CheckBook.record_all(books.values(), storage, ex, context.run_id)
    root_md = {"lakehouse_root": MetadataValue.path(str(storage.root))}
    if CLEAN_BARS in selected:
        yield MaterializeResult(asset_key=CLEAN_BARS, metadata={**_metadata(_sum_metadata(bar_days)), **root_md})
    if REJECTED_CANDLES in selected:
        yield MaterializeResult(asset_key=REJECTED_CANDLES,
                                metadata={**_metadata(_sum_metadata(reject_days)), **root_md})
    for name in (OHLC_SANITY, UNIQUE_BARS, ROWS_ACCOUNTED, COMPLETENESS):
        if name in books:
            yield books[name].result(context)


# indicators --------------------------------------------------------------------------------------------
def read_warmup_bars(storage: Storage, exchange: str, symbol: str, first: dt.date, last: dt.date) -> pl.DataFrame:
    """clean_bars of [first, last] plus, per interval, the history its warm-up needs: one scan, and only each
    interval's own history (2 days of 1m, 601 days of 1d), sorted by interval then time."""
    history_start = {iv: first - dt.timedelta(days=history_days_needed([iv])) for iv in ALL_INTERVALS}
    wanted = pl.any_horizontal(
        (pl.col("interval") == iv) & (pl.col("timestamp") >= pl.lit(day_start_ms(d)).cast(pl.Datetime("ms", "UTC")))
        for iv, d in history_start.items()
    )
    bars = storage.read_range(CLEAN_BARS, exchange, symbol, min(history_start.values()), last, filter=wanted)
    return bars.sort(interval_rank(), "timestamp")


def _warmup_metadata(bars: pl.DataFrame, ind: pl.DataFrame, first: dt.date) -> dict:
    first_ms = day_start_ms(first)
    out = {}
    for iv in ALL_INTERVALS:
        mine = ind.filter(pl.col("interval") == iv)
        if not mine.height:
            continue
        before = bars.filter((pl.col("interval") == iv) & (pl.col("timestamp").cast(pl.Int64) < first_ms)).height
        out[iv] = {
            "history_days_read": history_days_needed([iv]),
            "warmup_bars_needed": WARMUP_BARS[iv],
            "warmup_bars_available": min(before, WARMUP_BARS[iv]),
            "rows": mine.height,
            "rows_without_full_warmup": int((~mine.get_column("warmup_ok")).sum()),
            "null_values": int(sum(mine.get_column(c).null_count() for c in INDICATOR_COLUMNS)),
        }
    return out


def _indicator_day_metadata(df: pl.DataFrame) -> dict:
    return {
        "rows": df.height,
        "rows_without_full_warmup": int((~df.get_column("warmup_ok")).sum()) if df.height else 0,
        "null_values": int(sum(df.get_column(c).null_count() for c in INDICATOR_COLUMNS)),
    }


@asset(
    name=INDICATORS,
    deps=[CLEAN_BARS],
    partitions_def=symbol_day_partitions,
    backfill_policy=BackfillPolicy.single_run(),
    check_specs=INDICATOR_CHECKS,
    group_name=GROUP,
    kinds={"parquet", "talib"},
    freshness_policy=freshness_policy(),
    description="SMA(20/50/200), EMA(9/21), RSI(14), MACD(12,26,9), Bollinger(20,2), ATR(14) per interval, "
                "TA-Lib definitions, each day computed from a fixed 600-bar warm-up; grain: symbol x UTC day.",
)
def indicators(context: AssetExecutionContext, exchange: ExchangeResource, lakehouse: LakehouseResource):
    storage = lakehouse.storage()
    ex = exchange_id(exchange)
    book = CheckBook(INDICATORS, INDICATOR_SANITY) if _selected_checks(context, INDICATORS) else None
    all_days: dict[dt.date, dict] = {}
    warmup: dict = {}
    for symbol, days in days_by_symbol(context.partition_keys).items():
        first, last = days[0], days[-1]
        _require(storage, CLEAN_BARS, ex, symbol, days, INDICATORS)
        gate(storage, CLEAN_BARS, ex, symbol, first - dt.timedelta(days=history_days_needed()), last, INDICATORS)
        bars = read_warmup_bars(storage, ex, symbol, first, last)
        # One pass over the whole range with one warm-up: a range run equals its days run one by one.
        ind = compute_indicators(bars, first, last + ONE_DAY)
        frames = _split_days(ind, days)
        _write_days(storage, INDICATORS, ex, symbol, frames)
        per_day = {d: _indicator_day_metadata(f) for d, f in frames.items()}
        all_days.update(per_day)
        warmup = _warmup_metadata(bars, ind, first)
        short = {iv: w for iv, w in warmup.items() if w["rows_without_full_warmup"]}
        if short:
            context.log.warning(
                f"{symbol}: too little history for a full {max(WARMUP_BARS.values())}-bar warm-up on "
                f"{', '.join(short)}; values are null until TA-Lib's own lookback is met and the rows say "
                f"warmup_ok=false")
        if book:
            book.run(symbol, frames, checks.indicator_sanity)
        _observe(context, INDICATORS, symbol, per_day)

    if book:
        CheckBook.record_all([book], storage, ex, context.run_id)
    md = _sum_metadata(all_days)
    md["warmup"] = warmup
    md["warmup_note"] = (
        "full warm-up on every interval" if not any(w["rows_without_full_warmup"] for w in warmup.values())
        else "some rows lack the full warm-up (short history): see warmup; their values are null where TA-Lib "
             "has too few bars, and warmup_ok=false marks them")
    yield MaterializeResult(metadata=_metadata(md))
    if book:
        yield book.result(context)


# signals -----------------------------------------------------------------------------------------------
def _signal_day_metadata(df: pl.DataFrame) -> dict:
    rules = dict(df.group_by("rule").len().iter_rows()) if df.height else {}
    return {
        "rows": df.height,
        "buy": int((df.get_column("direction") > 0).sum()) if df.height else 0,
        "sell": int((df.get_column("direction") < 0).sum()) if df.height else 0,
        **{f"rule_{r.name}": int(rules.get(r.name, 0)) for r in RULES},
    }


@asset(
    name=SIGNALS,
    deps=[INDICATORS, CLEAN_BARS],
    partitions_def=symbol_day_partitions,
    backfill_policy=BackfillPolicy.single_run(),
    check_specs=SIGNAL_CHECKS,
    group_name=GROUP,
    kinds={"parquet", "polars"},
    freshness_policy=freshness_policy(),
    description="Explainable rule-based signals (lakehouse.signals.RULES): timestamp, interval, rule, direction "
                "and a readable reason with the values; only data up to each bar's close; grain: symbol x UTC day.",
)
def signals(context: AssetExecutionContext, exchange: ExchangeResource, lakehouse: LakehouseResource):
    storage = lakehouse.storage()
    ex = exchange_id(exchange)
    book = CheckBook(SIGNALS, SIGNALS_REFERENCE_BARS) if _selected_checks(context, SIGNALS) else None
    all_days: dict[dt.date, dict] = {}
    for symbol, days in days_by_symbol(context.partition_keys).items():
        first, last = days[0], days[-1]
        _require(storage, INDICATORS, ex, symbol, days, SIGNALS)
        gate(storage, INDICATORS, ex, symbol, first - ONE_DAY, last, SIGNALS)
        gate(storage, CLEAN_BARS, ex, symbol, first, last, SIGNALS)
        # The day before gives each series its previous bar, so a crossing at midnight is seen.
        ind = storage.read_range(INDICATORS, ex, symbol, first - ONE_DAY, last)
        sig = compute_signals(ind, first, last + ONE_DAY)
        frames = _split_days(sig, days)
        _write_days(storage, SIGNALS, ex, symbol, frames)
        per_day = {d: _signal_day_metadata(f) for d, f in frames.items()}
        all_days.update(per_day)
        if book:
            bars = storage.read_range(CLEAN_BARS, ex, symbol, first, last,
                                      columns=["exchange", "symbol", "interval", "timestamp", "close"])
            bars_by_day = _split_days(bars, days)
            book.add(symbol, {d: checks.signals_reference_bars(frames[d], bars_by_day[d])[0] if frames[d].height
                              else True for d in days}, checks.signals_reference_bars(sig, bars)[1])
        _observe(context, SIGNALS, symbol, per_day)
    if book:
        CheckBook.record_all([book], storage, ex, context.run_id)
    yield MaterializeResult(metadata=_metadata(_sum_metadata(all_days)))
    if book:
        yield book.result(context)


# scores ------------------------------------------------------------------------------------------------
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


@asset(
    name=SCORES,
    deps=[SIGNALS, INDICATORS],
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
    storage.write_table(SCORES, table)
    progress.emit(progress.ProgressEvent("table_done", SCORES, None, None, table.height))

    preview = table.filter(pl.col("exchange") == ex).select("symbol", "trend", "score", "close", "timestamp")
    md = {
        "rows": table.height,
        "symbols_scored": fresh.height,
        "symbols_kept_blocked": len(blocked_symbols),
        "blocked": blocked_symbols,
        "latest_bar": ms_to_iso(int(fresh.get_column("timestamp").cast(pl.Int64).max())) if fresh.height else None,
        "lakehouse_root": MetadataValue.path(str(storage.root)),
    }
    md = _metadata(md)
    md["preview"] = MetadataValue.md(_markdown(preview))
    yield MaterializeResult(metadata=md)
    if _selected_checks(context, SCORES):
        dupes = table.group_by("exchange", "symbol").len().filter(pl.col("len") > 1)
        out_of_range = table.filter((pl.col("score") < -100) | (pl.col("score") > 100))
        yield AssetCheckResult(
            check_name=ONE_ROW_PER_SYMBOL, asset_key=AssetKey(SCORES),
            passed=dupes.height == 0 and out_of_range.height == 0,
            metadata={"rows": table.height, "duplicated_symbols": dupes.height,
                      "scores_out_of_range": out_of_range.height},
        )


def _markdown(df: pl.DataFrame) -> str:
    if not df.height:
        return "_no scores yet_"
    head = "| " + " | ".join(df.columns) + " |\n|" + "---|" * len(df.columns) + "\n"
    return head + "\n".join("| " + " | ".join(str(v) for v in row) + " |" for row in df.iter_rows())


DERIVED_ASSETS = [clean, indicators, signals, scores]

__all__ = ["BLOCKING", "DERIVED_ASSETS", "clean", "exchange_id", "gate", "indicators", "read_warmup_bars",
           "scores", "signals"]
