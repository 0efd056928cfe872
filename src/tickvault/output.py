"""Writing query results: CSV, JSON lines (the bus payload, one event per line), Parquet, or a table."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.table import Table

from tickvault.events import encode
from tickvault.store import frame_to_ticks


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
    return out.to_csv(lineterminator="\n")


def to_json_lines(frame: pd.DataFrame) -> str:
    """Ticks as their bus payloads; other frames (candles) as one object per row with an ISO time."""
    if "trade_id" in frame:
        return "".join(encode(tick).decode() + "\n" for tick in frame_to_ticks(frame))
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
        console = Console(file=output.open("w") if output else sys.stdout, width=200 if output else None)
        console.print(_table(frame, limit))
        return
    text = to_csv_text(frame) if fmt == "csv" else to_json_lines(frame)
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text)


def _table(frame: pd.DataFrame, limit: int) -> Table:
    shown = "" if len(frame) <= limit else f", showing the first and last {limit // 2}"
    table = Table(caption=f"{len(frame):,} rows{shown}")
    table.add_column("timestamp")
    for name in frame.columns:
        table.add_column(name, justify="right")
    rows = frame if len(frame) <= limit else pd.concat([frame.head(limit // 2), frame.tail(limit // 2)])
    stamps = list(iso_index(rows.index)) if len(rows) else []
    for i, (stamp, values) in enumerate(zip(stamps, rows.itertuples(index=False), strict=True)):
        if len(frame) > limit and i == limit // 2:
            table.add_row(*["…"] * (len(frame.columns) + 1))
        table.add_row(stamp, *(str(v) for v in values))
    return table
