"""`lakehouse`: a thin click layer over the library and Dagster.

Exit codes: 0 ok, 1 work failed, 2 bad input, 3 timed out waiting on a deployment, 4 deployment unreachable or refused.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import sys
import warnings

import click
from dagster import BetaWarning, PreviewWarning

from lakehouse.config import Settings
from lakehouse.errors import LakehouseError, UserInputError
from lakehouse.registry import Registry, TrackedSymbol
from lakehouse.symbols import validate_symbol
from lakehouse.timeutil import check_range, ms_to_day, parse_day, utc_today

from .instance import PROJECT_ROOT, ensure_dagster_home, get_instance
from .remote import check_local_flags, remote_options

warnings.filterwarnings("ignore", category=BetaWarning)
warnings.filterwarnings("ignore", category=PreviewWarning)

DEMO_SYMBOLS = ("BTC/USDT", "ETH/USDT", "SOL/USDT")
DEMO_DAYS = 7


class UsageFailure(click.ClickException):
    """Bad input from the user: exit code 2, like click's own usage errors, and nothing was changed."""

    exit_code = 2


def settings() -> Settings:
    try:
        return Settings.from_env()
    except UserInputError as exc:
        raise UsageFailure(str(exc)) from None


def load_defs():
    from definitions import defs

    return defs


def exchange_client(s: Settings):
    from resources import exchange_resource

    try:
        return exchange_resource(s).client()
    except UserInputError as exc:
        raise UsageFailure(str(exc)) from None


def _symbols_arg(values) -> list[str]:
    out = []
    for value in values:
        for part in value.split(","):
            if part.strip():
                try:
                    out.append(validate_symbol(part))
                except UserInputError as exc:
                    raise UsageFailure(str(exc)) from None
    return list(dict.fromkeys(out))


def _day(value: str | None, what: str) -> dt.date | None:
    if value is None:
        return None
    try:
        return parse_day(value, what)
    except UserInputError as exc:
        raise UsageFailure(str(exc)) from None


@click.group()
@click.version_option(package_name="ohlcv-lakehouse")
def cli():
    """Market-data lakehouse on Dagster: OHLCV, cleaned bars, indicators and signals, kept complete and fresh.

    \b
    Example:
        lakehouse symbols add BTC/USDT ETH/USDT --start 2024-01-01
        lakehouse backfill --start 2024-01-01 --end 2024-01-31
        lakehouse query "select symbol, count(*) from raw_ohlcv group by 1"
    """


# symbols ---------------------------------------------------------------------------------------
@cli.group()
def symbols():
    """Manage the tracked symbols (the `symbols` dynamic partitions of the Dagster instance)."""


def add_symbols(instance, s: Settings, names: list[str], start: dt.date | None, echo=click.echo) -> list[TrackedSymbol]:
    """Validate every symbol on the exchange first, then register them all; nothing is added on any error."""
    client = exchange_client(s)
    entries = []
    try:
        for symbol in names:
            try:
                client.check_symbol(symbol)
                listing_ms = client.listing_ms(symbol)
            except UserInputError as exc:
                raise UsageFailure(f"{exc} Nothing was added.") from None
            except LakehouseError as exc:
                raise click.ClickException(f"could not reach {client.id} to check {symbol}: {exc}") from None
            listing = ms_to_day(listing_ms) if listing_ms is not None else None
            first = start or listing or s.history_start
            if listing and first < listing:
                echo(f"{symbol}: start {first} is before its listing on {listing}; history starts {listing}.")
                first = listing
            if first < s.history_start:
                echo(f"{symbol}: start {first} is before LAKEHOUSE_HISTORY_START; history starts {s.history_start}.")
                first = s.history_start
            entries.append(TrackedSymbol(symbol, client.id, first, listing, dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")))
    finally:
        client.close()
    registry = Registry(s.root)
    for entry in entries:
        registry.upsert(entry)
    from assets.partitions import SYMBOLS_PARTITION

    instance.add_dynamic_partitions(SYMBOLS_PARTITION, [e.symbol for e in entries])
    return entries


@symbols.command("add")
@click.argument("names", nargs=-1, required=True)
@click.option("--start", help="First UTC day of history to keep (YYYY-MM-DD); default: the listing day.")
def symbols_add(names, start):
    """Track symbols: validate them on the exchange, then add them as partitions.

    \b
    Example:
        lakehouse symbols add BTC/USDT ETH/USDT --start 2024-01-01
    """
    s = settings()
    start_day = _day(start, "--start")
    if start_day and start_day > utc_today():
        raise UsageFailure(f"--start {start_day} is in the future; pick a day up to {utc_today()}")
    entries = add_symbols(get_instance(), s, _symbols_arg(names), start_day)
    for e in entries:
        click.echo(f"added {e.symbol} on {e.exchange} from {e.start} (listed {e.listing or 'unknown'})")


@symbols.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def symbols_list(as_json):
    """List tracked symbols with the day their history starts.

    \b
    Example:
        lakehouse symbols list --json
    """
    from assets.partitions import SYMBOLS_PARTITION

    s = settings()
    registered = get_instance().get_dynamic_partitions(SYMBOLS_PARTITION)
    entries = Registry(s.root).load()
    rows = []
    for symbol in sorted(set(registered) | set(entries)):
        e = entries.get(symbol)
        rows.append({
            "symbol": symbol,
            "exchange": e.exchange if e else s.exchange,
            "start": str(e.start) if e else None,
            "listing": str(e.listing) if e and e.listing else None,
            "in_dagster": symbol in registered,
        })
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no symbols tracked; add one with: lakehouse symbols add BTC/USDT")
        return
    for r in rows:
        flag = "" if r["in_dagster"] else "  (not in Dagster: re-add it)"
        click.echo(f"{r['symbol']:<14} {r['exchange']:<10} from {r['start'] or '-':<10}  listed {r['listing'] or '-'}{flag}")


@symbols.command("remove")
@click.argument("names", nargs=-1, required=True)
def symbols_remove(names):
    """Stop tracking symbols; their data files are kept.

    \b
    Example:
        lakehouse symbols remove SOL/USDT
    """
    from assets.partitions import SYMBOLS_PARTITION

    s = settings()
    instance = get_instance()
    registry = Registry(s.root)
    for symbol in _symbols_arg(names):
        known = instance.has_dynamic_partition(SYMBOLS_PARTITION, symbol)
        if not known and registry.get(symbol) is None:
            raise UsageFailure(f"{symbol} is not tracked; see 'lakehouse symbols list'")
        if known:
            instance.delete_dynamic_partition(SYMBOLS_PARTITION, symbol)
        registry.remove(symbol)
        click.echo(f"removed {symbol} (data files kept under {s.root})")


@symbols.command("available")
@click.option("--quote", default=None, help="Only markets quoted in this asset, e.g. USDT.")
def symbols_available(quote):
    """List the markets the configured exchange offers.

    \b
    Example:
        lakehouse symbols available --quote USDT
    """
    client = exchange_client(settings())
    try:
        markets = client.markets()
    except LakehouseError as exc:
        raise click.ClickException(f"could not load markets from {client.id}: {exc}") from None
    finally:
        client.close()
    for symbol, m in sorted(markets.items()):
        if quote is None or m.quote == quote.upper():
            click.echo(symbol)


# backfill --------------------------------------------------------------------------------------
def plan_days(instance, s: Settings, names: list[str], start: dt.date | None, end: dt.date | None,
              echo=click.echo) -> dict[str, list[dt.date]]:
    """Which days of which symbols to run: registered symbols only, clamped to listing and today."""
    from assets.partitions import SYMBOLS_PARTITION

    registered = instance.get_dynamic_partitions(SYMBOLS_PARTITION)
    names = names or sorted(registered)
    if not names:
        raise UsageFailure("no symbols tracked; add one first: lakehouse symbols add BTC/USDT --start 2024-01-01")
    unknown = [n for n in names if n not in registered]
    if unknown:
        raise UsageFailure(f"not tracked: {', '.join(unknown)}; add with: lakehouse symbols add {' '.join(unknown)}")
    today = utc_today()
    if end is not None and end > today:
        echo(f"--end {end} is in the future; ending today ({today}).")
        end = today
    if start is not None and end is not None:
        try:
            check_range(start, end)
        except UserInputError as exc:
            raise UsageFailure(str(exc)) from None
    entries = Registry(s.root).load()
    plan = {}
    for symbol in names:
        entry = entries.get(symbol)
        first = start or (entry.start if entry else today)
        listing = entry.listing if entry else None
        if listing and first < listing:
            echo(f"{symbol}: start {first} is before its listing on {listing}; starting at {listing}.")
            first = listing
        last = end or today
        plan[symbol] = [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]
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


@cli.command()
@click.option("--symbols", "symbol_list", multiple=True, help="Comma-separated symbols; default: every tracked one.")
@click.option("--start", help="First UTC day (YYYY-MM-DD); default: each symbol's start (with --url: yesterday).")
@click.option("--end", help="Last UTC day (YYYY-MM-DD), included; default: today.")
@click.option("--assets", "asset_list", default=None, help="Comma-separated assets; default: every partitioned layer.")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary at the end (progress on stderr).")
@remote_options
def backfill(symbol_list, start, end, asset_list, as_json, url, wait, timeout):
    """Materialize partitions and wait: exit 0 if all succeeded, 1 if any failed, 2 on bad input.

    In-process by default: one run per symbol covers its whole day range (fetched in one pass), as a backfill
    from the UI would. By default every layer is built, raw to signals, and each run ends by rebuilding the
    scores table.

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
    from .progress import ProgressDisplay
    from .runner import exit_on_signals, run_plan

    check_local_flags(url, wait, timeout)
    s = settings()
    start_day, end_day = _day(start, "--start"), _day(end, "--end")
    names = _symbols_arg(symbol_list)
    echo = (lambda m: click.echo(m, err=True)) if as_json else click.echo
    defs = load_defs()
    selection = default_selection(defs) if not asset_list else [a.strip() for a in asset_list.split(",") if a.strip()]
    known = set(default_selection(defs))
    bad = [a for a in selection if a not in known]
    if bad:
        raise UsageFailure(f"unknown asset(s) {', '.join(bad)}; choose from {', '.join(sorted(known))}")
    tables = [] if asset_list else table_selection(defs)
    if url:
        from .remote import remote_backfill

        remote_backfill(url, names, start_day, end_day, [*selection, *tables], wait=wait, timeout_s=timeout,
                        as_json=as_json, echo=echo)
        return
    exit_on_signals()
    instance = get_instance()
    plan = plan_days(instance, s, names, start_day, end_day, echo=echo)
    partitions = sum(len(d) for d in plan.values())
    with ProgressDisplay(partitions * len(selection), "backfill") as display:
        outcomes = run_plan(instance, defs, selection, plan, display, tables=tables, timeout_s=timeout)
    failed = [o for o in outcomes if not o.success]
    summary = {
        "partitions": partitions,
        "runs": len(outcomes),
        "succeeded_runs": len(outcomes) - len(failed),
        "failed_runs": len(failed),
        "failed": [o.as_dict() for o in failed],
        "runs_detail": [o.as_dict() for o in outcomes],
    }
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        click.echo(f"{partitions} partitions x {len(selection)} asset(s) in {len(outcomes)} run(s): "
                   f"{len(outcomes) - len(failed)} succeeded, {len(failed)} failed")
        for o in failed:
            click.echo(f"FAILED {o.symbol} {o.start}..{o.end} (run {o.run_id}): {o.error}", err=True)
    sys.exit(1 if failed else 0)


# query -----------------------------------------------------------------------------------------
@cli.command()
@click.argument("sql")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True)
def query(sql, fmt):
    """Run SQL over the lakehouse views (raw_ohlcv and every derived layer) with in-memory DuckDB.

    \b
    Example:
        lakehouse query "select symbol, min(timestamp), count(*) from raw_ohlcv group by 1" --format csv
    """
    import duckdb
    import polars as pl

    from lakehouse.catalog import query as run_query
    from lakehouse.storage import Storage

    try:
        df = run_query(Storage(settings().root), sql)
    except duckdb.Error as exc:
        raise UsageFailure(f"query failed: {exc}") from None
    if fmt == "csv":
        click.echo(df.write_csv(), nl=False)
    elif fmt == "json":
        click.echo(json.dumps(df.to_dicts(), default=str, indent=2))
    else:
        with pl.Config(tbl_rows=200, tbl_cols=-1, tbl_hide_dataframe_shape=True, tbl_hide_column_data_types=True,
                       tbl_width_chars=shutil.get_terminal_size().columns):
            click.echo(str(df))
        click.echo(f"({df.height} rows)")


# dev -------------------------------------------------------------------------------------------
@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=3000, show_default=True, type=int)
@click.option("--demo/--no-demo", default=True, show_default=True,
              help=f"With no symbols tracked yet, add {', '.join(DEMO_SYMBOLS)} with the last {DEMO_DAYS} days.")
def dev(host, port, demo):
    """Start Dagster (UI, daemon, sensors) on the embedded instance: SQLite, local Parquet, configured exchange.

    \b
    Example:
        lakehouse dev --port 3000
    """
    from assets.partitions import SYMBOLS_PARTITION

    s = settings()
    home = ensure_dagster_home()
    os.environ.setdefault("LAKEHOUSE_ROOT", str(s.root_path.resolve()))
    instance = get_instance()
    if demo and not instance.get_dynamic_partitions(SYMBOLS_PARTITION):
        start = utc_today() - dt.timedelta(days=DEMO_DAYS - 1)
        for e in add_symbols(instance, s, list(DEMO_SYMBOLS), start):
            click.echo(f"demo: tracking {e.symbol} from {e.start}")
    click.echo(f"Dagster home: {home}\nLakehouse root: {os.environ['LAKEHOUSE_ROOT']}\nExchange: {s.exchange}")
    click.echo(f"Dagster UI: http://{host}:{port}")
    dagster = shutil.which("dagster") or os.path.join(os.path.dirname(sys.executable), "dagster")
    os.chdir(PROJECT_ROOT)
    os.execv(dagster, [dagster, "dev", "-h", host, "-p", str(port), "-w", str(PROJECT_ROOT / "workspace.yaml")])


from .repair import gaps, repair, status  # noqa: E402  (cli.repair imports UsageFailure from here)
from .runs import retry_failed, runs  # noqa: E402  (same)

cli.add_command(status)
cli.add_command(gaps)
cli.add_command(repair)
cli.add_command(runs)
cli.add_command(retry_failed)

from .health import health  # noqa: E402  (cli.health imports UsageFailure from here)

cli.add_command(health)

