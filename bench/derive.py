"""Benchmark of the derived layers: one symbol-year of 1m candles through clean -> resample -> indicators -> signals.

Prints rows/s per layer, the indicator step against the TA-Lib floor (the same TA-Lib calls on the same
arrays, with no frame around them), the total and the peak memory; then stores the year's clean bars in a
temporary lakehouse and times lakehouse.read_bars of its 1m bars (target well under a second). With --assets,
also runs the real Dagster assets over the year in one range run (the project's event log, as dagster.yaml
configures it) in a fresh process and prints their time against the plain functions' (target <= 3x), each
step's time and that process's peak RSS (target < 1 GiB). Not a test: run it by hand.

    .venv/bin/python bench/derive.py [--symbol BTC/USDT] [--year 2024] [--repeat 3] [--assets]
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

from bench.peak import own_peak_mib  # noqa: E402
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
TARGET_READ_S = 1.0
TARGET_READ_BARS_PER_S = 10e6
TARGET_ASSETS_RATIO = 3.0
TARGET_ASSETS_PEAK_GIB = 1.0  # one symbol-year end to end


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


def write_raw(root: str, raw: pl.DataFrame) -> None:
    from lakehouse.storage import Storage

    storage = Storage(root)
    for (day,), part in raw.with_columns(_d=pl.col("timestamp").dt.date()).partition_by(
            "_d", as_dict=True, maintain_order=True).items():
        storage.write_partition("raw_ohlcv", "simulated", part["symbol"][0], day, part.drop("_d"))


def read_check(raw: pl.DataFrame, symbol: str, year: int) -> float:
    """Best of 5 seconds for read_bars(symbol, "1m", whole year) from the year's clean_bars partitions; also
    prints read_raw of the same year and both in bars/s (target for read_bars >= 10 M bars/s)."""
    import tempfile

    import lakehouse
    from assets.derived import clean_range
    from lakehouse.storage import Storage

    days = sorted(set(raw.get_column("timestamp").dt.date().to_list()))
    bars, _rejects, _stats = clean_range(raw.with_columns(pl.col("timestamp").dt.date().alias("_day")), days)
    with tempfile.TemporaryDirectory() as root:
        storage = Storage(root)
        write_raw(root, raw)
        for day, frame in bars.items():
            storage.write_partition("clean_bars", "simulated", symbol, day, frame)
        times, raw_times = [], []
        for _ in range(5):
            df, t = timed(lakehouse.read_bars, symbol, "1m", f"{year}-01-01", f"{year}-12-31", root=root)
            times.append(t)
            raw_df, t = timed(lakehouse.read_raw, symbol, f"{year}-01-01", f"{year}-12-31", root=root)
            raw_times.append(t)
    best, best_raw = min(times), min(raw_times)
    print(f"\nread_bars({symbol!r}, '1m', one year): {df.height:,} bars in {best:.3f} s = "
          f"{df.height / best / 1e6:.1f} M bars/s (target < {TARGET_READ_S:.0f} s and "
          f">= {TARGET_READ_BARS_PER_S / 1e6:.0f} M bars/s; {len(days)} files)")
    print(f"read_raw({symbol!r}, one year): {raw_df.height:,} candles in {best_raw:.3f} s = "
          f"{raw_df.height / best_raw / 1e6:.1f} M candles/s")
    return best


def assets_check(raw: pl.DataFrame, symbol: str, year: int, plain_s: float) -> float:
    """The Dagster assets over the year in one range run on a temporary instance with the project's event log
    (dagster.yaml's), against the plain functions' time: seconds, and each step's time."""
    import tempfile
    from collections import Counter

    from dagster import DagsterEventType, instance_for_test, materialize

    from assets.derived import DERIVED_ASSETS
    from assets.partitions import SYMBOLS_PARTITION, partition_key
    from assets.raw import raw_ohlcv
    from resources import LakehouseResource, SimulatedExchangeResource

    with tempfile.TemporaryDirectory() as tmp:
        storage = {"module": "resources.event_log", "class": "BatchingSqliteEventLogStorage",
                   "config": {"base_dir": f"{tmp}/history/runs"}}
        with instance_for_test(temp_dir=tmp, overrides={"event_log_storage": storage}) as instance:
            write_raw(f"{tmp}/lake", raw)
            instance.add_dynamic_partitions(SYMBOLS_PARTITION, [symbol])
            days = sorted(set(raw.get_column("timestamp").dt.date().to_list()))
            (result, total) = timed(
                materialize, [raw_ohlcv, *DERIVED_ASSETS], instance=instance,
                selection=["clean_bars", "rejected_candles", "indicators", "signals", "scores"],
                resources={"exchange": SimulatedExchangeResource(), "lakehouse": LakehouseResource(root=f"{tmp}/lake")},
                tags={"dagster/asset_partition_range_start": str(partition_key(symbol, days[0])),
                      "dagster/asset_partition_range_end": str(partition_key(symbol, days[-1]))},
                run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}}, raise_on_error=False,
            )
            kinds = Counter(e.event_type_value for e in result.all_events)
    print(f"\nassets over {len(days)} days in one range run: {'ok' if result.success else 'FAILED'} in {total:.2f} s"
          f" = {total / plain_s:.1f}x the plain functions' {plain_s:.2f} s (target <= {TARGET_ASSETS_RATIO:.0f}x);"
          f" {sum(kinds.values())} events ({kinds['ASSET_MATERIALIZATION']} materializations,"
          f" {kinds['ASSET_OBSERVATION']} observations)")
    for event in result.all_events:
        if event.event_type in (DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_FAILURE):
            ms = event.event_specific_data.duration_ms if event.is_step_success else None
            print(f"  {event.step_key:<11} {event.event_type_value:<13} {f'{ms / 1000:.2f} s' if ms else ''}")
    floor = grain_floor(symbol, days)
    print(f"  the grain's floor: a no-op step over the same {len(days)} days of the same 4 partitioned assets, "
          f"one number of metadata per partition: {floor:.2f} s = {floor / plain_s:.1f}x the plain functions")
    return total / plain_s


def grain_floor(symbol: str, days: list) -> float:
    """Seconds for Dagster alone to record a range run over `days` of four symbol x day assets that do no work:
    what the partition grain costs before any computation (a planned event and a materialization per
    asset-partition)."""
    import tempfile

    from dagster import AssetSpec, BackfillPolicy, MaterializeResult, instance_for_test, materialize, multi_asset

    from assets.glue import add_partition_metadata
    from assets.partitions import SYMBOLS_PARTITION, days_by_symbol, partition_key, symbol_day_partitions

    layers = ["clean_bars", "rejected_candles", "indicators", "signals"]

    @multi_asset(specs=[AssetSpec(layer) for layer in layers], partitions_def=symbol_day_partitions,
                 backfill_policy=BackfillPolicy.single_run())
    def noop(context):
        for sym, ds in days_by_symbol(context.partition_keys).items():
            for layer in layers:
                add_partition_metadata(context, layer, sym, {d: {"rows": 1} for d in ds})
        for layer in layers:
            yield MaterializeResult(asset_key=layer)

    with tempfile.TemporaryDirectory() as tmp:
        storage = {"module": "resources.event_log", "class": "BatchingSqliteEventLogStorage",
                   "config": {"base_dir": f"{tmp}/history/runs"}}
        with instance_for_test(temp_dir=tmp, overrides={"event_log_storage": storage}) as instance:
            instance.add_dynamic_partitions(SYMBOLS_PARTITION, [symbol])
            _, seconds = timed(materialize, [noop], instance=instance, tags={
                "dagster/asset_partition_range_start": str(partition_key(symbol, days[0])),
                "dagster/asset_partition_range_end": str(partition_key(symbol, days[-1]))},
                run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}})
    return seconds


def assets_in_own_process(symbol: str, year: int, plain_s: float) -> tuple[float, float]:
    """assets_check in a fresh process, so its peak RSS is the Dagster run's own: (ratio, peak GiB)."""
    import json
    import subprocess

    out = subprocess.run([sys.executable, __file__, "--child-assets", symbol, str(year), repr(plain_s)],
                         capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"the assets run's process failed:\n{out.stdout[-2000:]}{out.stderr[-4000:]}")
    *lines, last = out.stdout.strip().splitlines()
    print("\n".join(lines))
    got = json.loads(last)
    print(f"  peak RSS of that process (the year generated, then the run): {got['peak_gib']:.2f} GiB"
          f" (target < {TARGET_ASSETS_PEAK_GIB:.0f} GiB)")
    return got["ratio"], got["peak_gib"]


def assets_child(symbol: str, year: str, plain_s: str) -> None:
    import json

    ratio = assets_check(raw_year(symbol, int(year)), symbol, int(year), float(plain_s))
    print(json.dumps({"ratio": ratio, "peak_gib": own_peak_mib() / 1024}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbol", default="BTC/USDT")
    parser.add_argument("--year", type=int, default=2024)
    parser.add_argument("--repeat", type=int, default=3, help="passes; each figure is the best of them")
    parser.add_argument("--assets", action="store_true",
                        help="also run the Dagster assets over the year in one range run (in a fresh process)")
    parser.add_argument("--child-assets", nargs=3, metavar=("SYMBOL", "YEAR", "PLAIN_S"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_assets:
        assets_child(*args.child_assets)
        return 0

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
    read_s = read_check(raw, args.symbol, args.year)
    assets_ratio, assets_gib = assets_in_own_process(args.symbol, args.year, min(totals)) if args.assets else (0, 0)
    ok = (ratio <= TARGET_RATIO and min(totals) < TARGET_TOTAL_S and peak_gib < TARGET_PEAK_GIB
          and read_s < TARGET_READ_S and raw.height / read_s >= TARGET_READ_BARS_PER_S
          and assets_ratio <= TARGET_ASSETS_RATIO and assets_gib < TARGET_ASSETS_PEAK_GIB)
    print("\nall targets met" if ok else "\nTARGET MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
