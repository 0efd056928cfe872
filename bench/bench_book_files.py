"""Book files: a Tardis-style price-level CSV read into book columns, and ingested into the store.

500,000 rows of `incremental_book_L2` (`exchange, symbol, timestamp, local_timestamp, is_snapshot,
side, price, amount`; µs times, 1-4 rows per timestamp, a snapshot every 50,000 rows):

- reading it into checked book columns (`BookFileReader.chunks`: pyarrow chunks, columns checked with
  numpy), rows/s, beside the row reader it replaces for clean rows (`vectorised=False`: every row
  through `BookLayout.row`, what the first version did);
- `ingest` of the file (`sources.book_load.load_book_paths` on a running embedded Valkey: the book
  writer, snapshots, sealing into book blocks), updates/s, and again (every update a duplicate).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import valkey

from tickvault.sources.book_files import BookFileReader, book_layout
from tickvault.sources.book_load import load_book_paths
from tickvault.sources.tick_files import members
from tickvault.store.api import Store
from tickvault.store.server import EmbeddedValkey

ROWS = 500_000
T0_US = 1_764_000_000_000_000


def level_file(path: Path, rows: int = ROWS, seed: int = 3) -> Path:
    rng = np.random.default_rng(seed)
    stamp = T0_US + np.cumsum(np.where(rng.random(rows) < 0.6, 0, rng.integers(1, 3000, rows)))
    snapshot = (np.arange(rows) % 50_000) < 40
    side = rng.integers(0, 2, rows)
    k = rng.integers(0, 20, rows)
    price = np.where(side == 0, 5000.0 - 0.5 * k, 5000.5 + 0.5 * k)
    amount = np.where(rng.random(rows) < 0.2, 0, rng.integers(1, 200, rows))
    amount[snapshot] = np.maximum(amount[snapshot], 1)
    table = pa.table({
        "exchange": pa.array(["b3"] * rows), "symbol": pa.array(["WDOF26"] * rows), "timestamp": stamp,
        "local_timestamp": stamp + 300, "is_snapshot": pa.array(np.where(snapshot, "true", "false")),
        "side": pa.array(np.where(side == 0, "bid", "ask")), "price": price, "amount": amount,
    })  # fmt: skip
    pacsv.write_csv(table, path, pacsv.WriteOptions(quoting_style="none"))
    return path


def read_rate(path: Path, vectorised: bool) -> float:
    file = next(members(path))
    layout = book_layout(file)
    assert layout is not None
    started = time.perf_counter()
    reader = BookFileReader(file, layout, vectorised=vectorised)
    updates = sum(len(cols) for parts, _ in reader.chunks() for cols in parts)
    assert updates >= ROWS
    return reader.rows / (time.perf_counter() - started)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        path = level_file(tmp / "incremental_book_L2.csv")
        size, load = path.stat().st_size / 2**20, os.getloadavg()[0]
        print(f"  {ROWS:,} rows, {size:.1f} MiB; load average {load:.1f}")
        fast, slow = read_rate(path, True), read_rate(path, False)
        print(f"  read into columns: {fast:,.0f} rows/s; row reader: {slow:,.0f} rows/s ({fast / slow:.1f}x)")
        server = EmbeddedValkey(tmp / "valkey")
        info = server.ensure_running()
        try:
            store = Store(valkey.Valkey(host=info.host, port=info.port))
            for label in ("ingest", "again (all duplicates)"):
                started = time.perf_counter()
                (report,) = load_book_paths(store, [path])
                elapsed = time.perf_counter() - started
                assert report.error is None, report.error
                updates = report.stored + report.duplicates
                rate = updates / elapsed
                stored = report.stored
                print(f"  {label}: {updates:,} updates in {elapsed:.2f} s, {rate:,.0f}/s (stored {stored:,})")
        finally:
            server.stop()
