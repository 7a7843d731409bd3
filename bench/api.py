"""The HTTP API under load: 16 concurrent keep-alive clients on loopback against `uvicorn serving.asgi:app`.

Prints requests/s and p50/p99 latency for
  - /v1/scores (cached: Redis when LAKEHOUSE_REDIS_URL or --redis is given, else the in-process cache);
    targets >= 1,000 req/s and p99 < 50 ms;
  - one symbol-month of 1m bars (31 days, 44,640 rows) as JSON and as Arrow; target < 100 ms for Arrow;
  - the coverage page's data (/v1/coverage) for 100 symbols x 365 days, and, when Debian's chromium is present,
    the page's render time in headless Chromium;
with the server's peak RSS. The machine may be shared: figures vary run to run.

    .venv/bin/python bench/api.py [--requests 3000] [--clients 16] [--workers 1] [--redis redis://127.0.0.1:6379/15]
                                  [--no-coverage]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import importlib.util
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import polars as pl  # noqa: E402
import psutil  # noqa: E402

from lakehouse.clean import clean_candles  # noqa: E402
from lakehouse.exchange.simulated import SimulatedExchange, SimulatedSource  # noqa: E402
from lakehouse.ingest import ingest_days  # noqa: E402
from lakehouse.registry import Registry  # noqa: E402
from lakehouse.resample import resample  # noqa: E402
from lakehouse.schema import CLEAN_BARS, RAW_OHLCV, SCORES, empty  # noqa: E402
from lakehouse.storage import Storage  # noqa: E402
from lakehouse.timeutil import day_start_ms  # noqa: E402

SYMBOL = "BTC/USDT"
MONTH = (dt.date(2024, 1, 1), dt.date(2024, 1, 31))


def build_month(root: str) -> None:
    """31 days of real raw candles, cleaned and resampled into clean_bars, and a scores table of 100 rows."""
    storage = Storage(root)
    days = [MONTH[0] + dt.timedelta(days=i) for i in range((MONTH[1] - MONTH[0]).days + 1)]
    now = day_start_ms(MONTH[1] + dt.timedelta(days=1))
    exchange = SimulatedExchange(SimulatedSource(outage_rate=0.0), clock=lambda: now)
    ingest_days(exchange, storage, SYMBOL, days)
    for d in days:
        raw = storage.read_partition(RAW_OHLCV, exchange.id, SYMBOL, d)
        storage.write_partition(CLEAN_BARS, exchange.id, SYMBOL, d, resample(clean_candles(raw).bars))
    template = pl.DataFrame([{"exchange": "simulated", "symbol": f"SIM{i:03d}/USDT", "interval": "1h",
                              "timestamp": dt.datetime(2024, 1, 31, 23, tzinfo=dt.timezone.utc), "close": 100.0 + i,
                              "trend": "up", "score": i % 200 - 100, "active_signals": "ema_9_21_cross +1",
                              "ingredients": "trend +40; rsi +10"} for i in range(100)], schema=empty(SCORES).schema)
    storage.write_table(SCORES, template)


def build_coverage(root: str, symbols: int, days: int) -> None:
    """bench/audit.py's healthy lakehouse (real files for one symbol, byte copies for the rest), ending today."""
    spec = importlib.util.spec_from_file_location("bench_audit", HERE / "audit.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.FIRST_DAY = dt.datetime.now(dt.timezone.utc).date() - dt.timedelta(days=days - 1)
    tracked, _now = mod.build(root, symbols, days, False)
    registry = Registry(root)
    for t in tracked:
        registry.upsert(t)


async def _client(host, port, path, n, latencies, sizes):
    reader, writer = await asyncio.open_connection(host, port)
    request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    try:
        for _ in range(n):
            t0 = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            body = await reader.readexactly(length)
            latencies.append(time.perf_counter() - t0)
            if status != 200:
                raise RuntimeError(f"{path}: HTTP {status}: {body[:200]!r}")
            sizes.append(len(body))
    finally:
        writer.close()


def _cpu(server: psutil.Process | None) -> float:
    """CPU seconds of the server and its worker processes."""
    if server is None:
        return 0.0
    procs = [server, *server.children(recursive=True)]
    return sum(sum(p.cpu_times()[:2]) for p in procs if p.is_running())


def load(port: int, path: str, requests: int, clients: int, server: psutil.Process | None = None) -> dict:
    latencies: list[float] = []
    sizes: list[int] = []

    async def run():
        per = max(1, requests // clients)
        await asyncio.gather(*(_client("127.0.0.1", port, path, per, latencies, sizes) for _ in range(clients)))

    asyncio.run(_client("127.0.0.1", port, path, 3, [], []))  # warm: fills the cache, loads the code
    cpu0 = _cpu(server)
    started = time.perf_counter()
    asyncio.run(run())
    wall = time.perf_counter() - started
    cpu = _cpu(server) - cpu0
    q = statistics.quantiles(latencies, n=100)
    return {"rps": len(latencies) / wall, "p50": q[49] * 1000, "p99": q[98] * 1000, "n": len(latencies),
            "bytes": statistics.median(sizes), "cpu_ms": cpu * 1000 / len(latencies)}


def start_server(root: str, redis_url: str | None, port: int, workers: int = 1) -> subprocess.Popen:
    env = {**os.environ, "LAKEHOUSE_ROOT": root, "DAGSTER_HOME": os.path.join(root, ".dagster_home")}
    env.pop("LAKEHOUSE_REDIS_URL", None)
    if redis_url:
        env["LAKEHOUSE_REDIS_URL"] = redis_url
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "serving.asgi:app", "--host", "127.0.0.1", "--port",
                             str(port), "--log-level", "warning", "--no-access-log", "--workers", str(workers)],
                            env=env, cwd=str(HERE.parent))
    deadline = time.monotonic() + 30
    import socket

    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        except OSError:
            time.sleep(0.1)
            continue
        import urllib.request

        # Wait out the start-up audit (it opens the Dagster instance): not part of what is measured.
        urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/status", timeout=600).read()
        return proc
    proc.kill()
    raise RuntimeError("the API server did not start")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def line(name: str, r: dict, target: str = "") -> None:
    print(f"{name:<34} {r['rps']:8.0f} req/s   p50 {r['p50']:7.1f} ms   p99 {r['p99']:7.1f} ms   "
          f"server CPU {r['cpu_ms']:6.2f} ms/req   ({r['n']} requests, {r['bytes'] / 1024:,.0f} KiB each){target}")


def render_page(port: int, screenshot: str | None = None) -> dict | None:
    if not (Path("/usr/bin/chromium").exists() and Path("/usr/bin/chromedriver").exists()):
        return None
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-background-networking", "--disable-dev-shm-usage",
                "--window-size=1600,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        t0 = time.perf_counter()
        driver.get(f"http://127.0.0.1:{port}/?refresh=3600")
        WebDriverWait(driver, 60).until(lambda d: d.execute_script("return window.lakehouseCoverage.renders") >= 1)
        loaded = time.perf_counter() - t0
        timings = driver.execute_script("return window.lakehouseCoverage.timings")
        if screenshot:
            driver.save_screenshot(screenshot)
        return {"load_s": loaded, **timings}
    finally:
        driver.quit()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--redis", default=os.environ.get("LAKEHOUSE_REDIS_URL"),
                        help="Redis URL for the shared cache (default: LAKEHOUSE_REDIS_URL; none: in-process cache)")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (lakehouse api --workers)")
    parser.add_argument("--symbols", type=int, default=100)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--no-coverage", action="store_true", help="skip the 100 x 365 coverage lakehouse")
    parser.add_argument("--screenshot", help="save the rendered coverage page as this PNG")
    args = parser.parse_args()

    tmp = tempfile.mkdtemp(prefix="bench-api-")
    procs = []
    try:
        root = os.path.join(tmp, "month")
        t0 = time.perf_counter()
        build_month(root)
        print(f"lakehouse: {SYMBOL} {MONTH[0]}..{MONTH[1]} through clean + resample, 100 scores; "
              f"built in {time.perf_counter() - t0:.1f}s; {args.clients} clients, {args.workers} worker(s), cache: "
              f"{'Redis' if args.redis else 'in-process'}")
        port = free_port()
        proc = start_server(root, args.redis, port, args.workers)
        procs.append(proc)
        server = psutil.Process(proc.pid)
        load_avg = os.getloadavg()[0]
        print(f"load average before: {load_avg:.1f} on {os.cpu_count()} cores (a shared machine makes req/s and "
              f"latency vary; server CPU per request does not)")
        r = load(port, "/v1/scores", args.requests, args.clients, server)
        ok = r["rps"] >= 1000 and r["p99"] < 50
        line("/v1/scores (cached)", r, f"  target >= 1000 req/s, p99 < 50 ms: {'OK' if ok else 'MISSED'}")
        month = f"/v1/bars/BTC-USDT?interval=1m&start={MONTH[0]}&end={MONTH[1]}"
        small = max(64, args.requests // 20)
        for fmt in ("json", "arrow"):
            res = load(port, f"{month}&format={fmt}", small, args.clients, server)
            line(f"symbol-month 1m bars as {fmt}", res, "  (CPU-bound: requests queue for the cores)")
        for fmt in ("json", "arrow"):
            one = load(port, f"{month}&format={fmt}", 20, 1, server)
            target = f"  target < 100 ms: {'OK' if one['p50'] < 100 else 'MISSED'}" if fmt == "arrow" else ""
            line(f"  same, {fmt}, 1 client at a time", one, target)
        rss = sum(p.memory_info().rss for p in [server, *server.children(recursive=True)])
        print(f"server RSS: {rss / 2**20:.0f} MiB (all workers)")

        if not args.no_coverage:
            cov_root = os.path.join(tmp, "coverage")
            t0 = time.perf_counter()
            build_coverage(cov_root, args.symbols, args.days)
            print(f"coverage lakehouse: {args.symbols} symbols x {args.days} days built in {time.perf_counter() - t0:.1f}s")
            cport = free_port()
            t0 = time.perf_counter()
            cproc = start_server(cov_root, None, cport)
            procs.append(cproc)
            print(f"start-up and first audit (cold: every file read once) {time.perf_counter() - t0:8.1f} s")
            import urllib.request

            for label in ("first request", "second (audit cached 5 s)"):
                t0 = time.perf_counter()
                body = urllib.request.urlopen(f"http://127.0.0.1:{cport}/v1/coverage").read()
                print(f"/v1/coverage {label:<24} {(time.perf_counter() - t0) * 1000:8.0f} ms  ({len(body) / 1024:,.0f} KiB)")
            time.sleep(5.1)
            t0 = time.perf_counter()
            urllib.request.urlopen(f"http://127.0.0.1:{cport}/v1/coverage").read()
            print(f"/v1/coverage {'after 5 s (last audit)':<24} {(time.perf_counter() - t0) * 1000:8.0f} ms  "
                  "(answered from the previous audit while a fresh one runs)")
            page = render_page(cport, args.screenshot)
            if page is None:
                print("page render: skipped (no /usr/bin/chromium)")
            else:
                print(f"page in headless Chromium: loaded and drawn in {page['load_s'] * 1000:.0f} ms "
                      f"(data fetch {page['fetch_ms']:.0f} ms, heatmap + tables {page['render_ms']:.0f} ms)")
            print(f"coverage server RSS: {psutil.Process(cproc.pid).memory_info().rss / 2**20:.0f} MiB")
    finally:
        for p in procs:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
