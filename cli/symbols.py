"""`lakehouse symbols add | list | remove | available`: the tracked symbols (registry + Dagster dynamic partitions)."""

from __future__ import annotations

import datetime as dt
import json

import click

from lakehouse.config import Settings
from lakehouse.errors import LakehouseError, UserInputError
from lakehouse.timeutil import ms_to_day, utc_today

from .common import UsageFailure, day_arg, exchange_client, get_instance, settings, symbols_arg


@click.group()
def symbols():
    """Manage the tracked symbols (the `symbols` dynamic partitions of the Dagster instance).

    \b
    Example:
        lakehouse symbols add BTC/USDT --start 2024-01-01
    """


def add_symbols(instance, s: Settings, names: list[str], start: dt.date | None, echo=click.echo) -> list:
    """Validate every symbol on the exchange first, then register them all; nothing is added on any error."""
    entries = check_symbols(s, names, start, echo)
    track(instance, s, entries)
    return entries


def check_symbols(s: Settings, names: list[str], start: dt.date | None, echo=click.echo) -> list:
    """Each symbol as it would be tracked (start clamped to its listing), checked on the exchange; writes nothing."""
    from lakehouse.registry import TrackedSymbol

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
    return entries


def track(instance, s: Settings, entries: list) -> None:
    """Register checked symbols: the registry (start days) and the Dagster partitions."""
    from assets.partitions import SYMBOLS_PARTITION
    from lakehouse.registry import Registry

    registry = Registry(s.root)
    for entry in entries:
        registry.upsert(entry)
    instance.add_dynamic_partitions(SYMBOLS_PARTITION, [e.symbol for e in entries])


@symbols.command("add")
@click.argument("names", nargs=-1, required=True)
@click.option("--start", help="First UTC day of history to keep (YYYY-MM-DD); default: the listing day.")
def symbols_add(names, start):
    """Track symbols: validate them on the exchange, then add them as partitions.

    \b
    Example:
        lakehouse symbols add BTC/USDT ETH/USDT --start 2024-01-01
    """
    s = settings(write=True)
    names = symbols_arg(names)
    start_day = day_arg(start, "--start")
    if start_day and start_day > utc_today():
        raise UsageFailure(f"--start {start_day} is in the future; pick a day up to {utc_today()}")
    entries = check_symbols(s, names, start_day)
    track(get_instance(), s, entries)  # the instance only now: a refused symbol leaves no trace anywhere
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
    from lakehouse.registry import Registry

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
    from lakehouse.registry import Registry

    s = settings(write=True)
    names = symbols_arg(names)
    instance = get_instance()
    registry = Registry(s.root)
    unknown = [n for n in names if registry.get(n) is None and not instance.has_dynamic_partition(SYMBOLS_PARTITION, n)]
    if unknown:
        raise UsageFailure(f"{', '.join(unknown)} not tracked; nothing was removed; see 'lakehouse symbols list'")
    for symbol in names:
        if instance.has_dynamic_partition(SYMBOLS_PARTITION, symbol):
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
