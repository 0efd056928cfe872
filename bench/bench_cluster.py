"""Scale-out: ingest and time travel for 12 symbols on a 1-node and a 3-node Valkey Cluster.

Ingest: 12 symbols x 25,000 ticks through the tick writer (the recorder's), one writer process per
node, each owning the symbols whose slots its node serves: the way a desk scales the recorder with the
cluster. Time travel: one hour of all 12 symbols as one DataFrame (`Store.ticks([...])`, per-symbol
reads fanned out to their nodes in parallel), after sealing into history blocks. Per-node load: the
CPU seconds each valkey-server spent during the ingest, its keys and its memory.

On one machine the gain is bounded by its cores: this one has 2, shared by the writers, the servers
and this script, so 3 nodes cannot be 3x here. The figure that carries over to separate machines is
the per-node load: each node does a third of the work.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from tickvault.domain.events import make_tick
from tickvault.store.api import Store
from tickvault.store.cluster import EmbeddedCluster, cluster_client, primaries

SYMBOLS = tuple(f"FUT{i:02d}" for i in range(12))
PER_SYMBOL = 25_000
START_MS = 1_764_000_000_000 - 3 * 3_600_000  # 10:00 -03:00
STEP = 500  # ticks per symbol per batch


def _ticks(symbol: str, seed: int) -> list:
    rng = np.random.default_rng(seed)
    times = START_MS + np.sort(rng.integers(0, 3_600_000, PER_SYMBOL))
    prices = 5000.0 + 0.5 * np.cumsum(rng.choice([-1, 0, 0, 1], PER_SYMBOL))
    return [
        make_tick(symbol, int(ms), i + 1, float(p), int(q), multiplier=10.0, seq=i + 1)
        for i, (ms, p, q) in enumerate(zip(times, prices, rng.integers(1, 20, PER_SYMBOL), strict=True))
    ]


def _writer(url: str, symbols: list[str], ready: mp.Barrier, out: mp.Queue) -> None:  # type: ignore[type-arg]
    store = Store(cluster_client(url))
    data = {s: _ticks(s, i) for i, s in enumerate(symbols)}
    ready.wait()
    began = time.perf_counter()
    for start in range(0, PER_SYMBOL, STEP):  # batches as the recorder makes them: every symbol in each
        store.append_ticks([t for s in symbols for t in data[s][start : start + STEP]])
    store.writer.flush()
    out.put(time.perf_counter() - began)


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(nodes: int, root: Path, writers: int | None = None) -> dict[str, float | list[float]]:
    """`writers` None: one writer process per node (for its symbols); else that many, symbols dealt."""
    local = EmbeddedCluster(root / f"cluster-{nodes}-{writers}", nodes)
    infos = local.ensure_running()
    client = cluster_client(local.url)
    try:
        owners: dict[str, list[str]] = {}
        store = Store(client)
        for i, symbol in enumerate(SYMBOLS):
            owner = (
                client.get_node_from_key(store.keys.ticks(symbol)).name if writers is None else i % writers
            )
            owners.setdefault(str(owner), []).append(symbol)
        ctx = mp.get_context("spawn")
        ready, out = ctx.Barrier(len(owners) + 1), ctx.Queue()
        procs = [ctx.Process(target=_writer, args=(local.url, syms, ready, out)) for syms in owners.values()]
        for p in procs:
            p.start()
        cpu0 = [_cpu_s(i.pid) for i in infos]
        ready.wait()
        began = time.perf_counter()
        for p in procs:
            p.join()
        wall = time.perf_counter() - began
        cpu = [_cpu_s(i.pid) - c for i, c in zip(infos, cpu0, strict=True)]
        total = len(SYMBOLS) * PER_SYMBOL
        assert sum(store.count(s) for s in SYMBOLS) == total
        for symbol in SYMBOLS:
            store.compact(symbol, 0)  # all into history blocks, as a past hour is
        runs = []
        for _ in range(5):
            t0 = time.perf_counter()
            frame = store.ticks(list(SYMBOLS), START_MS, START_MS + 3_600_000)
            runs.append(time.perf_counter() - t0)
            assert len(frame) == total
        keys = [int(node.dbsize()) for node in primaries(client)]
        memory = [int(node.info("memory")["used_memory"]) / 2**20 for node in primaries(client)]
        return {"ingest": total / wall, "query_ms": statistics.median(runs) * 1000, "cpu": cpu, "keys": keys,
                "memory": memory}  # fmt: skip
    finally:
        client.close()
        local.stop()


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        one = measure(1, Path(tmp))
        one_3w = measure(1, Path(tmp), writers=3)
        three = measure(3, Path(tmp))
    total = len(SYMBOLS) * PER_SYMBOL
    print(
        f"{len(SYMBOLS)} symbols x {PER_SYMBOL:,} ticks = {total:,}; {os.cpu_count()} cores on this machine"
    )
    print(f"{'':28}{'1 node':>14}{'3 nodes':>14}{'ratio':>9}")
    print(f"{'ingest (ticks/s)':28}{one['ingest']:>14,.0f}{three['ingest']:>14,.0f}"
          f"{three['ingest'] / one['ingest']:>8.2f}x")  # type: ignore[operator]  # fmt: skip
    print(f"  1 node with 3 writer processes (as many as the 3-node run): {one_3w['ingest']:,.0f} ticks/s:"
          " on 2 cores the gain is the writers'; the servers' share is the per-node CPU below")  # fmt: skip
    print(f"{'1 h of 12 symbols -> frame':28}{one['query_ms']:>11,.1f} ms{three['query_ms']:>11,.1f} ms"
          f"{one['query_ms'] / three['query_ms']:>8.2f}x")  # type: ignore[operator]  # fmt: skip
    for label, key, fmt in (("server CPU s during ingest", "cpu", "{:.2f}"), ("keys", "keys", "{:,}"),
                            ("memory MiB", "memory", "{:.1f}")):  # fmt: skip
        a, b = (" / ".join(fmt.format(v) for v in r[key]) for r in (one, three))  # type: ignore[attr-defined]
        print(f"  per node {label}: 1 node [{a}]   3 nodes [{b}]")


if __name__ == "__main__":
    main()
