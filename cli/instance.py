"""The Dagster instance the CLI talks to: DAGSTER_HOME, or the project's embedded .dagster_home by default."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_HOME = PROJECT_ROOT / ".dagster_home"


def ensure_dagster_home() -> Path:
    """Create the embedded instance folder with the project's dagster.yaml, and export DAGSTER_HOME."""
    home = Path(os.environ.get("DAGSTER_HOME") or DEFAULT_HOME).resolve()
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists() and (PROJECT_ROOT / "dagster.yaml").exists():
        config.symlink_to(PROJECT_ROOT / "dagster.yaml")
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def get_instance():
    from dagster import DagsterInstance

    ensure_dagster_home()
    return DagsterInstance.get()
