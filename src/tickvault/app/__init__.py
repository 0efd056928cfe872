"""What a user starts: the `tickvault` command line (its commands in `app/commands/`), the `run`
system that wires the components (the order book's part in `book_flow`), the terminal dashboard and
monitor, the web dashboard (`app/web/`), query output formats, Prometheus metrics, logging setup,
backtests (a recorded range replayed by the `run` system with a model, reported).

Imports: anything below it. Nothing imports `app` but `tickvault/__main__.py`.
"""
