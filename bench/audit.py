"""Audit cost on a healthy lakehouse: N symbols x D days of raw partitions (and optionally a derived layer).

Prints the time of a cold audit (no manifest: every file is read once), a warm audit (what every sensor tick
costs: one stat per file, no file read; target < 2 s for 100 x 365), a warm audit after 10 files changed, and
the per-symbol status table built from a warm audit (target < 1 s for 100 symbols).

The first symbol's days are written through Storage (real 1440-row raw files); the other symbols get byte
copies of them, so building the tree takes seconds rather than minutes. The audit does not read the symbol
column, so the copies cost it exactly what real files would.

    .venv/bin/python bench/audit.py [--symbols 100] [--days 365] [--derived] [--repeat 3] [--root DIR]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import polars as pl  # noqa: E402

from lakehouse.audit import Auditor  # noqa: E402
from lakehouse.config import Settings  # noqa: E402
from lakehouse.exchange.simulated import SimulatedExchange, SimulatedSource  # noqa: E402
from lakehouse.ingest import ingest_days  # noqa: E402
from lakehouse.registry import TrackedSymbol  # noqa: E402
from lakehouse.schema import CLEAN_BARS, RAW_OHLCV  # noqa: E402
from lakehouse.status import symbol_rows  # noqa: E402
from lakehouse.storage import Storage  # noqa: E402
from lakehouse.timeutil import day_start_ms  # noqa: E402

TARGET_WARM_S = 2.0
TARGET_STATUS_S = 1.0
FIRST_DAY = dt.date(2023, 1, 1)


def build(root: str, n_symbols: int, n_days: int, derived: bool) -> tuple[list[TrackedSymbol], int]:
    storage = Storage(root)
    days = [FIRST_DAY + dt.timedelta(days=i) for i in range(n_days)]
    now_ms = day_start_ms(days[-1] + dt.timedelta(days=1)) + 30_000  # 30 s into the next day: nothing due yet
    exchange = SimulatedExchange(SimulatedSource(synthetic=n_symbols, outage_rate=0.0), clock=lambda: now_ms)
    template = "SIM000/USDT"
    ingest_days(exchange, storage, template, days)
    layers = [RAW_OHLCV]
    if derived:
        layers.append(CLEAN_BARS)
        for d in days:
            raw = storage.read_partition(RAW_OHLCV, exchange.id, template, d)
            storage.write_partition(CLEAN_BARS, exchange.id, template, d, raw.with_columns(
                interval=pl.lit("1m"), candles=pl.lit(1, pl.Int32), complete=pl.lit(True)))
    for i in range(1, n_symbols):
        for layer in layers:
            src = storage.symbol_dir(layer, exchange.id, template)
            dst = storage.symbol_dir(layer, exchange.id, f"SIM{i:03d}/USDT")
            for d in days:
                target = dst / f"date={d.isoformat()}"
                target.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src / f"date={d.isoformat()}" / "part.parquet", target / "part.parquet")
    tracked = [TrackedSymbol(f"SIM{i:03d}/USDT", exchange.id, FIRST_DAY, dt.date(2021, 1, 1), "")
               for i in range(n_symbols)]
    return tracked, now_ms


def timed(fn):
    started = time.perf_counter()
    value = fn()
    return time.perf_counter() - started, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=100)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--derived", action="store_true", help="also audit a clean_bars layer of the same size")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--root", help="lakehouse folder to build in (default: a temp folder, removed after)")
    args = parser.parse_args()

    root = args.root or tempfile.mkdtemp(prefix="bench-audit-")
    try:
        build_s, (tracked, now_ms) = timed(lambda: build(root, args.symbols, args.days, args.derived))
        storage = Storage(root)
        settings = Settings()
        layers = [RAW_OHLCV, CLEAN_BARS] if args.derived else [RAW_OHLCV]
        partitions = args.symbols * (args.days + 1) * len(layers)
        print(f"lakehouse: {args.symbols} symbols x {args.days} days x {len(layers)} layer(s) "
              f"({partitions:,} partitions incl. today's) built in {build_s:.1f}s under {root}")

        cold = Auditor(storage, settings, layers)
        cold_s, audit = timed(lambda: cold.run(tracked, now_ms))
        assert not audit.findings, audit.summary()
        print(f"cold audit : {cold_s:7.3f} s  ({cold.manifest.files_read:,} files read, {os.cpu_count()} cores)")

        warm_times = []
        for _ in range(args.repeat):
            warm = Auditor(storage, settings, layers)
            t, audit = timed(lambda: warm.run(tracked, now_ms))
            assert warm.manifest.files_read == 0 and not audit.findings
            warm_times.append(t)
        warm_s = statistics.median(warm_times)
        verdict = "OK" if warm_s < TARGET_WARM_S else "OVER TARGET"
        print(f"warm audit : {warm_s:7.3f} s  (median of {args.repeat}; target < {TARGET_WARM_S} s: {verdict}); "
              f"{audit.summary()}")

        for i in range(10):  # rewrite 10 partitions of different symbols, as runs would
            sym, day = f"SIM{i * 7 % args.symbols:03d}/USDT", FIRST_DAY + dt.timedelta(days=i * 31 % args.days)
            df = storage.read_partition(RAW_OHLCV, "simulated", sym, day)
            storage.write_partition(RAW_OHLCV, "simulated", sym, day, df)
        changed = Auditor(storage, settings, [RAW_OHLCV])
        t, _ = timed(lambda: changed.run(tracked, now_ms))
        print(f"10 changed : {t:7.3f} s  ({changed.manifest.files_read} files read)")

        status_s, rows = timed(lambda: symbol_rows(Auditor(storage, settings, [RAW_OHLCV]).run(tracked, now_ms)))
        verdict = "OK" if status_s < TARGET_STATUS_S else "OVER TARGET"
        print(f"status     : {status_s:7.3f} s  for {len(rows)} symbols (raw audit + table; target < "
              f"{TARGET_STATUS_S} s: {verdict})")
    finally:
        if not args.root:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
