"""Shared fixtures: a temporary lakehouse root, a real temporary Dagster instance, a pinned clock."""

from __future__ import annotations

import datetime as dt
import os
import socket

import pytest
from dagster import instance_for_test

from assets.partitions import SYMBOLS_PARTITION
from lakehouse.exchange.simulated import SimulatedExchange, SimulatedSource
from lakehouse.storage import Storage
from lakehouse.timeutil import day_start_ms
from resources import LakehouseResource

# A fixed "now" (2024-03-10 12:34:30 UTC) keeps tests independent of the wall clock.
NOW_MS = day_start_ms(dt.date(2024, 3, 10)) + (12 * 60 + 34) * 60_000 + 30_000


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
    with instance_for_test(temp_dir=str(tmp_path / "dagster_home")) as inst:
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


def add_symbols(instance, *symbols):
    instance.add_dynamic_partitions(SYMBOLS_PARTITION, list(symbols))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def service_reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    """No test reads the developer's data folder or Dagster home by accident."""
    monkeypatch.setenv("LAKEHOUSE_ROOT", str(tmp_path / "lake"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home_env"))
    for var in ("LAKEHOUSE_EXCHANGE", "LAKEHOUSE_EXCHANGE_URL", "DAGSTER_URL"):
        monkeypatch.delenv(var, raising=False)
    os.makedirs(tmp_path / "dagster_home_env", exist_ok=True)
