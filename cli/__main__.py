"""`python -m cli` is the `lakehouse` command (cli/main.py cannot run as __main__: its subcommand modules import it)."""

from cli.main import cli

cli(prog_name="lakehouse")
