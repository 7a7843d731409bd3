"""Benchmark of the derived layers: one symbol-year of 1m candles through clean -> resample -> indicators -> signals.

Prints rows/s per layer, the indicator step against the TA-Lib floor (the same TA-Lib calls on the same
arrays, with no frame around them), the total and the peak memory. Not a test: run it by hand.

    .venv/bin/python bench/derive.py [--symbol BTC/USDT] [--year 2024] [--repeat 3]
"""

from __future__ import annotations

import argparse
import datetime as dt
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lakehouse.clean import clean_candles  # noqa: E402
from lakehouse.exchange.simulated import SimulatedSource  # noqa: E402
from lakehouse.indicators import compute_indicators, talib_indicators  # noqa: E402
from lakehouse.resample import resample  # noqa: E402
from lakehouse.scores import compute_scores  # noqa: E402
from lakehouse.signals import compute_signals  # noqa: E402
from lakehouse.timeutil import day_start_ms  # noqa: E402

TARGET_RATIO = 3.0
TARGET_TOTAL_S = 10.0
TARGET_PEAK_GIB = 1.5


def raw_year(symbol: str, year: int) -> pl.DataFrame:
    start = day_start_ms(dt.date(year, 1, 1))
    arr = SimulatedSource().candles(symbol, start, day_start_ms(dt.date(year + 1, 1, 1)))
    ts = pl.Series(arr[:, 0].astype(np.int64)).cast(pl.Datetime("ms", "UTC"))
    return pl.DataFrame({
        "timestamp": ts, "open": arr[:, 1], "high": arr[:, 2], "low": arr[:, 3], "close": arr[:, 4],
        "volume": arr[:, 5],
    }).with_columns(exchange=pl.lit("simulated"), symbol=pl.lit(symbol), fetched_at=pl.col("timestamp"))


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def talib_floor(bars: pl.DataFrame) -> float:
    """Seconds for the bare TA-Lib calls over every interval's arrays (extracted beforehand, not timed)."""
    arrays = [
        tuple(part.get_column(c).to_numpy() for c in ("close", "high", "low"))
        for part in bars.partition_by("interval", maintain_order=True)
    ]
    t0 = time.perf_counter()
    for close, high, low in arrays:
        talib_indicators(close, high, low)
    return time.perf_counter() - t0


def one_pass(raw: pl.DataFrame) -> dict:
    start, end = raw.get_column("timestamp").min(), raw.get_column("timestamp").max() + dt.timedelta(minutes=1)
    result, t_clean = timed(clean_candles, raw)
    bars, t_resample = timed(resample, result.bars)
    ind, t_ind = timed(compute_indicators, bars, start, end)
    sig, t_sig = timed(compute_signals, ind)
    scores, t_scores = timed(compute_scores, ind, sig)
    return {
        "rows": {"clean": raw.height, "resample": bars.height, "indicators": ind.height, "signals": sig.height,
                 "scores": scores.height},
        "inputs": {"clean": raw.height, "resample": result.bars.height, "indicators": bars.height,
                   "signals": ind.height, "scores": ind.height},
        "seconds": {"clean": t_clean, "resample": t_resample, "indicators": t_ind, "signals": t_sig,
                    "scores": t_scores},
        "floor": talib_floor(bars),
        "score": scores.row(0, named=True) if scores.height else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbol", default="BTC/USDT")
    parser.add_argument("--year", type=int, default=2024)
    parser.add_argument("--repeat", type=int, default=3, help="passes; each figure is the best of them")
    args = parser.parse_args()

    raw, t_gen = timed(raw_year, args.symbol, args.year)
    print(f"{args.symbol} {args.year}: {raw.height:,} raw 1m rows generated in {t_gen:.2f} s (not counted)")
    passes = [one_pass(raw) for _ in range(args.repeat)]

    layers = list(passes[0]["seconds"])
    print(f"\n{'layer':<11} {'rows in':>9} {'rows out':>9} {'best s':>8} {'median s':>9} {'rows in/s':>12}")
    for layer in layers:
        times = [p["seconds"][layer] for p in passes]
        best = min(times)
        rows_in = passes[0]["inputs"][layer]
        print(f"{layer:<11} {rows_in:>9,} {passes[0]['rows'][layer]:>9,} {best:>8.3f} "
              f"{statistics.median(times):>9.3f} {rows_in / best:>12,.0f}")

    best_ind = min(p["seconds"]["indicators"] for p in passes)
    floor = min(p["floor"] for p in passes)
    ratio = best_ind / floor
    totals = [sum(p["seconds"][k] for k in layers) for p in passes]
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30  # ru_maxrss is KiB on Linux
    print(f"\nindicators vs TA-Lib floor: {best_ind * 1000:.1f} ms / {floor * 1000:.1f} ms = {ratio:.2f}x"
          f" (target <= {TARGET_RATIO:.0f}x)")
    print(f"total derive (clean..scores): best {min(totals):.2f} s, median {statistics.median(totals):.2f} s"
          f" (target < {TARGET_TOTAL_S:.0f} s)")
    print(f"peak memory (max RSS of this process): {peak_gib:.2f} GiB (target < {TARGET_PEAK_GIB} GiB)")
    score = passes[0]["score"]
    if score:
        print(f"latest score: {score['symbol']} {score['trend']} {score['score']:+d}: {score['ingredients']}")
    ok = ratio <= TARGET_RATIO and min(totals) < TARGET_TOTAL_S and peak_gib < TARGET_PEAK_GIB
    print("\nall targets met" if ok else "\nTARGET MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
