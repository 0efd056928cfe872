"""`tickvault export`: ticks/s from history blocks to a hive-partitioned Parquet dataset.

DAYS sessions x 2 symbols of WDO-like trades (bench_blocks.realistic), ROWS per (day, symbol), put
in history blocks; then `app.export.export` of the whole range (blocks read, arrow table from the
columns, zstd Parquet per partition, fsynced and renamed into place). Baseline: the naive way, per day
and symbol `store.ticks(...)` (a pandas DataFrame) then `frame.to_parquet(path)`, same data, same run.
TICKVAULT_BENCH_EXPORT_ROWS scales it (default 1,000,000 per partition, 8M ticks in all).

The book: a simulated hour of a WDOFUT order-by-order book (bench_book.simulated_hour, ~574k updates
in ~534k batches) written by `BookWriter` and sealed; then `export --kind book:10` (the top 10 levels
with order counts after every change) and `--kind book-updates`. Baselines: for book:10, per change
`store.book(symbol, t, 10)` made into a row, the rows a DataFrame, `to_parquet` (timed over the first
BOOK_SAMPLE changes: the whole hour would take an hour); for the updates `store.book_updates(...)`
then `to_parquet`. Wall and CPU seconds of this process both (the machine is shared).
TICKVAULT_BENCH_EXPORT_ONLY=book (or ticks) runs one half.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd
import valkey

from bench_blocks import START_MS, realistic
from bench_book import simulated_hour
from tickvault.app.export import export, partitions
from tickvault.domain.book import BookColumns
from tickvault.store.api import Store
from tickvault.store.book_writer import BookPart, BookWriter
from tickvault.store.server import EmbeddedValkey

DAY_MS = 86_400_000
DAYS = 4
SYMBOLS = ("WDOFUT", "WINFUT")
ROWS = int(os.environ.get("TICKVAULT_BENCH_EXPORT_ROWS", "1000000"))
ONLY = os.environ.get("TICKVAULT_BENCH_EXPORT_ONLY", "")
BOOK_SAMPLE = 2000
T = TypeVar("T")


def _naive(store: Store, start_ms: int, end_ms: int, root: Path) -> int:
    rows = 0
    for part in partitions(list(SYMBOLS), start_ms, end_ms):
        frame = store.ticks(part.symbol, part.start_ms, part.end_ms)
        if len(frame):
            folder = root / f"date={part.day}" / f"symbol={part.symbol}"
            folder.mkdir(parents=True, exist_ok=True)
            frame.to_parquet(folder / "part-0.parquet")
            rows += len(frame)
    return rows


def _timed(run: Callable[[], T]) -> tuple[T, float, float]:
    """run() -> (its result, wall s, CPU s of this process)."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = run()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def _write_book(store: Store, cols: BookColumns) -> None:
    """`cols` through the book writer in parts cut at batch ends, then sealed into blocks."""
    ends = cols.batch_ends()
    cuts = [0, *(ends[20_000 - 1 :: 20_000] + 1).tolist(), len(cols)]
    writer = BookWriter(store.client, store.keys, owner="bench@export")
    for i, (a, b) in enumerate(itertools.pairwise(sorted(set(cuts)))):
        writer.write([BookPart(cols.take(slice(a, b)), i + 1)])
    store.compact_book(cols.symbol, 0)


def _naive_book_rows(store: Store, symbol: str, times: list[int], root: Path) -> int:
    """The baseline: the book per change from `Store.book`, one row each, then pandas' to_parquet."""
    rows = []
    for at in times:
        book = store.book(symbol, at, 10)
        row: dict[str, object] = {"timestamp": pd.Timestamp(at, unit="ms", tz="UTC")}
        for side in ("bid", "ask"):
            levels = book[book["side"] == side]
            for i in range(10):
                have = i < len(levels)
                row[f"{side}_px_{i + 1}"] = float(levels["price"].iloc[i]) if have else np.nan
                row[f"{side}_sz_{i + 1}"] = int(levels["quantity"].iloc[i]) if have else 0
                row[f"{side}_orders_{i + 1}"] = int(levels["orders"].iloc[i]) if have else 0
        row["valid"] = book.attrs["valid"]
        row["seq"] = book.attrs["seq"]
        rows.append(row)
    root.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(root / "part-0.parquet")
    return len(rows)


def book_main(tmp: Path, store: Store) -> None:
    cols = replace(simulated_hour("mbo"), symbol="WDOFUT")
    _write_book(store, cols)
    updates, batches = len(cols), len(cols.batch_ends())
    start_ms, end_ms = int(cols.timestamp_ms[0]), int(cols.timestamp_ms[-1])
    out = tmp / "book"
    runs = [_timed(lambda: export(store, ["WDOFUT"], start_ms, end_ms, "book:10", out)) for _ in range(3)]
    result, wall, cpu = min(runs, key=lambda r: r[1])
    rows = result.rows
    size = sum(p.stat().st_size for p in out.rglob("*.parquet"))
    print(f"  book:10 export: {updates:,} updates in {batches:,} batches -> {rows:,} rows (one per change "
          f"of the top 10) in {wall:.2f} s wall, {cpu:.2f} s CPU (best of 3)")  # fmt: skip
    print(f"    = {rows / wall:,.0f} rows/s wall ({rows / cpu:,.0f} per CPU s), "
          f"{updates / wall:,.0f} updates/s; {size / rows:.1f} B per row")  # fmt: skip
    table = pd.read_parquet(next(out.rglob("*.parquet")), columns=["timestamp"])
    sample = (table["timestamp"].astype("int64") // 1_000_000).tolist()[:BOOK_SAMPLE]
    naive, n_wall, n_cpu = _timed(lambda: _naive_book_rows(store, "WDOFUT", sample, tmp / "naive-book"))
    print(f"  naive store.book per change -> DataFrame.to_parquet: {naive:,} rows in {n_wall:.2f} s wall, "
          f"{n_cpu:.2f} s CPU = {naive / n_wall:,.0f} rows/s "
          f"(the hour's rows: ~{rows / naive * n_wall / 60:.0f} min)")  # fmt: skip
    print(f"  ratio: {rows / wall / (naive / n_wall):,.0f}x faster wall, "
          f"{rows / cpu / (naive / n_cpu):,.0f}x per CPU second")  # fmt: skip
    out = tmp / "updates"
    runs = [
        _timed(lambda: export(store, ["WDOFUT"], start_ms, end_ms, "book-updates", out)) for _ in range(3)
    ]
    _, wall, cpu = min(runs, key=lambda r: r[1])
    size = sum(p.stat().st_size for p in out.rglob("*.parquet"))
    print(f"  book-updates export: {updates:,} updates in {wall:.2f} s wall, {cpu:.2f} s CPU (best of 3) "
          f"= {updates / wall:,.0f} updates/s, {size / updates:.1f} B per update")  # fmt: skip

    def naive_updates() -> None:
        (tmp / "naive-updates").mkdir(exist_ok=True)
        store.book_updates("WDOFUT", start_ms, end_ms).to_parquet(tmp / "naive-updates" / "part-0.parquet")

    _, n_wall, n_cpu = _timed(naive_updates)
    print(f"  naive store.book_updates -> DataFrame.to_parquet: {n_wall:.2f} s wall, {n_cpu:.2f} s CPU "
          f"= {updates / n_wall:,.0f} updates/s; ratio {n_wall / wall:.1f}x wall")  # fmt: skip


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedValkey(Path(tmp) / "valkey")
        info = server.ensure_running()
        client = valkey.Valkey(host=info.host, port=info.port)
        store = Store(client)
        try:
            if ONLY != "ticks":
                book_main(Path(tmp), store)
            if ONLY == "book":
                return
            for day in range(DAYS):
                for i, symbol in enumerate(SYMBOLS):
                    cols = realistic(ROWS, seed=1 + day * len(SYMBOLS) + i)
                    store.history.put(symbol, replace(cols, timestamp_ms=cols.timestamp_ms + day * DAY_MS))
            start_ms, end_ms = START_MS - 3_600_000, START_MS + DAYS * DAY_MS
            total = DAYS * len(SYMBOLS) * ROWS
            out = Path(tmp) / "dataset"
            best = float("inf")
            for _ in range(3):
                began = time.perf_counter()
                result = export(store, list(SYMBOLS), start_ms, end_ms, "ticks", out)
                best = min(best, time.perf_counter() - began)
                assert result.rows == total, result.rows
            size = sum(p.stat().st_size for p in out.rglob("*.parquet"))
            print(f"  export: {total:,} ticks in {best:.2f} s = {total / best:,.0f} ticks/s (best of 3), "
                  f"{result.partitions} partitions, {size / total:.1f} B per tick on disk")  # fmt: skip
            naive_out = Path(tmp) / "naive"
            began = time.perf_counter()
            assert _naive(store, start_ms, end_ms, naive_out) == total
            naive = time.perf_counter() - began
            naive_size = sum(p.stat().st_size for p in naive_out.rglob("*.parquet"))
            print(f"  naive store.ticks -> DataFrame.to_parquet per day: {naive:.2f} s = "
                  f"{total / naive:,.0f} ticks/s, {naive_size / total:.1f} B per tick")  # fmt: skip
            print(f"  ratio: {naive / best:.1f}x faster")
            shutil.rmtree(out, ignore_errors=True)
        finally:
            client.close()
            server.stop()
