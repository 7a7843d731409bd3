"""lakehouse.health: every rule with literal expectations, and the checks it runs itself (disk, exchange over loopback)."""

import pytest

from lakehouse import health as h
from lakehouse.config import Settings
from lakehouse.exchange.emulator import BinanceEmulator
from lakehouse.exchange.simulated import SimulatedSource

from helpers import free_port

NOW = 1_700_000_000.0


def c(name, state):
    return h.Component(name, state, f"{name} is {state}")


# combining -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("states, expected", [
    ({}, ("ok", "every component ok")),
    ({"exchange": "down"}, ("degraded", "exchange down")),               # no new data, the rest works
    ({"runs": "down", "repair_sensor": "degraded"}, ("degraded", "repair_sensor degraded; runs down")),
    ({"daemon": "degraded"}, ("degraded", "daemon degraded")),           # local, no `lakehouse dev`
    ({"storage": "down"}, ("down", "storage down")),
    ({"daemon": "down", "exchange": "down"}, ("down", "daemon down")),
    ({"disk": "down", "storage": "down"}, ("down", "storage down; disk down")),
    ({"disk": "degraded", "notifications": "degraded"}, ("degraded", "disk degraded; notifications degraded")),
])
def test_overall_state_from_the_components(states, expected):
    components = [c(name, states.get(name, "ok")) for name in h.COMPONENTS]
    assert h.overall(components) == expected
    assert h.exit_code(expected[0]) == {"ok": 0, "degraded": 1, "down": 2}[expected[0]]


def test_components_not_checked_because_storage_is_down_are_not_named_as_causes():
    components = [h.storage_component("OperationalError: unable to open database file", "instance storage in /x"),
                  h.unknown("daemon", "the instance storage does not answer"), c("exchange", "ok"),
                  h.unknown("runs", "the instance storage does not answer")]
    assert h.overall(components) == ("down", "storage down")
    assert components[1].as_dict() == {"component": "daemon", "state": "down", "reason":
                                       "not checked: the instance storage does not answer",
                                       "details": {"not_checked": True}}


# daemon -----------------------------------------------------------------------------------------------
def beats(*ages, errors=()):
    return [h.DaemonBeat(t, None if a is None else NOW - a, tuple(errors) if i == 0 else ())
            for i, (t, a) in enumerate(zip(["SENSOR", "BACKFILL", "QUEUED_RUN_COORDINATOR"], ages))]


@pytest.mark.parametrize("ages, local, errors, state, reason", [
    ((None, None, None), True, (), "degraded", "no daemon heartbeat: is `lakehouse dev` running?"),
    ((None, None, None), False, (), "down", "no daemon heartbeat: is dagster-daemon running?"),
    ((3600, 3700, 3650), True, (), "degraded", "no daemon heartbeat for 60 min: is `lakehouse dev` running?"),
    ((121, 130, 125), False, (), "down", "newest daemon heartbeat is 121 s old (limit 120 s): the daemon has stopped"),
    ((5, 300, None), False, (), "degraded", "1 of 3 daemons heartbeating; silent: BACKFILL, QUEUED_RUN_COORDINATOR"),
    ((5, 10, 20), False, ("sensor tick timed out",), "degraded", "SENSOR daemon reports an error: sensor tick timed out"),
    ((5, 10, 119), False, (), "ok", "3 daemons heartbeating (the oldest beat 119 s ago)"),
])
def test_daemon_rules(ages, local, errors, state, reason):
    got = h.daemon_component(beats(*ages, errors=errors), NOW, local=local)
    assert (got.state, got.reason) == (state, reason)


def test_a_sensor_daemon_is_alive_only_with_a_recent_heartbeat():
    assert h.daemon_alive(beats(30, None, None), NOW)
    assert not h.daemon_alive(beats(121, 1, 1), NOW)
    assert not h.daemon_alive(beats(None, 1, 1), NOW)


# repair sensor ----------------------------------------------------------------------------------------
def tick(age, status="SKIPPED", **kw):
    return h.Tick(status, NOW - age, **kw)


@pytest.mark.parametrize("status, ticks, ticking, state, reason", [
    (None, [], True, "degraded", "lakehouse_repair is not defined in the code location"),
    ("STOPPED", [tick(10)], True, "degraded",
     "lakehouse_repair is stopped: start it in the UI (Automation) so the lakehouse repairs itself"),
    ("RUNNING", [], True, "ok", "lakehouse_repair running, first tick pending"),
    ("RUNNING", [], False, "degraded", "lakehouse_repair running but never ticked: no daemon to tick it"),
    ("RUNNING", [tick(5, "STARTED"), tick(65, "FAILURE", error="ExchangeError: boom\n  at line 3")], True, "degraded",
     "lakehouse_repair's last tick failed 65 s ago: ExchangeError: boom at line 3"),
    ("RUNNING", [tick(301)], True, "degraded", "lakehouse_repair running but last ticked 301 s ago (every 60 s expected)"),
    ("RUNNING", [tick(7200)], False, "degraded",
     "lakehouse_repair running but last ticked 2.0 h ago (every 60 s expected): no daemon to tick it"),
    ("RUNNING", [tick(20, "SUCCESS", runs=2)], True, "ok", "lakehouse_repair running, last tick 20 s ago: requested 2 run(s)"),
    ("RUNNING", [tick(20, skip_reason="nothing to request: 0 missing")], True, "ok",
     "lakehouse_repair running, last tick 20 s ago: nothing to request: 0 missing"),
])
def test_repair_sensor_rules(status, ticks, ticking, state, reason):
    got = h.sensor_component("lakehouse_repair", status, ticks, 60, NOW, ticking)
    assert (got.state, got.reason) == (state, reason)


def test_a_slow_sensor_is_late_only_after_three_intervals():
    assert h.sensor_component("s", "RUNNING", [tick(899)], 300, NOW, True).state == "ok"
    assert h.sensor_component("s", "RUNNING", [tick(901)], 300, NOW, True).state == "degraded"


# runs -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ok, failed, canceled, state, reason", [
    (0, 0, 0, "ok", "no finished runs in the last 24 h"),
    (0, 0, 2, "ok", "no finished runs in the last 24 h (2 canceled)"),
    (9, 1, 0, "ok", "1 of 10 runs failed in the last 24 h (10%); last failed: r9"),
    (8, 2, 0, "ok", "2 of 10 runs failed in the last 24 h (20%); last failed: r9"),
    (7, 3, 1, "degraded", "3 of 10 runs failed in the last 24 h (30%), 1 canceled; last failed: r9"),
    (1, 1, 0, "degraded", "1 of 2 runs failed in the last 24 h (50%); last failed: r9"),
    (0, 2, 0, "degraded", "2 of 2 runs failed in the last 24 h (100%); last failed: r9"),
    (0, 3, 0, "down", "3 of 3 runs failed in the last 24 h (100%); last failed: r9"),
    (5, 0, 0, "ok", "0 of 5 runs failed in the last 24 h (0%)"),
])
def test_run_failure_rate_rules(ok, failed, canceled, state, reason):
    got = h.runs_component(ok, failed, canceled, "r9" if failed else None)
    assert (got.state, got.reason) == (state, reason)


# disk -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("free, total, expected", [
    (50 * 2**30, 100 * 2**30, ("ok", None)),
    (900 * 2**20, 100 * 2**30, ("degraded", "running out of space")),      # < 1 GiB
    (4 * 2**30, 100 * 2**30, ("degraded", "running out of space")),        # < 5 %
    (99 * 2**20, 100 * 2**30, ("down", "writes will fail")),              # < 100 MiB
])
def test_disk_space_rules(free, total, expected):
    assert h.disk_verdict(free, total) == expected


def test_disk_counts_the_bytes_under_the_root(tmp_path):
    root = tmp_path / "lake"
    (root / "raw_ohlcv" / "x").mkdir(parents=True)
    (root / "raw_ohlcv" / "x" / "part.parquet").write_bytes(b"a" * 1000)
    (root / "_meta").mkdir()
    (root / "_meta" / "ledger.json").write_bytes(b"b" * 24)
    got = h.disk_component(root)
    assert got.details["used_bytes"] == 1024 and got.details["unreadable"] == []
    assert got.reason.startswith(f"1.0 KiB under {root}; ") and got.state == h.disk_verdict(
        got.details["free_bytes"], got.details["total_bytes"])[0]
    missing = h.disk_component(tmp_path / "nothing")
    assert missing.reason.startswith(f"{tmp_path / 'nothing'} does not exist yet (no data); ")
    assert missing.details["used_bytes"] == 0


def test_human_bytes():
    assert [h.human_bytes(n) for n in (0, 1023, 1024, 5 * 2**20, 3 * 2**40)] == [
        "0 B", "1023 B", "1.0 KiB", "5.0 MiB", "3.0 TiB"]


# exchange ---------------------------------------------------------------------------------------------
def test_the_simulated_exchange_has_no_weight_to_watch():
    got = h.exchange_component(Settings.from_env({}))
    assert (got.state, got.reason) == ("ok", "simulated exchange (offline): 9 markets, no request weight to watch")


# 21 weight used: the client's cheap first call (/api/v3/time, 1) and exchangeInfo (20).
@pytest.mark.parametrize("limit, state, headroom", [(6000, "ok", "99.7%"), (22, "degraded", "4.5%")])
def test_a_live_exchange_reports_its_weight_headroom(limit, state, headroom):
    with BinanceEmulator(source=SimulatedSource(outage_rate=0.0), weight_limit=limit) as emu:
        url = emu.url
        got = h.exchange_component(Settings.from_env({"LAKEHOUSE_EXCHANGE": "binance", "LAKEHOUSE_EXCHANGE_URL": url}))
    assert got.state == state
    assert got.reason == (f"binance via {url}: reachable, 9 markets; request weight 21/{limit} per 60 s used "
                          f"({headroom} headroom)")
    assert (got.details["weight_used"], got.details["weight_limit"]) == (21, limit)


def test_an_unreachable_exchange_is_down_after_one_attempt():
    url = f"http://127.0.0.1:{free_port()}"
    got = h.exchange_component(Settings.from_env({"LAKEHOUSE_EXCHANGE": "binance", "LAKEHOUSE_EXCHANGE_URL": url}))
    assert got.state == "down" and got.reason.startswith(f"binance via {url} unreachable: ")


# notifications ----------------------------------------------------------------------------------------
def test_notification_rules():
    hook = Settings.from_env({"LAKEHOUSE_WEBHOOK_URL": "https://hooks.slack.com/services/T0/B0/XYZ"})
    assert h.notifications_component(Settings.from_env({}), None).state == "ok"
    assert h.notifications_component(hook, None).reason == "webhook https://hooks.slack.com; nothing sent yet"
    failed = {"sent": False, "kind": "run_failure", "at": "2024-03-10T12:00:00Z",
              "channel": "webhook https://hooks.slack.com", "error": "HTTP 404: no_service"}
    got = h.notifications_component(hook, failed)
    assert (got.state, got.reason) == ("degraded", "last notification (run_failure, 2024-03-10T12:00:00Z) was not "
                                                   "delivered to webhook https://hooks.slack.com: HTTP 404: no_service")
    assert h.notifications_component(hook, {**failed, "sent": True}).state == "ok"
    assert "XYZ" not in str(got.as_dict())


def test_text_report_has_one_line_per_component():
    doc = h.report([c("storage", "ok"), c("daemon", "degraded")], "local", "/home/x", NOW)
    assert doc["state"] == "degraded" and doc["exit_code"] == 1 and doc["checked_at"] == "2023-11-14T22:13:20Z"
    assert h.format_text(doc).splitlines() == [
        "DEGRADED: daemon degraded (local: /home/x)",
        "  storage  ok        storage is ok",
        "  daemon   degraded  daemon is degraded",
    ]
