"""The repair sensor on a real instance: real ticks (build_sensor_context), then the runs it requested (materialize)."""

import datetime as dt
import json
import random

import polars as pl
import pytest
from dagster import (
    AssetCheckKey,
    AssetKey,
    AssetMaterialization,
    BackfillPolicy,
    DagsterRunStatus,
    Definitions,
    asset,
    build_sensor_context,
    materialize,
)
from dagster._core.remote_origin import InProcessCodeLocationOrigin, RemoteJobOrigin, RemoteRepositoryOrigin
from dagster._core.storage.dagster_run import DagsterRun
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin

from assets.partitions import SYMBOLS_PARTITION, days_by_symbol, symbol_day_partitions
from assets.raw import raw_ohlcv
from assets.symbol_freshness import symbol_freshness
from lakehouse.exchange.simulated import SimulatedExchange, SimulatedSource
from lakehouse.registry import Registry, TrackedSymbol
from lakehouse.run_tags import covered_partitions
from lakehouse.schema import CLEAN_BARS, RAW_OHLCV
from lakehouse.timeutil import MINUTE_MS, day_start_ms
from resources import ExchangeResource, LakehouseResource, SimulatedExchangeResource
from sensors.repair import REPAIR_SENSOR_NAME, build_repair_sensor

from helpers import NOW_MS, add_symbols

EX = "simulated"
START = dt.date(2024, 3, 5)
DAYS = [START + dt.timedelta(days=i) for i in range(6)]  # 03-05 .. 03-10 (today, at 12:34:30)
CLOSED = DAYS[:-1]


@asset(name=CLEAN_BARS, partitions_def=symbol_day_partitions, deps=[raw_ohlcv],
       backfill_policy=BackfillPolicy.single_run())
def toy_clean_bars(context, lakehouse: LakehouseResource) -> None:
    """A stand-in derived layer: 1m bars copied from raw (the real one lives in another module)."""
    storage = lakehouse.storage()
    for symbol, days in days_by_symbol(context.partition_keys).items():
        for day in days:
            raw = storage.read_partition(RAW_OHLCV, EX, symbol, day)
            storage.write_partition(CLEAN_BARS, EX, symbol, day, raw.with_columns(
                interval=pl.lit("1m"), candles=pl.lit(1, pl.Int32), complete=pl.lit(True)))


class OutageExchangeResource(ExchangeResource):
    """The simulated exchange with one exchange-wide outage: a gap no refetch can fill."""

    outage_start_ms: int
    outage_end_ms: int

    def client(self):
        source = SimulatedSource(outage_rate=0.0, outages=((self.outage_start_ms, self.outage_end_ms),))
        return SimulatedExchange(source, clock=lambda: NOW_MS)


class Lake:
    """A lakehouse, a Dagster instance and the repair sensor, ticked and run by hand."""

    def __init__(self, instance, root, exchange=None, assets=(raw_ohlcv, toy_clean_bars), checks=()):
        self.instance, self.root = instance, root
        self.assets = list(assets)
        self.resources = {"exchange": exchange or SimulatedExchangeResource(outage_rate=0.0, now_ms=NOW_MS),
                          "lakehouse": LakehouseResource(root=str(root))}
        self.defs = Definitions(assets=self.assets, asset_checks=list(checks),
                                sensors=[build_repair_sensor(self.assets)], resources=self.resources)
        self.storage = self.resources["lakehouse"].storage()
        self.cursor = None
        self.runs = []

    def track(self, *symbols, start=START):
        for s in symbols:
            Registry(self.root).upsert(TrackedSymbol(s, EX, start, dt.date(2017, 8, 17), "2024-03-01T00:00:00+00:00"))
        add_symbols(self.instance, *symbols)

    def tick(self):
        ctx = build_sensor_context(instance=self.instance, definitions=self.defs, resources=self.resources,
                                   cursor=self.cursor)
        result = self.defs.get_repository_def().get_sensor_def(REPAIR_SENSOR_NAME)(ctx)
        self.cursor = result.cursor
        return result

    def run(self, result):
        for request in result.run_requests:
            run = materialize(self.assets, selection=request.asset_selection, tags=request.tags,
                              instance=self.instance, resources=self.resources, raise_on_error=False)
            assert run.success
            self.runs.append(request)

    def snapshot(self, layer):
        return {(s.ref.symbol, s.ref.day): self.storage.read_partition(layer, EX, s.ref.symbol, s.ref.day).drop(
                    "fetched_at", strict=False) for s in self.storage.list_partitions(layer)}


def requested(result):
    """(action, symbol or 'FIRST..LAST', first day, last day, selected assets, reasons) of each request."""
    out = []
    for r in result.run_requests:
        t = r.tags
        first, last = (t[f"dagster/asset_partition_range_{end}"].split("|")[1] for end in ("start", "end"))
        assert t.get("lakehouse/symbol", first) == first  # named when the run has one symbol
        out.append((t["lakehouse/repair"], first if first == last else f"{first}..{last}",
                    t["dagster/asset_partition_range_start"][:10],
                    t["dagster/asset_partition_range_end"][:10], sorted(k.to_user_string() for k in r.asset_selection),
                    t["lakehouse/reasons"]))
    return sorted(out)


def instance_symbols(lake) -> list[str]:
    return lake.instance.get_dynamic_partitions(SYMBOLS_PARTITION)


def skipped(result):
    assert result.run_requests == []
    return result.skip_reason.skip_message


@pytest.fixture
def lake(instance, root):
    return Lake(instance, root)


@pytest.fixture
def healthy(lake):
    lake.track("BTC/USDT", "ETH/USDT")
    lake.run(lake.tick())
    assert skipped(lake.tick()).startswith("nothing to request")  # a tick saw the backfill land
    return lake


def test_new_symbols_are_backfilled_from_their_start_then_a_tick_requests_nothing(lake):
    lake.track("BTC/USDT", "ETH/USDT")
    first = lake.tick()
    assert requested(first) == [  # the same days and layers of neighbouring symbols: one run
        ("refetch", "BTC/USDT..ETH/USDT", "2024-03-05", "2024-03-10", ["clean_bars", "raw_ohlcv"],
         "BTC/USDT: 6 missing; ETH/USDT: 6 missing"),
    ]
    assert first.run_requests[0].tags["lakehouse/audit"].startswith(
        "24 missing, 0 incomplete, 0 stale, 0 invalid, 0 outdated; 0 partitions in flight")
    lake.run(first)
    assert skipped(lake.tick()).startswith(
        "nothing to request: 0 missing, 0 incomplete, 0 stale, 0 invalid, 0 outdated; 0 partitions in flight; "
        "0 confirmed source gaps (audited 24 partitions of 2 symbol(s) x 2 layer(s)); audit took ")
    assert json.loads(lake.cursor)["ticks"] == 2

    lake.track("SOL/USDT", start=dt.date(2024, 3, 9))  # a symbol added later gets its whole history
    assert requested(lake.tick()) == [
        ("refetch", "SOL/USDT", "2024-03-09", "2024-03-10", ["clean_bars", "raw_ohlcv"], "2 missing")]


def test_damaged_partitions_and_only_they_are_repaired_back_to_the_original(healthy):
    lake = healthy
    raw_before, clean_before = lake.snapshot(RAW_OHLCV), lake.snapshot(CLEAN_BARS)
    rng = random.Random(20240310)
    picks = rng.sample([(s, d) for s in ("BTC/USDT", "ETH/USDT") for d in CLOSED], 5)
    damage = dict(zip(["delete", "truncate", "corrupt", "remove_minutes", "delete_derived"], picks))
    for kind, (symbol, day) in damage.items():
        if kind == "delete_derived":
            lake.storage.delete_partition(CLEAN_BARS, EX, symbol, day)
            continue
        path = lake.storage.partition_path(RAW_OHLCV, EX, symbol, day)
        if kind == "delete":
            path.unlink()
        elif kind == "truncate":
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        elif kind == "corrupt":
            path.write_bytes(rng.randbytes(path.stat().st_size))
        else:
            df = lake.storage.read_partition(RAW_OHLCV, EX, symbol, day)
            keep = pl.col("timestamp").dt.hour().is_in([3, 4]).not_()  # two hours cut out of the middle
            lake.storage.write_partition(RAW_OHLCV, EX, symbol, day, df.filter(keep))

    result = lake.tick()
    order = instance_symbols(lake)
    covered = {(s, d, r.tags["lakehouse/repair"], tuple(sorted(k.to_user_string() for k in r.asset_selection)))
               for r in result.run_requests for s, d in covered_partitions(r.tags, order)}
    expected = {(s, d, "rebuild" if k == "delete_derived" else "refetch",
                 ("clean_bars",) if k == "delete_derived" else ("clean_bars", "raw_ohlcv")) for k, (s, d) in damage.items()}
    assert covered == expected
    assert result.run_requests[0].tags["lakehouse/audit"].startswith(
        "2 missing, 1 incomplete, 0 stale, 2 invalid, 3 outdated; 0 partitions in flight")

    lake.run(result)
    for layer, before in ((RAW_OHLCV, raw_before), (CLEAN_BARS, clean_before)):
        after = lake.snapshot(layer)
        assert sorted(after) == sorted(before) and all(after[k].equals(before[k]) for k in before)
    assert skipped(lake.tick()).startswith("nothing to request: 0 missing, 0 incomplete, 0 stale, 0 invalid, 0 outdated")


def test_queued_or_running_partitions_are_not_requested_twice(lake):
    lake.track("BTC/USDT", "ETH/USDT")
    first = lake.tick()
    # The daemon queues what a tick requests; nothing is requested again while those runs wait or run.
    job = "__anonymous_asset_job_lakehouse_repair"
    origin = RemoteJobOrigin(RemoteRepositoryOrigin(
        InProcessCodeLocationOrigin(LoadableTargetOrigin(python_file=__file__)), "__repository__"), job)
    for request, status in zip(first.run_requests, [DagsterRunStatus.QUEUED, DagsterRunStatus.STARTED]):
        lake.instance.run_storage.add_run(DagsterRun(job_name=job, status=status, tags=request.tags,
                                                     remote_job_origin=origin))
    assert skipped(lake.tick()).startswith(
        "nothing to request: 24 missing, 0 incomplete, 0 stale, 0 invalid, 0 outdated; 24 partitions in flight;")

    lake.track("SOL/USDT", start=dt.date(2024, 3, 9))
    assert requested(lake.tick()) == [
        ("refetch", "SOL/USDT", "2024-03-09", "2024-03-10", ["clean_bars", "raw_ohlcv"], "2 missing")]


def test_a_source_outage_converges_to_a_confirmed_gap(instance, root, monkeypatch):
    outage = day_start_ms(dt.date(2024, 3, 7)) + 600 * MINUTE_MS
    lake = Lake(instance, root, exchange=OutageExchangeResource(outage_start_ms=outage,
                                                                 outage_end_ms=outage + 45 * MINUTE_MS),
                assets=[raw_ohlcv])
    lake.track("BTC/USDT")
    lake.run(lake.tick())  # the backfill meets the outage

    refetch = lake.tick()
    assert requested(refetch) == [("refetch", "BTC/USDT", "2024-03-07", "2024-03-07", ["raw_ohlcv"], "1 incomplete")]
    lake.run(refetch)  # same answer: the next attempt waits (15 minutes by default), it is not re-fetched every tick
    assert "1 waiting to retry" in skipped(lake.tick())

    monkeypatch.setenv("LAKEHOUSE_RETRY_DELAY_MINUTES", "0")
    for _ in range(2):
        again = lake.tick()
        assert requested(again) == requested(refetch)
        lake.run(again)
    message = skipped(lake.tick())
    assert message.startswith("nothing to request: 0 missing, 0 incomplete, 0 stale, 0 invalid, 0 outdated; "
                              "0 partitions in flight; 1 confirmed source gaps")
    assert len(lake.runs) == 4  # the backfill and exactly 3 refetches
    ledger = json.loads(lake.storage.read_meta("audit/ledger.json"))
    [(key, entry)] = ledger["confirmed"].items()
    assert (key, entry["attempts"]) == ("raw_ohlcv|simulated|BTC/USDT|2024-03-07", 3)
    assert skipped(lake.tick()).startswith("nothing to request")


def test_a_stale_current_day_is_refreshed_alone(healthy, instance, root):
    later = Lake(instance, root, exchange=SimulatedExchangeResource(outage_rate=0.0, now_ms=NOW_MS + 20 * MINUTE_MS))
    result = later.tick()
    assert requested(result) == [
        ("refetch", "BTC/USDT..ETH/USDT", "2024-03-10", "2024-03-10", ["clean_bars", "raw_ohlcv"],
         "BTC/USDT: 1 stale; ETH/USDT: 1 stale"),
    ]
    later.run(result)
    assert later.storage.read_partition(RAW_OHLCV, EX, "BTC/USDT", DAYS[-1]).height == 12 * 60 + 54


def test_per_symbol_freshness_is_recorded_for_the_ui(instance, root):
    lake = Lake(instance, root, assets=[raw_ohlcv], checks=[symbol_freshness])
    lake.track("BTC/USDT")
    lake.run(lake.tick())
    lake.tick()
    record = instance.get_latest_asset_check_evaluation_record(AssetCheckKey(AssetKey(RAW_OHLCV), "symbol_freshness"))
    evaluation = record.event.dagster_event.event_specific_data
    assert evaluation.passed
    table = evaluation.metadata["symbols"].value
    assert "| BTC/USDT | 2024-03-10T12:33:00Z | 0 min | fresh | 100.000% (6/6 days) | 0 (0 min) | 0 (0 min) | SUCCESS" in table
    assert evaluation.metadata["fresh_symbols"].value == 1


def test_scores_are_kept_current_by_the_repair_loop_alone(instance, root):
    """`lakehouse dev` with only the sensor: after the partitioned layers settle, one tick rebuilds the scores
    table, again when a repair rewrote its inputs, and not while they are unchanged."""
    from assets.derived import DERIVED_ASSETS

    lake = Lake(instance, root, assets=[raw_ohlcv, *DERIVED_ASSETS])
    lake.track("BTC/USDT", start=dt.date(2024, 3, 10))
    first = lake.tick()
    assert [sorted(k.to_user_string() for k in r.asset_selection) for r in first.run_requests] == [
        ["clean_bars", "indicators", "raw_ohlcv", "rejected_candles", "signals"]]
    lake.run(first)

    def scores_requests():
        result = lake.tick()
        return [(r.tags["lakehouse/reasons"], [k.to_user_string() for k in r.asset_selection]) for r in result.run_requests]

    assert scores_requests() == [("scores: never built", ["scores"])]
    run = materialize(lake.assets, selection=[AssetKey("scores")], instance=instance, resources=lake.resources)
    assert run.success and lake.storage.table_path("scores").exists()
    assert skipped(lake.tick()).startswith("nothing to request")

    # New signals (a repair, a backfill from the UI) make the table out of date.
    instance.report_runless_asset_event(AssetMaterialization("signals", partition="2024-03-10|BTC/USDT"))
    assert scores_requests() == [("scores: inputs changed since built", ["scores"])]
    lake.storage.table_path("scores").unlink()  # a lost file is rebuilt, like any partition
    assert scores_requests() == [("scores: its file is missing", ["scores"])]


def test_symbols_whose_shared_run_failed_are_requested_alone_so_a_bad_one_fails_only_itself(lake, monkeypatch):
    monkeypatch.setenv("LAKEHOUSE_RETRY_DELAY_MINUTES", "0")  # failed partitions are requested again at once
    lake.track("BTC/USDT", "NOPE/USDT", "ETH/USDT", start=dt.date(2024, 3, 9))  # the exchange does not list NOPE

    def run_all(result):
        return [materialize(lake.assets, selection=r.asset_selection, tags=r.tags, instance=lake.instance,
                            resources=lake.resources, raise_on_error=False).success for r in result.run_requests]

    first = lake.tick()
    assert [t[1] for t in requested(first)] == ["BTC/USDT..ETH/USDT"]
    assert run_all(first) == [False]
    second = lake.tick()  # each symbol of the failed run alone now
    assert [t[1] for t in requested(second)] == ["BTC/USDT", "ETH/USDT", "NOPE/USDT"]
    assert run_all(second) == [True, True, False]
    third = lake.tick()
    assert [t[1] for t in requested(third)] == ["NOPE/USDT"]
    assert sorted(lake.instance.get_materialized_partitions(AssetKey(RAW_OHLCV))) == [
        f"2024-03-{d}|{s}" for d in ("09", "10") for s in ("BTC/USDT", "ETH/USDT")]
