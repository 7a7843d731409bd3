"""Which symbol x day partitions a Dagster run covers, read from the tags Dagster puts on every run.

Plain strings, no Dagster import: the sensors, the notifications and the remote CLI (which talks GraphQL and never
imports Dagster) all read runs the same way.
"""

from __future__ import annotations

import datetime as dt
from typing import Mapping, Sequence

PARTITION_TAG = "dagster/partition"
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"
BACKFILL_TAG = "dagster/backfill"
REFETCH_TAG = "lakehouse/refetch"  # "true": fetch every requested day again, even closed days already complete


def range_tags(symbol: str, start: dt.date, end: dt.date) -> dict[str, str]:
    """The tags of one range run over days start..end of one symbol, as a backfill from the UI would set them."""
    return {RANGE_START_TAG: f"{start.isoformat()}|{symbol}", RANGE_END_TAG: f"{end.isoformat()}|{symbol}"}


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
