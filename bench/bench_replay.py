"""Ticks/s read from the store for a replay (`run --source store:START..END`), merged in exchange-time order.

Three figures over the same sealed range of two symbols: the columnar read and merge
(`store_replay.merged_windows`: what the replay's input is made of), the same turned into Tick
objects (`store_replay.store_ticks`: what ingest takes), and the baseline, the range read as a
DataFrame and turned into Ticks row by row (`frame_to_ticks(store.ticks(...))`). End to end a replay
runs at what the feature engine allows (see bench_features), far below any of these.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import valkey

from tickvault.domain.events import Tick
from tickvault.sources.simulator import MarketSimulator
from tickvault.sources.store_replay import merged_windows, store_ticks
from tickvault.store.api import Store, frame_to_ticks
from tickvault.store.server import EmbeddedValkey

N_TICKS = 1_000_000
N_BASELINE = 100_000
SYMBOLS = ("WDOFUT", "WINFUT")


def _load(store: Store) -> tuple[int, int]:
    source = MarketSimulator(list(SYMBOLS), seed=1).ticks()
    ticks: list[Tick] = [next(source) for _ in range(N_TICKS)]
    for i in range(0, N_TICKS, 50_000):
        store.append_ticks(ticks[i : i + 50_000])
    first = ticks[0].timestamp_ms
    for symbol in SYMBOLS:
        store.compact(symbol, live_ms=0)  # as a past day is: sealed blocks
    last = max(store.columns(s, 0, 2**62).timestamp_ms[-1] for s in SYMBOLS)
    return int(first), int(last)


def _rate(name: str, n: int, elapsed: float) -> float:
    print(f"  {name}: {n:,} ticks in {elapsed:.2f} s = {n / elapsed:,.0f} ticks/s")
    return n / elapsed


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedValkey(Path(tmp) / "valkey")
        info = server.ensure_running()
        client = valkey.Valkey(host=info.host, port=info.port)
        try:
            store = Store(client)
            start_ms, end_ms = _load(store)
            t0 = time.perf_counter()
            n = sum(len(c) for _, c in merged_windows(store, SYMBOLS, start_ms, end_ms))
            columns = _rate("columns read + merged (the replay's input)", n, time.perf_counter() - t0)
            t0 = time.perf_counter()
            n_ticks = sum(1 for _ in store_ticks(store, SYMBOLS, start_ms, end_ms))
            ticks = _rate("as Tick objects (what ingest takes)", n_ticks, time.perf_counter() - t0)
            # baseline: about the first N_BASELINE ticks' time span, as a DataFrame then Tick by Tick
            cut = min(int(store.columns(s, start_ms, end_ms).timestamp_ms[N_BASELINE // 2]) for s in SYMBOLS)
            t0 = time.perf_counter()
            n_base = len(frame_to_ticks(store.ticks(list(SYMBOLS), start_ms, cut)))
            base = _rate("baseline: store.ticks -> frame_to_ticks", n_base, time.perf_counter() - t0)
            print(f"  columns {columns / base:.0f}x, Ticks {ticks / base:.1f}x the baseline")
        finally:
            client.close()
            server.release()
