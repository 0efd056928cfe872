"""The order-book features of a tick, from the book's best five levels a side: computed live from the
book's updates (`LiveBookFeatures`) or, for a backfill, from the stored book's columns at every tick
time at once (`book_feature_table`, vectorised through `analytics.book.frames_at`). Both give the
same floats, bit for bit.

Definitions. b_i, a_i: the bid and ask quantity at level i (1 = best; a level a side lacks counts 0);
B_i, A_i: their prices. All four are None unless both sides hold at least one level.
- `spread` = A_1 - B_1.
- `book_imbalance` = (b_1 - a_1) / (b_1 + a_1): the queue imbalance at the best quotes (Gould and
  Bonart 2016, "Queue imbalance as a one-tick-ahead price predictor in a limit order book").
- `depth_imbalance_5` = sum_i w_i (b_i - a_i) / sum_i w_i (b_i + a_i) over levels i = 1..5, with
  w_i = 2^(1-i) (1, 1/2, 1/4, 1/8, 1/16): the same imbalance over the first five levels, as Cao,
  Hansch and Wang (2009, "The information content of an open limit-order book", J. Futures Markets
  29(1)) show the levels behind the best quotes carry information, weighted so that each level counts
  half the one before it. Powers of two keep every product and partial sum exact in float64, so the
  value does not depend on the order of summation (live and backfill agree).
- `microprice` = (B_1 a_1 + A_1 b_1) / (b_1 + a_1): the mid weighted by the opposite queue, so it
  leans towards the thinner side, where the price is likelier to move (Stoikov 2018, "The
  micro-price", calls this the weighted mid-price; his micro-price proper adds a model-fitted
  adjustment, not computed here).

Which book a tick at time T reads: the book after the last complete batch whose effective time is
strictly before T (effective time: the running maximum of the updates' exchange `timestamp_ms`, as
`analytics.book.history` defines it; ticks carry exchange time only, so both sides of the comparison
are exchange clocks). Strictly before, because a tick and the book's batches of the same millisecond
cannot be ordered from what is stored: a source sends a trade's own book change (the simulator: the
queue it consumed) in that same millisecond, after the trade, and the store keeps no order between a
tick and a batch. "Before T" is what both the live engine and a backfill can see, so live equals
backfill at every tick. The simulator merges batches and ticks in exchange-time order; a feed may
not (ProfitDLL stamps a book update without a date with its receive time). Batches stamped after a
tick that arrive before it are handled: the values before them are kept (`HELD` moments). A batch
stamped before a tick that arrives after it could not be seen by that tick's features live, is seen
by a backfill's, and is counted (`LiveBookFeatures.late`, `features_book_late`) so any such
difference shows. A restarted run starts its live books from the stored ones (`load`), as a backfill
reads them.

A live book that misses updates (their seqs jump: a gap on the bus that could not be filled, a batch
refused as invalid) is not the exchange's book: from there until the next snapshot batch its values
are None (`valid` False), and the gap is counted (`gaps`, `features_book_gaps`). Updates without a
seq (0) are not checked.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tickvault.analytics.book import LevelBook, OrderBook, frames_at, live_book
from tickvault.domain.book import ASK, BID, LAST, SNAPSHOT, BookColumns, BookEvent, BookKind, BookUpdate
from tickvault.errors import DataError

BOOK_FEATURES = ("spread", "book_imbalance", "depth_imbalance_5", "microprice")
DEPTH = 5
WEIGHTS = (1.0, 0.5, 0.25, 0.125, 0.0625)  # 2^(1-i): exact in binary
HELD = 4096  # values kept for ticks behind the book's clock (books stamped ahead of the trades)

BookValues = tuple[float | None, float | None, float | None, float | None]  # in BOOK_FEATURES order
NO_VALUES: BookValues = (None, None, None, None)


def top_values(
    bid_price: Sequence[float], bid_size: Sequence[int], ask_price: Sequence[float], ask_size: Sequence[int]
) -> BookValues:
    """The features of the best levels given best first (at most DEPTH used); see the module
    docstring. `book_feature_table` is this, column-wise, with the same operations in the same order."""
    if not bid_size or not ask_size:
        return NO_VALUES
    b1, a1 = bid_size[0], ask_size[0]
    top = b1 + a1
    num = den = 0.0
    for i, w in enumerate(WEIGHTS):
        b = bid_size[i] if i < len(bid_size) else 0
        a = ask_size[i] if i < len(ask_size) else 0
        num += w * (b - a)
        den += w * (b + a)
    return (
        ask_price[0] - bid_price[0],
        (b1 - a1) / top,
        num / den,
        (bid_price[0] * a1 + ask_price[0] * b1) / top,
    )


class LiveBookFeatures:
    """One symbol's live book and what a tick reads of it. Updates are held until their batch's LAST
    and the batch applied whole, so its effective time is known before it changes the book: when it
    moves the clock on, the values of the book before it are kept (those a tick up to that time
    reads), unless no tick that emits features can come before then (`needed_from`)."""

    def __init__(self, symbol: str, kind: BookKind) -> None:
        self.book: LevelBook | OrderBook = live_book(symbol, kind)
        self._mbp = kind == "mbp"
        self.time_ms: int | None = None  # effective time of the last complete batch applied
        self.pending: list[BookEvent] = []  # the open batch
        # (t, the values after every batch of effective time <= t), t ascending
        self.settled: deque[tuple[int, BookValues]] = deque(maxlen=HELD)
        self.late = 0  # batches stamped before a tick already folded (see the module docstring)
        self.last_seq = 0  # of the last update applied (0: none, or not numbered)
        self.valid = True  # False from a gap in the seqs to the next snapshot
        self.gaps = 0

    def add(self, update: BookEvent, *, needed_from: int, clock_ms: int) -> None:
        """Take one update (DataError, nothing kept, if it is not of this book's kind). `needed_from`:
        no tick that emits features can come stamped before it; `clock_ms`: the newest tick folded."""
        if (type(update) is BookUpdate) is not self._mbp:
            raise DataError("kind", f"a {self.book.kind} book takes no {type(update).__name__}")
        if not update.flags & LAST:
            self.pending.append(update)
            return
        end = update.timestamp_ms
        if self.pending:  # most batches are one update: no list for them
            batch, self.pending = [*self.pending, update], []
            end = max(end, *(e.timestamp_ms for e in batch))
        else:
            batch = None
        first = update if batch is None else batch[0]
        if first.flags & SNAPSHOT:
            self.valid = True  # the whole book again
        elif first.seq and first.seq != self.last_seq + 1 and self.last_seq:
            self.gaps += 1
            self.valid = False
        if update.seq:
            self.last_seq = update.seq
        before = self.time_ms
        if before is not None:
            if end > before and end >= needed_from:
                self.settled.append((before, self.values_now()))
            elif end < before:
                end = before
        if batch is None:
            self.book.apply(update)
        else:
            for event in batch:
                self.book.apply(event)
        if end < clock_ms:
            self.late += 1
        self.time_ms = end

    def load(self, cols: BookColumns) -> None:
        """Start from a stored book (a restart): its rows through the last complete batch, applied
        as if they had come live, so the book and its clock are what a backfill reads."""
        ends = cols.batch_ends()
        if not ends.size:
            return
        stop = int(ends[-1]) + 1
        self.book.apply_columns(cols.take(slice(0, stop)))
        self.time_ms = int(cols.timestamp_ms[:stop].max())
        self.last_seq, self.valid = int(cols.seq[stop - 1]), True
        self.pending, self.settled = [], deque(maxlen=HELD)

    def values_now(self) -> BookValues:
        # the book's own sorted prices and level dicts: `levels()` would build arrays only to undo them
        sides = self.book.sides
        bids, asks = sides.prices[BID], sides.prices[ASK]
        if not bids or not asks or not self.valid:
            return NO_VALUES
        bid_price, ask_price = bids[: -DEPTH - 1 : -1], asks[:DEPTH]
        bid_level, ask_level = sides.level[BID], sides.level[ASK]
        return top_values(
            bid_price, [bid_level[p][0] for p in bid_price], ask_price, [ask_level[p][0] for p in ask_price]
        )

    def values_before(self, t_ms: int) -> BookValues:
        """The features of the book after the last complete batch of effective time < `t_ms`. Ticks
        ask in time order: what an earlier time would need is dropped."""
        if self.time_ms is None:
            return NO_VALUES
        if self.time_ms < t_ms:
            return self.values_now()
        held = self.settled
        while len(held) > 1 and held[1][0] < t_ms:
            held.popleft()
        return held[0][1] if held and held[0][0] < t_ms else NO_VALUES


@dataclass(frozen=True)
class BookFeatureTable:
    """The book features at given tick times (ascending, distinct); NaN where None."""

    time_ms: np.ndarray
    values: np.ndarray  # float64 [K, 4], columns in BOOK_FEATURES order

    def at(self, t_ms: int) -> BookValues:
        i = int(np.searchsorted(self.time_ms, t_ms))
        if i == self.time_ms.size or self.time_ms[i] != t_ms:
            return NO_VALUES
        row = self.values[i].tolist()
        return (*(None if v != v else v for v in row),)  # type: ignore[return-value]

    @staticmethod
    def concat(parts: Sequence[BookFeatureTable]) -> BookFeatureTable:
        if not parts:
            return BookFeatureTable(np.empty(0, np.int64), np.empty((0, len(BOOK_FEATURES))))
        return BookFeatureTable(
            np.concatenate([p.time_ms for p in parts]), np.concatenate([p.values for p in parts])
        )


def book_feature_table(cols: BookColumns, times_ms: np.ndarray) -> BookFeatureTable:
    """The features a tick at each of `times_ms` (ascending, distinct) reads: those of the book of
    `cols` after the last complete batch of effective time < T, i.e. at or before T - 1."""
    times = np.asarray(times_ms, np.int64)
    frames = frames_at(cols, times - 1, DEPTH)
    bp, bq, ap, aq = frames.bid_price, frames.bid_quantity, frames.ask_price, frames.ask_quantity
    both = (bq[:, 0] > 0) & (aq[:, 0] > 0)
    b1, a1 = bq[:, 0], aq[:, 0]
    top = np.where(both, b1 + a1, 1)
    num = np.zeros(times.size)
    den = np.zeros(times.size)
    for i, w in enumerate(WEIGHTS):
        num += w * (bq[:, i] - aq[:, i])
        den += w * (bq[:, i] + aq[:, i])
    out = np.full((times.size, len(BOOK_FEATURES)), np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        columns = (ap[:, 0] - bp[:, 0], (b1 - a1) / top, num / np.where(both, den, 1.0),
                   (bp[:, 0] * a1 + ap[:, 0] * b1) / top)  # fmt: skip
    for j, column in enumerate(columns):
        out[both, j] = column[both]
    return BookFeatureTable(times, out)
