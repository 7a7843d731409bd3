"""indicators of a run's days: one read of clean_bars with each interval's warm-up, one pass, day files."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
from dagster import AssetCheckSpec, AssetExecutionContext, MaterializeResult

from lakehouse import checks
from lakehouse.indicators import WARMUP_BARS, compute_indicators, history_days_needed
from lakehouse.resample import ALL_INTERVALS, interval_rank
from lakehouse.schema import CLEAN_BARS, INDICATOR_COLUMNS, INDICATORS
from lakehouse.storage import Storage
from lakehouse.timeutil import day_start_ms

from .glue import (
    INDICATOR_SANITY,
    ONE_DAY,
    CheckBook,
    DayWriter,
    Handoff,
    add_partition_metadata,
    gate,
    require,
    run_metadata,
    selected_checks,
    split_days,
    to_metadata,
)

INDICATOR_CHECKS = [
    AssetCheckSpec(INDICATOR_SANITY, asset=INDICATORS, blocking=True,
                   description="No null after the warm-up, RSI in [0, 100], bands ordered, ATR >= 0."),
]


def read_warmup_bars(storage: Storage, exchange: str, symbol: str, first: dt.date, last: dt.date,
                     run_bars: pl.DataFrame | None = None) -> pl.DataFrame:
    """clean_bars of [first, last] plus, per interval, the history its warm-up needs: one scan, and only each
    interval's own history (2 days of 1m, 601 days of 1d), sorted by interval then time. `run_bars`, when
    given, are the clean bars of [first, last] already in memory: only the history before `first` is read."""
    history_start = {iv: first - dt.timedelta(days=history_days_needed([iv])) for iv in ALL_INTERVALS}
    wanted = pl.any_horizontal(
        (pl.col("interval") == iv) & (pl.col("timestamp") >= pl.lit(day_start_ms(d)).cast(pl.Datetime("ms", "UTC")))
        for iv, d in history_start.items()
    )
    read_to = last if run_bars is None else first - ONE_DAY
    bars = storage.read_range(CLEAN_BARS, exchange, symbol, min(history_start.values()), read_to, filter=wanted)
    if run_bars is not None:
        bars = pl.concat([bars, run_bars], how="vertical")
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


def build_indicators(context: AssetExecutionContext, storage: Storage, ex: str, plan: dict[str, list[dt.date]],
                     writer: DayWriter, handoff: Handoff) -> list:
    """Compute every symbol's days of the run in one pass with one warm-up, queue their files on `writer` (and
    on `handoff`), return the results. Clean bars this step just computed come from `handoff`."""
    book = CheckBook(INDICATORS, INDICATOR_SANITY) if selected_checks(context, INDICATORS) else None
    all_days: list[dt.date] = []
    warmup: dict = {}
    handoff.writing(INDICATORS, writer)
    for symbol, days in plan.items():
        first, last = days[0], days[-1]
        run_bars = handoff.frame(CLEAN_BARS, symbol, days)
        if run_bars is None:
            require(storage, CLEAN_BARS, ex, symbol, days, INDICATORS)
        gate(storage, CLEAN_BARS, ex, symbol, first - dt.timedelta(days=history_days_needed()), last, INDICATORS)
        bars = read_warmup_bars(storage, ex, symbol, first, last, run_bars)
        # One pass over the whole range with one warm-up: a range run equals its days run one by one.
        ind = compute_indicators(bars, first, last + ONE_DAY)
        frames = split_days(ind, days)
        writes = writer.write(storage, INDICATORS, ex, symbol, frames, after=handoff.writes(CLEAN_BARS, symbol))
        handoff.keep(INDICATORS, symbol, days, ind, writes)
        warmup = _warmup_metadata(bars, ind, first)
        per_day = _per_day_metadata(bars, ind, days, warmup)
        add_partition_metadata(context, INDICATORS, symbol, per_day)
        all_days += days
        short = {iv: w for iv, w in warmup.items() if w["rows_without_full_warmup"]}
        if short:
            context.log.warning(
                f"{symbol}: too little history for a full {max(WARMUP_BARS.values())}-bar warm-up on "
                f"{', '.join(short)}; values are null until TA-Lib's own lookback is met and the rows say "
                f"warmup_ok=false")
        if book:
            book.run(symbol, frames, checks.indicator_sanity, whole=ind)

    if book:
        CheckBook.record_all([book], storage, ex, context.run_id)
    out: list = [MaterializeResult(asset_key=INDICATORS, metadata=to_metadata(run_metadata(sorted(all_days))))]
    if book:
        out.append(book.result(context))
    return out


def _per_day_metadata(bars: pl.DataFrame, ind: pl.DataFrame, days: list[dt.date], warmup: dict) -> dict[dt.date, dict]:
    """Each day's own figures (rows, rows without the full warm-up, nulls, warm-up bars before it), overall and
    per interval in `warmup`, from one group-by over the run's rows."""
    starts = np.array([day_start_ms(d) for d in days], dtype=np.int64)
    before: dict[str, np.ndarray] = {}
    for iv in warmup:
        ts = bars.filter(pl.col("interval") == iv).get_column("timestamp").cast(pl.Int64).to_numpy()
        before[iv] = np.minimum(np.searchsorted(ts, starts, side="left"), WARMUP_BARS[iv])
    stats = ind.group_by(pl.col("timestamp").dt.date().alias("_day"), "interval").agg(
        rows=pl.len(),
        rows_without_full_warmup=(~pl.col("warmup_ok")).sum(),
        null_values=pl.sum_horizontal(pl.col(c).is_null() for c in INDICATOR_COLUMNS).sum(),
    )
    by_day: dict[dt.date, dict[str, dict]] = {}
    for row in stats.iter_rows(named=True):
        day, interval = row.pop("_day"), row.pop("interval")
        by_day.setdefault(day, {})[interval] = {k: int(v) for k, v in row.items()}
    out = {}
    for i, day in enumerate(days):
        mine = by_day.get(day, {})
        zero = {"rows": 0, "rows_without_full_warmup": 0, "null_values": 0}
        day_warmup = {iv: {**w, "warmup_bars_available": int(before[iv][i]), **mine.get(iv, zero)}
                      for iv, w in warmup.items()}
        out[day] = {
            **{k: sum(v[k] for v in mine.values()) for k in zero},
            "warmup": day_warmup,
            "warmup_note": _warmup_note(day_warmup),
        }
    return out


def _warmup_note(warmup: dict) -> str:
    if not any(w["rows_without_full_warmup"] for w in warmup.values()):
        return "full warm-up on every interval"
    return ("some rows lack the full warm-up (short history): see warmup; their values are null where TA-Lib "
            "has too few bars, and warmup_ok=false marks them")
