"""What every `lakehouse` command shares: the bad-input error, the validated settings, argument parsing, and lazy
handles on Dagster (the instance, the definitions) for the commands that run it.

Imports nothing heavy: `lakehouse --help` and the commands that never run Dagster stay fast.
"""

from __future__ import annotations

import datetime as dt
import os
import sys

import click

from lakehouse.config import Settings
from lakehouse.errors import UserInputError, shorten
from lakehouse.symbols import validate_symbol
from lakehouse.timeutil import parse_day


_user_stderr = None


def pin_user_stderr() -> None:
    """Keep a handle on stderr as it is when the command starts (the user's terminal or log).

    While a Dagster run executes in this process, Dagster points file descriptors 1 and 2 at a compute-log file
    and a `tail` process copies it back a second or more later; a live bar written there stops (stderr is no
    longer a terminal) and a message on Ctrl-C lands in that file. Progress and messages go to this copy."""
    global _user_stderr
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # a captured stream (tests): write to it as it is
        _user_stderr = None
        return
    _user_stderr = os.fdopen(os.dup(fd), "w", buffering=1, encoding=sys.stderr.encoding or "utf-8",
                             errors="replace")


def user_stderr():
    """Where the command's progress and messages go: the stderr pinned at start, else sys.stderr."""
    return _user_stderr if _user_stderr is not None else sys.stderr


class UsageFailure(click.ClickException):
    """Bad input from the user: exit code 2, like click's own usage errors, and nothing was changed."""

    exit_code = 2


def load_settings() -> Settings:
    """Read and validate every setting (the environment and LAKEHOUSE_ROOT); bad input is a UsageFailure."""
    try:
        s = Settings.from_env()
        s.check_root()
    except UserInputError as exc:
        raise UsageFailure(str(exc)) from None
    return s


def settings(write: bool = False) -> Settings:
    """The settings validated once when the command started (see cli.main); `write=True` also requires that
    LAKEHOUSE_ROOT can be written, for commands that change the lakehouse."""
    ctx = click.get_current_context(silent=True)
    root = ctx.find_root() if ctx is not None else None
    s = root.obj if root is not None and isinstance(root.obj, Settings) else load_settings()
    if write:
        try:
            s.check_root(write=True)
        except UserInputError as exc:
            raise UsageFailure(str(exc)) from None
    return s


def _quiet_dagster() -> None:
    import warnings

    from dagster import BetaWarning, PreviewWarning

    warnings.filterwarnings("ignore", category=BetaWarning)
    warnings.filterwarnings("ignore", category=PreviewWarning)


def get_instance():
    """The Dagster instance (DAGSTER_HOME, or the embedded one); imports Dagster."""
    from .instance import get_instance as _get

    _quiet_dagster()
    return _get()


def load_defs():
    """The code location's Definitions; imports Dagster and every asset."""
    _quiet_dagster()
    from definitions import defs

    return defs


def exchange_client(s: Settings):
    from resources import exchange_resource

    try:
        return exchange_resource(s).client()
    except UserInputError as exc:
        raise UsageFailure(str(exc)) from None


def symbols_arg(values, what: str = "symbol") -> list[str]:
    """Symbols from arguments that may each hold a comma-separated list; an empty one is bad input, not "all"."""
    out = []
    for value in values:
        parts = value.split(",")
        for part in parts:
            if not part.strip():
                raise UsageFailure(f"empty {what} in {shorten(value)!r}: give symbols like BTC/USDT,ETH/USDT"
                                   + (" (or leave the option out for every tracked symbol)" if what == "--symbols" else ""))
            try:
                out.append(validate_symbol(part))
            except UserInputError as exc:
                raise UsageFailure(str(exc)) from None
    return list(dict.fromkeys(out))


def day_arg(value: str | None, what: str) -> dt.date | None:
    if value is None:
        return None
    try:
        return parse_day(value, what)
    except UserInputError as exc:
        raise UsageFailure(str(exc)) from None


def echo_for(as_json: bool):
    """Messages go to stderr when stdout carries JSON."""
    return (lambda m: click.echo(m, err=True)) if as_json else click.echo
