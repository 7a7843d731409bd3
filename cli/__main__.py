"""`python -m cli` is the `lakehouse` command."""

from cli.main import cli

cli(prog_name="lakehouse")
