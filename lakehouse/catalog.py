"""DuckDB views over the Parquet tree: every layer queryable with SQL, no database file, no lock to hold.

Queries are read-only and confined to the lakehouse: `lock_down` lets DuckDB open files under the root only and
then locks its configuration, and `check_read_only` refuses every statement but SELECT and EXPLAIN.
"""

from __future__ import annotations

import duckdb

from .errors import UserInputError, shorten
from .schema import LAYERS, UNPARTITIONED_LAYERS
from .storage import Storage

# DESCRIBE, SHOW, SUMMARIZE, FROM-first and WITH queries are all SELECT statements to DuckDB.
READ_ONLY_STATEMENTS = ("SELECT", "EXPLAIN")


class QueryRefused(UserInputError):
    """A statement that would write, attach, load, configure or reach outside the lakehouse."""

_DUCK_TYPES = {"Float64": "DOUBLE", "String": "VARCHAR", "Int64": "BIGINT", "Int32": "INTEGER",
               "Int8": "TINYINT", "Boolean": "BOOLEAN", "Date": "DATE"}


def _duck_type(dtype) -> str:
    if str(dtype).startswith("Datetime"):
        return "TIMESTAMPTZ"
    return _DUCK_TYPES.get(str(dtype), "VARCHAR")


def connect(storage: Storage) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with one view per layer (an empty typed view for a layer with no files),
    locked down to reading the lakehouse."""
    con = duckdb.connect(":memory:")
    con.execute("SET TimeZone = 'UTC'")
    attach_object_store(con, storage)
    for layer, schema in LAYERS.items():
        con.execute(f"CREATE OR REPLACE VIEW {layer} AS {layer_sql(storage, layer, schema)}")
    lock_down(con, storage)
    return con


def attach_object_store(con: duckdb.DuckDBPyConnection, storage: Storage) -> None:
    """For an s3:// lakehouse: load httpfs from its PyPI wheel and add a temporary S3 secret (no-op for files)."""
    storage.attach_duckdb(con)


def lock_down(con: duckdb.DuckDBPyConnection, storage: Storage) -> None:
    """From here on the connection may open files under the lakehouse root only (no other file, no network, no
    extension install or load), and its configuration can no longer be changed, by SET or otherwise.

    Everything the connection needs from outside (an extension, a secret, another allowed location) must be
    set up before this call.
    """
    con.execute("SET allowed_directories = [?]", [f"{storage.root}/"])
    con.execute("SET enable_external_access = false")
    con.execute("SET autoinstall_known_extensions = false")
    con.execute("SET autoload_known_extensions = false")
    con.execute("SET lock_configuration = true")


def check_read_only(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Refuse, before anything runs, any statement that is not a query (COPY, ATTACH, INSTALL/LOAD, SET, CREATE,
    INSERT, PRAGMA, CALL, EXPORT, ...); a statement that does not parse is left to DuckDB's own error."""
    statements = con.extract_statements(sql)
    if not statements:
        raise QueryRefused("no SQL statement given; pass a query, e.g. select count(*) from raw_ohlcv")
    for statement in statements:
        kind = str(statement.type).rpartition(".")[2]
        if kind not in READ_ONLY_STATEMENTS:
            hint = ("; to export, print with --format csv or json and redirect the output"
                    if kind in ("COPY", "EXPORT") else "")
            raise QueryRefused(f"refused {kind} statement {shorten(' '.join(statement.query.split()), 60)!r}: "
                               f"queries are read-only (SELECT, WITH, EXPLAIN, DESCRIBE, SUMMARIZE){hint}")


def layer_sql(storage: Storage, layer: str, schema: dict) -> str:
    if layer in UNPARTITIONED_LAYERS:
        return _table_sql(storage, layer, schema)
    if storage.has_partitions(layer):
        src = (f"read_parquet({_literal(storage.glob(layer))}, hive_partitioning = true, union_by_name = true, "
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
        return f"SELECT {select} FROM read_parquet({_literal(str(path))})"
    typed = ", ".join(f'CAST(NULL AS {_duck_type(t)}) AS "{c}"' for c, t in schema.items())
    return f"SELECT {typed} WHERE false"


def query(storage: Storage, sql: str):
    """Run read-only SQL over the layer views; returns a polars DataFrame (of the last statement).

    Raises QueryRefused for a statement that is not a query, duckdb.Error for one that fails (including a
    PermissionException for a file outside the lakehouse)."""
    with connect(storage) as con:
        check_read_only(con, sql)
        result = con.sql(sql)
        if result is None:
            raise QueryRefused("the SQL returned no result; pass a query, e.g. select count(*) from raw_ohlcv")
        return result.pl()


def _literal(text: str) -> str:
    """A SQL string literal (a root folder may contain a quote)."""
    return "'" + text.replace("'", "''") + "'"
