"""bench/derive.py keeps working: its pass and its read check on a few days instead of a year."""

import datetime as dt
import importlib.util
from pathlib import Path

import numpy as np
import polars as pl

from lakehouse.exchange.simulated import SimulatedSource
from lakehouse.timeutil import day_start_ms

BENCH = Path(__file__).resolve().parents[2] / "bench" / "derive.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_derive", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def raw_days(symbol, first, days):
    arr = SimulatedSource(outage_rate=0.0).candles(symbol, day_start_ms(first), day_start_ms(first + dt.timedelta(days=days)))
    ts = pl.Series(arr[:, 0].astype(np.int64)).cast(pl.Datetime("ms", "UTC"))
    return pl.DataFrame({"timestamp": ts, "open": arr[:, 1], "high": arr[:, 2], "low": arr[:, 3],
                         "close": arr[:, 4], "volume": arr[:, 5]}).with_columns(
        exchange=pl.lit("simulated"), symbol=pl.lit(symbol), fetched_at=pl.col("timestamp"))


def test_bench_pass_and_read_check_run_on_a_few_days(capsys):
    bench = load_bench()
    raw = raw_days("BTC/USDT", dt.date(2024, 1, 1), 3)
    out = bench.one_pass(raw)
    assert out["rows"]["clean"] == 3 * 1440 and out["rows"]["scores"] == 1
    assert bench.read_check(raw, "BTC/USDT", 2024) < bench.TARGET_READ_S
    assert "read_bars('BTC/USDT', '1m', one year): 4,320 bars" in capsys.readouterr().out
