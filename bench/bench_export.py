"""`tickvault export`: ticks/s from history blocks to a hive-partitioned Parquet dataset.

DAYS sessions x 2 symbols of WDO-like trades (bench_blocks.realistic), ROWS per (day, symbol), put
in history blocks; then `app.export.export` of the whole range (blocks read, arrow table from the
columns, zstd Parquet per partition, fsynced and renamed into place). Baseline: the naive way, per day
and symbol `store.ticks(...)` (a pandas DataFrame) then `frame.to_parquet(path)`, same data, same run.
TICKVAULT_BENCH_EXPORT_ROWS scales it (default 1,000,000 per partition, 8M ticks in all).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import valkey

from bench_blocks import START_MS, realistic
from tickvault.app.export import export, partitions
from tickvault.store.api import Store
from tickvault.store.server import EmbeddedValkey

DAY_MS = 86_400_000
DAYS = 4
SYMBOLS = ("WDOFUT", "WINFUT")
ROWS = int(os.environ.get("TICKVAULT_BENCH_EXPORT_ROWS", "1000000"))


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


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedValkey(Path(tmp) / "valkey")
        info = server.ensure_running()
        client = valkey.Valkey(host=info.host, port=info.port)
        store = Store(client)
        try:
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
