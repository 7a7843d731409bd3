"""The lakehouse on a real S3-compatible server (moto on loopback): every layer, the audit, the gates, the
manifest cache, read_*, query and the notification records, compared with the same runs on a local folder."""

import datetime as dt
import threading

import polars as pl
import pytest
from click.testing import CliRunner
from dagster import materialize

import lakehouse
from assets.derived import DERIVED_ASSETS
from assets.partitions import partition_key
from assets.raw import raw_ohlcv
from cli.main import cli
from lakehouse.audit import Auditor
from lakehouse.catalog import query
from lakehouse.config import Settings
from lakehouse.gates import Gates
from lakehouse.health import disk_component
from lakehouse.notify import DeliveryLog, Delivery, Notification
from lakehouse.objectstore import ObjectStorage, ObjectStoreError
from lakehouse.registry import TrackedSymbol
from lakehouse.schema import CLEAN_BARS, INDICATORS, RAW_OHLCV, REJECTED_CANDLES, SCORES, SIGNALS
from lakehouse.schema import empty
from lakehouse.storage import PART_FILE, Storage
from resources import LakehouseResource, SimulatedExchangeResource

from helpers import NOW_MS, add_symbols

pytestmark = pytest.mark.services

D1 = dt.date(2024, 3, 8)
EX = "simulated"
LAYERS = (RAW_OHLCV, CLEAN_BARS, REJECTED_CANDLES, INDICATORS, SIGNALS)


def _materialize(root, instance):
    tags = {"dagster/asset_partition_range_start": str(partition_key("BTC/USDT", D1)),
            "dagster/asset_partition_range_end": str(partition_key("BTC/USDT", D1 + dt.timedelta(days=1)))}
    result = materialize([raw_ohlcv, *DERIVED_ASSETS], tags=tags, instance=instance, raise_on_error=False,
                         resources={"exchange": SimulatedExchangeResource(outage_rate=0.0, now_ms=NOW_MS),
                                    "lakehouse": LakehouseResource(root=str(root))})
    assert result.success
    return result


def _s3_urls_given_to_polars(monkeypatch) -> list[str]:
    """polars given an s3:// URL sends it to AWS itself, not to the lakehouse's endpoint: objects must go through
    ObjectStorage's own client (this once cost each derived step ~10 s of timeouts against the internet, hidden
    by a fallback). Returns the list such calls are recorded in."""
    calls: list[str] = []
    for name in ("scan_parquet", "read_parquet", "read_parquet_schema"):
        real = getattr(pl, name)

        def guarded(source, *args, _real=real, _name=name, **kwargs):
            sources = source if isinstance(source, (list, tuple)) else [source]
            if any(isinstance(s, str) and s.startswith("s3://") for s in sources):
                calls.append(f"pl.{_name}({str(source)[:120]})")
                raise OSError("no s3:// URL for polars here")
            return _real(source, *args, **kwargs)

        monkeypatch.setattr(pl, name, guarded)
    return calls


def test_every_layer_and_the_audit_work_on_the_object_store_like_on_a_local_folder(s3_env, root, instance,
                                                                                    monkeypatch):
    add_symbols(instance, "BTC/USDT")
    s3 = Storage(s3_env["LAKEHOUSE_ROOT"])
    assert isinstance(s3, ObjectStorage)
    local = Storage(root)
    to_polars = _s3_urls_given_to_polars(monkeypatch)
    _materialize(s3.root, instance)
    _materialize(root, instance)
    assert to_polars == []
    days = [D1 - dt.timedelta(days=1), D1, D1 + dt.timedelta(days=1)]  # the first has no file
    assert s3.read_days(RAW_OHLCV, EX, "BTC/USDT", days).equals(local.read_days(RAW_OHLCV, EX, "BTC/USDT", days))
    assert s3.read_days(RAW_OHLCV, EX, "BTC/USDT", days)["_day"].unique().sort().to_list() == days[1:]
    assert s3.read_days(RAW_OHLCV, EX, "BTC/USDT", days[:1]).equals(local.read_days(RAW_OHLCV, EX, "BTC/USDT", days[:1]))

    for layer in LAYERS:
        days = [s.ref.day for s in s3.list_partitions(layer, EX, "BTC/USDT")]
        assert days == [D1, D1 + dt.timedelta(days=1)], layer
        for day in days:
            assert s3.read_partition(layer, EX, "BTC/USDT", day).equals(
                local.read_partition(layer, EX, "BTC/USDT", day)), (layer, day)
    assert s3.read_table(SCORES).equals(local.read_table(SCORES))
    assert s3.symbols(RAW_OHLCV) == [(EX, "BTC/USDT")]
    assert s3.disk_usage_bytes() > 0
    # The gates were recorded as objects by the checks of the run.
    assert Gates(s3).outcomes(CLEAN_BARS, EX, "BTC/USDT")[D1]["ohlc_sanity"].passed

    # read_* with column/filter pushdown and the DuckDB views (httpfs from its PyPI wheel) read the bucket.
    bars = lakehouse.read_bars("BTC/USDT", "1h", str(D1), str(D1 + dt.timedelta(days=1)), root=s3.root)
    assert bars.equals(lakehouse.read_bars("BTC/USDT", "1h", str(D1), str(D1 + dt.timedelta(days=1)), root=str(root)))
    assert bars.height == 48
    sql = ("select date, count(*) as n, sum(close) as c from raw_ohlcv group by 1 order by 1")
    assert query(s3, sql).equals(query(local, sql)) and query(s3, sql)["n"].to_list() == [1440, 1440]
    assert query(s3, "select count(*) from scores").item() == 1

    # The CLI's query reads the bucket from the environment alone.
    out = CliRunner().invoke(cli, ["query", "select count(*) as n from clean_bars where interval = '1d'",
                                   "--format", "csv"])
    assert out.exit_code == 0 and out.output.splitlines() == ["n", "2"], out.output

    # The audit of the same bucket (one materialization serves both halves: they are slow).
    _audit_uses_listings_and_sees_deleted_and_rewritten_objects(s3)


def _audit_uses_listings_and_sees_deleted_and_rewritten_objects(s3):
    tracked = [TrackedSymbol("BTC/USDT", EX, D1, dt.date(2017, 8, 17), "")]
    closed = lambda audit: [(f.layer, str(f.day), f.state) for f in audit.findings if f.day < D1 + dt.timedelta(days=2)]  # noqa: E731

    # A foreign object whose folder name sorts among the days is not a day of ours: not listed, not summarized.
    s3._put(s3._symbol_key(RAW_OHLCV, EX, "BTC/USDT") + "/date=2024-01-02x/" + PART_FILE, b"not ours")
    s3._put(s3._symbol_key(RAW_OHLCV, EX, "BTC/USDT") + "/date=20240102/" + PART_FILE, b"not ours")
    assert all(len(day) == 10 for day in s3.stat_days(RAW_OHLCV, EX, "BTC/USDT"))
    assert all(f"/date={s.ref.day.isoformat()}/" in str(s.path) for s in s3.list_partitions(RAW_OHLCV))
    cold = Auditor(s3, Settings(), [RAW_OHLCV, CLEAN_BARS])
    assert closed(cold.run(tracked, NOW_MS)) == [] and cold.manifest.files_read == 4
    warm = Auditor(s3, Settings(), [RAW_OHLCV, CLEAN_BARS])
    assert closed(warm.run(tracked, NOW_MS)) == [] and warm.manifest.files_read == 0  # the cache was trusted

    # A deleted object is missing; an object rewritten in place is re-read because its ETag changed (the
    # listing's last-modified alone has 1 s resolution), and garbage there is invalid.
    assert s3.delete_partition(RAW_OHLCV, EX, "BTC/USDT", D1)
    assert not s3.delete_partition(RAW_OHLCV, EX, "BTC/USDT", D1)
    day2 = D1 + dt.timedelta(days=1)
    good = s3.read_partition(CLEAN_BARS, EX, "BTC/USDT", day2)
    s3._put(s3._partition_key(CLEAN_BARS, EX, "BTC/USDT", day2), b"not parquet")
    audit = Auditor(s3, Settings(), [RAW_OHLCV, CLEAN_BARS])
    assert closed(audit.run(tracked, NOW_MS)) == [(RAW_OHLCV, str(D1), "missing"), (CLEAN_BARS, str(day2), "invalid")]
    assert audit.manifest.files_read == 1
    s3.write_partition(CLEAN_BARS, EX, "BTC/USDT", day2, good)
    assert closed(Auditor(s3, Settings(), [RAW_OHLCV, CLEAN_BARS]).run(tracked, NOW_MS)) == [
        (RAW_OHLCV, str(D1), "missing")]


def test_concurrent_gate_records_on_the_object_store_lose_nothing(s3_env):
    s3 = Storage(s3_env["LAKEHOUSE_ROOT"])
    gates = Gates(s3)

    def record(i):
        gates.record_check(CLEAN_BARS, EX, "BTC/USDT", D1 + dt.timedelta(days=i), "ohlc_sanity", i % 2 == 0)

    threads = [threading.Thread(target=record, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    outcomes = gates.outcomes(CLEAN_BARS, EX, "BTC/USDT")
    assert sorted(outcomes) == [D1 + dt.timedelta(days=i) for i in range(8)]
    assert sorted(gates.blocked_days(CLEAN_BARS, EX, "BTC/USDT")) == [D1 + dt.timedelta(days=i) for i in (1, 3, 5, 7)]

    log = DeliveryLog(s3)
    note = Notification(kind="run_failure", severity="FAIL", title="run x failed", lines=("boom",))
    log.record(note, Delivery(channel="webhook", sent=False, error="HTTP 500"))
    assert log.last()["error"] == "HTTP 500" and log.last()["kind"] == "run_failure"


def test_a_missing_bucket_or_unreachable_endpoint_is_a_clear_error(s3_server, monkeypatch):
    env = s3_server.env("no-such-bucket-here")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    s3 = Storage(env["LAKEHOUSE_ROOT"])
    with pytest.raises(ObjectStoreError, match="bucket 'no-such-bucket-here' does not exist at http://127.0.0.1"):
        s3.read_partition(RAW_OHLCV, EX, "BTC/USDT", D1)
    with pytest.raises(ObjectStoreError, match="does not exist"):
        s3.write_partition(RAW_OHLCV, EX, "BTC/USDT", D1, empty(RAW_OHLCV))
    with pytest.raises(ObjectStoreError, match="does not exist"):
        list(s3.list_partitions(RAW_OHLCV))
    assert disk_component(env["LAKEHOUSE_ROOT"]).state == "down"

    out = CliRunner().invoke(cli, ["query", "select count(*) from raw_ohlcv"])
    assert out.exit_code == 2 and "does not exist" in out.output and "Traceback" not in out.output, out.output
    assert "lakehouse-test-secret" not in out.output

    monkeypatch.setenv("LAKEHOUSE_S3_ENDPOINT_URL", "http://127.0.0.1:1")
    with pytest.raises(ObjectStoreError, match="cannot reach the object store at http://127.0.0.1:1"):
        Storage(env["LAKEHOUSE_ROOT"]).read_meta("symbols.json")

    for bad, message in (("s3://", "no valid bucket name"), ("s3://b/x", "no valid bucket name"),
                         ("gs://bucket/x", "only local folders and s3://")):
        monkeypatch.setenv("LAKEHOUSE_ROOT", bad)
        out = CliRunner().invoke(cli, ["query", "select 1"])
        assert out.exit_code == 2 and message in out.output, out.output
    monkeypatch.setenv("LAKEHOUSE_ROOT", "s3://bucket/x")
    monkeypatch.setenv("LAKEHOUSE_S3_ENDPOINT_URL", "127.0.0.1:9000")
    out = CliRunner().invoke(cli, ["query", "select 1"])
    assert out.exit_code == 2 and "LAKEHOUSE_S3_ENDPOINT_URL" in out.output, out.output
