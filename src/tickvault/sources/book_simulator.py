"""A simulated B3 order book around the simulator's trades, deterministic per seed.

The trades are `sources.simulator`'s, unchanged (a symbol's ticks never depend on its book); the book
is built around them, order by order (MBO, the MBP view derived from it):

- Coherent with the trades. Before an aggressive buy at price P (trade type 2) the book is made to
  have its best ask at P with at least the trade's quantity there and its best bid below P (stale
  quotes cancelled, liquidity added at the back of the queue): one batch. The trade then consumes
  the queue at P from its front (filled orders deleted, a partly filled one reduced in place, keeping
  its priority): the next batch. Sells mirror this. A cross trade (type 1) only needs
  best bid <= P <= best ask and takes nothing from the book.
- Opening auction. A session that starts with the auction (09:00:00.000, trade type 4) opens its book
  at 08:55 with a crossed pre-opening book: bids at and above the auction price and asks at and
  below it, each side holding exactly the auction quantity, plus depth on both sides. Right after
  the auction print those crossed orders are executed (deleted): never crossed again that session.
  A simulator started mid-session opens with an uncrossed book at its start.
- Activity between trades: adds, cancels and modifies as a Poisson process whose rate follows the
  simulator's intraday seasonality (`simulator.seasonality`, the same time change), about
  `events_per_trade` of them per trade over a session; each is its own batch. Distances from the best
  are geometric (most activity at the touch), sizes the simulator's discrete Pareto, brokers its
  B3 codes; a modify reduces an order in place or moves it a tick (losing its priority). Every batch
  leaves at least `MIN_LEVELS` (12) price levels a side in continuous trading; adds are damped past
  `TARGET_ORDERS` resting orders a side.
- Every session opens with a snapshot group (clear + every order); events carry seq 1, 2, ... per
  symbol; exchange and receive times are equal. Randomness: Python's `random.Random` seeded with
  text made of (seed, symbol) (sha512-based: the same in every process) and a numpy PCG64 for the
  arrival times.

`BookMarketSimulator(symbols, ...).events()` interleaves the trades (`Tick`) and the book batches
(`BookBatch`: a tuple of `OrderUpdate` or `BookUpdate` with the batch's `symbol` and `timestamp_ms`)
of several symbols in exchange-time order; its ticks are exactly `MarketSimulator(symbols, ...)`'s,
in the same order.
"""

from __future__ import annotations

import bisect
import heapq
import random
import zlib
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime

import numpy as np

from tickvault.domain.book import (
    LAST,
    SNAPSHOT,
    BookAction,
    BookBatch,
    BookKind,
    BookSide,
    BookUpdate,
    OrderUpdate,
)
from tickvault.domain.events import B3_TZ, Tick, from_ms, to_ms
from tickvault.sources.simulator import (
    BROKERS,
    SESSION,
    SESSION_MS,
    SIZE_ALPHA,
    SIZE_MAX,
    MarketSimulator,
    seasonality,
    spec_for,
)

EVENTS_PER_TRADE = 8  # background adds, cancels and modifies per trade, over a session
MIN_LEVELS = 12  # price levels kept on each side in continuous trading
TARGET_ORDERS = 180  # resting orders a side beyond which adds are damped
PREOPEN_MS = 5 * 60_000  # the pre-opening call before the auction
ADD_SHARE, CANCEL_SHARE = 0.50, 0.36  # of background events; the rest are modifies
DISTANCE_P = 0.35  # distance from the best, in levels: geometric with this success probability
IMPROVE_SHARE = 0.3  # adds that improve the best price when the spread is wider than a tick
FIRST_ORDER_ID = 10_000_000_000

_SECONDS = np.arange(SESSION_MS // 1000 + 1, dtype=float)
_RATE = seasonality((_SECONDS[:-1] + 0.5) / 3600.0)
_ACTIVITY = np.concatenate([[0.0], np.cumsum(_RATE) / _RATE.sum()])
_POPULARITY = np.cumsum(1.0 / np.arange(1, len(BROKERS) + 1) ** 1.1)
_BROKER_CDF: list[float] = (_POPULARITY / _POPULARITY[-1]).tolist()
_BROKER_LIST = BROKERS.tolist()

BID, ASK = 0, 1
_SIDE_NAMES: tuple[BookSide, BookSide] = ("bid", "ask")
Raw = tuple[BookAction, int, int, int, int, int]  # (action, side, price in ticks, quantity, order id, agent)


class _Order:
    __slots__ = ("agent", "order_id", "quantity")

    def __init__(self, order_id: int, quantity: int, agent: int) -> None:
        self.order_id, self.quantity, self.agent = order_id, quantity, agent


class SymbolBook:
    """One symbol's trades and book batches, in order (`items()`)."""

    def __init__(
        self,
        symbol: str,
        *,
        seed: int = 7,
        start: datetime | None = None,
        first_trade_id: int = 1,
        random_walk: bool = False,
        kind: BookKind = "mbo",
        events_per_trade: float = EVENTS_PER_TRADE,
    ) -> None:
        if kind not in ("mbo", "mbp"):
            raise ValueError(f"kind must be mbo or mbp, got {kind!r}")
        self.symbol = symbol
        self.kind = kind
        self.market = MarketSimulator(
            [symbol],
            seed=seed,
            start=start,
            first_trade_ids={symbol: first_trade_id},
            random_walk=random_walk,
        )
        spec = spec_for(symbol)
        self.tick_size = spec.tick_size
        self.background_per_session = max(1.0, events_per_trade * spec.trades_per_session)
        self.rng = random.Random(f"tickvault book {seed} {symbol}")
        self.times_rng = np.random.Generator(np.random.PCG64([seed % 2**64, zlib.crc32(symbol.encode()), 1]))
        self.levels: tuple[dict[int, deque[_Order]], dict[int, deque[_Order]]] = ({}, {})
        self.agg: tuple[dict[int, list[int]], dict[int, list[int]]] = ({}, {})  # [quantity, orders]
        self.before: dict[tuple[int, int], tuple[int, int]] = {}  # levels as they were before a step
        self.where: dict[int, tuple[int, int]] = {}  # order id -> (side, price in ticks)
        self.resting = [0, 0]  # orders a side
        self.next_id = FIRST_ORDER_ID
        self.seq = 0
        self.day: object = None
        self.open_ms = self.close_ms = 0
        self.u = 0.0
        self.pending: deque[int] = deque()
        self.last_price = 0
        self._stamps: tuple[int, datetime] = (-1, from_ms(0))
        self.start_ms = to_ms(self.market.clock)  # the start, moved into a session
        self._prices: dict[int, float] = {}

    # -- the book's state -------------------------------------------------------------------------

    def best(self, side: int) -> int | None:
        levels = self.levels[side]
        if not levels:
            return None
        return max(levels) if side == BID else min(levels)

    def _ordered(self, side: int) -> list[int]:
        return sorted(self.levels[side], reverse=(side == BID))

    def _size(self) -> int:
        return min(max(1, int(self.rng.random() ** (-1.0 / SIZE_ALPHA))), SIZE_MAX)

    def _agent(self) -> int:
        return int(
            _BROKER_LIST[min(len(_BROKER_LIST) - 1, bisect.bisect_left(_BROKER_CDF, self.rng.random()))]
        )

    def _touch(self, side: int, price: int) -> None:
        key = (side, price)
        if key not in self.before:
            level = self.agg[side].get(price)
            self.before[key] = (level[0], level[1]) if level else (0, 0)

    def _place(self, side: int, price: int, order: _Order) -> None:
        self._touch(side, price)
        self.levels[side].setdefault(price, deque()).append(order)
        level = self.agg[side].setdefault(price, [0, 0])
        level[0] += order.quantity
        level[1] += 1
        self.resting[side] += 1
        self.where[order.order_id] = (side, price)

    def _unplace(self, side: int, price: int, order: _Order) -> None:
        self._touch(side, price)
        queue = self.levels[side][price]
        queue.remove(order)
        level = self.agg[side][price]
        level[0] -= order.quantity
        level[1] -= 1
        self.resting[side] -= 1
        if not queue:
            del self.levels[side][price], self.agg[side][price]
        del self.where[order.order_id]

    def _add(self, out: list[Raw], side: int, price: int, quantity: int) -> None:
        order = _Order(self.next_id, quantity, self._agent())
        self.next_id += 1
        self._place(side, price, order)
        out.append(("add", side, price, quantity, order.order_id, order.agent))

    def _delete(self, out: list[Raw], side: int, price: int, order: _Order) -> None:
        self._unplace(side, price, order)
        out.append(("delete", side, price, 0, order.order_id, order.agent))

    def _reduce(self, out: list[Raw], side: int, price: int, order: _Order, quantity: int) -> None:
        """A smaller size in place: the order keeps its priority."""
        self._touch(side, price)
        self.agg[side][price][0] -= order.quantity - quantity
        order.quantity = quantity
        out.append(("update", side, price, quantity, order.order_id, order.agent))

    def _cancel_level(self, out: list[Raw], side: int, price: int) -> None:
        for order in list(self.levels[side][price]):
            self._delete(out, side, price, order)

    def _ensure_depth(self, out: list[Raw]) -> None:
        for side in (BID, ASK):
            levels = self.levels[side]
            while len(levels) < MIN_LEVELS:
                if levels:
                    price = (min(levels) - 1) if side == BID else (max(levels) + 1)
                else:
                    other = self.best(1 - side)
                    anchor = self.last_price if other is None else other
                    price = anchor - 1 if side == BID else anchor + 1
                if price < 1:
                    break  # prices stay positive: a short side at the bottom of the grid
                for _ in range(1 + int(self.rng.random() * 4)):
                    self._add(out, side, price, self._size())

    # -- trades -----------------------------------------------------------------------------------

    def _prepare(self, side: int, price: int, quantity: int) -> list[Raw]:
        """Make `price` the best of `side` (the side the trade hits) with `quantity` there, and the
        other side strictly behind it."""
        out: list[Raw] = []
        other = 1 - side
        for level in self._ordered(side):  # stale quotes better than the trade's price
            if (level < price) if side == ASK else (level > price):
                self._cancel_level(out, side, level)
        for level in self._ordered(other):  # the other side must not reach the trade's price
            if (level >= price) if other == BID else (level <= price):
                self._cancel_level(out, other, level)
        held = self.agg[side][price][0] if price in self.agg[side] else 0
        if held < quantity:
            self._add(out, side, price, quantity - held + self._size() - 1)
        behind = price - 1 if other == BID else price + 1
        best = self.best(other)
        if behind >= 1 and (best is None or best != behind) and self.rng.random() < 0.7:
            self._add(out, other, behind, self._size())  # keep the spread one tick most of the time
        self._ensure_depth(out)
        return out

    def _fill(self, side: int, price: int, quantity: int) -> list[Raw]:
        """The trade consumes the queue at `price` from its front."""
        out: list[Raw] = []
        queue = self.levels[side][price]
        left = quantity
        while left:
            order = queue[0]
            take = min(order.quantity, left)
            left -= take
            if take == order.quantity:
                self._delete(out, side, price, order)
                if price not in self.levels[side]:
                    break
                queue = self.levels[side][price]
            else:
                self._reduce(out, side, price, order, order.quantity - take)
        self._ensure_depth(out)
        return out

    def _cross(self, price: int) -> list[Raw]:
        """A cross trade prints within the spread: no level may be better than its price."""
        out: list[Raw] = []
        for level in self._ordered(BID):
            if level > price:
                self._cancel_level(out, BID, level)
        for level in self._ordered(ASK):
            if level < price:
                self._cancel_level(out, ASK, level)
        self._ensure_depth(out)
        return out

    # -- sessions ---------------------------------------------------------------------------------

    def _clear(self) -> None:
        self.levels = ({}, {})
        self.agg = ({}, {})
        self.where = {}
        self.resting = [0, 0]

    def _snapshot(self) -> list[Raw]:
        out: list[Raw] = [("clear", -1, 0, 0, 0, 0)]
        for side in (BID, ASK):
            for price in self._ordered(side):
                for order in self.levels[side][price]:
                    out.append(("add", side, price, order.quantity, order.order_id, order.agent))
        return out

    def _auction_book(self, price: int, quantity: int) -> None:
        """The pre-opening book: `quantity` crossed on each side around `price`, plus depth."""
        self._clear()
        sink: list[Raw] = []
        for side, direction in ((BID, 1), (ASK, -1)):
            left = quantity
            while left:
                size = min(left, self._size() * 5)
                level = max(1, price + direction * int(self.rng.random() * 3))  # P, P +- 1, P +- 2 ticks
                self._add(sink, side, level, size)
                left -= size
        for i in range(1, MIN_LEVELS + 1):
            for _ in range(1 + int(self.rng.random() * 4)):
                if price - i >= 1:
                    self._add(sink, BID, price - i, self._size())
                self._add(sink, ASK, price + i, self._size())

    def _uncross(self, price: int) -> list[Raw]:
        """The auction executes every crossed order (bids at or above its price, asks at or below)."""
        out: list[Raw] = []
        for level in self._ordered(BID):
            if level >= price:
                self._cancel_level(out, BID, level)
        for level in self._ordered(ASK):
            if level <= price:
                self._cancel_level(out, ASK, level)
        self._ensure_depth(out)
        return out

    def _continuous_book(self, price: int) -> None:
        self._clear()
        sink: list[Raw] = []
        for i in range(1, MIN_LEVELS + 4):
            for _ in range(2 + int(self.rng.random() * 8)):
                if price - i >= 1:
                    self._add(sink, BID, price - i, self._size())
                self._add(sink, ASK, price + i, self._size())

    def _begin_session(self, tick: Tick, price: int) -> tuple[int, list[Raw]]:
        """(time, snapshot) opening the session of `tick`."""
        day = datetime.fromtimestamp(tick.timestamp_ms / 1000, B3_TZ).date()
        self.day = day
        self.open_ms = to_ms(SESSION.open_of(day))
        self.close_ms = self.open_ms + SESSION_MS
        self.pending.clear()
        if tick.trade_type == 4:  # the auction: a crossed pre-opening book
            at = self.open_ms - PREOPEN_MS
            self._auction_book(price, tick.quantity)
        else:  # a simulator started mid-session
            at = min(tick.timestamp_ms, max(self.open_ms, self.start_ms))
            self._continuous_book(price)
        into = float(np.interp(max(0, at - self.open_ms) / 1000.0, _SECONDS, _ACTIVITY))
        self.u = into * self.background_per_session
        return at, self._snapshot()

    # -- background activity ----------------------------------------------------------------------

    def _next_background(self) -> int | None:
        """The time of the next add/cancel/modify of this session (None after its close)."""
        if not self.pending:
            u = self.u + np.cumsum(self.times_rng.exponential(1.0, 256))
            u = u[u < self.background_per_session]
            if not u.size:
                return None
            self.u = float(u[-1])
            t = self.open_ms + np.interp(u / self.background_per_session, _ACTIVITY, _SECONDS) * 1000.0
            self.pending.extend(np.floor(t).astype(np.int64).tolist())
        return self.pending[0]

    def _background(self) -> list[Raw]:
        rng = self.rng
        out: list[Raw] = []
        side = BID if rng.random() < 0.5 else ASK
        levels = self.levels[side]
        draw = rng.random()
        add_share = ADD_SHARE if self.resting[side] < TARGET_ORDERS else ADD_SHARE / 2
        if draw < add_share or not levels:
            self._background_add(out, side)
        elif draw < add_share + CANCEL_SHARE:
            order, price = self._pick(side)
            self._delete(out, side, price, order)
        else:
            self._modify(out, side)
        self._ensure_depth(out)
        return out

    def _distance(self) -> int:
        d = 0
        while self.rng.random() > DISTANCE_P and d < MIN_LEVELS + 6:
            d += 1
        return d

    def _background_add(self, out: list[Raw], side: int) -> None:
        best, other = self.best(side), self.best(1 - side)
        if best is None:
            return
        step = -1 if side == BID else 1
        if other is not None and abs(other - best) > 1 and self.rng.random() < IMPROVE_SHARE:
            price = best - step  # inside the spread, never onto the other side
        else:
            price = best + step * self._distance()
        if price >= 1:
            self._add(out, side, price, self._size())

    def _pick(self, side: int) -> tuple[_Order, int]:
        ordered = self._ordered(side)
        price = ordered[min(self._distance(), len(ordered) - 1)]
        queue = self.levels[side][price]
        # later orders are cancelled more often than the front of the queue
        index = len(queue) - 1 - min(len(queue) - 1, int(self.rng.expovariate(0.5)))
        return queue[index], price

    def _modify(self, out: list[Raw], side: int) -> None:
        order, price = self._pick(side)
        if order.quantity > 1 and self.rng.random() < 0.6:
            self._reduce(
                out, side, price, order, order.quantity - 1 - int(self.rng.random() * (order.quantity - 1))
            )
            return
        other = self.best(1 - side)
        step = -1 if side == BID else 1
        target = price + (step if self.rng.random() < 0.5 else -step)
        crosses = other is not None and ((target >= other) if side == BID else (target <= other))
        if target < 1 or crosses:
            return
        self._unplace(side, price, order)
        self._place(side, target, order)  # a new price: the back of the queue
        out.append(("update", side, target, order.quantity, order.order_id, order.agent))

    # -- output -----------------------------------------------------------------------------------

    def _price(self, ticks: int) -> float:
        """The price of a tick count, rounded exactly as the simulator rounds its trades' prices."""
        price = self._prices.get(ticks)
        if price is None:
            price = self._prices[ticks] = float(np.round(ticks * self.tick_size, 8))
        return price

    def _stamp(self, ms: int) -> datetime:
        if self._stamps[0] != ms:
            self._stamps = (ms, from_ms(ms))
        return self._stamps[1]

    def _batch(
        self,
        ms: int,
        raw: list[Raw],
        *,
        snapshot: bool = False,
        before: dict[tuple[int, int], tuple[int, int]] | None = None,
    ) -> BookBatch:
        if self.kind == "mbp":
            return self._level_batch(ms, raw, snapshot, before or {})
        stamp, flags = self._stamp(ms), SNAPSHOT if snapshot else 0
        events = []
        for i, (action, side, price, quantity, order_id, agent) in enumerate(raw):
            self.seq += 1
            events.append(
                OrderUpdate(
                    symbol=self.symbol,
                    timestamp=stamp,
                    timestamp_ms=ms,
                    side="none" if side < 0 else _SIDE_NAMES[side],
                    price=self._price(price) if side >= 0 else 0.0,
                    quantity=quantity,
                    order_id=order_id,
                    agent=agent,
                    action=action,
                    received_ms=ms,
                    seq=self.seq,
                    flags=flags | (LAST if i == len(raw) - 1 else 0),
                )
            )
        return BookBatch(events)

    def _level_state(self, side: int, price: int) -> tuple[int, int]:
        level = self.agg[side].get(price)
        return (level[0], level[1]) if level else (0, 0)

    def _level_batch(
        self, ms: int, raw: list[Raw], snapshot: bool, before: dict[tuple[int, int], tuple[int, int]]
    ) -> BookBatch:
        """The MBP view of a batch: every level it changed, as it is after the batch."""
        rows: list[tuple[BookAction, int, int, int, int]] = []
        if snapshot:
            rows.append(("clear", -1, 0, 0, 0))
            for side in (BID, ASK):
                for price in self._ordered(side):
                    rows.append(("add", side, price, *self._level_state(side, price)))
        else:
            for (side, price), was in before.items():  # every level the step touched, in order
                quantity, orders = self._level_state(side, price)
                existed = was[0] > 0
                if quantity:
                    if (quantity, orders) != was:
                        rows.append(("update" if existed else "add", side, price, quantity, orders))
                elif existed:
                    rows.append(("delete", side, price, 0, 0))
        stamp, flags = self._stamp(ms), SNAPSHOT if snapshot else 0
        events = []
        for i, (action, side, price, quantity, orders) in enumerate(rows):
            self.seq += 1
            events.append(
                BookUpdate(
                    symbol=self.symbol,
                    timestamp=stamp,
                    timestamp_ms=ms,
                    side="none" if side < 0 else _SIDE_NAMES[side],
                    price=self._price(price) if side >= 0 else 0.0,
                    quantity=quantity,
                    orders=orders,
                    action=action,
                    received_ms=ms,
                    seq=self.seq,
                    flags=flags | (LAST if i == len(rows) - 1 else 0),
                )
            )
        return BookBatch(events)

    def _run(
        self, step: Callable[..., list[Raw]], *args: int
    ) -> tuple[list[Raw], dict[tuple[int, int], tuple[int, int]]]:
        """Run a book step: its events, and the levels it touched as they were before it."""
        self.before = {}
        return step(*args), self.before

    def items(self) -> Iterator[Tick | BookBatch]:
        """Trades and book batches in exchange-time order, infinitely."""
        for tick in self.market.ticks():
            price = round(tick.price / self.tick_size)
            day = datetime.fromtimestamp(tick.timestamp_ms / 1000, B3_TZ).date()
            if day != self.day:
                yield from self._background_until(self.close_ms)
                at, snap = self._begin_session(tick, price)
                yield from self._emit(at, snap, snapshot=True)
            if tick.trade_type != 4:
                yield from self._background_until(tick.timestamp_ms)
            self.last_price = price
            ms = tick.timestamp_ms
            if tick.trade_type == 4:
                yield tick
                raw, before = self._run(self._uncross, price)
            elif tick.trade_type in (2, 3):
                side = ASK if tick.trade_type == 2 else BID  # a buy takes the asks
                raw, before = self._run(self._prepare, side, price, tick.quantity)
                yield from self._emit(ms, raw, before)
                yield tick
                raw, before = self._run(self._fill, side, price, tick.quantity)
            else:
                raw, before = self._run(self._cross, price)
                yield from self._emit(ms, raw, before)
                yield tick
                continue
            yield from self._emit(ms, raw, before)

    def _emit(
        self,
        ms: int,
        raw: list[Raw],
        before: dict[tuple[int, int], tuple[int, int]] | None = None,
        *,
        snapshot: bool = False,
    ) -> Iterator[BookBatch]:
        batch = self._batch(ms, raw, snapshot=snapshot, before=before) if raw else None
        if batch:  # a step may change nothing a level shows
            yield batch

    def _background_until(self, until_ms: int) -> Iterator[BookBatch]:
        if self.day is None:
            return
        while True:
            at = self._next_background()
            if at is None or at > until_ms:
                return
            self.pending.popleft()
            raw, before = self._run(self._background)
            yield from self._emit(at, raw, before)


def _time_of(item: Tick | BookBatch) -> int:
    return item.timestamp_ms


class BookMarketSimulator:
    """Several symbols' trades and book batches, merged in exchange-time order (ties in symbol
    order, as `MarketSimulator` orders its ticks). Same seed, symbols, start: same stream."""

    def __init__(
        self,
        symbols: Sequence[str],
        *,
        seed: int = 7,
        start: datetime | None = None,
        first_trade_ids: Mapping[str, int] | None = None,
        random_walk: bool = False,
        kind: BookKind = "mbo",
        events_per_trade: float = EVENTS_PER_TRADE,
    ) -> None:
        self.symbols = list(symbols)
        if not self.symbols or len(set(self.symbols)) != len(self.symbols):
            raise ValueError(f"symbols must be distinct and at least one, got {self.symbols!r}")
        begin = SESSION.start_for(datetime.now(B3_TZ)) if start is None else start
        ids = dict(first_trade_ids or {})
        self.books = [
            SymbolBook(
                s,
                seed=seed,
                start=begin,
                first_trade_id=ids.get(s, 1),
                random_walk=random_walk,
                kind=kind,
                events_per_trade=events_per_trade,
            )
            for s in self.symbols
        ]
        self._iterator: Iterator[Tick | BookBatch] | None = None

    def events(self) -> Iterator[Tick | BookBatch]:
        """The one infinite iterator of trades and book batches (calling again returns the same)."""
        if self._iterator is None:
            self._iterator = heapq.merge(*(book.items() for book in self.books), key=_time_of)
        return self._iterator
