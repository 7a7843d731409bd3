"""Shared fixtures: a temporary lakehouse root, a real temporary Dagster instance, a pinned clock."""

from __future__ import annotations

import os
import sys

import pytest
from dagster import instance_for_test

from lakehouse.exchange.simulated import SimulatedExchange, SimulatedSource
from lakehouse.storage import Storage
from resources import LakehouseResource

from helpers import NOW_MS, add_symbols, free_port, service_reachable  # noqa: F401  (re-exported)


@pytest.fixture
def root(tmp_path):
    path = tmp_path / "lake"
    path.mkdir()
    return path


@pytest.fixture
def storage(root):
    return Storage(root)


@pytest.fixture
def instance(tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    # The project's event log, as dagster.yaml configures it (batches of asset events in one transaction).
    overrides = {"event_log_storage": {"module": "resources.event_log", "class": "BatchingSqliteEventLogStorage",
                                       "config": {"base_dir": str(home / "history" / "runs")}}}
    with instance_for_test(temp_dir=str(home), overrides=overrides) as inst:
        yield inst


@pytest.fixture
def source():
    """Simulated ground truth without random outages (tests add the outages they need)."""
    return SimulatedSource(outage_rate=0.0)


@pytest.fixture
def sim_exchange(source):
    return SimulatedExchange(source, clock=lambda: NOW_MS)


@pytest.fixture
def lakehouse_resource(root):
    return LakehouseResource(root=str(root))


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    """No test reads the developer's data folder or Dagster home by accident."""
    monkeypatch.setenv("LAKEHOUSE_ROOT", str(tmp_path / "lake"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home_env"))
    for var in ("LAKEHOUSE_EXCHANGE", "LAKEHOUSE_EXCHANGE_URL", "LAKEHOUSE_ARCHIVE_URL", "DAGSTER_URL",
                "LAKEHOUSE_POSTGRES_URL", "LAKEHOUSE_CELERY_BROKER_URL", "LAKEHOUSE_S3_ENDPOINT_URL"):
        monkeypatch.delenv(var, raising=False)
    os.makedirs(tmp_path / "dagster_home_env", exist_ok=True)


@pytest.fixture(autouse=True)
def _fresh_exchange_state():
    """Budgets, market lists and archive download bounds are shared per process and per URL; a test's emulator
    may reuse a port."""
    yield
    module = sys.modules.get("lakehouse.exchange.ccxt_client")
    if module is not None:
        module.forget_shared_state()
    module = sys.modules.get("lakehouse.exchange.archive")
    if module is not None:
        module.forget_hosts()
@pytest.fixture(scope="session")
def s3_server():
    """One loopback S3-compatible server for the session (each test takes its own bucket)."""
    from s3_server import S3Server

    try:
        server = S3Server()
    except (OSError, RuntimeError) as exc:
        pytest.skip(f"no S3-compatible server: moto_server could not start ({exc})")
    yield server
    server.stop()


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """LAKEHOUSE_ROOT=s3://<fresh bucket>/lake with the endpoint and credentials set in the environment."""
    env = s3_server.env(s3_server.new_bucket())
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


@pytest.fixture
def postgres_url():
    """A uniquely named database on the loopback PostgreSQL (user postgres, trust), dropped afterwards."""
    import uuid

    if not service_reachable("127.0.0.1", 5432):
        pytest.skip("PostgreSQL is not reachable on 127.0.0.1:5432")
    import psycopg2

    name = f"lakehouse_test_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres")
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()
