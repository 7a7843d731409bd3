"""The repair sensor frees what a dead process left behind: a real tick (build_sensor_context) on a real instance."""

import datetime as dt

from dagster import DagsterRunStatus, Definitions, build_sensor_context
from dagster._core.storage.dagster_run import DagsterRun

from assets.raw import raw_ohlcv
from lakehouse.liveness import ProcessStamp
from lakehouse.registry import Registry, TrackedSymbol
from lakehouse.run_tags import range_tags
from resources import LakehouseResource, SimulatedExchangeResource
from sensors.repair import REPAIR_SENSOR_NAME, build_repair_sensor
from assets.run_guard import dead_runs, leaked_slots

from helpers import NOW_MS, add_symbols, exited_process_stamp

START, END = dt.date(2024, 3, 8), dt.date(2024, 3, 10)


def test_a_tick_fails_a_dead_cli_run_frees_its_slot_and_requests_its_partitions(instance, root):
    Registry(root).upsert(TrackedSymbol("BTC/USDT", "simulated", START, dt.date(2017, 8, 17), "2024-03-01T00:00:00+00:00"))
    add_symbols(instance, "BTC/USDT")
    dead = DagsterRun(job_name="__ephemeral_asset_job__", status=DagsterRunStatus.STARTED,
                      tags={**range_tags("BTC/USDT", START, END), "lakehouse/launched_by": "cli",
                            **exited_process_stamp().as_tags()})
    instance.run_storage.add_run(dead)
    storage = instance.event_log_storage
    storage.set_concurrency_slots("exchange", 1)
    assert storage.claim_concurrency_slot("exchange", dead.run_id, "raw_ohlcv").is_claimed
    # A finished run that never gave its slot back (its worker died after the step claimed it).
    done = DagsterRun(job_name="__ephemeral_asset_job__", status=DagsterRunStatus.FAILURE)
    instance.run_storage.add_run(done)
    storage.set_concurrency_slots("other", 1)
    assert storage.claim_concurrency_slot("other", done.run_id, "step").is_claimed
    assert [d.run_id for d in dead_runs(instance)] == [dead.run_id]

    resources = {"exchange": SimulatedExchangeResource(outage_rate=0.0, now_ms=NOW_MS),
                 "lakehouse": LakehouseResource(root=str(root))}
    defs = Definitions(assets=[raw_ohlcv], sensors=[build_repair_sensor([raw_ohlcv])], resources=resources)
    result = defs.get_repository_def().get_sensor_def(REPAIR_SENSOR_NAME)(
        build_sensor_context(instance=instance, definitions=defs, resources=resources))

    failed = instance.get_run_by_id(dead.run_id)
    assert failed.status == DagsterRunStatus.FAILURE
    assert "is gone: killed, crashed or its machine restarted" in _failure_message(instance, dead.run_id)
    assert storage.get_concurrency_info("exchange").claimed_slots == []
    assert leaked_slots(instance) == [] and storage.get_concurrency_info("other").claimed_slots == []
    # Its days are no longer "in flight": the tick requests them.
    [request] = result.run_requests
    assert (request.tags["lakehouse/symbol"], request.tags["dagster/asset_partition_range_start"][:10],
            request.tags["dagster/asset_partition_range_end"][:10]) == ("BTC/USDT", str(START), str(END))


def _failure_message(instance, run_id) -> str:
    from dagster._core.events import DagsterEventType

    [event] = instance.all_logs(run_id, of_type=DagsterEventType.RUN_FAILURE)
    return event.message or ""


def test_a_daemon_launched_run_whose_worker_died_with_its_code_server_is_failed(instance):
    """No process stamp: the run worker pid is the one Dagster's code server recorded when it started the run."""
    from dagster._core.events import EngineEventData

    from assets.run_guard import reap

    run = DagsterRun(job_name="__ephemeral_asset_job__", status=DagsterRunStatus.STARTED,
                     tags=range_tags("BTC/USDT", START, END))
    instance.run_storage.add_run(run)
    dead = exited_process_stamp()
    instance.report_engine_event(f"Started process for run (pid: {dead.pid}).", run, EngineEventData.in_process(dead.pid))
    live = DagsterRun(job_name="__ephemeral_asset_job__", status=DagsterRunStatus.STARTED)
    instance.run_storage.add_run(live)
    me = ProcessStamp.current()
    instance.report_engine_event(f"Started process for run (pid: {me.pid}).", live, EngineEventData.in_process(me.pid))

    assert [d.run_id for d in dead_runs(instance)] == [run.run_id]
    assert [d.run_id for d in reap(instance, "test").failed] == [run.run_id]
    assert instance.get_run_by_id(run.run_id).status == DagsterRunStatus.FAILURE
    assert instance.get_run_by_id(live.run_id).status == DagsterRunStatus.STARTED
    assert "(its run worker) is gone" in _failure_message(instance, run.run_id)
