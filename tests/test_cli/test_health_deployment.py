"""`lakehouse health` and the notification sensors on a real deployment: dagster-webserver + dagster-daemon on
loopback (tests/deployment.py), the CLI as a subprocess, a real webhook receiver.

One deployment serves the module. The order matters: first a healthy deployment (exit 0), then a failed run,
which the daemon's run failure sensor posts to the receiver and health reports as a failure rate.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dagster import DagsterInstance

from assets.partitions import SYMBOLS_PARTITION
from cli.dagster_api import DagsterAPI
from lakehouse.notify import redact

from deployment import Deployment
from webhook_receiver import WebhookReceiver

pytestmark = pytest.mark.deployment

LAKEHOUSE = str(Path(sys.executable).parent / "lakehouse")
FAILURE_SENSOR_TICKS = """
{ repositoriesOrError { ... on RepositoryConnection { nodes { sensors { name sensorState { ticks(limit: 1) { status } } } } } }
  instance { daemonHealth { allDaemonStatuses { daemonType required lastHeartbeatTime } } } }"""


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    with WebhookReceiver() as hook:
        d = Deployment(tmp_path_factory.mktemp("health_deployment"),
                       env={"LAKEHOUSE_WEBHOOK_URL": hook.url, "LAKEHOUSE_UI_URL": "http://127.0.0.1:3000",
                            "LAKEHOUSE_NOTIFY_INTERVAL_S": "2"})
        try:
            d.start()
            _wait_until_every_daemon_beat_and_the_failure_sensor_ticked(d)
            yield d, hook
        finally:
            d.stop()


def _wait_until_every_daemon_beat_and_the_failure_sensor_ticked(d: Deployment, timeout_s: float = 60) -> None:
    """A run that fails before the run failure sensor's first tick is older than its cursor and never reported."""
    api = DagsterAPI(d.url, timeout=5)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            data = api.query(FAILURE_SENSOR_TICKS)
            ticks = [s["sensorState"]["ticks"] for repo in data["repositoriesOrError"]["nodes"] for s in repo["sensors"]
                     if s["name"] == "lakehouse_notify_run_failure"]
            beats = [b["lastHeartbeatTime"] for b in data["instance"]["daemonHealth"]["allDaemonStatuses"] if b["required"]]
            if ticks and ticks[0] and all(beats):
                return
            time.sleep(0.5)
    finally:
        api.close()
    raise RuntimeError(f"deployment never settled:\n{d.log_tail()}")


def lakehouse(d: Deployment, *args, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, DAGSTER_HOME=str(d.home), LAKEHOUSE_ROOT=str(d.root), **d.extra_env)
    return subprocess.run([LAKEHOUSE, *args], env=env, capture_output=True, text=True, timeout=timeout)


def states(doc: dict) -> dict:
    return {c["component"]: c["state"] for c in doc["components"]}


def test_a_live_deployment_is_healthy_through_its_api_and_its_instance(live):
    d, hook = live
    result = lakehouse(d, "health", "--url", d.url, "--json")
    doc = json.loads(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (doc["state"], doc["mode"], doc["target"]) == ("ok", "remote", d.url)
    assert set(states(doc).values()) == {"ok"}
    reasons = {c["component"]: c["reason"] for c in doc["components"]}
    assert reasons["storage"] == f"deployment {d.url} answers (Dagster 1.13.27)"
    assert reasons["daemon"].endswith("ago)") and "daemons heartbeating" in reasons["daemon"]
    assert reasons["repair_sensor"].startswith("lakehouse_repair running")
    assert reasons["notifications"] == f"webhook {redact(hook.url)}; nothing sent yet"

    # The same deployment read straight from its instance (what `lakehouse health` does next to `lakehouse dev`).
    local = lakehouse(d, "health")
    assert local.returncode == 0, local.stdout + local.stderr
    assert local.stdout.splitlines()[0] == f"OK: every component ok (local: {d.home})"


def test_a_failed_run_reaches_the_webhook_through_the_daemon_and_health_counts_it(live):
    d, hook = live
    instance = DagsterInstance.from_config(str(d.home))
    try:
        instance.add_dynamic_partitions(SYMBOLS_PARTITION, ["FOO/USDT"])  # the simulated exchange does not list it
    finally:
        instance.dispose()
    # In-process, as `lakehouse backfill` runs without --url: a run with no code location, still watched.
    backfill = lakehouse(d, "backfill", "--symbols", "FOO/USDT", "--start", "2024-03-10", "--end", "2024-03-10",
                         "--assets", "raw_ohlcv", "--json")
    assert backfill.returncode == 1
    run_id = json.loads(backfill.stdout)["failed"][0]["run_id"]

    deadline = time.monotonic() + 75  # the run failure sensor ticks every LAKEHOUSE_NOTIFY_INTERVAL_S
    while not hook.messages and time.monotonic() < deadline:
        time.sleep(0.5)
    assert len(hook.messages) == 1, d.log_tail()
    lines = hook.messages[0]["text"].splitlines()
    assert lines[:2] == ["[FAIL] lakehouse run failed: raw_ohlcv for FOO/USDT 2024-03-10", f"run {run_id}"]
    assert "simulated does not list FOO/USDT" in lines[2]
    assert lines[-1] == f"Open the run in Dagster: http://127.0.0.1:3000/runs/{run_id}"

    result = lakehouse(d, "health", "--url", d.url, "--json")
    doc = json.loads(result.stdout)
    assert (result.returncode, doc["state"], doc["reason"]) == (1, "degraded", "runs degraded")
    reasons = {c["component"]: c["reason"] for c in doc["components"]}
    assert reasons["runs"] == f"1 of 1 runs failed in the last 24 h (100%); last failed: {run_id}"
    assert reasons["notifications"].startswith("last notification delivered to webhook http://127.0.0.1:")
