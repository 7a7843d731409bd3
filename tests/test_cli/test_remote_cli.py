"""Remote mode against a real deployment: dagster-webserver + dagster-daemon on loopback, the CLI as a subprocess.

One deployment serves the whole module. Ranges are one or two days of raw_ohlcv, the layer that talks to the
exchange, so each backfill is one short run; FOO/USDT is a Dagster partition the simulated exchange does not
list, which raw_ohlcv fails fast for (no retries).
"""

from __future__ import annotations

import datetime as dt
import http.server
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from dagster import DagsterInstance

from assets.partitions import SYMBOLS_PARTITION
from cli.dagster_api import DagsterAPI
from cli.main import cli
from lakehouse.registry import Registry, TrackedSymbol

from deployment import Deployment
from helpers import free_port

pytestmark = pytest.mark.deployment

LAKEHOUSE = str(Path(sys.executable).parent / "lakehouse")


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    base = tmp_path_factory.mktemp("deployment")
    # The repair sensor ticks once at start-up (nothing is registered yet) and not again during the tests, so
    # every run here is one the test launched.
    d = Deployment(base, env={"LAKEHOUSE_REPAIR_INTERVAL_S": "3600"})
    try:
        d.write_config()
        instance = DagsterInstance.from_config(str(d.home))
        try:
            instance.add_dynamic_partitions(SYMBOLS_PARTITION, ["BTC/USDT", "FOO/USDT"])
        finally:
            instance.dispose()
        d.start(already_configured=True)
        yield d
    finally:
        d.stop()


def lakehouse(*args, deployment: Deployment | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, LAKEHOUSE_PROGRESS_INTERVAL_S="1")
    if deployment is not None:
        env.update(DAGSTER_HOME=str(deployment.home), LAKEHOUSE_ROOT=str(deployment.root))
    return subprocess.run([LAKEHOUSE, *args], env=env, capture_output=True, text=True, timeout=timeout)


def in_process(*args, deployment: Deployment):
    """The CLI in this process (no interpreter start-up) on the deployment's instance and lakehouse root."""
    env = {"DAGSTER_HOME": str(deployment.home), "LAKEHOUSE_ROOT": str(deployment.root)}
    result = CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def launched_id(output: str) -> str:
    match = re.search(r"backfill (\w+) launched on http", output)
    assert match, output
    return match.group(1)


def test_unreachable_deployment_exits_4_and_bad_url_exits_2():
    port = free_port()  # nobody listens here
    result = lakehouse("backfill", "--url", f"http://127.0.0.1:{port}", "--assets", "raw_ohlcv")
    assert result.returncode == 4, result.stderr
    assert f"cannot reach http://127.0.0.1:{port}: connection refused" in result.stderr
    assert "Is the Dagster webserver running there?" in result.stderr

    # Usage errors never reach a deployment: exit 2 with what to do instead.
    result = CliRunner().invoke(cli, ["runs", "--url", "ftp://127.0.0.1:3000"])
    assert result.exit_code == 2
    assert "is not a Dagster webserver URL" in result.output

    result = CliRunner().invoke(cli, ["backfill", "--no-wait"])
    assert result.exit_code == 2
    assert "--no-wait applies to remote mode only; add --url" in result.output


@pytest.fixture
def bad_gateway():
    """A loopback HTTP server that answers every request like a proxy whose Dagster is down."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = b"<html><body>502 Bad Gateway</body></html>"
            self.send_response(502)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_refusals_exit_4_with_what_to_do(deployment, bad_gateway):
    run = CliRunner().invoke
    result = run(cli, ["runs", "--url", bad_gateway])
    assert result.exit_code == 4
    assert "answered HTTP 502 without GraphQL JSON" in result.output

    result = run(cli, ["backfill", "--url", deployment.url, "--symbols", "ETH/USDT", "--assets", "raw_ohlcv"])
    assert result.exit_code == 4
    assert f"the deployment at {deployment.url} does not track ETH/USDT; add them there" in result.output

    result = run(cli, ["retry-failed", "nosuchid", "--url", deployment.url])
    assert result.exit_code == 4
    assert "nosuchid" in result.output


def test_backfill_waits_with_progress_and_exits_0(deployment):
    result = lakehouse("backfill", "--url", deployment.url, "--symbols", "BTC/USDT", "--start", "2024-03-01",
                       "--end", "2024-03-02", "--assets", "raw_ohlcv", "--json", deployment=deployment)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    bid = summary["backfill_id"]
    assert summary["status"] == "succeeded"
    assert summary["backfill_url"] == f"{deployment.url}/runs/b/{bid}"
    assert summary["backfills"][0]["status"] == "COMPLETED_SUCCESS"
    assert summary["counts"] == {"partitions": 2, "materialized": 2, "failed": 0, "in_progress": 0}
    assert 2 * 1440 * 0.9 < summary["candles"] <= 2 * 1440  # the simulated exchange has rare real outages
    assert summary["failed"] == []
    # Progress goes to stderr, one plain line per interval, ending with every partition done.
    assert f"backfill {bid} launched on {deployment.url}: {deployment.url}/runs/b/{bid}" in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith(f"backfill {bid}: ")]
    assert lines and lines[0].startswith(f"backfill {bid}: 0/2 done (0 failed")
    assert f"backfill {bid}: 2/2 done (0 failed) {summary['candles']:,} candles" in lines[-1]
    assert any("BTC/USDT 2024-03-01..2024-03-02" in line for line in lines)  # the run in flight, while it ran
    for day in ("2024-03-01", "2024-03-02"):
        assert list(deployment.root.glob(f"raw_ohlcv/exchange=simulated/symbol=BTC-USDT/date={day}/*.parquet"))


def test_failed_symbol_exits_1_then_runs_lists_it_and_retry_failed_reruns_only_it(deployment):
    result = lakehouse("backfill", "--url", deployment.url, "--symbols", "BTC/USDT,FOO/USDT", "--start",
                       "2024-03-03", "--end", "2024-03-03", "--assets", "raw_ohlcv", deployment=deployment)
    assert result.returncode == 1, result.stdout + result.stderr
    bid = launched_id(result.stdout)
    assert f"backfill {bid} failed:" in result.stdout
    failed = [line for line in result.stderr.splitlines() if line.startswith("FAILED ")]
    named = {p for line in failed for p in re.findall(r"(\w+/USDT \d{4}-\d\d-\d\d)", line.split(" in run ")[0])}
    # Dagster may put BTC/USDT in the same range run as FOO/USDT; then it fails with it, and is named too.
    assert "FOO/USDT 2024-03-03" in named, result.stderr
    assert all("simulated does not list FOO/USDT" in line for line in failed if "FOO/USDT" in line)
    assert f"lakehouse retry-failed {bid} --url {deployment.url}" in result.stderr
    failed_lines = [line for line in result.stderr.splitlines() if line.startswith(f"backfill {bid}: ")]
    assert re.search(r"2/2 done \([12] failed\)", failed_lines[-1])

    # The same failure as `lakehouse runs` tells it, from the deployment and from the instance itself.
    remote = json.loads(lakehouse("runs", "--failed", "--json", "--url", deployment.url).stdout)
    local = in_process("runs", "--failed", "--json", deployment=deployment)
    for rows in (remote, local):
        assert {"kind": "backfill", "id": bid, "status": "COMPLETED_FAILED"}.items() <= \
            next(r for r in rows if r["id"] == bid).items()
        bad = [r for r in rows if r["kind"] == "run" and r["backfill_id"] == bid]
        assert bad and all(r["status"] == "FAILURE" for r in bad)
        assert any("does not list FOO/USDT" in (r["error"] or "") for r in bad)
        assert all(r["status"] in ("FAILURE", "CANCELED", "COMPLETED_FAILED", "FAILED") for r in rows)

    result = lakehouse("retry-failed", bid, "--url", deployment.url, "--json")
    assert result.returncode == 1, result.stderr
    retry = json.loads(result.stdout)
    assert retry["backfill_id"] != bid
    retried = {f"{p.split('|')[1]} {p.split('|')[0]}" for g in retry["failed"] for p in g["partitions"]}
    # Only what failed is run again: partitions the first backfill materialized are not in the new one.
    assert retry["counts"]["partitions"] == len(named)
    assert retried == named


def test_timeout_exits_3_and_says_the_backfill_keeps_running(deployment):
    started = time.monotonic()
    result = lakehouse("backfill", "--url", deployment.url, "--symbols", "BTC/USDT", "--start", "2024-03-05",
                       "--end", "2024-03-05", "--assets", "raw_ohlcv", "--timeout", "1s", deployment=deployment)
    assert result.returncode == 3, result.stdout + result.stderr
    bid = launched_id(result.stdout)
    assert time.monotonic() - started < 30
    assert "timed out after 1s waiting for backfill" in result.stderr
    assert "it keeps running on the deployment" in result.stderr
    assert f"{deployment.url}/runs/b/{bid}" in result.stderr and f"lakehouse runs --url {deployment.url}" in result.stderr


def test_no_wait_exits_0_once_the_deployment_accepted_it_and_defaults_to_yesterday_and_today(deployment):
    today = dt.datetime.now(dt.timezone.utc).date()
    yesterday = today - dt.timedelta(days=1)
    result = lakehouse("backfill", "--url", deployment.url, "--symbols", "BTC/USDT", "--assets", "raw_ohlcv",
                       "--no-wait", "--json", deployment=deployment)
    assert result.returncode == 0, result.stderr
    assert f"no --start: refreshing {yesterday}..{today}" in result.stderr
    doc = json.loads(result.stdout)
    assert doc["status"] == "launched" and doc["backfill_url"] == f"{deployment.url}/runs/b/{doc['backfill_id']}"
    api = DagsterAPI(deployment.url)
    assert api.backfill(doc["backfill_id"]).status in ("REQUESTED", "COMPLETED_SUCCESS")
    assert sorted(api.targeted_partitions(doc["backfill_id"], "raw_ohlcv")) == [
        f"{yesterday}|BTC/USDT", f"{today}|BTC/USDT"]


def test_repair_url_launches_exactly_the_dry_run_plan(deployment):
    today = dt.datetime.now(dt.timezone.utc).date()
    start = today - dt.timedelta(days=1)
    # A symbol of its own: the other tests' backfills leave BTC/USDT's recent days written or in flight.
    instance = DagsterInstance.from_config(str(deployment.home))
    try:
        instance.add_dynamic_partitions(SYMBOLS_PARTITION, ["SOL/USDT"])
    finally:
        instance.dispose()
    Registry(deployment.root).upsert(TrackedSymbol("SOL/USDT", "simulated", start, dt.date(2020, 8, 11), ""))
    plan = in_process("repair", "--dry-run", "--json", deployment=deployment)["plan"]
    assert [(p["action"], p["symbol"], p["start"], p["end"]) for p in plan] == [
        ("refetch", "SOL/USDT", str(start), str(today))]

    result = lakehouse("repair", "--url", deployment.url, "--no-wait", "--json", deployment=deployment)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    api = DagsterAPI(deployment.url)
    assert sorted(api.targeted_partitions(doc["backfill_id"], "raw_ohlcv")) == [f"{start}|SOL/USDT", f"{today}|SOL/USDT"]
    # A refetch rebuilds every layer downstream of raw, as the repair sensor would request it.
    assert {a.asset for a in api.backfill(doc["backfill_id"]).partitioned()} == {
        "raw_ohlcv", "clean_bars", "rejected_candles", "indicators", "signals"}
    # The launched partitions are in flight now, so the next audit plans nothing for them.
    again = in_process("repair", "--dry-run", "--json", deployment=deployment)
    assert again["plan"] == []


def test_a_run_waiting_for_a_pool_slot_says_which_run_holds_it(deployment, tmp_path):
    from dagster import DagsterRunStatus
    from dagster._core.storage.dagster_run import DagsterRun

    from lakehouse.liveness import ProcessStamp
    from lakehouse.run_tags import range_tags

    instance = DagsterInstance.from_config(str(deployment.home))
    day = dt.date(2024, 3, 4)
    holder = DagsterRun(job_name="__ephemeral_asset_job__", status=DagsterRunStatus.STARTED,
                        tags={**range_tags("FOO/USDT", day, day), "lakehouse/launched_by": "cli",
                              **ProcessStamp.current().as_tags()})
    instance.run_storage.add_run(holder)
    storage = instance.event_log_storage
    if "exchange" not in storage.get_concurrency_keys():
        storage.set_concurrency_slots("exchange", 1)
    # The runs the repair test launched may still hold the slot: claim it the way a step does, by asking again.
    deadline = time.monotonic() + 120
    while not storage.claim_concurrency_slot("exchange", holder.run_id, "raw_ohlcv").is_claimed:
        assert time.monotonic() < deadline, "the exchange slot stayed busy\n" + deployment.log_tail()
        time.sleep(0.5)
    err = tmp_path / "stderr.txt"
    env = dict(os.environ, LAKEHOUSE_PROGRESS_INTERVAL_S="1", DAGSTER_HOME=str(deployment.home),
               LAKEHOUSE_ROOT=str(deployment.root))
    proc = subprocess.Popen([LAKEHOUSE, "backfill", "--url", deployment.url, "--symbols", "BTC/USDT", "--start",
                             str(day), "--end", str(day), "--assets", "raw_ohlcv", "--timeout", "90s"],
                            env=env, stdout=subprocess.DEVNULL, stderr=err.open("w"))
    expected = (f"waiting for a slot in pool 'exchange', held by run {holder.run_id[:8]} (FOO/USDT {day}, cli, "
                f"pid {os.getpid()} on")
    try:
        deadline = time.monotonic() + 60
        while expected not in err.read_text() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.3)
        assert expected in err.read_text(), err.read_text() + deployment.log_tail()
    finally:
        proc.kill()
        proc.wait()
        # Let the deployment's run go on and leave nothing behind for the other tests.
        storage.free_concurrency_slots_for_run(holder.run_id)
        instance.delete_run(holder.run_id)
        instance.dispose()
