"""Ticks/s of the thin slice: source callback -> ZeroMQ -> recorder -> Valkey (AOF everysec), 0 lost.

Baseline: the original guide's bridge, one XADD round trip per tick with `str(v)` fields.
"""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path

import valkey
from tickvault.sources.simulator import MarketSimulator

from tickvault.bus import Publisher, Subscriber
from tickvault.events import Tick
from tickvault.ingest import Ingest
from tickvault.recorder import Recorder
from tickvault.server import EmbeddedValkey

N_TICKS = 200_000
N_BASELINE = 20_000


def _ticks(n: int) -> list[Tick]:
    source = MarketSimulator(["WDOFUT", "WINFUT"], seed=1).ticks()
    return [next(source) for _ in range(n)]


def _slice(client: valkey.Valkey, ticks: list[Tick]) -> float:
    from tickvault.store import Store

    pub = Publisher("tcp://127.0.0.1:*")
    sub = Subscriber(pub.endpoint, ["tick_"])
    recorder = Recorder(Store(client))
    stop = threading.Event()
    thread = threading.Thread(target=recorder.run, args=(sub, stop), daemon=True)
    thread.start()
    assert pub.wait_for_subscriber("tick_", 10)
    ingest = Ingest(pub)
    start = time.perf_counter()
    for tick in ticks:
        ingest.on_tick(tick)
    while not recorder.caught_up(ingest.last_seq):
        time.sleep(0.001)
    elapsed = time.perf_counter() - start
    stop.set()
    thread.join()
    sub.close()
    pub.close()
    stored = sum(client.xlen(f"stream:ticks:{s}") for s in ("WDOFUT", "WINFUT"))
    lost = len(ticks) - stored
    rate = len(ticks) / elapsed
    print(f"  tickvault slice: {len(ticks):,} ticks in {elapsed:.2f} s = {rate:,.0f} ticks/s, lost {lost}")
    return rate


def _baseline(client: valkey.Valkey, ticks: list[Tick]) -> float:
    start = time.perf_counter()
    errors = 0
    for tick in ticks:
        fields = {k: str(getattr(tick, k)) for k in tick.__struct_fields__}
        try:
            client.xadd(f"base:ticks:{tick.symbol}", fields, id=f"{tick.timestamp_ms}-*")
        except valkey.ResponseError:
            errors += 1  # the guide logs and drops these (defect 1)
    elapsed = time.perf_counter() - start
    print(
        f"  guide baseline (XADD per tick): {len(ticks):,} ticks in {elapsed:.2f} s = "
        f"{len(ticks) / elapsed:,.0f} ticks/s, refused {errors}"
    )
    return len(ticks) / elapsed


def main() -> None:
    ticks = _ticks(N_TICKS)
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedValkey(Path(tmp) / "valkey")
        info = server.ensure_running()
        client = valkey.Valkey(host=info.host, port=info.port)
        try:
            ours = _slice(client, ticks)
            base = _baseline(client, ticks[:N_BASELINE])
            print(f"  ratio: {ours / base:.1f}x the guide's per-tick XADD")
        finally:
            client.close()
            server.stop()


if __name__ == "__main__":
    main()
