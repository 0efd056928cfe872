"""Order-book events, by price level (MBP) and by order (MBO), and their columnar form.

Both are `Event`s (symbol, exchange `timestamp`/`timestamp_ms`: when the exchange stamped the
update, or the receive time when the source has no trustworthy exchange time), plus `received_ms`
(when we got it), `seq` (per symbol, contiguous: a jump is a gap) and `flags`:

- `LAST`: the last event of a batch, i.e. of one exchange message. A book is only read between
  batches: after an event with LAST, never in the middle of a batch.
- `SNAPSHOT`: the event belongs to a snapshot group: a `clear`, then every level (MBP) or order
  (MBO) of the book, the last one flagged LAST as well (as Databento's F_SNAPSHOT/F_LAST and
  NautilusTrader's CLEAR + deltas do).

Actions (both kinds): `add`, `update`, `delete`, `clear`. Every update states the absolute new state,
never a difference, so replaying from any snapshot gives the same book:
- MBP `BookUpdate`: the level at (`side`, `price`) now holds `quantity` contracts in `orders` orders;
  quantity 0 (or `delete`) removes the level. `add` and `update` mean the same thing.
- MBO `OrderUpdate`: order `order_id` now rests at (`side`, `price`) with `quantity` remaining
  (`add`, `update`: a new price or size, absolute); `delete` (or quantity 0) removes it, whatever
  its price field says (a source may send zeros there).
- `clear` empties one side (`side` "bid" or "ask") or the whole book (`side` "none").

`BookColumns` is a batch of one symbol's events of one kind as numpy columns, in application order:
what the store keeps and what the vectorised readers of `analytics.book` take.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, TypeAlias

import msgspec
import numpy as np

from tickvault.domain.events import Event, from_ms
from tickvault.errors import DataError


class BookFlag(enum.IntFlag):
    """The named bits of a book event's `flags`."""

    LAST = 1  # last event of a batch (one exchange message): the book may be read after it
    SNAPSHOT = 2  # part of a snapshot group (a clear, then the whole book)


LAST = int(BookFlag.LAST)
SNAPSHOT = int(BookFlag.SNAPSHOT)
_ALL_FLAGS = LAST | SNAPSHOT

BookSide = Literal["bid", "ask", "none"]  # "none": a clear of the whole book
BookAction = Literal["add", "update", "delete", "clear"]
BookKind = Literal["mbp", "mbo"]

# Integer codes of the columnar form (BookColumns); the strings are the events' values.
SIDES: tuple[BookSide, ...] = ("bid", "ask", "none")
ACTIONS: tuple[BookAction, ...] = ("add", "update", "delete", "clear")
BID, ASK, NO_SIDE = 0, 1, 2
ADD, UPDATE, DELETE, CLEAR = 0, 1, 2, 3
SIDE_CODES = {name: code for code, name in enumerate(SIDES)}
ACTION_CODES = {name: code for code, name in enumerate(ACTIONS)}


def _check_common(event: BookUpdate | OrderUpdate) -> None:
    if event.action not in ACTION_CODES:
        raise DataError("action", f"must be add, update, delete or clear, got {event.action!r}")
    if event.side not in SIDE_CODES:
        raise DataError("side", f"must be bid or ask, got {event.side!r}")
    if event.side == "none" and event.action != "clear":
        raise DataError("side", f"must be bid or ask for {event.action!r} ('none' is for a clear only)")
    if not math.isfinite(event.price):
        raise DataError("price", f"must be a finite number, got {event.price!r}")
    if event.price < 0:
        raise DataError("price", f"must not be negative, got {event.price!r}")
    if event.quantity < 0:
        raise DataError("quantity", f"must not be negative, got {event.quantity}")
    if event.received_ms < 0:
        raise DataError("received_ms", f"must not be negative, got {event.received_ms}")
    if event.seq < 0:
        raise DataError("seq", f"must not be negative, got {event.seq}")
    if event.flags & ~_ALL_FLAGS or event.flags < 0:
        raise DataError("flags", f"unknown bits in {event.flags} (LAST=1, SNAPSHOT=2)")


class BookUpdate(Event, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """MBP: the price level (`side`, `price`) now holds `quantity` (absolute; 0 removes it) in
    `orders` orders."""

    side: BookSide
    price: float
    quantity: int
    orders: int = 0
    action: BookAction = "update"
    received_ms: int = 0
    seq: int = 0
    flags: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_common(self)
        if self.action != "clear" and self.price <= 0:  # the price names the level, deletes included
            raise DataError("price", f"must be positive, got {self.price!r}")
        if self.orders < 0:
            raise DataError("orders", f"must not be negative, got {self.orders}")

    @property
    def is_last(self) -> bool:
        return bool(self.flags & LAST)

    @property
    def is_snapshot(self) -> bool:
        return bool(self.flags & SNAPSHOT)


class OrderUpdate(Event, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """MBO: order `order_id` of broker `agent` now rests at (`side`, `price`) with `quantity`
    remaining (absolute); `delete` or quantity 0 removes it."""

    side: BookSide
    price: float
    quantity: int
    order_id: int
    agent: int = 0
    action: BookAction = "add"
    received_ms: int = 0
    seq: int = 0
    flags: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_common(self)
        if self.action in ("add", "update") and self.price <= 0:  # a delete may carry a zeroed price
            raise DataError("price", f"must be positive, got {self.price!r}")
        if self.order_id < 0:
            raise DataError("order_id", f"must not be negative, got {self.order_id}")
        if self.agent < 0:
            raise DataError("agent", f"must not be negative, got {self.agent}")

    @property
    def is_last(self) -> bool:
        return bool(self.flags & LAST)

    @property
    def is_snapshot(self) -> bool:
        return bool(self.flags & SNAPSHOT)


BookEvent: TypeAlias = BookUpdate | OrderUpdate


class BookBatch(tuple[BookEvent, ...]):
    """The book events of one exchange message, in order, of one symbol; the last is flagged LAST.
    A tuple (it encodes as a JSON array) that also tells its `symbol` and `timestamp_ms`, so a
    stream of ticks and batches can be merged and paced by time."""

    __slots__ = ()

    @property
    def symbol(self) -> str:
        return self[0].symbol

    @property
    def timestamp_ms(self) -> int:
        return self[0].timestamp_ms


class BookFrame(msgspec.Struct, frozen=True, kw_only=True):
    """Book batches on the bus: the JSON payload of a `book_{SYMBOL}` frame on ZMQ_BOOK_PORT,

        {"seq": 812, "symbol": "WDOFUT", "kind": "mbo", "events": [{...}, ...]}

    `events` are one or more whole batches (exchange messages) of updates, in order (`BookUpdate`
    for "mbp", `OrderUpdate` for "mbo"), each as the JSON codec writes it; each batch ends with its
    event flagged LAST, so the frame's last event is flagged LAST and a batch is never split across
    frames. The publisher puts the batches queued together into one frame (never waiting for more):
    a slow flow sends one batch a frame, a fast one many. Two numbers, both per symbol, both
    contiguous and continuing across runs: the frame's `seq` counts frames of the topic, as a tick
    frame's seq counts ticks, and is what the bus's replay ring, heartbeats and gap filling follow;
    each event's `seq` counts updates, so a frame's events carry consecutive seqs and the next
    frame's first is one past its last. A store or reader checks the updates' seqs; a subscriber
    needs only the frames'."""

    seq: int
    symbol: str
    kind: BookKind
    events: Sequence[BookEvent]


def level_update(
    symbol: str,
    timestamp_ms: int,
    side: BookSide,
    price: float,
    quantity: int,
    orders: int = 0,
    action: BookAction = "update",
    *,
    received_ms: int | None = None,
    seq: int = 0,
    flags: int = 0,
) -> BookUpdate:
    """A BookUpdate from the exchange time in ms; `received_ms` defaults to it."""
    return BookUpdate(
        symbol=symbol,
        timestamp=from_ms(timestamp_ms),
        timestamp_ms=timestamp_ms,
        side=side,
        price=price,
        quantity=quantity,
        orders=orders,
        action=action,
        received_ms=timestamp_ms if received_ms is None else received_ms,
        seq=seq,
        flags=flags,
    )


def order_update(
    symbol: str,
    timestamp_ms: int,
    side: BookSide,
    price: float,
    quantity: int,
    order_id: int,
    agent: int = 0,
    action: BookAction = "add",
    *,
    received_ms: int | None = None,
    seq: int = 0,
    flags: int = 0,
) -> OrderUpdate:
    """An OrderUpdate from the exchange time in ms; `received_ms` defaults to it."""
    return OrderUpdate(
        symbol=symbol,
        timestamp=from_ms(timestamp_ms),
        timestamp_ms=timestamp_ms,
        side=side,
        price=price,
        quantity=quantity,
        order_id=order_id,
        agent=agent,
        action=action,
        received_ms=timestamp_ms if received_ms is None else received_ms,
        seq=seq,
        flags=flags,
    )


# --- columns -----------------------------------------------------------------------------------------

# The one declaration of the columnar form: name and dtype, in order (codecs derive from it).
COLUMNS: tuple[tuple[str, type[np.generic]], ...] = (
    ("timestamp_ms", np.int64),
    ("received_ms", np.int64),
    ("seq", np.int64),
    ("side", np.int8),  # SIDE_CODES: bid 0, ask 1, none 2
    ("price", np.float64),
    ("quantity", np.int64),
    ("orders", np.int64),  # MBP only (0 in MBO)
    ("order_id", np.int64),  # MBO only (0 in MBP)
    ("agent", np.int64),  # MBO only (0 in MBP)
    ("action", np.int8),  # ACTION_CODES: add 0, update 1, delete 2, clear 3
    ("flags", np.uint8),  # BookFlag bits
)
COLUMN_NAMES = tuple(name for name, _ in COLUMNS)


@dataclass(frozen=True, eq=False)
class BookColumns:
    """One symbol's book events of one kind as numpy columns (`COLUMNS`), in application order
    (seq order). Arrays are coerced to their declared dtypes on construction."""

    symbol: str
    kind: BookKind
    timestamp_ms: np.ndarray
    received_ms: np.ndarray
    seq: np.ndarray
    side: np.ndarray
    price: np.ndarray
    quantity: np.ndarray
    orders: np.ndarray
    order_id: np.ndarray
    agent: np.ndarray
    action: np.ndarray
    flags: np.ndarray

    def __post_init__(self) -> None:
        if self.kind not in ("mbp", "mbo"):
            raise DataError("kind", f"must be mbp or mbo, got {self.kind!r}")
        n = None
        for name, dtype in COLUMNS:
            array = np.ascontiguousarray(getattr(self, name), dtype=dtype)
            if array.ndim != 1:
                raise DataError(name, f"must be one-dimensional, got shape {array.shape}")
            if n is None:
                n = array.size
            elif array.size != n:
                raise DataError(name, f"has {array.size} rows, timestamp_ms has {n}")
            object.__setattr__(self, name, array)

    def __len__(self) -> int:
        return int(self.timestamp_ms.size)

    def columns(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in COLUMN_NAMES}

    @classmethod
    def empty(cls, symbol: str, kind: BookKind) -> BookColumns:
        return cls(symbol, kind, **{name: np.empty(0, dtype) for name, dtype in COLUMNS})

    @classmethod
    def from_events(
        cls, events: Iterable[BookEvent], *, symbol: str | None = None, kind: BookKind | None = None
    ) -> BookColumns:
        """Columns of events of one symbol and one kind (BookUpdate: mbp, OrderUpdate: mbo), in the
        order given. `symbol` and `kind` are needed only when `events` is empty."""
        rows = list(events)
        if not rows:
            if symbol is None or kind is None:
                raise DataError("events", "empty: give symbol and kind")
            return cls.empty(symbol, kind)
        first = rows[0]
        symbol = first.symbol if symbol is None else symbol
        found: BookKind = "mbp" if isinstance(first, BookUpdate) else "mbo"
        kind = found if kind is None else kind
        wanted = BookUpdate if kind == "mbp" else OrderUpdate
        for event in rows:
            if type(event) is not wanted:
                raise DataError("kind", f"{kind} columns take {wanted.__name__}, got {type(event).__name__}")
            if event.symbol != symbol:
                raise DataError("symbol", f"columns of {symbol} got an event of {event.symbol}")
        n = len(rows)
        sides, actions = SIDE_CODES, ACTION_CODES
        ts = np.fromiter((e.timestamp_ms for e in rows), np.int64, n)
        received = np.fromiter((e.received_ms for e in rows), np.int64, n)
        seq = np.fromiter((e.seq for e in rows), np.int64, n)
        side = np.fromiter((sides[e.side] for e in rows), np.int8, n)
        price = np.fromiter((e.price for e in rows), np.float64, n)
        quantity = np.fromiter((e.quantity for e in rows), np.int64, n)
        action = np.fromiter((actions[e.action] for e in rows), np.int8, n)
        flags = np.fromiter((e.flags for e in rows), np.uint8, n)
        zeros = np.zeros(n, np.int64)
        if kind == "mbp":
            orders = np.fromiter((e.orders for e in rows), np.int64, n)  # type: ignore[union-attr]
            order_id, agent = zeros, zeros
        else:
            orders = zeros
            order_id = np.fromiter((e.order_id for e in rows), np.int64, n)  # type: ignore[union-attr]
            agent = np.fromiter((e.agent for e in rows), np.int64, n)  # type: ignore[union-attr]
        return cls(
            symbol, kind, ts, received, seq, side, price, quantity, orders, order_id, agent, action, flags
        )

    def events(self) -> list[BookEvent]:
        """The rows back as events (validated again on construction)."""
        out: list[BookEvent] = []
        cols = [getattr(self, name).tolist() for name in COLUMN_NAMES]
        for ts, received, seq, side, price, qty, orders, oid, agent, action, flags in zip(*cols, strict=True):
            if self.kind == "mbp":
                out.append(
                    level_update(
                        self.symbol,
                        ts,
                        SIDES[side],
                        price,
                        qty,
                        orders,
                        ACTIONS[action],
                        received_ms=received,
                        seq=seq,
                        flags=flags,
                    )
                )
            else:
                out.append(
                    order_update(
                        self.symbol,
                        ts,
                        SIDES[side],
                        price,
                        qty,
                        oid,
                        agent,
                        ACTIONS[action],
                        received_ms=received,
                        seq=seq,
                        flags=flags,
                    )
                )
        return out

    @staticmethod
    def concat(parts: Sequence[BookColumns]) -> BookColumns:
        """The rows of `parts` one after the other (same symbol and kind)."""
        if not parts:
            raise DataError("parts", "nothing to concatenate")
        first = parts[0]
        for part in parts[1:]:
            if (part.symbol, part.kind) != (first.symbol, first.kind):
                raise DataError("parts", f"{part.symbol}/{part.kind} with {first.symbol}/{first.kind}")
        return BookColumns(
            first.symbol,
            first.kind,
            **{name: np.concatenate([getattr(p, name) for p in parts]) for name in COLUMN_NAMES},
        )

    def take(self, index: np.ndarray | slice) -> BookColumns:
        """Rows by integer positions, a boolean mask or a slice."""
        return BookColumns(
            self.symbol, self.kind, **{name: getattr(self, name)[index] for name in COLUMN_NAMES}
        )

    def slice_time(self, start_ms: int, end_ms: int) -> BookColumns:
        """Rows stamped within [start_ms, end_ms] (inclusive, as every tickvault range), order kept.
        A range may cut a batch; readers apply only up to the last LAST row they were given."""
        ts = self.timestamp_ms
        return self.take((ts >= start_ms) & (ts <= end_ms))

    def batch_ends(self) -> np.ndarray:
        """Positions of the rows that close a batch (LAST set)."""
        return np.flatnonzero(self.flags & LAST)

    def equals(self, other: BookColumns) -> bool:
        return (self.symbol, self.kind) == (other.symbol, other.kind) and all(
            np.array_equal(getattr(self, name), getattr(other, name)) for name in COLUMN_NAMES
        )
