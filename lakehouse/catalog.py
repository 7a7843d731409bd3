"""DuckDB views over the Parquet tree: every layer queryable with SQL, no database file, no lock to hold."""

from __future__ import annotations

import duckdb

from .schema import LAYERS, UNPARTITIONED_LAYERS
from .storage import Storage

_DUCK_TYPES = {"Float64": "DOUBLE", "String": "VARCHAR", "Int64": "BIGINT", "Int32": "INTEGER",
               "Int8": "TINYINT", "Boolean": "BOOLEAN", "Date": "DATE"}


def _duck_type(dtype) -> str:
    if str(dtype).startswith("Datetime"):
        return "TIMESTAMPTZ"
    return _DUCK_TYPES.get(str(dtype), "VARCHAR")


def connect(storage: Storage) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with one view per layer (an empty typed view for a layer with no files)."""
    con = duckdb.connect(":memory:")
    con.execute("SET TimeZone = 'UTC'")
    attach_object_store(con, storage)
    for layer, schema in LAYERS.items():
        con.execute(f"CREATE OR REPLACE VIEW {layer} AS {layer_sql(storage, layer, schema)}")
    return con


def attach_object_store(con: duckdb.DuckDBPyConnection, storage: Storage) -> None:
    """For an s3:// lakehouse: load httpfs from its PyPI wheel and add a temporary S3 secret (no-op for files)."""
    storage.attach_duckdb(con)


def layer_sql(storage: Storage, layer: str, schema: dict) -> str:
    if layer in UNPARTITIONED_LAYERS:
        return _table_sql(storage, layer, schema)
    if storage.has_partitions(layer):
        src = (f"read_parquet('{storage.glob(layer)}', hive_partitioning = true, union_by_name = true, "
               f"hive_types = {{'date': DATE}})")
        # The path's symbol=BTC-USDT is the encoded form; the file column holds the unified BTC/USDT,
        # and DuckDB lets the path win, so read the file's value back from the path's encoding.
        select = ", ".join(
            "replace(\"symbol\", '-', '/') AS \"symbol\"" if c == "symbol" and "symbol" in schema else f'"{c}"'
            for c in schema
        )
        # `date` comes from the path: filtering on it prunes files before any is opened.
        return f"SELECT {select}, \"date\" FROM {src}"
    typed = ", ".join(f'CAST(NULL AS {_duck_type(t)}) AS "{c}"' for c, t in schema.items())
    return f"SELECT {typed}, CAST(NULL AS DATE) AS \"date\" WHERE false"


def _table_sql(storage: Storage, layer: str, schema: dict) -> str:
    """An unpartitioned layer (scores) is one file with no path columns: its view has no `date`."""
    path = storage.table_path(layer)
    if storage.table_exists(layer):
        select = ", ".join(f'"{c}"' for c in schema)
        return f"SELECT {select} FROM read_parquet('{path}')"
    typed = ", ".join(f'CAST(NULL AS {_duck_type(t)}) AS "{c}"' for c, t in schema.items())
    return f"SELECT {typed} WHERE false"


def query(storage: Storage, sql: str):
    """Run SQL over the layer views; returns a polars DataFrame."""
    with connect(storage) as con:
        return con.sql(sql).pl()
