"""The lakehouse against freqtrade's `download-data` on one workload and one emulator, side by side.

N pairs x D days of 1m candles from the project's Binance emulator on 127.0.0.1 (default 5 x 30, about
216,000 candles), R interleaved rounds, each command a fresh process on a fresh folder:

- lakehouse raw only: `lakehouse backfill --assets raw_ohlcv` (the symbols are added beforehand, not timed);
- lakehouse raw..scores: `lakehouse backfill` (every layer, then scores);
- freqtrade download (with --freqtrade PATH, a venv with freqtrade installed): `freqtrade download-data -t 1m`,
  pointed at the emulator through `exchange.ccxt_config.urls`, `"only_from_ccxt": true`;

without latency and with LATENCY +- JITTER ms added by the emulator to every response (the latency column),
then a rerun of the same, already up-to-date range (requests sent, wall). Prints the best wall time of the
rounds, its ratio to freqtrade's download, the requests sent and the peak RSS of that process; and, with
--freqtrade, read_raw of a symbol-year against freqtrade's own feather loader on its own file. Not a test.

    .venv/bin/python bench/compare.py [--pairs 5] [--days 30] [--rounds 3] [--freqtrade /path/to/venv]
        [--latency-ms 50] [--jitter-ms 20] [--no-latency]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lakehouse.exchange.emulator import BinanceEmulator  # noqa: E402
from lakehouse.exchange.simulated import SimulatedSource  # noqa: E402

FIRST_DAY = dt.date(2024, 1, 1)
LAKEHOUSE = str(Path(sys.executable).parent / "lakehouse")


class LatentEmulator(BinanceEmulator):
    """The emulator, answering each request after latency +- jitter seconds (each request in its own thread,
    so overlapping requests overlap their waits, as over a real network)."""

    def __init__(self, *, latency_s: float = 0.0, jitter_s: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.latency_s, self.jitter_s = latency_s, jitter_s

    def handle(self, *args, **kwargs):
        if self.latency_s:
            time.sleep(max(0.0, random.uniform(self.latency_s - self.jitter_s, self.latency_s + self.jitter_s)))
        return super().handle(*args, **kwargs)


def run_measured(argv: list[str], env: dict, cwd: str) -> dict:
    """Run a command; its wall time, exit code and peak RSS (this child's own, from wait4)."""
    started = time.perf_counter()
    with open(Path(cwd) / "output.log", "ab") as log:
        proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
        _pid, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"wall_s": time.perf_counter() - started, "rc": proc.returncode, "rss_mib": usage.ru_maxrss / 1024}


def pick_pairs(n: int) -> list[str]:
    listed_by = int(dt.datetime.combine(FIRST_DAY, dt.time(), dt.timezone.utc).timestamp() * 1000)
    pairs = [s for s, m in SimulatedSource().markets.items() if s.endswith("/USDT") and m.listed_at_ms < listed_by]
    if len(pairs) < n:
        raise SystemExit(f"the emulator lists only {len(pairs)} USDT pairs before {FIRST_DAY}; use --pairs {len(pairs)}")
    return pairs[:n]


class Lakehouse:
    """One fresh lakehouse (Dagster home with the project's dagster.yaml, data folder) per measured command."""

    def __init__(self, base: str, url: str, pairs: list[str], days: int):
        self.dir = Path(tempfile.mkdtemp(prefix="lakehouse-", dir=base))
        (self.dir / "dh").mkdir()
        shutil.copy(ROOT / "dagster.yaml", self.dir / "dh" / "dagster.yaml")
        self.env = {**os.environ, "DAGSTER_HOME": str(self.dir / "dh"), "LAKEHOUSE_ROOT": str(self.dir / "lake"),
                    "LAKEHOUSE_EXCHANGE": "binance", "LAKEHOUSE_EXCHANGE_URL": url}
        self.env.pop("DAGSTER_URL", None)
        self.pairs, self.days = pairs, days
        out = subprocess.run([LAKEHOUSE, "symbols", "add", *pairs, "--start", str(FIRST_DAY)], env=self.env,
                             cwd=self.dir, capture_output=True, text=True)
        if out.returncode:
            raise SystemExit(f"lakehouse symbols add failed: {out.stdout}{out.stderr}")

    def backfill(self, raw_only: bool) -> dict:
        last = FIRST_DAY + dt.timedelta(days=self.days - 1)
        argv = [LAKEHOUSE, "backfill", "--start", str(FIRST_DAY), "--end", str(last)]
        return run_measured(argv + (["--assets", "raw_ohlcv"] if raw_only else []), self.env, str(self.dir))


class Freqtrade:
    """freqtrade download-data into a fresh folder, pointed at the emulator (every ccxt URL, paths kept)."""

    def __init__(self, venv: str, base: str, url: str, pairs: list[str], days: int):
        import ccxt

        from lakehouse.exchange.ccxt_client import override_api_url

        self.bin = str(Path(venv) / "bin" / "freqtrade")
        self.dir = Path(tempfile.mkdtemp(prefix="freqtrade-", dir=base))
        urls = override_api_url(ccxt.binance().urls, url)
        config = {
            "exchange": {"name": "binance", "key": "", "secret": "", "pair_whitelist": pairs,
                         # Spot markets only: the emulator serves /api/v3, not the futures APIs.
                         "ccxt_config": {"urls": urls, "options": {"fetchMarkets": {"types": ["spot"]}}},
                         "ccxt_async_config": {"urls": urls, "options": {"fetchMarkets": {"types": ["spot"]}}},
                         "only_from_ccxt": True},
            "trading_mode": "spot", "stake_currency": "USDT", "dataformat_ohlcv": "feather",
            "datadir": str(self.dir / "data"), "user_data_dir": str(self.dir / "user_data"),
        }
        (self.dir / "config.json").write_text(json.dumps(config))
        (self.dir / "user_data").mkdir()
        self.env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
        last = FIRST_DAY + dt.timedelta(days=days)
        self.timerange = f"{FIRST_DAY:%Y%m%d}-{last:%Y%m%d}"

    def download(self) -> dict:
        argv = [self.bin, "download-data", "-c", str(self.dir / "config.json"), "-t", "1m",
                "--timerange", self.timerange, "--datadir", str(self.dir / "data")]
        return run_measured(argv, self.env, str(self.dir))


def measure(emu: LatentEmulator, fn) -> dict:
    emu.reset_counters()
    emu.reset_limits()
    out = fn()
    stats = emu.stats()
    out["requests"] = stats["requests"]
    out["klines"] = stats["paths"].get("/api/v3/klines", 0)
    if out["rc"]:
        out["failed"] = True
    return out


def best(results: list[dict]) -> dict:
    ok = [r for r in results if not r.get("failed")] or results
    return min(ok, key=lambda r: r["wall_s"])


def fmt(r: dict | None, ref: dict | None) -> str:
    if r is None:
        return "-"
    ratio = f" ({r['wall_s'] / ref['wall_s']:.1f}x)" if ref else ""
    failed = " FAILED" if r.get("failed") else ""
    return f"{r['wall_s']:.1f} s{ratio}, {r['requests']} req, {r['rss_mib']:.0f} MiB{failed}"


def read_vs_feather(venv: str, base: str) -> None:
    """read_raw of a symbol-year from the lakehouse against freqtrade's feather loader on its own file."""
    import numpy as np
    import polars as pl

    import lakehouse
    from lakehouse.storage import Storage
    from lakehouse.timeutil import day_start_ms

    arr = SimulatedSource().candles("BTC/USDT", day_start_ms(dt.date(2024, 1, 1)), day_start_ms(dt.date(2025, 1, 1)))
    ts = pl.Series(arr[:, 0].astype(np.int64)).cast(pl.Datetime("ms", "UTC"))
    raw = pl.DataFrame({"timestamp": ts, "open": arr[:, 1], "high": arr[:, 2], "low": arr[:, 3], "close": arr[:, 4],
                        "volume": arr[:, 5]}).with_columns(exchange=pl.lit("simulated"), symbol=pl.lit("BTC/USDT"),
                                                           fetched_at=pl.col("timestamp"))
    root = Path(base) / "read"
    storage = Storage(root)
    for (day,), part in raw.with_columns(_d=pl.col("timestamp").dt.date()).partition_by("_d", as_dict=True).items():
        storage.write_partition("raw_ohlcv", "simulated", "BTC/USDT", day, part.drop("_d"))
    candles = str(root / "candles.parquet")
    raw.select(pl.col("timestamp").alias("date"), "open", "high", "low", "close", "volume").write_parquet(candles)
    times = []
    for _ in range(7):
        started = time.perf_counter()
        df = lakehouse.read_raw("BTC/USDT", "2024-01-01", "2024-12-31", exchange="simulated", root=str(root))
        times.append(time.perf_counter() - started)
    child = FREQTRADE_LOADER.format(datadir=str(root / "ft"), candles=candles)
    out = subprocess.run([str(Path(venv) / "bin" / "python"), "-c", child], capture_output=True, text=True)
    if out.returncode:
        print(f"freqtrade loader failed: {out.stderr.strip()[-500:]}")
        return
    ft = json.loads(out.stdout.strip().splitlines()[-1])
    mine = min(times)
    print(f"\nread a symbol-year of 1m ({df.height:,} candles): lakehouse.read_raw {mine:.3f} s "
          f"({len(list(storage.list_partitions('raw_ohlcv')))} daily files); freqtrade feather loader on its own "
          f"file: raw read {ft['raw_s']:.3f} s ({mine / ft['raw_s']:.1f}x), ohlcv_load with its cleaning "
          f"{ft['load_s']:.3f} s ({mine / ft['load_s']:.2f}x)")


FREQTRADE_LOADER = """
import json, time
from pathlib import Path
import pandas as pd
from freqtrade.data.history.datahandlers.featherdatahandler import FeatherDataHandler
from freqtrade.enums import CandleType
handler = FeatherDataHandler(Path({datadir!r}))
Path({datadir!r}).mkdir(parents=True, exist_ok=True)
handler.ohlcv_store("BTC/USDT", "1m", pd.read_parquet({candles!r}), CandleType.SPOT)
def best(fn):
    times = []
    for _ in range(7):
        t = time.perf_counter(); fn(); times.append(time.perf_counter() - t)
    return min(times)
raw = best(lambda: handler._ohlcv_load("BTC/USDT", "1m", timerange=None, candle_type=CandleType.SPOT))
load = best(lambda: handler.ohlcv_load("BTC/USDT", "1m", timerange=None, candle_type=CandleType.SPOT,
                                       fill_missing=False, drop_incomplete=False, warn_no_data=False))
print(json.dumps({{"raw_s": raw, "load_s": load}}))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--freqtrade", metavar="PATH", help="a virtualenv with freqtrade installed")
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--jitter-ms", type=float, default=20.0)
    parser.add_argument("--no-latency", action="store_true", help="skip the latency column")
    args = parser.parse_args()
    if args.freqtrade and not (Path(args.freqtrade) / "bin" / "freqtrade").exists():
        print(f"--freqtrade {args.freqtrade}: no bin/freqtrade there; create it with python3 -m venv PATH && "
              f"PATH/bin/pip install freqtrade", file=sys.stderr)
        return 2

    pairs = pick_pairs(args.pairs)
    print(f"{len(pairs)} pairs x {args.days} days of 1m from {FIRST_DAY} ({', '.join(pairs)}), "
          f"{args.rounds} interleaved rounds; best wall of the rounds, requests sent, peak RSS of the process. "
          f"The machine may be shared: compare the ratios, measured side by side.")
    latencies = [0.0] + ([] if args.no_latency else [args.latency_ms / 1000])
    rows: dict[tuple[str, float], list[dict]] = {}
    reruns: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-compare-") as base:
        for latency in latencies:
            source = SimulatedSource(outage_rate=0.0)
            with LatentEmulator(source=source, latency_s=latency, jitter_s=args.jitter_ms / 1000 if latency else 0,
                                weight_limit=1_000_000) as emu:
                for rnd in range(args.rounds):
                    print(f"  latency {latency * 1000:.0f} ms, round {rnd + 1}/{args.rounds} ...", flush=True)
                    if args.freqtrade:
                        ft = Freqtrade(args.freqtrade, base, emu.url, pairs, args.days)
                        rows.setdefault(("freqtrade", latency), []).append(measure(emu, ft.download))
                        if latency == 0:
                            reruns.setdefault("freqtrade", []).append(measure(emu, ft.download))
                    lake = Lakehouse(base, emu.url, pairs, args.days)
                    rows.setdefault(("raw", latency), []).append(measure(emu, lambda: lake.backfill(raw_only=True)))
                    if latency == 0:
                        full = Lakehouse(base, emu.url, pairs, args.days)
                        rows.setdefault(("full", latency), []).append(measure(emu, lambda: full.backfill(False)))
                        reruns.setdefault("full", []).append(measure(emu, lambda: full.backfill(False)))
                        reruns.setdefault("raw", []).append(measure(emu, lambda: lake.backfill(raw_only=True)))
        if args.freqtrade:
            read_vs_feather(args.freqtrade, base)

    ft0 = best(rows[("freqtrade", 0.0)]) if args.freqtrade else None
    ft1 = best(rows[("freqtrade", latencies[-1])]) if args.freqtrade and len(latencies) > 1 else None
    table = [
        ("wall, no latency", ft0, best(rows[("raw", 0.0)]), best(rows[("full", 0.0)]), ft0),
        (f"wall, {args.latency_ms:.0f} ms +-{args.jitter_ms:.0f} ms latency", ft1,
         best(rows[("raw", latencies[-1])]) if len(latencies) > 1 else None, None, ft1),
        ("rerun of the same, up-to-date range", best(reruns["freqtrade"]) if args.freqtrade else None,
         best(reruns["raw"]), best(reruns["full"]), best(reruns["freqtrade"]) if args.freqtrade else None),
    ]
    print(f"\n| | freqtrade download | lakehouse raw only | lakehouse raw..scores |\n|---|---|---|---|")
    for label, ft, raw, full, ref in table:
        print(f"| {label} | {fmt(ft, None)} | {fmt(raw, ref)} | {fmt(full, ref)} |")
    raw0 = best(rows[("raw", 0.0)])
    if len(latencies) > 1:
        raw1 = best(rows[("raw", latencies[-1])])
        print(f"\nraw download throughput with latency: {raw0['wall_s'] / raw1['wall_s']:.2f} of the no-latency "
              f"figure (target >= 0.9)")
    if args.freqtrade:
        print(f"targets: raw..scores <= 1.0x freqtrade ({best(rows[('full', 0.0)])['wall_s'] / ft0['wall_s']:.2f}x), "
              f"raw only <= 0.6x ({raw0['wall_s'] / ft0['wall_s']:.2f}x)")
    print(f"rerun: {best(reruns['raw'])['klines']} klines requests for {len(pairs)} pairs "
          f"(target <= 1 per pair plus market loading)")
    failed = [k for k, rs in [*rows.items(), *reruns.items()] for r in rs if r.get("failed")]
    if failed:
        print(f"FAILED runs: {failed} (see output.log in their folders)")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
