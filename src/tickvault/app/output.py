"""Writing query results: CSV, JSON lines (the bus payload, one event per line), Parquet, or a table."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.table import Table

from tickvault.domain.events import encode
from tickvault.store.api import frame_to_ticks
from tickvault.store.book_reader import book_updates_columns


def iso_index(index: pd.DatetimeIndex) -> pd.Index:
    """ISO 8601 text with milliseconds and a colon in the offset, e.g. 2026-11-24T10:00:00.123-03:00."""
    base = index.strftime("%Y-%m-%dT%H:%M:%S.%f").str[:-3]
    offset = index.strftime("%z")
    return base + offset.str[:3] + ":" + offset.str[3:]


def to_csv_text(frame: pd.DataFrame) -> str:
    out = frame.copy()
    out.index = iso_index(frame.index) if len(frame) else frame.index
    out.index.name = "timestamp"
    if "is_edit" in out and len(out):
        out["is_edit"] = out["is_edit"].map({True: "true", False: "false"})
    return str(out.to_csv(lineterminator="\n"))


def to_json_lines(frame: pd.DataFrame) -> str:
    """Ticks and book updates as their bus payloads (the events' JSON); other frames (candles, books)
    as one object per row with an ISO time."""
    if "trade_id" in frame:
        return "".join(encode(tick).decode() + "\n" for tick in frame_to_ticks(frame))
    if frame.attrs.get("kind") in ("mbp", "mbo") and "action" in frame:  # Store.book_updates
        cols = book_updates_columns(frame, frame.attrs["symbol"], frame.attrs["kind"])
        return "".join(encode(event).decode() + "\n" for event in cols.events())
    out = frame.copy()
    out.insert(0, "timestamp", iso_index(frame.index) if len(frame) else [])
    text = out.to_json(orient="records", lines=True, date_format="iso").rstrip("\n")
    return text + "\n" if text else ""


def write_frame(frame: pd.DataFrame, fmt: str, output: Path | None, *, limit: int = 40) -> None:
    if fmt == "parquet":
        assert output is not None
        frame.to_parquet(output)
        return
    if fmt == "table":
        # a file or a pipe gets whole rows; a terminal its own width
        wide = output is not None or not sys.stdout.isatty()
        console = Console(file=output.open("w") if output else sys.stdout, width=200 if wide else None)
        console.print(table_of(frame, limit, width=console.width))
        return
    text = to_csv_text(frame) if fmt == "csv" else to_json_lines(frame)
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text)


# A table is for reading: the time once, in B3 time and in full; `timestamp_ms` repeats it and a lone
# symbol goes in the title. When the width runs short, the least telling columns go first.
_NOT_IN_TABLES = ("timestamp_ms",)
_DROPPED_FIRST = ("is_edit", "trade_type", "seq", "buyer", "seller", "volume", "aggressor")


def _text(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.10g}"  # 16,200,000 and 5,466.5: digits grouped, ten significant
    return str(value)


def table_of(frame: pd.DataFrame, limit: int, *, width: int = 200) -> Table:
    """head and tail of `frame` as a rich table that fits `width` columns of text."""
    rows = frame if len(frame) <= limit else pd.concat([frame.head(limit // 2), frame.tail(limit // 2)])
    title = None
    columns = [c for c in frame.columns if c not in _NOT_IN_TABLES]
    if "symbol" in frame and frame["symbol"].nunique() == 1:
        title = str(frame["symbol"].iloc[0])
        columns.remove("symbol")
    offsets = sorted(set(rows.index.strftime("%z"))) if len(rows) else []
    zone = f"{offsets[0][:3]}:{offsets[0][3:]}" if len(offsets) == 1 else "B3"
    stamps = list(rows.index.strftime("%Y-%m-%d %H:%M:%S.%f").str[:-3]) if len(rows) else []
    cells = {name: [_text(v) for v in rows[name].tolist()] for name in columns}

    def needed(names: list[str]) -> int:  # rich draws a border and one space either side per column
        time_width = max([23, *(len(x) for x in stamps)])
        return 1 + time_width + 3 + sum(max([len(n), *(len(x) for x in cells[n])]) + 3 for n in names)

    for name in _DROPPED_FIRST:
        if needed(columns) <= width:
            break
        if name in columns:
            columns.remove(name)
    shown = "" if len(frame) <= limit else f", showing the first and last {limit // 2}"
    hidden = [c for c in frame.columns if c not in columns and c not in _NOT_IN_TABLES and c != "symbol"]
    more = f"; not shown at this width: {', '.join(hidden)} (--format csv has them all)" if hidden else ""
    table = Table(title=title, caption=f"{len(frame):,} rows{shown}{more}")
    table.add_column(f"time ({zone})", no_wrap=True, min_width=23)
    for name in columns:
        table.add_column(name, justify="right", no_wrap=name in ("price", "trade_id"))
    for i, stamp in enumerate(stamps):
        if len(frame) > limit and i == limit // 2:
            table.add_row(*["…"] * (len(columns) + 1))
        table.add_row(stamp, *(cells[name][i] for name in columns))
    return table
