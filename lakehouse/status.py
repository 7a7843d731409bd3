"""Coverage, gaps and freshness per symbol, from one audit: what `lakehouse status` / `gaps` and the UI show."""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
from typing import Collection, Iterable, Mapping, Sequence

from .audit import Audit, freshness_tier
from .registry import TrackedSymbol
from .run_tags import covered_partitions
from .timeutil import MINUTE_MS, ms_to_iso

TIERS = ("fresh", "aging", "stale", "empty")
# Run statuses that still hold their partitions: queued runs count, a request not started yet is in flight.
ACTIVE_RUN_STATUSES = ("QUEUED", "NOT_STARTED", "STARTING", "STARTED", "CANCELING")


@dataclasses.dataclass(frozen=True)
class RunSummary:
    """What the status needs of one Dagster run, however it was read (Dagster's API or its SQLite files)."""

    run_id: str
    status: str  # DagsterRunStatus value
    tags: Mapping[str, str]
    at: float  # end, else start, else creation time (epoch seconds)


def tracked_entries(entries: Mapping[str, TrackedSymbol], partitions: Collection[str]) -> tuple[list[TrackedSymbol], list[str]]:
    """Symbols both registered (start day) and a Dagster partition (can be materialized), and a note per symbol
    that is a partition without a registry entry."""
    notes = [f"{s} is a Dagster partition but not in the registry; re-add it with lakehouse symbols add {s}"
             for s in sorted(set(partitions) - set(entries))]
    return [e for s, e in sorted(entries.items()) if s in partitions], notes


def last_runs(runs: Iterable[RunSummary], symbol_order: Sequence[str]) -> dict[str, dict]:
    """symbol -> its newest run (runs come newest first): status, run id and when it ended (or started)."""
    out: dict[str, dict] = {}
    for run in runs:
        for symbol in {s for s, _ in covered_partitions(run.tags, symbol_order) or ()}:
            if symbol not in out:
                out[symbol] = {"status": run.status, "run_id": run.run_id,
                               "at": dt.datetime.fromtimestamp(run.at, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    return out


def in_flight(runs: Iterable[RunSummary], symbol_order: Sequence[str]) -> dict[str, set[dt.date]]:
    """symbol -> days that a queued or running run covers."""
    out: dict[str, set[dt.date]] = {}
    for run in runs:
        if run.status in ACTIVE_RUN_STATUSES:
            for symbol, day in covered_partitions(run.tags, symbol_order) or ():
                out.setdefault(symbol, set()).add(day)
    return out


def symbol_rows(audit: Audit, last_runs: dict[str, dict] | None = None) -> list[dict]:
    """One row per audited symbol, JSON-ready, oldest-symbol-name first."""
    work = collections.Counter(f.symbol for f in audit.findings)
    flight = collections.Counter(f.symbol for f in audit.findings if f.in_flight)
    rows = []
    for symbol, cov in sorted(audit.coverage.items()):
        gaps = cov.merged_gaps()
        confirmed = [g for g in gaps if g.confirmed]
        open_ = [g for g in gaps if not g.confirmed]
        age = None if cov.last_ms is None else (audit.now_ms - (cov.last_ms + MINUTE_MS)) // MINUTE_MS
        rows.append({
            "symbol": symbol,
            "exchange": cov.exchange,
            "start": cov.start.isoformat(),
            "first_candle": ms_to_iso(cov.first_ms),
            "last_candle": ms_to_iso(cov.last_ms),
            "days_covered": cov.days_covered,
            "days_expected": cov.days_expected,
            "completeness_pct": cov.completeness_pct,
            "confirmed_gaps": len(confirmed),
            "confirmed_gap_minutes": sum(g.minutes for g in confirmed),
            "open_gaps": len(open_),
            "open_gap_minutes": sum(g.minutes for g in open_),
            "freshness": freshness_tier(cov.last_ms, audit.now_ms, audit.settings),
            "age_minutes": age,
            "partitions_needing_work": work.get(symbol, 0),
            "partitions_in_flight": flight.get(symbol, 0),
            "last_run": (last_runs or {}).get(symbol),
        })
    return rows


def gap_rows(audit: Audit, symbol: str) -> list[dict]:
    """Every gap of one symbol's raw candles (merged across midnight), confirmed at the source or open."""
    cov = audit.coverage.get(symbol)
    return [] if cov is None else [g.as_dict() for g in cov.merged_gaps()]


def _age(minutes: int | None) -> str:
    if minutes is None:
        return "-"
    if minutes < 120:
        return f"{minutes} min"
    return f"{minutes / 60:.1f} h" if minutes < 48 * 60 else f"{minutes / 1440:.1f} d"


def markdown_table(rows: list[dict]) -> str:
    """The status rows as a Markdown table (the Dagster UI renders it)."""
    lines = [
        "| symbol | last candle (UTC) | age | freshness | completeness | open gaps | confirmed source gaps | last run |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        run = r["last_run"]
        lines.append(
            f"| {r['symbol']} | {r['last_candle'] or '-'} | {_age(r['age_minutes'])} | {r['freshness']} "
            f"| {r['completeness_pct']:.3f}% ({r['days_covered']}/{r['days_expected']} days) "
            f"| {r['open_gaps']} ({r['open_gap_minutes']} min) "
            f"| {r['confirmed_gaps']} ({r['confirmed_gap_minutes']} min) "
            f"| {(run['status'] + ' ' + run['at']) if run else '-'} |"
        )
    return "\n".join(lines)


def tier_counts(rows: list[dict]) -> dict[str, int]:
    c = collections.Counter(r["freshness"] for r in rows)
    return {t: c.get(t, 0) for t in TIERS}
