"""Time travel over history blocks and the live stream: what comes back is exactly what was written."""

from __future__ import annotations

import itertools
import random
import signal
import subprocess
import sys
from datetime import datetime

import msgspec
import numpy as np
import pytest
import valkey

from conftest import subprocess_env, wait_until
from factories import tick
from tickvault.domain.events import B3_TZ, Tick
from tickvault.errors import DataError
from tickvault.sources.simulator import MarketSimulator
from tickvault.store.api import Store
from tickvault.store.block_codec import Columns, decode_block, encode_block

DAY = 86_400_000


def _days(n_days: int = 3, per_day: int = 3000) -> list[Tick]:
    """Simulated ticks over several sessions, with some late ticks and edits mixed in."""
    out: list[Tick] = []
    for day in range(n_days):
        start = datetime(2025, 11, 24 + day, 9, 0, tzinfo=B3_TZ)
        out += itertools.islice(MarketSimulator(["WDOFUT"], seed=5 + day, start=start).ticks(), per_day)
    rng = random.Random(1)
    for k in range(40):  # late ticks (history downloads) and edits at random older times
        old = rng.choice(out)
        out.append(tick(ts_ms=old.timestamp_ms, trade_id=10_000_000 + k, price=old.price))
        out.append(msgspec.structs.replace(old, is_edit=True, quantity=old.quantity + 1))
    for i, t in enumerate(out):
        msgspec.structs.force_setattr(t, "seq", i + 1)
    return out


def _oracle(written: list[Tick], start: int, end: int) -> list[Tick]:
    """By exchange time, ties in write order."""
    inside = [(t.timestamp_ms, i, t) for i, t in enumerate(written) if start <= t.timestamp_ms <= end]
    return [t for _, _, t in sorted(inside, key=lambda x: (x[0], x[1]))]


def _write(store: Store, written: list[Tick]) -> None:
    for k in range(0, len(written), 1000):
        store.append_ticks(written[k : k + 1000])


def test_random_ranges_over_blocks_and_live_tail_equal_what_was_written(store: Store) -> None:
    written = _days()
    _write(store, written)
    first, last = min(t.timestamp_ms for t in written), max(t.timestamp_ms for t in written)
    store.seal("WDOFUT", first + (last - first) // 2)  # half sealed, half live; late ones on both sides
    assert store.history.refs("WDOFUT", 0, 2**62), "something was sealed"
    assert store.count("WDOFUT") == len(written)
    rng = random.Random(7)
    for _ in range(40):
        a, b = sorted(rng.randint(first - DAY, last + DAY) for _ in range(2))
        frame = store.ticks("WDOFUT", a, b)
        got = list(
            zip(
                frame.timestamp_ms,
                frame.trade_id,
                frame.seq,
                frame.price,
                frame.quantity,
                frame.is_edit,
                strict=True,
            )
        )
        want = [
            (t.timestamp_ms, t.trade_id, t.seq, t.price, t.quantity, t.is_edit)
            for t in _oracle(written, a, b)
        ]
        assert got == want
    middle = first + (last - first) // 2  # whole ticks, every field, across the seal boundary
    assert store.tick_events("WDOFUT", middle - 600_000, middle + 600_000) == _oracle(
        written, middle - 600_000, middle + 600_000
    )
    everything = store.ticks("WDOFUT", first, last)
    assert len(everything) == len(written)
    assert everything.index.is_monotonic_increasing


def test_sealing_in_steps_keeps_every_tick_once(store: Store) -> None:
    written = _days(2, 2000)
    _write(store, written)
    first, last = min(t.timestamp_ms for t in written), max(t.timestamp_ms for t in written)
    for cutoff in np.linspace(first, last + 1, 7).astype(np.int64).tolist():
        store.seal("WDOFUT", int(cutoff))
        assert store.tick_events("WDOFUT", first, last) == _oracle(written, first, last)
    assert store.client.xlen("stream:ticks:WDOFUT") < 100  # (only late ones stored after the cutoff stay)


def test_seal_killed_mid_way_loses_and_duplicates_nothing(store: Store, valkey_url: str) -> None:
    written = _days(2, 4000)
    _write(store, written)
    first, last = min(t.timestamp_ms for t in written), max(t.timestamp_ms for t in written)
    script = (
        "import sys, valkey; from tickvault.store.api import Store\n"
        "s = Store(valkey.Valkey.from_url(sys.argv[1]))\n"
        f"for c in range({first}, {last + 2}, 20_000):\n"
        "    s.seal('WDOFUT', c)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, valkey_url], env=subprocess_env())
    assert wait_until(lambda: store.client.zcard("tv:blocks:WDOFUT") >= 3, timeout=60)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert store.tick_events("WDOFUT", first, last) == _oracle(written, first, last)
    store.seal("WDOFUT", last + 1)  # the next seal picks up where the killed one stopped
    assert store.tick_events("WDOFUT", first, last) == _oracle(written, first, last)


def test_history_memory_per_tick(store: Store, valkey_client: valkey.Valkey) -> None:
    written = [t for t in _days(1, 100_000) if not t.is_edit and t.trade_id < 10_000_000]
    _write(store, written)
    stream_bytes = valkey_client.memory_usage("stream:ticks:WDOFUT")
    store.seal("WDOFUT", written[-1].timestamp_ms + 1)
    block_bytes = sum(valkey_client.memory_usage(k) for k in valkey_client.scan_iter("tv:block:WDOFUT:*"))
    block_bytes += valkey_client.memory_usage("tv:blocks:WDOFUT")
    assert block_bytes / len(written) <= 8, f"{block_bytes / len(written):.1f} B/tick in blocks"
    assert stream_bytes / len(written) > 5 * block_bytes / len(written)


def test_block_codec_round_trip_and_damage() -> None:
    rng = np.random.default_rng(3)
    n = 1000
    cols = Columns(
        timestamp_ms=np.sort(rng.integers(0, 2**40, n)), trade_id=rng.integers(-(2**62), 2**62, n),
        price=rng.random(n) * 1e6, volume=rng.standard_normal(n), quantity=rng.integers(0, 2**40, n),
        buyer=rng.integers(0, 3000, n), seller=rng.integers(-5, 5, n), trade_type=rng.integers(0, 9, n),
        aggressor=rng.integers(0, 3, n).astype(np.int8), is_edit=rng.random(n) < 0.1,
        seq=rng.integers(0, 2**50, n),
    )  # fmt: skip
    back = decode_block(encode_block(cols))
    for name in Columns.__dataclass_fields__:
        assert np.array_equal(getattr(back, name), getattr(cols, name)), name
    assert len(decode_block(encode_block(Columns.empty()))) == 0
    data = encode_block(cols)
    with pytest.raises(DataError, match="not a tickvault history block"):
        decode_block(b"XXXX" + data[4:])
    with pytest.raises(DataError, match="damaged"):
        decode_block(data[:-20])


def test_retention_reaches_into_blocks(store: Store) -> None:
    written = [t for t in _days(3, 1000) if t.trade_id < 10_000_000 and not t.is_edit]
    _write(store, written)
    last = max(t.timestamp_ms for t in written)
    store.seal("WDOFUT", last - DAY // 2)
    cutoff = last - int(1.2 * DAY)
    removed = store.apply_retention("WDOFUT", 1.2)
    assert removed == sum(t.timestamp_ms < cutoff for t in written)
    assert store.tick_events("WDOFUT", 0, last) == [t for t in written if t.timestamp_ms >= cutoff]


def test_as_of_finds_sealed_ticks(store: Store) -> None:
    written = [t for t in _days(1, 500) if t.trade_id < 10_000_000 and not t.is_edit]
    _write(store, written)
    store.seal("WDOFUT", written[-1].timestamp_ms + 1)
    middle = written[250]
    found = store.as_of("WDOFUT", middle.timestamp_ms)
    assert found is not None and found.timestamp_ms == middle.timestamp_ms
