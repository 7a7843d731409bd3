"""`lakehouse`: a thin click layer over the library and Dagster.

Exit codes: 0 ok, 1 work failed, 2 bad input, 3 timed out waiting on a deployment, 4 deployment unreachable or refused.

Each command lives in its own module and is imported only when it runs (`COMMANDS`), so `lakehouse --help` and
the commands that never run Dagster (status, gaps, query, ...) do not pay for importing it. To add a command,
add one line to `COMMANDS`: its name, "module:attribute" and the one-line help shown by `lakehouse --help`.
"""

from __future__ import annotations

import atexit
import importlib
import os
import sys
import threading

import click

from .common import load_settings, pin_user_stderr, user_stderr

_HELP_ONLY = "lakehouse.help_only"
# name -> ("module:attribute", one-line help for `lakehouse --help`; the command's own --help has the rest)
COMMANDS: dict[str, tuple[str, str]] = {
    "backfill": ("cli.backfill:backfill", "Materialize partitions and wait: exit 0 if all succeeded, 1 if any failed."),
    "dev": ("cli.dev:dev", "Start Dagster (UI, daemon, sensors) on the embedded instance."),
    "gaps": ("cli.repair:gaps", "List a symbol's gaps, and whether the source confirmed them."),
    "health": ("cli.health:health", "Is the lakehouse working? One line per component; exit 0 ok, 1 degraded, 2 down."),
    "query": ("cli.query:query", "Run read-only SQL over the lakehouse views with in-memory DuckDB."),
    "repair": ("cli.repair:repair", "Audit now and run exactly what it finds."),
    "retry-failed": ("cli.runs:retry_failed", "Rerun only the partitions a finished backfill did not materialize."),
    "runs": ("cli.runs:runs", "Recent runs and backfills with their outcome, newest first."),
    "status": ("cli.status:status", "One row per tracked symbol: candles, coverage, gaps, freshness, last run."),
    "symbols": ("cli.symbols:symbols", "Manage the tracked symbols."),
    "api": ("cli.api_cmd:api", "Serve the read-only HTTP API and the coverage page."),
    "serve": ("cli.serve:serve", "Run a deployment: webserver, daemon and N Celery workers in the foreground."),
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use; listing them needs no import at all."""

    def list_commands(self, ctx):
        return sorted(set(COMMANDS) | set(self.commands))

    def get_command(self, ctx, cmd_name):
        if cmd_name in self.commands:
            return self.commands[cmd_name]
        if cmd_name not in COMMANDS:
            return None
        module, _, attr = COMMANDS[cmd_name][0].partition(":")
        command = getattr(importlib.import_module(module), attr)
        self.add_command(command, cmd_name)
        return command

    def parse_args(self, ctx, args):
        # Remembered for the group's callback: click empties the argument list before calling it.
        ctx.meta[_HELP_ONLY] = "--help" in args
        return super().parse_args(ctx, args)

    def format_commands(self, ctx, formatter):
        rows = [(name, COMMANDS[name][1] if name in COMMANDS else self.commands[name].get_short_help_str(80))
                for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def _wants_help(ctx: click.Context) -> bool:
    return ctx.resilient_parsing or ctx.meta.get(_HELP_ONLY, False)


@click.group(cls=LazyGroup)
@click.version_option(package_name="ohlcv-lakehouse")
@click.pass_context
def cli(ctx):
    """Market-data lakehouse on Dagster: OHLCV, cleaned bars, indicators and signals, kept complete and fresh.

    \b
    Example:
        lakehouse symbols add BTC/USDT ETH/USDT --start 2024-01-01
        lakehouse backfill --start 2024-01-01 --end 2024-01-31
        lakehouse query "select symbol, count(*) from raw_ohlcv group by 1"
    """
    # Every setting is validated once, before any command does anything (help needs none of them).
    if not _wants_help(ctx):
        ctx.obj = load_settings()


def main() -> None:
    """The `lakehouse` console script: `cli`, then an exit that skips tearing down the interpreter's objects.

    Freeing the module graphs of Dagster, ccxt and polars one object at a time is what a process does after
    its last useful instruction: 0.4 s after importing the definitions, 1.1 s after a backfill (measured;
    bench/compare.py). Python's own exit steps that matter still run, in its order: waiting for non-daemon
    threads (and shutting down idle executors), then the atexit handlers (logging's flush among them).
    """
    pin_user_stderr()
    try:
        cli(prog_name="lakehouse")
        code = 0
    except SystemExit as exc:
        code = exc.code
    if code is None:
        code = 0
    elif not isinstance(code, int):
        click.echo(code, err=True)  # what sys.exit("message") prints
        code = 1
    shutdown = getattr(threading, "_shutdown", None)  # what the interpreter itself calls on exit
    if shutdown is None:  # an interpreter without it: the ordinary, slower exit
        raise SystemExit(code)
    shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr, user_stderr()):
        try:
            stream.flush()
        except Exception:  # a closed pipe (lakehouse runs | head): nothing left to say
            pass
    os._exit(code)
