"""The slow reference books: plain Python, written for clarity, not speed. The oracles of
tests/test_book.py and tests/test_profitdll_book.py.

- `ReferenceLevels`: the MBP layout's semantics. Each update sets the absolute quantity of the level
  (side, price); quantity 0 or a delete removes it; a clear empties one side or both.
- `ReferenceOrders`: the MBO layout's semantics. add/update: the order now rests at (side, price)
  with this remaining quantity (absolute); delete or quantity 0 removes it. Levels are the sums.
- `ReferencePositional`: the ProfitDLL manual's positional lists. Per side a list whose END is the
  best; a position counts from the end (index = size - position - 1); atAdd inserts so that the new
  entry has that position, atEdit changes it, atDelete removes it, atDeleteFrom removes it and
  everything better (to the end), a full book replaces the list.

A book is read only after a batch's LAST event: `apply_batches` yields the state after each batch.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from tickvault.domain.book import LAST

State = dict[str, list[tuple[float, int, int]]]  # side -> [(price, quantity, orders)] best first


def _sorted_side(levels: dict[float, tuple[int, int]], side: str) -> list[tuple[float, int, int]]:
    prices = sorted(levels, reverse=(side == "bid"))
    return [(price, levels[price][0], levels[price][1]) for price in prices]


def _sides_of(side: str) -> list[str]:
    return ["bid", "ask"] if side == "none" else [side]


class ReferenceLevels:
    def __init__(self) -> None:
        self.book: dict[str, dict[float, tuple[int, int]]] = {"bid": {}, "ask": {}}

    def apply(self, event: Any) -> None:
        if event.action == "clear":
            for side in _sides_of(event.side):
                self.book[side] = {}
            return
        levels = self.book[event.side]
        if event.action == "delete" or event.quantity == 0:
            levels.pop(event.price, None)
        else:
            levels[event.price] = (event.quantity, event.orders)

    def state(self) -> State:
        return {side: _sorted_side(self.book[side], side) for side in ("bid", "ask")}


class ReferenceOrders:
    def __init__(self) -> None:
        self.orders: dict[int, tuple[str, float, int]] = {}  # id -> (side, price, quantity)

    def apply(self, event: Any) -> None:
        if event.action == "clear":
            cleared = _sides_of(event.side)
            self.orders = {i: o for i, o in self.orders.items() if o[0] not in cleared}
            return
        if event.action == "delete" or event.quantity == 0:
            self.orders.pop(event.order_id, None)
        else:
            self.orders[event.order_id] = (event.side, event.price, event.quantity)

    def state(self) -> State:
        out: State = {}
        for side in ("bid", "ask"):
            levels: dict[float, tuple[int, int]] = {}
            for order_side, price, quantity in self.orders.values():
                if order_side == side:
                    total, count = levels.get(price, (0, 0))
                    levels[price] = (total + quantity, count + 1)
            out[side] = _sorted_side(levels, side)
        return out


def reference_for(kind: str) -> ReferenceLevels | ReferenceOrders:
    return ReferenceLevels() if kind == "mbp" else ReferenceOrders()


def apply_batches(events: Iterable[Any], kind: str) -> Iterator[tuple[Any, State]]:
    """(the batch's last event, the book after it) for every complete batch."""
    book = reference_for(kind)
    for event in events:
        book.apply(event)
        if event.flags & LAST:
            yield event, book.state()


def state_after(events: Iterable[Any], kind: str) -> State:
    book = reference_for(kind)
    for event in events:
        book.apply(event)
    return book.state()


def is_sorted_positive_uncrossed(state: State) -> tuple[bool, bool, bool]:
    """(each side sorted best first, every quantity > 0, not crossed)."""
    bids, asks = state["bid"], state["ask"]
    ordered = all(a[0] > b[0] for a, b in zip(bids, bids[1:], strict=False)) and all(
        a[0] < b[0] for a, b in zip(asks, asks[1:], strict=False)
    )
    positive = all(q > 0 for side in (bids, asks) for _, q, _ in side)
    uncrossed = not bids or not asks or bids[0][0] < asks[0][0]
    return ordered, positive, uncrossed


class ReferencePositional:
    """ProfitDLL's positional lists, one per side (0 = buy, 1 = sell); entries are dicts."""

    def __init__(self) -> None:
        self.lists: dict[int, list[dict[str, Any]]] = {0: [], 1: []}

    def add(self, side: int, position: int, entry: dict[str, Any]) -> None:
        book = self.lists[side]
        book.insert(len(book) - position, entry)

    def edit(self, side: int, position: int, changes: dict[str, Any]) -> None:
        book = self.lists[side]
        book[len(book) - position - 1].update(changes)

    def delete(self, side: int, position: int) -> None:
        book = self.lists[side]
        del book[len(book) - position - 1]

    def delete_from(self, side: int, position: int) -> None:
        book = self.lists[side]
        del book[len(book) - position - 1 :]

    def full(self, side: int, entries: Sequence[dict[str, Any]]) -> None:
        self.lists[side] = [dict(e) for e in entries]

    def levels(self) -> State:
        """Aggregated by price (entries with quantity > 0), best first."""
        out: State = {}
        for code, side in ((0, "bid"), (1, "ask")):
            levels: dict[float, tuple[int, int]] = {}
            for entry in self.lists[code]:
                if entry["quantity"] > 0:
                    total, count = levels.get(entry["price"], (0, 0))
                    levels[entry["price"]] = (total + entry["quantity"], count + entry.get("count", 1))
            out[side] = _sorted_side(levels, side)
        return out
