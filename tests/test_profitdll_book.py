"""The ProfitDLL book translator (sources/profitdll_book.py): every positional action, zeroed
deletes, stale dates, full-book pages, rejections; and the events it makes, applied to the reference
books, equal the manual's positional lists after every callback (tests/book_reference.py)."""

from __future__ import annotations

import math
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from book_reference import ReferenceLevels, ReferenceOrders, ReferencePositional
from factories import BASE_MS
from tickvault.domain.book import LAST, SNAPSHOT
from tickvault.domain.events import to_ms
from tickvault.errors import DataError
from tickvault.sources.profitdll_book import (
    AT_ADD,
    AT_DELETE,
    AT_DELETE_FROM,
    AT_EDIT,
    AT_FULL_BOOK,
    SIDE_BUY,
    SIDE_SELL,
    LevelEntry,
    OfferBookTranslator,
    OfferEntry,
    Page,
    PriceBookTranslator,
    decode_offer_page,
    decode_price_page,
    parse_profit_date,
)

SYMBOL = "WDOFUT"
DATE = "24/11/2025 13:00:00.250"
DATE_MS = to_ms(parse_profit_date(DATE))
RECEIVED = BASE_MS + 777


def offer(
    t: OfferBookTranslator,
    action: int,
    position: int,
    side: int = SIDE_BUY,
    quantity: int = 0,
    offer_id: int = 0,
    price: float = 0.0,
    *,
    agent: int = 0,
    has: str = "pqdoa",
    date: str = DATE,
    sell: Page[OfferEntry] | None = None,
    buy: Page[OfferEntry] | None = None,
) -> list[Any]:
    """One offer-book callback; `has` lists the has-flags set: price, quantity, date, offer id, agent."""
    return t.on_offer(
        SYMBOL,
        action,
        position,
        side,
        quantity,
        agent,
        offer_id,
        price,
        "p" in has,
        "q" in has,
        "d" in has,
        "o" in has,
        "a" in has,
        date,
        sell,
        buy,
        received_ms=RECEIVED,
    )


def ids(t: OfferBookTranslator, side: int = SIDE_BUY) -> list[int]:
    return [e.offer_id for e in t.offers(SYMBOL, side)]


def summary(events: list[Any]) -> list[tuple[Any, ...]]:
    return [(e.action, e.side, e.price, e.quantity, e.order_id, e.flags) for e in events]


def test_add_inserts_at_the_position_counted_from_the_end_where_the_best_is() -> None:
    t = OfferBookTranslator()
    assert summary(offer(t, AT_ADD, 0, quantity=5, offer_id=1, price=5400.0, agent=3)) == [
        ("add", "bid", 5400.0, 5, 1, LAST)
    ]
    offer(t, AT_ADD, 0, quantity=2, offer_id=2, price=5400.5)  # position 0: the new best, at the end
    offer(t, AT_ADD, 2, quantity=7, offer_id=3, price=5399.5)  # position = size: the worst, at the start
    offer(t, AT_ADD, 1, quantity=1, offer_id=4, price=5400.0)  # behind the best
    assert ids(t) == [3, 1, 4, 2]
    events = offer(t, AT_ADD, 0, SIDE_SELL, 9, 5, 5401.0, agent=308)
    assert events[0].side == "ask" and events[0].agent == 308 and events[0].seq == 5
    assert events[0].timestamp_ms == DATE_MS and events[0].received_ms == RECEIVED


def _four(t: OfferBookTranslator) -> None:
    for offer_id, price in ((1, 5399.0), (2, 5399.5), (3, 5400.0), (4, 5400.5)):
        offer(t, AT_ADD, 0, quantity=offer_id * 10, offer_id=offer_id, price=price, agent=offer_id)


def test_edit_adds_its_quantity_as_the_manual_s_example_does() -> None:
    t = OfferBookTranslator()
    _four(t)
    assert summary(offer(t, AT_EDIT, 1, quantity=-5, has="qd")) == [("update", "bid", 5400.0, 25, 3, LAST)]
    assert summary(offer(t, AT_EDIT, 0, quantity=0, price=5401.0, has="pd")) == [
        ("update", "bid", 5401.0, 40, 4, LAST)
    ]
    assert offer(t, AT_EDIT, 3, agent=120, has="a")[0].agent == 120
    # taken to zero: the order goes, its place stays, so later positions still match the DLL's
    assert summary(offer(t, AT_EDIT, 2, quantity=-20, has="q")) == [("delete", "bid", 5399.5, 0, 2, LAST)]
    assert ids(t) == [1, 2, 3, 4]
    assert offer(t, AT_DELETE, 2) == []  # the placeholder goes silently
    assert ids(t) == [1, 3, 4]


def test_edit_with_absolute_quantities_when_configured() -> None:
    t = OfferBookTranslator(edit_quantity="absolute")
    _four(t)
    assert summary(offer(t, AT_EDIT, 0, quantity=3, has="q")) == [("update", "bid", 5400.5, 3, 4, LAST)]
    assert offer(t, AT_EDIT, 0, quantity=-1, has="q") == []
    assert t.stats.rejected["quantity"] == 1


def test_an_edit_with_another_offer_id_replaces_the_order() -> None:
    t = OfferBookTranslator()
    _four(t)
    assert summary(offer(t, AT_EDIT, 0, offer_id=99, has="o")) == [
        ("delete", "bid", 5400.5, 0, 4, 0),
        ("add", "bid", 5400.5, 40, 99, LAST),
    ]


def test_deletes_arrive_zeroed_and_the_events_name_the_order_removed() -> None:
    t = OfferBookTranslator()
    _four(t)
    events = offer(t, AT_DELETE, 1, quantity=0, offer_id=0, price=0.0, has="")
    assert summary(events) == [("delete", "bid", 5400.0, 0, 3, LAST)]
    assert events[0].agent == 3
    assert ids(t) == [1, 2, 4]


def test_delete_from_removes_that_position_and_everything_better_in_one_batch() -> None:
    t = OfferBookTranslator()
    _four(t)
    events = offer(t, AT_DELETE_FROM, 2, has="")
    assert summary(events) == [
        ("delete", "bid", 5399.5, 0, 2, 0),
        ("delete", "bid", 5400.0, 0, 3, 0),
        ("delete", "bid", 5400.5, 0, 4, LAST),
    ]
    assert ids(t) == [1]
    assert [e.seq for e in events] == [5, 6, 7]


def test_a_stale_date_gives_way_to_the_receive_time() -> None:
    t = OfferBookTranslator()
    stale = offer(
        t, AT_ADD, 0, quantity=1, offer_id=1, price=5400.0, has="pqoa", date="01/01/2020 10:00:00.000"
    )
    assert stale[0].timestamp_ms == RECEIVED
    assert offer(t, AT_ADD, 0, quantity=1, offer_id=2, price=5400.5)[0].timestamp_ms == DATE_MS
    assert offer(t, AT_ADD, 0, quantity=1, offer_id=3, price=5401.0, date="garbage") == []
    assert t.stats.rejected["date"] == 1 and ids(t) == [1, 2]


def test_a_full_book_is_one_snapshot_group_held_until_its_last_page() -> None:
    t = OfferBookTranslator()
    _four(t)
    first = Page([OfferEntry(5402.0, 4, 8, 10), OfferEntry(5401.5, 6, 3, 11)], last=False)
    assert offer(t, AT_FULL_BOOK, 0, sell=first) == []  # not complete: nothing to read yet
    buys = Page([OfferEntry(5400.0, 1, 3, 20), OfferEntry(5400.5, 2, 8, 21)], last=True)
    second = Page([OfferEntry(5401.0, 5, 3, 12)], last=True)
    events = offer(t, AT_FULL_BOOK, 0, sell=second, buy=buys)
    assert summary(events) == [
        ("clear", "none", 0.0, 0, 0, SNAPSHOT),  # one clear of the whole book: a snapshot of it all
        ("add", "ask", 5402.0, 4, 10, SNAPSHOT),
        ("add", "ask", 5401.5, 6, 11, SNAPSHOT),
        ("add", "ask", 5401.0, 5, 12, SNAPSHOT),
        ("add", "bid", 5400.0, 1, 20, SNAPSHOT),
        ("add", "bid", 5400.5, 2, 21, SNAPSHOT | LAST),
    ]
    assert ids(t, SIDE_SELL) == [10, 11, 12] and ids(t) == [20, 21]
    assert t.stats.snapshots == 1
    # positions now address the new lists: position 0 is the last entry
    assert summary(offer(t, AT_DELETE, 0, SIDE_SELL, has="")) == [("delete", "ask", 5401.0, 0, 12, LAST)]


def test_an_action_before_the_last_page_ends_the_snapshot_group_where_it_is() -> None:
    t = OfferBookTranslator()
    offer(t, AT_FULL_BOOK, 0, buy=Page([OfferEntry(5400.0, 1, 3, 20)], last=False))
    events = offer(t, AT_ADD, 0, quantity=3, offer_id=30, price=5400.5)
    assert summary(events) == [
        ("clear", "none", 0.0, 0, 0, SNAPSHOT),
        ("add", "bid", 5400.0, 1, 20, SNAPSHOT | LAST),
        ("add", "bid", 5400.5, 3, 30, LAST),
    ]
    assert t.stats.interrupted == 1


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        ({"action": 9, "position": 0}, "action"),
        ({"action": AT_ADD, "position": 0, "side": 2}, "side"),
        ({"action": AT_ADD, "position": 5}, "position"),
        ({"action": AT_EDIT, "position": 4}, "position"),
        ({"action": AT_DELETE, "position": -1}, "position"),
        ({"action": AT_ADD, "position": 0, "price": math.nan}, "price"),
        ({"action": AT_ADD, "position": 0, "price": -5.0}, "price"),
        ({"action": AT_ADD, "position": 0, "quantity": -1}, "quantity"),
        ({"action": AT_EDIT, "position": 0, "price": math.inf}, "price"),
        ({"action": AT_ADD, "position": 0, "agent": -2}, "agent"),
    ],
)
def test_bad_callbacks_are_counted_and_change_nothing(args: dict[str, Any], reason: str) -> None:
    t = OfferBookTranslator()
    _four(t)
    before, seq = t.offers(SYMBOL, SIDE_BUY), t.symbols[SYMBOL].seq
    call = {"side": SIDE_BUY, "quantity": 1, "offer_id": 50, "price": 5400.0, **args}
    assert offer(t, **call) == []
    assert t.stats.rejected == {reason: 1}
    assert t.offers(SYMBOL, SIDE_BUY) == before and t.symbols[SYMBOL].seq == seq
    assert t.stats.desynced == (reason == "position" and args["position"] >= 0)


def test_a_bad_symbol_is_rejected_not_raised() -> None:
    t = OfferBookTranslator()
    assert t.on_offer("WDO FUT", AT_ADD, 0, 0, 1, 0, 1, 5400.0, 1, 1, 1, 1, 1, DATE) == []
    assert t.stats.rejected == {"symbol": 1}


def test_offers_without_an_id_get_a_unique_one() -> None:
    t = OfferBookTranslator()
    a = offer(t, AT_ADD, 0, quantity=1, price=5400.0, has="pqd")
    b = offer(t, AT_ADD, 0, quantity=1, price=5400.5, has="pqd")
    assert a[0].order_id != b[0].order_id and min(a[0].order_id, b[0].order_id) > 2**62


def test_decode_offer_pages_of_both_versions() -> None:
    entries = [
        OfferEntry(5400.5, 12, 308, 1234567890123, "24/11/2025 13:00:00.250"),
        OfferEntry(5400.0, 1, 3, 7, ""),
    ]
    for version, fmt in ((2, "<dqiqH"), (1, "<diiqH")):
        body = b"".join(struct.pack(fmt, *e[:4], len(e.date)) + e.date.encode() for e in entries)
        data = struct.pack("<ii", len(entries), 8 + len(body) + 4) + body + struct.pack("<I", 1)
        assert decode_offer_page(data, version=version) == Page(entries, True)
        with pytest.raises(DataError, match="truncated"):
            decode_offer_page(data[:-6], version=version)


def test_decode_price_pages_with_or_without_a_trailer() -> None:
    def page(levels: list[LevelEntry], fmt: str, trailer: bytes = b"") -> bytes:
        body = b"".join(struct.pack(fmt, *level) for level in levels)
        return struct.pack("<ii", len(levels), 8 + len(body) + len(trailer)) + body + trailer

    v2 = [LevelEntry(5400.5, 3_000_000_000, 12), LevelEntry(5400.0, 1, 1)]
    assert decode_price_page(page(v2, "<dqI")) == Page(v2, True)  # the manual's layout: no trailer
    assert decode_price_page(page(v2[1:], "<dii"), version=1) == Page(v2[1:], True)
    for flags, last in ((0, False), (1, True)):  # a trailer, should the DLL ever page them
        assert decode_price_page(page(v2, "<dqI", struct.pack("<I", flags))) == Page(v2, last)
    whole = page(v2, "<dqI")
    for bad in (whole[:-3], page(v2, "<dqI", b"\0\0"), struct.pack("<ii", -1, 8), b"\x01"):
        with pytest.raises(DataError, match="page"):
            decode_price_page(bad)


# --- the price book ------------------------------------------------------------------------------------


def price(t: PriceBookTranslator, action: int, position: int, side: int = SIDE_BUY, **kw: Any) -> list[Any]:
    return t.on_price(
        SYMBOL,
        action,
        position,
        side,
        kw.get("quantity", 0),
        kw.get("orders", 0),
        kw.get("price", 0.0),
        kw.get("sell"),
        kw.get("buy"),
        received_ms=RECEIVED,
    )


def test_the_price_book_translates_levels_positionally() -> None:
    t = PriceBookTranslator()
    for p in (5399.0, 5399.5, 5400.0):
        price(t, AT_ADD, 0, quantity=10, orders=2, price=p)
    edited = price(t, AT_EDIT, 0, quantity=4, orders=1)  # no price: dPrice is valid in atAdd only
    assert [(e.action, e.price, e.quantity, e.orders, e.flags) for e in edited] == [
        ("update", 5400.0, 4, 1, LAST)
    ]
    assert price(t, AT_EDIT, 0, quantity=5, orders=2, price=1.0)[0].price == 5400.0  # ignored if sent
    assert edited[0].timestamp_ms == RECEIVED  # the price book has no date
    gone = price(t, AT_DELETE_FROM, 1)
    assert [(e.action, e.price, e.quantity, e.orders) for e in gone] == [
        ("delete", 5399.5, 0, 0),
        ("delete", 5400.0, 0, 0),
    ]
    assert t.levels(SYMBOL, SIDE_BUY) == [LevelEntry(5399.0, 10, 2)]
    full = price(
        t, AT_FULL_BOOK, 0, sell=Page([LevelEntry(5401.0, 3, 1), LevelEntry(5400.5, 8, 4)], last=True)
    )
    assert [(e.action, e.side, e.price, e.quantity, e.flags) for e in full] == [
        ("clear", "none", 0.0, 0, SNAPSHOT),
        ("add", "ask", 5401.0, 3, SNAPSHOT),
        ("add", "ask", 5400.5, 8, SNAPSHOT),
        ("add", "bid", 5399.0, 10, SNAPSHOT | LAST),  # the side it did not replace, restated
    ]


# --- against the manual's positional lists -------------------------------------------------------------


@st.composite
def operations(draw: st.DrawFn, by_level: bool) -> list[tuple[Any, ...]]:
    """Valid positional callbacks for a model of the DLL's lists (prices only); a price book has
    one entry per price a side."""
    lists: list[list[float]] = [[], []]
    ops: list[tuple[Any, ...]] = []
    next_id = 1

    def new_price(side: int) -> float | None:
        p = 5400.0 + 0.5 * draw(st.integers(-8, 8))
        return None if by_level and p in lists[side] else p

    for _ in range(draw(st.integers(1, 40))):
        side = draw(st.sampled_from([SIDE_BUY, SIDE_SELL]))
        size = len(lists[side])
        kind = draw(st.sampled_from(["add", "full"] + (["edit", "delete", "delete_from"] if size else [])))
        if kind == "add":
            p = new_price(side)
            if p is None:
                continue
            position = draw(st.integers(0, size))
            lists[side].insert(size - position, p)
            ops.append(("add", side, position, p, draw(st.integers(0, 9)), next_id, draw(st.integers(0, 4))))
            next_id += 1
        elif kind == "edit":
            ops.append(
                (
                    "edit",
                    side,
                    draw(st.integers(0, size - 1)),
                    draw(st.integers(-4, 6)),
                    draw(st.integers(0, 4)),
                )
            )
        elif kind in ("delete", "delete_from"):
            position = draw(st.integers(0, size - 1))
            index = size - position - 1
            del lists[side][index : index + 1 if kind == "delete" else size]
            ops.append((kind, side, position))
        else:
            lists[side] = []
            entries = []
            for _ in range(draw(st.integers(0, 4))):
                p = new_price(side)
                if p is not None:
                    lists[side].append(p)
                    entries.append((p, draw(st.integers(0, 9)), next_id, draw(st.integers(0, 4))))
                    next_id += 1
            ops.append(("full", side, entries))
    return ops


def _replay_offers(ops: list[tuple[Any, ...]]) -> None:
    t = OfferBookTranslator()
    reference, books = ReferencePositional(), ReferenceOrders()
    for op in ops:
        if op[0] == "add":
            _, side, position, p, quantity, offer_id, agent = op
            events = offer(t, AT_ADD, position, side, quantity, offer_id, p, agent=agent)
            reference.add(side, position, {"price": p, "quantity": quantity})
        elif op[0] == "edit":
            _, side, position, delta, agent = op
            events = offer(t, AT_EDIT, position, side, delta, agent=agent, has="qa")
            entry = reference.lists[side][len(reference.lists[side]) - position - 1]
            reference.edit(side, position, {"quantity": entry["quantity"] + delta})
        elif op[0] == "delete":
            events = offer(t, AT_DELETE, op[2], op[1], has="")
            reference.delete(op[1], op[2])
        elif op[0] == "delete_from":
            events = offer(t, AT_DELETE_FROM, op[2], op[1], has="")
            reference.delete_from(op[1], op[2])
        else:
            _, side, entries = op
            page = Page([OfferEntry(p, q, a, i) for p, q, i, a in entries], last=True)
            events = offer(
                t,
                AT_FULL_BOOK,
                0,
                sell=page if side == SIDE_SELL else None,
                buy=page if side == SIDE_BUY else None,
            )
            reference.full(side, [{"price": p, "quantity": q} for p, q, _, _ in entries])
        assert not t.stats.rejected, t.stats.rejected
        assert not events or (events[-1].flags & LAST and not any(e.flags & LAST for e in events[:-1]))
        for event in events:
            books.apply(event)
        assert books.state() == reference.levels()
        assert [e.quantity for e in t.offers(SYMBOL, SIDE_BUY)] == [e["quantity"] for e in reference.lists[0]]


@settings(max_examples=150, deadline=None)
@given(operations(by_level=False))
def test_offer_events_rebuild_the_manual_s_positional_book_after_every_callback(
    ops: list[tuple[Any, ...]],
) -> None:
    _replay_offers(ops)


@settings(max_examples=150, deadline=None)
@given(operations(by_level=True))
def test_price_events_rebuild_the_manual_s_positional_book_after_every_callback(
    ops: list[tuple[Any, ...]],
) -> None:
    t = PriceBookTranslator()
    reference, books = ReferencePositional(), ReferenceLevels()
    for op in ops:
        if op[0] == "add":
            _, side, position, p, quantity, _, orders = op
            events = price(t, AT_ADD, position, side, quantity=quantity, orders=orders, price=p)
            reference.add(side, position, {"price": p, "quantity": quantity, "count": orders})
        elif op[0] == "edit":
            _, side, position, delta, orders = op
            entry = reference.lists[side][len(reference.lists[side]) - position - 1]
            new = max(0, delta)
            events = price(t, AT_EDIT, position, side, quantity=new, orders=orders, price=entry["price"])
            reference.edit(side, position, {"quantity": new, "count": orders})
        elif op[0] == "delete":
            events = price(t, AT_DELETE, op[2], op[1])
            reference.delete(op[1], op[2])
        elif op[0] == "delete_from":
            events = price(t, AT_DELETE_FROM, op[2], op[1])
            reference.delete_from(op[1], op[2])
        else:
            _, side, entries = op
            page = Page([LevelEntry(p, q, a) for p, q, _, a in entries], last=True)
            events = price(
                t,
                AT_FULL_BOOK,
                0,
                sell=page if side == SIDE_SELL else None,
                buy=page if side == SIDE_BUY else None,
            )
            reference.full(side, [{"price": p, "quantity": q, "count": a} for p, q, _, a in entries])
        assert not t.stats.rejected, t.stats.rejected
        for event in events:
            books.apply(event)
        # a level's order count is what the DLL said, whatever its quantity
        assert books.state() == {
            s: [(p, q, c if q else 0) for p, q, c in levels] for s, levels in reference.levels().items()
        }


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(-2, 6),
            st.integers(-3, 6),
            st.integers(-1, 3),
            st.integers(-5, 50),
            st.integers(-1, 400),
            st.integers(-1, 9),
            st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([5400.0, 5400.5, 0.0])),
            st.booleans(),
            st.booleans(),
            st.booleans(),
            st.booleans(),
            st.booleans(),
        ),
        max_size=30,
    )
)
def test_any_callback_sequence_is_translated_or_rejected_never_raised(calls: list[tuple[Any, ...]]) -> None:
    t = OfferBookTranslator()
    for action, position, side, quantity, agent, offer_id, p, hp, hq, hd, ho, ha in calls:
        t.on_offer(
            SYMBOL,
            action,
            position,
            side,
            quantity,
            agent,
            offer_id,
            p,
            hp,
            hq,
            hd,
            ho,
            ha,
            DATE,
            received_ms=RECEIVED,
        )
