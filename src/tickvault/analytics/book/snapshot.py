"""The book after a given row as a snapshot group, vectorised: what the store keeps every N updates.

`snapshot_at(cols, stop)` equals, row for row, the live engine's export (`LevelBook.snapshot`,
`OrderBook.snapshot`) after applying rows 0..stop, without the per-update Python loop:

- MBP: a clear of the whole book, then each side's levels best first (bids, then asks): the last
  row of every (side, price) after that side's last clear (`history`'s as-of algorithm, all levels).
- MBO: a clear, then every resting order in time priority, which is the live engine's dict order.
  An order goes to the back of the queue when it is (re)inserted: it had no live state (new, deleted
  or cleared since), or it moved price or side, or it grew; a reduction in place keeps its place. So
  per order the row of its last re-insertion is found (one stable sort by order id; a running
  maximum of the re-insertion rows, which never crosses from one order to the next because every
  order's rows start with one), and the resting orders are sorted by it.

`valid_through` tells whether such a book is known in full (a clear of each side, no seq gap since).

Every row carries the time, received time and seq given (by default those of row `stop`: the
snapshot stands for the book after that update, so the next update continues the sequence).
"""

from __future__ import annotations

import numpy as np

from tickvault.analytics.book.history import (
    _clear_rows,
    _last_before,
    _mbp_side,
    _stable_order,
    _validity,
)
from tickvault.domain.book import ADD, ASK, BID, CLEAR, DELETE, LAST, NO_SIDE, SNAPSHOT, BookColumns
from tickvault.errors import DataError


def snapshot_at(
    cols: BookColumns,
    stop: int,
    *,
    timestamp_ms: int | None = None,
    received_ms: int | None = None,
    seq: int | None = None,
) -> BookColumns:
    """The book after rows 0..`stop` of `cols` as a snapshot group (see the module docstring).
    `timestamp_ms` defaults to the effective time at `stop` (the running maximum), `received_ms`
    to that time too (as the live engine's export), `seq` to the seq of row `stop`."""
    if not 0 <= stop < len(cols):
        raise DataError("stop", f"row {stop} is outside the {len(cols)} rows given")
    ts = int(cols.timestamp_ms[: stop + 1].max()) if timestamp_ms is None else timestamp_ms
    received = ts if received_ms is None else received_ms
    number = int(cols.seq[stop]) if seq is None else seq
    if cols.kind == "mbp":
        side, price, quantity, orders = _levels(cols, stop)
        order_id = agent = np.zeros(side.size, np.int64)
    else:
        side, price, quantity, order_id, agent = _orders(cols, stop)
        orders = np.zeros(side.size, np.int64)
    n = side.size + 1
    flags = np.full(n, SNAPSHOT, np.uint8)
    flags[-1] |= LAST
    action = np.full(n, ADD, np.int8)
    action[0] = CLEAR
    return BookColumns(
        cols.symbol,
        cols.kind,
        np.full(n, ts, np.int64),
        np.full(n, received, np.int64),
        np.full(n, number, np.int64),
        np.concatenate([[NO_SIDE], side]),
        np.concatenate([[0.0], price]),
        np.concatenate([[0], quantity]),
        np.concatenate([[0], orders]),
        np.concatenate([[0], order_id]),
        np.concatenate([[0], agent]),
        action,
        flags,
    )


def valid_through(cols: BookColumns, stop: int, *, opening: bool = True) -> bool:
    """Whether the book after row `stop` is known in full: both sides known from a clear at or
    before it and no seq missing since (as `book_at`'s `valid`). `opening=False`: a clear in row 0
    (a stored snapshot that was itself made across a gap) does not count."""
    return bool(valid_rows(cols, np.array([stop]), opening=opening)[0])


def valid_rows(cols: BookColumns, stops: np.ndarray, *, opening: bool = True) -> np.ndarray:
    """`valid_through` for many rows at once (-1: nothing applied, never valid)."""
    clears = _clear_rows(cols)
    if not opening:
        clears = (clears[0][clears[0] > 0], clears[1][clears[1] > 0])
    stops = np.asarray(stops, np.int64)
    valid: np.ndarray = _validity(cols, stops, clears) & (stops >= 0)
    return valid


def _levels(cols: BookColumns, stop: int) -> tuple[np.ndarray, ...]:
    clears = _clear_rows(cols)
    parts = []
    for side in (BID, ASK):
        start = int(_last_before(clears[side], np.array([stop]))[0]) + 1
        levels = _mbp_side(cols, side, start, stop + 1, None)
        parts.append((np.full(levels.price.size, side, np.int8), *levels))
    return tuple(np.concatenate([a, b]) for a, b in zip(*parts, strict=True))


def _orders(cols: BookColumns, stop: int) -> tuple[np.ndarray, ...]:
    n = stop + 1
    action, side = cols.action[:n], cols.side[:n]
    rows = np.flatnonzero(action != CLEAR)
    size = rows.size
    if size == 0:
        empty = np.empty(0, np.int64)
        return np.empty(0, np.int8), np.empty(0, np.float64), empty, empty, empty
    o_side, o_price, o_qty = side[rows], cols.price[:n][rows], cols.quantity[:n][rows]
    o_id = cols.order_id[:n][rows]
    alive = (action[rows] != DELETE) & (o_qty > 0)
    # per order row, the clears of each side at or before it (an order's state dies with its side's)
    clear = action == CLEAR
    epoch = (
        np.searchsorted(np.flatnonzero(clear & (side != ASK)), rows, side="right"),
        np.searchsorted(np.flatnonzero(clear & (side != BID)), rows, side="right"),
    )
    by_id = _stable_order(o_id)
    same = o_id[by_id[1:]] == o_id[by_id[:-1]]
    prev = np.full(size, -1, np.int64)
    prev[by_id[1:][same]] = by_id[:-1][same]
    p = np.maximum(prev, 0)
    p_side = o_side[p]
    # the previous state still rests here: alive, and its side not cleared between it and this row
    rests = (prev >= 0) & alive[p]
    rests &= np.where(p_side == BID, epoch[0][p] == epoch[0], epoch[1][p] == epoch[1])
    keeps = rests & (p_side == o_side) & (o_price[p] == o_price) & (o_qty <= o_qty[p])
    reinserted = alive & ~keeps
    # in id order, the last re-insertion at or before each row (an alive row's is in its own order)
    marks = np.where(reinserted[by_id], np.arange(size), -1)
    priority = np.empty(size, np.int64)
    priority[by_id] = by_id[np.maximum.accumulate(marks)]
    last = np.ones(size, bool)  # the last row of each order id
    last[by_id[:-1][same]] = False
    clear_rows = _clear_rows(cols)  # an order rests at `stop` if its side was not cleared since
    final_epoch = [int(np.searchsorted(clear_rows[s], stop, side="right")) for s in (BID, ASK)]
    resting = last & alive
    resting &= np.where(o_side == BID, epoch[0] == final_epoch[0], epoch[1] == final_epoch[1])
    picked = np.flatnonzero(resting)
    picked = picked[np.argsort(priority[picked], kind="stable")]
    return o_side[picked], o_price[picked], o_qty[picked], o_id[picked], cols.agent[:n][rows][picked]
