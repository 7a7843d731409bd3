"""Dagster sensors: thin glue that turns the library's audit into run requests."""

from .repair import REPAIR_SENSOR_NAME, build_repair_sensor

__all__ = ["REPAIR_SENSOR_NAME", "build_repair_sensor"]
