"""The one partitioning of every layer: symbol (added at run time) x UTC day, today included."""

from __future__ import annotations

import datetime as dt

from dagster import (
    DailyPartitionsDefinition,
    DynamicPartitionsDefinition,
    MultiPartitionKey,
    MultiPartitionsDefinition,
)

from lakehouse.config import Settings
from lakehouse.symbols import validate_symbol

SYMBOLS_PARTITION = "symbols"

symbols_partitions = DynamicPartitionsDefinition(name=SYMBOLS_PARTITION)
# end_offset=1: the current UTC day is a partition too, filled as the day goes.
daily_partitions = DailyPartitionsDefinition(
    start_date=Settings.from_env().history_start.isoformat(), timezone="UTC", end_offset=1
)
symbol_day_partitions = MultiPartitionsDefinition({"date": daily_partitions, "symbol": symbols_partitions})


def partition_key(symbol: str, day: dt.date) -> MultiPartitionKey:
    return MultiPartitionKey({"date": day.isoformat(), "symbol": validate_symbol(symbol)})


def parse_partition_key(key: str) -> tuple[str, dt.date]:
    """'2024-01-02|BTC/USDT' -> ('BTC/USDT', date(2024, 1, 2))."""
    keys = key.keys_by_dimension if isinstance(key, MultiPartitionKey) else None
    if keys is None:
        date_part, _, symbol = str(key).partition("|")
        keys = {"date": date_part, "symbol": symbol}
    return validate_symbol(keys["symbol"]), dt.date.fromisoformat(keys["date"])


def days_by_symbol(keys) -> dict[str, list[dt.date]]:
    """Group a run's partition keys by symbol: a range run covers many days of (usually) one symbol."""
    out: dict[str, list[dt.date]] = {}
    for key in keys:
        symbol, day = parse_partition_key(key)
        out.setdefault(symbol, []).append(day)
    return {s: sorted(d) for s, d in out.items()}
