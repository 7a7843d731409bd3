"""Bad input through the real `lakehouse` command (a subprocess): exit 2, one short line naming the value and the
fix, no traceback, nothing written. Plus the read-only query and a range the CLI has to explain."""

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import cli
from lakehouse.timeutil import utc_today

PROJECT = Path(__file__).resolve().parents[2]


def lakehouse(*args, env=None, cwd=None):
    """`python -m cli ARGS` with the test's environment plus `env`."""
    full = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "cli", *args], cwd=cwd or PROJECT, env=full, capture_output=True,
                          text=True, timeout=120)


def refused(result, *fragments):
    """Exit 2, no traceback, one line on stderr holding every fragment; returns that line."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def nothing_written(tmp_path):
    lake = tmp_path / "lake"
    assert not lake.exists() or not any(lake.rglob("*")), list(lake.rglob("*"))
    home = tmp_path / "dagster_home_env"
    assert not any(home.rglob("*")), list(home.rglob("*"))


@pytest.mark.parametrize("args, fragments", [
    (["symbols", "add", ""], ["empty symbol", "BTC/USDT"]),
    (["symbols", "add", "BTC/USDT,"], ["empty symbol", "'BTC/USDT,'"]),
    (["backfill", "--symbols", ""], ["empty --symbols", "leave the option out"]),
    (["symbols", "add", "ſol/uſdt"], ["invalid symbol 'ſol/uſdt'", "ASCII"]),  # not folded into SOL/USDT
    (["symbols", "add", "ＢＴＣ/USDT"], ["invalid symbol", "ASCII"]),
    (["symbols", "add", "BTC/USDT", "--start", "2024-13-01"], ["invalid --start '2024-13-01'", "YYYY-MM-DD"]),
    (["runs", "--url", "http://" + "a" * 10_000], ["(10007 characters)", "http://HOST:PORT"]),
    (["query", ""], ["empty SQL"]),
    (["query", "   "], ["empty SQL"]),
])
def test_bad_arguments(tmp_path, args, fragments):
    refused(lakehouse(*args), *fragments)
    nothing_written(tmp_path)


def test_a_huge_symbol_is_named_shortened(tmp_path):
    line = refused(lakehouse("symbols", "add", "X" * 10_000), "invalid symbol 'XXXX", "(10000 characters)")
    assert len(line) < 300
    nothing_written(tmp_path)


BACKFILL, STATUS, QUERY, RUNS = ["backfill", "--symbols", "BTC/USDT"], ["status"], ["query", "select 1"], ["runs"]


@pytest.mark.parametrize("env, fragments, command", [
    ({"LAKEHOUSE_TIMEOUT_S": "nan"}, ["LAKEHOUSE_TIMEOUT_S='nan' must be a finite number"], BACKFILL),
    ({"LAKEHOUSE_TIMEOUT_S": "inf"}, ["LAKEHOUSE_TIMEOUT_S='inf' must be a finite number"], STATUS),
    ({"LAKEHOUSE_FRESHNESS_WARN_HOURS": "-inf"}, ["LAKEHOUSE_FRESHNESS_WARN_HOURS='-inf' must be a finite"], QUERY),
    ({"LAKEHOUSE_EXCHANGE": "nosuch"}, ["LAKEHOUSE_EXCHANGE: unknown exchange 'nosuch'", "binance"], BACKFILL),
    ({"LAKEHOUSE_EXCHANGE": "binanse"}, ["Did you mean binance"], RUNS),
    ({"LAKEHOUSE_MAX_RETRIES": "1" * 5000}, ["(5000 characters)"], STATUS),
])
def test_bad_settings_are_refused_at_start_by_every_command(tmp_path, env, fragments, command):
    line = refused(lakehouse(*command, env=env), *fragments)
    assert len(line) < 300
    nothing_written(tmp_path)


@pytest.mark.parametrize("command", [["backfill"], ["symbols", "add", "BTC/USDT"], ["status"],
                                     ["query", "select count(*) from raw_ohlcv"]])
def test_a_root_that_is_a_file_is_refused(tmp_path, command):
    root = tmp_path / "not-a-folder"
    root.write_text("x")
    refused(lakehouse(*command, env={"LAKEHOUSE_ROOT": str(root)}), f"LAKEHOUSE_ROOT='{root}' is a file")
    assert root.read_text() == "x"


def test_a_read_only_root_is_refused_by_commands_that_write(tmp_path):
    if os.geteuid() == 0:  # root writes through permissions: take a folder nobody can create files in
        root = Path("/proc/self/lakehouse")
    else:
        root = tmp_path / "ro"
        root.mkdir()
        root.chmod(0o555)
    env = {"LAKEHOUSE_ROOT": str(root)}
    refused(lakehouse("symbols", "add", "BTC/USDT", env=env), "is not writable", "permissions")
    refused(lakehouse("backfill", env=env), "is not writable")
    nothing_written(tmp_path)


@pytest.mark.parametrize("sql, kind", [
    ("COPY (SELECT 1) TO '{root}/stolen.csv'", "COPY"),
    ("ATTACH '{tmp}/other.duckdb' AS other", "ATTACH"),
    ("INSTALL httpfs", "LOAD"),
    ("LOAD httpfs", "LOAD"),
    ("SET enable_external_access = true", "SET"),
    ("CREATE TABLE t AS SELECT 1", "CREATE"),
    ("SELECT 1; COPY (SELECT 1) TO '{tmp}/x.csv'", "COPY"),
    ("EXPORT DATABASE '{root}/export'", "EXPORT"),
])
def test_query_refuses_statements_that_are_not_queries(tmp_path, sql, kind):
    from lakehouse.catalog import QueryRefused, query
    from lakehouse.storage import Storage

    (tmp_path / "lake").mkdir()
    with pytest.raises(QueryRefused, match=f"refused {kind} statement .*read-only"):
        query(Storage(tmp_path / "lake"), sql.format(root=tmp_path / "lake", tmp=tmp_path))
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["dagster_home_env", "lake"]


@pytest.mark.parametrize("sql", ["SELECT * FROM read_text('/etc/passwd')", "SELECT * FROM read_csv('/etc/hostname')",
                                 "SELECT * FROM read_parquet('{root}/../outside.parquet')", "SELECT * FROM glob('/*')",
                                 "SELECT * FROM read_text('{root}/../outside.parquet')"])
def test_query_reads_only_the_lakehouse(tmp_path, sql):
    import duckdb

    from lakehouse.catalog import query
    from lakehouse.storage import Storage

    (tmp_path / "lake").mkdir()
    (tmp_path / "outside.parquet").write_bytes(b"PAR1")
    with pytest.raises(duckdb.PermissionException):
        query(Storage(tmp_path / "lake"), sql.format(root=tmp_path / "lake"))


def test_a_refused_query_through_the_command(tmp_path):
    (tmp_path / "lake").mkdir()
    refused(lakehouse("query", f"COPY (SELECT 1) TO '{tmp_path}/lake/x.csv'"), "refused COPY statement",
            "--format csv or json")
    assert not (tmp_path / "lake" / "x.csv").exists()
    outside = CliRunner().invoke(cli, ["query", "SELECT * FROM read_text('/etc/passwd')"])
    assert outside.exit_code == 2 and "queries read only the lakehouse's files" in outside.output
    assert "root:" not in outside.output


def test_help_imports_no_dagster():
    code = ("import sys\nfrom cli.main import cli\ntry:\n    cli(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('dagster', 'polars', 'duckdb', 'ccxt')))")
    result = subprocess.run([sys.executable, "-c", code], cwd=PROJECT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"
    assert "status" in result.stdout and "backfill" in result.stdout


# ranges the CLI must explain (in-process: they need a tracked symbol) -----------------------------------------
@pytest.fixture
def run():
    return lambda *args: CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_a_range_wholly_before_the_listing_is_said_and_nothing_runs(run, tmp_path):
    assert run("symbols", "add", "SOL/USDT").exit_code == 0  # listed 2020-08-11
    result = run("backfill", "--symbols", "SOL/USDT", "--start", "2019-01-01", "--end", "2019-02-01")
    assert result.exit_code == 2
    assert "SOL/USDT: 2019-01-01..2019-02-01 is wholly before its listing on 2020-08-11" in result.output
    assert "nothing to backfill" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "lake" / "raw_ohlcv").exists()


def test_an_end_in_the_future_is_clamped_and_said(run, tmp_path):
    from cli.backfill import plan_days
    from cli.common import get_instance, load_settings

    assert run("symbols", "add", "BTC/USDT", "--start", str(utc_today())).exit_code == 0
    said = []
    plan = plan_days(get_instance(), load_settings(), ["BTC/USDT"], None, dt.date(2999, 12, 31), echo=said.append)
    assert plan == {"BTC/USDT": [utc_today()]}
    assert said == [f"--end 2999-12-31 is in the future; ending today ({utc_today()})."]
    future = run("backfill", "--start", "2999-01-01")
    assert future.exit_code == 2 and "--start 2999-01-01 is in the future" in future.output


def test_every_listed_command_loads_and_shows_its_example():
    from cli.main import COMMANDS

    for name in COMMANDS:
        result = CliRunner().invoke(cli, [name, "--help"])
        assert result.exit_code == 0, (name, result.output)
        assert "Example:" in result.output and "lakehouse" in result.output, name
