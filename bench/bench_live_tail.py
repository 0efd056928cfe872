"""Live tail: an hour whose last 5 minutes are still in the live stream, read into a DataFrame.

The busiest WDO hour shape: 55 minutes in history blocks, the last 5 minutes (30,000 ticks, WIN's
opening rate) written live by the tick writer in recorder-sized batches of 20. `Store.ticks` with
the live part read from the columnar copy (store/live_copy.py) beside the same query with the live
part read entry by entry (`Store._live_entries`: XRANGE + parse), in the same run; then the hour
from blocks alone, the copy's memory per live tick, and the writer's cost of the copy.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from tempfile import TemporaryDirectory

import valkey

from bench_timetravel import START_MS, _median_ms, _rows, synthetic
from tickvault.store import live_copy
from tickvault.store.api import Store
from tickvault.store.server import EmbeddedValkey
from tickvault.store.tick_writer import TickWriter

HOUR_MS = 3_600_000
LIVE_MS = 5 * 60_000
HOUR_TICKS, LIVE_TICKS, BATCH = 81_041, 30_000, 20


def _write(client: valkey.Valkey, rows: list, symbol: str) -> float:
    for r in rows:
        r.symbol = symbol
    writer = TickWriter(client)
    start = time.perf_counter()
    for k in range(0, len(rows), BATCH):
        writer.write(rows[k : k + BATCH])
    writer.flush()
    return time.perf_counter() - start


def main() -> None:
    with TemporaryDirectory() as tmp:
        server = EmbeddedValkey(Path(tmp) / "valkey")
        info = server.ensure_running()
        client = valkey.Valkey(host=info.host, port=info.port)
        store = Store(client)
        try:
            live_from = START_MS + HOUR_MS - LIVE_MS
            old = synthetic(HOUR_TICKS - LIVE_TICKS, HOUR_MS - LIVE_MS)
            fresh = synthetic(LIVE_TICKS, LIVE_MS, seed=3)  # the live window dense, as at the open
            new = replace(fresh, timestamp_ms=fresh.timestamp_ms + HOUR_MS - LIVE_MS,
                          trade_id=fresh.trade_id + len(old), seq=fresh.seq + len(old))  # fmt: skip
            store.history.put("WDOFUT", old)
            with_copy = _write(client, _rows(new), "WDOFUT")
            end = START_MS + HOUR_MS - 1
            n = len(store.ticks("WDOFUT", START_MS, end))
            assert n == len(old) + len(new), n
            fast = _median_ms(lambda: store.ticks("WDOFUT", START_MS, end), 9)
            entries = Store(client)
            entries._live = entries._live_entries  # type: ignore[method-assign]
            assert entries.ticks("WDOFUT", START_MS, end).equals(store.ticks("WDOFUT", START_MS, end))
            slow = _median_ms(lambda: entries.ticks("WDOFUT", START_MS, end), 5)
            print(f"  1 h = {n:,} ticks, last 5 min ({len(new):,}) live -> DataFrame:")
            print(f"    live part from the columnar copy: {fast:.1f} ms = {n / fast / 1000:.2f} M ticks/s")
            print(f"    live part entry by entry (XRANGE): {slow:.1f} ms = {n / slow / 1000:.2f} M ticks/s")
            tail = _median_ms(lambda: store.ticks("WDOFUT", live_from, end), 9)
            tail_slow = _median_ms(lambda: entries.ticks("WDOFUT", live_from, end), 5)
            print(f"    the 5 live minutes alone: copy {len(new) / tail / 1000:.2f} M ticks/s, "
                  f"XRANGE {len(new) / tail_slow / 1000:.2f} M ticks/s")  # fmt: skip
            copy_bytes = client.memory_usage(store.keys.live_copy("WDOFUT"), samples=0) or 0
            stream_bytes = client.memory_usage(store.keys.ticks("WDOFUT"), samples=0) or 0
            print(f"  memory per live tick: copy {copy_bytes / len(new):.1f} B beside the entry's "
                  f"{stream_bytes / len(new):.0f} B")  # fmt: skip
            original = live_copy.CopyRun.commands
            live_copy.CopyRun.commands = lambda *a, **k: []  # type: ignore[method-assign]
            try:
                without = _write(client, _rows(new), "WINFUT")
            finally:
                live_copy.CopyRun.commands = original  # type: ignore[method-assign]
            print(f"  writer, batches of {BATCH}: {len(new) / with_copy / 1000:.0f} k ticks/s with the copy, "
                  f"{len(new) / without / 1000:.0f} k ticks/s without")  # fmt: skip
            store.seal("WDOFUT", end + 1)
            sealed = _median_ms(lambda: store.ticks("WDOFUT", START_MS, end), 15)
            print(f"  the same hour from blocks: {sealed:.1f} ms = {n / sealed / 1000:.1f} M ticks/s")
        finally:
            client.close()
            server.stop()


if __name__ == "__main__":
    main()
