"""The live tail read from the columnar copy (store/live_copy.py) gives exactly what the per-entry
path (`Store._live_entries`: XRANGE + the late index) gives: every tick once, in the same order,
across batch, chunk-merge, sealing, bulk-ingest and retention boundaries."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import msgspec
import numpy as np
import pytest
import valkey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.factories import BASE_MS, tick
from tests.test_bulk_ingest import assert_store_holds, day_of, stored_once, write_csv

from tickvault.domain.events import Tick
from tickvault.domain.tick_schema import COLUMNS, STREAM_FIELDS
from tickvault.sources.bulk_load import load_files
from tickvault.store import live_copy
from tickvault.store.api import Store
from tickvault.store.block_codec import Columns

SYMBOL = "WDOFUT"


def assert_same(got: Columns, want: Columns) -> None:
    assert len(got) == len(want)
    for name in COLUMNS:
        assert np.array_equal(getattr(got, name), getattr(want, name)), name


def reference_columns(store: Store, start: int, end: int) -> Columns:
    """Store.columns with the live part read entry by entry."""
    parts = [
        p for p in (store.history.read(SYMBOL, start, end), store._live_entries(SYMBOL, start, end)) if len(p)
    ]
    both = Columns.concat(parts)
    return both.take(np.lexsort((both.seq, both.timestamp_ms))) if len(both) else both


def check_ranges(store: Store, ranges: list[tuple[int, int]]) -> None:
    for start, end in ranges:
        assert_same(store._live(SYMBOL, start, end), store._live_entries(SYMBOL, start, end))
        assert_same(store.columns(SYMBOL, start, end), reference_columns(store, start, end))


@pytest.fixture
def merge_small(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Chunks merge after a few rows, so short tests cross raw/block chunk boundaries."""
    monkeypatch.setattr(live_copy, "MERGE_ROWS", 7)
    monkeypatch.setattr(live_copy, "MERGE_BATCHES", 3)
    yield


# a step: ("write", [(ms offset, trade id, edit)]), ("resend", k), ("seal", fraction),
# ("nocopy", [...]) a batch whose writer wrote no copy, ("reset",) a writer restart
_rows = st.lists(st.tuples(st.integers(0, 60), st.integers(1, 40), st.booleans()), min_size=1, max_size=12)
_steps = st.lists(
    st.one_of(
        st.tuples(st.just("write"), _rows),
        st.tuples(st.just("nocopy"), _rows),
        st.tuples(st.just("resend"), st.integers(1, 3)),
        st.tuples(st.just("seal"), st.floats(0.0, 1.0)),
        st.tuples(st.just("reset")),
    ),
    min_size=1,
    max_size=14,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    steps=_steps,
    ranges=st.lists(st.tuples(st.integers(-5, 130), st.integers(0, 80)), min_size=1, max_size=4),
    merge=st.sampled_from([(2, 2), (5, 3), (4096, 256)]),
)
def test_reads_across_the_live_window_equal_the_entry_path(
    valkey_client: valkey.Valkey,
    monkeypatch: pytest.MonkeyPatch,
    steps: list[tuple[object, ...]],
    ranges: list[tuple[int, int]],
    merge: tuple[int, int],
) -> None:
    valkey_client.flushall()
    monkeypatch.setattr(live_copy, "MERGE_ROWS", merge[0])
    monkeypatch.setattr(live_copy, "MERGE_BATCHES", merge[1])
    store = Store(valkey_client)
    sent: list[list[Tick]] = []
    seq = 0
    clock = BASE_MS
    last_stored = 0  # what the last step stored through a writer that writes the copy
    for step in steps:
        kind = step[0]
        if kind in ("write", "nocopy"):
            batch = []
            for offset, trade_id, edit in step[1]:  # type: ignore[attr-defined]
                seq += 1
                clock += 1
                price = 5400.0 + 0.5 * (trade_id % 7) + (0.25 if edit else 0.0)
                batch.append(tick(SYMBOL, clock - offset, trade_id, price, 1 + seq % 3, seq=seq, is_edit=edit,
                                  trade_type=2 + seq % 3))  # fmt: skip
            sent.append(batch)
            if kind == "nocopy":
                with monkeypatch.context() as m:
                    m.setattr(live_copy.CopyRun, "commands", lambda *a, **k: [])
                    store.append_ticks(batch)
                last_stored = 0
            else:
                last_stored = store.append_ticks(batch).stored
        elif kind == "resend" and sent:
            store.append_ticks(sent[-min(int(step[1]), len(sent))])  # type: ignore[call-overload]
            last_stored = 0
        elif kind == "seal":
            store.seal(SYMBOL, BASE_MS + int(float(step[1]) * (clock - BASE_MS + 2)))  # type: ignore[arg-type]
            last_stored = 0
        elif kind == "reset":
            store.writer.reset()
    everything = (BASE_MS - 100, clock + 100)
    if last_stored:  # the newest batch came with its copy: the fast path serves at least it
        tail = live_copy.read_live(store.client, store.keys, SYMBOL, *everything)
        assert tail.boundary is not None and len(tail.on_time) + len(tail.late) >= last_stored
    check_ranges(store, [everything, *((BASE_MS + a, BASE_MS + a + w) for a, w in ranges)])


def test_the_copy_is_what_serves_the_tail(store: Store, merge_small: None) -> None:
    """Batches written by the tick writer are read from the copy (all of them), merged into blocks."""
    written = [tick(SYMBOL, BASE_MS + i // 2, i + 1, 5400.0 + i % 5, seq=i + 1) for i in range(50)]
    for k in range(0, 50, 4):
        store.append_ticks(written[k : k + 4])
    tail = live_copy.read_live(store.client, store.keys, SYMBOL, BASE_MS, BASE_MS + 100)
    assert tail.boundary is not None and len(tail.on_time) == 50
    assert store.client.xlen(store.keys.live_copy(SYMBOL)) < 50 // 4  # raw chunks were merged
    assert list(store.columns(SYMBOL, BASE_MS, BASE_MS + 100).trade_id) == list(range(1, 51))


def test_a_writer_without_the_copy_and_a_new_stream_state_fall_back_per_entry(store: Store) -> None:
    first = [tick(SYMBOL, BASE_MS + i, i + 1, seq=i + 1) for i in range(10)]
    store.append_ticks(first)
    # an entry added by hand (not through the writer: no chunk) breaks the chain: its rows and all
    # before it come from the stream, later batches from the copy again
    key = store.keys.ticks(SYMBOL)
    fields = {name: str(getattr(first[-1], name)) for name in STREAM_FIELDS}
    fields["is_edit"] = "false"
    fields.update(
        timestamp_ms=str(BASE_MS + 20), trade_id="500", seq="11", timestamp=first[-1].timestamp.isoformat()
    )
    store.client.xadd(key, fields, id=f"{BASE_MS + 20}-0")  # type: ignore[arg-type]
    store.writer.reset()  # the writer notices on its next batch anyway; here it reloads at once
    later = [tick(SYMBOL, BASE_MS + 30 + i, 600 + i, seq=12 + i) for i in range(5)]
    store.append_ticks(later)
    tail = live_copy.read_live(store.client, store.keys, SYMBOL, BASE_MS, BASE_MS + 100)
    assert tail.boundary == (BASE_MS + 30, 0) and len(tail.on_time) == 5
    check_ranges(store, [(BASE_MS, BASE_MS + 100), (BASE_MS + 15, BASE_MS + 31)])
    assert len(store.columns(SYMBOL, BASE_MS, BASE_MS + 100)) == 16


def test_late_ticks_edits_and_resends_keep_their_place(store: Store, merge_small: None) -> None:
    base = [tick(SYMBOL, BASE_MS + 100 + i, i + 1, seq=i + 1) for i in range(20)]
    store.append_ticks(base[:10])
    late = [tick(SYMBOL, BASE_MS + 50, 900, seq=21), tick(SYMBOL, BASE_MS + 105, 901, seq=22)]
    edit = tick(SYMBOL, BASE_MS + 103, 4, 5401.5, seq=23, is_edit=True)
    store.append_ticks([*late, edit])
    assert store.append_ticks(base[:10] + [edit]).stored == 0  # a re-send stores (and copies) nothing
    store.append_ticks(base[10:])
    check_ranges(
        store, [(BASE_MS, BASE_MS + 200), (BASE_MS + 50, BASE_MS + 50), (BASE_MS + 104, BASE_MS + 106)]
    )
    got = store.columns(SYMBOL, BASE_MS, BASE_MS + 200)
    assert sorted(got.trade_id.tolist()) == sorted([*range(1, 21), 900, 901, 4])
    assert store.count(SYMBOL) == 23


def test_sealing_and_retention_trim_the_copy_and_reads_stay_exact(store: Store, merge_small: None) -> None:
    for k in range(10):
        store.append_ticks(
            [tick(SYMBOL, BASE_MS + 1000 * k + i, 10 * k + i + 1, seq=10 * k + i + 1) for i in range(10)]
        )
    store.append_ticks([tick(SYMBOL, BASE_MS + 500, 999, seq=101)])  # late
    before = store.client.xlen(store.keys.live_copy(SYMBOL))
    store.seal(SYMBOL, BASE_MS + 4005)
    assert store.client.xlen(store.keys.live_copy(SYMBOL)) < before
    check_ranges(store, [(BASE_MS, BASE_MS + 20_000), (BASE_MS + 3000, BASE_MS + 5000)])
    store.apply_retention(SYMBOL, 5500 / 86_400_000)  # removes by exchange time, the late one too
    check_ranges(store, [(BASE_MS, BASE_MS + 20_000)])
    assert store.columns(SYMBOL, BASE_MS, BASE_MS + 20_000).timestamp_ms.min() >= BASE_MS + 9009 - 5500


def test_a_bulk_ingest_over_the_live_window_invalidates_what_it_moved(
    store: Store, tmp_path: Path, merge_small: None
) -> None:
    day = day_of(SYMBOL, BASE_MS, 600, 5)
    live = [msgspec.structs.replace(t, seq=i + 1) for i, t in enumerate(day[200:400])]
    for k in range(0, 200, 25):
        store.append_ticks(live[k : k + 25])
    store.writer.release()
    (report,) = load_files(store, [write_csv(tmp_path / "day.csv", day)])
    assert report.stored == 400
    lo, hi = day[0].timestamp_ms, day[-1].timestamp_ms + 10_000
    check_ranges(store, [(lo, hi)])
    assert_store_holds(store, stored_once([live, day]))
    newer = [tick(SYMBOL, hi + i, 10_000 + i, seq=1000 + i) for i in range(30)]
    store.append_ticks(newer)  # the copy serves what comes after
    tail = live_copy.read_live(store.client, store.keys, SYMBOL, hi, hi + 100)
    assert tail.boundary is not None and len(tail.on_time) == 30
    check_ranges(store, [(lo, hi + 100)])


def test_the_tick_stream_stays_one_plain_entry_per_tick(store: Store) -> None:
    written = [tick(SYMBOL, BASE_MS + i, i + 1, seq=i + 1) for i in range(30)]
    store.append_ticks(written)
    entries = store.client.xrange(store.keys.ticks(SYMBOL))
    assert len(entries) == 30
    assert all([k.decode() for k in fields] == list(STREAM_FIELDS) for _, fields in entries)
    assert [int(f[b"trade_id"]) for _, f in entries] == list(range(1, 31))


def test_a_cluster_keeps_the_copy_in_the_symbol_slot(cluster_client: valkey.ValkeyCluster) -> None:
    store = Store(cluster_client)
    for k in range(5):
        store.append_ticks(
            [tick(SYMBOL, BASE_MS + 10 * k + i, 10 * k + i + 1, seq=10 * k + i + 1) for i in range(10)]
        )
    assert cluster_client.keyslot(store.keys.live_copy(SYMBOL)) == cluster_client.keyslot(
        store.keys.ticks(SYMBOL)
    )
    tail = live_copy.read_live(store.client, store.keys, SYMBOL, BASE_MS, BASE_MS + 100)
    assert tail.boundary is not None and len(tail.on_time) == 50
    check_ranges(store, [(BASE_MS, BASE_MS + 100)])
