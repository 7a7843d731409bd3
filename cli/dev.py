"""`lakehouse dev`: start Dagster (webserver, daemon, sensors) on the embedded instance."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import sys

import click

from lakehouse.timeutil import utc_today

from . import leftovers
from .common import get_instance, settings

DEMO_SYMBOLS = ("BTC/USDT", "ETH/USDT", "SOL/USDT")
DEMO_DAYS = 7
STATE_FILE = "lakehouse-dev.json"  # in DAGSTER_HOME: see cli/leftovers.py


@click.command()
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

    from .instance import PROJECT_ROOT, ensure_dagster_home
    from .symbols import add_symbols

    s = settings(write=True)
    home = ensure_dagster_home()
    leftovers.stop_leftovers(home / STATE_FILE, home, "dev", grace_s=20.0)
    os.environ.setdefault("LAKEHOUSE_ROOT", s.root_location)
    instance = get_instance()
    if demo and not instance.get_dynamic_partitions(SYMBOLS_PARTITION):
        start = utc_today() - dt.timedelta(days=DEMO_DAYS - 1)
        for e in add_symbols(instance, s, list(DEMO_SYMBOLS), start):
            click.echo(f"demo: tracking {e.symbol} from {e.start}")
    click.echo(f"Dagster home: {home}\nLakehouse root: {os.environ['LAKEHOUSE_ROOT']}\nExchange: {s.exchange}")
    click.echo(f"Dagster UI: http://{host}:{port}")
    dagster = shutil.which("dagster") or os.path.join(os.path.dirname(sys.executable), "dagster")
    os.chdir(PROJECT_ROOT)
    # `dagster dev` replaces this process (same pid and start time) and keeps its process group for its
    # children, which survive it if it is killed with SIGKILL: the next `lakehouse dev` stops them.
    leftovers.record(home / STATE_FILE, [os.getpgrp()])
    os.execv(dagster, [dagster, "dev", "-h", host, "-p", str(port), "-w", str(PROJECT_ROOT / "workspace.yaml")])
