"""bench/ingest.py's helpers for --archive: the probe of file-creation cost and the wait for a weight window."""

import importlib.util
import os
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "ingest.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_ingest", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys_path = list(sys.path)
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path[:] = sys_path  # the bench puts the project first on sys.path, as when run by hand
    return module


def test_the_create_probe_makes_a_folder_and_a_file_each_time_and_keeps_them(tmp_path):
    ms = load_bench().create_cost_ms(str(tmp_path), n=5)
    assert ms > 0
    probe = tmp_path / "create-probe"
    assert sorted(os.listdir(probe)) == ["0", "1", "2", "3", "4"]
    assert all(os.listdir(probe / d) == ["f"] for d in os.listdir(probe))


def test_a_tight_budget_waits_for_the_next_window_and_binances_budget_does_not():
    bench = load_bench()
    assert bench.window_wait_s(600, 60.0, now=1_800_000_125.5) == 54.5
    assert bench.window_wait_s(600, 60.0, now=1_800_000_120.0) == 0.0  # already at a window's start
    assert bench.window_wait_s(6000, 60.0, now=1_800_000_125.5) == 0.0  # the year fits in one window

