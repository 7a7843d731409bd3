"""Dagster's SQLite event log, writing a batch of asset events in one transaction per database.

A range run over N days of K layers writes a planned event and a materialization per asset-partition. Dagster
hands those over in batches when DAGSTER_EVENT_BATCH_SIZE is set (planned events at run start, the
materializations of one output), but the OSS SQLite storage stores a batch one event at a time: two databases
opened, written, committed and closed per event, about 12 ms each, half of a month's backfill. This storage
writes the same rows (run shard, then the cross-run index: event, tags, asset key) in one transaction per
database. Other events of a batch (asset check events) go through Dagster's own path, in order.

Every event not in a batch (run and step events, check evaluations: about 45 a run) still costs a connection
of its own. Dagster builds a new SQLAlchemy engine and connection for each (7.8 ms an event here) and
commits with SQLite's default synchronous=FULL, an fsync of the write-ahead log per commit. Here the few
databases used last keep an open connection (1.3 ms an event), with synchronous=NORMAL, SQLite's advice for
WAL mode: a commit survives the process being killed (kill -9, a lost worker); only a power cut can lose
the last commits, and it never leaves a database inconsistent.

Used by the project's dagster.yaml:

    event_log_storage:
      module: resources.event_log
      class: BatchingSqliteEventLogStorage
"""

from __future__ import annotations

import collections
import os
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

from sqlalchemy import create_engine
from sqlalchemy import event as sa_event
from sqlalchemy import exc as db_exc
from sqlalchemy.engine import Connection

from dagster._core.event_api import EventLogEntry
from dagster._core.events import ASSET_EVENTS
from dagster._core.storage.event_log.schema import AssetKeyTable, SqlEventLogStorageTable
from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage
from dagster._core.storage.sqlite import SQLITE_BUSY_TIMEOUT_SECONDS
from dagster._serdes import ConfigurableClassData

# Events per batch Dagster buffers before handing them over; the buffer is flushed at the end of each batch
# anyway (end of the planned events, end of an output's materializations).
DEFAULT_EVENT_BATCH_SIZE = "10000"
_OPEN_SHARDS = 8  # databases (the cross-run index, recent runs) whose connection stays open


def enable_event_batching() -> None:
    """Ask Dagster to hand over asset events in batches (DAGSTER_EVENT_BATCH_SIZE), unless the user set it."""
    os.environ.setdefault("DAGSTER_EVENT_BATCH_SIZE", DEFAULT_EVENT_BATCH_SIZE)


class BatchingSqliteEventLogStorage(SqliteEventLogStorage):
    """SqliteEventLogStorage whose store_event_batch is one transaction per database, not one per event."""

    def __init__(self, base_dir: str | None = None, inst_data: ConfigurableClassData | None = None):
        if base_dir is None:  # where Dagster's default SQLite event log lives, so existing history is kept
            home = os.environ.get("DAGSTER_HOME") or os.getcwd()
            base_dir = os.path.join(home, "history", "runs", "")
        self._engines: collections.OrderedDict = collections.OrderedDict()  # shard -> engine, least recent first
        self._engines_pid = os.getpid()
        super().__init__(base_dir, inst_data=inst_data)
        # Every process that opens the instance (CLI, daemon, webserver, run worker) builds this storage:
        # turning batching on here means the batches reach it wherever the events are written.
        enable_event_batching()

    @contextmanager
    def _connect(self, shard: str) -> Iterator[Connection]:
        # As SqliteEventLogStorage._connect (same lock, same first-use setup), but reusing an open connection.
        with self._db_lock:
            engine = self._engine(shard)
            if shard not in self._initialized_dbs:
                self._initdb(engine)
                self._initialized_dbs.add(shard)
            with engine.connect() as conn, conn.begin():
                yield conn

    def _engine(self, shard: str):
        """The shard's engine, holding one open connection; only the few shards used last keep theirs, so a
        long-lived webserver or daemon reading many runs' events holds a bounded number of files open."""
        if self._engines_pid != os.getpid():  # a forked child must not share its parent's connections
            self._engines, self._engines_pid = collections.OrderedDict(), os.getpid()
        engine = self._engines.pop(shard, None)
        if engine is None:
            engine = create_engine(self.conn_string_for_shard(shard), pool_size=1, max_overflow=4,
                                   connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS})
            sa_event.listen(engine, "connect", _normal_sync)
        self._engines[shard] = engine
        while len(self._engines) > _OPEN_SHARDS:
            self._engines.popitem(last=False)[1].dispose()
        return engine

    def _dispose_engines(self) -> None:
        engines, self._engines = self._engines, collections.OrderedDict()
        if self._engines_pid == os.getpid():
            for engine in engines.values():
                engine.dispose()

    def wipe(self) -> None:
        self._dispose_engines()  # wipe deletes the run databases: no connection may keep writing to them
        super().wipe()

    def dispose(self) -> None:
        self._dispose_engines()
        super().dispose()

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


def _normal_sync(dbapi_connection, _record) -> None:
    dbapi_connection.execute("PRAGMA synchronous=NORMAL")


def _plain_asset_event(event: EventLogEntry) -> bool:
    """A materialization, planned materialization or observation: stored by the path above, nothing else."""
    dagster_event = event.dagster_event
    return bool(event.is_dagster_event and dagster_event is not None and dagster_event.event_type in ASSET_EVENTS
                and dagster_event.asset_key)
