"""Ticks/s read from the store for a replay (`run --source store:START..END`), merged in exchange-time order.

Over the same sealed range of two symbols: the columnar read and merge (`store_replay.merged_windows`),
the same turned into the Tick objects ingest takes (`store_replay.store_ticks`: built by
`events.stored_ticks` without repeating the checks the values passed when recorded), the previous
way of making them (a checked `Tick(...)` and `from_ms` per row, kept here as the baseline it
replaces), and the oldest one, the range as a DataFrame turned into Ticks row by row
(`frame_to_ticks(store.ticks(...))`). Each rate is wall time and, since the machine is shared, also
CPU time of this process. End to end, a replay runs at what the feature engine folds: its rate on the
same ticks, then the first N_END_TO_END ticks through the whole system `run --source store:START..END
--speed 0` builds (what `tickvault backtest` runs: no page, no bus; ingest, the feature thread, the
recorder writing into a namespace; no model loaded), from start to a drained stop.
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import valkey

from tickvault.analytics.features import FeatureEngine
from tickvault.app.components.source import SourceSpec
from tickvault.app.system import System
from tickvault.config import load_settings
from tickvault.domain.events import Tick, from_ms
from tickvault.domain.tick_schema import AGGRESSOR_CODES
from tickvault.sources.simulator import MarketSimulator
from tickvault.sources.store_replay import merged_windows, store_ticks
from tickvault.store.api import Store, frame_to_ticks
from tickvault.store.server import EmbeddedValkey

N_TICKS = 1_000_000
N_BASELINE = 100_000
N_END_TO_END = 200_000
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


def checked_ticks(store: Store, symbols: Sequence[str], start_ms: int, end_ms: int) -> Iterator[Tick]:
    """The replay's input as it was made before `stored_ticks`: every Tick checked again."""
    names = list(symbols)
    for which, c in merged_windows(store, names, start_ms, end_ms):
        rows = zip(
            which.tolist(), c.timestamp_ms.tolist(), c.trade_id.tolist(), c.price.tolist(),
            c.volume.tolist(), c.quantity.tolist(), c.buyer.tolist(), c.seller.tolist(),
            c.trade_type.tolist(), c.aggressor.tolist(), c.is_edit.tolist(), strict=True,
        )  # fmt: skip
        for s, ms, trade_id, price, volume, quantity, buyer, seller, trade_type, aggressor, is_edit in rows:
            yield Tick(
                symbol=names[s], timestamp=from_ms(ms), timestamp_ms=ms, trade_id=trade_id, price=price,
                volume=volume, quantity=quantity, buyer=buyer, seller=seller, trade_type=trade_type,
                aggressor=AGGRESSOR_CODES[aggressor], is_edit=bool(is_edit),
            )  # fmt: skip


def _rate(name: str, count: Callable[[], int]) -> float:
    wall, cpu = time.perf_counter(), time.process_time()
    n = count()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(f"  {name}: {n:,} ticks in {wall:.2f} s = {n / wall:,.0f} ticks/s ({n / cpu:,.0f} per CPU second)")
    return n / wall


def _system_replay(url: str, folder: Path, start_ms: int, end_ms: int) -> int:
    settings = load_settings(
        valkey_url=url, data_dir=folder / "data", symbols=",".join(SYMBOLS), namespace="bench", speed=0,
        web_enabled=False, zmq_enabled=False, zmq_consume_enabled=False, model_path=folder / "no-model",
    )  # fmt: skip
    spec = SourceSpec(f"store:{start_ms}..{end_ms}", symbols=",".join(SYMBOLS), stored=(start_ms, end_ms))
    stop = threading.Event()
    system = System(settings, source=spec.factory(settings, stop))
    system.stop_event = stop
    system.start()
    try:
        system.wait()
    finally:
        summary = system.stop()
    assert summary.drained and summary.counters["feature_ticks"] == summary.generated_total
    return summary.generated_total


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedValkey(Path(tmp) / "valkey")
        info = server.ensure_running()
        client = valkey.Valkey(host=info.host, port=info.port)
        try:
            store = Store(client)
            a, b = _load(store)
            columns = _rate(
                "columns read + merged", lambda: sum(len(c) for _, c in merged_windows(store, SYMBOLS, a, b))
            )
            ticks = _rate("as Tick objects, store_ticks (the pipeline's input)",
                          lambda: sum(1 for _ in store_ticks(store, SYMBOLS, a, b)))  # fmt: skip
            checked = _rate("before: checked Tick per row",
                            lambda: sum(1 for _ in checked_ticks(store, SYMBOLS, a, b)))  # fmt: skip
            # the oldest way, over about the first N_BASELINE ticks' time span
            cut = min(int(store.columns(s, a, b).timestamp_ms[N_BASELINE // 2]) for s in SYMBOLS)
            frame = _rate("baseline: store.ticks -> frame_to_ticks",
                          lambda: len(frame_to_ticks(store.ticks(list(SYMBOLS), a, cut))))  # fmt: skip
            print(f"  store_ticks {ticks / checked:.1f}x the checked Ticks, {ticks / frame:.1f}x"
                  f" the DataFrame baseline; columns {columns / frame:.0f}x")  # fmt: skip
            engine = FeatureEngine(SYMBOLS)
            replayed = list(store_ticks(store, SYMBOLS, a, b))

            def fold() -> int:
                for tick in replayed:
                    engine.on_tick(tick)
                return len(replayed)

            _rate("end to end bound: the feature engine folding them (one thread)", fold)
            cut = min(int(store.columns(s, a, b).timestamp_ms[N_END_TO_END // 2]) for s in SYMBOLS)
            _rate("end to end: the run's system, store -> features + namespace recorded",
                  lambda: _system_replay(f"valkey://{info.host}:{info.port}", Path(tmp), a, cut))  # fmt: skip
        finally:
            client.close()
            server.release()
