"""One freshness policy for every layer, from the settings (LAKEHOUSE_FRESHNESS_WARN_HOURS / _FAIL_HOURS).

Dagster evaluates it per asset (the last materialization of any partition): it says "this layer has stopped
moving". Per-symbol staleness is the audit's job.
"""

from __future__ import annotations

import datetime as dt

from dagster import FreshnessPolicy

from lakehouse.config import Settings


def freshness_policy(settings: Settings | None = None) -> FreshnessPolicy:
    """Warn after `freshness_warn_hours` (default 2 h), fail after `freshness_fail_hours` (default 24 h)."""
    s = settings or Settings.from_env()
    fail = dt.timedelta(hours=s.freshness_fail_hours)
    warn = dt.timedelta(hours=s.freshness_warn_hours)
    # Dagster wants warn < fail; equal settings mean "no separate warning".
    return FreshnessPolicy.time_window(fail_window=fail, warn_window=warn if warn < fail else None)
