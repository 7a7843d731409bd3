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
    for var in ("LAKEHOUSE_EXCHANGE", "LAKEHOUSE_EXCHANGE_URL", "LAKEHOUSE_ARCHIVE_URL", "DAGSTER_URL"):
        monkeypatch.delenv(var, raising=False)
    os.makedirs(tmp_path / "dagster_home_env", exist_ok=True)


@pytest.fixture(autouse=True)
def _fresh_exchange_state():
    """Budgets and market lists are shared per process and per URL; a test's emulator may reuse a port."""
    yield
    module = sys.modules.get("lakehouse.exchange.ccxt_client")
    if module is not None:
        module.forget_shared_state()
