"""`lakehouse query`: read-only SQL over the lakehouse views (lakehouse.catalog), printed as a table, CSV or JSON."""

from __future__ import annotations

import json
import shutil

import click

from .common import UsageFailure, settings


@click.command()
@click.argument("sql")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True)
def query(sql, fmt):
    """Run read-only SQL over the lakehouse views (raw_ohlcv and every derived layer) with in-memory DuckDB.

    Only SELECT (with WITH, EXPLAIN, DESCRIBE, SHOW, SUMMARIZE) is allowed, and only files under LAKEHOUSE_ROOT
    can be read: COPY, ATTACH, INSTALL/LOAD, SET, CREATE and reading other files are refused (exit 2).

    \b
    Example:
        lakehouse query "select symbol, min(timestamp), count(*) from raw_ohlcv group by 1" --format csv
    """
    from lakehouse.errors import UserInputError, shorten

    if not sql.strip():
        raise UsageFailure('empty SQL; pass a query, e.g. lakehouse query "select count(*) from raw_ohlcv"')
    s = settings()
    if not s.root.startswith("s3://") and not s.root_path.is_dir():
        click.echo(f"note: LAKEHOUSE_ROOT={shorten(s.root)!r} does not exist yet, so every view is empty; point "
                   f"LAKEHOUSE_ROOT at your lakehouse or fill one (lakehouse backfill)", err=True)
    import duckdb
    import polars as pl

    from lakehouse.catalog import QueryRefused, query as run_query
    from lakehouse.storage import Storage

    try:
        df = run_query(Storage(s.root), sql)
    except (QueryRefused, UserInputError) as exc:  # UserInputError: e.g. an s3:// root whose bucket is missing
        raise UsageFailure(str(exc)) from None
    except duckdb.PermissionException as exc:
        raise UsageFailure(f"refused: {shorten(' '.join(str(exc).split()), 200)}; queries read only the "
                           f"lakehouse's files (LAKEHOUSE_ROOT={shorten(s.root)!r}) through its views") from None
    except duckdb.Error as exc:
        raise UsageFailure(f"query failed: {shorten(' '.join(str(exc).split()), 300)}") from None
    if fmt == "csv":
        click.echo(df.write_csv(), nl=False)
    elif fmt == "json":
        click.echo(json.dumps(df.to_dicts(), default=str, indent=2))
    else:
        with pl.Config(tbl_rows=200, tbl_cols=-1, tbl_hide_dataframe_shape=True, tbl_hide_column_data_types=True,
                       tbl_width_chars=shutil.get_terminal_size().columns):
            click.echo(str(df))
        click.echo(f"({df.height} rows)")
