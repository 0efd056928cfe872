"""Source callback latency: how long `Ingest.on_tick` holds the source's thread, p50/p99.

The callback runs on the market-data thread (ProfitDLL's only one), so this is the time the feed is
blocked per trade. Baseline: the original guide's interceptor, which builds a dict, serialises it
and calls `send_multipart(..., NOBLOCK)` on a PUB socket inside the callback; same ticks, same run.
"""

from __future__ import annotations

import time

import msgspec
import numpy as np
import zmq

from tickvault.bus.ingest import Ingest
from tickvault.bus.publisher import Publisher
from tickvault.bus.subscriber import Subscriber
from tickvault.domain.events import Tick
from tickvault.sources.simulator import MarketSimulator

N = 200_000


def _ticks(n: int) -> list[Tick]:
    source = MarketSimulator(["WDOFUT", "WINFUT"], seed=2).ticks()
    return [next(source) for _ in range(n)]


def _percentiles(name: str, samples_ns: np.ndarray) -> tuple[float, float]:
    p50, p99, p999 = np.percentile(samples_ns, [50, 99, 99.9]) / 1000
    print(f"  {name}: p50 {p50:.2f} µs, p99 {p99:.2f} µs, p99.9 {p999:.2f} µs")
    return p50, p99


def _tickvault(ticks: list[Tick]) -> tuple[float, float]:
    pub = Publisher("tcp://127.0.0.1:*", replay_bind="tcp://127.0.0.1:*")
    sub = Subscriber(pub.endpoint, ["tick_"], replay=pub.replay_endpoint)
    assert pub.wait_for_subscriber("tick_", 10)
    ingest = Ingest(pub)
    clock = time.perf_counter_ns
    samples = np.empty(len(ticks), dtype=np.int64)
    for i, tick in enumerate(ticks):
        start = clock()
        ingest.on_tick(tick)
        samples[i] = clock() - start
        if i % 5000 == 0:
            sub.receive(timeout_ms=0)  # a live consumer (it drops nothing: gaps are recovered)
    pub.flush(60)
    sub.close()
    pub.close()
    return _percentiles("tickvault Ingest.on_tick", samples)


def _guide(ticks: list[Tick]) -> tuple[float, float]:
    ctx = zmq.Context.instance()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.connect(f"tcp://127.0.0.1:{port}")
    sub.setsockopt(zmq.SUBSCRIBE, b"tick_")
    time.sleep(0.3)  # the guide's way: hope the subscriber has joined
    clock = time.perf_counter_ns
    samples = np.empty(len(ticks), dtype=np.int64)
    dropped = 0
    for i, t in enumerate(ticks):
        start = clock()
        data = {
            "type": "tick", "symbol": t.symbol, "timestamp": str(t.timestamp), "timestamp_ms": t.timestamp_ms,
            "trade_id": t.trade_id, "price": float(t.price), "volume": float(t.volume),
            "quantity": int(t.quantity),
            "buyer": t.buyer, "seller": t.seller, "trade_type": t.trade_type, "is_edit": t.is_edit,
        }  # fmt: skip
        try:
            pub.send_multipart([f"tick_{t.symbol}".encode(), msgspec.json.encode(data)], zmq.NOBLOCK)
        except zmq.Again:
            dropped += 1
        samples[i] = clock() - start
    sub.close()
    pub.close()
    return _percentiles("guide's interceptor (dict + JSON + NOBLOCK send)", samples)


def main() -> None:
    ticks = _ticks(N)
    ours = _tickvault(ticks)
    base = _guide(_ticks(N))
    ratio = f"p50 {base[0] / ours[0]:.1f}x, p99 {base[1] / ours[1]:.1f}x"
    print(f"  ratio: {ratio} faster than the guide's callback")


if __name__ == "__main__":
    main()
