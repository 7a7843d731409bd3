"""`lakehouse status`, `gaps` and `repair` through click, on a temp lakehouse and instance, with a pinned clock."""

import datetime as dt
import json

import pytest
from click.testing import CliRunner
from dagster import DagsterInstance

import definitions
from assets.partitions import SYMBOLS_PARTITION
from cli.main import cli
from lakehouse.exchange.simulated import SimulatedExchange, SimulatedSource
from lakehouse.registry import Registry, TrackedSymbol
from lakehouse.timeutil import MINUTE_MS, day_start_ms
from resources import ExchangeResource, LakehouseResource, SimulatedExchangeResource

from helpers import NOW_MS

OUTAGE_START = day_start_ms(dt.date(2024, 3, 9)) + 180 * MINUTE_MS  # 03:00 to 03:20 UTC


class OutageExchangeResource(ExchangeResource):
    """The simulated exchange at NOW_MS with one exchange-wide 20-minute outage on 2024-03-09."""

    def client(self):
        source = SimulatedSource(outage_rate=0.0, outages=((OUTAGE_START, OUTAGE_START + 20 * MINUTE_MS),))
        return SimulatedExchange(source, clock=lambda: NOW_MS)


@pytest.fixture
def run(monkeypatch, tmp_path):
    def resources(settings=None):
        return {"exchange": exchange[0], "lakehouse": LakehouseResource(root=str(tmp_path / "lake"))}

    exchange = [SimulatedExchangeResource(outage_rate=0.0, now_ms=NOW_MS)]
    monkeypatch.setattr(definitions, "build_resources", resources)
    monkeypatch.setattr("cli.status.now_ms", lambda: NOW_MS)  # status reads the clock without building resources

    def invoke(*args):
        return CliRunner().invoke(cli, list(args), catch_exceptions=False)

    invoke.exchange = exchange
    return invoke


def track(tmp_path, *symbols, start=dt.date(2024, 3, 8)):
    for s in symbols:
        Registry(tmp_path / "lake").upsert(TrackedSymbol(s, "simulated", start, dt.date(2017, 8, 17), ""))
    DagsterInstance.get().add_dynamic_partitions(SYMBOLS_PARTITION, list(symbols))


def test_repair_dry_run_prints_the_plan_and_changes_nothing(run, tmp_path):
    track(tmp_path, "BTC/USDT", "ETH/USDT")
    result = run("repair", "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert [(p["action"], p["symbol"], p["start"], p["end"], p["reasons"]) for p in doc["plan"]] == [
        ("refetch", "BTC/USDT", "2024-03-08", "2024-03-10", {"missing": 3}),
        ("refetch", "ETH/USDT", "2024-03-08", "2024-03-10", {"missing": 3}),
    ]
    assert doc["plan"][0]["layers"][0] == "raw_ohlcv"
    assert not (tmp_path / "lake" / "raw_ohlcv").exists()
    text = run("repair", "--dry-run").output.splitlines()
    assert text[1:] == [
        "plan: 2 run(s)",
        f"  refetch  BTC/USDT     2024-03-08..2024-03-10 (3 day(s)): 3 missing; {', '.join(doc['plan'][0]['layers'])}",
        f"  refetch  ETH/USDT     2024-03-08..2024-03-10 (3 day(s)): 3 missing; {', '.join(doc['plan'][1]['layers'])}",
    ]


def test_repair_runs_the_plan_then_status_shows_a_complete_fresh_lakehouse(run, tmp_path):
    track(tmp_path, "BTC/USDT", "ETH/USDT")
    result = run("repair", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    # Both symbols need the same days with the same layers: one run repairs them.
    assert (doc["succeeded"], doc["failed_runs"], [(r["symbols"], r["days"]) for r in doc["runs"]]) == (
        True, 0, [(["BTC/USDT", "ETH/USDT"], 3)])
    [record] = DagsterInstance.get().get_run_records()
    tags = record.dagster_run.tags
    assert (tags["lakehouse/repair"], tags["lakehouse/reasons"], "lakehouse/symbol" in tags) == (
        "refetch", "BTC/USDT: 3 missing; ETH/USDT: 3 missing", False)
    again = run("repair")
    assert again.exit_code == 0
    assert again.output.startswith("nothing to repair: 0 missing, 0 incomplete, 0 stale, 0 invalid, 0 outdated;")

    rows = json.loads(run("status", "--json").stdout)["symbols"]
    btc = {k: v for k, v in rows[0].items() if k != "last_run"}
    assert btc == {
        "symbol": "BTC/USDT", "exchange": "simulated", "start": "2024-03-08",
        "first_candle": "2024-03-08T00:00:00Z", "last_candle": "2024-03-10T12:33:00Z",
        "days_covered": 3, "days_expected": 3, "completeness_pct": 100.0,
        "confirmed_gaps": 0, "confirmed_gap_minutes": 0, "open_gaps": 0, "open_gap_minutes": 0,
        "freshness": "fresh", "age_minutes": 0, "partitions_needing_work": 0, "partitions_in_flight": 0,
    }
    assert rows[0]["last_run"]["status"] == "SUCCESS"
    table = run("status").output.splitlines()
    assert table[0].split() == ["SYMBOL", "FIRST", "CANDLE", "LAST", "CANDLE", "DAYS", "COMPLETE", "SOURCE", "GAPS",
                                "OPEN", "GAPS", "FRESHNESS", "LAST", "RUN"]
    assert table[1].split()[:9] == ["BTC/USDT", "2024-03-08T00:00:00Z", "2024-03-10T12:33:00Z", "3/3", "100.000%",
                                    "0", "/", "0m", "0"]


def test_a_source_gap_is_open_then_confirmed_after_identical_refetches(run, tmp_path, monkeypatch):
    run.exchange[0] = OutageExchangeResource()
    monkeypatch.setenv("LAKEHOUSE_RETRY_DELAY_MINUTES", "0")
    track(tmp_path, "BTC/USDT", start=dt.date(2024, 3, 9))
    assert run("repair").exit_code == 0
    gap = {"start": "2024-03-09T03:00:00Z", "end": "2024-03-09T03:20:00Z", "minutes": 20}
    [open_gap] = json.loads(run("gaps", "BTC/USDT", "--json").stdout)
    assert {k: open_gap[k] for k in (*gap, "confirmed_at_source", "kind", "checks")} == {
        **gap, "confirmed_at_source": False, "kind": "gap", "checks": 0}
    plans = []
    for _ in range(4):
        result = run("repair", "--json")
        assert result.exit_code == 0
        plans.append([(p["start"], p["reasons"]) for p in json.loads(result.stdout)["plan"]])
    assert plans == [[("2024-03-09", {"incomplete": 1})]] * 3 + [[]]
    [confirmed] = json.loads(run("gaps", "BTC/USDT", "--json").stdout)
    assert {k: confirmed[k] for k in (*gap, "confirmed_at_source", "checks")} == {
        **gap, "confirmed_at_source": True, "checks": 3}
    assert confirmed["confirmed_at"] is not None
    assert run("gaps", "BTC/USDT").output.splitlines()[-1] == "1 gap(s), 20 minutes; 1 confirmed at source"
    row = json.loads(run("status", "--json").stdout)["symbols"][0]
    assert (row["confirmed_gaps"], row["confirmed_gap_minutes"], row["open_gaps"]) == (1, 20, 0)


@pytest.mark.parametrize("symbol, message", [
    ("NOPE/USDT", "NOPE/USDT is not tracked; see 'lakehouse symbols list'"),
    ("BTC|USDT", "invalid symbol 'BTC|USDT'"),
])
def test_gaps_of_an_unknown_or_malformed_symbol_is_a_usage_error(run, tmp_path, symbol, message):
    track(tmp_path, "BTC/USDT")
    result = run("gaps", symbol)
    assert result.exit_code == 2
    assert message in result.output


def test_repair_exits_1_and_names_what_failed(run, tmp_path):
    track(tmp_path, "BTC/USDT", "NOPE/USDT", start=dt.date(2024, 3, 10))  # the exchange does not list NOPE
    result = run("repair")
    assert result.exit_code == 1
    # They shared a run, which failed; each then ran alone, so only the bad one fails.
    assert "3 run(s): 1 succeeded, 1 failed, 1 failed over several symbols and ran again symbol by symbol" in result.output
    assert "FAILED NOPE/USDT 2024-03-10..2024-03-10" in result.output
    assert "does not list NOPE/USDT" in result.output
