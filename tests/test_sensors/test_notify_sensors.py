"""Notification sensors on a real instance: a really failed run, real freshness evaluations, a real HTTP receiver."""

import asyncio
import datetime as dt
import json
import logging
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from dagster import (
    AssetMaterialization,
    DagsterEventType,
    Definitions,
    FreshnessPolicy,
    asset,
    build_sensor_context,
    materialize,
)
from dagster._core.events import DagsterEvent, StepMaterializationData
from dagster._core.events.log import EventLogEntry
from dagster._core.instance.utils import RUNLESS_JOB_NAME, RUNLESS_RUN_ID
from dagster._core.remote_origin import InProcessCodeLocationOrigin
from dagster._core.test_utils import create_test_daemon_workspace_context
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget
from dagster._daemon.freshness import FreshnessDaemon

from assets.partitions import SYMBOLS_PARTITION
from assets.raw import raw_ohlcv
from assets.symbol_freshness import symbol_freshness
from cli.main import cli
from lakehouse.config import Settings
from lakehouse.errors import ConfigError
from lakehouse.notify import DeliveryLog, redact
from lakehouse.registry import Registry, TrackedSymbol
from lakehouse.run_tags import covered_partitions, range_tags
from lakehouse.storage import Storage
from resources import LakehouseResource, SimulatedExchangeResource
from sensors.notify import notify_freshness, notify_run_failure
from sensors.repair import REPAIR_SENSOR_NAME, build_repair_sensor

from helpers import NOW_MS, add_symbols, free_port
from webhook_receiver import WebhookReceiver

HOUR_MS = 3_600_000


def tick(sensor_def, instance, root, cursor=None):
    """One real evaluation of a sensor against the instance, as the daemon's tick would run it."""
    ctx = build_sensor_context(instance=instance, cursor=cursor, resources={"lakehouse": LakehouseResource(root=str(root))})
    return sensor_def.evaluate_tick(ctx)


def fail_a_run(instance, root, symbol="FOO/USDT"):
    """raw_ohlcv for a symbol the simulated exchange does not list: fails at once, without retries."""
    add_symbols(instance, symbol)
    result = materialize([raw_ohlcv], partition_key=f"2024-03-10|{symbol}", instance=instance, raise_on_error=False,
                         resources={"exchange": SimulatedExchangeResource(outage_rate=0.0, now_ms=NOW_MS),
                                    "lakehouse": LakehouseResource(root=str(root))})
    assert not result.success
    return result.run_id


@pytest.fixture
def hook(monkeypatch):
    with WebhookReceiver() as receiver:
        monkeypatch.setenv("LAKEHOUSE_WEBHOOK_URL", receiver.url)
        monkeypatch.setenv("LAKEHOUSE_UI_URL", "http://127.0.0.1:3000/")
        yield receiver


# failed runs --------------------------------------------------------------------------------------
def test_a_failed_run_posts_one_message_naming_the_run_and_the_error(instance, root, hook):
    first = tick(notify_run_failure, instance, root)  # a new sensor starts from now, like Dagster's own
    run_id = fail_a_run(instance, root)
    result = tick(notify_run_failure, instance, root, first.cursor)
    assert len(hook.messages) == 1
    message = hook.messages[0]
    lines = message["text"].splitlines()
    assert lines[0] == "[FAIL] lakehouse run failed: raw_ohlcv for FOO/USDT 2024-03-10"
    assert lines[1] == f"run {run_id}"
    assert lines[2].startswith("error: raw_ohlcv: ") and "simulated does not list FOO/USDT" in lines[2]
    assert lines[-1] == f"Open the run in Dagster: http://127.0.0.1:3000/runs/{run_id}"
    assert message["blocks"][0]["text"]["text"].startswith("*[FAIL] lakehouse run failed: raw_ohlcv for FOO/USDT")
    assert message["blocks"][1]["elements"][0]["text"] == f"<http://127.0.0.1:3000/runs/{run_id}|Open the run in Dagster>"

    tick(notify_run_failure, instance, root, result.cursor)  # the same failure is not sent twice
    assert len(hook.messages) == 1
    [entry] = DeliveryLog(Storage(root)).load()
    assert (entry["sent"], entry["kind"], entry["channel"]) == (True, "run_failure", f"webhook {redact(hook.url)}")
    assert "secret" not in json.dumps(entry)  # a webhook's path is its password


def test_without_a_url_the_failure_is_logged_and_nothing_is_sent(instance, root, monkeypatch, capfd):
    monkeypatch.delenv("LAKEHOUSE_WEBHOOK_URL", raising=False)
    with WebhookReceiver() as receiver:
        first = tick(notify_run_failure, instance, root)
        run_id = fail_a_run(instance, root)
        capfd.readouterr()
        tick(notify_run_failure, instance, root, first.cursor)
        assert receiver.requests == 0
    logged = capfd.readouterr().err  # the sensor's context.log, as the daemon's tick log shows it
    assert logged.count("notification (no LAKEHOUSE_WEBHOOK_URL set, logged only):") == 1
    assert f"run {run_id}" in logged and "simulated does not list FOO/USDT" in logged
    [entry] = DeliveryLog(Storage(root)).load()
    assert (entry["sent"], entry["channel"]) == (False, "log")


def test_a_dead_webhook_does_not_break_the_sensor_and_the_failure_is_recorded(instance, root, monkeypatch):
    monkeypatch.setenv("LAKEHOUSE_WEBHOOK_URL", f"http://127.0.0.1:{free_port()}/hook")  # nothing listens there
    first = tick(notify_run_failure, instance, root)
    fail_a_run(instance, root)
    started = time.monotonic()
    result = tick(notify_run_failure, instance, root, first.cursor)
    assert time.monotonic() - started < 5
    assert [r.error for r in result.dagster_run_reactions] == [None]  # the tick reports success for the run
    [entry] = DeliveryLog(Storage(root)).load()
    assert (entry["sent"], entry["attempts"], entry["status"]) == (False, 2, None)
    assert entry["error"].startswith("ConnectionError")


# freshness per symbol -----------------------------------------------------------------------------
class Lakehouse:
    """Two tracked symbols; the repair sensor (which records symbol_freshness) ticked at a chosen exchange clock."""

    def __init__(self, instance, root):
        self.instance, self.root = instance, root
        for s in ("BTC/USDT", "ETH/USDT"):
            Registry(root).upsert(TrackedSymbol(s, "simulated", dt.date(2024, 3, 9), dt.date(2017, 8, 17), ""))
        add_symbols(instance, "BTC/USDT", "ETH/USDT")

    def repair_tick(self, now_ms, run=(), cursor=None):
        """A repair tick at `now_ms` (a fresh cursor records the check even when nothing changed); runs the
        requests of the symbols in `run`."""
        resources = {"exchange": SimulatedExchangeResource(outage_rate=0.0, now_ms=now_ms),
                     "lakehouse": LakehouseResource(root=str(self.root))}
        defs = Definitions(assets=[raw_ohlcv], asset_checks=[symbol_freshness],
                           sensors=[build_repair_sensor([raw_ohlcv])], resources=resources)
        ctx = build_sensor_context(instance=self.instance, definitions=defs, resources=resources, cursor=cursor)
        result = defs.get_repository_def().get_sensor_def(REPAIR_SENSOR_NAME)(ctx)
        order = self.instance.get_dynamic_partitions(SYMBOLS_PARTITION)
        for request in result.run_requests:
            days: dict[str, list] = {}
            for symbol, day in covered_partitions(request.tags, order):
                days.setdefault(symbol, []).append(day)
            for symbol in run:  # the request's share of these symbols only (it may cover both)
                if symbol in days:
                    tags = {**request.tags, **range_tags(symbol, min(days[symbol]), max(days[symbol]))}
                    assert materialize([raw_ohlcv], selection=request.asset_selection, tags=tags,
                                       instance=self.instance, resources=resources).success
        return result


def test_a_symbol_turning_warn_then_fail_notifies_once_per_transition(instance, root, hook):
    lake = Lakehouse(instance, root)
    lake.repair_tick(NOW_MS, run=("BTC/USDT", "ETH/USDT"))  # backfill both
    lake.repair_tick(NOW_MS)  # records symbol_freshness: both fresh
    cursor = tick(notify_freshness, instance, root).cursor
    assert hook.messages == []

    # Three hours later ETH/USDT got its new candles, BTC/USDT did not: BTC is aging (WARN).
    lake.repair_tick(NOW_MS + 3 * HOUR_MS, run=("ETH/USDT",))
    lake.repair_tick(NOW_MS + 3 * HOUR_MS)
    result = tick(notify_freshness, instance, root, cursor)
    assert [m["text"].splitlines() for m in hook.messages] == [[
        "[WARN] lakehouse freshness WARN: BTC/USDT",
        "BTC/USDT: WARN (was fresh): aging, last candle 2024-03-10T12:33:00Z (3.0 h old)",
        "Open raw_ohlcv in Dagster: http://127.0.0.1:3000/assets/raw_ohlcv",
    ]]
    assert result.skip_message.startswith("lakehouse freshness WARN: BTC/USDT: sent to webhook http://127.0.0.1:")

    # The next tick, and a new evaluation with the same tiers, say nothing new.
    cursor = tick(notify_freshness, instance, root, result.cursor).cursor
    lake.repair_tick(NOW_MS + 3 * HOUR_MS + 10 * 60_000)
    cursor = tick(notify_freshness, instance, root, cursor).cursor
    assert len(hook.messages) == 1

    # A day later nothing new came in: BTC/USDT is stale (FAIL), ETH/USDT now aging (WARN); one message, worst first.
    lake.repair_tick(NOW_MS + 25 * HOUR_MS)
    tick(notify_freshness, instance, root, cursor)
    assert len(hook.messages) == 2
    assert hook.messages[1]["text"].splitlines()[:3] == [
        "[FAIL] lakehouse freshness FAIL: BTC/USDT, ETH/USDT",
        "BTC/USDT: FAIL (was aging): stale, last candle 2024-03-10T12:33:00Z (25.0 h old)",
        "ETH/USDT: WARN (was fresh): aging, last candle 2024-03-10T15:33:00Z (22.0 h old)",
    ]


# freshness per asset (Dagster's freshness policies, evaluated by the daemon's FreshnessDaemon) -------
@asset(freshness_policy=FreshnessPolicy.time_window(fail_window=dt.timedelta(hours=24),
                                                    warn_window=dt.timedelta(hours=2)))
def prices():
    return None


fresh_defs = Definitions(assets=[prices])


def materialized_hours_ago(instance, hours):
    """A materialization of `prices` as the event log holds it, written `hours` ago."""
    instance.store_event(EventLogEntry(
        error_info=None, level="INFO", user_message="", run_id=RUNLESS_RUN_ID, timestamp=time.time() - hours * 3600,
        dagster_event=DagsterEvent(event_type_value=DagsterEventType.ASSET_MATERIALIZATION.value,
                                   event_specific_data=StepMaterializationData(AssetMaterialization("prices")),
                                   job_name=RUNLESS_JOB_NAME)))


def run_freshness_daemon(instance):
    """One iteration of Dagster's own freshness daemon over this module's `fresh_defs`, in-process."""
    origin = InProcessCodeLocationOrigin(LoadableTargetOrigin(python_file=__file__, attribute="fresh_defs"),
                                         location_name="notify_test")
    with create_test_daemon_workspace_context(InProcessWorkspaceLoadTarget(origin), instance) as ctx:
        return asyncio.run(FreshnessDaemon()._evaluate_assets(ctx))


def test_a_freshness_check_planned_by_a_run_and_not_yet_evaluated_is_waited_for(instance, root, hook):
    from dagster import DagsterEvent, DagsterEventType
    from dagster._core.definitions.asset_checks.asset_check_evaluation import AssetCheckEvaluationPlanned
    from dagster._core.events.log import EventLogEntry

    from assets.instance_audit import SYMBOL_FRESHNESS_CHECK_KEY

    lake = Lakehouse(instance, root)
    lake.repair_tick(NOW_MS, run=("BTC/USDT", "ETH/USDT"))
    lake.repair_tick(NOW_MS)  # an evaluation: both fresh
    cursor = tick(notify_freshness, instance, root).cursor
    # A deployment's run that includes the check plans it first; its evaluation comes when the step has run.
    planned = DagsterEvent(DagsterEventType.ASSET_CHECK_EVALUATION_PLANNED.value, job_name="__ASSET_JOB",
                           event_specific_data=AssetCheckEvaluationPlanned(asset_key=SYMBOL_FRESHNESS_CHECK_KEY.asset_key,
                                                                           check_name=SYMBOL_FRESHNESS_CHECK_KEY.name))
    instance.store_event(EventLogEntry(error_info=None, level="debug", user_message="", run_id="a-run-in-flight",
                                       timestamp=time.time(), dagster_event=planned))
    latest = instance.get_latest_asset_check_evaluation_record(SYMBOL_FRESHNESS_CHECK_KEY)
    assert latest.event.dagster_event_type == DagsterEventType.ASSET_CHECK_EVALUATION_PLANNED
    result = tick(notify_freshness, instance, root, cursor)
    assert hook.messages == [] and result.cursor == cursor

    # Three hours later BTC/USDT is aging: the next evaluation is read as usual.
    lake.repair_tick(NOW_MS + 3 * HOUR_MS, run=("ETH/USDT",))
    lake.repair_tick(NOW_MS + 3 * HOUR_MS)
    tick(notify_freshness, instance, root, result.cursor)
    assert [m["text"].splitlines()[0] for m in hook.messages] == ["[WARN] lakehouse freshness WARN: BTC/USDT"]


def test_an_asset_freshness_change_to_warn_notifies_once(instance, root, hook):
    cursor = tick(notify_freshness, instance, root).cursor
    materialized_hours_ago(instance, 3)
    assert run_freshness_daemon(instance) == [True]  # UNKNOWN -> WARN, a FRESHNESS_STATE_CHANGE event
    result = tick(notify_freshness, instance, root, cursor)
    assert [m["text"].splitlines() for m in hook.messages] == [[
        "[WARN] lakehouse freshness WARN: prices",
        "prices: WARN (was UNKNOWN): no materialization of prices within its freshness policy's warn window",
        "Open prices in Dagster: http://127.0.0.1:3000/assets/prices",
    ]]
    assert run_freshness_daemon(instance) == [False]  # still WARN: no new event
    tick(notify_freshness, instance, root, result.cursor)
    assert len(hook.messages) == 1
    # A sensor starting now reports the state the asset is already in, once.
    fresh_start = tick(notify_freshness, instance, root)
    assert len(hook.messages) == 2 and hook.messages[1]["text"].splitlines()[1].startswith(
        "prices: WARN (already so at the sensor's first look): ")
    tick(notify_freshness, instance, root, fresh_start.cursor)
    assert len(hook.messages) == 2
    assert json.loads(fresh_start.cursor)["event_id"] > 0


# the token never leaks -----------------------------------------------------------------------------
SECRETS = ("T0KENxyz42", "B0TSECRET", "pa55word", "q1secret")


def _webhook(host_port: str) -> str:
    return f"http://alerts:pa55word@{host_port}/services/T0KENxyz42/B0TSECRET?sig=q1secret"


def _leaks(text: str) -> list[str]:
    return [s for s in SECRETS if s in text]


@pytest.mark.parametrize("receiver", ["refusing", "dead"])
def test_a_failed_delivery_leaves_no_token_in_any_file_log_or_output(instance, root, tmp_path, monkeypatch, capfd,
                                                                     caplog, receiver):
    caplog.set_level(logging.DEBUG, logger="urllib3")  # urllib3 logs each request line at DEBUG
    with WebhookReceiver(statuses=[500, 500]) as hook:
        host_port = hook.url.split("/")[2] if receiver == "refusing" else f"127.0.0.1:{free_port()}"
        monkeypatch.setenv("LAKEHOUSE_WEBHOOK_URL", _webhook(host_port))
        first = tick(notify_run_failure, instance, root)
        fail_a_run(instance, root)
        result = tick(notify_run_failure, instance, root, first.cursor)
        assert hook.requests == (2 if receiver == "refusing" else 0)  # the retry went out too
    assert [r.error for r in result.dagster_run_reactions] == [None]
    [entry] = DeliveryLog(Storage(root)).load()
    assert (entry["sent"], entry["attempts"]) == (False, 2)
    assert entry["channel"] == f"webhook http://{host_port}"
    assert entry["error"].startswith("HTTP 500" if receiver == "refusing" else "ConnectionError")

    health = CliRunner().invoke(cli, ["health", "--json"])
    notifications = next(c for c in json.loads(health.stdout)["components"] if c["component"] == "notifications")
    assert notifications["state"] == "degraded" and host_port in notifications["reason"]

    out, err = capfd.readouterr()
    assert "127.0.0.1" in caplog.text or receiver == "dead"
    assert _leaks(health.output + out + err + caplog.text) == []
    for path in Path(tmp_path).rglob("*"):  # the lakehouse, the Dagster instance (event log, ticks), everything
        if path.is_file():
            assert _leaks(path.read_bytes().decode("latin-1")) == [], path


def test_a_malformed_webhook_url_is_refused_without_showing_its_path():
    with pytest.raises(ConfigError) as exc:
        Settings.from_env({"LAKEHOUSE_WEBHOOK_URL": "https://hooks.example.org:99999/services/T0KENxyz42/B0TSECRET"})
    assert "hooks.example.org" in str(exc.value) and _leaks(str(exc.value)) == []
