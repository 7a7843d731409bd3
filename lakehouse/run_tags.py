"""Which symbol x day partitions a Dagster run covers, read from the tags Dagster puts on every run.

Plain strings, no Dagster import: the sensors, the notifications and the remote CLI (which talks GraphQL and never
imports Dagster) all read runs the same way.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Collection, Mapping, Sequence

PARTITION_TAG = "dagster/partition"
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"
BACKFILL_TAG = "dagster/backfill"
REFETCH_TAG = "lakehouse/refetch"  # "true": fetch every requested day again, even closed days already complete
# Symbols with the same days share a run: each run costs Dagster ~0.2-0.9 s in-process (3.6 s median when the
# daemon launches it) before any work (5 symbols x 30 days, raw..scores: 7.0 -> 5.9-6.6 s; 9 symbols x 2 days:
# 6.0-6.6 -> 3.3-4.2 s, bench/compare.py). The bound keeps long ranges one symbol a run (a symbol-year is 366
# days), so a failure and its retry stay small.
MAX_RUN_PARTITIONS = 400


def range_tags(symbol: str, start: dt.date, end: dt.date, last_symbol: str | None = None) -> dict[str, str]:
    """The tags of one range run over days start..end of one symbol (as a backfill from the UI would set them),
    or of every symbol from `symbol` to `last_symbol` in the dynamic partitions' order."""
    return {RANGE_START_TAG: f"{start.isoformat()}|{symbol}", RANGE_END_TAG: f"{end.isoformat()}|{last_symbol or symbol}"}


@dataclasses.dataclass(frozen=True)
class RunGroup:
    """One range run: the same days of symbols that are neighbours in the dynamic partitions' order."""

    symbols: tuple[str, ...]
    start: dt.date
    end: dt.date

    @property
    def days(self) -> int:
        return (self.end - self.start).days + 1

    @property
    def label(self) -> str:
        """The symbol, or 'FIRST..LAST' for several (as describe_partitions says it)."""
        return self.symbols[0] if len(self.symbols) == 1 else f"{self.symbols[0]}..{self.symbols[-1]}"

    def tags(self) -> dict[str, str]:
        return range_tags(self.symbols[0], self.start, self.end, self.symbols[-1])


def group_runs(ranges: Mapping[str, Sequence[tuple[dt.date, dt.date]]], symbol_order: Sequence[str],
               max_partitions: int = MAX_RUN_PARTITIONS, alone: Collection[str] = ()) -> list[RunGroup]:
    """Put each symbol's day ranges into as few range runs as a run's rectangle allows.

    Dagster's range run covers every symbol between its two corner symbols in `symbol_order`, so only
    neighbours in that order with the very same days share a run, and at most `max_partitions` symbol-days
    (at least one symbol) each. Symbols not in the order, or in `alone`, run alone. Runs come in the symbols'
    order.
    """
    position = {s: i for i, s in enumerate(symbol_order) if s not in alone}
    groups: list[RunGroup] = []
    open_by_range: dict[tuple[dt.date, dt.date], int] = {}  # the range's group that a next neighbour may join
    for symbol in sorted(ranges, key=lambda s: (position.get(s, len(symbol_order)), s)):
        for start, end in ranges[symbol]:
            at = open_by_range.get((start, end))
            if at is not None:
                group = groups[at]
                neighbour = symbol in position and position.get(group.symbols[-1]) == position[symbol] - 1
                if neighbour and (len(group.symbols) + 1) * group.days <= max_partitions:
                    groups[at] = dataclasses.replace(group, symbols=(*group.symbols, symbol))
                    continue
            groups.append(RunGroup((symbol,), start, end))
            open_by_range[(start, end)] = len(groups) - 1 if symbol in position else None
    return groups


def split_key(key: str) -> tuple[str, str]:
    """'2024-01-02|BTC/USDT' -> ('BTC/USDT', '2024-01-02')."""
    day, _, symbol = str(key).partition("|")
    return symbol, day


def _corners(tags: Mapping[str, str]) -> tuple[tuple[str, str], tuple[str, str]] | None:
    if RANGE_START_TAG in tags and RANGE_END_TAG in tags:
        return split_key(tags[RANGE_START_TAG]), split_key(tags[RANGE_END_TAG])
    if "|" in tags.get(PARTITION_TAG, ""):
        one = split_key(tags[PARTITION_TAG])
        return one, one
    return None


def covered_partitions(tags: Mapping[str, str], symbol_order: Sequence[str] = ()) -> list[tuple[str, dt.date]] | None:
    """(symbol, day) pairs of a run of our partitions; None when its tags name none (or not ours).

    A range run covers the rectangle between its two corner keys; the symbols between two different corner
    symbols follow `symbol_order` (the dynamic partitions' order), else only the corners are known.
    """
    corners = _corners(tags)
    if corners is None:
        return None
    (s1, d1), (s2, d2) = corners
    try:
        first, last = sorted((dt.date.fromisoformat(d1), dt.date.fromisoformat(d2)))
    except ValueError:  # a run tagged with another partitioning
        return None
    if s1 == s2:
        symbols = [s1]
    elif s1 in symbol_order and s2 in symbol_order:
        i, j = sorted((symbol_order.index(s1), symbol_order.index(s2)))
        symbols = list(symbol_order[i:j + 1])
    else:
        symbols = [s1, s2]
    days = [first + dt.timedelta(days=k) for k in range((last - first).days + 1)]
    return [(s, d) for s in symbols for d in days]


def describe_partitions(tags: Mapping[str, str]) -> str | None:
    """'BTC/USDT 2024-01-01..2024-01-03' from a run's tags; None when it names no partition."""
    corners = _corners(tags)
    if corners is None:
        return tags.get(PARTITION_TAG) or None
    (s1, d1), (s2, d2) = corners
    symbols = s1 if s1 == s2 else f"{s1}..{s2}"
    days = d1 if d1 == d2 else f"{d1}..{d2}"
    return f"{symbols} {days}".strip()
