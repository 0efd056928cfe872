"""`python -m tickvault` is the `tickvault` command."""

from tickvault.app.cli import main

main()
