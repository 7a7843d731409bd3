"""signals of a run's days: the rules over the indicators (with the day before, for crossings at midnight)."""

from __future__ import annotations

import datetime as dt

import polars as pl
from dagster import AssetCheckSpec, AssetExecutionContext, MaterializeResult

from lakehouse import checks
from lakehouse.resample import interval_rank
from lakehouse.schema import CLEAN_BARS, INDICATORS, LAYERS, SIGNALS
from lakehouse.signals import RULES, compute_signals
from lakehouse.storage import Storage

from .glue import (
    ONE_DAY,
    SIGNALS_REFERENCE_BARS,
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

SIGNAL_CHECKS = [
    AssetCheckSpec(SIGNALS_REFERENCE_BARS, asset=SIGNALS, blocking=True,
                   description="Every signal points at an existing clean bar and carries its close."),
]


def _signal_figures(sig: pl.DataFrame, days: list[dt.date]) -> dict[dt.date, dict]:
    """Each day's figures (signals, buys, sells, firings per rule) from one group-by over the run's signals."""
    rules: dict[dt.date, dict[str, int]] = {d: {} for d in days}
    sides: dict[dt.date, tuple[int, int]] = {}
    if sig.height:
        per_rule = sig.group_by(pl.col("timestamp").dt.date().alias("_day"), "rule").agg(
            pl.len(), (pl.col("direction") > 0).sum().alias("buy"), (pl.col("direction") < 0).sum().alias("sell"))
        for day, rule, n, buy, sell in per_rule.iter_rows():
            if day in rules:
                rules[day][rule] = n
                b, s = sides.get(day, (0, 0))
                sides[day] = (b + buy, s + sell)
    return {d: {
        "rows": sum(rules[d].values()),
        "buy": int(sides.get(d, (0, 0))[0]),
        "sell": int(sides.get(d, (0, 0))[1]),
        "rules": {r.name: int(rules[d].get(r.name, 0)) for r in RULES},
    } for d in days}


def build_signals(context: AssetExecutionContext, storage: Storage, ex: str, plan: dict[str, list[dt.date]],
                  writer: DayWriter, handoff: Handoff) -> list:
    """Fire the rules over every symbol's days of the run, queue their files on `writer`, return the results and
    the check. Indicators and clean bars this step just computed come from `handoff`."""
    book = CheckBook(SIGNALS, SIGNALS_REFERENCE_BARS) if selected_checks(context, SIGNALS) else None
    all_days: list[dt.date] = []
    for symbol, days in plan.items():
        first, last = days[0], days[-1]
        run_ind = handoff.frame(INDICATORS, symbol, days)
        if run_ind is None:
            require(storage, INDICATORS, ex, symbol, days, SIGNALS)
        gate(storage, INDICATORS, ex, symbol, first - ONE_DAY, last, SIGNALS)
        gate(storage, CLEAN_BARS, ex, symbol, first, last, SIGNALS)
        # The day before gives each series its previous bar, so a crossing at midnight is seen.
        columns = list(LAYERS[INDICATORS])
        if run_ind is None:
            ind = storage.read_range(INDICATORS, ex, symbol, first - ONE_DAY, last, columns=columns)
        else:
            ind = pl.concat([storage.read_range(INDICATORS, ex, symbol, first - ONE_DAY, first - ONE_DAY,
                                                columns=columns), run_ind.select(columns)], how="vertical")
        # Each series contiguous and oldest first, sorted on numbers: compute_signals then need not sort strings.
        ind = ind.sort(interval_rank(), "timestamp", maintain_order=True)
        sig = compute_signals(ind, first, last + ONE_DAY)
        frames = split_days(sig, days)
        writer.write(storage, SIGNALS, ex, symbol, frames, after=handoff.writes(INDICATORS, symbol))
        add_partition_metadata(context, SIGNALS, symbol, _signal_figures(sig, days))
        all_days += days
        if book:
            reference = ["exchange", "symbol", "interval", "timestamp", "close"]
            bars = handoff.frame(CLEAN_BARS, symbol, days)
            if bars is None:
                bars = storage.read_range(CLEAN_BARS, ex, symbol, first, last, columns=reference)
            else:
                bars = bars.select(reference)
            passed, md = checks.signals_reference_bars(sig, bars)
            outcome = dict.fromkeys(days, True)
            if not passed:  # only then day by day, to tell which days fail
                bars_by_day = split_days(bars, days)
                outcome = {d: checks.signals_reference_bars(frames[d], bars_by_day[d])[0] if frames[d].height
                           else True for d in days}
            book.add(symbol, outcome, md)
        handoff.release(symbol)
    if book:
        CheckBook.record_all([book], storage, ex, context.run_id)
    out: list = [MaterializeResult(asset_key=SIGNALS, metadata=to_metadata(run_metadata(sorted(all_days))))]
    if book:
        out.append(book.result(context))
    return out
