"""Dagster's SQLite event log, writing a batch of asset events in one transaction per database.

A range run over N days of K layers writes a planned event and a materialization per asset-partition. Dagster
hands those over in batches when DAGSTER_EVENT_BATCH_SIZE is set (planned events at run start, the
materializations of one output), but the OSS SQLite storage stores a batch one event at a time: two databases
opened, written, committed and closed per event, about 12 ms each, half of a month's backfill. This storage
writes the same rows (run shard, then the cross-run index: event, tags, asset key) in one transaction per
database. Other events of a batch (asset check events) go through Dagster's own path, in order.

Used by the project's dagster.yaml:

    event_log_storage:
      module: resources.event_log
      class: BatchingSqliteEventLogStorage
"""

from __future__ import annotations

import os
from typing import Any, Sequence

from sqlalchemy import exc as db_exc

from dagster._core.event_api import EventLogEntry
from dagster._core.events import ASSET_EVENTS
from dagster._core.storage.event_log.schema import AssetKeyTable, SqlEventLogStorageTable
from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage
from dagster._serdes import ConfigurableClassData

# Events per batch Dagster buffers before handing them over; the buffer is flushed at the end of each batch
# anyway (end of the planned events, end of an output's materializations).
DEFAULT_EVENT_BATCH_SIZE = "10000"


def enable_event_batching() -> None:
    """Ask Dagster to hand over asset events in batches (DAGSTER_EVENT_BATCH_SIZE), unless the user set it."""
    os.environ.setdefault("DAGSTER_EVENT_BATCH_SIZE", DEFAULT_EVENT_BATCH_SIZE)


class BatchingSqliteEventLogStorage(SqliteEventLogStorage):
    """SqliteEventLogStorage whose store_event_batch is one transaction per database, not one per event."""

    def __init__(self, base_dir: str | None = None, inst_data: ConfigurableClassData | None = None):
        if base_dir is None:  # where Dagster's default SQLite event log lives, so existing history is kept
            home = os.environ.get("DAGSTER_HOME") or os.getcwd()
            base_dir = os.path.join(home, "history", "runs", "")
        super().__init__(base_dir, inst_data=inst_data)
        # Every process that opens the instance (CLI, daemon, webserver, run worker) builds this storage:
        # turning batching on here means the batches reach it wherever the events are written.
        enable_event_batching()

    @classmethod
    def config_type(cls) -> Any:
        from dagster import Field, StringSource

        return {"base_dir": Field(StringSource, is_required=False)}

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData | None, config_value: Any) -> "BatchingSqliteEventLogStorage":  # noqa: E501
        return cls(inst_data=inst_data, **dict(config_value or {}))

    def store_event_batch(self, events: Sequence[EventLogEntry]) -> None:
        # In order: each stretch of asset events of one run in one go, anything else (check events, which
        # also write their own table) through Dagster's store_event.
        stretch: list[EventLogEntry] = []
        for event in events:
            if _plain_asset_event(event) and (not stretch or event.run_id == stretch[0].run_id):
                stretch.append(event)
                continue
            self._store_asset_events(stretch)
            stretch = []
            if _plain_asset_event(event):
                stretch.append(event)
            else:
                self.store_event(event)
        self._store_asset_events(stretch)

    def _store_asset_events(self, events: Sequence[EventLogEntry]) -> None:
        if len(events) <= 1:
            for event in events:
                self.store_event(event)
            return
        rows = [self._event_to_row(e) for e in events]
        with self.run_connection(events[0].run_id) as conn:
            conn.execute(SqlEventLogStorageTable.insert(), rows)
        with self.index_transaction() as conn:
            # The index keeps its own ids (tags and asset rows point at them): one multi-row insert returning
            # them in the order given.
            insert = SqlEventLogStorageTable.insert().returning(SqlEventLogStorageTable.c.id,
                                                                sort_by_parameter_order=True)
            ids = list(conn.execute(insert, rows).scalars())
            self._store_asset_event_tags(conn, events, ids)
            # One asset-key row per key, with the values the events would have left one after the other: an
            # event's values are overwritten by the next event of its kind, so the last of each kind, in order,
            # leaves the same row (and only it serializes its event, as last_materialization).
            has_index_cols = self._has_asset_key_index_cols_on_connection(conn)
            last_of_kind = {(e.dagster_event.asset_key.to_string(), e.dagster_event.event_type): i
                            for i, e in enumerate(events)}
            final: dict[str, dict[str, Any]] = {}
            for i in sorted(last_of_kind.values()):
                values = self._get_asset_entry_values(events[i], ids[i], has_index_cols)
                if values:
                    final.setdefault(events[i].dagster_event.asset_key.to_string(), {}).update(values)
            for key, values in final.items():
                try:
                    with conn.begin_nested():
                        conn.execute(AssetKeyTable.insert().values(asset_key=key, **values))
                except db_exc.IntegrityError:
                    conn.execute(AssetKeyTable.update().values(**values).where(AssetKeyTable.c.asset_key == key))


def _plain_asset_event(event: EventLogEntry) -> bool:
    """A materialization, planned materialization or observation: stored by the path above, nothing else."""
    dagster_event = event.dagster_event
    return bool(event.is_dagster_event and dagster_event is not None and dagster_event.event_type in ASSET_EVENTS
                and dagster_event.asset_key)
