"""`python -m cli` is the `lakehouse` command."""

from cli.main import main

main()
