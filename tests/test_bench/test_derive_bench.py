"""bench/derive.py keeps working: its pass and its read check on a few days instead of a year."""

import datetime as dt
import importlib.util
from pathlib import Path

from helpers import raw_days

BENCH = Path(__file__).resolve().parents[2] / "bench" / "derive.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_derive", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_pass_and_read_check_run_on_a_few_days(capsys):
    bench = load_bench()
    raw = raw_days("BTC/USDT", dt.date(2024, 1, 1), 3)
    out = bench.one_pass(raw)
    assert out["rows"]["clean"] == 3 * 1440 and out["rows"]["scores"] == 1
    assert bench.read_check(raw, "BTC/USDT", 2024) < bench.TARGET_READ_S
    assert "read_bars('BTC/USDT', '1m', one year): 4,320 bars" in capsys.readouterr().out
