"""LAKEHOUSE_POSTGRES_URL puts the Dagster instance (runs, event log, schedules) in PostgreSQL."""

import datetime as dt
import os

import pytest
from click.testing import CliRunner
from dagster import AssetKey, DagsterInstance, materialize

from assets.partitions import partition_key
from assets.raw import raw_ohlcv
from cli.instance import GENERATED_MARKER, ensure_dagster_home
from cli.main import cli
from resources import LakehouseResource, SimulatedExchangeResource

from helpers import NOW_MS, add_symbols

pytestmark = pytest.mark.services


def test_postgres_url_generates_the_instance_config_and_sqlite_stays_the_default(postgres_url, tmp_path,
                                                                                  monkeypatch, root):
    home = tmp_path / "home"
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.delenv("LAKEHOUSE_POSTGRES_URL", raising=False)
    ensure_dagster_home()
    assert (home / "dagster.yaml").is_symlink()  # the embedded default: the project's dagster.yaml

    # The server trusts loopback, so a password in the URL is accepted and ignored: it must not reach the file.
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("LAKEHOUSE_POSTGRES_URL", postgres_url.replace("postgres@", "postgres:pa%3Ass@"))
    ensure_dagster_home()
    text = (home / "dagster.yaml").read_text()
    assert text.startswith(GENERATED_MARKER)
    assert "postgres_url: " + postgres_url.replace("postgresql://", "postgresql+psycopg2://") in text
    assert "pa" + "%3Ass" not in text and "pa:ss" not in text and os.environ["PGPASSWORD"] == "pa:ss"
    with DagsterInstance.get() as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        assert type(instance.schedule_storage).__name__ == "PostgresScheduleStorage"
        assert instance.get_concurrency_config().pool_config.default_pool_limit == 1  # project settings kept
        add_symbols(instance, "BTC/USDT")
        result = materialize([raw_ohlcv], partition_key=str(partition_key("BTC/USDT", dt.date(2024, 3, 8))),
                             instance=instance,
                             resources={"exchange": SimulatedExchangeResource(outage_rate=0.0, now_ms=NOW_MS),
                                        "lakehouse": LakehouseResource(root=str(root))})
        assert result.success

    # Another process (here: a fresh instance from the same settings) sees the same run and materialization.
    with DagsterInstance.get() as again:
        assert again.get_run_by_id(result.run_id).is_success
        assert again.get_latest_materialization_event(AssetKey("raw_ohlcv")).run_id == result.run_id
    # ...and so does the CLI, from nothing but the settings.
    out = CliRunner().invoke(cli, ["runs", "--limit", "5", "--json"])
    assert out.exit_code == 0 and result.run_id in out.output, out.output

    # Unset again: back to the embedded SQLite instance, the generated file removed.
    monkeypatch.delenv("LAKEHOUSE_POSTGRES_URL")
    ensure_dagster_home()
    assert (home / "dagster.yaml").is_symlink()


def test_a_malformed_postgres_or_broker_url_is_refused_without_echoing_it(monkeypatch):
    monkeypatch.setenv("LAKEHOUSE_POSTGRES_URL", "mysql://user:hunter2@db/x")
    out = CliRunner().invoke(cli, ["query", "select 1"])
    assert out.exit_code == 2 and "LAKEHOUSE_POSTGRES_URL must be a URL such as postgresql://" in out.output
    assert "hunter2" not in out.output
    monkeypatch.delenv("LAKEHOUSE_POSTGRES_URL")
    monkeypatch.setenv("LAKEHOUSE_CELERY_BROKER_URL", "http://guest:s3cret@127.0.0.1:5672")
    out = CliRunner().invoke(cli, ["query", "select 1"])
    assert out.exit_code == 2 and "LAKEHOUSE_CELERY_BROKER_URL" in out.output and "s3cret" not in out.output


def test_the_deploy_instance_yaml_runs_on_postgres_with_the_exchange_pool(postgres_url, tmp_path, monkeypatch):
    import shutil

    import yaml

    from cli.instance import PROJECT_ROOT

    monkeypatch.setenv("DAGSTER_POSTGRES_URL", postgres_url.replace("postgresql://", "postgresql+psycopg2://"))
    shutil.copy(PROJECT_ROOT / "deploy" / "dagster.yaml", tmp_path / "dagster.yaml")
    instance = DagsterInstance.from_config(str(tmp_path))
    try:
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        assert instance.get_concurrency_config().pool_config.default_pool_limit == 1
    finally:
        instance.dispose()
    compose = yaml.safe_load((PROJECT_ROOT / "deploy" / "docker-compose.yml").read_text())
    assert {"webserver", "daemon", "worker", "postgres", "rabbitmq", "minio"} <= set(compose["services"])
    values = yaml.safe_load((PROJECT_ROOT / "deploy" / "helm" / "values.yaml").read_text())
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
