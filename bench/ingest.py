"""Ingestion throughput against the loopback Binance emulator when its request-weight budget is the bottleneck.

Prints candles/s achieved, the budget's theoretical maximum, their ratio (target >= 0.9), the 429/418 counts
(target: 0 x 418), and the peak memory of fetching one symbol-year of 1m candles (target < 1 GiB).

    python bench/ingest.py [--symbols 3] [--days 30] [--weight 40] [--window 1.0] [--year/--no-year]

`--archive` instead compares one symbol-year through the bulk archive with REST alone (see archive_vs_rest).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lakehouse.exchange.ccxt_client import CcxtExchange  # noqa: E402
from lakehouse.exchange.emulator import BinanceEmulator  # noqa: E402
from lakehouse.exchange.simulated import SimulatedSource  # noqa: E402
from lakehouse.ingest import ingest_days  # noqa: E402
from lakehouse.storage import Storage  # noqa: E402

KLINES_WEIGHT = 2
PAGE = 1000


def throughput(n_symbols: int, n_days: int, weight: int, window: float) -> dict:
    source = SimulatedSource(synthetic=n_symbols, outage_rate=0.0)
    symbols = [f"SIM{i:03d}/USDT" for i in range(n_symbols)]
    first = dt.date(2023, 1, 1)
    days = [first + dt.timedelta(days=i) for i in range(n_days)]
    with BinanceEmulator(source=source, weight_limit=weight, weight_window_s=window) as emu, \
            tempfile.TemporaryDirectory() as root:
        client = CcxtExchange("binance", url=emu.url, timeout_s=10)
        client.markets()  # exchangeInfo is a one-off cost, not part of the steady state measured here
        emu.reset_counters()
        started = time.perf_counter()
        candles = 0
        for symbol in symbols:
            candles += ingest_days(client, Storage(root), symbol, days).candles
        elapsed = time.perf_counter() - started
        counts = {"429": emu.count_429, "418": emu.count_418, "requests": emu.requests}
    theoretical = weight / window / KLINES_WEIGHT * PAGE
    achieved = candles / elapsed
    return {
        "symbols": n_symbols, "days": n_days, "candles": candles, "elapsed_s": round(elapsed, 2),
        "budget": f"{weight} weight / {window:g} s", "achieved_candles_per_s": round(achieved),
        "theoretical_candles_per_s": round(theoretical), "ratio": round(achieved / theoretical, 3),
        "http_429": counts["429"], "http_418": counts["418"], "requests": counts["requests"],
        "governor_waits": client.governor.waits,
    }


def one_symbol_year_child(url: str, root: str) -> None:
    client = CcxtExchange("binance", url=url, timeout_s=30)
    first = dt.date(2023, 1, 1)
    report = ingest_days(client, Storage(root), "SIM000/USDT", [first + dt.timedelta(days=i) for i in range(365)])
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"candles": report.candles, "requests": report.requests, "peak_mib": round(peak_kib / 1024, 1)}))


def one_symbol_year() -> dict:
    source = SimulatedSource(synthetic=1, outage_rate=0.0)
    with BinanceEmulator(source=source, weight_limit=1_000_000, weight_window_s=60) as emu, \
            tempfile.TemporaryDirectory() as root:
        started = time.perf_counter()
        out = subprocess.run([sys.executable, __file__, "--child-year", emu.url, root],
                             capture_output=True, text=True, check=True)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        result["elapsed_s"] = round(time.perf_counter() - started, 1)
        result["disk_mib"] = round(sum(f.stat().st_size for f in Path(root).rglob("*.parquet")) / 2**20, 1)
    return result


ARCHIVE_YEAR = [dt.date(2024, 7, 1) + dt.timedelta(days=i) for i in range(365)]  # ms and us files: 2025 switch
ARCHIVE_BUDGETS = (6000, 600)  # Binance's default request weight per minute, and a tight one


def archive_child(url: str, root: str, mode: str) -> None:
    """One symbol-year into `root`, through the archive first (mode "archive") or REST alone ("rest")."""
    from lakehouse.exchange.archive import KlineArchive

    client = CcxtExchange("binance", url=url, timeout_s=30)
    if mode == "archive":
        client.archive = KlineArchive(url, timeout_s=30)
    started = time.perf_counter()
    report = ingest_days(client, Storage(root), "SIM000/USDT", ARCHIVE_YEAR)
    wall = time.perf_counter() - started
    print(json.dumps({
        "wall_s": wall, "candles": report.candles, "rest_requests": report.requests,
        "archive_requests": report.archive_requests, "sources": report.metadata()["sources"],
        "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))


def archive_vs_rest(budgets=ARCHIVE_BUDGETS) -> list[dict]:
    """Each budget: the same symbol-year via REST alone and via the archive, in fresh processes (peak RSS of
    the ingesting process), against one emulator; then both lakehouses compared day by day."""
    from lakehouse.schema import RAW_OHLCV

    source = SimulatedSource(synthetic=1, outage_rate=0.02)  # real source gaps: the archive path checks them
    results = []
    for budget in budgets:
        with BinanceEmulator(source=source, weight_limit=budget, weight_window_s=60) as emu, \
                tempfile.TemporaryDirectory() as rest_root, tempfile.TemporaryDirectory() as arch_root:
            emu.archive.prebuild("SIM000/USDT", ARCHIVE_YEAR)  # a file host serves files it already has
            row = {"budget": budget}
            for mode, root in (("rest", rest_root), ("archive", arch_root)):
                emu.reset_limits()
                emu.reset_counters()
                emu.archive.reset_counters()
                print(f"  {budget} weight/min: {mode} ...", flush=True)
                out = subprocess.run([sys.executable, __file__, "--child-archive", emu.url, root, mode],
                                     capture_output=True, text=True, check=True)
                got = json.loads(out.stdout.strip().splitlines()[-1])
                got.update(http_429=emu.count_429, http_418=emu.count_418, klines=emu.path_counts["/api/v3/klines"],
                           archive_files=emu.archive.stats().get("zip", 0))
                row[mode] = got
            differing = 0
            for day in ARCHIVE_YEAR:
                a, b = (Storage(r).read_partition(RAW_OHLCV, "binance", "SIM000/USDT", day) for r in (rest_root, arch_root))
                if a is None or b is None or not a.drop("fetched_at").equals(b.drop("fetched_at")):
                    differing += 1
            row["days_differing"] = differing
            row["store_floor_s"] = store_floor(arch_root)
            results.append(row)
    return results


def store_floor(root: str) -> float:
    """Seconds to write the year's daily Parquet files alone: the part of either path no source can save."""
    from lakehouse.schema import RAW_OHLCV

    frames = [(d, Storage(root).read_partition(RAW_OHLCV, "binance", "SIM000/USDT", d)) for d in ARCHIVE_YEAR]
    with tempfile.TemporaryDirectory() as other:
        started = time.perf_counter()
        for day, df in frames:
            Storage(other).write_partition(RAW_OHLCV, "binance", "SIM000/USDT", day, df)
        return time.perf_counter() - started


def print_archive_vs_rest(rows: list[dict]) -> None:
    print(f"one symbol-year of 1m ({ARCHIVE_YEAR[0]}..{ARCHIVE_YEAR[-1]}), archive vs REST, loopback emulator")
    print(f"{'budget':>14} {'path':>8} {'wall s':>8} {'candles/s':>10} {'klines req':>10} {'archive req':>11} "
          f"{'429':>4} {'418':>4} {'peak MiB':>9}")
    for row in rows:
        for mode in ("rest", "archive"):
            r = row[mode]
            print(f"{row['budget']:>9} w/min {mode:>8} {r['wall_s']:>8.2f} {r['candles'] / r['wall_s']:>10,.0f} "
                  f"{r['klines']:>10} {r['archive_requests']:>11} {r['http_429']:>4} {r['http_418']:>4} "
                  f"{r['peak_mib']:>9.0f}")
        ratio = row["archive"]["wall_s"] / row["rest"]["wall_s"]
        print(f"{'':>14} archive / REST wall = {ratio:.3f} (target <= 0.1 at 6000 w/min); "
              f"sources {row['archive']['sources']}; days differing: {row['days_differing']} (target 0)")
        print(f"{'':>14} of which any path spends {row['store_floor_s']:.2f} s writing the 365 daily files")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--symbols", type=int, default=3)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--weight", type=int, default=40, help="emulator weight budget per window")
    parser.add_argument("--window", type=float, default=1.0, help="emulator weight window in seconds")
    parser.add_argument("--year", action=argparse.BooleanOptionalAction, default=True,
                        help="also measure peak memory for one symbol-year")
    parser.add_argument("--child-year", nargs=2, metavar=("URL", "ROOT"), help=argparse.SUPPRESS)
    parser.add_argument("--archive", action="store_true",
                        help="one symbol-year via the bulk archive vs REST, at Binance's budget and a tight one")
    parser.add_argument("--child-archive", nargs=3, metavar=("URL", "ROOT", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_year:
        one_symbol_year_child(*args.child_year)
        return
    if args.child_archive:
        archive_child(*args.child_archive)
        return
    if args.archive:
        print_archive_vs_rest(archive_vs_rest())
        return
    t = throughput(args.symbols, args.days, args.weight, args.window)
    print(f"ingest: {t['symbols']} symbols x {t['days']} days = {t['candles']:,} candles in {t['elapsed_s']} s "
          f"({t['requests']} requests, budget {t['budget']})")
    print(f"  achieved     {t['achieved_candles_per_s']:>8,} candles/s")
    print(f"  theoretical  {t['theoretical_candles_per_s']:>8,} candles/s (budget / {KLINES_WEIGHT} weight x {PAGE})")
    print(f"  ratio        {t['ratio']:>8}  (target >= 0.9)")
    print(f"  429s {t['http_429']}  418s {t['http_418']} (target 0)  governor waits {t['governor_waits']}")
    if args.year:
        y = one_symbol_year()
        print(f"one symbol-year: {y['candles']:,} candles, {y['requests']} requests, {y['elapsed_s']} s, "
              f"peak memory {y['peak_mib']} MiB (target < 1024), {y['disk_mib']} MiB on disk")


if __name__ == "__main__":
    main()
