"""The commands of `tickvault` (registered on the typer app by `app/cli.py`), one module per group:
`run`; `loading` (ingest, download); `reading` (query, export); `dashboards` (monitor, web);
`research` (train, report, backtest, backfill); `admin` (cleanup, valkey, curve-keys). What they
share, the flags of the settings, the error lines and exit codes, the store, is in `support`.

Imports: anything below `app`, and the library modules of `app` the commands call; never `app.cli`.
"""
