"""Scale-out, measured: the embedded default vs Postgres + Celery workers + an S3-compatible server.

For each setup, a `lakehouse serve` deployment on loopback is fed by the Binance emulator (N symbols x D days,
raw..scores, one `lakehouse backfill --url` waited on), then:
  candles/s and partitions/s of the backfill, the event-log share of its wall time (events written x the cost
  of one event-log write, measured alone), the repair audit's time (what one sensor tick costs), and the
  GraphQL partition-status query of raw_ohlcv; finally the same query once the registry holds --registry
  symbols (default 100) from LAKEHOUSE_HISTORY_START (2017-07-01): ~344,000 partitions per asset.
Peak RSS is the sum over the deployment's process tree, sampled every 0.5 s.

    python bench/scale.py                      # 100 x 30, as in the issue (long)
    python bench/scale.py --symbols 4 --days 3 # a quick look
Needs PostgreSQL on 127.0.0.1:5432 (user postgres, trust) and RabbitMQ on 127.0.0.1:5672 (guest/guest).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import psutil  # noqa: E402

BIN = Path(sys.executable).parent
STATUS_QUERY = """query($key: AssetKeyInput!) { assetNodeOrError(assetKey: $key) { ... on AssetNode {
  partitionStats { numMaterialized numPartitions numFailed numMaterializing }
  assetPartitionStatuses { __typename ... on MultiPartitionStatuses { primaryDimensionName
    ranges { primaryDimStartKey primaryDimEndKey } } } } } }"""


def gql(url: str, query: str, variables: dict) -> dict:
    req = urllib.request.Request(f"{url}/graphql", json.dumps({"query": query, "variables": variables}).encode(),
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as resp:
        body = json.loads(resp.read())
    if body.get("errors"):
        raise RuntimeError(body["errors"])
    return body["data"]


def status_query_s(url: str, repeat: int = 3) -> tuple[float, dict]:
    times, stats = [], {}
    for _ in range(repeat):
        t0 = time.perf_counter()
        data = gql(url, STATUS_QUERY, {"key": {"path": ["raw_ohlcv"]}})
        times.append(time.perf_counter() - t0)
        stats = data["assetNodeOrError"]["partitionStats"]
    return statistics.median(times), stats


class RssSampler(threading.Thread):
    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak, self.stop_flag = pid, 0, threading.Event()

    def run(self):
        while not self.stop_flag.is_set():
            try:
                root = psutil.Process(self.pid)
                total = sum(p.memory_info().rss for p in [root, *root.children(recursive=True)] if p.is_running())
                self.peak = max(self.peak, total)
            except psutil.Error:
                pass
            time.sleep(0.5)


def event_write_ms(instance, n: int) -> float:
    """Milliseconds per event-log write: n runless materializations of distinct partitions, one at a time."""
    from dagster import AssetMaterialization

    t0 = time.perf_counter()
    for i in range(n):
        instance.report_runless_asset_event(
            AssetMaterialization("bench_event_cost", partition=f"p{i}", metadata={"rows": i}))
    return (time.perf_counter() - t0) * 1000 / n


def run_setup(name: str, env: dict, args, emulator, out: dict) -> None:
    from dagster import DagsterInstance

    from assets.partitions import SYMBOLS_PARTITION
    from cli.instance import ensure_dagster_home
    from lakehouse.audit import Auditor, audited_layers
    from lakehouse.config import Settings
    from lakehouse.registry import Registry
    from lakehouse.storage import Storage

    from helpers import free_port

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(Path(env["DAGSTER_HOME"]).parent / f"serve-{name}.log", "wb")
    workers = "2" if env.get("LAKEHOUSE_CELERY_BROKER_URL") else "0"
    serve = subprocess.Popen([str(BIN / "lakehouse"), "serve", "--port", str(port), "--workers", workers], env=env,
                             stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    sampler = RssSampler(serve.pid)
    sampler.start()
    r: dict = {}
    try:
        t0 = time.monotonic()
        while True:
            try:
                urllib.request.urlopen(f"{url}/server_info", timeout=2)
                break
            except OSError:
                if serve.poll() is not None or time.monotonic() - t0 > 300:
                    raise RuntimeError(f"{name}: serve did not start")
                time.sleep(1)
        print(f"[{name}] deployment up in {time.monotonic() - t0:.0f}s", flush=True)
        symbols = [f"SIM{i:03d}/USDT" for i in range(args.symbols)]
        end = dt.datetime.now(dt.timezone.utc).date() - dt.timedelta(days=1)
        start = end - dt.timedelta(days=args.days - 1)
        add = subprocess.run([str(BIN / "lakehouse"), "symbols", "add", *symbols, "--start", str(start)], env=env,
                             capture_output=True, text=True)
        assert add.returncode == 0, add.stderr
        print(f"[{name}] backfill of {args.symbols} x {args.days} days, raw..scores (waiting for the deployment)",
              flush=True)
        t0 = time.perf_counter()
        bf = subprocess.run([str(BIN / "lakehouse"), "backfill", "--url", url, "--start", str(start), "--end",
                             str(end), "--json", "--timeout", "4h"], env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if bf.returncode != 0:
            raise RuntimeError(f"{name}: backfill failed: {bf.stderr[-2000:]}")
        summary = json.loads(bf.stdout)
        os.environ.update(env)
        ensure_dagster_home()
        with DagsterInstance.get() as instance:
            events = sum(len(instance.all_logs(run.run_id)) for run in instance.get_runs(limit=10_000))
            r["event_ms"] = event_write_ms(instance, args.events)
        partitions = args.symbols * args.days * len(audited_layers())
        r.update(wall_s=wall, candles=summary.get("candles") or 0, partitions=partitions, events=events)
        r["candles_per_s"] = r["candles"] / wall
        r["partitions_per_s"] = partitions / wall
        r["event_share"] = events * r["event_ms"] / 1000 / wall
        storage = Storage(env["LAKEHOUSE_ROOT"])
        tracked = list(Registry(storage.root).load().values())
        now_ms = int(time.time() * 1000)
        Auditor(storage, Settings.from_env(env)).run(tracked, now_ms)  # cold: reads every file once
        t0 = time.perf_counter()
        Auditor(storage, Settings.from_env(env)).run(tracked, now_ms)
        r["audit_tick_s"] = time.perf_counter() - t0
        r["status_s"], r["status"] = status_query_s(url)
        with DagsterInstance.get() as instance:
            have = set(instance.get_dynamic_partitions(SYMBOLS_PARTITION))
            extra = [f"REG{i:03d}/USDT" for i in range(args.registry) if f"REG{i:03d}/USDT" not in have]
            instance.add_dynamic_partitions(SYMBOLS_PARTITION, extra[: max(0, args.registry - len(have))])
        r["big_status_s"], r["big_status"] = status_query_s(url)
        print(f"[{name}] done: {json.dumps({k: v for k, v in r.items() if k not in ('status', 'big_status')})}",
              flush=True)
    finally:
        serve.terminate()
        try:
            serve.wait(60)
        except subprocess.TimeoutExpired:
            serve.kill()
            serve.wait()
        sampler.stop_flag.set()
        r["peak_rss_mb"] = sampler.peak / 2**20
        out[name] = r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--symbols", type=int, default=100)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--registry", type=int, default=100, help="symbols in the registry for the big status query")
    ap.add_argument("--events", type=int, default=300, help="event-log writes timed alone per instance")
    args = ap.parse_args()

    import psycopg2

    from lakehouse.exchange.emulator import BinanceEmulator
    from lakehouse.exchange.simulated import SimulatedSource

    from s3_server import S3Server

    base = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    db = f"lakehouse_bench_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres")
    admin.autocommit = True
    admin.cursor().execute(f'CREATE DATABASE "{db}"')
    s3 = S3Server()
    emulator = BinanceEmulator(source=SimulatedSource(synthetic=max(args.symbols, 1), outage_rate=0.0)).start()
    common = {k: v for k, v in os.environ.items() if not k.startswith(("LAKEHOUSE_", "DAGSTER_"))}
    common.update(LAKEHOUSE_EXCHANGE="binance", LAKEHOUSE_EXCHANGE_URL=emulator.url, LAKEHOUSE_DAEMON_INTERVAL_S="2",
                  LAKEHOUSE_REPAIR_INTERVAL_S="3600", LAKEHOUSE_PROGRESS_INTERVAL_S="30")
    setups = {
        "embedded": dict(common, DAGSTER_HOME=str(base / "embedded" / "home"), LAKEHOUSE_ROOT=str(base / "embedded" / "lake")),
        "scaled": dict(common, **s3.env(s3.new_bucket()), DAGSTER_HOME=str(base / "scaled" / "home"),
                       LAKEHOUSE_POSTGRES_URL=f"postgresql://postgres@127.0.0.1:5432/{db}",
                       LAKEHOUSE_CELERY_BROKER_URL="amqp://guest:guest@127.0.0.1:5672//"),
    }
    out: dict = {}
    try:
        for name, env in setups.items():
            Path(env["DAGSTER_HOME"]).mkdir(parents=True)
            run_setup(name, env, args, emulator, out)
    finally:
        emulator.stop()
        s3.stop()
        admin.cursor().execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        admin.close()

    e, s = out.get("embedded", {}), out.get("scaled", {})
    print(f"\n{args.symbols} symbols x {args.days} days, raw..scores; machine load avg {os.getloadavg()[0]:.1f}")
    print(f"{'':34}{'embedded (SQLite, local)':>26}{'Postgres + 2 Celery + S3':>26}{'scaled/embedded':>18}")
    rows = [("backfill wall s", "wall_s", "{:.1f}"), ("candles/s", "candles_per_s", "{:,.0f}"),
            ("partitions/s", "partitions_per_s", "{:.2f}"), ("event-log write ms/event", "event_ms", "{:.2f}"),
            ("events written", "events", "{:,}"), ("event-log share of wall", "event_share", "{:.0%}"),
            ("repair audit (sensor tick) s", "audit_tick_s", "{:.2f}"),
            ("status query raw_ohlcv s", "status_s", "{:.2f}"),
            (f"status query, {args.registry} symbols s", "big_status_s", "{:.2f}"),
            ("peak RSS of the deployment MB", "peak_rss_mb", "{:,.0f}")]
    for label, key, fmt in rows:
        a, b = e.get(key), s.get(key)
        ratio = f"{b / a:.2f}x" if isinstance(a, (int, float)) and isinstance(b, (int, float)) and a else "-"
        print(f"{label:34}{fmt.format(a) if a is not None else '-':>26}{fmt.format(b) if b is not None else '-':>26}"
              f"{ratio:>18}")
    for name in ("embedded", "scaled"):
        if "big_status" in out.get(name, {}):
            print(f"{name}: partitions per asset with the big registry: {out[name]['big_status']['numPartitions']:,}")


if __name__ == "__main__":
    main()
