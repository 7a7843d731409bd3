"""A killed, interrupted or waiting CLI never wedges the instance: real `lakehouse` subprocesses on a real
temporary Dagster instance (the project's dagster.yaml: pool `exchange` limit 1), real ccxt over HTTP to the
loopback emulator with latency, real signals."""

from __future__ import annotations

import datetime as dt
import os
import pty
import re
import select
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import json

import polars as pl
import psutil
import pytest
from click.testing import CliRunner
from dagster import DagsterInstance, DagsterRunStatus, RunsFilter
from dagster._core.storage.dagster_run import DagsterRun

from cli.instance import PROJECT_ROOT
from cli.main import cli
from lakehouse.exchange.emulator import BinanceEmulator
from lakehouse.exchange.simulated import SimulatedSource
from lakehouse.liveness import ProcessStamp
from lakehouse.run_tags import range_tags
from lakehouse.timeutil import utc_today

from helpers import exited_process_stamp

LAKEHOUSE = str(Path(sys.executable).parent / "lakehouse")
POOL = "exchange"
UNFINISHED = [DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING, DagsterRunStatus.STARTED,
              DagsterRunStatus.CANCELING]


@pytest.fixture
def home(tmp_path, monkeypatch):
    """DAGSTER_HOME with the project's dagster.yaml; progress lines every half second."""
    path = Path(os.environ["DAGSTER_HOME"])
    shutil.copy(PROJECT_ROOT / "dagster.yaml", path / "dagster.yaml")
    monkeypatch.setenv("LAKEHOUSE_PROGRESS_INTERVAL_S", "0.5")
    return path


@pytest.fixture
def instance(home):
    inst = DagsterInstance.from_config(str(home))
    yield inst
    inst.dispose()


@pytest.fixture
def emulator(monkeypatch):
    # 250 ms per response: a range run holds the exchange slot for a few seconds, long enough to kill it.
    with BinanceEmulator(source=SimulatedSource(outage_rate=0.0), latency_ms=250) as emu:
        monkeypatch.setenv("LAKEHOUSE_EXCHANGE", "binance")
        monkeypatch.setenv("LAKEHOUSE_EXCHANGE_URL", emu.url)
        yield emu


def track(*symbols, start: dt.date) -> None:
    result = CliRunner().invoke(cli, ["symbols", "add", *symbols, "--start", str(start)])
    assert result.exit_code == 0, result.output


def lakehouse(*args, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run([LAKEHOUSE, *args], capture_output=True, text=True, timeout=timeout, env=dict(os.environ))


def start(tmp_path, *args) -> tuple[subprocess.Popen, Path]:
    err = tmp_path / f"stderr-{uuid.uuid4().hex[:6]}.txt"
    proc = subprocess.Popen([LAKEHOUSE, *args], stdout=subprocess.DEVNULL, stderr=err.open("w"), env=dict(os.environ))
    return proc, err


def wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def slot_holders(instance) -> list[str]:
    storage = instance.event_log_storage
    if POOL not in storage.get_concurrency_keys():
        return []
    return [s.run_id for s in storage.get_concurrency_info(POOL).claimed_slots]


def queued_claims(instance, run_id: str) -> list:
    return [p for p in instance.event_log_storage.get_concurrency_info(POOL).pending_steps if p.run_id == run_id]


def fake_run(instance, symbol: str, day: dt.date, stamp: ProcessStamp, status=DagsterRunStatus.STARTED) -> str:
    """A run as another process left it: its tags, its process stamp, its status."""
    run = DagsterRun(job_name="__ephemeral_asset_job__", status=status,
                     tags={**range_tags(symbol, day, day), "lakehouse/launched_by": "cli", **stamp.as_tags()})
    instance.run_storage.add_run(run)
    return run.run_id


def hold_slot(instance, run_id: str, pool: str = POOL) -> None:
    storage = instance.event_log_storage
    if pool not in storage.get_concurrency_keys():
        storage.set_concurrency_slots(pool, 1)
    assert storage.claim_concurrency_slot(pool, run_id, "raw_ohlcv").is_claimed


def days(first: dt.date, last: dt.date) -> list[dt.date]:
    return [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]


def raw_file(symbol: str, day: dt.date, exchange: str = "binance") -> Path:
    return (Path(os.environ["LAKEHOUSE_ROOT"]) / "raw_ohlcv" / f"exchange={exchange}"
            / f"symbol={symbol.replace('/', '-')}" / f"date={day}" / "part.parquet")


def test_kill_9_mid_backfill_then_another_backfill_and_a_repair_finish(tmp_path, home, instance, emulator):
    # Up to today, so the repair afterwards has exactly the dead run's partitions to do.
    first, last = utc_today() - dt.timedelta(days=1), utc_today()
    track("BTC/USDT", "ETH/USDT", start=first)
    proc, _ = start(tmp_path, "backfill", "--start", str(first), "--end", str(last))
    holder = wait_until(lambda: slot_holders(instance), 60, "the backfill's run to claim the exchange slot")[0]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    # The wedge, as a kill -9 leaves it: the run stays unfinished and keeps the only exchange slot.
    assert instance.get_run_by_id(holder).status in UNFINISHED and slot_holders(instance) == [holder]

    second = lakehouse("backfill", "--symbols", "ETH/USDT", "--start", str(first), "--end", str(last),
                       "--timeout", "80s")
    assert second.returncode == 0, second.stderr
    # Both symbols have the same days, so the killed backfill had them in one run.
    assert f"run {holder[:8]} (BTC/USDT..ETH/USDT {first}..{last}, cli, pid {proc.pid} on" in second.stderr
    assert "but its process is gone: marked failed, its pool slots freed" in second.stderr
    dead = instance.get_run_by_id(holder)
    assert dead.status == DagsterRunStatus.FAILURE
    assert all(raw_file("ETH/USDT", d).exists() for d in days(first, last))

    # The dead run's partitions are not "in flight" any more: the repair refetches them, and finishes.
    repair = lakehouse("repair", "--timeout", "80s")
    assert repair.returncode == 0, repair.stdout + repair.stderr
    assert "0 partitions in flight" in repair.stdout
    assert f"refetch  BTC/USDT     {first}..{last}" in repair.stdout and "1 run(s): 1 succeeded" in repair.stdout
    assert pl.read_parquet(raw_file("BTC/USDT", first)).height == 1440 and raw_file("BTC/USDT", last).exists()
    assert slot_holders(instance) == []
    assert instance.get_runs_count(RunsFilter(statuses=UNFINISHED)) == 0


def test_ctrl_c_cancels_the_run_frees_its_slot_keeps_what_was_written_and_exits_130(tmp_path, home, instance,
                                                                                  emulator):
    first, last = utc_today() - dt.timedelta(days=4), utc_today() - dt.timedelta(days=1)
    track("BTC/USDT", start=first)
    proc, err = start(tmp_path, "backfill", "--start", str(first), "--end", str(last))
    run_id = wait_until(lambda: slot_holders(instance), 60, "the backfill's run to claim the exchange slot")[0]
    time.sleep(1.0)  # mid-fetch
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    assert proc.wait(15) == 130
    assert time.monotonic() - sent < 5
    stderr = err.read_text()
    assert "backfill interrupted by SIGINT" in stderr and f"run {run_id} canceled; its pool slots freed" in stderr
    # Said straight to the user's stderr, not into the interrupted run's compute log.
    assert not any("interrupted" in f.read_text() for f in home.glob("storage/*/compute_logs/*.err"))
    assert instance.get_run_by_id(run_id).status == DagsterRunStatus.CANCELED
    assert slot_holders(instance) == [] and queued_claims(instance, run_id) == []
    # What finished stays, whole: every partition file present is a readable, complete day.
    for day in days(first, last):
        if raw_file("BTC/USDT", day).exists():
            assert pl.read_parquet(raw_file("BTC/USDT", day)).height == 1440


def test_the_bar_advances_on_the_terminal_while_the_run_fetches(tmp_path, home, instance, emulator):
    # While a step runs, Dagster points the process's stderr at a compute-log file; the bar must keep drawing on
    # the user's terminal all the same, not freeze at 0 and jump to the end.
    first, last = utc_today() - dt.timedelta(days=6), utc_today() - dt.timedelta(days=1)
    track("BTC/USDT", start=first)
    terminal, child_end = pty.openpty()
    proc = subprocess.Popen([LAKEHOUSE, "backfill", "--start", str(first), "--end", str(last), "--assets", "raw_ohlcv"],
                            stdout=subprocess.DEVNULL, stderr=child_end,
                            # one request at a time: the days land one by one, 0.5 s apart
                            env={**os.environ, "COLUMNS": "200", "LAKEHOUSE_FETCH_CONCURRENCY": "1"})
    os.close(child_end)
    shown = b""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        ready, _, _ = select.select([terminal], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(terminal, 65536)
            except OSError:  # the terminal's other end is closed: the command and its helpers are gone
                break
            if not chunk:
                break
            shown += chunk
        elif proc.poll() is not None:
            break
    os.close(terminal)
    assert proc.wait(30) == 0, shown[-2000:]
    counts = [(int(done), int(total)) for done, total in re.findall(rb"(\d+)/(\d+)", shown)]
    assert (6, 6) in counts, shown[-2000:]
    assert any(0 < done < total for done, total in counts), shown[-2000:]
    # Before the first day lands, it says what it is waiting for.
    assert f"starting the run for BTC/USDT {first}..{last}".encode() in shown
    assert b"loading binance's markets" in shown
    # Nothing the command says lands in the run's compute log.
    assert not any("backfill" in f.read_text() for f in home.glob("storage/*/compute_logs/*.err"))


def test_a_wait_for_a_held_slot_says_who_holds_it_and_ends_at_timeout(tmp_path, home, instance):
    day = utc_today() - dt.timedelta(days=1)
    track("BTC/USDT", start=day)
    holder = fake_run(instance, "ETH/USDT", day, ProcessStamp.current())  # a live process: this test
    hold_slot(instance, holder)
    started = time.monotonic()
    result = lakehouse("backfill", "--start", str(day), "--end", str(day), "--timeout", "4s", timeout=60)
    assert result.returncode == 3, result.stderr
    assert time.monotonic() - started < 40
    waiting = f"waiting for a slot in pool 'exchange', held by run {holder[:8]} (ETH/USDT {day}, cli, pid {os.getpid()}"
    # The progress line, while waiting: what for, who holds it, since when, for how long.
    lines = [line for line in result.stderr.splitlines() if line.startswith("backfill: 0/") and waiting in line]
    assert lines and " since " in lines[-1] and "; waited " in lines[-1], result.stderr
    assert f"backfill timed out after 4s (--timeout) {waiting}" in result.stderr
    # A live holder keeps its slot; the timed-out backfill left nothing running.
    assert slot_holders(instance) == [holder]
    assert [r.run_id for r in instance.get_runs(RunsFilter(statuses=UNFINISHED))] == [holder]


def test_sigterm_while_waiting_for_a_slot_exits_143_at_once(tmp_path, home, instance):
    day = utc_today() - dt.timedelta(days=1)
    track("BTC/USDT", start=day)
    holder = fake_run(instance, "ETH/USDT", day, ProcessStamp.current())
    hold_slot(instance, holder)
    proc, err = start(tmp_path, "backfill", "--start", str(day), "--end", str(day))
    wait_until(lambda: "waiting for a slot in pool 'exchange'" in err.read_text(), 60, "the waiting line")
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 143
    assert time.monotonic() - sent < 5
    assert "backfill interrupted by SIGTERM" in err.read_text()
    assert slot_holders(instance) == [holder]


def test_health_reports_a_run_without_process_and_a_slot_held_by_a_finished_run(home, instance):
    day = utc_today() - dt.timedelta(days=1)
    dead = fake_run(instance, "BTC/USDT", day, exited_process_stamp())
    hold_slot(instance, dead)
    finished = fake_run(instance, "ETH/USDT", day, ProcessStamp.current(), status=DagsterRunStatus.SUCCESS)
    hold_slot(instance, finished, pool="other_pool")
    alive = fake_run(instance, "SOL/USDT", day, ProcessStamp.current())  # this test: alive, not reported

    result = CliRunner().invoke(cli, ["health", "--json"])
    doc = json.loads(result.output)
    stuck = next(c for c in doc["components"] if c["component"] == "stuck_runs")
    assert stuck["state"] == "degraded" and result.exit_code == 1
    assert [d["run_id"] for d in stuck["details"]["dead_runs"]] == [dead]
    assert [(s["run_id"], s["pool"], s["status"]) for s in stuck["details"]["leaked_slots"]] == [
        (finished, "other_pool", "SUCCESS")]
    assert f"run {dead[:8]} (BTC/USDT {day}, cli, pid" in stuck["reason"]
    assert f"run {finished[:8]} (SUCCESS) holds a slot in pool 'other_pool'" in stuck["reason"]
    # Reading is not repairing: health changed nothing.
    assert instance.get_run_by_id(dead).status == DagsterRunStatus.STARTED and slot_holders(instance) == [dead]

    text = CliRunner().invoke(cli, ["health"]).output
    assert "stuck_runs     degraded  1 run(s) with no live process, 1 pool slot(s) held by finished runs" in text
    assert alive not in text


def test_a_holder_that_dies_while_a_backfill_waits_is_failed_and_the_backfill_goes_on(tmp_path, home, instance):
    day = utc_today() - dt.timedelta(days=1)
    track("BTC/USDT", start=day)
    worker = subprocess.Popen(["sleep", "60"])  # the holder's process, alive for now
    stamp = ProcessStamp(ProcessStamp.current().host, worker.pid, psutil.Process(worker.pid).create_time())
    holder = fake_run(instance, "ETH/USDT", day, stamp)
    hold_slot(instance, holder)
    proc, err = start(tmp_path, "backfill", "--start", str(day), "--end", str(day), "--assets", "raw_ohlcv")
    try:
        wait_until(lambda: f"held by run {holder[:8]}" in err.read_text(), 60, "the waiting line")
        worker.kill()
        worker.wait()
        assert proc.wait(60) == 0, err.read_text()
    finally:
        proc.kill()
        worker.kill()
    assert "but its process is gone: marked failed, its pool slots freed" in err.read_text()
    assert instance.get_run_by_id(holder).status == DagsterRunStatus.FAILURE
    assert pl.read_parquet(raw_file("BTC/USDT", day, "simulated")).height > 0
