"""`tickvault ingest` and `tickvault download`: past data from files or from ProfitDLL into the store."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from tickvault.app.commands.support import Opt, err_console, errors, say, settings_of


class IngestFormat(StrEnum):
    text = "text"
    json = "json"


def ingest(
    ctx: typer.Context,
    paths: Annotated[
        list[str], typer.Argument(help="Tick or book files, directories or globs (CSV, Parquet, .gz, .zip)")
    ],
    via_bus: Annotated[
        bool,
        Opt("--via-bus", help="Replay through bus and recorder (live consumers see it), not into blocks"),
    ] = False,
    show: Annotated[int, Opt(help="How many rejected rows to list", min=0)] = 50,
    symbol: Annotated[str | None, Opt(help="The symbol of a file without a symbol column")] = None,
    fmt: Annotated[IngestFormat, Opt("--format", help="text (a line per file) or json")] = IngestFormat.text,
    memory: Annotated[str | None, Opt(help="Working memory bound, e.g. 768MiB (the default), 2GiB")] = None,
    rejects: Annotated[
        Path | None, Opt(help="Write every rejected row here (CSV: file,line,field,reason)")
    ] = None,
) -> None:
    """Past ticks from files straight into history blocks, once each (idempotent, crash-safe); exits
    when they are durable. Columns may have tickvault's names or other common ones (B3's
    TradeIntraday files, Portuguese, English). Order-book files (price levels as Tardis'
    incremental_book_L2, or order events) are told by their columns and stored as the book."""
    from tickvault.app.ingest import run_ingest

    with errors():
        if symbol is not None:
            from tickvault.domain.events import validate_symbol

            symbol = validate_symbol(symbol)
        settings = settings_of(ctx)
        code = run_ingest(
            settings, paths, symbol=symbol, via_bus=via_bus, json_output=fmt == IngestFormat.json,
            show=show, memory=memory, rejects=rejects, err=err_console, say=say,
        )  # fmt: skip
    if code:
        raise typer.Exit(code)


# -- download ----------------------------------------------------------------------------------------


def download(
    ctx: typer.Context,
    symbol: Annotated[str, typer.Argument(help="The symbol, e.g. WINZ25")],
    start: Annotated[str, Opt(help="ISO 8601 with offset, a date (B3 day) or e.g. '-2d' (30 days back)")],
    end: Annotated[str, Opt(help="Same forms as --start")] = "now",
    wait_subscribers: Annotated[
        int, Opt(help="Hold the first frame until this many subscribe to history_ (10 s at most)", min=0)
    ] = 0,
) -> None:
    """ProfitDLL's past trades of SYMBOL (PROFIT_* settings): published on the history port as
    history_SYMBOL frames and stored straight into history blocks, once each."""
    from tickvault.app.download import run_download
    from tickvault.domain.events import validate_symbol
    from tickvault.domain.timeparse import parse_time

    with errors():
        settings = settings_of(ctx)
        begin, finish = parse_time(start, field="--start"), parse_time(end, field="--end")
        code = run_download(
            settings, validate_symbol(symbol), begin, finish, wait_subscribers=wait_subscribers, say=say
        )
    if code:
        raise typer.Exit(code)
