import datetime as dt

import pytest

import lakehouse
from lakehouse.catalog import query
from lakehouse.errors import InvalidDateError
from lakehouse.ingest import ingest_days


def test_read_raw_and_sql_views_see_the_same_candles(storage, sim_exchange, root):
    ingest_days(sim_exchange, storage, "BTC/USDT", [dt.date(2024, 1, 1), dt.date(2024, 1, 2)])
    df = lakehouse.read_raw("BTC/USDT", "2024-01-02", "2024-01-02", root=str(root))
    assert (df.height, str(df["timestamp"].min()), df["symbol"].unique().to_list()) == (
        1440, "2024-01-02 00:00:00+00:00", ["BTC/USDT"])
    out = query(storage, "select symbol, exchange, count(*) as n, min(date) as d from raw_ohlcv group by all")
    assert out.rows() == [("BTC/USDT", "simulated", 2880, dt.date(2024, 1, 1))]


def test_views_exist_before_any_data(storage):
    assert query(storage, "select count(*) as n from raw_ohlcv").rows() == [(0,)]


def test_read_raw_rejects_reversed_range(root):
    with pytest.raises(InvalidDateError, match="start 2024-02-01 is after end 2024-01-01"):
        lakehouse.read_raw("BTC/USDT", "2024-02-01", "2024-01-01", root=str(root))
