"""`lakehouse backfill`: materialize symbol x day partitions in-process (or on a deployment with --url) and wait."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import sys

import click

from lakehouse.config import Settings
from lakehouse.errors import UserInputError
from lakehouse.run_tags import REFETCH_TAG
from lakehouse.timeutil import check_range, utc_today

from .common import UsageFailure, day_arg, echo_for, get_instance, load_defs, settings, symbols_arg
from .remote import check_local_flags, remote_options


def plan_days(instance, s: Settings, names: list[str], start: dt.date | None, end: dt.date | None,
              echo=click.echo) -> dict[str, list[dt.date]]:
    """Which days of which symbols to run: registered symbols only, clamped to listing and today.

    A range that begins before a symbol's registered start moves that start back (the history asked for is
    history to keep, so the audit, `status` and the repair sensor cover it from then on); a range wholly
    before a symbol's listing is said and skipped, and if nothing is left that is bad input.
    """
    from assets.partitions import SYMBOLS_PARTITION
    from lakehouse.registry import Registry

    registered = instance.get_dynamic_partitions(SYMBOLS_PARTITION)
    names = names or sorted(registered)
    if not names:
        raise UsageFailure("no symbols tracked; add one first: lakehouse symbols add BTC/USDT --start 2024-01-01")
    unknown = [n for n in names if n not in registered]
    if unknown:
        raise UsageFailure(f"not tracked: {', '.join(unknown)}; add with: lakehouse symbols add {' '.join(unknown)}")
    today = utc_today()
    if start is not None and start > today:
        raise UsageFailure(f"--start {start} is in the future; pick a day up to today ({today})")
    if end is not None and end > today:
        echo(f"--end {end} is in the future; ending today ({today}).")
        end = today
    if start is not None and end is not None:
        try:
            check_range(start, end)
        except UserInputError as exc:
            raise UsageFailure(str(exc)) from None
    registry = Registry(s.root)
    entries = registry.load()
    plan, moved, skipped = {}, [], []
    for symbol in names:
        entry = entries.get(symbol)
        first = start or (entry.start if entry else today)
        listing = entry.listing if entry else None
        last = end or today
        if listing and last < listing:
            echo(f"{symbol}: {first}..{last} is wholly before its listing on {listing}; nothing to fetch for it.")
            skipped.append(symbol)
            continue
        if listing and first < listing:
            echo(f"{symbol}: start {first} is before its listing on {listing}; starting at {listing}.")
            first = listing
        if entry is not None and first < entry.start:
            moved.append(dataclasses.replace(entry, start=first))
        plan[symbol] = [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]
    if not plan:
        raise UsageFailure(f"nothing to backfill: every range asked for ends before its symbol's listing "
                           f"({', '.join(skipped)}); pick an --end on or after the listing day "
                           f"(lakehouse symbols list shows it)")
    for entry in moved:
        registry.upsert(entry)
        echo(f"{entry.symbol}: history now starts {entry.start} (was {entries[entry.symbol].start}).")
    return plan


def default_selection(defs) -> list[str]:
    """Every partitioned asset, upstream first: raw, then each derived layer."""
    keys = []
    for assets_def in defs.assets or []:
        if getattr(assets_def, "partitions_def", None) is not None:
            keys.extend(k.to_user_string() for k in assets_def.keys)
    return keys


def table_selection(defs) -> list[str]:
    """Every unpartitioned asset (scores): rebuilt from the latest partitions at the end of each backfill run."""
    keys = []
    for assets_def in defs.assets or []:
        if getattr(assets_def, "partitions_def", None) is None:
            keys.extend(k.to_user_string() for k in assets_def.keys)
    return keys


@click.command()
@click.option("--symbols", "symbol_list", multiple=True, help="Comma-separated symbols; default: every tracked one.")
@click.option("--start", help="First UTC day (YYYY-MM-DD); default: each symbol's start (with --url: yesterday).")
@click.option("--end", help="Last UTC day (YYYY-MM-DD), included; default: today.")
@click.option("--assets", "asset_list", default=None, help="Comma-separated assets; default: every partitioned layer.")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary at the end (progress on stderr).")
@click.option("--refetch", is_flag=True, help="Fetch closed days again even when their raw file is already complete.")
@remote_options
def backfill(symbol_list, start, end, asset_list, as_json, refetch, url, wait, timeout):
    """Materialize partitions and wait: exit 0 if all succeeded, 1 if any failed, 2 on bad input.

    In-process by default: one run covers a symbol's whole day range (fetched in one pass); symbols with the
    same days share a run (up to 400 symbol-days), and if such a run fails each of its symbols runs again
    alone. By default every layer is built, raw to signals, and each run ends by rebuilding the scores table.
    A --start before a symbol's registered start moves its start back, so `status` and the repair sensor
    cover the new days too.

    With --url (or DAGSTER_URL) the work is launched on that running deployment as one partition backfill, so
    its backfill policies, pools and retries apply; the command prints the backfill's id and link, waits with
    live progress and exits 0 (all succeeded), 1 (some partitions failed: which, and why), 3 (--timeout passed;
    the backfill keeps running) or 4 (deployment unreachable or refused). Symbols are the deployment's; the
    range defaults to yesterday and today.

    \b
    Example:
        lakehouse backfill --symbols BTC/USDT,ETH/USDT --start 2024-01-01 --end 2024-01-31
        lakehouse backfill --url http://127.0.0.1:3000 --start 2024-01-01 --timeout 30m --json
    """
    check_local_flags(url, wait, timeout)
    refetch_tags = {REFETCH_TAG: "true"} if refetch else None
    s = settings(write=not url)
    start_day, end_day = day_arg(start, "--start"), day_arg(end, "--end")
    names = symbols_arg(symbol_list, "--symbols")
    if asset_list is not None and not asset_list.strip(", "):
        raise UsageFailure("--assets is empty; name assets like raw_ohlcv,clean_bars or leave it out for every layer")
    echo = echo_for(as_json)
    defs = load_defs()
    selection = default_selection(defs) if not asset_list else [a.strip() for a in asset_list.split(",") if a.strip()]
    known = set(default_selection(defs))
    bad = [a for a in selection if a not in known]
    if bad:
        raise UsageFailure(f"unknown asset(s) {', '.join(bad)[:80]}; choose from {', '.join(sorted(known))}")
    tables = [] if asset_list else table_selection(defs)
    if url:
        from .remote import remote_backfill

        remote_backfill(url, names, start_day, end_day, [*selection, *tables], wait=wait, timeout_s=timeout,
                        as_json=as_json, echo=echo, tags=refetch_tags)
        return
    from .progress import ProgressDisplay
    from .runner import exit_on_signals, run_counts, run_plan, runs_text

    exit_on_signals()
    instance = get_instance()
    plan = plan_days(instance, s, names, start_day, end_day, echo=echo)
    partitions = sum(len(d) for d in plan.values())
    with ProgressDisplay(partitions * len(selection), "backfill") as display:
        outcomes = run_plan(instance, defs, selection, plan, display, tables=tables, timeout_s=timeout,
                            tags=refetch_tags)
    failed = [o for o in outcomes if o.counts_as_failed]
    counts = run_counts(outcomes)
    summary = {
        "partitions": partitions,
        **counts,
        "failed": [o.as_dict() for o in failed],
        "runs_detail": [o.as_dict() for o in outcomes],
    }
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        click.echo(f"{partitions} partitions x {len(selection)} asset(s) in {runs_text(counts)}")
        for o in failed:
            click.echo(f"FAILED {o.symbol} {o.start}..{o.end} (run {o.run_id}): {o.error}", err=True)
    sys.exit(1 if failed else 0)
