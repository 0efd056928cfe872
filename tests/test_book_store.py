"""The order book's way through the store: codec, writer (idempotent, snapshots), sealed blocks and
the queries, held against the live engine (`analytics.book`) fed the same events, on simulated
sessions (MBO and MBP) and on generated update sequences."""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import msgspec
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from factories import BASE_MS
from tickvault.analytics.book import book_at, book_frames, live_book, quotes, snapshot_at, valid_through
from tickvault.domain.book import (
    LAST,
    BookBatch,
    BookColumns,
    BookKind,
    level_update,
    order_update,
)
from tickvault.domain.events import B3_TZ
from tickvault.errors import DataError
from tickvault.sources.book_simulator import BookMarketSimulator
from tickvault.store import book_sealing
from tickvault.store.api import Store
from tickvault.store.book_codec import BLOCK_LEVEL, decode_columns, encode_columns
from tickvault.store.book_live import load_snapshot, snapshots
from tickvault.store.book_writer import BookPart, BookWriter

SYMBOL = "WDOFUT"
OPEN = datetime(2025, 11, 24, 9, 0, tzinfo=B3_TZ)
KINDS = ["mbo", "mbp"]
OWNER = "recorder@test"  # a restarted recorder writes under the same name: no wait for the lease


@functools.cache
def session(kind: BookKind, items: int = 5000, seed: int = 5) -> tuple[BookBatch, ...]:
    """The book batches of a simulated session's start (numbered 1, 2, ... as ingest numbers them)."""
    sim = BookMarketSimulator([SYMBOL], kind=kind, seed=seed, start=OPEN)
    return tuple(b for b in itertools.islice(sim.events(), items) if isinstance(b, BookBatch))


def columns(batches: Sequence[BookBatch]) -> BookColumns:
    return BookColumns.from_events([e for b in batches for e in b])


def write_all(store: Store, batches: Sequence[BookBatch], per_write: int = 40, **kwargs: Any) -> BookWriter:
    """Write `batches` with a fresh writer, `per_write` batches at a time (snapshots every 400
    updates unless told otherwise)."""
    kwargs.setdefault("snapshot_every", 400)
    kwargs.setdefault("snapshot_ms", 10**12)
    kwargs.setdefault("owner", OWNER)
    writer = BookWriter(store.client, store.keys, **kwargs)
    for i in range(0, len(batches), per_write):
        writer.write([BookPart(columns(batches[i : i + per_write]), i // per_write + 1)])
    return writer


def levels(book: Any, side: str) -> list[tuple[float, int, int]]:
    found = book.levels(side)
    return list(zip(found.price.tolist(), found.quantity.tolist(), found.orders.tolist(), strict=True))


def frame_levels(frame: Any, side: str) -> list[tuple[float, int, int]]:
    rows = frame[frame["side"] == side]
    return list(zip(rows["price"].tolist(), rows["quantity"].tolist(), rows["orders"].tolist(), strict=True))


def live_books_at(batches: Sequence[BookBatch], kind: BookKind, times: Sequence[int]) -> dict[int, Any]:
    """The live engine's levels after every batch stamped at or before each of `times` (ascending)."""
    book = live_book(SYMBOL, kind)
    out: dict[int, Any] = {}
    pending = list(times)
    for batch in batches:
        while pending and batch.timestamp_ms > pending[0]:
            out[pending.pop(0)] = (levels(book, "bid"), levels(book, "ask"))
        for event in batch:
            book.apply(event)
    for at in pending:
        out[at] = (levels(book, "bid"), levels(book, "ask"))
    return out


# --- the snapshot, the codec ---------------------------------------------------------------------


ACTIONS = ["add"] * 4 + ["update"] * 3 + ["delete"] * 2 + ["clear"]


@st.composite
def sequences(draw: st.DrawFn, kind: str) -> list[Any]:
    """Batches with clears of one side or both, deletes of absent levels and unknown orders, orders
    that move, grow, shrink and come back, quantity 0, times stepping back."""
    events: list[Any] = []
    ts, seq = BASE_MS, 0
    for _ in range(draw(st.integers(1, 25))):
        ts += draw(st.sampled_from([0, 100, 300, -100]))
        size = draw(st.integers(1, 4))
        for i in range(size):
            seq += 1
            flags = LAST if i == size - 1 else 0
            action = draw(st.sampled_from(ACTIONS))
            side = draw(st.sampled_from(["bid", "ask", "none"] if action == "clear" else ["bid", "ask"]))
            price = 0.0 if action == "clear" else 5400.0 + 0.5 * draw(st.integers(-4, 4))
            quantity = draw(st.integers(0, 9))
            if kind == "mbp":
                events.append(
                    level_update(
                        SYMBOL,
                        ts,
                        side,
                        price,
                        quantity,
                        draw(st.integers(0, 4)),
                        action,
                        seq=seq,
                        flags=flags,
                    )
                )
            else:
                oid = draw(st.integers(1, 7))
                events.append(
                    order_update(SYMBOL, ts, side, price, quantity, oid, 3, action, seq=seq, flags=flags)
                )
    return events


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_snapshot_at_equals_the_live_engines_export_after_every_batch(kind: str, data: st.DataObject) -> None:
    events = data.draw(sequences(kind))
    cols = BookColumns.from_events(events)
    book = live_book(SYMBOL, kind)  # type: ignore[arg-type]
    for i, event in enumerate(events):
        if book.apply(event):
            ts = int(cols.timestamp_ms[: i + 1].max())
            assert snapshot_at(cols, i).equals(BookColumns.from_events(book.snapshot(ts))), f"after row {i}"


@pytest.mark.parametrize("kind", KINDS)
def test_snapshot_at_equals_the_live_engine_on_a_simulated_session(kind: BookKind) -> None:
    batches = session(kind)
    cols = columns(batches)
    book = live_book(SYMBOL, kind)
    row = -1
    for k, batch in enumerate(batches):
        for event in batch:
            book.apply(event)
        row += len(batch)
        if k % 97 == 0 or k == len(batches) - 1:
            want = BookColumns.from_events(book.snapshot(batch.timestamp_ms))
            assert snapshot_at(cols, row).equals(want)


def test_codec_gives_every_column_back_bit_for_bit() -> None:
    rng = np.random.default_rng(3)
    n = 5000
    odd_prices = rng.random(n) * 1e4  # no decimal grid: stored as raw float bits
    odd_prices[:3] = [0.0, -0.0, 5e-324]
    for price in (np.round(5000 + rng.integers(-50, 50, n) * 0.5, 1), odd_prices):
        cols = BookColumns(
            SYMBOL,
            "mbo",
            BASE_MS + np.cumsum(rng.integers(-3, 50, n)),  # steps back too
            BASE_MS + rng.integers(-(10**6), 10**12, n),
            np.cumsum(rng.integers(0, 3, n)),
            rng.integers(0, 3, n),
            price,
            rng.integers(0, 2**40, n),
            np.zeros(n, np.int64),
            rng.integers(0, 2**62, n),
            rng.integers(0, 70_000, n),
            rng.integers(0, 4, n),
            rng.integers(0, 4, n),
        )
        for level in (1, BLOCK_LEVEL):
            back = decode_columns(encode_columns(cols, level=level), SYMBOL)
            assert back.equals(cols)
            assert np.array_equal(back.price.view(np.int64), cols.price.view(np.int64))
    empty = BookColumns.empty(SYMBOL, "mbp")
    assert decode_columns(encode_columns(empty), SYMBOL).equals(empty)


def test_a_damaged_block_is_refused_with_a_clear_error() -> None:
    data = encode_columns(columns(session("mbo")[:50]))
    for bad in (b"", b"XXXX" + data[4:], data[:-5], data[:12] + b"\0" * 20):
        with pytest.raises(DataError, match="book block"):
            decode_columns(bad, SYMBOL)


# --- the writer --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_updates_come_back_exactly_as_written(store: Store, kind: BookKind) -> None:
    batches = session(kind)
    write_all(store, batches)
    cols = columns(batches)
    got = store.book_update_columns(SYMBOL, 0, 2**62)
    assert got.equals(cols)
    position = store.book_position(SYMBOL)
    assert (position.kind, position.seq, position.updates) == (kind, len(cols), len(cols))


def test_batches_written_again_in_any_grouping_are_stored_once(store: Store) -> None:
    batches = session("mbo")
    writer = write_all(store, batches[:300], per_write=25)
    entries = store.client.xlen(store.keys.book(SYMBOL))
    # the same batches again, grouped otherwise, by a fresh writer (a restarted recorder), then by the
    # same one; then the rest, overlapping what is stored
    again = BookWriter(store.client, store.keys, owner=OWNER)
    result = again.write([BookPart(columns(batches[:300]))])
    assert (result.stored, result.duplicates) == (0, len(columns(batches[:300])))
    assert writer.write([BookPart(columns(batches[100:200]))]).stored == 0
    assert store.client.xlen(store.keys.book(SYMBOL)) == entries
    rest = again.write([BookPart(columns(batches[250:]))])
    assert rest.stored == len(columns(batches[300:]))
    assert store.book_update_columns(SYMBOL, 0, 2**62).equals(columns(batches))


def test_a_batch_that_shares_any_seq_with_a_stored_one_is_a_duplicate(store: Store) -> None:
    batches = session("mbo")[:50]
    write_all(store, batches)
    overlap = [e for b in batches[-3:] for e in b]
    # one batch of the last updates moved one seq on: all but its last seq are stored
    shifted = BookBatch(
        msgspec.structs.replace(e, seq=e.seq + 1, flags=LAST if i == len(overlap) - 1 else 0)
        for i, e in enumerate(overlap)
    )
    result = BookWriter(store.client, store.keys, owner=OWNER).write([BookPart(columns([shifted]))])
    assert result.stored == 0 and result.duplicates == len(shifted)


def test_a_symbols_book_keeps_its_kind(store: Store) -> None:
    write_all(store, session("mbo")[:20])
    mbp = session("mbp")[:5]
    result = BookWriter(store.client, store.keys, owner=OWNER).write([BookPart(columns(mbp))])
    assert result.stored == 0 and [why.field for _, _, why in result.refused] == ["kind"]


@pytest.mark.parametrize("kind", KINDS)
def test_every_stored_snapshot_equals_the_live_book_at_its_moment(store: Store, kind: BookKind) -> None:
    batches = session(kind)
    write_all(store, batches)
    stored = {s.seq: s for s in snapshots(store.client, store.keys, SYMBOL)}
    assert len(stored) >= 10
    book = live_book(SYMBOL, kind)
    checked = 0
    for batch in batches:
        for event in batch:
            book.apply(event)
        snap = stored.get(batch[-1].seq)
        if snap is not None:
            assert load_snapshot(store.client, store.keys, SYMBOL, snap) is not None
            assert snap.cols is not None and snap.valid
            assert snap.cols.equals(BookColumns.from_events(book.snapshot(snap.ms)))
            checked += 1
    assert checked == len(stored)


@pytest.mark.parametrize("kind", KINDS)
def test_replaying_from_any_stored_snapshot_equals_replaying_from_the_session_start(
    store: Store, kind: BookKind
) -> None:
    batches = session(kind)
    write_all(store, batches)
    cols = columns(batches)
    times = np.unique(cols.timestamp_ms)
    for snap in snapshots(store.client, store.keys, SYMBOL):
        assert load_snapshot(store.client, store.keys, SYMBOL, snap) is not None and snap.cols is not None
        replay = BookColumns.concat([snap.cols, cols.take(cols.seq > snap.seq)])
        later = times[times >= snap.ms]
        for at in later[:: max(1, later.size // 7)].tolist():
            a, b = book_at(replay, at, depth=None), book_at(cols, at, depth=None)
            assert (a.seq, a.valid) == (b.seq, b.valid)
            for side in ("bid", "ask"):
                assert all(
                    np.array_equal(x, y) for x, y in zip(getattr(a, side), getattr(b, side), strict=True)
                )


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("sealed", [False, True])
def test_store_book_at_chosen_moments_equals_the_live_engine(
    store: Store, kind: BookKind, sealed: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(book_sealing, "BLOCK_ROWS", 700)  # many blocks, each opening with a snapshot
    batches = session(kind)
    write_all(store, batches)
    if sealed:  # everything but the newest snapshot's segment into history blocks
        assert store.compact_book(SYMBOL, 0) > 0
        assert store.client.zcard(store.keys.book_blocks(SYMBOL)) >= 5
    first, last = batches[0].timestamp_ms, batches[-1].timestamp_ms
    times = sorted({first - 1, first, last, last + 10**6, *np.linspace(first, last, 40).astype(int).tolist()})
    want = live_books_at(batches, kind, times)
    for at in times:
        got = store.book(SYMBOL, at, depth=None)
        assert (frame_levels(got, "bid"), frame_levels(got, "ask")) == want[at], f"at {at}"
        assert got.attrs["valid"] == (at >= first)
        assert got.index.size == 0 or (got.index.asi8 // 10**6 == at).all()
    top = store.book(SYMBOL, last, depth=3)
    assert top["level"].tolist() == [1, 2, 3, 1, 2, 3]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("sealed", [False, True])
def test_frames_quotes_and_updates_equal_the_readers_over_every_event(
    store: Store, kind: BookKind, sealed: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(book_sealing, "BLOCK_ROWS", 700)
    batches = session(kind)
    write_all(store, batches)
    if sealed:
        store.compact_book(SYMBOL, 0)
    cols = columns(batches)
    start, end = int(cols.timestamp_ms[0]) + 1500, int(cols.timestamp_ms[-1]) - 700
    frames = store.book_frames(SYMBOL, start, end, "500ms", depth=5)
    want = book_frames(cols, start, end, 500, 5)
    assert (frames.index.asi8 // 10**6).tolist() == want.time_ms.tolist()
    for name, values in want.columns().items():
        assert np.array_equal(frames[name].to_numpy(), values, equal_nan=True), name
    assert frames["valid"].all()
    q = quotes(cols)
    keep = (q.time_ms >= start) & (q.time_ms <= end)
    got = store.quotes(SYMBOL, start, end)
    assert got["seq"].tolist() == q.seq[keep].tolist()
    assert np.array_equal(got["bid_px"].to_numpy(), q.bid_price[keep], equal_nan=True)
    assert got["ask_sz"].tolist() == q.ask_quantity[keep].tolist()
    updates = store.book_updates(SYMBOL, start, end)
    assert updates["seq"].tolist() == cols.slice_time(start, end).seq.tolist()
    assert updates.attrs["kind"] == kind


def test_sealed_history_takes_at_most_6_bytes_per_update(store: Store) -> None:
    batches = session("mbo", items=30_000)
    write_all(store, batches, per_write=200, snapshot_every=10_000)
    sealed = store.compact_book(SYMBOL, 0)
    assert sealed > 20_000
    blocks = list(store.client.scan_iter(match=store.keys.book_block(SYMBOL, "*")))
    used = sum(store.client.memory_usage(key) for key in blocks)
    assert used / sealed <= 6.0, f"{used / sealed:.2f} bytes per update"


# --- gaps, late fills, retention -------------------------------------------------------------------


def test_a_gap_makes_the_book_invalid_until_a_snapshot_of_the_source(store: Store) -> None:
    batches = list(session("mbo")[:400])
    missing = batches[200]
    write_all(store, batches[:200] + batches[201:])
    before, after = batches[199].timestamp_ms, batches[260].timestamp_ms
    assert missing.timestamp_ms <= after
    assert store.book(SYMBOL, before).attrs["valid"]
    assert not store.book(SYMBOL, after).attrs["valid"]
    frames = store.book_frames(SYMBOL, before, after, "1ms")
    assert frames["valid"].iloc[0] and not frames["valid"].iloc[-1]
    # the source's snapshot (a clear of the whole book and every order) makes it valid again
    book = live_book(SYMBOL, "mbo")
    book.apply_all(e for b in batches for e in b)
    last = batches[-1]
    seq = last[-1].seq
    events = book.snapshot(last.timestamp_ms + 1, seq=0)
    snapshot = BookBatch(msgspec.structs.replace(e, seq=seq + 1 + i) for i, e in enumerate(events))
    BookWriter(store.client, store.keys, owner=OWNER).write([BookPart(columns([snapshot]))])
    assert store.book(SYMBOL, last.timestamp_ms + 1).attrs["valid"]


def test_a_gap_filled_late_is_found_by_every_read(store: Store) -> None:
    batches = session("mbo")[:400]
    writer = write_all(store, list(batches[:150]) + list(batches[170:]))
    writer.write([BookPart(columns(batches[150:170]))])  # the fill, after later batches: a late entry
    assert store.client.zcard(store.keys.book_late(SYMBOL)) == 1
    cols = columns(batches)
    at = batches[160].timestamp_ms
    assert store.book_update_columns(SYMBOL, 0, 2**62).equals(cols)
    assert store.book_updates(SYMBOL, at, at)["seq"].tolist() == cols.slice_time(at, at).seq.tolist()
    want = live_books_at(batches, "mbo", [at])[at]
    got = store.book(SYMBOL, at, depth=None)
    assert (frame_levels(got, "bid"), frame_levels(got, "ask")) == want


def test_retention_trims_the_book_and_keeps_what_is_newer_exact(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(book_sealing, "BLOCK_ROWS", 700)
    batches = session("mbo", items=8000)
    write_all(store, batches)
    assert store.compact_book(SYMBOL, 5_000) > 0  # some sealed, some live
    cols = columns(batches)
    newest = int(cols.timestamp_ms.max())
    days = (newest - int(cols.timestamp_ms[len(cols) // 2])) / 86_400_000
    removed = store.book_retention(SYMBOL, days)
    cutoff = newest - int(days * 86_400_000)
    kept = store.book_update_columns(SYMBOL, 0, 2**62)
    assert removed > 0 and kept.timestamp_ms.min() >= cutoff
    assert kept.equals(cols.take(slice(len(cols) - len(kept), len(cols))))  # what is left, all of it
    later = int(cols.timestamp_ms[-200])
    want = live_books_at(batches, "mbo", [later])[later]
    got = store.book(SYMBOL, later, depth=None)
    assert (frame_levels(got, "bid"), frame_levels(got, "ask")) == want and got.attrs["valid"]


def test_valid_through_ignores_the_opening_clear_of_a_snapshot_made_across_a_gap() -> None:
    cols = columns(session("mbp")[:30])
    stop = len(cols) - 1
    assert valid_through(cols, stop)
    snap = snapshot_at(cols, stop)
    assert valid_through(snap, len(snap) - 1)
    assert not valid_through(snap, len(snap) - 1, opening=False)


def test_the_book_in_a_valkey_cluster_keeps_every_key_of_a_symbol_in_its_slot(cluster_client: Any) -> None:
    store = Store(cluster_client)
    batches = session("mbo")
    write_all(store, batches)
    store.compact_book(SYMBOL, 2_000)
    cols = columns(batches)
    assert store.book_update_columns(SYMBOL, 0, 2**62).equals(cols)
    at = batches[len(batches) // 2].timestamp_ms
    got = store.book(SYMBOL, at, depth=None)
    assert (frame_levels(got, "bid"), frame_levels(got, "ask")) == live_books_at(batches, "mbo", [at])[at]


def test_snapshots_are_stored_at_a_session_start_and_after_a_reconnect(store: Store) -> None:
    batches = session("mbo")
    opening = batches[0]  # the session's snapshot group, from the source
    assert opening[0].action == "clear" and opening[-1].is_snapshot
    # writes of 50 batches, a snapshot every 10**6 updates or 10**12 ms: only the events below make one
    writer = write_all(store, batches[:100], per_write=50, snapshot_every=10**6)
    seqs = [s.seq for s in snapshots(store.client, store.keys, SYMBOL)]
    assert seqs == [batches[49][-1].seq]  # the first write: after the session's snapshot (a fresh writer too)
    writer.write([BookPart(columns(batches[100:150]))])
    assert len(snapshots(store.client, store.keys, SYMBOL)) == 1  # nothing due
    writer.reset()  # what a failed write does: the state is reloaded, as after a reconnect
    writer.write([BookPart(columns(batches[150:200]))])
    assert [s.seq for s in snapshots(store.client, store.keys, SYMBOL)][-1] == batches[199][-1].seq
    writer.write([BookPart(columns(batches[200:250]))])
    assert len(snapshots(store.client, store.keys, SYMBOL)) == 2  # nothing due
    # a new session (or a restarted source) opens with its own snapshot: one is stored right after it
    book = live_book(SYMBOL, "mbo")
    book.apply_all(e for b in batches[:250] for e in b)
    seq = batches[249][-1].seq
    events = book.snapshot(batches[249].timestamp_ms)
    reopening = BookBatch(msgspec.structs.replace(e, seq=seq + 1 + i) for i, e in enumerate(events))
    writer.write([BookPart(columns([reopening]))])
    assert [s.seq for s in snapshots(store.client, store.keys, SYMBOL)][-1] == reopening[-1].seq
