"""`lakehouse serve` refuses what cannot work before starting anything: exit 2, one line naming the setting."""

import pytest
from click.testing import CliRunner

from cli.main import cli

from helpers import free_port


@pytest.mark.parametrize("env, args, message", [
    ({}, ["--workers", "1"], "--workers 1 needs LAKEHOUSE_CELERY_BROKER_URL"),
    ({"LAKEHOUSE_CELERY_BROKER_URL": "amqp://guest:secret-pw@127.0.0.1:{port}//"}, [],
     "LAKEHOUSE_CELERY_BROKER_URL: cannot reach the broker at 127.0.0.1:{port}"),
    ({"LAKEHOUSE_POSTGRES_URL": "postgresql://postgres:secret-pw@127.0.0.1:{port}/x"}, ["--workers", "0"],
     "LAKEHOUSE_POSTGRES_URL: cannot reach PostgreSQL at 127.0.0.1:{port}"),
    ({"LAKEHOUSE_DAEMON_INTERVAL_S": "soon"}, ["--workers", "0"], "LAKEHOUSE_DAEMON_INTERVAL_S='soon' is not a number"),
])
def test_serve_refuses_bad_settings_with_exit_2_and_starts_nothing(env, args, message, monkeypatch, tmp_path):
    port = free_port()  # nothing listens there
    for key, value in env.items():
        monkeypatch.setenv(key, value.format(port=port))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    out = CliRunner().invoke(cli, ["serve", "--port", str(free_port()), *args])
    assert out.exit_code == 2 and message.format(port=port) in out.output, out.output
    assert "secret-pw" not in out.output and "Traceback" not in out.output
    assert "started" not in out.output


def test_serve_refuses_a_bucket_that_does_not_exist(s3_server, monkeypatch):
    for key, value in s3_server.env("no-such-bucket-serve").items():
        monkeypatch.setenv(key, value)
    out = CliRunner().invoke(cli, ["serve", "--workers", "0"])
    assert out.exit_code == 2 and "LAKEHOUSE_ROOT: bucket 'no-such-bucket-serve' does not exist" in out.output
    assert "lakehouse-test-secret" not in out.output


def test_a_slot_left_by_a_finished_run_is_freed_when_serve_starts_or_stops(instance, monkeypatch, capsys):
    # A stop can end a run's process right after its step claimed the pool: the run records its own failure
    # and the claim stays. Left to run monitoring, the next runs would wait up to a minute for it.
    from dagster import DagsterRunStatus
    from dagster._core.storage.dagster_run import DagsterRun

    from cli.serve import free_leftovers

    monkeypatch.setenv("DAGSTER_HOME", instance.root_directory)
    storage = instance.event_log_storage
    storage.set_concurrency_slots("exchange", 1)
    for when in ("start", "stop"):
        done = DagsterRun(job_name="__ASSET_JOB", status=DagsterRunStatus.FAILURE)
        instance.run_storage.add_run(done)
        assert storage.claim_concurrency_slot("exchange", done.run_id, "raw_ohlcv").is_claimed
        free_leftovers(when)
        assert storage.get_concurrency_info("exchange").claimed_slots == []
        assert f"run {done.run_id[:8]}" in capsys.readouterr().out
