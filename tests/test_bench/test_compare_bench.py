"""bench/compare.py keeps working: its latency emulator, and one measured lakehouse command on a tiny workload."""

import importlib.util
import time
import urllib.request
from pathlib import Path

from lakehouse.exchange.simulated import SimulatedSource

BENCH = Path(__file__).resolve().parents[2] / "bench" / "compare.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_compare", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_latency_emulator_delays_each_answer_and_a_measured_raw_backfill_counts_its_requests(tmp_path):
    bench = load_bench()
    with bench.LatentEmulator(source=SimulatedSource(outage_rate=0.0), latency_s=0.2, jitter_s=0.0,
                              weight_limit=1_000_000) as emu:
        started = time.perf_counter()
        with urllib.request.urlopen(f"{emu.url}/api/v3/exchangeInfo", timeout=10) as resp:
            assert resp.status == 200
        assert time.perf_counter() - started >= 0.2
        emu.latency_s = 0.0

        [pair] = bench.pick_pairs(1)
        lake = bench.Lakehouse(str(tmp_path), emu.url, [pair], days=1)
        out = bench.measure(emu, lambda: lake.backfill(raw_only=True))
    assert out["rc"] == 0 and not out.get("failed")
    assert out["klines"] >= 2 and out["requests"] >= out["klines"]  # 1440 candles in pages of <= 1000
    assert out["rss_mib"] > 50 and out["wall_s"] > 0
    assert list((lake.dir / "lake" / "raw_ohlcv").rglob("part.parquet"))
    assert "1.0x" in bench.fmt(out, out) and f"{out['requests']} req" in bench.fmt(out, None)
