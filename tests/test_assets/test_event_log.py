"""The project's event log (one transaction per batch) leaves exactly what Dagster's own SQLite event log leaves:
the same events per partition, statuses, latest materializations, check results and failed partitions."""

import datetime as dt
from collections import Counter

from dagster import (
    AssetCheckKey,
    AssetCheckResult,
    AssetCheckSpec,
    AssetKey,
    AssetPartitionStatus,
    AssetSpec,
    BackfillPolicy,
    DagsterEventType,
    MaterializeResult,
    instance_for_test,
    materialize,
    multi_asset,
)

from assets.partitions import days_by_symbol, partition_key, symbol_day_partitions
from resources.event_log import BatchingSqliteEventLogStorage

D1 = dt.date(2024, 1, 1)
DAYS = 5


def _assets(fail: bool):
    @multi_asset(specs=[AssetSpec("a"), AssetSpec("b", deps=["a"])], partitions_def=symbol_day_partitions,
                 backfill_policy=BackfillPolicy.single_run(), can_subset=True,
                 check_specs=[AssetCheckSpec("a_ok", asset="a", blocking=True)])
    def two_layers(context):
        for symbol, days in days_by_symbol(context.partition_keys).items():
            for day in days:
                context.add_asset_metadata({"day": str(day), "n": day.day}, asset_key="a",
                                           partition_key=str(partition_key(symbol, day)))
        yield MaterializeResult(asset_key="a", metadata={"shared": 1})
        yield AssetCheckResult(asset_key="a", check_name="a_ok", passed=not fail)
        if not fail:
            yield MaterializeResult(asset_key="b")

    return two_layers


def _run(instance, fail=False):
    instance.add_dynamic_partitions("symbols", ["BTC/USDT"])
    return materialize([_assets(fail)], instance=instance, raise_on_error=False, tags={
        "dagster/asset_partition_range_start": str(partition_key("BTC/USDT", D1)),
        "dagster/asset_partition_range_end": str(partition_key("BTC/USDT", D1 + dt.timedelta(days=DAYS - 1)))})


def _what_it_left(instance, result) -> dict:
    keys = [str(partition_key("BTC/USDT", D1 + dt.timedelta(days=i))) for i in range(DAYS)]
    logs = instance.all_logs(result.run_id)
    events = Counter((e.dagster_event.event_type_value, e.dagster_event.partition) for e in logs if e.dagster_event)
    out = {"events": events}
    for name in ("a", "b"):
        key = AssetKey(name)
        mats = instance.fetch_materializations(key, limit=100).records
        out[name] = {
            "materializations": sorted((m.partition_key, tuple(sorted((k, v.value) for k, v in
                                        m.asset_materialization.metadata.items()))) for m in mats),
            "status": instance.get_status_by_partition(key, keys, symbol_day_partitions),
            "materialized": sorted(instance.get_materialized_partitions(key)),
            "latest_run": (instance.get_latest_materialization_event(key).run_id == result.run_id
                           if mats else None),
            "planned": len(instance.fetch_planned_materializations(key, limit=100).records),
        }
    check = instance.event_log_storage.get_asset_check_execution_history(
        AssetCheckKey(AssetKey("a"), "a_ok"), limit=10)
    out["check"] = [(c.status.value, c.run_id == result.run_id) for c in check]
    return out


def _instance(path, ours: bool):
    path.mkdir(parents=True)
    overrides = {"event_log_storage": {"module": "resources.event_log", "class": "BatchingSqliteEventLogStorage",
                                       "config": {"base_dir": str(path / "history" / "runs")}}} if ours else None
    return instance_for_test(temp_dir=str(path), overrides=overrides)


def test_batched_event_log_leaves_what_dagsters_own_leaves(tmp_path):
    left = {}
    for ours in (True, False):
        with _instance(tmp_path / str(ours), ours) as instance:
            assert isinstance(instance.event_log_storage, BatchingSqliteEventLogStorage) == ours
            # A run that succeeds, then the same range failing its blocking check.
            left[ours] = [_what_it_left(instance, _run(instance, fail)) for fail in (False, True)]
    assert left[True] == left[False]
    ok, failed = left[True]
    # One planned event and one materialization per partition of the range, as Dagster's own storage.
    keys = sorted(str(partition_key("BTC/USDT", D1 + dt.timedelta(days=i))) for i in range(DAYS))
    for kind in (DagsterEventType.ASSET_MATERIALIZATION_PLANNED.value, DagsterEventType.ASSET_MATERIALIZATION.value):
        assert sorted(p for (k, p), n in ok["events"].items() for _ in range(n) if k == kind) == sorted(keys * 2)
    # Each partition its own metadata, and the run's shared figure beside it.
    assert ok["a"]["materializations"][0] == ("2024-01-01|BTC/USDT", (("day", "2024-01-01"), ("n", 1), ("shared", 1)))
    assert ok["check"] == [("SUCCEEDED", True)] and ok["b"]["materialized"] == keys
    # The failed run: b's partitions failed, a's latest materialization is the failed run's, the check failed.
    assert set(failed["b"]["status"].values()) == {AssetPartitionStatus.FAILED}
    assert failed["a"]["latest_run"] and failed["check"][0] == ("FAILED", True)


def _message(run_id: str, text: str):
    import logging
    import time

    from dagster._core.event_api import EventLogEntry

    return EventLogEntry(error_info=None, level=logging.INFO, user_message=text, run_id=run_id, timestamp=time.time())


def _open_databases() -> set[str]:
    import os

    names = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.endswith(".db"):
            names.add(target)
    return names


def test_kept_connections_are_bounded_and_what_they_write_is_seen_by_dagsters_own_storage(tmp_path):
    import os

    from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage

    from resources.event_log import _OPEN_SHARDS

    ours = BatchingSqliteEventLogStorage(str(tmp_path))
    before = _open_databases()
    runs = [f"run{i:02d}" for i in range(3 * _OPEN_SHARDS)]
    for run in runs:
        ours.store_event(_message(run, f"hello {run}"))
    opened = _open_databases() - before
    # A long-lived webserver reads and writes many runs: only the last few keep a database open.
    assert 0 < len(opened) <= _OPEN_SHARDS
    plain = SqliteEventLogStorage(str(tmp_path))  # another process's view: every event committed
    assert [e.user_message for e in plain.get_logs_for_run("run00")] == ["hello run00"]

    # wipe deletes the run databases: later events must land in new ones, not in deleted files still open.
    ours.wipe()
    ours.store_event(_message("run00", "after wipe"))
    assert [e.user_message for e in plain.get_logs_for_run("run00")] == ["after wipe"]

    # A forked child (a Celery prefork worker, say) opens its own connections, never its parent's.
    pid = os.fork()
    if pid == 0:
        try:
            ours.store_event(_message("run00", "from the child"))
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    ours.store_event(_message("run00", "from the parent"))
    assert [e.user_message for e in plain.get_logs_for_run("run00")] == ["after wipe", "from the child",
                                                                         "from the parent"]
    ours.dispose()
    assert not (_open_databases() - before)
