"""clean_bars + rejected_candles of a run's days: every raw row ends in exactly one of them, with its checks."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
from dagster import AssetCheckSeverity, AssetCheckSpec, AssetExecutionContext, MaterializeResult, MetadataValue

from lakehouse import checks
from lakehouse.clean import REASONS, clean_candles
from lakehouse.errors import LakehouseError
from lakehouse.registry import Registry
from lakehouse.resample import ALL_INTERVALS, DEFAULT_INTERVALS, resample
from lakehouse.schema import CLEAN_BARS, RAW_OHLCV, REJECTED_CANDLES, conform
from lakehouse.storage import Storage
from lakehouse.timeutil import DAY_MS, MINUTE_MS, day_start_ms, system_clock_ms

from .glue import (
    COMPLETENESS,
    OHLC_SANITY,
    ROWS_ACCOUNTED,
    UNIQUE_BARS,
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

# A raw row whose timestamp lies outside the day of the file it was stored in cannot belong to that partition.
OUTSIDE_DAY = "outside_partition_day"

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


def _listing_day(storage: Storage, symbol: str) -> dt.date | None:
    try:
        entry = Registry(storage.root).get(symbol)
    except LakehouseError:
        return None
    return entry.listing if entry else None


def _expected_window(day: dt.date, fetched_ms: int | None, first_ms: int | None,
                     listing: dt.date | None) -> tuple[int, int]:
    """[start, end) in ms of the minutes a day's raw file could hold: up to when it was fetched (`fetched_ms`, the
    newest fetched_at of its rows: the current day is partial), from the listing on (`first_ms`: its first row)."""
    start = day_start_ms(day)
    now = fetched_ms if fetched_ms is not None else system_clock_ms()
    end = min(start + DAY_MS, (now // MINUTE_MS) * MINUTE_MS)
    if listing is not None and day < listing:
        end = start
    elif listing is not None and day == listing and first_ms is not None:
        start = max(start, -(-first_ms // MINUTE_MS) * MINUTE_MS)
    return start, max(start, end)


def clean_whole(raw: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame, dict]:
    """(bars, rejects, stats) for raw rows tagged with their file's day, each frame with its `_day`.

    A row with no timestamp, or one outside its file's day, is rejected here (it has no other day to go to);
    everything else goes through lakehouse.clean and lands in the day of its timestamp.
    """
    ts_day = pl.col("timestamp").dt.date()
    stray = pl.col("timestamp").is_null() | (ts_day != pl.col("_day"))
    pre = raw.filter(stray).with_columns(
        pl.when(pl.col("timestamp").is_null()).then(pl.lit("non_finite")).otherwise(pl.lit(OUTSIDE_DAY)).alias("reason")
    )
    result = clean_candles(raw.filter(~stray).drop("_day"))
    bars = resample(result.bars, DEFAULT_INTERVALS).with_columns(ts_day.alias("_day"))
    pre_rejects = conform(pre, REJECTED_CANDLES).with_columns(pre.get_column("_day"))
    rejects = pl.concat([pre_rejects, result.rejects.with_columns(ts_day.alias("_day"))], how="vertical")
    return bars, rejects, result.stats


def clean_range(raw: pl.DataFrame, days: list[dt.date]) -> tuple[dict, dict, dict]:
    """(bars by day, rejects by day, stats) for raw rows tagged with their file's day (see clean_whole)."""
    bars, rejects, stats = clean_whole(raw)
    return split_days(bars, days), split_days(rejects, days), stats


def _day_figures(raw: pl.DataFrame, bars: pl.DataFrame, rejects: pl.DataFrame, days: list[dt.date],
                 listing: dt.date | None) -> tuple[dict[dt.date, dict], dict[dt.date, checks.CheckResult]]:
    """Each day's figures and its completeness check, from one group-by per frame over the run (all three carry
    `_day`). The figures: the headline numbers each as a number (the UI plots them across partitions), the
    breakdowns (bars per interval, rejects per reason) each as one JSON entry, which keeps every partition's
    event small: its metadata is serialized several times per event."""
    ms = pl.col("timestamp").cast(pl.Int64)
    raw_by_day = {r[0]: r[1:] for r in raw.group_by("_day").agg(pl.len(), pl.col("fetched_at").cast(pl.Int64).max(),
                                                                  ms.min()).iter_rows()}
    counts: dict[dt.date, dict[str, int]] = {d: {} for d in days}
    incomplete: dict[dt.date, int] = dict.fromkeys(days, 0)
    for day, interval, n, bad in bars.group_by("_day", "interval").agg(pl.len(), (~pl.col("complete")).sum()).iter_rows():
        if day in counts:
            counts[day][interval] = n
            incomplete[day] += bad
    reasons: dict[dt.date, dict[str, int]] = {d: {} for d in days}
    for day, reason, n in rejects.group_by("_day", "reason").len().iter_rows():
        if day in reasons:
            reasons[day][reason] = n
    # A bar's _day is its timestamp's day: each day's 1m open times are one slice of them sorted.
    minutes = bars.filter(pl.col("interval") == "1m").get_column("timestamp").cast(pl.Int64).sort().to_numpy()
    figures, completeness = {}, {}
    for day in days:
        raw_rows, fetched_ms, first_ms = raw_by_day.get(day, (0, None, None))
        start, end = _expected_window(day, fetched_ms, first_ms, listing)
        lo, hi = np.searchsorted(minutes, [day_start_ms(day), day_start_ms(day) + DAY_MS])
        completeness[day] = checks.completeness_of_minutes(minutes[lo:hi].tolist(), (end - start) // MINUTE_MS,
                                                           start, end)
        cmd = completeness[day][1]
        md = {
            "rows": sum(counts[day].values()),
            "raw_rows": raw_rows,
            "bars_1m": int(counts[day].get("1m", 0)),
            "incomplete_bars": int(incomplete[day]),
            "rejected_rows": sum(reasons[day].values()),
            "bars": {iv: int(counts[day].get(iv, 0)) for iv in ALL_INTERVALS},
            "rejected": {r: int(reasons[day].get(r, 0)) for r in (*REASONS, OUTSIDE_DAY)},
        }
        md.update({k: cmd[k] for k in ("expected_minutes", "present_minutes", "missing_minutes", "gap_count")})
        md["completeness_pct"] = (round(100.0 * min(md["present_minutes"], md["expected_minutes"]) / md["expected_minutes"], 3)
                                  if md["expected_minutes"] else 100.0)
        figures[day] = md
    return figures, completeness


def sum_metadata(per_day: dict[dt.date, dict]) -> dict:
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


def build_clean(context: AssetExecutionContext, storage: Storage, ex: str, plan: dict[str, list[dt.date]],
                selected: set[str], writer: DayWriter, handoff: Handoff) -> list:
    """Clean every symbol's days of the run, queue the selected layers' files on `writer` (and clean_bars on
    `handoff`), and return their results and checks.

    Each partition's materialization carries its own day's figures; the check results cover the whole run
    (Dagster records a range run's check results without a partition) and name the failing days."""
    books = {name: CheckBook(CLEAN_BARS, name, AssetCheckSeverity.WARN if name == COMPLETENESS
                             else AssetCheckSeverity.ERROR) for name in selected_checks(context, CLEAN_BARS)}
    all_days: list[dt.date] = []
    if CLEAN_BARS in selected:
        handoff.writing(CLEAN_BARS, writer)
    for symbol, days in plan.items():
        require(storage, RAW_OHLCV, ex, symbol, days, "clean_bars")
        gate(storage, RAW_OHLCV, ex, symbol, days[0], days[-1], "clean_bars")
        raw = storage.read_days(RAW_OHLCV, ex, symbol, days)
        whole_bars, whole_rejects, _stats = clean_whole(raw)
        bars, rejects = split_days(whole_bars, days), split_days(whole_rejects, days)
        if CLEAN_BARS in selected:
            handoff.keep(CLEAN_BARS, symbol, days, whole_bars, writer.write(storage, CLEAN_BARS, ex, symbol, bars))
        if REJECTED_CANDLES in selected:
            writer.write(storage, REJECTED_CANDLES, ex, symbol, rejects)

        per_day, completeness = _day_figures(raw, whole_bars, whole_rejects, days, _listing_day(storage, symbol))
        whole_bars = whole_bars.drop("_day")
        complete_outcome = {day: ok for day, (ok, _md) in completeness.items()}
        gaps = [[str(day), *g] for day, (_ok, md) in completeness.items() for g in md["gaps"]]
        if CLEAN_BARS in selected:
            add_partition_metadata(context, CLEAN_BARS, symbol, per_day)
        if REJECTED_CANDLES in selected:
            add_partition_metadata(context, REJECTED_CANDLES, symbol, {
                d: {"rows": rejects[d].height, "raw_rows": per_day[d]["raw_rows"], "reasons": per_day[d]["rejected"]}
                for d in days})
        all_days += days
        if OHLC_SANITY in books:
            books[OHLC_SANITY].run(symbol, bars, checks.ohlc_sanity, whole=whole_bars)
        if UNIQUE_BARS in books:
            books[UNIQUE_BARS].run(symbol, bars, checks.uniqueness, whole=whole_bars)
        if ROWS_ACCOUNTED in books:
            accounted = {d: per_day[d]["raw_rows"] == per_day[d]["bars_1m"] + per_day[d]["rejected_rows"] for d in days}
            books[ROWS_ACCOUNTED].add(symbol, accounted, {
                "raw_rows": raw.height, "clean_1m_rows": sum(per_day[d]["bars_1m"] for d in days),
                "rejected_rows": sum(per_day[d]["rejected_rows"] for d in days),
                "unaccounted_days": [str(d) for d, ok in accounted.items() if not ok][:50]})
        if COMPLETENESS in books:
            total = sum_metadata(per_day)
            books[COMPLETENESS].add(symbol, complete_outcome, {
                k: total[k] for k in ("expected_minutes", "present_minutes", "missing_minutes", "gap_count",
                                      "completeness_pct")} | {
                "incomplete_days": [str(d) for d, ok in complete_outcome.items() if not ok][:100],
                "gaps": gaps[: checks.MAX_GAPS]})
        context.log.info(
            f"{symbol} {days[0]}..{days[-1]}: {raw.height} raw -> {sum(per_day[d]['bars_1m'] for d in days)} "
            f"clean 1m bars, {sum(per_day[d]['rejected_rows'] for d in days)} rejected")

    CheckBook.record_all(books.values(), storage, ex, context.run_id)
    shared = to_metadata(run_metadata(sorted(all_days)))
    shared["lakehouse_root"] = MetadataValue.path(str(storage.root))
    out: list = [MaterializeResult(asset_key=layer, metadata=shared)
                 for layer in (CLEAN_BARS, REJECTED_CANDLES) if layer in selected]
    out += [books[name].result(context) for name in (OHLC_SANITY, UNIQUE_BARS, ROWS_ACCOUNTED, COMPLETENESS)
            if name in books]
    return out
