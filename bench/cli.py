"""CLI start-up and `lakehouse status` wall time on N symbols x D days (default 100 x 365), each as its own process.

Prints, with each process's peak RSS: `lakehouse --help` (target < 0.3 s), `lakehouse status` as shipped (the
instance read from its SQLite files, no Dagster import; target < 1 s) and the same audit through Dagster's own
instance API (what status did before), side by side with their ratio.

The lakehouse is built like bench/audit.py's (real raw files, copied per symbol), ending yesterday, with the
symbols tracked in a temporary Dagster instance and one finished run per symbol, so every column has data.

    .venv/bin/python bench/cli.py [--symbols 100] [--days 365] [--repeat 3] [--root DIR]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))
sys.path.insert(0, str(PROJECT / "bench"))

TARGET_HELP_S = 0.3
TARGET_STATUS_S = 1.0
DAGSTER_STATUS = ("from cli.status import _dagster_audit\nfrom lakehouse.status import symbol_rows\n"
                  "audit, runs = _dagster_audit()\nprint(len(symbol_rows(audit, runs)))")


def build(root: str, home: str, n_symbols: int, n_days: int) -> None:
    import audit as bench_audit  # bench/audit.py

    from dagster import DagsterInstance, DagsterRunStatus
    from dagster._core.storage.dagster_run import DagsterRun

    from lakehouse.registry import Registry
    from lakehouse.run_tags import range_tags
    from lakehouse.timeutil import utc_today

    bench_audit.FIRST_DAY = utc_today() - dt.timedelta(days=n_days)  # the last day built is yesterday
    tracked, _ = bench_audit.build(root, n_symbols, n_days, derived=False)
    registry = Registry(root)
    for entry in tracked:
        registry.upsert(entry)
    shutil.copyfile(PROJECT / "dagster.yaml", Path(home) / "dagster.yaml")
    os.environ["DAGSTER_HOME"] = home
    instance = DagsterInstance.get()
    instance.add_dynamic_partitions("symbols", [e.symbol for e in tracked])
    last = bench_audit.FIRST_DAY + dt.timedelta(days=n_days - 1)
    for e in tracked:
        instance.run_storage.add_run(DagsterRun(job_name="__ASSET_JOB", status=DagsterRunStatus.SUCCESS,
                                                tags=range_tags(e.symbol, bench_audit.FIRST_DAY, last)))


def timed_process(args: list[str], env: dict) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds, peak RSS MiB) of one process (CPU time says what wall time means on a busy
    machine)."""
    started = time.perf_counter()
    proc = subprocess.Popen(args, cwd=PROJECT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.read().decode()[-2000:]}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def measure(label: str, args: list[str], env: dict, repeat: int, target: float | None = None) -> float:
    runs = [timed_process(args, env) for _ in range(repeat)]
    wall = statistics.median(w for w, _, _ in runs)
    cpu = statistics.median(c for _, c, _ in runs)
    rss = max(r for _, _, r in runs)
    verdict = "" if target is None else f"; target < {target} s: {'OK' if wall < target else 'OVER TARGET'}"
    print(f"{label:<38} {wall:7.3f} s wall, {cpu:6.3f} s CPU  (median of {repeat}, peak RSS {rss:6.1f} MiB{verdict})")
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=100)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--root", help="folder to build in (default: a temp folder, removed after)")
    parser.add_argument("--build-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build_only:  # in its own process, so the measured processes are not forks of a Dagster-sized one
        build(os.path.join(args.root, "lake"), os.path.join(args.root, "dagster_home"), args.symbols, args.days)
        return

    work = args.root or tempfile.mkdtemp(prefix="bench-cli-")
    root, home = os.path.join(work, "lake"), os.path.join(work, "dagster_home")
    os.makedirs(home, exist_ok=True)
    try:
        started = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--build-only", "--root", work, "--symbols", str(args.symbols),
                        "--days", str(args.days)], check=True, stderr=subprocess.DEVNULL)
        print(f"lakehouse: {args.symbols} symbols x {args.days} days of raw 1m ({args.symbols * args.days:,} files), "
              f"built in {time.perf_counter() - started:.1f}s; {os.cpu_count()} cores, shared machine")
        env = {**os.environ, "LAKEHOUSE_ROOT": root, "DAGSTER_HOME": home}
        lakehouse = [sys.executable, "-m", "cli"]
        measure("lakehouse --help", [*lakehouse, "--help"], env, max(args.repeat, 5), TARGET_HELP_S)
        timed_process([*lakehouse, "status"], env)  # first audit fills the manifest cache, as any earlier tick would
        fast = measure("lakehouse status (SQLite, no Dagster)", [*lakehouse, "status"], env, args.repeat,
                       TARGET_STATUS_S)
        slow = measure("same audit through Dagster's API", [sys.executable, "-c", DAGSTER_STATUS], env, args.repeat)
        print(f"{'ratio (Dagster / SQLite read)':<38} {slow / fast:7.2f} x wall")
    finally:
        if not args.root:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
