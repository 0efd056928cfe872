"""Time travel: a past range back as a pandas DataFrame, and Valkey memory per stored tick.

One hour of 360,000 WDOFUT ticks: tickvault's query (history blocks, zstd columns) beside the
original guide's `time_travel_query` (XRANGE + one dict per entry, numeric fields converted), on the
same data and the same client (valkey-py with the libvalkey parser). Then one full day of 3,000,000
ticks, and MEMORY USAGE per tick of blocks versus the per-entry stream.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import valkey

from tickvault.domain.tick_schema import AGGRESSOR_CODES, ROW_FIELDS
from tickvault.store.api import Store
from tickvault.store.block_codec import Columns
from tickvault.store.server import EmbeddedValkey
from tickvault.store.tick_writer import TickWriter

HOUR_MS = 3_600_000
START_MS = 1_764_000_000_000 - 4 * HOUR_MS  # 2025-11-24 09:00 -03:00


def synthetic(n: int, span_ms: int, seed: int = 1) -> Columns:
    """WDO-like columns: bursty times, prices on the 0.5 grid, heavy-tailed sizes, real broker ids."""
    rng = np.random.default_rng(seed)
    times = START_MS + np.sort(rng.integers(0, span_ms, n))
    steps = rng.choice([-1, 0, 0, 0, 1], n)
    price = 5400.0 + 0.5 * np.cumsum(steps)
    quantity = np.minimum(np.floor(rng.pareto(1.3, n) * 1.4) + 1, 500).astype(np.int64)
    brokers = np.array(
        [3, 8, 13, 15, 16, 27, 39, 40, 45, 72, 85, 90, 107, 120, 127, 147, 172, 190, 238, 308, 386]
    )
    side = rng.integers(1, 3, n).astype(np.int8)
    return Columns(
        timestamp_ms=times,
        trade_id=np.arange(1, n + 1),
        price=price,
        volume=price * quantity.astype(np.float64) * 10.0,
        quantity=quantity,
        buyer=rng.choice(brokers, n),
        seller=rng.choice(brokers, n),
        trade_type=side.astype(np.int64) + 1,
        aggressor=side,
        is_edit=np.zeros(n, dtype=bool),
        seq=np.arange(1, n + 1),
    )


class _Row:
    """The writer takes anything with tick attributes; a light row avoids building 360k Ticks."""

    __slots__ = ROW_FIELDS


def _rows(cols: Columns) -> list[_Row]:
    out = []
    for i in range(len(cols)):
        r = _Row()
        r.symbol, r.timestamp_ms, r.trade_id = "WDOFUT", int(cols.timestamp_ms[i]), int(cols.trade_id[i])
        r.price, r.volume, r.quantity = float(cols.price[i]), float(cols.volume[i]), int(cols.quantity[i])
        r.buyer, r.seller, r.trade_type = int(cols.buyer[i]), int(cols.seller[i]), int(cols.trade_type[i])
        r.aggressor, r.is_edit, r.seq = AGGRESSOR_CODES[cols.aggressor[i]], False, int(cols.seq[i])
        out.append(r)
    return out


def guide_time_travel_query(client: valkey.Valkey, key: str, start_ms: int, end_ms: int) -> list[dict]:
    """The original guide's query, with its end bound fixed to include the whole last millisecond."""
    entries = client.xrange(key, f"{start_ms}-0", f"{end_ms}")
    results = []
    for entry_id, fields in entries:
        data = {k.decode(): v.decode() for k, v in fields.items()}
        data["stream_id"] = entry_id.decode()
        for name in ("price", "volume", "high", "low", "open", "close"):
            if name in data:
                data[name] = float(data[name])
        results.append(data)
    return results


def _median_ms(fn: object, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedValkey(Path(tmp) / "valkey")
        info = server.ensure_running()
        client = valkey.Valkey(host=info.host, port=info.port)
        store = Store(client)
        try:
            hour = synthetic(360_000, HOUR_MS)
            rows = _rows(hour)
            writer = TickWriter(client)
            for k in range(0, len(rows), 5000):
                writer.write(rows[k : k + 5000])
            writer.flush()
            end = START_MS + HOUR_MS - 1
            stream_bytes = client.memory_usage("stream:ticks:WDOFUT", samples=0)
            guide = _median_ms(
                lambda: guide_time_travel_query(client, "stream:ticks:WDOFUT", START_MS, end), 3
            )
            live = _median_ms(lambda: store.ticks("WDOFUT", START_MS, end), 3)
            store.seal("WDOFUT", end + 1)
            frame = store.ticks("WDOFUT", START_MS, end)
            assert len(frame) == 360_000
            sealed = _median_ms(lambda: store.ticks("WDOFUT", START_MS, end), 15)
            block_bytes = sum(
                client.memory_usage(k, samples=0) for k in client.scan_iter("tv:block:WDOFUT:*")
            )
            block_bytes += client.memory_usage("tv:blocks:WDOFUT", samples=0)
            print(f"  1 h = 360,000 ticks -> DataFrame: history blocks {sealed:.1f} ms (median of 15)")
            print(f"  same range from the live stream (XRANGE, vectorised parse): {live:.0f} ms")
            print(f"  guide's time_travel_query (XRANGE + dict per entry): {guide:.0f} ms (list of dicts)")
            print(f"  ratio: {guide / sealed:.0f}x faster than the guide's query")
            per_block, per_entry = block_bytes / 360_000, stream_bytes / 360_000
            print(f"  memory per tick: blocks {per_block:.2f} B, per-entry stream {per_entry:.1f} B")
            print(f"  ratio: {per_entry / per_block:.0f}x less memory")

            client.flushall()
            day = synthetic(3_000_000, 9 * HOUR_MS + HOUR_MS // 2, seed=2)
            store.history.put("WDOFUT", day)
            full = _median_ms(lambda: store.ticks("WDOFUT", START_MS, START_MS + 10 * HOUR_MS), 5)
            print(f"  1 day = 3,000,000 ticks -> DataFrame: {full:.0f} ms (median of 5)")
        finally:
            client.close()
            server.stop()


if __name__ == "__main__":
    main()
