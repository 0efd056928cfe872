"""Past order books reconstructed from `BookColumns`, vectorised with numpy. No I/O.

Over one symbol's columns in application order (semantics: `domain.book`, and `live`'s docstring):
- Visibility. The effective time of row i is the running maximum of `timestamp_ms` up to i (a log
  is applied in order even when an exchange clock steps back). The cutoff for time T is the last
  batch end (LAST row) whose effective time is <= T: rows up to it are applied, none after.
- Clears. A clear starts a new epoch of its side(s). A row counts at cutoff c only if no clear of
  its side lies between it and c.
- `book_at(T)`: rows after each side's last clear up to the cutoff. MBP: the last row per
  (side, price) (np.unique over the reversed rows); MBO: the last row per order id, alive ones then
  grouped by (side, price) (sums by np.bincount). O(m log m) in the m rows since the snapshot, which
  the store keeps bounded (history blocks start with a snapshot).
- Level rows. Frames and quotes work on level rows: (row, side, level, quantity after, orders
  after). MBP rows are level rows (delete -> 0). An MBO row removes its order's previous state (the
  previous row of the same id, found by one stable sort on order id, if alive and not cleared since)
  and adds its new one; per (side, level, epoch) cumulative sums give each level's absolute quantity
  and order count after every row.
- Level codes. Prices map to integer codes ascending with price: a dense grid of the instrument's
  tick when every price sits exactly on it (O(m)), else np.unique (O(m log m)).
- `book_frames(start, end, every, N)` (`frames_at` for any ascending times): steps t_k and their
  cutoffs c_k. A level row becomes visible
  at step s = the first k with c_k >= its row. A levels x steps grid holds the position of the last
  visible level row per cell: set where a row is the last of its (level, step) pair (one stable sort
  by level), forward-filled with np.maximum.accumulate along the steps; the epoch check empties what
  a clear emptied; the top N per step come from a cumulative count of non-empty levels from the
  best. Steps go in chunks so the grid stays within ~2M cells. O(m log m + levels x steps). With
  `orders=True` the same cells give each level's order count (MBP: the row's; MBO: a second sum).
  MBO frames skip the per-row level totals: each level change is summed into the cell of the step
  where it becomes visible (np.bincount), the grid is a running sum along the steps (np.cumsum), and
  a clear subtracts, where it becomes visible, everything its epoch had added.
- `quotes()`: the best level per side after every batch, by painting: within a chunk of batches the
  best bid is at most max(best before the chunk, highest level set during it); levels holding rows
  are visited downwards, each settling the batches where it holds quantity, until all are settled.
  Then only the batches that changed the top of the book are kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from tickvault.analytics.book.live import Levels
from tickvault.domain.book import ASK, BID, CLEAR, DELETE, BookColumns
from tickvault.domain.instruments import instrument_for
from tickvault.errors import DataError

_CELLS = 1 << 21  # grid cells per chunk of steps (int64: 16 MB)
_QUOTE_CHUNK = 16_384  # batches per painting chunk


# --- common parts --------------------------------------------------------------------------------


def _effective_time(cols: BookColumns) -> np.ndarray:
    return np.maximum.accumulate(cols.timestamp_ms) if len(cols) else cols.timestamp_ms


def cutoffs(cols: BookColumns, times_ms: np.ndarray) -> np.ndarray:
    """Per time T (ascending), the position of the last row applied at T: the last batch end whose
    effective time is <= T; -1 when no batch is complete by then."""
    ends = cols.batch_ends()
    end_time = _effective_time(cols)[ends]
    j = np.searchsorted(end_time, np.asarray(times_ms, np.int64), side="right")
    return np.where(j > 0, ends[np.maximum(j - 1, 0)], -1) if ends.size else np.full(j.shape, -1, np.int64)


def _clear_rows(cols: BookColumns) -> tuple[np.ndarray, np.ndarray]:
    """Rows that clear the bid side, and the ask side (a clear of both is in each)."""
    clear = cols.action == CLEAR
    return (
        np.flatnonzero(clear & (cols.side != ASK)),
        np.flatnonzero(clear & (cols.side != BID)),
    )


def _last_before(rows: np.ndarray, at: np.ndarray) -> np.ndarray:
    """Per value in `at`, the last of the sorted `rows` <= it; -1 when none."""
    if rows.size == 0:
        return np.full(np.shape(at), -1, np.int64)
    j = np.searchsorted(rows, at, side="right")
    return np.where(j > 0, rows[np.maximum(j - 1, 0)], -1)


def _validity(cols: BookColumns, cut: np.ndarray, clears: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Per cutoff: both sides known from a clear at or before it, and no seq gap since (a gap: a
    row whose seq jumps forward by more than one; repeated seqs, as a snapshot's, are none)."""
    last_bid, last_ask = (_last_before(rows, cut) for rows in clears)
    start = np.minimum(last_bid, last_ask)
    gap_rows = np.flatnonzero(np.diff(cols.seq) > 1) + 1  # a jump forward just before these rows
    gaps = np.searchsorted(gap_rows, cut, side="right") - np.searchsorted(gap_rows, start, side="right")
    valid: np.ndarray = (cut >= 0) & (last_bid >= 0) & (last_ask >= 0) & (gaps == 0)
    return valid


def level_codes(price: np.ndarray, tick_size: float | None) -> tuple[np.ndarray, np.ndarray]:
    """(codes, level prices): integer codes ascending with price and `levels[codes] == price`.
    A dense grid of `tick_size` when every price sits exactly on it (unused grid points are NaN in
    `levels`), else the sorted distinct prices."""
    if price.size == 0:
        return np.empty(0, np.int64), np.empty(0, np.float64)
    if tick_size and tick_size > 0:
        ticks = np.rint(price / tick_size)
        low, high = float(ticks.min()), float(ticks.max())
        if np.isfinite(low) and np.isfinite(high) and high - low < 4_000_000:
            codes = (ticks - low).astype(np.int64)
            levels = np.full(int(high - low) + 1, np.nan)
            levels[codes] = price
            if np.array_equal(levels[codes], price):  # exactly one price per grid point
                return codes, levels
    levels, codes = np.unique(price, return_inverse=True)
    return codes.astype(np.int64).reshape(-1), levels


class LevelRows(NamedTuple):
    """Level changes in application order: after row `row`, level `code` of `side` holds
    `quantity` in `orders` orders. Several may share a row (an MBO order moving price)."""

    row: np.ndarray  # int64, nondecreasing
    side: np.ndarray  # int8 (BID, ASK)
    code: np.ndarray  # int64 into `levels`
    quantity: np.ndarray  # int64
    orders: np.ndarray  # int64
    levels: np.ndarray  # float64: price of each code


def level_rows(cols: BookColumns, stop: int | None = None, *, tick_size: float | None = None) -> LevelRows:
    """The level rows of rows [0, stop] (all by default). MBP rows map one to one; MBO rows become
    the differences they make to their levels, summed per (side, level, clear epoch)."""
    n = len(cols) if stop is None else stop + 1
    tick = instrument_for(cols.symbol).tick_size if tick_size is None else tick_size
    side, price, quantity, action = cols.side[:n], cols.price[:n], cols.quantity[:n], cols.action[:n]
    if cols.kind == "mbp":
        rows = np.flatnonzero(action != CLEAR)
        codes, levels = level_codes(price[rows], tick)
        alive = (action[rows] != DELETE) & (quantity[rows] > 0)
        return LevelRows(
            rows,
            side[rows],
            codes,
            np.where(alive, quantity[rows], 0),
            np.where(alive, cols.orders[:n][rows], 0),
            levels,
        )
    if not np.any(action != CLEAR):
        return LevelRows(
            *(np.empty(0, t) for t in (np.int64, np.int8, np.int64, np.int64, np.int64, np.float64))
        )
    return _mbo_level_rows(cols, n, tick)


def _stable_order(keys: np.ndarray) -> np.ndarray:
    """np.argsort(keys, kind="stable") of integer keys, by 16-bit radix passes when their range
    fits 32 bits (numpy radix-sorts 16-bit keys only; its stable int64 sort is a timsort)."""
    if keys.size == 0:
        return np.empty(0, np.intp)
    low = int(keys.min())
    span = int(keys.max()) - low
    if span >= 1 << 32:
        return np.argsort(keys, kind="stable")
    shifted = (keys - low).astype(np.uint32) if low else keys.astype(np.uint32)
    order = np.argsort((shifted & 0xFFFF).astype(np.uint16), kind="stable")
    if span < 1 << 16:
        return order
    return order[np.argsort((shifted[order] >> 16).astype(np.uint16), kind="stable")]


class _Deltas(NamedTuple):
    """What MBO rows do to their levels: after order row `row`, level `code` of `side` changed by
    `quantity` and `orders` (a removal of an order's previous state before the addition of its new
    one)."""

    row: np.ndarray
    side: np.ndarray
    code: np.ndarray
    quantity: np.ndarray
    orders: np.ndarray
    levels: np.ndarray
    epoch: np.ndarray | None  # per delta: its side's clears at or before its row; None: no clear
    # between the first and the last order row (one epoch throughout)


def _mbo_deltas(cols: BookColumns, n: int, tick: float) -> _Deltas:
    side, price, quantity, action = cols.side[:n], cols.price[:n], cols.quantity[:n], cols.action[:n]
    rows = np.flatnonzero(action != CLEAR)
    size = rows.size
    o_side, o_qty, o_id = side[rows], quantity[rows], cols.order_id[:n][rows]
    alive = (action[rows] != DELETE) & (o_qty > 0)
    codes = np.zeros(size, np.int64)  # codes of alive states only: a delete's price may be zeroed
    codes[alive], levels = level_codes(price[rows][alive], tick)
    # clear epochs: per order row, the clears of each side at or before it
    clear = action == CLEAR
    epoch_bid = np.searchsorted(np.flatnonzero(clear & (side != ASK)), rows, side="right")
    epoch_ask = np.searchsorted(np.flatnonzero(clear & (side != BID)), rows, side="right")
    # the previous row of the same order id (a stable sort keeps row order within an id)
    by_id = _stable_order(o_id)
    same = o_id[by_id[1:]] == o_id[by_id[:-1]]
    prev = np.full(size, -1, np.int64)
    prev[by_id[1:][same]] = by_id[:-1][same]
    index = np.arange(size)
    p = np.maximum(prev, 0)
    # one epoch throughout (no clear after the first order row): nothing to check per row
    constant = size == 0 or (epoch_bid[0] == epoch_bid[-1] and epoch_ask[0] == epoch_ask[-1])
    removal = (prev >= 0) & alive[p]
    if not constant:
        removal &= np.where(o_side[p] == BID, epoch_bid[p] == epoch_bid, epoch_ask[p] == epoch_ask)
    # in row order, a removal (of the previous state) before an addition (of the new)
    keep = np.empty(2 * size, bool)
    keep[0::2], keep[1::2] = removal, alive
    src = np.empty(2 * size, np.int64)
    src[0::2], src[1::2] = p, index
    src = src[keep]  # the order row whose state is removed or added
    sign = np.tile(np.array([-1, 1], np.int64), size)[keep]
    d_pos = np.repeat(index, 2)[keep]
    d_side = o_side[src]
    epoch = None if constant else np.where(d_side == BID, epoch_bid[d_pos], epoch_ask[d_pos])
    return _Deltas(rows[d_pos], d_side, codes[src], sign * o_qty[src], sign, levels, epoch)


def _mbo_level_rows(cols: BookColumns, n: int, tick: float) -> LevelRows:
    d = _mbo_deltas(cols, n, tick)
    # per (epoch, side, level): running sums of quantity and order count
    width = max(int(d.levels.size), 1)
    group = d.side.astype(np.int64) * width + d.code
    if d.epoch is not None:
        group += d.epoch * (2 * width)
    by_group = _stable_order(group)
    g = group[by_group]
    starts = np.flatnonzero(np.concatenate([[g.size > 0], g[1:] != g[:-1]]))
    lengths = np.diff(np.append(starts, g.size))
    after = []
    for delta in (d.quantity, d.orders):
        ordered = delta[by_group]
        running = np.cumsum(ordered)
        out = np.empty(g.size, np.int64)
        out[by_group] = running - np.repeat(running[starts] - ordered[starts], lengths)
        after.append(out)
    return LevelRows(d.row, d.side, d.code, after[0], after[1], d.levels)


# --- the book at one time -----------------------------------------------------------------------


@dataclass(frozen=True)
class BookAt:
    """The book after the last complete batch at or before `at_ms`."""

    symbol: str
    at_ms: int
    as_of_ms: int | None  # effective time of the last batch applied (None: nothing applied)
    seq: int  # seq of the last row applied (0 when none)
    valid: bool  # both sides known from a clear (snapshot) and no seq gap since
    bid: Levels
    ask: Levels

    def table(self) -> dict[str, np.ndarray]:
        """Columns side, level (1 = best), price, quantity, orders: bids then asks."""
        nb, na = self.bid.price.size, self.ask.price.size
        return {
            "side": np.array(["bid"] * nb + ["ask"] * na, dtype=object),
            "level": np.concatenate([np.arange(1, nb + 1), np.arange(1, na + 1)]).astype(np.int64),
            "price": np.concatenate([self.bid.price, self.ask.price]),
            "quantity": np.concatenate([self.bid.quantity, self.ask.quantity]),
            "orders": np.concatenate([self.bid.orders, self.ask.orders]),
        }


def book_at(cols: BookColumns, at_ms: int, depth: int | None = 10) -> BookAt:
    """The book of `cols` after its last complete batch at or before `at_ms` (`depth` levels a side,
    all with None). Valid when both sides start from a clear and no seq is missing since."""
    cut = cutoffs(cols, np.array([at_ms]))
    c = int(cut[0])
    if c < 0:
        return BookAt(cols.symbol, at_ms, None, 0, False, Levels.empty(), Levels.empty())
    clears = _clear_rows(cols)
    valid = bool(_validity(cols, cut, clears)[0])
    last_clear = [int(_last_before(rows, cut)[0]) for rows in clears]
    if cols.kind == "mbp":
        sides = [_mbp_side(cols, s, last_clear[s] + 1, c + 1, depth) for s in (BID, ASK)]
    else:
        sides = _mbo_sides(cols, last_clear, c + 1, depth)
    as_of = int(_effective_time(cols)[c])
    return BookAt(cols.symbol, at_ms, as_of, int(cols.seq[c]), valid, sides[0], sides[1])


def _best_first(
    side: int, price: np.ndarray, quantity: np.ndarray, orders: np.ndarray, depth: int | None
) -> Levels:
    keep = quantity > 0
    price, quantity, orders = price[keep], quantity[keep], orders[keep]
    if side == BID:  # ascending from np.unique: bids best first is descending
        price, quantity, orders = price[::-1], quantity[::-1], orders[::-1]
    if depth is not None:
        price, quantity, orders = price[:depth], quantity[:depth], orders[:depth]
    return Levels(price.copy(), quantity.astype(np.int64), orders.astype(np.int64))


def _mbp_side(cols: BookColumns, side: int, start: int, stop: int, depth: int | None) -> Levels:
    window = slice(start, stop)
    rows = np.flatnonzero((cols.side[window] == side) & (cols.action[window] != CLEAR))[::-1] + start
    price, first = np.unique(cols.price[rows], return_index=True)  # first in reversed = last applied
    last = rows[first]
    alive = cols.action[last] != DELETE
    return _best_first(
        side, price, np.where(alive, cols.quantity[last], 0), np.where(alive, cols.orders[last], 0), depth
    )


def _mbo_sides(cols: BookColumns, last_clear: list[int], stop: int, depth: int | None) -> list[Levels]:
    start = min(last_clear) + 1
    rows = np.flatnonzero(cols.action[start:stop] != CLEAR)[::-1] + start
    _, first = np.unique(cols.order_id[rows], return_index=True)
    last = rows[first]  # the last row of every order id
    side = cols.side[last]
    alive = (cols.action[last] != DELETE) & (cols.quantity[last] > 0)
    alive &= last > np.where(side == BID, last_clear[BID], last_clear[ASK])  # not cleared since
    out = []
    for s in (BID, ASK):
        mine = last[alive & (side == s)]
        price, inverse = np.unique(cols.price[mine], return_inverse=True)
        quantity = np.bincount(inverse, weights=cols.quantity[mine], minlength=price.size)
        count = np.bincount(inverse, minlength=price.size)
        out.append(_best_first(s, price, np.rint(quantity).astype(np.int64), count, depth))
    return out


# --- frames at a regular step -------------------------------------------------------------------


@dataclass(frozen=True)
class BookFrames:
    """The book every `every_ms` from `start_ms`: one row per step, `depth` levels a side (price NaN
    and quantity 0 past a side's end); `valid` as in `BookAt`; the levels' order counts when asked
    for (MBP: as stored, MBO: the orders resting there)."""

    time_ms: np.ndarray  # int64 [K]
    bid_price: np.ndarray  # float64 [K, N]
    bid_quantity: np.ndarray  # int64 [K, N]
    ask_price: np.ndarray
    ask_quantity: np.ndarray
    valid: np.ndarray  # bool [K]
    bid_orders: np.ndarray | None = None  # int64 [K, N]
    ask_orders: np.ndarray | None = None

    def columns(self) -> dict[str, np.ndarray]:
        """bid_px_1..N, bid_sz_1..N, ask_px_1..N, ask_sz_1..N (the store's DataFrame columns), then
        bid_orders_1..N, ask_orders_1..N when counted."""
        out: dict[str, np.ndarray] = {}
        counts = (
            [("bid_orders", self.bid_orders), ("ask_orders", self.ask_orders)]
            if self.bid_orders is not None and self.ask_orders is not None
            else []
        )
        for name, matrix in (
            ("bid_px", self.bid_price),
            ("bid_sz", self.bid_quantity),
            ("ask_px", self.ask_price),
            ("ask_sz", self.ask_quantity),
            *counts,
        ):
            for i in range(matrix.shape[1]):
                out[f"{name}_{i + 1}"] = matrix[:, i]
        return out


def book_frames(
    cols: BookColumns,
    start_ms: int,
    end_ms: int,
    every_ms: int,
    depth: int = 10,
    *,
    tick_size: float | None = None,
    orders: bool = False,
) -> BookFrames:
    """The book at start_ms, start_ms + every_ms, ... <= end_ms, each after the last complete batch
    at or before that step."""
    if every_ms <= 0:
        raise DataError("every", f"must be positive, got {every_ms} ms")
    times = np.arange(start_ms, end_ms + 1, every_ms, dtype=np.int64)
    return frames_at(cols, times, depth, tick_size=tick_size, orders=orders)


def frames_at(
    cols: BookColumns,
    times_ms: np.ndarray,
    depth: int = 10,
    *,
    tick_size: float | None = None,
    orders: bool = False,
) -> BookFrames:
    """The book at each of `times_ms` (ascending, repeats allowed), each after the last complete
    batch at or before that time: `book_frames` at any times, e.g. the ticks' (the features' backfill).
    `orders`: the levels' order counts too."""
    if depth <= 0:
        raise DataError("depth", f"must be positive, got {depth}")
    times = np.asarray(times_ms, np.int64)
    if times.size > 1 and np.any(np.diff(times) < 0):
        raise DataError("times", "must be in ascending order")
    k = times.size
    cut = cutoffs(cols, times)
    clears = _clear_rows(cols)
    frames = BookFrames(
        times,
        np.full((k, depth), np.nan),
        np.zeros((k, depth), np.int64),
        np.full((k, depth), np.nan),
        np.zeros((k, depth), np.int64),
        _validity(cols, cut, clears) if k else np.zeros(0, bool),
        np.zeros((k, depth), np.int64) if orders else None,
        np.zeros((k, depth), np.int64) if orders else None,
    )
    if k == 0 or cut[-1] < 0:
        return frames
    tick = instrument_for(cols.symbol).tick_size if tick_size is None else tick_size
    deltas = _mbo_deltas(cols, int(cut[-1]) + 1, tick) if cols.kind == "mbo" else None
    lv = None if deltas else level_rows(cols, int(cut[-1]), tick_size=tick)
    for side in (BID, ASK):
        out = (
            (frames.bid_price, frames.bid_quantity, frames.bid_orders)
            if side == BID
            else (frames.ask_price, frames.ask_quantity, frames.ask_orders)
        )
        clear_rows = clears[side][clears[side] <= cut[-1]]
        if deltas is not None:
            _fill_side_from_deltas(side, deltas, cut, clear_rows, depth, *out)
        else:
            assert lv is not None
            first = int(_last_before(clear_rows, cut[:1])[0])  # rows before the first step's clear are dead
            _fill_side(side, lv, (lv.side == side) & (lv.row > first), cut, clear_rows, depth, *out)
    return frames


def _top_levels(
    side: int,
    held: np.ndarray,
    low: int,
    k0: int,
    levels: np.ndarray,
    depth: int,
    out_price: np.ndarray,
    out_quantity: np.ndarray,
    out_orders: np.ndarray | None = None,
    counts: np.ndarray | None = None,
) -> None:
    """The best `depth` non-empty levels of every step of a levels x steps grid (rows ascend in
    price from code `low`) into the output rows from step k0 (`counts`: the grid's order counts)."""
    high = low + held.shape[0] - 1
    if side == BID:
        held = held[::-1]  # best (highest price) first
        counts = None if counts is None else counts[::-1]
    present = held > 0
    rank = np.cumsum(present, axis=0)
    li, ki = np.nonzero(present & (rank <= depth))
    slot = rank[li, ki] - 1
    level = (high - li) if side == BID else (low + li)
    out_price[k0 + ki, slot] = levels[level]
    out_quantity[k0 + ki, slot] = held[li, ki]
    if out_orders is not None and counts is not None:
        out_orders[k0 + ki, slot] = counts[li, ki]


def _fill_side_from_deltas(
    side: int,
    d: _Deltas,
    cut: np.ndarray,
    clear_rows: np.ndarray,
    depth: int,
    out_price: np.ndarray,
    out_quantity: np.ndarray,
    out_orders: np.ndarray | None = None,
) -> None:
    """Levels x steps by sums: each step's level quantities (and order counts) are the running sum
    of the changes visible by then; a clear subtracts, where it becomes visible, everything its
    epoch had added."""
    sel = d.side == side
    row, code, change, counted = d.row[sel], d.code[sel], d.quantity[sel], d.orders[sel]
    if row.size == 0:
        return
    k = cut.size
    step = np.searchsorted(cut, row, side="left")  # nondecreasing: rows are in order
    low, high = int(code.min()), int(code.max())
    width = high - low + 1
    if clear_rows.size:  # resets: at each clear, minus the totals of the epoch it closes
        epoch = np.searchsorted(clear_rows, row, side="right")
        totals = np.bincount(
            epoch * width + (code - low), weights=change, minlength=(clear_rows.size + 1) * width
        ).reshape(clear_rows.size + 1, width)[:-1]
        # an epoch's level holds orders exactly when it holds quantity: the same resets
        count_totals = (
            np.bincount(
                epoch * width + (code - low), weights=counted, minlength=(clear_rows.size + 1) * width
            ).reshape(clear_rows.size + 1, width)[:-1]
            if out_orders is not None
            else totals
        )
        r_epoch, r_level = np.nonzero(totals)
        reset_step = np.searchsorted(cut, clear_rows, side="left")[r_epoch]
        order = np.argsort(np.concatenate([step, reset_step]), kind="stable")
        step = np.concatenate([step, reset_step])[order]
        code = np.concatenate([code, r_level + low])[order]
        change = np.concatenate([change, -np.rint(totals[r_epoch, r_level]).astype(np.int64)])[order]
        reset = -np.rint(count_totals[r_epoch, r_level]).astype(np.int64)
        counted = np.concatenate([counted, reset])[order]
    chunk = max(1, _CELLS // width)
    carry: np.ndarray = np.zeros(width)
    count_carry: np.ndarray = np.zeros(width)
    for k0 in range(0, k, chunk):
        k1 = min(k, k0 + chunk)
        a, b = np.searchsorted(step, [k0, k1])
        cells = (code[a:b] - low) * (k1 - k0) + (step[a:b] - k0)
        held, carry = _running_sums(cells, change[a:b], width, k1 - k0, carry)
        counts = None
        if out_orders is not None:
            counts, count_carry = _running_sums(cells, counted[a:b], width, k1 - k0, count_carry)
        _top_levels(side, held, low, k0, d.levels, depth, out_price, out_quantity, out_orders, counts)


def _running_sums(
    cells: np.ndarray, weights: np.ndarray, width: int, steps: int, carry: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(levels x steps grid, its last column): `weights` summed per cell, then summed along the steps
    from `carry` (the previous chunk's last column)."""
    grid: np.ndarray = np.bincount(cells, weights=weights, minlength=width * steps).reshape(width, steps)
    grid[:, 0] += carry
    np.cumsum(grid, axis=1, out=grid)
    return np.rint(grid).astype(np.int64), grid[:, -1].copy()


def _fill_side(
    side: int,
    lv: LevelRows,
    sel: np.ndarray,
    cut: np.ndarray,
    clear_rows: np.ndarray,
    depth: int,
    out_price: np.ndarray,
    out_quantity: np.ndarray,
    out_orders: np.ndarray | None = None,
) -> None:
    row, code, quantity = lv.row[sel], lv.code[sel], lv.quantity[sel]
    orders = lv.orders[sel] if out_orders is not None else quantity
    if row.size == 0:
        return
    k = cut.size
    step = np.searchsorted(cut, row, side="left")  # first step whose cutoff includes the row
    epoch = np.searchsorted(clear_rows, row, side="right")
    step_epoch = np.searchsorted(clear_rows, cut, side="right")
    low, high = int(code.min()), int(code.max())
    width = high - low + 1
    # the last row of each (level, step) pair: a stable sort by level keeps row order inside it
    by_level = _stable_order(code)
    c_sorted, s_sorted = code[by_level], step[by_level]
    last = np.ones(row.size, bool)
    last[:-1] = (c_sorted[1:] != c_sorted[:-1]) | (s_sorted[1:] != s_sorted[:-1])
    pick = by_level[last & (s_sorted < k)]
    pick = pick[np.argsort(step[pick], kind="stable")]
    p_step = step[pick]
    chunk = max(1, _CELLS // width)
    carry = np.full(width, -1, np.int64)
    for k0 in range(0, k, chunk):
        k1 = min(k, k0 + chunk)
        a, b = np.searchsorted(p_step, [k0, k1])
        grid = np.full((width, k1 - k0), -1, np.int64)
        grid[code[pick[a:b]] - low, p_step[a:b] - k0] = pick[a:b]
        grid[:, 0] = np.maximum(grid[:, 0], carry)
        np.maximum.accumulate(grid, axis=1, out=grid)
        carry = grid[:, -1].copy()
        safe = np.maximum(grid, 0)
        alive = (grid >= 0) & (epoch[safe] == step_epoch[k0:k1])
        held = np.where(alive, quantity[safe], 0)
        counts = None if out_orders is None else np.where(alive, orders[safe], 0)
        _top_levels(side, held, low, k0, lv.levels, depth, out_price, out_quantity, out_orders, counts)


# --- top of book at every change ----------------------------------------------------------------


@dataclass(frozen=True)
class Quotes:
    """Top of book after every batch that changed it (price NaN and quantity 0: side empty)."""

    time_ms: np.ndarray  # int64: effective time of the batch
    seq: np.ndarray  # int64: seq of the batch's last row
    bid_price: np.ndarray
    bid_quantity: np.ndarray
    ask_price: np.ndarray
    ask_quantity: np.ndarray


def quotes(cols: BookColumns, *, tick_size: float | None = None) -> Quotes:
    """The best bid and ask after every batch of `cols` where either changed (price or quantity)."""
    ends = cols.batch_ends()
    k = ends.size
    best = {s: (np.full(k, np.nan), np.zeros(k, np.int64)) for s in (BID, ASK)}
    if k:
        lv = level_rows(cols, int(ends[-1]), tick_size=tick_size)
        clears = _clear_rows(cols)
        for side in (BID, ASK):
            _paint_best(side, lv, ends, clears[side], *best[side])
    bp, bq = best[BID]
    ap, aq = best[ASK]
    changed = np.ones(k, bool)
    if k > 1:
        same = (bq[1:] == bq[:-1]) & (aq[1:] == aq[:-1])
        same &= (bp[1:] == bp[:-1]) | (np.isnan(bp[1:]) & np.isnan(bp[:-1]))
        same &= (ap[1:] == ap[:-1]) | (np.isnan(ap[1:]) & np.isnan(ap[:-1]))
        changed[1:] = ~same
    return Quotes(
        _effective_time(cols)[ends][changed],
        cols.seq[ends][changed],
        bp[changed],
        bq[changed],
        ap[changed],
        aq[changed],
    )


def _paint_best(
    side: int,
    lv: LevelRows,
    ends: np.ndarray,
    clear_rows: np.ndarray,
    out_price: np.ndarray,
    out_quantity: np.ndarray,
) -> None:
    sel = lv.side == side
    row, quantity = lv.row[sel], lv.quantity[sel]
    if row.size == 0:
        return
    # rank: larger is better (bids: higher price; asks: lower)
    rank = lv.code[sel] if side == BID else -lv.code[sel]
    step = np.searchsorted(ends, row, side="left")  # the first batch whose end includes the row
    epoch = np.searchsorted(clear_rows, row, side="right")
    step_epoch = np.searchsorted(clear_rows, ends, side="right")
    cleared = clear_rows.size > 0
    by_rank = _stable_order(rank)  # a level's rows stay in row order: their steps ascend
    r_sorted = rank[by_rank]
    ranks, bounds = np.unique(r_sorted, return_index=True)
    bounds = np.append(bounds, r_sorted.size)
    step_r, quantity_r, epoch_r = step[by_rank], quantity[by_rank], epoch[by_rank]
    set_rank = np.where(quantity > 0, rank, np.iinfo(np.int64).min)  # in row order: steps ascend
    best_rank = np.iinfo(np.int64).min
    for k0 in range(0, ends.size, _QUOTE_CHUNK):
        k1 = min(ends.size, k0 + _QUOTE_CHUNK)
        a, b = np.searchsorted(step, [k0, k1])
        ceiling = max(best_rank, int(set_rank[a:b].max()) if b > a else best_rank)
        open_steps = np.arange(k0, k1)
        chunk_best = np.full(k1 - k0, np.iinfo(np.int64).min)
        i = int(np.searchsorted(ranks, ceiling, side="right")) - 1
        while open_steps.size and i >= 0:
            lo, hi = int(bounds[i]), int(bounds[i + 1])
            at = np.searchsorted(step_r[lo:hi], open_steps, side="right") - 1
            j = lo + np.maximum(at, 0)
            held = (at >= 0) & (quantity_r[j] > 0)
            if cleared:
                held &= epoch_r[j] == step_epoch[open_steps]
            settled = open_steps[held]
            out_quantity[settled] = quantity_r[j[held]]
            out_price[settled] = lv.levels[ranks[i] if side == BID else -ranks[i]]
            chunk_best[settled - k0] = ranks[i]
            open_steps = open_steps[~held]
            i -= 1
        best_rank = int(chunk_best[-1])
