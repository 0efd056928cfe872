"""The order book: events and their validation, columns, the live engines and the vectorised
readers held against the slow reference books (tests/book_reference.py) after every batch, on
simulated sessions and on generated update sequences; snapshot replay; invariants; the simulator."""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import msgspec
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from book_reference import State, apply_batches, is_sorted_positive_uncrossed, reference_for, state_after
from factories import BASE_MS, tick
from tickvault.analytics.book import (
    LevelBook,
    OrderBook,
    book_at,
    book_frames,
    live_book,
    quotes,
)
from tickvault.analytics.features import FeatureConfig, FeatureEngine
from tickvault.domain.book import (
    COLUMN_NAMES,
    LAST,
    SNAPSHOT,
    BookBatch,
    BookColumns,
    BookUpdate,
    OrderUpdate,
    level_update,
    order_update,
)
from tickvault.domain.events import B3_TZ, Tick, decode, encode
from tickvault.errors import DataError
from tickvault.sources.book_simulator import MIN_LEVELS, BookMarketSimulator, SymbolBook
from tickvault.sources.simulator import MarketSimulator

OPEN = datetime(2025, 11, 24, 9, 0, tzinfo=B3_TZ)
SYMBOL = "WDOFUT"

# --- helpers -----------------------------------------------------------------------------------------


def levels_of(book: LevelBook | OrderBook) -> State:
    return {side: list(zip(*(a.tolist() for a in book.levels(side)), strict=True)) for side in ("bid", "ask")}


def state_of(levels: Any) -> State:
    return {
        side: list(zip(*(a.tolist() for a in getattr(levels, side)), strict=True)) for side in ("bid", "ask")
    }


def top_of(state: State) -> tuple[float | None, int, float | None, int]:
    bid = state["bid"][0][:2] if state["bid"] else (None, 0)
    ask = state["ask"][0][:2] if state["ask"] else (None, 0)
    return (bid[0], bid[1], ask[0], ask[1])


def oracle_at(events: Sequence[Any], kind: str, at_ms: int) -> State:
    """The reference book after the last batch whose running-max time is <= at_ms."""
    high, cut = -1, -1
    for i, event in enumerate(events):
        high = max(high, event.timestamp_ms)
        if high > at_ms:
            break
        if event.flags & LAST:
            cut = i
    return state_after(events[: cut + 1], kind)


def oracle_states(events: Sequence[Any], kind: str, times: Sequence[int]) -> list[State]:
    """`oracle_at` for ascending times, in one walk."""
    book, out, i, high, n = reference_for(kind), [], 0, -1, len(events)
    state = book.state()
    for at in times:
        while i < n and max(high, events[i].timestamp_ms) <= at:
            high = max(high, events[i].timestamp_ms)
            book.apply(events[i])
            if events[i].flags & LAST:
                state = book.state()
            i += 1
        out.append(state)
    return out


def oracle_valid(events: Sequence[Any], at_ms: int) -> bool:
    high, cut = -1, -1
    for i, event in enumerate(events):
        high = max(high, event.timestamp_ms)
        if high > at_ms:
            break
        if event.flags & LAST:
            cut = i
    if cut < 0:
        return False
    last_clear = {}
    for side in ("bid", "ask"):
        found = [
            i for i in range(cut + 1) if events[i].action == "clear" and events[i].side in (side, "none")
        ]
        if not found:
            return False
        last_clear[side] = found[-1]
    start = min(last_clear.values())
    return all(events[i].seq <= events[i - 1].seq + 1 for i in range(start + 1, cut + 1))


def frame_state(frames: Any, k: int) -> State:
    out: State = {}
    for side in ("bid", "ask"):
        price, quantity = getattr(frames, f"{side}_price")[k], getattr(frames, f"{side}_quantity")[k]
        n = int(np.count_nonzero(~np.isnan(price)))
        assert np.isnan(price[n:]).all() and (quantity[n:] == 0).all()
        out[side] = [(p, q) for p, q in zip(price[:n].tolist(), quantity[:n].tolist(), strict=True)]
    return out


def frame_state_with_orders(frames: Any, k: int) -> State:
    """A frame counted with orders=True as (price, quantity, orders) per level (orders 0 past the end)."""
    out: State = {}
    for side, levels in frame_state(frames, k).items():
        counts = getattr(frames, f"{side}_orders")[k]
        assert (counts[len(levels) :] == 0).all()
        out[side] = [(p, q, c) for (p, q), c in zip(levels, counts.tolist(), strict=False)]
    return out


def top_levels(state: State, depth: int) -> State:
    return {side: levels[:depth] for side, levels in state.items()}


def without_orders(state: State, depth: int) -> State:
    return {side: [(p, q) for p, q, _ in levels[:depth]] for side, levels in state.items()}


# --- simulated sessions ------------------------------------------------------------------------------


@functools.cache
def session(kind: str, minutes: float = 1.5, start: datetime = OPEN) -> tuple[Any, ...]:
    """Trades and book batches of WDOFUT and WINFUT from `start` for `minutes`."""
    end = start.timestamp() * 1000 + minutes * 60_000
    stream = BookMarketSimulator(["WDOFUT", "WINFUT"], seed=11, start=start, kind=kind).events()  # type: ignore[arg-type]
    return tuple(itertools.takewhile(lambda item: _time(item) <= end, stream))


def _time(item: Any) -> int:
    return item.timestamp_ms if isinstance(item, Tick) else item[0].timestamp_ms


def book_events(items: Sequence[Any], symbol: str = SYMBOL) -> list[Any]:
    return [e for item in items if not isinstance(item, Tick) and item[0].symbol == symbol for e in item]


# --- events ------------------------------------------------------------------------------------------


def test_book_events_round_trip_through_the_codec_and_keep_their_flags() -> None:
    update = level_update(
        SYMBOL, BASE_MS, "bid", 5400.5, 12, 3, "add", received_ms=BASE_MS + 4, seq=9, flags=LAST
    )
    order = order_update(SYMBOL, BASE_MS, "ask", 5401.0, 5, 77, 308, "update", seq=10, flags=LAST | SNAPSHOT)
    assert decode(encode(update), BookUpdate) == update and update.is_last and not update.is_snapshot
    assert decode(encode(order), OrderUpdate) == order and order.is_last and order.is_snapshot
    assert order.received_ms == BASE_MS  # defaults to the exchange time


@pytest.mark.parametrize(
    ("kind", "changes", "field", "words"),
    [
        (BookUpdate, {"side": "middle"}, "side", "Invalid enum"),
        (BookUpdate, {"side": "none"}, "side", "clear only"),
        (BookUpdate, {"price": math.nan}, "price", "finite"),
        (BookUpdate, {"price": -1.0}, "price", "negative"),
        (BookUpdate, {"price": 0.0, "action": "delete"}, "price", "positive"),
        (BookUpdate, {"quantity": -1}, "quantity", "negative"),
        (BookUpdate, {"orders": -2}, "orders", "negative"),
        (BookUpdate, {"flags": 4}, "flags", "unknown bits"),
        (BookUpdate, {"seq": -1}, "seq", "negative"),
        (BookUpdate, {"received_ms": -1}, "received_ms", "negative"),
        (BookUpdate, {"action": "snapshot"}, "action", "Invalid enum"),
        (BookUpdate, {"level": 0}, "level", "unknown field"),
        (OrderUpdate, {"price": 0.0, "action": "add"}, "price", "positive"),
        (OrderUpdate, {"price": math.inf}, "price", "finite"),
        (OrderUpdate, {"order_id": -5}, "order_id", "negative"),
        (OrderUpdate, {"agent": -1}, "agent", "negative"),
        (OrderUpdate, {"quantity": -3}, "quantity", "negative"),
        (OrderUpdate, {"side": "none", "action": "delete"}, "side", "clear only"),
        (OrderUpdate, {"symbol": "WDO FUT"}, "symbol", "must match"),
    ],
)
def test_invalid_book_events_are_refused_naming_the_field(
    kind: type, changes: dict[str, Any], field: str, words: str
) -> None:
    good: Any = (
        level_update(SYMBOL, BASE_MS, "bid", 5400.0, 1, 1)
        if kind is BookUpdate
        else order_update(SYMBOL, BASE_MS, "bid", 5400.0, 1, 42)
    )
    raw = msgspec.json.decode(encode(good))
    raw.update(changes)
    payload = msgspec.json.encode(raw).replace(b"NaN", b"nan")
    if any(isinstance(v, float) and not math.isfinite(v) for v in changes.values()):
        with pytest.raises(DataError) as err:  # not JSON: construction refuses it
            kind(**{**msgspec.structs.asdict(good), **changes})
    else:
        with pytest.raises(DataError) as err:
            decode(payload, kind)
    assert err.value.field == field
    assert words in str(err.value)


def test_a_batch_is_a_tuple_that_knows_its_symbol_and_time_and_encodes_as_a_json_array() -> None:
    batch = BookBatch(
        [
            level_update(SYMBOL, BASE_MS, "bid", 5400.0, 3, 1, "add"),
            level_update(SYMBOL, BASE_MS, "ask", 5400.5, 2, 1, "add", flags=LAST),
        ]
    )
    assert (batch.symbol, batch.timestamp_ms, len(batch)) == (SYMBOL, BASE_MS, 2)
    assert msgspec.json.decode(msgspec.json.encode(batch), type=tuple[BookUpdate, ...]) == tuple(batch)


def test_deletes_and_clears_may_carry_a_zero_price_where_the_id_or_nothing_names_them() -> None:
    assert order_update(SYMBOL, BASE_MS, "bid", 0.0, 0, 42, action="delete").price == 0.0
    assert level_update(SYMBOL, BASE_MS, "none", 0.0, 0, action="clear").side == "none"


def test_tickvault_book_update_is_the_new_event() -> None:
    import tickvault

    assert tickvault.BookUpdate is BookUpdate and tickvault.OrderUpdate is OrderUpdate


# --- columns -----------------------------------------------------------------------------------------


def test_columns_round_trip_events_and_slice() -> None:
    events = book_events(session("mbo", 0.5))
    cols = BookColumns.from_events(events)
    assert len(cols) == len(events) and cols.kind == "mbo" and cols.symbol == SYMBOL
    assert cols.events() == events
    assert [name for name in COLUMN_NAMES if getattr(cols, name).dtype == object] == []
    half = len(cols) // 2
    assert BookColumns.concat([cols.take(slice(0, half)), cols.take(slice(half, None))]).equals(cols)
    start, end = int(cols.timestamp_ms[10]), int(cols.timestamp_ms[-10])
    sliced = cols.slice_time(start, end)
    assert sliced.events() == [e for e in events if start <= e.timestamp_ms <= end]
    assert np.array_equal(cols.batch_ends(), [i for i, e in enumerate(events) if e.flags & LAST])


def test_columns_refuse_mixed_kinds_symbols_and_ragged_arrays() -> None:
    level = level_update(SYMBOL, BASE_MS, "bid", 5400.0, 1, 1)
    order = order_update(SYMBOL, BASE_MS, "bid", 5400.0, 1, 42)
    with pytest.raises(DataError, match="kind"):
        BookColumns.from_events([level, order])
    with pytest.raises(DataError, match="symbol"):
        BookColumns.from_events([level, level_update("WINFUT", BASE_MS, "bid", 5.0, 1, 1)])
    with pytest.raises(DataError, match="symbol and kind"):
        BookColumns.from_events([])
    cols = BookColumns.from_events([level])
    with pytest.raises(DataError, match="rows"):
        BookColumns(SYMBOL, "mbp", **{**cols.columns(), "price": np.zeros(2)})


# --- simulated sessions against the reference ----------------------------------------------------------


@pytest.mark.parametrize("kind", ["mbo", "mbp"])
def test_live_engine_equals_the_reference_after_every_batch_of_a_simulated_session(kind: str) -> None:
    for symbol in ("WDOFUT", "WINFUT"):
        events = book_events(session(kind), symbol)
        book, reference, batches = live_book(symbol, kind), reference_for(kind), 0  # type: ignore[arg-type]
        for event in events:
            reference.apply(event)
            if book.apply(event):
                batches += 1
                assert levels_of(book) == reference.state(), f"{symbol} after seq {event.seq}"
        assert batches > 1000 and book.gaps == 0 and not book.anomalies


@pytest.mark.parametrize("kind", ["mbo", "mbp"])
def test_vectorised_readers_equal_the_reference_on_a_simulated_session(kind: str) -> None:
    events = book_events(session(kind))
    cols = BookColumns.from_events(events)
    # quotes: the top of book after every batch, kept where it changed
    expected, previous = [], None
    for last, state in apply_batches(events, kind):
        top = top_of(state)
        if top != previous:
            expected.append((last.seq, *top))
            previous = top
    got = quotes(cols)
    nan_none = lambda v: None if math.isnan(v) else v  # noqa: E731
    assert [
        (s, nan_none(bp), bq, nan_none(ap), aq)
        for s, bp, bq, ap, aq in zip(
            *(
                a.tolist()
                for a in (got.seq, got.bid_price, got.bid_quantity, got.ask_price, got.ask_quantity)
            ),
            strict=True,
        )
    ] == expected
    # frames every 250 ms, 10 deep; book_at at some of those steps, full depth
    first, end = events[0].timestamp_ms, events[-1].timestamp_ms
    frames = book_frames(cols, first - 1000, end + 1000, 250, depth=10)
    counted = book_frames(cols, first - 1000, end + 1000, 250, depth=10, orders=True)
    assert frames.bid_orders is None and list(counted.columns())[-1] == "ask_orders_10"
    states = oracle_states(events, kind, frames.time_ms.tolist())
    for k, (at, reference) in enumerate(zip(frames.time_ms.tolist(), states, strict=True)):
        assert frame_state(frames, k) == without_orders(reference, 10), f"frame at {at}"
        assert frame_state_with_orders(counted, k) == top_levels(reference, 10), f"frame at {at}"
        assert bool(frames.valid[k]) == (at >= first)
        if k % 25 == 0:
            assert state_of(book_at(cols, at, depth=None)) == reference


@pytest.mark.parametrize("kind", ["mbo", "mbp"])
def test_invariants_after_every_batch_of_a_simulated_session(kind: str) -> None:
    """Sorted, positive, at least MIN_LEVELS a side, never crossed except in the opening auction
    (from the pre-opening snapshot until the batch right after the auction print)."""
    books = {s: reference_for(kind) for s in ("WDOFUT", "WINFUT")}
    in_auction = dict.fromkeys(books, False)
    auctions = crossed_in_auction = 0
    for item in session(kind):
        if isinstance(item, Tick):
            if item.trade_type == 4:
                auctions += 1
                in_auction[item.symbol] = "printed"  # type: ignore[assignment]
            continue
        symbol = item[0].symbol
        assert item[-1].flags & LAST and not any(e.flags & LAST for e in item[:-1])
        if item[0].flags & SNAPSHOT:
            in_auction[symbol] = item[0].timestamp_ms < OPEN.timestamp() * 1000
        for event in item:
            books[symbol].apply(event)
        state = books[symbol].state()
        ordered, positive, uncrossed = is_sorted_positive_uncrossed(state)
        assert ordered and positive
        if in_auction[symbol]:
            crossed_in_auction += not uncrossed
            if in_auction[symbol] == "printed":
                in_auction[symbol] = False
                assert uncrossed, "the auction's own batch uncrosses the book"
            continue
        assert uncrossed, f"{symbol} crossed at seq {item[-1].seq}"
        assert min(len(state["bid"]), len(state["ask"])) >= MIN_LEVELS >= 10
    assert auctions == 2 and crossed_in_auction == 2  # each pre-opening book is crossed


@pytest.mark.parametrize("kind", ["mbo", "mbp"])
def test_every_trade_executes_at_the_best_price_of_the_side_it_hits_and_consumes_that_queue(
    kind: str,
) -> None:
    books = {s: reference_for(kind) for s in ("WDOFUT", "WINFUT")}
    waiting: dict[str, tuple[str, float, int, int]] = {}
    checked = 0
    for item in session(kind):
        if isinstance(item, Tick):
            if item.trade_type not in (2, 3):
                continue
            side = "ask" if item.trade_type == 2 else "bid"  # a buy aggression takes the asks
            best = books[item.symbol].state()[side][0]
            assert best[0] == item.price and best[1] >= item.quantity, f"{item} against {best}"
            waiting[item.symbol] = (side, item.price, best[1], item.quantity)
            continue
        symbol = item[0].symbol
        for event in item:
            books[symbol].apply(event)
        if symbol in waiting:  # the batch right after the trade is its fill
            side, price, before, quantity = waiting.pop(symbol)
            assert {e.price for e in item if e.side == side} >= {price}
            first = [e for e in item if e.price == price and e.side == side]
            if kind == "mbp":
                assert first[0].quantity == before - quantity or first[0].action == "delete"
            else:
                assert sum(e.action == "delete" or e.action == "update" for e in first) >= 1
            checked += 1
    assert checked > 1000


def test_the_mbp_view_is_the_mbo_book_aggregated() -> None:
    mbo = [i for i in session("mbo") if isinstance(i, Tick) or i[0].symbol == SYMBOL]
    mbp = [i for i in session("mbp") if isinstance(i, Tick) or i[0].symbol == SYMBOL]
    orders, levels = reference_for("mbo"), reference_for("mbp")
    a, b = iter(mbo), iter(mbp)
    compared = 0
    for x in a:  # walk both streams to each common trade, compare the books there
        if not isinstance(x, Tick):
            for e in x:
                orders.apply(e)
            continue
        for y in b:
            if isinstance(y, Tick):
                assert y == x
                break
            for e in y:
                levels.apply(e)
        assert orders.state() == levels.state()
        compared += 1
    assert compared > 1000


# --- snapshots -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["mbo", "mbp"])
def test_replay_from_any_snapshot_equals_replay_from_the_start(kind: str) -> None:
    events = book_events(session(kind, 1.0))
    cols = BookColumns.from_events(events)
    ends = [i for i, e in enumerate(events) if e.flags & LAST]
    full = live_book(SYMBOL, kind)  # type: ignore[arg-type]
    for cut in ends[5 :: max(1, len(ends) // 6)]:
        full = live_book(SYMBOL, kind)  # type: ignore[arg-type]
        full.apply_all(events[: cut + 1])
        snap = full.snapshot(events[cut].timestamp_ms)
        assert {e.seq for e in snap} == {events[cut].seq}
        assert snap[0].action == "clear" and all(e.is_snapshot for e in snap) and snap[-1].is_last
        restored = (LevelBook if kind == "mbp" else OrderBook).from_snapshot(snap)
        assert levels_of(restored) == levels_of(full)
        rest = events[cut + 1 :]
        for event in rest[:2000]:  # live: snapshot + the updates after it == from the start
            if full.apply(event):
                assert restored.apply(event)
                assert levels_of(restored) == levels_of(full)
            else:
                assert not restored.apply(event)
        # vectorised: the snapshot plus the rows after it read as the whole session does
        tail = BookColumns.concat([BookColumns.from_events(snap), cols.take(slice(cut + 1, None))])
        for at in np.linspace(events[cut].timestamp_ms, events[-1].timestamp_ms, 7).astype(int).tolist():
            whole, replayed = book_at(cols, at, depth=None), book_at(tail, at, depth=None)
            assert state_of(replayed) == state_of(whole)
            assert replayed.valid


def test_a_snapshot_must_be_a_whole_group() -> None:
    book = LevelBook(SYMBOL)
    book.apply(level_update(SYMBOL, BASE_MS, "bid", 5400.0, 3, 1, flags=LAST))
    snap = book.snapshot(BASE_MS)
    with pytest.raises(DataError, match="clear"):
        LevelBook.from_snapshot(snap[1:])
    with pytest.raises(DataError, match="LAST"):
        LevelBook.from_snapshot(snap[:-1])


# --- generated sequences ------------------------------------------------------------------------------

ACTIONS = ["add"] * 4 + ["update"] * 3 + ["delete"] * 2 + ["clear"]


@st.composite
def sequences(draw: st.DrawFn, kind: str) -> list[Any]:
    """Batches of updates: shared and stepping-back times, clears of one side or both (some flagged
    snapshot), deletes of absent levels and unknown orders, quantity 0, ids reused, seq gaps."""
    events: list[Any] = []
    ts, seq = BASE_MS, 0
    for _ in range(draw(st.integers(1, 14))):
        ts += draw(st.sampled_from([0, 0, 100, 100, 300, -100]))
        size = draw(st.integers(1, 4))
        for i in range(size):
            seq += 1 + (draw(st.integers(0, 30)) == 0)  # a rare gap
            flags = LAST if i == size - 1 else 0
            action = draw(st.sampled_from(ACTIONS))
            if action == "clear":
                side = draw(st.sampled_from(["bid", "ask", "none", "none"]))
                flags |= SNAPSHOT if side == "none" else 0
                price = 0.0
            else:
                side = draw(st.sampled_from(["bid", "ask"]))
                price = 5400.0 + 0.5 * draw(st.integers(-5, 5))
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
                    )  # type: ignore[arg-type]
                )
            else:
                if action == "delete" and draw(st.booleans()):
                    price = 0.0  # zeroed, as ProfitDLL sends them
                order_id = draw(st.integers(1, 8))
                events.append(
                    order_update(SYMBOL, ts, side, price, quantity, order_id, 3, action, seq=seq, flags=flags)
                )  # type: ignore[arg-type]
    return events


FAST = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _check_against_reference(events: list[Any], kind: str) -> None:
    book = live_book(SYMBOL, kind)  # type: ignore[arg-type]
    reference = reference_for(kind)
    for event in events:
        reference.apply(event)
        if book.apply(event):
            state = levels_of(book)
            assert state == reference.state()
            ordered, positive, _ = is_sorted_positive_uncrossed(state)
            assert ordered and positive
    cols = BookColumns.from_events(events)
    times = sorted({e.timestamp_ms for e in events} | {BASE_MS - 1, max(e.timestamp_ms for e in events) + 1})
    for at in times:
        got = book_at(cols, at, depth=None)
        assert state_of(got) == oracle_at(events, kind, at), f"book_at({at})"
        assert got.valid == oracle_valid(events, at), f"valid at {at}"
    frames = book_frames(cols, times[0], times[-1], 50, depth=3, orders=True)
    for k, at in enumerate(frames.time_ms.tolist()):
        assert frame_state_with_orders(frames, k) == top_levels(oracle_at(events, kind, at), 3), (
            f"frame at {at}"
        )
        assert bool(frames.valid[k]) == oracle_valid(events, at)
    expected, previous = [], None
    for last, state in apply_batches(events, kind):
        if top_of(state) != previous:
            previous = top_of(state)
            expected.append((last.seq, *previous))
    got_quotes = quotes(cols)
    assert [
        (s, None if math.isnan(bp) else bp, bq, None if math.isnan(ap) else ap, aq)
        for s, bp, bq, ap, aq in zip(
            got_quotes.seq.tolist(),
            got_quotes.bid_price.tolist(),
            got_quotes.bid_quantity.tolist(),
            got_quotes.ask_price.tolist(),
            got_quotes.ask_quantity.tolist(),
            strict=True,
        )
    ] == expected


@FAST
@given(sequences("mbp"))
def test_generated_level_updates_equal_the_reference_after_every_batch(events: list[Any]) -> None:
    _check_against_reference(events, "mbp")


@FAST
@given(sequences("mbo"))
def test_generated_order_updates_equal_the_reference_after_every_batch(events: list[Any]) -> None:
    _check_against_reference(events, "mbo")


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from(["mbp", "mbo"]).flatmap(lambda kind: st.tuples(st.just(kind), sequences(kind))), st.data()
)
def test_generated_replay_from_a_snapshot_equals_replay_from_the_start(
    generated: tuple[str, list[Any]], data: st.DataObject
) -> None:
    kind, events = generated
    ends = [i for i, e in enumerate(events) if e.flags & LAST]
    cut = data.draw(st.sampled_from(ends))
    full = live_book(SYMBOL, kind)  # type: ignore[arg-type]
    full.apply_all(events[: cut + 1])
    restored = (LevelBook if kind == "mbp" else OrderBook).from_snapshot(
        full.snapshot(events[cut].timestamp_ms)
    )
    for event in events[cut + 1 :]:
        if full.apply(event):
            restored.apply(event)
            assert levels_of(restored) == levels_of(full)
        else:
            restored.apply(event)


# --- batches, time and validity ----------------------------------------------------------------------


def _snapshot_then(*updates: Any) -> list[Any]:
    return [
        level_update(SYMBOL, BASE_MS, "none", 0.0, 0, action="clear", seq=1, flags=SNAPSHOT | LAST),
        *updates,
    ]


def test_a_book_is_read_only_after_a_complete_batch() -> None:
    events = _snapshot_then(
        level_update(SYMBOL, BASE_MS + 10, "bid", 5400.0, 5, 1, "add", seq=2, flags=LAST),
        level_update(SYMBOL, BASE_MS + 20, "bid", 5400.0, 0, 0, "delete", seq=3),  # no LAST: open batch
    )
    cols = BookColumns.from_events(events)
    assert state_of(book_at(cols, BASE_MS + 30)) == {"bid": [(5400.0, 5, 1)], "ask": []}
    book = LevelBook(SYMBOL)
    assert [book.apply(e) for e in events] == [True, True, False]
    assert not book.readable


def test_a_batch_stamped_before_its_predecessor_is_seen_only_once_time_passes_the_predecessor() -> None:
    events = _snapshot_then(
        level_update(SYMBOL, BASE_MS + 100, "bid", 5400.0, 5, 1, seq=2, flags=LAST),
        level_update(SYMBOL, BASE_MS + 50, "bid", 5400.0, 7, 2, seq=3, flags=LAST),  # the clock stepped back
    )
    cols = BookColumns.from_events(events)
    assert state_of(book_at(cols, BASE_MS + 60))["bid"] == []
    assert state_of(book_at(cols, BASE_MS + 100))["bid"] == [(5400.0, 7, 2)]


def test_a_seq_gap_between_the_snapshot_and_the_time_asked_makes_the_book_invalid_until_a_new_snapshot() -> (
    None
):
    events = _snapshot_then(
        level_update(SYMBOL, BASE_MS + 10, "bid", 5400.0, 5, 1, seq=2, flags=LAST),
        level_update(SYMBOL, BASE_MS + 20, "bid", 5400.5, 5, 1, seq=4, flags=LAST),  # seq 3 is missing
        level_update(SYMBOL, BASE_MS + 30, "none", 0.0, 0, action="clear", seq=5, flags=SNAPSHOT),
        level_update(SYMBOL, BASE_MS + 30, "ask", 5401.0, 2, 1, seq=6, flags=SNAPSHOT | LAST),
    )
    cols = BookColumns.from_events(events)
    assert [book_at(cols, BASE_MS + d).valid for d in (10, 20, 30)] == [True, False, True]
    frames = book_frames(cols, BASE_MS - 10, BASE_MS + 30, 10)
    assert frames.valid.tolist() == [False, True, True, False, True]
    assert not book_at(BookColumns.from_events(events[1:3]), BASE_MS + 10).valid  # no snapshot in them
    book = LevelBook(SYMBOL)
    book.apply_all(events)
    assert book.gaps == 1


def test_frames_name_their_columns_and_refuse_bad_steps() -> None:
    cols = BookColumns.from_events(
        _snapshot_then(level_update(SYMBOL, BASE_MS, "bid", 5400.0, 5, 1, seq=2, flags=LAST))
    )
    frames = book_frames(cols, BASE_MS, BASE_MS + 2000, 1000, depth=2)
    assert list(frames.columns()) == [
        "bid_px_1",
        "bid_px_2",
        "bid_sz_1",
        "bid_sz_2",
        "ask_px_1",
        "ask_px_2",
        "ask_sz_1",
        "ask_sz_2",
    ]
    assert frames.columns()["bid_sz_1"].tolist() == [5, 5, 5]
    with pytest.raises(DataError, match="every"):
        book_frames(cols, BASE_MS, BASE_MS + 10, 0)
    with pytest.raises(DataError, match="depth"):
        book_frames(cols, BASE_MS, BASE_MS + 10, 1, depth=0)


def test_book_at_gives_a_table_for_the_store() -> None:
    events = book_events(session("mbo", 0.5))
    at = book_at(BookColumns.from_events(events), events[-1].timestamp_ms, depth=3)
    table = at.table()
    assert table["side"].tolist() == ["bid"] * 3 + ["ask"] * 3 and table["level"].tolist() == [1, 2, 3] * 2
    assert at.as_of_ms == events[-1].timestamp_ms and at.seq == events[-1].seq


def test_live_books_count_anomalies_instead_of_raising() -> None:
    book = OrderBook(SYMBOL)
    book.apply(order_update(SYMBOL, BASE_MS, "bid", 0.0, 0, 99, action="delete", flags=LAST))
    book.apply(order_update(SYMBOL, BASE_MS, "bid", 5400.0, 3, 98, action="update", flags=LAST))
    assert book.anomalies == {"delete of an unknown order": 1, "update of an unknown order": 1}
    assert book.best("bid") == (5400.0, 3)
    with pytest.raises(DataError, match="kind"):
        book.apply(level_update(SYMBOL, BASE_MS, "bid", 5400.0, 1, 1))


# --- the feature engine -----------------------------------------------------------------------------


def test_spread_and_imbalance_come_from_the_book_after_complete_batches() -> None:
    engine = FeatureEngine([SYMBOL], FeatureConfig(emit_interval_ms=1, time_travel=False))
    engine.on_book(level_update(SYMBOL, BASE_MS, "none", 0.0, 0, action="clear", flags=SNAPSHOT))
    engine.on_book(level_update(SYMBOL, BASE_MS, "bid", 5400.0, 30, 3, "add", flags=SNAPSHOT))
    engine.on_book(level_update(SYMBOL, BASE_MS, "ask", 5400.5, 10, 1, "add", flags=SNAPSHOT | LAST))
    first = engine.on_tick(tick(ts_ms=BASE_MS + 1))
    assert first is not None
    assert first.values["spread"] == 0.5 and first.values["book_imbalance"] == 0.5
    engine.on_book(level_update(SYMBOL, BASE_MS + 2, "ask", 5400.5, 0, 0, "delete"))  # batch still open
    second = engine.on_tick(tick(ts_ms=BASE_MS + 3, trade_id=2))
    assert second is not None and second.values["spread"] == 0.5
    engine.on_book(level_update(SYMBOL, BASE_MS + 4, "ask", 5401.0, 10, 2, "add", flags=LAST))
    third = engine.on_tick(tick(ts_ms=BASE_MS + 5, trade_id=3))
    assert third is not None and third.values["spread"] == 1.0


# --- the simulator ------------------------------------------------------------------------------------


def test_the_interleaved_stream_has_exactly_the_simulator_s_ticks() -> None:
    items = session("mbo")
    ticks = [i for i in items if isinstance(i, Tick)]
    assert ticks == list(
        itertools.islice(MarketSimulator(["WDOFUT", "WINFUT"], seed=11, start=OPEN).ticks(), len(ticks))
    )
    times = [_time(i) for i in items]
    assert times == sorted(times)
    for symbol in ("WDOFUT", "WINFUT"):
        seqs = [e.seq for e in book_events(items, symbol)]
        assert seqs == list(range(1, len(seqs) + 1))


def test_the_book_is_deterministic_per_seed_and_per_symbol() -> None:
    def first(symbols: list[str], seed: int, n: int = 3000) -> list[Any]:
        stream = BookMarketSimulator(symbols, seed=seed, start=OPEN).events()
        return list(itertools.islice(stream, n * len(symbols)))

    same = first([SYMBOL], 5)
    assert same == first([SYMBOL], 5)
    assert same != first([SYMBOL], 6)
    alone = [i for i in same if (i.symbol if isinstance(i, Tick) else i[0].symbol) == SYMBOL]
    paired = [
        i
        for i in first([SYMBOL, "WINFUT"], 5)
        if (i.symbol if isinstance(i, Tick) else i[0].symbol) == SYMBOL
    ]
    n = min(len(alone), len(paired))
    assert n > 1000 and alone[:n] == paired[:n]


def test_book_activity_follows_the_intraday_seasonality() -> None:
    def rate(start: datetime) -> float:
        stream = SymbolBook(SYMBOL, seed=3, start=start).items()
        end = start.timestamp() * 1000 + 60_000
        batches = [
            i for i in itertools.takewhile(lambda i: _time(i) <= end, stream) if not isinstance(i, Tick)
        ]
        return len([b for b in batches if not b[0].is_snapshot])

    assert rate(OPEN) > 1.8 * rate(datetime(2025, 11, 24, 13, 0, tzinfo=B3_TZ))


def test_a_simulator_started_mid_session_opens_with_an_uncrossed_snapshot() -> None:
    start = datetime(2025, 11, 24, 13, 0, tzinfo=B3_TZ)
    first = next(iter(SymbolBook(SYMBOL, seed=3, start=start).items()))
    assert not isinstance(first, Tick) and first[0].action == "clear" and first[-1].is_last
    state = state_after(first, "mbo")
    assert is_sorted_positive_uncrossed(state) == (True, True, True)
    assert first[0].timestamp_ms == int(start.timestamp() * 1000)


def test_a_share_like_symbol_on_a_cent_grid_trades_at_exactly_its_book_prices() -> None:
    book, checked = reference_for("mbp"), 0
    for item in itertools.islice(SymbolBook("PETR4", seed=2, start=OPEN, kind="mbp").items(), 20_000):
        if isinstance(item, Tick):
            if item.trade_type in (2, 3):
                side = "ask" if item.trade_type == 2 else "bid"
                assert book.state()[side][0][0] == item.price
                checked += 1
            continue
        for event in item:
            book.apply(event)
    assert checked > 100
