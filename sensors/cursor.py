"""Sensor cursors are JSON objects; a missing or damaged one starts the sensor afresh instead of failing its tick."""

from __future__ import annotations

import json


def load_cursor(raw: str | None) -> dict:
    try:
        value = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
