"""The storage grain on its own: one symbol-year written and read as one file per UTC day (today's layout) and as
one file per UTC month, everything else equal.

Each layer's year (raw_ohlcv, and clean_bars with every interval) is cut by day and by month; each cut is
written with the lakehouse's own atomic writer (same encoding, temp file, fsync, rename) into a fresh folder,
then scanned back as read_range scans partitions (lakehouse.storage.scan_files: the 1m bars of clean_bars,
every row of raw). Prints the best of --repeat for each, side by side, with the ratios and peak RSS.

This measures the file grain only: the Dagster partitions would stay symbol x UTC day either way. The per-file
costs it shows (encode, fsync, rename, then open and footer on read) are what bench/derive.py's read_bars and
--assets figures and bench/ingest.py --archive's write floor are made of.

    .venv/bin/python bench/grain.py [--symbol BTC/USDT] [--year 2024] [--repeat 3]
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from derive import raw_year  # noqa: E402
from lakehouse.clean import clean_candles  # noqa: E402
from lakehouse.resample import resample  # noqa: E402
from lakehouse.storage import _write_atomic, parquet_bytes, scan_files  # noqa: E402  (what every partition goes through)


def best_of(repeat: int, fn) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        started = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - started)
    return best, out


def cut(df: pl.DataFrame, fmt: str) -> list[pl.DataFrame]:
    return df.with_columns(_k=pl.col("timestamp").dt.strftime(fmt)).partition_by(
        "_k", include_key=False, maintain_order=True)


def measure(frames: list[pl.DataFrame], wanted: pl.Expr, repeat: int) -> dict:
    with tempfile.TemporaryDirectory() as root:
        def write() -> list[str]:
            paths = []
            for i, frame in enumerate(frames):
                path = Path(root) / f"k={i:04d}" / "part.parquet"
                _write_atomic(parquet_bytes(frame), path)
                paths.append(str(path))
            return paths

        write_s, paths = best_of(repeat, write)
        read_s, rows = best_of(repeat, lambda: scan_files(paths, wanted))
    return {"files": len(frames), "write_s": write_s, "read_s": read_s, "rows": rows.height}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--symbol", default="BTC/USDT")
    parser.add_argument("--year", type=int, default=2024)
    parser.add_argument("--repeat", type=int, default=3, help="each figure is the best of this many")
    args = parser.parse_args()

    raw = raw_year(args.symbol, args.year)
    bars = resample(clean_candles(raw).bars)
    layers = {"raw_ohlcv": (raw, pl.lit(True)), "clean_bars": (bars, pl.col("interval") == "1m")}
    print(f"{args.symbol} {args.year}: {raw.height:,} raw 1m candles, {bars.height:,} clean bars (every interval); "
          f"best of {args.repeat}; peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    print(f"{'layer':<11} {'grain':<6} {'files':>5} {'write s':>8} {'read s':>7} {'rows read':>10} "
          f"{'M rows/s':>9}")
    for layer, (df, wanted) in layers.items():
        got = {grain: measure(cut(df, fmt), wanted, args.repeat) for grain, fmt in (("day", "%F"), ("month", "%Y-%m"))}
        for grain, r in got.items():
            print(f"{layer:<11} {grain:<6} {r['files']:>5} {r['write_s']:>8.3f} {r['read_s']:>7.3f} {r['rows']:>10,} "
                  f"{r['rows'] / r['read_s'] / 1e6:>9.1f}")
        day, month = got["day"], got["month"]
        print(f"{'':<11} month / day: write {month['write_s'] / day['write_s']:.2f}x, "
              f"read {month['read_s'] / day['read_s']:.2f}x")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
