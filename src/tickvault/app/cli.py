"""`tickvault` command line: parses arguments, then calls library functions.

Every setting has a flag on the top-level command (`tickvault --valkey-url URL query ...`); the flags
that matter for one command are also on that command. A flag beats the environment and `.env`.
The commands live in `app/commands/`, one module per group; this module is the app they join.
"""

from __future__ import annotations

import typer

from tickvault.app.commands.admin import cleanup, curve_keys, valkey_server
from tickvault.app.commands.dashboards import monitor, web
from tickvault.app.commands.loading import download, ingest
from tickvault.app.commands.reading import export, query
from tickvault.app.commands.research import backfill, backtest, report, train
from tickvault.app.commands.run import run
from tickvault.app.commands.support import SHARED, flags

app = typer.Typer(
    name="tickvault",
    help="Real-time B3 market data: ZeroMQ fan-out, Valkey Streams storage, time travel.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
@flags(*SHARED)
def main_options(ctx: typer.Context) -> None:
    del ctx  # the flags are in ctx.obj already (see flags)


# In this order in `tickvault --help`.
for command in (run, ingest, download, query, export, monitor, web):
    app.command()(command)
app.command("curve-keys")(curve_keys)
for command in (train, report, backtest, backfill, cleanup):
    app.command()(command)
app.command("valkey")(valkey_server)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
