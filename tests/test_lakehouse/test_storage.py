import datetime as dt
import os

import polars as pl
import pytest

from lakehouse.errors import CorruptPartitionError, InvalidSymbolError, StorageError
from lakehouse.schema import RAW_OHLCV
from lakehouse.storage import Storage

DAY = dt.date(2024, 1, 2)


def frame(n=3, close=1.0):
    ts = [dt.datetime(2024, 1, 2, 0, i, tzinfo=dt.timezone.utc) for i in range(n)]
    return pl.DataFrame({
        "timestamp": ts, "open": [1.0] * n, "high": [2.0] * n, "low": [0.5] * n, "close": [close] * n,
        "volume": [10.0] * n, "exchange": ["simulated"] * n, "symbol": ["BTC/USDT"] * n, "fetched_at": ts,
    })


def test_hive_path_with_encoded_symbol(storage, root):
    path = storage.write_partition(RAW_OHLCV, "simulated", "BTC/USDT", DAY, frame())
    assert path == root / "raw_ohlcv" / "exchange=simulated" / "symbol=BTC-USDT" / "date=2024-01-02" / "part.parquet"
    assert storage.read_partition(RAW_OHLCV, "simulated", "BTC/USDT", DAY)["close"].to_list() == [1.0, 1.0, 1.0]


def test_rewrite_replaces_exactly_its_own_file(storage):
    storage.write_partition(RAW_OHLCV, "simulated", "BTC/USDT", DAY, frame(3, 1.0))
    storage.write_partition(RAW_OHLCV, "simulated", "BTC/USDT", DAY + dt.timedelta(days=1), frame(2, 5.0))
    storage.write_partition(RAW_OHLCV, "simulated", "BTC/USDT", DAY, frame(2, 7.0))
    assert storage.read_partition(RAW_OHLCV, "simulated", "BTC/USDT", DAY)["close"].to_list() == [7.0, 7.0]
    assert storage.read_partition(RAW_OHLCV, "simulated", "BTC/USDT", DAY + dt.timedelta(days=1))["close"].to_list() == [5.0, 5.0]
    assert [s.ref.day for s in storage.list_partitions(RAW_OHLCV)] == [DAY, DAY + dt.timedelta(days=1)]


def test_crash_mid_write_leaves_the_old_file_and_no_temp(storage, monkeypatch):
    storage.write_partition(RAW_OHLCV, "simulated", "BTC/USDT", DAY, frame(3, 1.0))

    def crash(self, *a, **k):
        raise KeyboardInterrupt("power cut")

    monkeypatch.setattr(os, "fsync", crash)  # the new bytes are in the temp file, not yet renamed
    with pytest.raises(KeyboardInterrupt):
        storage.write_partition(RAW_OHLCV, "simulated", "BTC/USDT", DAY, frame(3, 9.0))
    monkeypatch.undo()
    assert storage.read_partition(RAW_OHLCV, "simulated", "BTC/USDT", DAY)["close"].to_list() == [1.0, 1.0, 1.0]
    folder = storage.partition_path(RAW_OHLCV, "simulated", "BTC/USDT", DAY).parent
    assert sorted(os.listdir(folder)) == ["part.parquet"]


def test_the_next_write_sweeps_what_a_killed_writer_left_and_spares_a_fresh_temp(storage):
    # kill -9 between the temp file and the rename leaves the temp file; nothing reads it, and the next write
    # in that folder removes it once it is old enough to belong to no write in progress.
    from lakehouse.storage import STALE_TEMP_S

    folder = storage.partition_path(RAW_OHLCV, "simulated", "BTC/USDT", DAY).parent
    folder.mkdir(parents=True)
    stale, fresh = folder / ".tmp-killed.parquet", folder / ".tmp-in-progress.parquet"
    for f in (stale, fresh):
        f.write_bytes(b"PAR1 torn")
    old = os.stat(stale).st_mtime - STALE_TEMP_S - 60
    os.utime(stale, (old, old))
    meta_dir = storage.meta_path("registry.json").parent
    meta_dir.mkdir(parents=True, exist_ok=True)
    (meta_dir / ".tmp-killed").write_bytes(b"{")
    os.utime(meta_dir / ".tmp-killed", (old, old))

    storage.write_partition(RAW_OHLCV, "simulated", "BTC/USDT", DAY, frame())
    storage.write_meta("registry.json", b"{}")
    assert sorted(os.listdir(folder)) == [".tmp-in-progress.parquet", "part.parquet"]
    assert ".tmp-killed" not in os.listdir(meta_dir)


def test_torn_file_is_reported_as_corrupt(storage):
    path = storage.write_partition(RAW_OHLCV, "simulated", "BTC/USDT", DAY, frame())
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(CorruptPartitionError, match="unreadable"):
        storage.read_partition(RAW_OHLCV, "simulated", "BTC/USDT", DAY)


def test_paths_cannot_escape_the_root(storage):
    with pytest.raises(InvalidSymbolError):
        storage.partition_path(RAW_OHLCV, "simulated", "../../x/y", DAY)
    with pytest.raises(StorageError, match="invalid exchange id"):
        storage.partition_path(RAW_OHLCV, "../evil", "BTC/USDT", DAY)


def test_read_range_skips_missing_days(storage):
    storage.write_partition(RAW_OHLCV, "simulated", "BTC/USDT", DAY, frame(2))
    df = storage.read_range(RAW_OHLCV, "simulated", "BTC/USDT", DAY - dt.timedelta(days=3), DAY + dt.timedelta(days=3))
    assert df.height == 2
    assert Storage(storage.root / "nowhere").read_range(RAW_OHLCV, "simulated", "BTC/USDT", DAY, DAY).height == 0


def test_a_range_scan_reads_only_day_folders_of_the_range(storage):
    storage.write_partition(RAW_OHLCV, "simulated", "BTC/USDT", DAY, frame(2))
    storage.write_partition(RAW_OHLCV, "simulated", "BTC/USDT", DAY + dt.timedelta(days=5), frame(3))
    # A foreign folder whose name sorts inside the range is not a day of ours.
    foreign = storage.symbol_dir(RAW_OHLCV, "simulated", "BTC/USDT") / "date=2024-01-02x"
    foreign.mkdir()
    frame(4).write_parquet(foreign / "part.parquet")
    df = storage.read_range(RAW_OHLCV, "simulated", "BTC/USDT", DAY, DAY + dt.timedelta(days=2),
                            columns=["timestamp", "close"])
    assert df.height == 2 and df.columns == ["timestamp", "close"]
    # Nor does the listing the audit and its manifest summarize (a foreign name there made them fail), nor the
    # partition listing, which would have taken a compact date=20240103 for 2024-01-03.
    compact = storage.symbol_dir(RAW_OHLCV, "simulated", "BTC/USDT") / "date=20240103"
    compact.mkdir()
    frame(4).write_parquet(compact / "part.parquet")
    assert sorted(storage.stat_days(RAW_OHLCV, "simulated", "BTC/USDT")) == ["2024-01-02", "2024-01-07"]
    assert [s.ref.day.isoformat() for s in storage.list_partitions(RAW_OHLCV)] == ["2024-01-02", "2024-01-07"]


def test_a_long_range_read_as_several_scans_keeps_every_row_in_day_order_and_names_a_torn_file(storage):
    # 100 days: more than one scan's share (lakehouse.storage._SCAN_CHUNK_FILES), read at once and concatenated.
    days = [DAY + dt.timedelta(days=i) for i in range(100)]
    for i, day in enumerate(days):
        df = frame(3, close=float(i)).with_columns(
            pl.col("timestamp") + pl.duration(days=i), pl.col("fetched_at") + pl.duration(days=i))
        storage.write_partition(RAW_OHLCV, "simulated", "BTC/USDT", day, df)
    got = storage.read_range(RAW_OHLCV, "simulated", "BTC/USDT", days[0], days[-1], columns=["timestamp", "close"],
                             filter=pl.col("timestamp").dt.minute() < 2)
    assert got.get_column("close").to_list() == [float(i) for i in range(100) for _ in range(2)]
    assert got.get_column("timestamp").is_sorted()
    one_by_one = pl.concat([storage.read_partition(RAW_OHLCV, "simulated", "BTC/USDT", d) for d in days])
    assert storage.read_range(RAW_OHLCV, "simulated", "BTC/USDT", days[0], days[-1],
                              columns=list(one_by_one.columns)).equals(one_by_one)
    torn = storage.partition_path(RAW_OHLCV, "simulated", "BTC/USDT", days[90])
    torn.write_bytes(torn.read_bytes()[:40])
    with pytest.raises(CorruptPartitionError, match="2024-04-01"):
        storage.read_range(RAW_OHLCV, "simulated", "BTC/USDT", days[0], days[-1], columns=["close"])


def test_meta_documents_are_atomic_and_confined(storage):
    assert storage.read_meta("state.json") is None
    storage.write_meta("state.json", b'{"a": 1}')
    storage.write_meta("state.json", b'{"a": 2}')
    assert storage.read_meta("state.json") == b'{"a": 2}'
    assert sorted(os.listdir(storage.root / "_meta")) == ["state.json"]
    with pytest.raises(StorageError, match="outside"):
        storage.write_meta("../escape.json", b"x")


def test_a_written_file_has_the_layers_column_order_even_when_the_frame_has_another(tmp_path):
    from lakehouse.schema import LAYERS, empty

    frame = empty(RAW_OHLCV)
    shuffled = frame.select(list(reversed(frame.columns)))
    path = Storage(tmp_path).write_partition(RAW_OHLCV, "binance", "BTC/USDT", dt.date(2024, 1, 1), shuffled)
    assert list(pl.read_parquet_schema(path).items()) == list(LAYERS[RAW_OHLCV].items())


def test_days_encoded_together_are_written_byte_for_byte_as_one_at_a_time(tmp_path):
    days = [DAY + dt.timedelta(days=i) for i in range(3)]
    frames = [frame(3 + i, close=float(i)) for i in range(3)]
    alone, together = Storage(tmp_path / "alone"), Storage(tmp_path / "together")
    for day, f in zip(days, frames):
        alone.write_partition(RAW_OHLCV, "simulated", "BTC/USDT", day, f)
    whole = pl.concat(frames).select(reversed(frames[0].columns))  # conformed too
    encoded = together.encode(RAW_OHLCV, whole, [3, 4, 5])
    for day, data in zip(days, encoded):
        together.write_encoded(RAW_OHLCV, "simulated", "BTC/USDT", day, data)
    for day in days:
        paths = [s.partition_path(RAW_OHLCV, "simulated", "BTC/USDT", day) for s in (alone, together)]
        assert paths[0].read_bytes() == paths[1].read_bytes()
    assert together.read_partition(RAW_OHLCV, "simulated", "BTC/USDT", days[2])["close"].to_list() == [2.0] * 5
    with pytest.raises(ValueError, match="do not cut a frame of 12"):
        together.encode(RAW_OHLCV, whole, [3, 4])
    with pytest.raises(StorageError, match="use write_table"):
        together.encode("scores", whole)


def test_days_written_together_reach_the_disk_in_one_sync_before_any_is_renamed(tmp_path, monkeypatch):
    import lakehouse.storage as storage_module

    s = Storage(tmp_path)
    days = [DAY + dt.timedelta(days=i) for i in range(3)]
    s.write_partition(RAW_OHLCV, "simulated", "BTC/USDT", days[0], frame(3, 1.0))
    events = []
    real = storage_module._syncfs()
    assert real is not None  # Linux: one syncfs(2) for the batch

    def syncfs(folder):
        # Every temp file is written and none is in place yet: a power cut now leaves the old files.
        events.append(sorted(p.name for p in tmp_path.rglob("*.parquet")))
        real(folder)

    monkeypatch.setattr(storage_module, "_syncfs", lambda: syncfs)
    monkeypatch.setattr(os, "fsync", lambda fd: events.append("fsync"))
    files = list(zip(days, s.encode(RAW_OHLCV, pl.concat([frame(3, float(10 + i)) for i in range(3)]), [3, 3, 3])))
    s.write_encoded_many(RAW_OHLCV, "simulated", "BTC/USDT", files)
    assert len(events) == 1 and events[0].count("part.parquet") == 1 and len(events[0]) == 4
    for i, day in enumerate(days):
        assert s.read_partition(RAW_OHLCV, "simulated", "BTC/USDT", day)["close"].to_list() == [10.0 + i] * 3
        assert os.listdir(s.partition_path(RAW_OHLCV, "simulated", "BTC/USDT", day).parent) == ["part.parquet"]
    s.write_encoded_many(RAW_OHLCV, "simulated", "BTC/USDT", files[:1])  # one file: its own fsync
    assert events[1:] == ["fsync"]


def test_a_failed_sync_of_days_written_together_leaves_every_old_file_and_no_temp(tmp_path, monkeypatch):
    import lakehouse.storage as storage_module

    s = Storage(tmp_path)
    days = [DAY + dt.timedelta(days=i) for i in range(3)]
    s.write_partition(RAW_OHLCV, "simulated", "BTC/USDT", days[0], frame(3, 1.0))

    def failing(folder):
        raise OSError(5, "syncfs: Input/output error", str(folder))

    monkeypatch.setattr(storage_module, "_syncfs", lambda: failing)
    files = list(zip(days, s.encode(RAW_OHLCV, pl.concat([frame(3, 9.0)] * 3), [3, 3, 3])))
    with pytest.raises(OSError, match="Input/output"):
        s.write_encoded_many(RAW_OHLCV, "simulated", "BTC/USDT", files)
    assert s.read_partition(RAW_OHLCV, "simulated", "BTC/USDT", days[0])["close"].to_list() == [1.0] * 3
    assert [p.name for p in tmp_path.rglob("*") if p.is_file() and "_meta" not in p.parts] == ["part.parquet"]
    monkeypatch.setattr(storage_module, "_syncfs", lambda: None)  # no syncfs here (not Linux): each file fsynced
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    s.write_encoded_many(RAW_OHLCV, "simulated", "BTC/USDT", files)
    assert len(synced) == 3
    assert [len(s.read_partition(RAW_OHLCV, "simulated", "BTC/USDT", d)) for d in days] == [3, 3, 3]
