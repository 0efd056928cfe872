"""The live order book of one symbol, updated event by event. No I/O.

Semantics (`domain.book`): every event states an absolute state (a level's quantity and order count,
an order's side, price and remaining quantity); quantity 0 or `delete` removes; `clear` empties one
side or both; a book is read only after a batch's LAST event.

`LevelBook` (MBP) and `OrderBook` (MBO), one per symbol (`live_book`). Per side a dict
price -> (quantity, orders) and a sorted price list (bisect): an update is O(1) plus O(levels) when
a level appears or goes; `levels(side, depth)` / `top(depth)` read the best N as arrays. `OrderBook`
keeps the orders in a dict in time priority (an update that keeps its price and does not grow keeps
its place, as on B3) and the levels as running sums. `snapshot()` exports the state as a snapshot
group, `from_snapshot()` imports one; seq jumps are counted in `gaps`, inconsistencies (a delete of
an unknown level or order) in `anomalies`, never raised.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Literal, NamedTuple

import numpy as np

from tickvault.domain.book import (
    ACTION_CODES,
    ASK,
    BID,
    CLEAR,
    DELETE,
    LAST,
    NO_SIDE,
    SIDE_CODES,
    SNAPSHOT,
    UPDATE,
    BookAction,
    BookColumns,
    BookEvent,
    BookKind,
    BookSide,
    BookUpdate,
    OrderUpdate,
    level_update,
    order_update,
)
from tickvault.errors import DataError

Side = Literal["bid", "ask"]
_SIDE_NAMES: tuple[BookSide, BookSide] = ("bid", "ask")


class Levels(NamedTuple):
    """One side of a book, best first."""

    price: np.ndarray  # float64
    quantity: np.ndarray  # int64
    orders: np.ndarray  # int64

    @classmethod
    def empty(cls) -> Levels:
        return cls(np.empty(0, np.float64), np.empty(0, np.int64), np.empty(0, np.int64))


class Top(NamedTuple):
    """The best `depth` levels of both sides, padded (price NaN, quantity 0) where a side is shorter:
    one row of `book_frames`."""

    bid_price: np.ndarray
    bid_quantity: np.ndarray
    ask_price: np.ndarray
    ask_quantity: np.ndarray


def _pad(levels: Levels, depth: int) -> tuple[np.ndarray, np.ndarray]:
    price = np.full(depth, np.nan)
    quantity = np.zeros(depth, np.int64)
    n = min(depth, levels.price.size)
    price[:n], quantity[:n] = levels.price[:n], levels.quantity[:n]
    return price, quantity


# --- live -------------------------------------------------------------------------------------------


class _Sides:
    """Per side: price -> [quantity, orders] and the prices in ascending order."""

    def __init__(self) -> None:
        self.level: tuple[dict[float, list[int]], dict[float, list[int]]] = ({}, {})
        self.prices: tuple[list[float], list[float]] = ([], [])

    def set(self, side: int, price: float, quantity: int, orders: int) -> None:
        levels = self.level[side]
        if price not in levels:
            bisect.insort(self.prices[side], price)
        levels[price] = [quantity, orders]

    def remove(self, side: int, price: float) -> bool:
        if self.level[side].pop(price, None) is None:
            return False
        prices = self.prices[side]
        del prices[bisect.bisect_left(prices, price)]
        return True

    def clear(self, side: int) -> None:
        self.level[side].clear()
        self.prices[side].clear()

    def levels(self, side: int, depth: int | None) -> Levels:
        prices = self.prices[side]
        n = len(prices) if depth is None else min(depth, len(prices))
        if not n:
            return Levels.empty()
        best = prices[: -n - 1 : -1] if side == BID else prices[:n]
        levels = self.level[side]
        return Levels(
            np.array(best, np.float64),
            np.array([levels[p][0] for p in best], np.int64),
            np.array([levels[p][1] for p in best], np.int64),
        )

    def best(self, side: int) -> tuple[float, int] | None:
        prices = self.prices[side]
        if not prices:
            return None
        price = prices[-1] if side == BID else prices[0]
        return price, self.level[side][price][0]


class _LiveBase:
    kind: BookKind

    def __init__(self, symbol: str) -> None:
        self.symbol = symbol
        self.sides = _Sides()
        self.in_batch = False  # inside a batch: the book is not to be read
        self.last_seq = 0
        self.last_ms = 0
        self.gaps = 0  # seq jumps seen (the book after one is not trustworthy until a snapshot)
        self.anomalies: Counter[str] = Counter()

    def _close(self, timestamp_ms: int, seq: int, flags: int) -> bool:
        if seq and self.last_seq and seq > self.last_seq + 1:
            self.gaps += 1
        if seq:
            self.last_seq = max(seq, self.last_seq)
        self.last_ms = max(self.last_ms, timestamp_ms)
        self.in_batch = not flags & LAST
        return not self.in_batch

    def apply_all(self, events: Iterable[BookEvent]) -> None:
        for event in events:
            self.apply(event)  # type: ignore[attr-defined]

    @property
    def readable(self) -> bool:
        return not self.in_batch

    def levels(self, side: Side, depth: int | None = None) -> Levels:
        """One side's best `depth` levels (all with None), best first."""
        return self.sides.levels(SIDE_CODES[side], depth)

    def best(self, side: Side) -> tuple[float, int] | None:
        """(price, quantity) of the best level of `side`, None when the side is empty."""
        return self.sides.best(SIDE_CODES[side])

    def top(self, depth: int = 10) -> Top:
        bid_price, bid_quantity = _pad(self.levels("bid", depth), depth)
        ask_price, ask_quantity = _pad(self.levels("ask", depth), depth)
        return Top(bid_price, bid_quantity, ask_price, ask_quantity)

    @property
    def crossed(self) -> bool:
        bid, ask = self.sides.best(BID), self.sides.best(ASK)
        return bid is not None and ask is not None and bid[0] >= ask[0]

    def _check_symbol(self, event: BookEvent, wanted: type) -> None:
        if type(event) is not wanted:
            raise DataError("kind", f"a {self.kind} book takes {wanted.__name__}, got {type(event).__name__}")
        if event.symbol != self.symbol:
            raise DataError("symbol", f"the book of {self.symbol} got an event of {event.symbol}")


class LevelBook(_LiveBase):
    """The live MBP book of one symbol."""

    kind: BookKind = "mbp"

    def apply(self, event: BookEvent) -> bool:
        """Apply one update; True when it closed a batch (the book may be read now)."""
        self._check_symbol(event, BookUpdate)
        assert isinstance(event, BookUpdate)
        self.apply_row(
            SIDE_CODES[event.side], event.price, event.quantity, event.orders, ACTION_CODES[event.action]
        )
        return self._close(event.timestamp_ms, event.seq, event.flags)

    def apply_row(self, side: int, price: float, quantity: int, orders: int, action: int) -> None:
        """Apply one update given as codes (the columnar path); batch state is the caller's."""
        if action == CLEAR:
            for s in (BID, ASK) if side == NO_SIDE else (side,):
                self.sides.clear(s)
        elif action == DELETE or quantity <= 0:
            if not self.sides.remove(side, price):
                self.anomalies["delete of an absent level"] += 1
        else:
            self.sides.set(side, price, quantity, orders)

    def apply_columns(self, cols: BookColumns) -> None:
        """Apply every row of `cols` in order (a catch-up from the store)."""
        if cols.kind != "mbp" or cols.symbol != self.symbol:
            raise DataError(
                "kind", f"mbp columns of {self.symbol} expected, got {cols.kind} of {cols.symbol}"
            )
        rows = zip(
            cols.side.tolist(),
            cols.price.tolist(),
            cols.quantity.tolist(),
            cols.orders.tolist(),
            cols.action.tolist(),
            cols.timestamp_ms.tolist(),
            cols.seq.tolist(),
            cols.flags.tolist(),
            strict=True,
        )
        for side, price, quantity, orders, action, ts, seq, flags in rows:
            self.apply_row(side, price, quantity, orders, action)
            self._close(ts, seq, flags)

    def snapshot(
        self, timestamp_ms: int, *, received_ms: int | None = None, seq: int | None = None
    ) -> list[BookUpdate]:
        """The book as a snapshot group: a clear of both sides, then every level (bids best first,
        then asks), all flagged SNAPSHOT, the last one LAST too. Every event carries `seq` (default:
        the last seq applied): the snapshot stands for the book after that update, so the update
        after it continues the sequence without a gap."""
        rows: list[tuple[BookSide, float, int, int, BookAction]] = [("none", 0.0, 0, 0, "clear")]
        for side in _SIDE_NAMES:
            levels = self.sides.levels(SIDE_CODES[side], None)
            for price, quantity, orders in zip(*(a.tolist() for a in levels), strict=True):
                rows.append((side, price, quantity, orders, "add"))
        return [
            level_update(
                self.symbol,
                timestamp_ms,
                side,
                price,
                quantity,
                orders,
                action,
                received_ms=received_ms,
                seq=self.last_seq if seq is None else seq,
                flags=SNAPSHOT | (LAST if i == len(rows) - 1 else 0),
            )
            for i, (side, price, quantity, orders, action) in enumerate(rows)
        ]

    @classmethod
    def from_snapshot(cls, events: Sequence[BookEvent]) -> LevelBook:
        _check_snapshot(events)
        book = cls(events[0].symbol)
        book.apply_all(events)
        return book


class OrderBook(_LiveBase):
    """The live MBO book of one symbol: its orders, and its levels as running sums."""

    kind: BookKind = "mbo"

    def __init__(self, symbol: str) -> None:
        super().__init__(symbol)
        self.orders: dict[int, tuple[int, float, int, int]] = {}  # id -> (side, price, quantity, agent)

    def apply(self, event: BookEvent) -> bool:
        """Apply one update; True when it closed a batch (the book may be read now)."""
        self._check_symbol(event, OrderUpdate)
        assert isinstance(event, OrderUpdate)
        self.apply_row(
            SIDE_CODES[event.side],
            event.price,
            event.quantity,
            event.order_id,
            event.agent,
            ACTION_CODES[event.action],
        )
        return self._close(event.timestamp_ms, event.seq, event.flags)

    def apply_row(
        self, side: int, price: float, quantity: int, order_id: int, agent: int, action: int
    ) -> None:
        orders, levels = self.orders, self.sides.level
        if action == CLEAR:
            cleared = (BID, ASK) if side == NO_SIDE else (side,)
            for s in cleared:
                self.sides.clear(s)
            self.orders = {k: v for k, v in orders.items() if v[0] not in cleared}
            return
        old = orders.get(order_id)
        if old is not None:
            o_side, o_price, o_qty, _ = old
            level = levels[o_side][o_price]
            level[0] -= o_qty
            level[1] -= 1
            if level[1] == 0:
                self.sides.remove(o_side, o_price)
        elif action == DELETE:
            self.anomalies["delete of an unknown order"] += 1
        elif action == UPDATE:
            self.anomalies["update of an unknown order"] += 1  # applied as an add
        if action == DELETE or quantity <= 0:
            if old is not None:
                del orders[order_id]
            return
        if old is not None and not (old[0] == side and old[1] == price and quantity <= old[2]):
            del orders[order_id]  # a new price or a larger size loses time priority: to the back
        orders[order_id] = (side, price, quantity, agent)
        existing = levels[side].get(price)
        if existing is None:
            self.sides.set(side, price, quantity, 1)
        else:
            level = existing
            level[0] += quantity
            level[1] += 1

    def apply_columns(self, cols: BookColumns) -> None:
        """Apply every row of `cols` in order (a catch-up from the store)."""
        if cols.kind != "mbo" or cols.symbol != self.symbol:
            raise DataError(
                "kind", f"mbo columns of {self.symbol} expected, got {cols.kind} of {cols.symbol}"
            )
        rows = zip(
            cols.side.tolist(),
            cols.price.tolist(),
            cols.quantity.tolist(),
            cols.order_id.tolist(),
            cols.agent.tolist(),
            cols.action.tolist(),
            cols.timestamp_ms.tolist(),
            cols.seq.tolist(),
            cols.flags.tolist(),
            strict=True,
        )
        for side, price, quantity, order_id, agent, action, ts, seq, flags in rows:
            self.apply_row(side, price, quantity, order_id, agent, action)
            self._close(ts, seq, flags)

    def snapshot(
        self, timestamp_ms: int, *, received_ms: int | None = None, seq: int | None = None
    ) -> list[OrderUpdate]:
        """The book as a snapshot group: a clear of both sides, then every order in time priority,
        all flagged SNAPSHOT, the last one LAST too; every event carries `seq` (default: the last
        seq applied), as in `LevelBook.snapshot`."""
        rows: list[tuple[BookSide, float, int, int, int, BookAction]] = [("none", 0.0, 0, 0, 0, "clear")]
        for order_id, (side, price, quantity, agent) in self.orders.items():
            rows.append((_SIDE_NAMES[side], price, quantity, order_id, agent, "add"))
        return [
            order_update(
                self.symbol,
                timestamp_ms,
                side,
                price,
                quantity,
                order_id,
                agent,
                action,
                received_ms=received_ms,
                seq=self.last_seq if seq is None else seq,
                flags=SNAPSHOT | (LAST if i == len(rows) - 1 else 0),
            )
            for i, (side, price, quantity, order_id, agent, action) in enumerate(rows)
        ]

    @classmethod
    def from_snapshot(cls, events: Sequence[BookEvent]) -> OrderBook:
        _check_snapshot(events)
        book = cls(events[0].symbol)
        book.apply_all(events)
        return book


def _check_snapshot(events: Sequence[BookEvent]) -> None:
    if not events or events[0].action != "clear" or events[0].side != "none":
        raise DataError("snapshot", "must start with a clear of the whole book")
    if not all(e.flags & SNAPSHOT for e in events) or not events[-1].flags & LAST:
        raise DataError("snapshot", "every event must be flagged SNAPSHOT and the last one LAST")


def live_book(symbol: str, kind: BookKind) -> LevelBook | OrderBook:
    """An empty live book of `symbol` for MBP or MBO updates."""
    return LevelBook(symbol) if kind == "mbp" else OrderBook(symbol)
