"""The served lakehouse, built once per module (see serving_lakehouse.build_lakehouse)."""

from __future__ import annotations

import shutil

import pytest
from dagster import instance_for_test

from serving_lakehouse import build_lakehouse


@pytest.fixture(scope="session")
def built(tmp_path_factory):
    """(root, dagster home) of a lakehouse of SYMBOLS over FIRST_DAY..LAST_DAY, built once per test session."""
    base = tmp_path_factory.mktemp("served")
    root = base / "lake"
    root.mkdir()
    home = base / "dagster_home"
    home.mkdir()
    with instance_for_test(temp_dir=str(home)) as inst:
        build_lakehouse(root, inst)
        yield root, inst




@pytest.fixture
def lake(built, tmp_path):
    """A private copy of the built lakehouse, for tests that change files."""
    root, inst = built
    copy = tmp_path / "lake-copy"
    shutil.copytree(root, copy)
    return copy, inst
