"""`lakehouse status`: one row per tracked symbol, from a raw-layer audit of the files and the instance's runs.

It imports no Dagster: the instance's few facts come from `cli.local_instance` (cheap SQLite reads), and only
when that reader cannot answer exactly does it ask Dagster (the same answer, seconds slower).
"""

from __future__ import annotations

import json
import os

import click

from lakehouse.config import Settings
from lakehouse.timeutil import system_clock_ms

from .common import settings

SYMBOLS_PARTITION = "symbols"  # assets.partitions.SYMBOLS_PARTITION (importing it imports Dagster)


def now_ms() -> int:
    """The clock the audit judges freshness by: every exchange's `now_ms` is the wall clock (tests pin it here)."""
    return system_clock_ms()


def _fast_audit(s: Settings):
    """(audit, last runs) from the SQLite instance, or None when only Dagster can answer."""
    from lakehouse.audit import Auditor
    from lakehouse.registry import Registry
    from lakehouse.schema import RAW_OHLCV
    from lakehouse.status import in_flight, last_runs, tracked_entries
    from lakehouse.storage import Storage

    from .instance import DEFAULT_HOME
    from .local_instance import LocalInstance

    reader = LocalInstance.open(os.environ.get("DAGSTER_HOME") or DEFAULT_HOME)
    if reader is None:
        return None
    order = reader.dynamic_partitions(SYMBOLS_PARTITION)
    recent = reader.runs()
    active = reader.runs(limit=100_000, active_only=True)
    backfills = reader.backfills_in_progress()
    if order is None or recent is None or active is None or backfills is None or backfills > 0:
        return None
    tracked, notes = tracked_entries(Registry(s.root).load(), set(order))
    # Every column comes from the raw candles; auditing only raw keeps this fast on a large lakehouse
    # (`lakehouse repair --dry-run` audits every layer).
    audit = Auditor(Storage(s.root), s, [RAW_OHLCV]).run(
        tracked, now_ms(), in_flight=in_flight(active, order), exchange=s.exchange, persist_cache=_writable(s))
    audit.notes[:0] = notes
    return audit, last_runs(recent, order)


def _writable(s: Settings) -> bool:
    """Whether the audit may keep its manifest cache: status also reads a lakehouse it cannot write."""
    from lakehouse.errors import ConfigError

    try:
        s.check_root(write=True)
    except ConfigError:
        return False
    return s.root_path.is_dir()


def raw_audit(s: Settings):
    """(raw-layer audit, last run per symbol): from the SQLite instance when it can answer, else through Dagster."""
    return _fast_audit(s) or _dagster_audit()


def _dagster_audit():
    from lakehouse.schema import RAW_OHLCV
    from assets.instance_audit import last_runs_by_symbol

    from .repair import plan_repair

    instance, _defs, audit = plan_repair(layers=[RAW_OHLCV])
    return audit, last_runs_by_symbol(instance)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def status(as_json):
    """One row per tracked symbol: candles, coverage, gaps, freshness and the last run.

    Freshness tiers: fresh < LAKEHOUSE_FRESHNESS_WARN_HOURS (2 h) <= aging < LAKEHOUSE_FRESHNESS_FAIL_HOURS
    (24 h) <= stale, by the age of the newest candle.

    \b
    Example:
        lakehouse status --json
    """
    from lakehouse.status import symbol_rows

    s = settings()
    audit, runs = raw_audit(s)
    rows = symbol_rows(audit, runs)
    if as_json:
        click.echo(json.dumps({"symbols": rows, "audit": audit.summary(), "counts": audit.counts()}, indent=2))
        return
    if not rows:
        click.echo("no symbols tracked; add one with: lakehouse symbols add BTC/USDT --start 2024-01-01")
        return
    header = f"{'SYMBOL':<12} {'FIRST CANDLE':<20} {'LAST CANDLE':<20} {'DAYS':>9} {'COMPLETE':>9} " \
             f"{'SOURCE GAPS':>14} {'OPEN GAPS':>14} {'FRESHNESS':<9} LAST RUN"
    click.echo(header)
    for r in rows:
        run = r["last_run"]
        click.echo(
            f"{r['symbol']:<12} {r['first_candle'] or '-':<20} {r['last_candle'] or '-':<20} "
            f"{str(r['days_covered']) + '/' + str(r['days_expected']):>9} {r['completeness_pct']:>8.3f}% "
            f"{str(r['confirmed_gaps']) + ' / ' + str(r['confirmed_gap_minutes']) + 'm':>14} "
            f"{str(r['open_gaps']) + ' / ' + str(r['open_gap_minutes']) + 'm':>14} {r['freshness']:<9} "
            f"{(run['status'] + ' ' + run['at']) if run else '-'}"
        )
    click.echo(f"raw candles: {audit.summary()}")
