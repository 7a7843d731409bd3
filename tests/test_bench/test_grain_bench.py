"""bench/grain.py keeps working: both grains of the same days hold and give back the same rows."""

import datetime as dt
import importlib.util
import sys
from pathlib import Path

import polars as pl

from helpers import raw_days

BENCH = Path(__file__).resolve().parents[2] / "bench" / "grain.py"


def load_bench():
    # grain.py imports its sibling derive.py, as when run by hand; the folder leaves sys.path again, since its
    # cli.py would shadow the project's cli package for later tests.
    sys.path.insert(0, str(BENCH.parent))
    try:
        spec = importlib.util.spec_from_file_location("bench_grain", BENCH)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCH.parent))
    return module


def test_day_and_month_grains_store_and_read_the_same_rows():
    bench = load_bench()
    raw = raw_days("BTC/USDT", dt.date(2024, 1, 30), 3)  # across a month boundary
    days, months = bench.cut(raw, "%F"), bench.cut(raw, "%Y-%m")
    assert [len(d) for d in days] == [1440, 1440, 1440] and [len(m) for m in months] == [2880, 1440]
    by_day = bench.measure(days, pl.lit(True), repeat=1)
    by_month = bench.measure(months, pl.col("timestamp") >= pl.datetime(2024, 1, 31, time_zone="UTC"), repeat=1)
    assert (by_day["files"], by_day["rows"]) == (3, 3 * 1440)
    assert (by_month["files"], by_month["rows"]) == (2, 2 * 1440)
    assert by_day["write_s"] > 0 and by_month["read_s"] > 0
