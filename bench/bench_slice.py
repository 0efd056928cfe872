"""Ticks/s of source callback -> ZeroMQ -> recorder -> Valkey (AOF everysec), 0 lost.

Two layouts: everything in one Python process, and the recorder in its own process
(`tickvault run --only recorder`, as a deployment runs it). Baseline: the original guide's bridge,
one XADD round trip per tick with `str(v)` fields, in the same run against the same server.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import valkey

from tickvault.bus.envelope import endpoint
from tickvault.bus.ingest import Ingest
from tickvault.bus.publisher import Publisher
from tickvault.bus.subscriber import Subscriber
from tickvault.domain.events import Tick
from tickvault.recorder.recorder import Recorder
from tickvault.sources.simulator import MarketSimulator
from tickvault.store.api import Store
from tickvault.store.server import EmbeddedValkey, free_port

N_TICKS = 200_000
N_BASELINE = 20_000
SYMBOLS = ("WDOFUT", "WINFUT")


def _ticks(n: int) -> list[Tick]:
    source = MarketSimulator(list(SYMBOLS), seed=1).ticks()
    return [next(source) for _ in range(n)]


def _stored(client: valkey.Valkey, prefix: str = "stream:ticks:") -> int:
    return sum(client.xlen(f"{prefix}{s}") for s in SYMBOLS)


def _report(name: str, n: int, elapsed: float, lost: int) -> float:
    rate = n / elapsed
    print(f"  {name}: {n:,} ticks in {elapsed:.2f} s = {rate:,.0f} ticks/s, lost {lost}")
    return rate


def _one_process(client: valkey.Valkey, ticks: list[Tick]) -> float:
    client.flushall()
    pub = Publisher("tcp://127.0.0.1:*", replay_bind="tcp://127.0.0.1:*")
    sub = Subscriber(pub.endpoint, ["tick_"], replay=pub.replay_endpoint, ordered=False)
    recorder = Recorder(Store(client), spool_path=Path(tempfile.mkdtemp()) / "spool")
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
    return _report("tickvault, one process", len(ticks), elapsed, len(ticks) - _stored(client))


def _recorder_process(client: valkey.Valkey, port: int, ticks: list[Tick], tmp: Path) -> float:
    client.flushall()
    tick_port, replay_port = free_port(), free_port()
    env = {
        **os.environ,
        "VALKEY_URL": f"valkey://127.0.0.1:{port}/0",
        "ZMQ_TICK_PORT": str(tick_port),
        "ZMQ_REPLAY_PORT": str(replay_port),
        "TICKVAULT_SYMBOLS": ",".join(SYMBOLS),
        "TICKVAULT_DATA_DIR": str(tmp / "data"),
        "LOG_LEVEL": "WARNING",
    }
    pub = Publisher(endpoint("127.0.0.1", tick_port), replay_bind=endpoint("127.0.0.1", replay_port))
    proc = subprocess.Popen(
        [sys.executable, "-m", "tickvault", "run", "--only", "recorder", "--no-dashboard"],
        env=env,
        stdout=subprocess.DEVNULL,
    )
    try:
        assert pub.wait_for_subscriber("tick_", 30)
        ingest = Ingest(pub)
        start = time.perf_counter()
        for tick in ticks:
            ingest.on_tick(tick)
        deadline = time.monotonic() + 300
        while _stored(client) < len(ticks) and time.monotonic() < deadline:
            time.sleep(0.005)
        elapsed = time.perf_counter() - start
    finally:
        proc.terminate()
        proc.wait(60)
        pub.close()
    return _report(
        "tickvault, recorder in its own process", len(ticks), elapsed, len(ticks) - _stored(client)
    )


def _baseline(client: valkey.Valkey, ticks: list[Tick]) -> float:
    start = time.perf_counter()
    refused = 0
    for tick in ticks:
        fields = {k: str(getattr(tick, k)) for k in tick.__struct_fields__}
        try:
            client.xadd(f"base:ticks:{tick.symbol}", fields, id=f"{tick.timestamp_ms}-*")
        except valkey.ResponseError:
            refused += 1  # the guide logs and drops these (defect 1)
    elapsed = time.perf_counter() - start
    rate = len(ticks) / elapsed
    print(
        f"  guide baseline (XADD per tick): {len(ticks):,} ticks in {elapsed:.2f} s = {rate:,.0f} ticks/s,",
        end="",
    )
    print(f" refused {refused}")
    return rate


def main() -> None:
    ticks = _ticks(N_TICKS)
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedValkey(Path(tmp) / "valkey")
        info = server.ensure_running()
        client = valkey.Valkey(host=info.host, port=info.port)
        try:
            one = _one_process(client, ticks)
            two = _recorder_process(client, info.port, [t for t in _ticks(N_TICKS)], Path(tmp))
            base = _baseline(client, ticks[:N_BASELINE])
            print(f"  ratio: {one / base:.1f}x (one process), {two / base:.1f}x (recorder process)", end="")
            print(" the guide's per-tick XADD")
        finally:
            client.close()
            server.stop()


if __name__ == "__main__":
    main()
