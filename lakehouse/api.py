"""The Python API: read any layer of the lakehouse as a polars DataFrame."""

from __future__ import annotations

import datetime as dt

import polars as pl

from .config import Settings
from .schema import RAW_OHLCV
from .storage import Storage
from .symbols import validate_symbol
from .timeutil import check_range, parse_day, utc_today


def _context(root: str | None, exchange: str | None) -> tuple[Storage, str]:
    settings = Settings.from_env()
    return Storage(root or settings.root), exchange or settings.exchange


def read_raw(
    symbol: str,
    start: str | dt.date,
    end: str | dt.date | None = None,
    *,
    exchange: str | None = None,
    root: str | None = None,
) -> pl.DataFrame:
    """Raw 1m candles of `symbol` for the UTC days start..end (both included), oldest first.

    >>> read_raw("BTC/USDT", "2024-01-01", "2024-01-31")  # doctest: +SKIP
    """
    storage, exchange = _context(root, exchange)
    start_day = parse_day(start, "start")
    end_day = parse_day(end, "end") if end is not None else utc_today()
    check_range(start_day, end_day)
    return storage.read_range(RAW_OHLCV, exchange, validate_symbol(symbol), start_day, end_day)
