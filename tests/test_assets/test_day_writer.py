"""DayWriter: a layer's day files are written in the background, and are all on disk (or the layer fails) by
the time the layer returns its results."""

from __future__ import annotations

import datetime as dt
import threading

import polars as pl
import pytest

from assets.glue import DayWriter
from lakehouse import progress
from lakehouse.schema import SIGNALS, empty
from lakehouse.storage import Storage

DAYS = [dt.date(2024, 1, 1) + dt.timedelta(days=i) for i in range(6)]


def frames() -> dict[dt.date, pl.DataFrame]:
    return {d: empty(SIGNALS) for d in DAYS}


def test_every_file_is_written_and_reported_when_the_block_ends(storage):
    seen = []
    with progress.subscribe(lambda e: seen.append(e.day) if e.kind == "partition_done" else None):
        with DayWriter() as writer:
            writer.write(storage, SIGNALS, "binance", "BTC/USDT", frames())
            writer.write(storage, SIGNALS, "binance", "ETH/USDT", frames())
            writer.write(storage, SIGNALS, "binance", "SOL/USDT", frames())
    for symbol in ("BTC/USDT", "ETH/USDT", "SOL/USDT"):
        assert [s.ref.day for s in storage.list_partitions(SIGNALS, "binance", symbol)] == DAYS
    assert sorted(seen) == sorted(str(d) for d in DAYS * 3)


def test_a_failed_write_fails_the_block_and_later_batches_wait_for_earlier_ones(storage, monkeypatch):
    real = Storage.write_partition
    started = []
    first, release = threading.Event(), threading.Event()

    def write(self, layer, exchange, symbol, day, df):
        started.append((symbol, day))
        first.set()
        if symbol == "BTC/USDT":
            release.wait(5)
            if day == DAYS[2]:
                raise OSError("disk full")
        return real(self, layer, exchange, symbol, day, df)

    monkeypatch.setattr(Storage, "write_partition", write)
    with pytest.raises(OSError, match="disk full"):
        with DayWriter(threads=1) as writer:
            writer.write(storage, SIGNALS, "binance", "BTC/USDT", frames())
            writer.write(storage, SIGNALS, "binance", "ETH/USDT", frames())
            assert first.wait(5)
            assert started == [("BTC/USDT", DAYS[0])]  # in the background: the caller went on
            release.set()
            # A third batch first waits for the first: at most two batches of frames are held.
            writer.write(storage, SIGNALS, "binance", "SOL/USDT", frames())
    assert ("SOL/USDT", DAYS[0]) not in started  # the failure surfaced before the third batch was queued
    assert not list(storage.list_partitions(SIGNALS, "binance", "SOL/USDT"))
