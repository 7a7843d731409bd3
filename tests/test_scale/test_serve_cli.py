"""`lakehouse serve` refuses what cannot work before starting anything (exit 2, one line naming the setting), and
cleans up after an earlier serve that was killed."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import cli

from helpers import free_port


@pytest.mark.parametrize("env, args, message", [
    ({}, ["--workers", "1"], "--workers 1 needs LAKEHOUSE_CELERY_BROKER_URL"),
    ({"LAKEHOUSE_CELERY_BROKER_URL": "amqp://guest:secret-pw@127.0.0.1:{port}//"}, [],
     "LAKEHOUSE_CELERY_BROKER_URL: cannot reach the broker at 127.0.0.1:{port}"),
    ({"LAKEHOUSE_POSTGRES_URL": "postgresql://postgres:secret-pw@127.0.0.1:{port}/x"}, ["--workers", "0"],
     "LAKEHOUSE_POSTGRES_URL: cannot reach PostgreSQL at 127.0.0.1:{port}"),
    ({"LAKEHOUSE_DAEMON_INTERVAL_S": "soon"}, ["--workers", "0"], "LAKEHOUSE_DAEMON_INTERVAL_S='soon' is not a number"),
])
def test_serve_refuses_bad_settings_with_exit_2_and_starts_nothing(env, args, message, monkeypatch, tmp_path):
    port = free_port()  # nothing listens there
    for key, value in env.items():
        monkeypatch.setenv(key, value.format(port=port))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    out = CliRunner().invoke(cli, ["serve", "--port", str(free_port()), *args])
    assert out.exit_code == 2 and message.format(port=port) in out.output, out.output
    assert "secret-pw" not in out.output and "Traceback" not in out.output
    assert "started" not in out.output


def test_serve_refuses_a_bucket_that_does_not_exist(s3_server, monkeypatch):
    for key, value in s3_server.env("no-such-bucket-serve").items():
        monkeypatch.setenv(key, value)
    out = CliRunner().invoke(cli, ["serve", "--workers", "0"])
    assert out.exit_code == 2 and "LAKEHOUSE_ROOT: bucket 'no-such-bucket-serve' does not exist" in out.output
    assert "lakehouse-test-secret" not in out.output


def test_a_slot_left_by_a_finished_run_is_freed_when_serve_starts_or_stops(instance, monkeypatch, capsys):
    # A stop can end a run's process right after its step claimed the pool: the run records its own failure
    # and the claim stays. Left to run monitoring, the next runs would wait up to a minute for it.
    from dagster import DagsterRunStatus
    from dagster._core.storage.dagster_run import DagsterRun

    from cli.serve import free_leftovers

    monkeypatch.setenv("DAGSTER_HOME", instance.root_directory)
    storage = instance.event_log_storage
    storage.set_concurrency_slots("exchange", 1)
    for when in ("start", "stop"):
        done = DagsterRun(job_name="__ASSET_JOB", status=DagsterRunStatus.FAILURE)
        instance.run_storage.add_run(done)
        assert storage.claim_concurrency_slot("exchange", done.run_id, "raw_ohlcv").is_claimed
        free_leftovers(when)
        assert storage.get_concurrency_info("exchange").claimed_slots == []
        assert f"run {done.run_id[:8]}" in capsys.readouterr().out


def _state(home, serve_pid: int, serve_started: float, groups: list[int]) -> None:
    from cli.serve import STATE_FILE
    from lakehouse.liveness import this_host

    (home / STATE_FILE).write_text(json.dumps({"by": {"host": this_host(), "pid": serve_pid,
                                                      "started": serve_started}, "groups": groups}))


def test_serve_refuses_to_start_beside_a_running_serve_on_the_same_home(monkeypatch, tmp_path):
    import psutil

    from cli.serve import STATE_FILE

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    other = subprocess.Popen(["sleep", "60"])  # alive: stands for the other serve
    try:
        _state(home, other.pid, psutil.Process(other.pid).create_time(), [])
        out = CliRunner().invoke(cli, ["serve", "--port", str(free_port()), "--workers", "0"])
    finally:
        other.kill()
        other.wait()
    assert out.exit_code == 2, out.output
    assert f"another lakehouse serve (pid {other.pid} on" in out.output and f"kill {other.pid}" in out.output
    assert "started" not in out.output and "Traceback" not in out.output
    assert (home / STATE_FILE).exists()  # that serve's record stays: it is still running


def test_leftovers_of_a_killed_serve_are_stopped_and_nothing_else(tmp_path, capsys):
    # A dead serve's record names two process groups: one still holds a process of this DAGSTER_HOME (a child
    # it left), the other now belongs to something else (a reused group id); only the first is stopped.
    from cli.leftovers import stop_leftovers
    from cli.serve import STATE_FILE

    home, other = tmp_path / "home", tmp_path / "other"
    home.mkdir()
    left = subprocess.Popen(["sleep", "60"], start_new_session=True, env=dict(os.environ, DAGSTER_HOME=str(home)))
    stranger = subprocess.Popen(["sleep", "60"], start_new_session=True,
                                env=dict(os.environ, DAGSTER_HOME=str(other)))
    try:
        gone = subprocess.Popen(["true"])
        gone.wait()
        _state(home, gone.pid, time.time() - 5, [left.pid, stranger.pid])
        assert stop_leftovers(home / STATE_FILE, home, "serve", grace_s=5) == {left.pid}
        assert f"stopping the 1 it left (pids {left.pid})" in capsys.readouterr().out
        left.wait(timeout=10)  # stopped (and reaped by the cleanup, so its exit status is not ours to see)
        assert not _alive(left.pid) and stranger.poll() is None
        assert not (home / STATE_FILE).exists()
        (home / STATE_FILE).write_text("{not json")  # a damaged record is dropped, nothing signalled
        assert stop_leftovers(home / STATE_FILE, home, "serve", grace_s=5) == set()
        assert not (home / STATE_FILE).exists() and stranger.poll() is None
    finally:
        for proc in (left, stranger):
            proc.kill()
            proc.wait()


def test_a_serve_killed_with_sigkill_is_cleaned_up_by_the_next_one(monkeypatch, tmp_path):
    # End to end: the first serve's webserver and daemon outlive its SIGKILL (their own process groups); the
    # next serve stops them before starting its own, and a Ctrl-C then leaves no process of either.
    from cli.serve import STATE_FILE

    port = free_port()
    env = dict(os.environ, DAGSTER_HOME=str(tmp_path / "home"), LAKEHOUSE_ROOT=str(tmp_path / "lake"))
    lakehouse = str(Path(sys.executable).parent / "lakehouse")

    def start(name: str) -> tuple[subprocess.Popen, Path]:
        log = tmp_path / f"{name}.log"
        proc = subprocess.Popen([lakehouse, "serve", "--port", str(port), "--workers", "0"], env=env,
                                stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=tmp_path)
        deadline = time.monotonic() + 120
        while "Dagster UI:" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.3)
        return proc, log

    first, _ = start("first")
    groups = json.loads((tmp_path / "home" / STATE_FILE).read_text())["groups"]
    first.kill()
    first.wait()
    assert all(_alive(pid) for pid in groups)  # what the next serve has to deal with
    second, log = start("second")
    try:
        assert "the previous lakehouse serve" in log.read_text() and "ended without stopping" in log.read_text()
        assert not any(_alive(pid) for pid in groups)
        mine = json.loads((tmp_path / "home" / STATE_FILE).read_text())["groups"]
    finally:
        second.send_signal(signal.SIGINT)
        assert second.wait(timeout=60) == 0, log.read_text()[-2000:]
    assert not any(_alive(pid) for pid in mine)
    assert not (tmp_path / "home" / STATE_FILE).exists()


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_a_lakehouse_dev_killed_with_sigkill_is_cleaned_up_by_the_next_one(tmp_path):
    # `lakehouse dev` becomes `dagster dev`, whose webserver, daemon and code server outlive a SIGKILL of it.
    from cli.dev import STATE_FILE

    port = free_port()
    env = dict(os.environ, DAGSTER_HOME=str(tmp_path / "home"), LAKEHOUSE_ROOT=str(tmp_path / "lake"))
    lakehouse = str(Path(sys.executable).parent / "lakehouse")

    def start(name: str) -> tuple[subprocess.Popen, Path]:
        log = tmp_path / f"{name}.log"
        proc = subprocess.Popen([lakehouse, "dev", "--port", str(port), "--no-demo"], env=env, cwd=tmp_path,
                                stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 120
        # The UI line comes once leftovers are dealt with, just before `dagster dev` takes over.
        while "Dagster UI:" not in log.read_text() or not _answers(port):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.3)
        return proc, log

    first, _ = start("first")
    group = [p.pid for p in _group(first.pid)]
    first.kill()
    first.wait()
    time.sleep(1)
    assert _answers(port) and any(_alive(pid) for pid in group)  # what the next one has to deal with
    second, log = start("second")
    try:
        assert "the previous lakehouse dev" in log.read_text() and "ended without stopping" in log.read_text()
        assert not any(_alive(pid) for pid in group)
        assert json.loads((tmp_path / "home" / STATE_FILE).read_text())["groups"] == [second.pid]
        mine = [p.pid for p in _group(second.pid)]
    finally:
        os.killpg(second.pid, signal.SIGINT)  # Ctrl-C in its terminal reaches its whole process group
        second.wait(timeout=60)
    deadline = time.monotonic() + 30
    while any(_alive(pid) for pid in mine) and time.monotonic() < deadline:
        time.sleep(0.3)
    assert not any(_alive(pid) for pid in mine)


def _answers(port: int) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2):
            return True
    except OSError:
        return False


def _group(pgid: int) -> list:
    import psutil

    out = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid:
                out.append(proc)
        except (OSError, psutil.Error):
            pass
    return out
