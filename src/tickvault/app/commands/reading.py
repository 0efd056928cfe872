"""`tickvault query` and `tickvault export`: a past time range read back from the store."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from tickvault.app.commands.support import Opt, err_console, errors, flags, open_store, say, settings_of
from tickvault.errors import ConfigError


class Format(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"
    parquet = "parquet"


@flags("namespace")
def query(
    ctx: typer.Context,
    symbol: Annotated[str, typer.Argument(help="Symbol, e.g. WDOFUT; ticks also take WDOFUT,WINFUT,...")],
    start: Annotated[
        str | None, Opt(help="ISO 8601 with offset, a date (B3 day), 'now' or e.g. '-2h'")
    ] = None,
    end: Annotated[str, Opt(help="Inclusive end, same forms as --start")] = "now",
    kind: Annotated[
        str,
        Opt(
            help="ticks, candles:TF (TF in 1m, 5m, 15m, 1h, 1d), features, predictions, signals; the order "
            "book: book:N (N levels a side, with --at), book-frames:STEP[:N] (e.g. 1s), book-changes[:N], "
            "quotes, book-updates"
        ),
    ] = "ticks",
    at: Annotated[str | None, Opt(help="--kind book:N: the moment, same forms as --start")] = None,
    fmt: Annotated[
        Format, Opt("--format", help="table, csv, json (one JSON object per line) or parquet")
    ] = Format.table,
    output: Annotated[Path | None, Opt(help="Write to this file instead of stdout")] = None,
    limit: Annotated[int, Opt(help="Rows shown by --format table (head and tail)", min=2)] = 40,
) -> None:
    """Read a past time range back from the store."""
    from tickvault.app import output as out
    from tickvault.app.queries import check_kind, read_kind
    from tickvault.domain.events import validate_symbol

    with errors():
        settings = settings_of(ctx)
        symbols = [validate_symbol(s.strip()) for s in symbol.split(",")]
        check_kind(kind, symbols, start, at)
        if fmt is Format.parquet and output is None:
            raise ConfigError("--format", "parquet", "writes binary data; give --output PATH")
        with open_store(settings, "query") as (store, _):
            frame = read_kind(store, kind, symbols, start, end, at)
        if "valid" in frame.attrs:  # a book as of a moment says which, and whether it is whole
            valid = "yes" if frame.attrs["valid"] else "NO (a gap, or no snapshot before it)"
            say(f"{symbols[0]} book as of {frame.attrs['as_of']} (seq {frame.attrs['seq']}), valid: {valid}")
        out.write_frame(frame, fmt.value, output, limit=limit)


# -- export ------------------------------------------------------------------------------------------


def export(
    ctx: typer.Context,
    symbol: Annotated[str, typer.Argument(help="Symbol(s), e.g. WDOFUT or WDOFUT,WINFUT")],
    start: Annotated[str, Opt(help="ISO 8601 with offset, a date (B3 day), 'now' or e.g. '-2h'")],
    output: Annotated[Path, Opt(help="Dataset folder: date=YYYY-MM-DD/symbol=SYMBOL/part-*.parquet")],
    end: Annotated[str, Opt(help="Inclusive end, same forms as --start")] = "now",
    kind: Annotated[
        str, Opt(help="ticks, candles:TF, features, predictions, signals, book:N[:STEP] or book-updates")
    ] = "ticks",
) -> None:
    """Write a time range as a hive-partitioned Parquet dataset (zstd, UTC ns timestamps); exporting
    the same range again replaces its partitions."""
    from tickvault.app.export import check_kind, run_export
    from tickvault.domain.events import validate_symbol

    with errors():
        settings = settings_of(ctx)
        symbols = [validate_symbol(s.strip()) for s in symbol.split(",")]
        check_kind(kind)
        with open_store(settings, "export") as (store, _):
            run_export(store, symbols, start, end, kind, output, console=err_console, say=say)
