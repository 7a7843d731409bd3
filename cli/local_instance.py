"""A cheap, read-only look at the embedded Dagster instance (SQLite under DAGSTER_HOME), without importing Dagster.

`lakehouse status` needs three small facts from the instance: the tracked symbols (the `symbols` dynamic
partitions), the recent runs with their partition tags (the "last run" column) and the runs still queued or
running (partitions in flight). Importing Dagster and opening the instance costs seconds; these rows are a few
indexed SQLite reads. Anything this reader cannot answer exactly (an instance on another storage, a backfill in
progress whose partitions only Dagster can list, a file it cannot read) makes `open` or a read return None, and
the caller asks Dagster itself. tests/test_cli/test_fast_cli.py checks that both readers agree.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import sqlite3
from pathlib import Path

from lakehouse.run_tags import PARTITION_TAG, RANGE_END_TAG, RANGE_START_TAG
from lakehouse.status import ACTIVE_RUN_STATUSES, RunSummary

# Instance settings that move storage off the default SQLite files under DAGSTER_HOME. The project's own
# batching event log (resources/event_log.py) keeps Dagster's SQLite files where they are, unless given a base_dir.
_OTHER_STORAGE = re.compile(r"^(storage|run_storage)\s*:", re.MULTILINE)
_EVENT_LOG = re.compile(r"^event_log_storage\s*:[^\n]*\n((?:[ \t]+[^\n]*\n?)*)", re.MULTILINE)


def _elsewhere(config: str) -> bool:
    if _OTHER_STORAGE.search(config):
        return True
    block = _EVENT_LOG.search(config)
    return bool(block) and ("resources.event_log" not in block.group(1) or "base_dir" in block.group(1))
_TAGS = (RANGE_START_TAG, RANGE_END_TAG, PARTITION_TAG)


class LocalInstance:
    def __init__(self, home: Path):
        self.runs_db = home / "history" / "runs.db"
        self.index_db = home / "history" / "runs" / "index.db"

    @classmethod
    def open(cls, home: str | os.PathLike) -> "LocalInstance | None":
        """The reader for this DAGSTER_HOME, or None when its dagster.yaml puts storage elsewhere."""
        home = Path(home)
        try:
            config = (home / "dagster.yaml").read_text()
        except FileNotFoundError:
            config = ""
        except OSError:
            return None
        return None if _elsewhere(config) else cls(home)

    def _query(self, db: Path, sql: str, params=()) -> list[tuple] | None:
        """Rows, [] when the file does not exist yet (a fresh instance has nothing), None when unreadable."""
        if not db.exists():
            return []
        try:
            con = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=2.0)
            try:
                return con.execute(sql, params).fetchall()
            finally:
                con.close()
        except sqlite3.Error:
            return None

    def dynamic_partitions(self, name: str) -> list[str] | None:
        rows = self._query(self.index_db, "SELECT partition FROM dynamic_partitions WHERE partitions_def_name = ? "
                                          "ORDER BY id", (name,))
        return None if rows is None else [r[0] for r in rows]

    def backfills_in_progress(self) -> int | None:
        rows = self._query(self.runs_db, "SELECT count(*) FROM bulk_actions WHERE status = 'REQUESTED'")
        return None if rows is None else (rows[0][0] if rows else 0)

    def runs(self, limit: int = 300, active_only: bool = False) -> list[RunSummary] | None:
        """The newest runs first (all, or only queued and running ones), with their partition tags."""
        where = f"WHERE status IN ({', '.join('?' * len(ACTIVE_RUN_STATUSES))})" if active_only else ""
        params = ACTIVE_RUN_STATUSES if active_only else ()
        rows = self._query(self.runs_db, f"SELECT run_id, status, create_timestamp, start_time, end_time FROM runs "
                                         f"{where} ORDER BY id DESC LIMIT {int(limit)}", params)
        if not rows:
            return rows
        ids = [r[0] for r in rows]
        tag_rows = self._query(self.runs_db, f"SELECT run_id, key, value FROM run_tags WHERE run_id IN "
                                             f"({', '.join('?' * len(ids))}) AND key IN (?, ?, ?)", (*ids, *_TAGS))
        if tag_rows is None:
            return None
        tags: dict[str, dict[str, str]] = {}
        for run_id, key, value in tag_rows:
            tags.setdefault(run_id, {})[key] = value
        out = []
        for run_id, status, created, started, ended in rows:
            out.append(RunSummary(run_id, status, tags.get(run_id, {}), ended or started or _epoch(created)))
        return out


def _epoch(created) -> float:
    """Dagster stores creation times as naive UTC datetimes."""
    value = dt.datetime.fromisoformat(str(created))
    return value.replace(tzinfo=dt.timezone.utc).timestamp() if value.tzinfo is None else value.timestamp()
