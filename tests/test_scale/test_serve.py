"""`lakehouse serve --workers 2` on PostgreSQL + RabbitMQ + a loopback S3 server, fed by the Binance emulator:
a backfill whose data equals the emulator's, repair of a deleted object, a worker killed mid-step, and the
webserver + daemon restarted mid-backfill. Every process is stopped by PID (its process group)."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import requests

from lakehouse.exchange.emulator import BinanceEmulator
from lakehouse.exchange.simulated import SimulatedSource
from lakehouse.schema import RAW_OHLCV
from lakehouse.storage import Storage
from lakehouse.timeutil import DAY_MS, day_start_ms

from helpers import free_port, service_reachable

pytestmark = pytest.mark.services

BIN = Path(sys.executable).parent
# Recent days: the emulator serves real-time candles, and repair audits from the symbol's start to today.
D1 = dt.datetime.now(dt.timezone.utc).date() - dt.timedelta(days=2)
D2 = D1 + dt.timedelta(days=1)
BROKER = "amqp://guest:guest@127.0.0.1:5672//"


class Serve:
    def __init__(self, env: dict, log: Path):
        self.env, self.log_path = env, log
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 90) -> "Serve":
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([str(BIN / "lakehouse"), "serve", "--port", str(self.port), "--workers", "2"],
                                     env=self.env, stdout=open(self.log_path, "ab"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout_s
        query = "{ instance { daemonHealth { allDaemonStatuses { daemonType healthy } } } repositoriesOrError { __typename } }"
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log()
            try:
                data = requests.post(f"{self.url}/graphql", json={"query": query}, timeout=3).json()["data"]
                healthy = {d["daemonType"]: d["healthy"] for d in data["instance"]["daemonHealth"]["allDaemonStatuses"]}
                if healthy.get("BACKFILL") and healthy.get("QUEUED_RUN_COORDINATOR") and self.workers():
                    return self
            except (requests.RequestException, ValueError, KeyError, TypeError):
                pass
            time.sleep(0.5)
        raise AssertionError(f"lakehouse serve not ready:\n{self.log()}")

    def workers(self) -> list[psutil.Process]:
        """The Celery worker main processes serve started."""
        out = []
        for child in psutil.Process(self.proc.pid).children():
            try:
                if "celery" in " ".join(child.cmdline()):
                    out.append(child)
            except psutil.NoSuchProcess:
                pass
        return out

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def stop(self, timeout_s: float = 40) -> tuple[int | None, list[str]]:
        """SIGTERM serve (it stops its children): its exit code and what of its process tree outlived it
        (killed here by PID so nothing leaks into later tests)."""
        if self.proc is None or self.proc.poll() is not None:
            return (self.proc.returncode if self.proc else 0), []
        tree = [psutil.Process(self.proc.pid), *psutil.Process(self.proc.pid).children(recursive=True)]
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            code = None
        _gone, alive = psutil.wait_procs(tree, timeout=2)
        leftover = []
        for p in alive:
            try:
                leftover.append(" ".join(p.cmdline())[:120])
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=5)
        return code, leftover


@pytest.fixture(scope="module")
def stack(tmp_path_factory, s3_server):
    if not service_reachable("127.0.0.1", 5672):
        pytest.skip("RabbitMQ is not reachable on 127.0.0.1:5672")
    if not service_reachable("127.0.0.1", 5432):
        pytest.skip("PostgreSQL is not reachable on 127.0.0.1:5432")
    import psycopg2
    import uuid

    base = tmp_path_factory.mktemp("serve")
    db = f"lakehouse_serve_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres")
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{db}"')
    source = SimulatedSource(outage_rate=0.0)
    emulator = BinanceEmulator(source=source).start()
    bucket = s3_server.new_bucket()
    env = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_URL",)}
    env.update(s3_server.env(bucket), DAGSTER_HOME=str(base / "home"), LAKEHOUSE_EXCHANGE="binance",
               LAKEHOUSE_EXCHANGE_URL=emulator.url, LAKEHOUSE_POSTGRES_URL=f"postgresql://postgres@127.0.0.1:5432/{db}",
               LAKEHOUSE_CELERY_BROKER_URL=BROKER, LAKEHOUSE_DAEMON_INTERVAL_S="1", LAKEHOUSE_REPAIR_INTERVAL_S="3600",
               LAKEHOUSE_PROGRESS_INTERVAL_S="1")
    _purge_queue(env)
    serve = Serve(env, base / "serve.log")
    try:
        t0 = time.monotonic()
        serve.start()
        print(f"serve ready in {time.monotonic() - t0:.1f}s")
        yield {"serve": serve, "env": env, "source": source, "emulator": emulator, "base": base, "db": db}
    finally:
        serve.stop()
        emulator.stop()
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        admin.close()
        _purge_queue(env)


def _purge_queue(env):
    """Leftover step messages of an earlier, killed test session must not reach these workers."""
    subprocess.run([str(BIN / "celery"), "-A", "resources.celery_steps", "purge", "-f", "-Q", "dagster"],
                   env=env, capture_output=True, timeout=60, cwd=str(Path(__file__).resolve().parents[2]))


def lakehouse(stack, *args, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "lakehouse"), *args], env=stack["env"], capture_output=True, text=True,
                          timeout=timeout)


def s3_storage(stack) -> Storage:
    os.environ.update({k: stack["env"][k] for k in ("LAKEHOUSE_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID",
                                                    "AWS_SECRET_ACCESS_KEY", "AWS_REGION")})
    return Storage(stack["env"]["LAKEHOUSE_ROOT"])


def assert_equals_emulator(stack, symbol, days):
    storage = s3_storage(stack)
    for day in days:
        df = storage.read_partition(RAW_OHLCV, "binance", symbol, day)
        assert df is not None, f"{symbol} {day} missing"
        stored = df.select(df.columns[:6]).with_columns(df["timestamp"].cast(int)).to_numpy().astype(float)
        truth = np.asarray(stack["source"].candles(symbol, day_start_ms(day), day_start_ms(day) + DAY_MS), dtype=float)
        np.testing.assert_array_equal(stored, truth[:, :6], err_msg=f"{symbol} {day}")


def instance_of(stack):
    from dagster import DagsterInstance

    from cli.instance import ensure_dagster_home

    os.environ["DAGSTER_HOME"] = stack["env"]["DAGSTER_HOME"]
    os.environ["LAKEHOUSE_POSTGRES_URL"] = stack["env"]["LAKEHOUSE_POSTGRES_URL"]
    ensure_dagster_home()
    return DagsterInstance.get()


def slots_in_use(stack) -> int:
    with instance_of(stack) as instance:
        info = instance.event_log_storage.get_concurrency_info("exchange")
        assert info.limit == 1  # the pool still bounds exchange steps across every worker
        return len(info.claimed_slots) + len(info.pending_steps)


def wait_for_no_slots(stack, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while slots_in_use(stack):
        if time.monotonic() > deadline:
            with instance_of(stack) as instance:
                info = instance.event_log_storage.get_concurrency_info("exchange")
                held = [(c.run_id, c.step_key) for c in info.claimed_slots]
                pending = [(p.run_id, p.step_key) for p in info.pending_steps]
            raise AssertionError(f"exchange slots still held after {timeout_s}s: claimed {held}, pending {pending}\n"
                                 + stack["serve"].log())
        time.sleep(1)


def run_ids(stack) -> set[str]:
    with instance_of(stack) as instance:
        return {r.run_id for r in instance.get_runs()}


def wait_for_step_start(stack, before: set[str], timeout_s=120) -> str:
    """The id of the newest run (not in `before`) once its raw_ohlcv step has started on a worker."""
    from dagster import DagsterEventType

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with instance_of(stack) as instance:
            runs = instance.get_runs(limit=1)
            if runs and runs[0].run_id not in before:
                events = instance.all_logs(runs[0].run_id, of_type=DagsterEventType.STEP_START)
                if events:
                    return runs[0].run_id
        time.sleep(0.5)
    raise AssertionError("no step started:\n" + stack["serve"].log())


def test_a_backfill_survives_a_webserver_and_daemon_restart_runs_on_celery_and_equals_the_emulator(stack):
    serve = stack["serve"]
    add = lakehouse(stack, "symbols", "add", "BTC/USDT", "ETH/USDT", "--start", str(D1))
    assert add.returncode == 0, add.stderr + add.stdout
    # One slow klines answer keeps the first run busy while the deployment restarts under it.
    stack["emulator"].inject("timeout", count=1, delay=6)
    before = run_ids(stack)
    launched = lakehouse(stack, "backfill", "--url", serve.url, "--symbols", "BTC/USDT,ETH/USDT", "--start", str(D1),
                         "--end", str(D2), "--assets", "raw_ohlcv", "--no-wait", "--json")
    assert launched.returncode == 0, launched.stderr
    backfill_id = json.loads(launched.stdout)["backfill_id"]
    wait_for_step_start(stack, before)
    # SIGTERM: serve stops its webserver, daemon, workers (and their runs) and exits 0, leaving no process.
    assert serve.stop() == (0, [])
    serve.start()
    deadline = time.monotonic() + 180
    status = None
    error = None
    while time.monotonic() < deadline:
        with instance_of(stack) as instance:
            backfill = instance.get_backfill(backfill_id)
        status, error = backfill.status.value, backfill.error
        if status != "REQUESTED":
            break
        time.sleep(1)
    # A backfill the daemon gave up on (FAILING, then FAILED) keeps the exception that made it: say it, and the
    # daemon's lines about it from both serve processes (the log's tail alone may only hold the second).
    why = error.to_string() if error is not None else "no error recorded on the backfill"
    said = "\n".join(line for line in serve.log_path.read_text(errors="replace").splitlines() if "ackfill" in line)
    assert status == "COMPLETED_SUCCESS", f"{status}: {why}\n{said[-4000:]}\n{serve.log()}"
    assert_equals_emulator(stack, "BTC/USDT", [D1, D2])
    assert_equals_emulator(stack, "ETH/USDT", [D1, D2])
    # A claim left by the run the restart interrupted (its step re-queued on the broker) is freed without a
    # person: by serve when it fails that run, or by run monitoring (free_slots_after_run_end_seconds).
    wait_for_no_slots(stack, timeout_s=120)
    with instance_of(stack) as instance:
        spans = []
        for run in instance.get_runs():
            if run.run_id in before:
                continue
            logs = instance.all_logs(run.run_id)
            raw = [(e.timestamp, e.dagster_event.event_type_value) for e in logs
                   if e.dagster_event and e.step_key == "raw_ohlcv"]
            done = [t for t, kind in raw if kind == "STEP_SUCCESS"]
            if done:
                # The step ran on a Celery worker, not in the run's own process...
                assert any('Submitting celery task for step "raw_ohlcv"' in (e.message or "") for e in logs)
                spans.append((max(t for t, kind in raw if kind == "STEP_START" and t <= done[0]), done[0]))
        # ...and no two runs' exchange steps overlapped, though two workers were free: the pool held.
        spans.sort()
        assert spans and all(end <= nxt for (_, end), (nxt, _) in zip(spans, spans[1:])), spans


def test_repair_heals_a_deleted_object_even_when_its_worker_is_killed_mid_step(stack):
    serve = stack["serve"]
    storage = s3_storage(stack)
    assert storage.delete_partition(RAW_OHLCV, "binance", "BTC/USDT", D1)
    stack["emulator"].inject("timeout", count=1, delay=6)
    before = run_ids(stack)
    launch = subprocess.Popen([str(BIN / "lakehouse"), "repair", "--url", serve.url, "--json"],
                              env=stack["env"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_step_start(stack, before)
        killed = []
        for worker in serve.workers():
            for pool_child in worker.children():  # the prefork process that executes the step
                pool_child.kill()
                killed.append(pool_child.pid)
        assert killed
        out, err = launch.communicate(timeout=180)
    finally:
        if launch.poll() is None:
            launch.kill()
            launch.wait()
    # The lost step went back to the queue and ran again: the run succeeded, the object is whole again.
    assert launch.returncode == 0, err + serve.log()
    assert_equals_emulator(stack, "BTC/USDT", [D1])
    wait_for_no_slots(stack, timeout_s=120)
