"""`lakehouse status` reads the instance without Dagster and says what Dagster would; `status` and `query` agree."""

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from dagster import DagsterInstance, DagsterRunStatus
from dagster._core.remote_origin import InProcessCodeLocationOrigin, RemoteJobOrigin, RemoteRepositoryOrigin
from dagster._core.storage.dagster_run import DagsterRun
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin

import definitions
from cli.main import cli
from lakehouse.run_tags import range_tags
from resources import LakehouseResource, SimulatedExchangeResource

from helpers import NOW_MS

PROJECT = Path(__file__).resolve().parents[2]


@pytest.fixture
def run(monkeypatch, tmp_path):
    monkeypatch.setattr(definitions, "build_resources", lambda settings=None: {
        "exchange": SimulatedExchangeResource(outage_rate=0.0, now_ms=NOW_MS),
        "lakehouse": LakehouseResource(root=str(tmp_path / "lake"))})
    monkeypatch.setattr("cli.status.now_ms", lambda: NOW_MS)
    return lambda *args: CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_status_reads_the_instance_like_dagster_does_without_importing_it_and_agrees_with_query(run, tmp_path):
    from cli.common import load_settings
    from cli.status import _dagster_audit, _fast_audit

    assert run("symbols", "add", "BTC/USDT", "ETH/USDT", "SOL/USDT", "--start", "2024-03-10").exit_code == 0
    # A backfill from before the registered start moves the start back: status and query then agree.
    done = run("backfill", "--symbols", "BTC/USDT", "--start", "2024-03-09", "--end", "2024-03-10",
               "--assets", "raw_ohlcv")
    assert done.exit_code == 0, done.output
    assert "BTC/USDT: history now starts 2024-03-09 (was 2024-03-10)." in done.output
    instance = DagsterInstance.get()
    # SOL/USDT has a run waiting in the queue: its partitions are in flight, and it is its last run.
    origin = RemoteJobOrigin(RemoteRepositoryOrigin(
        InProcessCodeLocationOrigin(LoadableTargetOrigin(python_file=__file__)), "__repository__"), "__ASSET_JOB")
    instance.run_storage.add_run(DagsterRun(job_name="__ASSET_JOB", status=DagsterRunStatus.QUEUED,
                                            tags=range_tags("SOL/USDT", dt.date(2024, 3, 9), dt.date(2024, 3, 10)),
                                            remote_job_origin=origin))

    fast_audit, fast_runs = _fast_audit(load_settings())
    slow_audit, slow_runs = _dagster_audit()
    assert fast_runs == slow_runs
    assert sorted(fast_runs) == ["BTC/USDT", "SOL/USDT"]  # ETH/USDT never ran
    assert (fast_runs["BTC/USDT"]["status"], fast_runs["SOL/USDT"]["status"]) == ("SUCCESS", "QUEUED")
    assert fast_audit.summary().split(" (audited")[0] == slow_audit.summary().split(" (audited")[0]
    assert "1 partitions in flight" in fast_audit.summary()  # SOL/USDT's start is 03-10: one day of its run
    assert fast_audit.counts() == slow_audit.counts()

    # The real command, in its own process: the same runs, and Dagster never imported.
    code = ("import sys\nfrom cli.main import cli\ntry:\n    cli(['status', '--json'])\nexcept SystemExit as e:\n"
            "    assert not e.code, e.code\nprint('DAGSTER', 'dagster' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], cwd=PROJECT, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "LAKEHOUSE_ROOT": str(tmp_path / "lake")})
    assert result.returncode == 0, result.stderr
    doc, flag = result.stdout.rsplit("DAGSTER", 1)
    assert flag.strip() == "False"
    rows = {r["symbol"]: r for r in json.loads(doc)["symbols"]}
    assert {s: r["last_run"] for s, r in rows.items()} == {**slow_runs, "ETH/USDT": None}

    first_in_query = run("query", "select min(timestamp) as first from raw_ohlcv", "--format", "json").stdout
    assert json.loads(first_in_query)[0]["first"].startswith("2024-03-09 00:00:00")
    assert (rows["BTC/USDT"]["first_candle"], rows["BTC/USDT"]["start"]) == ("2024-03-09T00:00:00Z", "2024-03-09")
