"""Plain helpers shared by tests (fixtures live in conftest.py)."""

from __future__ import annotations

import datetime as dt
import socket

import numpy as np
import polars as pl

from assets.partitions import SYMBOLS_PARTITION
from lakehouse.exchange.simulated import SimulatedSource
from lakehouse.timeutil import day_start_ms

# A fixed "now" (2024-03-10 12:34:30 UTC) keeps tests independent of the wall clock.
NOW_MS = day_start_ms(dt.date(2024, 3, 10)) + (12 * 60 + 34) * 60_000 + 30_000


def add_symbols(instance, *symbols):
    instance.add_dynamic_partitions(SYMBOLS_PARTITION, list(symbols))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def service_reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def exited_process_stamp():
    """The process stamp of a process that has exited, as a kill -9 leaves a CLI run's."""
    import subprocess

    import psutil

    from lakehouse.liveness import ProcessStamp

    proc = subprocess.Popen(["sleep", "30"])
    stamp = ProcessStamp(ProcessStamp.current().host, proc.pid, psutil.Process(proc.pid).create_time())
    proc.kill()
    proc.wait()
    return stamp


def raw_days(symbol: str, first: dt.date, days: int) -> pl.DataFrame:
    """`days` whole UTC days of the simulated source's 1m candles (no outages) as a raw_ohlcv frame."""
    arr = SimulatedSource(outage_rate=0.0).candles(symbol, day_start_ms(first), day_start_ms(first + dt.timedelta(days=days)))
    ts = pl.Series(arr[:, 0].astype(np.int64)).cast(pl.Datetime("ms", "UTC"))
    return pl.DataFrame({"timestamp": ts, "open": arr[:, 1], "high": arr[:, 2], "low": arr[:, 3],
                         "close": arr[:, 4], "volume": arr[:, 5]}).with_columns(
        exchange=pl.lit("simulated"), symbol=pl.lit(symbol), fetched_at=pl.col("timestamp"))
