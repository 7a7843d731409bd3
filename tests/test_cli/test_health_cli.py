"""`lakehouse health` through click against a real temporary local instance (DAGSTER_HOME from conftest)."""

import json
import os
from pathlib import Path

from click.testing import CliRunner
from dagster import DagsterInstance, materialize

from assets.raw import raw_ohlcv
from cli.main import cli
from lakehouse.notify import Notification, notify
from lakehouse.storage import Storage
from resources import LakehouseResource, SimulatedExchangeResource

from helpers import NOW_MS, add_symbols, free_port


def health(*args):
    result = CliRunner().invoke(cli, ["health", *args], catch_exceptions=False)
    return result.exit_code, result.stdout


def components(doc):
    return {c["component"]: (c["state"], c["reason"]) for c in doc["components"]}


def test_a_local_instance_without_a_daemon_is_degraded_with_a_reason_per_component():
    code, out = health("--json")
    doc = json.loads(out)
    assert (code, doc["state"], doc["exit_code"], doc["mode"]) == (1, "degraded", 1, "local")
    assert doc["target"] == os.environ["DAGSTER_HOME"]
    got = components(doc)
    assert list(got) == ["storage", "daemon", "repair_sensor", "exchange", "disk", "runs", "stuck_runs",
                         "notifications"]
    assert got["storage"] == ("ok", f"SqliteRunStorage in {os.environ['DAGSTER_HOME']}: 0 runs")
    assert got["daemon"] == ("degraded", "no daemon heartbeat: is `lakehouse dev` running?")
    assert got["repair_sensor"] == ("degraded", "lakehouse_repair running but never ticked: no daemon to tick it")
    assert got["exchange"] == ("ok", "simulated exchange (offline): 9 markets, no request weight to watch")
    assert got["disk"][0] == "ok" and got["disk"][1].startswith(f"{os.environ['LAKEHOUSE_ROOT']} does not exist yet")
    assert got["runs"] == ("ok", "no finished runs in the last 24 h")
    assert doc["reason"] == "daemon degraded; repair_sensor degraded"

    code, text = health()
    assert code == 1
    lines = text.splitlines()
    assert lines[0] == f"DEGRADED: daemon degraded; repair_sensor degraded (local: {os.environ['DAGSTER_HOME']})"
    assert lines[2] == "  daemon         degraded  no daemon heartbeat: is `lakehouse dev` running?"
    assert len(lines) == 9


def test_failed_runs_and_an_undelivered_notification_show_up(tmp_path, monkeypatch):
    instance = DagsterInstance.get()
    add_symbols(instance, "FOO/USDT")  # the simulated exchange does not list it: the run fails
    resources = {"exchange": SimulatedExchangeResource(outage_rate=0.0, now_ms=NOW_MS),
                 "lakehouse": LakehouseResource(root=str(tmp_path / "lake"))}
    run = materialize([raw_ohlcv], partition_key="2024-03-10|FOO/USDT", instance=instance, resources=resources,
                      raise_on_error=False)
    monkeypatch.setenv("LAKEHOUSE_WEBHOOK_URL", f"http://127.0.0.1:{free_port()}/hook")  # nothing listens
    notify(Notification("run_failure", "FAIL", "lakehouse run failed: raw_ohlcv"), os.environ["LAKEHOUSE_WEBHOOK_URL"],
           lambda m: None, storage=Storage(tmp_path / "lake"), sleep=lambda s: None)

    code, out = health("--json")
    got = components(json.loads(out))
    assert code == 1
    assert got["runs"] == ("degraded", f"1 of 1 runs failed in the last 24 h (100%); last failed: {run.run_id}")
    assert got["notifications"][0] == "degraded"
    assert got["notifications"][1].startswith("last notification (run_failure, ")
    assert "was not delivered to webhook http://127.0.0.1:" in got["notifications"][1]
    assert got["disk"][1].split("; ")[0].endswith(f" under {tmp_path / 'lake'}")  # the lake exists now: bytes counted


def test_unreadable_instance_storage_is_down_exit_2():
    home = Path(os.environ["DAGSTER_HOME"])
    health()  # creates the SQLite storage
    runs_db = home / "history" / "runs.db"
    runs_db.write_bytes(b"this is not a database" * 4096)  # what a torn disk or a wrong file leaves behind
    code, out = health("--json")
    doc = json.loads(out)
    assert (code, doc["state"], doc["reason"]) == (2, "down", "storage down")
    got = components(doc)
    assert got["storage"][0] == "down"
    assert got["storage"][1].startswith(f"instance storage in {home}: DatabaseError: ")
    assert "file is not a database" in got["storage"][1]
    for name in ("daemon", "repair_sensor", "runs"):
        assert got[name] == ("down", "not checked: the instance storage does not answer")
    assert got["exchange"][0] == got["disk"][0] == "ok"


def test_an_unreachable_deployment_is_down_exit_2():
    url = f"http://127.0.0.1:{free_port()}"
    code, out = health("--url", url, "--timeout", "2", "--json")
    doc = json.loads(out)
    assert (code, doc["state"], doc["mode"], doc["target"]) == (2, "down", "remote", url)
    got = components(doc)
    assert got["storage"] == ("down", f"deployment {url}: cannot reach {url}: connection refused")
    assert got["daemon"] == ("down", f"not checked: {url} does not answer")


def test_a_malformed_url_is_bad_input():
    result = CliRunner().invoke(cli, ["health", "--url", "localhost:3000"])
    assert result.exit_code == 2 and "expected e.g. http://127.0.0.1:3000" in result.output


def test_health_looks_for_the_repair_sensor_by_its_real_name():
    from cli.health import REPAIR_SENSOR_NAME
    from sensors.repair import REPAIR_SENSOR_NAME as DEFINED

    assert REPAIR_SENSOR_NAME == DEFINED
