"""ProfitDLL's order-book callbacks translated into book events, in pure Python (no ctypes).

ProfitDLL describes its books by position, not by price or order id (its manual and the Delphi
example shipped with it, `UpdateOfferBook`):
- Per side (0 buy, 1 sell) a list whose END is the best entry; `nPosition` counts from that end:
  index = size - position - 1.
- Actions: atAdd (0) inserts so that the new entry has that position (at index size - position, size
  before the insert); atEdit (1) changes the entry at the position; atDelete (2) removes it;
  atDeleteFrom (3) removes it and every better one (index .. end); atFullBook (4) delivers whole
  lists as array pages (`pArraySell`, `pArrayBuy`), in list order, each page saying whether it is a
  side's last (OB_LAST_PACKET).
- Delete and DeleteFrom arrive with price, quantity and id zeroed: removal is positional.
- An Edit's quantity (when its has-quantity flag is set) is added to the entry's, as in the manual's
  example (`Group.nQtd := Group.nQtd + nQtd`); `edit_quantity="absolute"` takes it as the new size.
  The price book's edits default to absolute sizes (a level's new total); its dPrice is valid in an
  add only (manual), so an edited level keeps its price.
- Pages (`decode_offer_page`, `decode_price_page`): int32 count, int32 size, the entries; the offer
  book's end with uint32 flags, the price book's with nothing (the manual documents no trailer).
- When the has-date flag is 0 the date text is stale: the receive time stands in for exchange time.

The translators keep those lists per symbol and side and turn every callback into events with
explicit prices and ids: `OfferBookTranslator` (offer book, by order) -> `OrderUpdate`;
`PriceBookTranslator` (price book, by level) -> `BookUpdate`. A callback's events are one batch, its
last event flagged LAST. A full book is a snapshot group of the whole book: a clear of both sides,
then one add per entry (a side it does not replace restated from our list), all flagged SNAPSHOT;
the group is held back until every side being replaced got its last page, then returned whole, its
last event flagged LAST too (nothing can read a book in the middle of a snapshot anyway). Another
action arriving first ends the group there (counted in `stats.interrupted`). Events are numbered per
symbol: seq 1, 2, ...

Bad input (an unknown action or side, a position outside the list, an invalid price or quantity, a
malformed date) is counted in `stats.rejected` by reason and changes nothing: never raised into the
DLL's thread. A position outside the list means our list no longer matches the DLL's (`stats.desynced`);
the next full book repairs it.
"""

from __future__ import annotations

import math
import re
import struct
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, Literal, NamedTuple, TypeVar

from tickvault.domain.book import (
    LAST,
    SNAPSHOT,
    BookSide,
    BookUpdate,
    OrderUpdate,
    level_update,
    order_update,
)
from tickvault.domain.events import B3_TZ, to_ms, validate_symbol
from tickvault.errors import DataError

AT_ADD, AT_EDIT, AT_DELETE, AT_DELETE_FROM, AT_FULL_BOOK = 0, 1, 2, 3, 4
SIDE_BUY, SIDE_SELL = 0, 1
OB_LAST_PACKET = 1
SYNTHETIC_IDS = 1 << 62  # ids given to offers that came without one (has-offer-id 0)
_SIDES: tuple[BookSide, BookSide] = ("bid", "ask")

_DATE = re.compile(r"(\d{2})/(\d{2})/(\d{4}) (\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,3}))?")


def parse_profit_date(text: str) -> datetime:
    """'DD/MM/YYYY HH:mm:SS.ZZZ' (B3 local time) -> an aware datetime with milliseconds."""
    found = _DATE.fullmatch(text.strip()) if isinstance(text, str) else None
    if found is None:
        raise DataError("date", f"{text!r} is not 'DD/MM/YYYY HH:mm:SS.ZZZ'")
    day, month, year, hour, minute, second, ms = found.groups()
    try:
        return datetime(
            int(year),
            int(month),
            int(day),
            int(hour),
            int(minute),
            int(second),
            int((ms or "0").ljust(3, "0")) * 1000,
            tzinfo=B3_TZ,
        )
    except ValueError as exc:
        raise DataError("date", f"{text!r}: {exc}") from None


class OfferEntry(NamedTuple):
    """One offer of a full offer-book page."""

    price: float
    quantity: int
    agent: int
    offer_id: int
    date: str = ""


class LevelEntry(NamedTuple):
    """One price level of a full price-book page."""

    price: float
    quantity: int
    orders: int


E = TypeVar("E", OfferEntry, LevelEntry)


class Page(NamedTuple, Generic[E]):
    """One array page of a full book: its entries in list order (the best last), and whether it is
    the side's last page."""

    entries: Sequence[E]
    last: bool


def decode_offer_page(data: bytes | memoryview, *, version: int = 2) -> Page[OfferEntry]:
    """One offer-book page from its bytes: int32 count, int32 size, then per entry float64 price,
    int64 quantity (int32 in version 1), int32 agent, int64 offer id, uint16 date length and that many
    date bytes; then uint32 flags (OB_LAST_PACKET = 1). Little-endian, as the DLL writes it."""
    buffer = memoryview(data)
    try:
        count, _size = struct.unpack_from("<ii", buffer, 0)
        at = 8
        entry = struct.Struct("<dqiqH" if version == 2 else "<diiqH")
        entries = []
        for _ in range(count):
            price, quantity, agent, offer_id, length = entry.unpack_from(buffer, at)
            at += entry.size
            date = bytes(buffer[at : at + length]).decode("latin-1")
            at += length
            entries.append(OfferEntry(price, quantity, agent, offer_id, date))
        (flags,) = struct.unpack_from("<I", buffer, at)
    except struct.error as exc:
        raise DataError("page", f"truncated or malformed offer page: {exc}") from None
    return Page(entries, bool(flags & OB_LAST_PACKET))


def decode_price_page(data: bytes | memoryview, *, version: int = 2) -> Page[LevelEntry]:
    """One price-book page from its bytes: int32 count, int32 size (of the whole page), then per level
    float64 price, int64 quantity and uint32 order count (version 1: int32 quantity, int32 count),
    little-endian. The manual documents no trailer here (a side comes whole, in one page): a page that
    ends with its levels is a side's last; one whose size leaves exactly 4 bytes after them is read as
    the offer pages' trailer (flags, OB_LAST_PACKET). Anything else is malformed."""
    buffer = memoryview(data)
    try:
        count, size = struct.unpack_from("<ii", buffer, 0)
        entry = struct.Struct("<dqI" if version == 2 else "<dii")
        end = 8 + count * entry.size
        if count < 0 or not end <= size <= len(buffer) or size - end not in (0, 4):
            raise DataError("page", f"{count} levels do not fit a page of {size} bytes ({len(buffer)} read)")
        entries = [LevelEntry(*entry.unpack_from(buffer, 8 + i * entry.size)) for i in range(count)]
        last = size == end or bool(struct.unpack_from("<I", buffer, end)[0] & OB_LAST_PACKET)
    except struct.error as exc:
        raise DataError("page", f"truncated or malformed price page: {exc}") from None
    return Page(entries, last)


@dataclass
class BookStats:
    callbacks: int = 0
    events: int = 0
    snapshots: int = 0  # full books completed
    interrupted: int = 0  # full books ended by another action before their last page
    desynced: int = 0  # positions outside our list: the list no longer matches the DLL's
    rejected: Counter[str] = field(default_factory=Counter)


Row = tuple[str, int, float, int, int, int]  # (action, side, price, quantity, key, agent or count)


class _Entry:
    """A mutable entry of a positional list: `key` the offer id (0 for a level), `extra` the agent
    of an offer or the order count of a level. `alive` False: a placeholder kept so that positions
    still match the DLL's list (an edit took its quantity to zero)."""

    __slots__ = ("alive", "extra", "key", "price", "quantity")

    def __init__(self, price: float, quantity: int, key: int, extra: int) -> None:
        self.price, self.quantity, self.key, self.extra = price, quantity, key, extra
        self.alive = quantity > 0

    def row(self, action: str, side: int) -> Row:
        return (action, side, self.price, self.quantity if action != "delete" else 0, self.key, self.extra)


@dataclass
class _Symbol:
    lists: tuple[list[_Entry], list[_Entry]] = field(default_factory=lambda: ([], []))
    pending: list[bool] = field(default_factory=lambda: [False, False])  # sides mid full book
    held: list[tuple[Any, ...]] = field(default_factory=list)  # the snapshot group being assembled
    seq: int = 0


class _Translator:
    """The positional lists and the batch and snapshot rules both books share."""

    def __init__(
        self, *, edit_quantity: Literal["delta", "absolute"], clock: Callable[[], int] | None = None
    ) -> None:
        if edit_quantity not in ("delta", "absolute"):
            raise ValueError(f"edit_quantity must be delta or absolute, got {edit_quantity!r}")
        self.edit_quantity = edit_quantity
        self.clock = clock or (lambda: time.time_ns() // 1_000_000)
        self.stats = BookStats()
        self.symbols: dict[str, _Symbol] = {}

    def _reject(self, reason: str) -> list:  # type: ignore[type-arg]
        self.stats.rejected[reason] += 1
        return []

    def _book(self, symbol: str) -> _Symbol:
        book = self.symbols.get(symbol)
        if book is None:
            validate_symbol(symbol)
            book = self.symbols[symbol] = _Symbol()
        return book

    def _index(self, book: _Symbol, side: int, action: int, position: int) -> int | None:
        """The list index the action addresses, or None (rejected, the list desynced)."""
        size = len(book.lists[side])
        limit = size if action == AT_ADD else size - 1
        if not 0 <= position <= limit:
            self.stats.desynced += 1
            return None
        return size - position if action == AT_ADD else size - position - 1

    def _apply(
        self,
        book: _Symbol,
        side: int,
        action: int,
        index: int,
        entry: _Entry | None,
        changes: tuple[float, int, int, int] | None,
    ) -> list[Row]:
        """Change the list, and the rows that say what changed. `changes` for an edit:
        (price or NaN, quantity delta or absolute or -1, key or -1, agent/count or -1)."""
        entries = book.lists[side]
        rows: list[Row] = []
        if action == AT_ADD:
            assert entry is not None
            entries.insert(index, entry)
            if entry.alive:
                rows.append(entry.row("add", side))
        elif action == AT_EDIT:
            assert changes is not None
            old = entries[index]
            price, quantity, key, extra = changes
            was_alive, old_key = old.alive, old.key
            if not math.isnan(price):
                old.price = price
            if quantity >= 0 or self.edit_quantity == "delta":
                old.quantity = old.quantity + quantity if self.edit_quantity == "delta" else quantity
            if extra >= 0:
                old.extra = extra
            if key >= 0 and key != old_key:  # another id: the old order goes, the new one comes
                if was_alive:
                    rows.append(("delete", side, old.price, 0, old_key, old.extra))
                old.key, was_alive = key, False
            old.alive = old.quantity > 0
            if old.alive:
                rows.append(old.row("update" if was_alive else "add", side))
            elif was_alive:
                rows.append(old.row("delete", side))
        else:
            stop = index + 1 if action == AT_DELETE else len(entries)
            rows += [gone.row("delete", side) for gone in entries[index:stop] if gone.alive]
            del entries[index:stop]
        return rows

    def _full(self, book: _Symbol, side: int, page: Page[Any], make: Callable[[object], _Entry]) -> list[Row]:
        rows: list[Row] = []
        if not book.pending[side]:
            book.pending[side] = True
            book.lists[side].clear()
            rows.append(("clear", side, 0.0, 0, 0, 0))
        for item in page.entries:
            entry = make(item)
            book.lists[side].append(entry)
            if entry.alive:
                rows.append(entry.row("add", side))
        if page.last:
            book.pending[side] = False
        return rows

    def _finish(
        self, symbol: str, book: _Symbol, rows: list[Row], when: int, received: int, full: bool
    ) -> list:  # type: ignore[type-arg]
        """Rows -> events: a snapshot group is held until complete; other rows are one batch."""
        out: list = []  # type: ignore[type-arg]
        if full:
            book.held.extend((row, when, received) for row in rows)
            if any(book.pending):
                return out
            self.stats.snapshots += 1
            return self._release(symbol, book)
        if book.held:  # an action before the last page ends the group where it is
            self.stats.interrupted += 1
            book.pending = [False, False]
            out = self._release(symbol, book)
        for i, row in enumerate(rows):
            out.append(self._event(symbol, book, row, when, received, LAST if i == len(rows) - 1 else 0))
        self.stats.events += len(rows)
        return out

    def _release(self, symbol: str, book: _Symbol) -> list:  # type: ignore[type-arg]
        """The held full book as a snapshot of the whole book, as the bus and the store take one: a
        clear of both sides first, then the entries; a side this full book did not replace is
        restated from our list (a one-sided group would leave a reader a book no snapshot states)."""
        held, book.held = book.held, []
        if not held:
            return []
        _, when, received = held[0]
        replaced = {row[1] for row, _, _ in held if row[0] == "clear"}
        group: list[tuple[Row, int, int]] = [(("clear", -1, 0.0, 0, 0, 0), when, received)]
        group += [item for item in held if item[0][0] != "clear"]
        for side in (SIDE_BUY, SIDE_SELL):
            if side not in replaced:
                group += [(e.row("add", side), when, received) for e in book.lists[side] if e.alive]
        self.stats.events += len(group)
        return [
            self._event(symbol, book, row, when, received, SNAPSHOT | (LAST if i == len(group) - 1 else 0))
            for i, (row, when, received) in enumerate(group)
        ]

    def _event(self, symbol: str, book: _Symbol, row: Row, when: int, received: int, flags: int) -> object:
        raise NotImplementedError

    def _times(self, has_date: bool, date: str, received_ms: int | None) -> tuple[int, int]:
        received = self.clock() if received_ms is None else received_ms
        return (to_ms(parse_profit_date(date)) if has_date else received), received

    def _check_common(self, symbol: str, action: int, position: int, side: int) -> str | None:
        try:
            self._book(symbol)
        except DataError:
            return "symbol"
        if action not in (AT_ADD, AT_EDIT, AT_DELETE, AT_DELETE_FROM, AT_FULL_BOOK):
            return "action"
        if action != AT_FULL_BOOK and side not in (SIDE_BUY, SIDE_SELL):
            return "side"
        if action != AT_FULL_BOOK and position < 0:
            return "position"
        return None


def _valid_price(price: float) -> bool:
    return isinstance(price, float | int) and math.isfinite(price) and price > 0


class OfferBookTranslator(_Translator):
    """The offer book (by order): ProfitDLL's offer-book callbacks -> `OrderUpdate` batches."""

    def __init__(
        self, *, edit_quantity: Literal["delta", "absolute"] = "delta", clock: Callable[[], int] | None = None
    ) -> None:
        super().__init__(edit_quantity=edit_quantity, clock=clock)
        self.next_synthetic = SYNTHETIC_IDS

    def on_offer(
        self,
        symbol: str,
        action: int,
        position: int,
        side: int,
        quantity: int,
        agent: int,
        offer_id: int,
        price: float,
        has_price: bool,
        has_quantity: bool,
        has_date: bool,
        has_offer_id: bool,
        has_agent: bool,
        date: str,
        sell: Page[OfferEntry] | None = None,
        buy: Page[OfferEntry] | None = None,
        *,
        received_ms: int | None = None,
    ) -> list[OrderUpdate]:
        """One OfferBookCallbackV2 (arguments in its order; `sell`/`buy`: the decoded array pages of a
        full book). The events it makes: one batch, or a whole snapshot group, or nothing (rejected,
        or a full book still waiting for pages)."""
        self.stats.callbacks += 1
        reason = self._check_common(symbol, action, position, side)
        if reason:
            return self._reject(reason)
        try:
            when, received = self._times(bool(has_date), date, received_ms)
        except DataError:
            return self._reject("date")
        book = self._book(symbol)
        if action == AT_FULL_BOOK:
            pages = [(s, p) for s, p in ((SIDE_SELL, sell), (SIDE_BUY, buy)) if p is not None]
            for _, page in pages:
                for item in page.entries:
                    if not (_valid_price(item.price) or item.quantity == 0) or item.quantity < 0:
                        return self._reject("price" if item.quantity >= 0 else "quantity")
                    if item.agent < 0 or item.offer_id < 0:
                        return self._reject("agent" if item.agent < 0 else "offer_id")
            rows = []
            for s, page in pages:
                rows += self._full(book, s, page, self._offer_entry)
            return self._finish(symbol, book, rows, when, received, True)
        index = self._index(book, side, action, position)
        if index is None:
            return self._reject("position")
        entry, changes = None, None
        if action == AT_ADD:
            if not _valid_price(price) or quantity < 0:
                return self._reject("price" if quantity >= 0 else "quantity")
            if (has_agent and agent < 0) or (has_offer_id and offer_id < 0):
                return self._reject("agent" if agent < 0 else "offer_id")
            key = offer_id if has_offer_id else self._synthetic()
            entry = _Entry(float(price), int(quantity), key, agent if has_agent else 0)
        elif action == AT_EDIT:
            if has_price and not _valid_price(price):
                return self._reject("price")
            if (has_agent and agent < 0) or (has_offer_id and offer_id < 0):
                return self._reject("agent" if agent < 0 else "offer_id")
            if has_quantity and self.edit_quantity == "absolute" and quantity < 0:
                return self._reject("quantity")
            delta = int(quantity) if has_quantity else (0 if self.edit_quantity == "delta" else -1)
            changes = (
                float(price) if has_price else math.nan,
                delta,
                offer_id if has_offer_id else -1,
                agent if has_agent else -1,
            )
        rows = self._apply(book, side, action, index, entry, changes)
        return self._finish(symbol, book, rows, when, received, False)

    def _synthetic(self) -> int:
        self.next_synthetic += 1
        return self.next_synthetic

    def _offer_entry(self, item: object) -> _Entry:
        assert isinstance(item, OfferEntry)
        return _Entry(float(item.price), int(item.quantity), item.offer_id or self._synthetic(), item.agent)

    def _event(
        self, symbol: str, book: _Symbol, row: Row, when: int, received: int, flags: int
    ) -> OrderUpdate:
        action, side, price, quantity, key, agent = row
        book.seq += 1
        return order_update(
            symbol,
            when,
            "none" if side < 0 else _SIDES[side],
            price,
            quantity,
            key,
            agent,
            action,  # type: ignore[arg-type]
            received_ms=received,
            seq=book.seq,
            flags=flags,
        )

    def offers(self, symbol: str, side: int) -> list[OfferEntry]:
        """The positional list of `side` as the DLL has it (index 0 first, the best last)."""
        book = self.symbols.get(symbol)
        entries = book.lists[side] if book else []
        return [OfferEntry(e.price, e.quantity, e.extra, e.key) for e in entries]


class PriceBookTranslator(_Translator):
    """The price book (by level): ProfitDLL's price-book callbacks -> `BookUpdate` batches."""

    def __init__(
        self,
        *,
        edit_quantity: Literal["delta", "absolute"] = "absolute",
        clock: Callable[[], int] | None = None,
    ) -> None:
        super().__init__(edit_quantity=edit_quantity, clock=clock)

    def on_price(
        self,
        symbol: str,
        action: int,
        position: int,
        side: int,
        quantity: int,
        count: int,
        price: float,
        sell: Page[LevelEntry] | None = None,
        buy: Page[LevelEntry] | None = None,
        *,
        received_ms: int | None = None,
    ) -> list[BookUpdate]:
        """One PriceBookCallback (arguments in its order). It has no date: events are stamped with
        the receive time. `price` counts in an add only (the manual: dPrice is valid in atAdd)."""
        self.stats.callbacks += 1
        reason = self._check_common(symbol, action, position, side)
        if reason:
            return self._reject(reason)
        received = self.clock() if received_ms is None else received_ms
        book = self._book(symbol)
        if action == AT_FULL_BOOK:
            pages = [(s, p) for s, p in ((SIDE_SELL, sell), (SIDE_BUY, buy)) if p is not None]
            for _, page in pages:
                for item in page.entries:
                    if not _valid_price(item.price) or item.quantity < 0 or item.orders < 0:
                        return self._reject(
                            "price" if item.quantity >= 0 and item.orders >= 0 else "quantity"
                        )
            rows = []
            for s, page in pages:
                rows += self._full(book, s, page, _level_entry)
            return self._finish(symbol, book, rows, received, received, True)
        index = self._index(book, side, action, position)
        if index is None:
            return self._reject("position")
        entry, changes = None, None
        if action == AT_ADD:
            if not _valid_price(price):
                return self._reject("price")
            if quantity < 0 or count < 0:
                return self._reject("quantity")
            entry = _Entry(float(price), int(quantity), 0, int(count))
        elif action == AT_EDIT:
            if count < 0 or (self.edit_quantity == "absolute" and quantity < 0):
                return self._reject("quantity")
            # dPrice is valid in atAdd only (manual): an edited level keeps its price, whatever comes
            changes = (math.nan, int(quantity), -1, int(count))
        rows = self._apply(book, side, action, index, entry, changes)
        return self._finish(symbol, book, rows, received, received, False)

    def _event(
        self, symbol: str, book: _Symbol, row: Row, when: int, received: int, flags: int
    ) -> BookUpdate:
        action, side, price, quantity, _, count = row
        book.seq += 1
        return level_update(
            symbol,
            when,
            "none" if side < 0 else _SIDES[side],
            price,
            quantity,
            count if quantity else 0,
            action,  # type: ignore[arg-type]
            received_ms=received,
            seq=book.seq,
            flags=flags,
        )

    def levels(self, symbol: str, side: int) -> list[LevelEntry]:
        """The positional list of `side` as the DLL has it (index 0 first, the best last)."""
        book = self.symbols.get(symbol)
        entries = book.lists[side] if book else []
        return [LevelEntry(e.price, e.quantity, e.extra) for e in entries]


def _level_entry(item: object) -> _Entry:
    assert isinstance(item, LevelEntry)
    return _Entry(float(item.price), int(item.quantity), 0, int(item.orders))
