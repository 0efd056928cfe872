"""Book updates recorded: source -> bus -> recorder process -> Valkey, 0 lost; then the stored book.

Data: the first hour of a simulated WDOFUT session's book, order by order (MBO, `sources.
book_simulator` seed 1: the busiest hour, ~570k updates in ~530k batches), generated first and then
handed to `Ingest.on_book` as fast as it takes them (the simulator at speed 0, without its own
generation cost). The book publisher sends the batches queued together as one `book_{SYMBOL}` frame
(natural batching: how many depends on how far the source runs ahead of the publisher's thread, so
the frames per update are printed); the recorder runs as its own process (`tickvault run --only
recorder`) against the embedded Valkey (append-only file, fsync every second). The figure is
updates per second from the first frame published to the last update confirmed in Valkey, then
every stored update is compared with what was sent.

Baseline in the same run: the same updates as one stream entry per update with every field a stream
field (the tick stream's layout), XADDs sent as raw RESP in MULTI/EXEC batches of 5,000 with
replies off: no Python bus or recorder at all, only Valkey's cost per entry. Then the stored book:
bytes per update live and in sealed history blocks, `store.book(at=T)` at random moments, and
`store.book_frames` for the hour at 1 s, 10 levels.
"""

from __future__ import annotations

import gc
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import valkey

from bench_book import HOUR_MS, OPEN, SYMBOL, simulated_hour
from tickvault.bus.envelope import endpoint
from tickvault.bus.ingest import Ingest
from tickvault.bus.publisher import Publisher
from tickvault.domain.book import BookBatch, BookColumns
from tickvault.domain.events import to_ms
from tickvault.store.api import Store
from tickvault.store.raw_resp import EXEC_REPLY_ON, REPLY_OFF_MULTI, RawConnection, pack
from tickvault.store.server import EmbeddedValkey, free_port

BASELINE_UPDATES = 200_000
WRITER_COMMANDS = ("evalsha", "eval", "xinfo", "get", "hgetall", "zrevrangebyscore", "xrange", "sadd")


def batches_of(cols: BookColumns) -> list[BookBatch]:
    events = cols.events()
    ends = cols.batch_ends().tolist()
    out, start = [], 0
    for end in ends:
        out.append(BookBatch(events[start : end + 1]))
        start = end + 1
    return out


def _valkey_usec(client: valkey.Valkey, *commands: str) -> float:
    """Microseconds Valkey's thread has spent in these commands so far (INFO commandstats)."""
    stats = client.info("commandstats")
    return float(sum(stats.get(f"cmdstat_{name}", {}).get("usec", 0) for name in commands))


def baseline(client: valkey.Valkey, cols: BookColumns) -> tuple[float, float, float]:
    """(updates/s, bytes per update, Valkey µs per update) of one stream entry per update, every field
    a stream field."""
    conn = RawConnection(client, "XADD")
    key = "bench:book:per-update"
    n = min(BASELINE_UPDATES, len(cols))
    rows = zip(*(getattr(cols, name)[:n].tolist() for name in ("timestamp_ms", "received_ms", "seq", "side",
               "price", "quantity", "order_id", "agent", "action", "flags")), strict=True)  # fmt: skip
    commands = [
        pack(("XADD", key, f"{ts}-{i}", "symbol", SYMBOL, "timestamp_ms", str(ts), "received_ms", str(rcv),
              "seq", str(seq), "side", str(side), "price", repr(price), "quantity", str(qty),
              "order_id", str(oid), "agent", str(agent), "action", str(action), "flags", str(flags)))
        for i, (ts, rcv, seq, side, price, qty, oid, agent, action, flags) in enumerate(rows)
    ]  # fmt: skip
    spent = _valkey_usec(client, "xadd")
    start = time.perf_counter()
    for k in range(0, n, 5000):
        conn.send(REPLY_OFF_MULTI + b"".join(commands[k : k + 5000]) + EXEC_REPLY_ON)
        conn.read()
    elapsed = time.perf_counter() - start
    conn.release()
    spent = (_valkey_usec(client, "xadd") - spent) / n
    used = client.memory_usage(key, samples=0) or 0
    client.delete(key)
    return n / elapsed, used / n, spent


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def record(info: object, cols: BookColumns, batches: list[BookBatch], tmp: Path) -> tuple[float, float, bool]:
    """(updates/s end to end, updates/s handed to ingest, all stored exactly)."""
    ports = {
        name: str(free_port()) for name in ("TICK", "BOOK", "HISTORY", "SIGNAL", "REPLAY", "BOOK_REPLAY")
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ZMQ_", "VALKEY_", "TICKVAULT_"))}
    env.update({f"ZMQ_{name}_PORT": port for name, port in ports.items()})
    env.update(VALKEY_URL=f"valkey://{info.host}:{info.port}/0", TICKVAULT_DATA_DIR=str(tmp / "data"))  # type: ignore[attr-defined]
    env.update(TICKVAULT_SYMBOLS=SYMBOL, LOG_LEVEL="WARNING")
    pub = Publisher(
        endpoint("127.0.0.1", int(ports["BOOK"])),
        replay_bind=endpoint("127.0.0.1", int(ports["BOOK_REPLAY"])),
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "tickvault", "run", "--only", "recorder", "--no-dashboard"],
        env=env,
        cwd=tmp,
        stdout=subprocess.DEVNULL,
    )
    client = valkey.Valkey(host=info.host, port=info.port)  # type: ignore[attr-defined]
    store = Store(client)
    try:
        if not pub.wait_for_subscriber("book_", timeout=30):
            raise RuntimeError("the recorder process did not subscribe")
        ingest = Ingest()
        ingest.book_publisher = pub
        total = len(cols)
        cpu_recorder, cpu_source = _cpu_s(proc.pid), time.process_time()
        start = time.perf_counter()
        for batch in batches:
            ingest.on_book(batch)
        handed = time.perf_counter() - start
        published = None
        while store.book_position(SYMBOL).updates < total:
            if published is None and pub.pending() == 0:
                published = time.perf_counter() - start
            if time.perf_counter() - start > 600:
                raise RuntimeError("not recorded within 10 minutes")
            time.sleep(0.005)
        elapsed = time.perf_counter() - start
        cpu_recorder = (_cpu_s(proc.pid) - cpu_recorder) / total * 1e6
        cpu_source = (time.process_time() - cpu_source) / total * 1e6  # ingest, publisher, and this poll
        exact = store.book_update_columns(SYMBOL, 0, 2**62).equals(cols)
        ceiling = 1e6 / max(cpu_source, cpu_recorder)
        frames = pub.stats.published
        print(f"  ({frames:,} frames, {total / max(frames, 1):.0f} updates a frame;", end=" ")
        print(f"publisher drained after {published or elapsed:.1f} s, recorded after {elapsed:.1f} s;")
        print(
            f"  CPU per update: source process {cpu_source:.2f} µs, recorder process {cpu_recorder:.2f} µs:"
        )
        print(f"  {ceiling:,.0f} updates/s with a core each)")
        return total / elapsed, total / handed, exact
    finally:
        proc.terminate()
        proc.wait(60)
        pub.close()
        client.close()


def reads(store: Store, cols: BookColumns, label: str) -> None:
    rng = np.random.default_rng(5)
    first, last = int(cols.timestamp_ms[0]), int(cols.timestamp_ms[-1])
    times = []
    for at in rng.integers(first, last, 300).tolist():
        start = time.perf_counter()
        store.book(SYMBOL, at)
        times.append((time.perf_counter() - start) * 1000)
    p50, p99 = np.percentile(times, [50, 99])
    print(f"  book(at=T), {label}, 300 random T: p50 {p50:.2f} ms, p99 {p99:.2f} ms, max {max(times):.2f} ms")
    begin = to_ms(OPEN)
    runs = []
    for _ in range(3):
        start = time.perf_counter()
        frames = store.book_frames(SYMBOL, begin, begin + HOUR_MS - 1, "1s", 10)
        runs.append(time.perf_counter() - start)
    print(
        f"  book_frames 1 h at 1 s, 10 levels, {label}: {statistics.median(runs) * 1000:.0f} ms",
        f"({len(frames)} rows)",
    )


def main() -> None:
    started = time.perf_counter()
    cols = simulated_hour("mbo")
    batches = batches_of(cols)
    gc.collect()
    gc.freeze()  # the pre-generated source data is not the system's: keep the collector off it
    print(
        f"  data: {len(cols):,} updates in {len(batches):,} batches,",
        f"generated in {time.perf_counter() - started:.0f} s",
    )
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        server = EmbeddedValkey(tmp / "valkey")
        info = server.ensure_running()
        client = valkey.Valkey(host=info.host, port=info.port)
        try:
            rate, base_bytes, base_usec = baseline(client, cols)
            print(f"  baseline, one stream entry per update (raw XADD, no bus): {rate:,.0f} updates/s, "
                  f"{base_bytes:.0f} B/update, Valkey {base_usec:.2f} µs/update (its ceiling "
                  f"{1e6 / base_usec:,.0f}/s)")  # fmt: skip
            spent = _valkey_usec(
                client, "evalsha", "eval", "xinfo", "get", "hgetall", "zrevrangebyscore", "xrange"
            )
            recorded, handed, exact = record(info, cols, batches, tmp)
            spent = (
                _valkey_usec(
                    client, "evalsha", "eval", "xinfo", "get", "hgetall", "zrevrangebyscore", "xrange"
                )
                - spent
            )
            print(f"  Valkey time for the book's writes: {spent / len(cols):.3f} µs/update (its ceiling "
                  f"{len(cols) / spent * 1e6:,.0f}/s)")  # fmt: skip
            print(f"  tickvault, ingest -> bus -> recorder process -> Valkey: {recorded:,.0f} updates/s "
                  f"({handed:,.0f}/s handed to ingest), {'0 lost, 0 duplicated' if exact else 'MISMATCH'}; "
                  f"{recorded / rate:.1f}x the baseline")  # fmt: skip
            store = Store(client)
            live = client.memory_usage(store.keys.book(SYMBOL), samples=0) or 0
            pattern = store.keys.book_snapshot(SYMBOL, 0)[:-1] + "*"
            snaps = sum(client.memory_usage(k) or 0 for k in client.scan_iter(match=pattern))
            print(
                f"  live entries: {live / len(cols):.2f} B/update",
                f"(+ snapshots {snaps / len(cols):.2f} B/update)",
            )
            reads(store, cols, "live")
            sealed = store.compact_book(SYMBOL, 0)
            blocks = sum(
                client.memory_usage(k) or 0
                for k in client.scan_iter(match=store.keys.book_block(SYMBOL, "*"))
            )
            print(f"  history blocks: {blocks / sealed:.2f} B/update ({sealed:,} updates sealed)")
            reads(store, cols, "sealed")
        finally:
            client.close()
            server.stop()
