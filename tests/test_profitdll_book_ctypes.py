"""ProfitDLL's book callbacks end to end: the fake library (tests/native/fake_profitdll.c, built with
gcc) keeps its own positional book and fires the V2 callbacks from its own thread; the session copies
them onto its queue; `BookFeed` turns them into batches; the batches applied to the live books
(`tickvault.analytics.book.live_book`) must equal the fake's own book whenever it is idle."""

from __future__ import annotations

import ctypes
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import wait_until
from fake_profitdll import BUY, OFFER, PRICE, SELL, FakeControls, build_fake_dll
from tickvault.analytics.book import LevelBook, OrderBook, live_book
from tickvault.domain.book import LAST, SNAPSHOT, BookBatch, OrderUpdate, order_update
from tickvault.domain.events import Tick, to_ms
from tickvault.sources.profitdll import ProfitDLLSource, TAssetIDRec
from tickvault.sources.profitdll_book import AT_ADD, AT_DELETE, AT_DELETE_FROM, AT_EDIT, parse_profit_date
from tickvault.sources.profitdll_feed import BookFeed, OfferCall, PriceCall

SYMBOL = "WDOF26"


@pytest.fixture(scope="module")
def fake_dll(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_fake_dll(tmp_path_factory)


@pytest.fixture
def fake(fake_dll: Path) -> Iterator[FakeControls]:
    controls = FakeControls(fake_dll)
    controls.reset()
    yield controls
    controls.reset()


@pytest.fixture
def session(fake_dll: Path, fake: FakeControls) -> Iterator[ProfitDLLSource]:
    source = ProfitDLLSource(fake_dll, "KEY-123", "trader", "s3cret", login_timeout=10)
    source.start()
    try:
        yield source
    finally:
        source.close()  # the fake waits for its jobs, then forgets our callbacks


class Mirror:
    """The live books the batches build, as a consumer of the source would keep them."""

    def __init__(self) -> None:
        self.mbo = live_book(SYMBOL, "mbo")
        self.mbp = live_book(SYMBOL, "mbp")

    def apply(self, batches: list[BookBatch]) -> None:
        for batch in batches:
            book = self.mbo if isinstance(batch[0], OrderUpdate) else self.mbp
            for event in batch:
                book.apply(event)
            assert book.readable


def settle(fake: FakeControls, session: ProfitDLLSource) -> list[BookBatch]:
    """Once the fake is idle every callback is on the queue (queued before it returned): translate."""
    assert wait_until(fake.idle, timeout=60)
    items = session.drain()
    assert all(isinstance(item, BookBatch) for item in items)
    return items  # type: ignore[return-value]


def raw_calls(fake: FakeControls, session: ProfitDLLSource) -> list[Any]:
    """The queued callback records themselves (what the DLL's thread copied), untranslated."""
    assert wait_until(fake.idle, timeout=60)
    calls = []
    while not session.queue.empty():
        calls.append(session.queue.get_nowait())
    return calls


def assert_offer_book_equal(
    fake: FakeControls, session: ProfitDLLSource, book: OrderBook | LevelBook
) -> None:
    assert isinstance(book, OrderBook)
    expected = {}
    for side in (BUY, SELL):
        rows = fake.snapshot(OFFER, side)
        # positionally: the session's lists are the DLL's, entry for entry
        mine = session.book.offers.offers(SYMBOL, side)
        assert [(e.price, e.quantity, e.agent, e.offer_id) for e in mine] == rows
        expected.update({oid: (side, price, qty, agent) for price, qty, agent, oid in rows})
    assert book.orders == expected  # DLL side 0 (buy) is BID 0, 1 (sell) is ASK 1
    assert book.gaps == 0 and not book.anomalies and not book.crossed


def assert_price_book_equal(fake: FakeControls, book: OrderBook | LevelBook) -> None:
    assert isinstance(book, LevelBook)
    for side, name in ((BUY, "bid"), (SELL, "ask")):
        levels = book.levels(name)  # type: ignore[arg-type]
        sizes = zip(levels.quantity.tolist(), levels.orders.tolist(), strict=True)
        got = dict(zip(levels.price.tolist(), sizes, strict=True))
        assert got == {price: (qty, count) for price, qty, count, _ in fake.snapshot(PRICE, side)}
    assert book.gaps == 0 and not book.anomalies and not book.crossed


def summary(batch: BookBatch) -> list[tuple[Any, ...]]:
    return [(e.action, e.side, e.price, e.quantity, e.order_id, e.agent) for e in batch]  # type: ignore[union-attr]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


# --- the offer book, scripted ------------------------------------------------------------------------


def test_the_subscription_s_full_book_comes_in_pages_and_leaves_as_one_snapshot_batch(
    fake: FakeControls, session: ProfitDLLSource
) -> None:
    mirror = Mirror()
    session.subscribe_offer_book([SYMBOL])
    batches = settle(fake, session)
    # three callbacks (sell pages of 3, 3, 1; buy pages of 3, 2), one group released at the last page
    assert fake.calls(OFFER, 2) == 3 and session.book.stats.calls == 3
    assert len(batches) == 1
    (snap,) = batches
    assert snap.symbol == SYMBOL and len(snap) == 1 + 12
    assert all(e.flags & SNAPSHOT for e in snap) and [e.flags & LAST for e in snap] == [0] * 12 + [LAST]
    assert (snap[0].action, snap[0].side) == ("clear", "none")  # a snapshot of the whole book
    assert [e.action for e in snap].count("clear") == 1 and [e.seq for e in snap] == list(range(1, 14))
    mirror.apply(batches)
    assert_offer_book_equal(fake, session, mirror.mbo)
    assert mirror.mbo.orders[202] == (0, 5413.0, 3_000_000_000, 8)  # an Int64 quantity in a page
    assert mirror.mbo.best("bid") == (5416.0, 9) and mirror.mbo.best("ask") == (5417.0, 70)
    # every page went back through FreePointer, with its own size; V1 was never registered
    assert fake.pages(2) == (5, 5) and fake.bad_frees() == 0 and session.stats.pages_freed == 5
    assert fake.calls(OFFER, 1) == 0


def test_every_action_arrives_as_the_events_of_the_entries_it_touched(
    fake: FakeControls, session: ProfitDLLSource
) -> None:
    mirror = Mirror()
    session.subscribe_offer_book([SYMBOL])
    mirror.apply(settle(fake, session))
    before = now_ms()
    fake.script(OFFER, 1)
    calls = raw_calls(fake, session)
    after = now_ms()
    assert [type(c) for c in calls] == [OfferCall] * 9
    # the DLL's side: removals come zeroed (positional), the 64-bit quantity whole, one stale date
    deletes = [c for c in calls if c.action in (AT_DELETE, AT_DELETE_FROM)]
    assert len(deletes) == 3 and all((c.price, c.quantity, c.offer_id) == (0.0, 0, 0) for c in deletes)
    assert calls[0].quantity == 8_589_934_597 and calls[0].action == AT_ADD
    assert [c.has_date for c in calls] == [True] * 4 + [False] + [True] * 4
    assert calls[4].date == calls[3].date  # the stale text: the previous callback's
    batches = [batch for call in calls for batch in session.book.on_call(call)]
    assert [summary(b) for b in batches] == [
        [("add", "bid", 5416.5, 8_589_934_597, 301, 3)],
        [("add", "ask", 5417.5, 4, 302, 8)],
        [("update", "bid", 5416.0, 7, 205, 120)],
        [("delete", "ask", 5417.0, 0, 107, 72)],  # the event names what the zeroed delete removed
        [("add", "bid", 5416.5, 6, 303, 45)],
        [("delete", "bid", 5416.0, 0, 205, 120), ("delete", "bid", 5416.5, 0, 303, 45),
         ("delete", "bid", 5416.5, 0, 301, 3)],  # DeleteFrom: that position and every better one
        [("update", "ask", 5417.5, 63, 106, 386)],
    ]  # fmt: skip
    for batch, call in zip(batches, [calls[i] for i in (0, 1, 2, 3, 4, 5, 8)], strict=True):
        assert all(e.received_ms == call.received_ms and before <= e.received_ms <= after for e in batch)
        exchange_ms = to_ms(parse_profit_date(call.date)) if call.has_date else call.received_ms
        assert all(e.timestamp_ms == exchange_ms for e in batch)
    assert batches[4][0].timestamp_ms != to_ms(parse_profit_date(calls[4].date))  # the stale text is not used
    # the two bad callbacks: counted, nothing changed
    assert session.book.rejected == {"position": 1, "action": 1} and session.book.desynced == 1
    mirror.apply(batches)
    assert_offer_book_equal(fake, session, mirror.mbo)
    assert mirror.mbo.best("bid") == (5415.0, 8) and mirror.mbo.best("ask") == (5417.5, 63 + 4)


def test_a_new_full_book_replaces_the_whole_book(fake: FakeControls, session: ProfitDLLSource) -> None:
    mirror = Mirror()
    session.subscribe_offer_book([SYMBOL])
    for phase in (None, 1, 2):
        if phase is not None:
            fake.script(OFFER, phase)
        mirror.apply(settle(fake, session))
    assert set(mirror.mbo.orders) == {401, 402, 403, 404, 405, 501, 502, 503, 504}
    assert_offer_book_equal(fake, session, mirror.mbo)
    assert session.book.offers.stats.snapshots == 2 and session.book.offers.stats.interrupted == 0
    assert fake.pages(2) == (5 + 5, 5 + 5) and fake.bad_frees() == 0


# --- the price book, scripted ------------------------------------------------------------------------


def test_the_price_book_by_level_end_to_end(fake: FakeControls, session: ProfitDLLSource) -> None:
    mirror = Mirror()
    session.subscribe_price_book([SYMBOL])
    (snap,) = settle(fake, session)
    assert len(snap) == 1 + 12 and all(e.flags & SNAPSHOT for e in snap)  # one clear, 12 levels
    mirror.apply([snap])
    assert_price_book_equal(fake, mirror.mbp)
    assert mirror.mbp.levels("bid").quantity.tolist()[3] == 3_000_000_000
    fake.script(PRICE, 1)
    batches = settle(fake, session)
    rows = [[(e.action, e.side, e.price, e.quantity, e.orders) for e in b] for b in batches]  # type: ignore[union-attr]
    assert rows == [
        [("add", "bid", 5416.5, 4_294_967_301, 2)],
        [("update", "ask", 5417.0, 77, 4)],
        [("delete", "bid", 5416.0, 0, 0)],
        [("delete", "ask", 5417.5, 0, 0), ("delete", "ask", 5417.0, 0, 0)],
    ]
    assert all(e.timestamp_ms == e.received_ms for b in batches for e in b)  # the price book has no date
    assert session.book.rejected == {"position": 1} and session.book.desynced == 1
    mirror.apply(batches)
    assert_price_book_equal(fake, mirror.mbp)
    assert fake.pages(2) == (2, 2) and fake.bad_frees() == 0 and fake.calls(PRICE, 1) == 0


def test_quantities_above_2_31_arrive_whole_through_arguments_and_pages(
    fake: FakeControls, session: ProfitDLLSource
) -> None:
    mirror = Mirror()
    session.subscribe_offer_book([SYMBOL])
    session.subscribe_price_book([SYMBOL])
    mirror.apply(settle(fake, session))
    assert mirror.mbo.orders[202][2] == 3_000_000_000  # an Int64 in an offer page
    assert mirror.mbp.levels("bid").quantity.tolist()[3] == 3_000_000_000  # and in a price page
    fake.script(OFFER, 1)
    (add, *_) = settle(fake, session)
    assert (add[0].order_id, add[0].quantity) == (301, 2**33 + 5)  # nQtd, an Int64 argument
    fake.script(PRICE, 1)
    mirror.apply(settle(fake, session))
    assert mirror.mbp.best("bid") == (5416.5, 2**32 + 5)  # nQtds, an Int64 argument


# --- generated sessions ------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_sessions_leave_the_live_books_equal_to_the_dll_s(
    fake: FakeControls, session: ProfitDLLSource, seed: int
) -> None:
    mirror = Mirror()
    session.subscribe_offer_book([SYMBOL])
    session.subscribe_price_book([SYMBOL])
    mirror.apply(settle(fake, session))
    for burst in range(6):
        fake.random(OFFER, seed * 100 + burst, 250)
        mirror.apply(settle(fake, session))
        fake.random(PRICE, 0, 250)
        mirror.apply(settle(fake, session))
        assert_offer_book_equal(fake, session, mirror.mbo)
        assert_price_book_equal(fake, mirror.mbp)
    made, freed = fake.pages(2)
    assert made > 4 and made == freed == session.stats.pages_freed and fake.bad_frees() == 0
    assert session.book.rejected == {} and session.book.desynced == 0
    assert session.book.stats.calls == fake.calls(OFFER, 2) + fake.calls(PRICE, 2)
    stats = session.book.offers.stats
    assert stats.snapshots > 1 and stats.interrupted == 0  # full books of several pages came through


def test_with_a_v1_callback_registered_too_the_dll_sends_twice_and_the_source_reads_v2_only(
    fake: FakeControls, session: ProfitDLLSource
) -> None:
    v1_calls: list[int] = []
    header = struct.Struct("<ii")

    def v1(*args: Any) -> None:  # another listener on V1: counts, and frees the V1 pages it is given
        v1_calls.append(args[1])
        for address in args[-2:]:
            if address:
                fake.lib.FreePointer(address, header.unpack(ctypes.string_at(address, header.size))[1])

    flag = ctypes.c_ubyte
    v1_type = ctypes.CFUNCTYPE(
        None, TAssetIDRec, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int,
        ctypes.c_int64, ctypes.c_double, flag, flag, flag, flag, flag, ctypes.c_wchar_p, ctypes.c_void_p,
        ctypes.c_void_p,
    )  # fmt: skip
    callback = v1_type(v1)
    fake.lib.SetOfferBookCallback(callback)
    try:
        mirror = Mirror()
        session.subscribe_offer_book([SYMBOL])
        mirror.apply(settle(fake, session))
        fake.script(OFFER, 1)
        mirror.apply(settle(fake, session))
        fake.random(OFFER, 7, 300)
        mirror.apply(settle(fake, session))
        assert fake.calls(OFFER, 1) == fake.calls(OFFER, 2) == len(v1_calls) > 300
        assert session.book.stats.calls == fake.calls(OFFER, 2)  # once each, not twice
        assert_offer_book_equal(fake, session, mirror.mbo)  # every add applied twice would not be
        assert fake.pages(1)[0] == fake.pages(1)[1] > 0 and fake.pages(2)[0] == fake.pages(2)[1]
    finally:
        session.close()  # the fake forgets every book callback before `callback` can go
        fake.lib.SetOfferBookCallback(None)


def test_the_queue_absorbs_a_burst_while_the_reader_is_paused(
    fake: FakeControls, session: ProfitDLLSource
) -> None:
    mirror = Mirror()
    session.subscribe_offer_book([SYMBOL])
    mirror.apply(settle(fake, session))
    translated, queued = session.book.stats.calls, fake.calls(OFFER, 2)
    fake.random(OFFER, 11, 5000)
    # nobody reads the queue: the DLL's thread still gets through every callback
    assert wait_until(fake.idle, timeout=60)
    burst = fake.calls(OFFER, 2) - queued
    assert burst >= 5000 and session.queue.qsize() == burst
    assert session.book.stats.calls == translated  # nothing was translated on the DLL's thread
    assert fake.pages(2)[0] == fake.pages(2)[1]  # the pages were copied and freed all the same
    mirror.apply(settle(fake, session))
    assert session.book.stats.calls == translated + burst
    assert_offer_book_equal(fake, session, mirror.mbo)


# --- the seam for System -----------------------------------------------------------------------------


def test_events_yields_ticks_and_book_batches_until_stopped(
    fake: FakeControls, session: ProfitDLLSource
) -> None:
    session.subscribe_offer_book([SYMBOL])
    session.subscribe([SYMBOL])
    stop = threading.Event()
    deadline = threading.Timer(30, stop.set)  # a generous bound, so a failure cannot hang
    deadline.start()
    got: list[Tick | BookBatch] = []
    try:
        for item in session.events(stop):
            got.append(item)
            if sum(isinstance(i, Tick) for i in got) == 5 and any(isinstance(i, BookBatch) for i in got):
                stop.set()
    finally:
        deadline.cancel()
        deadline.join()
    assert {type(i) for i in got} == {Tick, BookBatch}
    assert [i.trade_id for i in got if isinstance(i, Tick)] == [1001, 1002, 1003, 1001, 4_000_000_000]
    assert session.book.counters()["book_snapshots"] == 1


def test_book_counters_flatten_for_metrics(fake: FakeControls, session: ProfitDLLSource) -> None:
    session.subscribe_offer_book([SYMBOL])
    settle(fake, session)
    fake.script(OFFER, 1)
    settle(fake, session)
    counters = session.book.counters()
    assert counters["book_calls"] == 3 + 9 and counters["book_batches"] == 1 + 7
    assert counters["book_rejected"] == 2 and counters["book_rejected_position"] == 1
    assert counters["book_rejected_action"] == 1 and counters["book_desynced"] == 1


# --- the feed's own checks (no DLL needed) ---------------------------------------------------------------


def offer_call(action: int, position: int = 0, **changes: Any) -> OfferCall:
    fields: dict[str, Any] = dict(
        symbol=SYMBOL, action=action, position=position, side=BUY, quantity=5, agent=3, offer_id=9,
        price=5400.0, has_price=True, has_quantity=True, has_date=True, has_offer_id=True, has_agent=True,
        date="24/11/2025 10:00:00.000", sell=None, buy=None, received_ms=now_ms(),
    )  # fmt: skip
    fields.update(changes)
    return OfferCall(**fields)


def test_a_page_that_does_not_decode_is_counted_and_changes_nothing() -> None:
    feed = BookFeed()
    assert feed.on_call(offer_call(4, sell=b"\x01\x00")) == []
    assert feed.on_call(PriceCall(SYMBOL, 4, 0, 0, 0, 0, 0.0, None, struct.pack("<ii", 3, 8), 0)) == []
    assert feed.rejected == {"page": 2} and feed.offers.symbols == {} and feed.prices.symbols == {}
    assert feed.on_call(offer_call(AT_ADD))[0][0].order_id == 9  # the next good one goes through


def test_batches_that_break_the_rules_are_counted_and_held_back(monkeypatch: pytest.MonkeyPatch) -> None:
    feed = BookFeed()
    (good,) = feed.on_call(offer_call(AT_ADD))
    assert good[0].seq == 1

    def made_up(*events: tuple[int, int]) -> Any:
        def on_offer(*_: Any, **__: Any) -> list[OrderUpdate]:
            return [
                order_update(SYMBOL, 1, "bid", 5400.0, 1, 9, seq=seq, flags=flags) for seq, flags in events
            ]

        return on_offer

    monkeypatch.setattr(feed.offers, "on_offer", made_up((3, LAST)))  # a seq jump
    assert feed.on_call(offer_call(AT_EDIT)) == []
    monkeypatch.setattr(feed.offers, "on_offer", made_up((4, SNAPSHOT), (5, LAST)))  # half a snapshot
    assert feed.on_call(offer_call(AT_EDIT)) == []
    monkeypatch.setattr(feed.offers, "on_offer", made_up((6, 0)))  # never closed
    assert feed.on_call(offer_call(AT_EDIT)) == []
    monkeypatch.setattr(feed.offers, "on_offer", made_up((6, LAST)))
    assert len(feed.on_call(offer_call(AT_EDIT))) == 1
    assert feed.stats.rejected == {"batch": 3} and feed.stats.batches == 2
