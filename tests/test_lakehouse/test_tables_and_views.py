"""The unpartitioned scores table, lazy range reads with columns/filter, and the catalog views over both."""

import datetime as dt

import polars as pl
import pytest

from lakehouse.catalog import query
from lakehouse.errors import CorruptPartitionError, StorageError
from lakehouse.schema import CLEAN_BARS, SCORES, empty

D = dt.date(2024, 1, 2)


def score_row(symbol="BTC/USDT", score=12):
    return pl.DataFrame([{
        "exchange": "simulated", "symbol": symbol, "interval": "1h",
        "timestamp": dt.datetime(2024, 1, 2, 23, tzinfo=dt.timezone.utc), "close": 42_000.0, "trend": "up",
        "score": score, "active_signals": "", "ingredients": "close > SMA200 +30",
    }])


def bars(day, intervals=("1m", "1h")):
    rows = []
    for iv in intervals:
        for i in range(3):
            ts = dt.datetime(day.year, day.month, day.day, i, tzinfo=dt.timezone.utc)
            rows.append({"timestamp": ts, "interval": iv, "open": 1.0, "high": 2.0, "low": 0.5, "close": 1.5,
                         "volume": 1.0, "candles": 1, "complete": True, "exchange": "simulated", "symbol": "BTC/USDT"})
    return pl.DataFrame(rows)


def test_scores_table_round_trip_and_view(storage, root):
    assert storage.read_table(SCORES).equals(empty(SCORES))
    assert query(storage, "select count(*) from scores").item() == 0  # typed empty view before any write
    path = storage.write_table(SCORES, pl.concat([score_row(), score_row("ETH/USDT", -40)]))
    assert path == root / "scores" / "part.parquet"
    assert storage.read_table(SCORES).get_column("score").to_list() == [12, -40]
    out = query(storage, "select symbol, score from scores order by score")
    assert out.rows() == [("ETH/USDT", -40), ("BTC/USDT", 12)]
    assert "date" not in query(storage, "select * from scores").columns


def test_partition_and_table_calls_are_not_mixed_up(storage):
    with pytest.raises(StorageError, match="use write_table"):
        storage.write_partition(SCORES, "simulated", "BTC/USDT", D, score_row())
    with pytest.raises(StorageError, match="partitioned by symbol x day"):
        storage.write_table(CLEAN_BARS, bars(D))


def test_read_range_with_columns_and_filter(storage):
    for i in range(3):
        storage.write_partition(CLEAN_BARS, "simulated", "BTC/USDT", D + dt.timedelta(days=i), bars(D + dt.timedelta(days=i)))
    df = storage.read_range(CLEAN_BARS, "simulated", "BTC/USDT", D + dt.timedelta(days=1), D + dt.timedelta(days=2),
                            columns=["timestamp", "close"], filter=pl.col("interval") == "1h")
    assert df.columns == ["timestamp", "close"] and df.height == 6 and df["timestamp"].is_sorted()
    assert df.schema["timestamp"] == pl.Datetime("ms", "UTC")
    none = storage.read_range(CLEAN_BARS, "simulated", "BTC/USDT", dt.date(2020, 1, 1), dt.date(2020, 1, 2),
                              columns=["close"], filter=pl.col("interval") == "1h")
    assert none.columns == ["close"] and none.height == 0
    with pytest.raises(StorageError, match="no column"):
        storage.read_range(CLEAN_BARS, "simulated", "BTC/USDT", D, D, columns=["nope"])


def test_filtered_read_names_a_torn_file(storage):
    storage.write_partition(CLEAN_BARS, "simulated", "BTC/USDT", D, bars(D))
    path = storage.partition_path(CLEAN_BARS, "simulated", "BTC/USDT", D)
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(CorruptPartitionError, match=str(path)):
        storage.read_range(CLEAN_BARS, "simulated", "BTC/USDT", D, D, filter=pl.col("interval") == "1h")


def test_views_ignore_a_writers_temp_file(storage, root):
    storage.write_partition(CLEAN_BARS, "simulated", "BTC/USDT", D, bars(D))
    tmp = storage.partition_path(CLEAN_BARS, "simulated", "BTC/USDT", D).parent / ".tmp-123.parquet"
    tmp.write_bytes(b"half written")
    assert query(storage, "select count(*) from clean_bars").item() == 6
