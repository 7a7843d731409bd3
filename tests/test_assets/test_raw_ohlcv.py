import datetime as dt

from dagster import DagsterEventType, AssetKey, materialize

from assets.partitions import partition_key
from assets.raw import raw_ohlcv
from lakehouse.schema import RAW_OHLCV
from resources import SimulatedExchangeResource

from helpers import NOW_MS, add_symbols

D1 = dt.date(2024, 1, 1)


def resources(lakehouse_resource):
    return {"exchange": SimulatedExchangeResource(outage_rate=0.0, now_ms=NOW_MS), "lakehouse": lakehouse_resource}


def test_single_partition_materialization_reports_what_users_want(instance, storage, lakehouse_resource):
    add_symbols(instance, "BTC/USDT")
    result = materialize([raw_ohlcv], partition_key=partition_key("BTC/USDT", D1),
                         resources=resources(lakehouse_resource), instance=instance)
    assert result.success
    md = result.asset_materializations_for_node(RAW_OHLCV)[0].metadata
    assert {k: md[k].value for k in ("candles", "expected", "missing_minutes", "requests", "rate_limited_429")} == {
        "candles": 1440, "expected": 1440, "missing_minutes": 0, "requests": 2, "rate_limited_429": 0}
    assert md["first_candle"].value == "2024-01-01T00:00:00Z"
    assert md["last_candle"].value == "2024-01-01T23:59:00Z"
    assert "duration_s" in md
    assert storage.read_partition(RAW_OHLCV, "simulated", "BTC/USDT", D1).height == 1440


def test_range_run_is_one_run_with_a_materialization_per_day(instance, storage, lakehouse_resource):
    add_symbols(instance, "ETH/USDT")
    result = materialize(
        [raw_ohlcv], resources=resources(lakehouse_resource), instance=instance,
        tags={"dagster/asset_partition_range_start": "2024-01-01|ETH/USDT",
              "dagster/asset_partition_range_end": "2024-01-04|ETH/USDT"},
    )
    assert result.success
    mats = {m.partition: m.metadata for m in result.asset_materializations_for_node(RAW_OHLCV)}
    assert sorted(mats) == [f"2024-01-0{i}|ETH/USDT" for i in range(1, 5)]
    for key, md in mats.items():
        # Each day's own figures; the fetch's figures (one pass over the range) are shared and say so.
        assert {k: md[k].value for k in ("candles", "expected", "first_candle", "last_candle")} == {
            "candles": 1440, "expected": 1440, "first_candle": f"{key[:10]}T00:00:00Z",
            "last_candle": f"{key[:10]}T23:59:00Z"}
        assert md["requests"].value == 6  # 5760 candles in one pass: ceil(5760 / 1000)
        assert (md["run_range"].value, md["run_days"].value) == ("2024-01-01..2024-01-04", 4)
    assert instance.fetch_observations(AssetKey(RAW_OHLCV), limit=10).records == []  # no event per day besides
    assert [s.ref.day for s in storage.list_partitions(RAW_OHLCV)] == [D1 + dt.timedelta(days=i) for i in range(4)]


def test_unknown_symbol_fails_fast_without_retries(instance, storage, lakehouse_resource):
    add_symbols(instance, "NOPE/USDT")  # dynamic partitions accept anything; the asset must refuse it
    result = materialize([raw_ohlcv], partition_key=partition_key("NOPE/USDT", D1),
                         resources=resources(lakehouse_resource), instance=instance, raise_on_error=False)
    assert not result.success
    failure = [e for e in result.all_events if e.is_step_failure][0]
    assert "does not list NOPE/USDT" in failure.step_failure_data.error.message
    restarts = [e for e in result.all_events if e.event_type == DagsterEventType.STEP_UP_FOR_RETRY]
    assert restarts == []
    assert list(storage.list_partitions(RAW_OHLCV)) == []


class OneSymbolFailsResource(SimulatedExchangeResource):
    """The simulated exchange, refusing ETH/USDT's candles with an error no retry can mend."""

    def client(self):
        from lakehouse.errors import UserInputError

        client = super().client()
        fetch_page = client.fetch_page

        def refuse_eth(symbol, *args, **kwargs):
            if symbol == "ETH/USDT":
                raise UserInputError("ETH/USDT refused")
            return fetch_page(symbol, *args, **kwargs)

        client.fetch_page = refuse_eth
        return client


def test_a_run_over_symbols_records_those_that_finished_when_one_fails(instance, storage, lakehouse_resource):
    add_symbols(instance, "BTC/USDT", "ETH/USDT", "LTC/USDT")
    result = materialize(
        [raw_ohlcv], instance=instance, raise_on_error=False,
        resources={"exchange": OneSymbolFailsResource(outage_rate=0.0, now_ms=NOW_MS), "lakehouse": lakehouse_resource},
        tags={"dagster/asset_partition_range_start": "2024-01-01|BTC/USDT",
              "dagster/asset_partition_range_end": "2024-01-02|LTC/USDT"},
    )
    assert not result.success
    # BTC ran beside ETH and finished: its files are complete and Dagster records them; ETH's partitions fail.
    # LTC started beside them or, once ETH had failed, not at all: recorded exactly when its files were written.
    ltc = storage.read_partition(RAW_OHLCV, "simulated", "LTC/USDT", D1) is not None
    assert sorted(instance.get_materialized_partitions(AssetKey(RAW_OHLCV))) == [
        f"2024-01-0{d}|{s}" for d in (1, 2) for s in ("BTC/USDT", *(["LTC/USDT"] if ltc else []))]
    event = instance.get_latest_materialization_event(AssetKey(RAW_OHLCV)).asset_materialization
    assert (event.metadata["candles"].value, event.metadata["recorded"].value) == (1440, "its run failed on another symbol")
    assert storage.read_partition(RAW_OHLCV, "simulated", "BTC/USDT", D1).height == 1440
