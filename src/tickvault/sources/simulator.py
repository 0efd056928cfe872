"""A deterministic simulator of B3 futures sessions: the default source, so a live market runs any hour.

Its clock is its own: sessions are the B3 futures session of `domain.instruments` (09:00-18:30
America/Sao_Paulo on BVMF trading days, holidays from exchange_calendars), and each symbol's tick size
and multiplier are the registry's; the night between two sessions takes no time. Each symbol has its own PCG64
stream seeded from (seed, crc32(symbol)): its ticks never depend on which other symbols run, nor on
the process (Python's `hash()` is salted per process). Generated in numpy chunks of ~4k trades:

- Arrivals: a Hawkes process in its branching (cluster) form. Immigrant aggressive orders arrive as
  a Poisson process whose rate follows the intraday U shape (`seasonality`); each order triggers
  Poisson(BRANCHING) reaction orders after a few ms (algorithms) or about a second (slower traders),
  recursively: bursty, clustered inter-arrival times, calibrated to `trades_per_session` a session.
- Sweeps: an aggressive order fills against several resting orders, printing k trades in the same
  millisecond with one side and one aggressor broker; k is power-law (mostly 1).
- Sides (ProfitDLL trade types 2 = buy aggression, 3 = sell): a reaction keeps its parent's side with
  probability FOLLOW (herding, split metaorders), so order flow persists. Rare others, aggressor
  "none": 4 = the opening auction print at 09:00:00.000, 1 = a cross trade (one broker both sides).
- Price: the log efficient price is a Gaussian random walk in trade time (per-trade sd = daily_vol /
  sqrt(trades_per_session): a session's variance is the daily one) plus a small permanent impact of
  each order in its direction. The book is one tick wide around it (bid = floor, ask = bid + 1 tick):
  buys print at the ask, sells at the bid (bid/ask bounce). Overnight gaps between sessions. Prices
  are always on the tick grid and at least one tick.
- Sizes: discrete Pareto, P(q >= k) = k^-1.25: 58% single contracts, ~90% at most 5, ~0.7% blocks of
  50 or more, capped at 500. Brokers: real B3 broker codes, Zipf-like popularity.
- `random_walk=True` is the null market for leakage tests: sides are independent fair coins, the
  price an integer-tick random walk (Skellam steps, same variance) independent of sides and of its
  past: no bounce, no impact, no crosses. Arrival times are those of the default mode.
- No trade edits (`is_edit`) are generated: default streams stay clean.
"""

from __future__ import annotations

import copy
import heapq
import math
import operator
import threading
import time as _time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, TypeVar

import msgspec
import numpy as np

from tickvault.domain.events import B3_TZ, Tick, make_tick, to_ms
from tickvault.domain.instruments import DEFAULT, FUTURES_SESSION, INSTRUMENTS, Instrument, instrument_for

BRANCHING = 0.7  # Hawkes branching ratio: 70% of orders are reactions to earlier ones
FAST_SHARE, FAST_MS, SLOW_MS = 0.6, 4.0, 1200.0  # reaction delays (mean ms): algorithms, others
FOLLOW = 0.8  # P(a reaction order has its parent's side)
IMPACT = 0.25  # permanent impact of an order, in per-trade sds, in its direction
CROSS_SHARE = 0.002  # share of trades that are cross trades (type 1)
SWEEP_MAX, SWEEP_EXPONENT = 20, 2.5  # fills per order: P(k) ~ k^-2.5, k <= 20
SIZE_ALPHA, SIZE_MAX = 1.25, 500
_ORDERS_PER_CHUNK = 640  # with about 6 trades per cluster: about 4k trades per chunk

# Real B3 broker codes, most active first; popularity ~ 1/rank^1.1.
BROKERS = np.array(
    [3, 308, 386, 85, 120, 72, 27, 8, 16, 45, 40, 13, 15, 39, 90, 107, 127, 147, 172, 190, 238, 1982,
     114, 122, 262, 1099, 4090, 93]
)  # fmt: skip
_BROKER_CDF = np.cumsum(1.0 / np.arange(1, len(BROKERS) + 1) ** 1.1)
_BROKER_CDF /= _BROKER_CDF[-1]
_SWEEP_P = np.arange(1, SWEEP_MAX + 1, dtype=float) ** -SWEEP_EXPONENT
_SWEEP_P /= _SWEEP_P.sum()
_SWEEP_CDF = np.cumsum(_SWEEP_P)
_MEAN_SWEEP = float((_SWEEP_P * np.arange(1, SWEEP_MAX + 1)).sum())


@dataclass(frozen=True)
class InstrumentSpec:
    """One symbol family as simulated: the contract (the registry's) and how its market moves."""

    instrument: Instrument
    base_price: float
    daily_vol: float  # std of the daily log return
    trades_per_session: int  # average trades in a full session; sets the arrival intensity

    @property
    def tick_size(self) -> float:
        return self.instrument.tick_size

    @property
    def multiplier(self) -> float:  # financial volume = price * quantity * multiplier
        return self.instrument.multiplier


# (base price, daily vol, trades per session) per root; a full contract trades at its mini's prices
# (same underlying, same points), only its multiplier differs.
_MARKETS = {
    "WDO": (5400.0, 0.008, 300_000),
    "DOL": (5400.0, 0.008, 300_000),
    "WIN": (128_000.0, 0.012, 600_000),
    "IND": (128_000.0, 0.012, 600_000),
    DEFAULT.root: (100.0, 0.015, 20_000),
}
SPECS = {i.root: InstrumentSpec(i, *_MARKETS[i.root]) for i in (*INSTRUMENTS.values(), DEFAULT)}

# Every simulated symbol runs on this one session (its clock is shared: the streams are merged).
SESSION = FUTURES_SESSION
SESSION_MS = SESSION.length_ms


def spec_for(symbol: str) -> InstrumentSpec:
    """The registry's instrument of `symbol` (`domain.instruments`) with its simulated market."""
    return SPECS[instrument_for(symbol).root]


# --- intraday seasonality ---------------------------------------------------------------------------


def seasonality(hours: np.ndarray) -> np.ndarray:
    """Relative trade intensity by hours since the 09:00 open: a burst after the open that fades in
    about half an hour, a lull over lunch (12:00-14:00, deepest at 13:00), a build-up into the close.
    The first hour trades about 3x and the last about 2.4x as much as 12:00-13:00."""
    h = np.asarray(hours, dtype=float)
    return (
        1.0
        + 2.2 * np.exp(-h / 0.5)
        + 0.9 * np.exp(-(9.5 - h) / 0.7)
        - 0.5 * np.exp(-(((h - 4.0) / 1.0) ** 2))
    )


# The share of a session's activity done by each second since the open (strictly increasing): a
# unit-rate Poisson process mapped through its inverse is the seasonal one (a time change, exact).
_SECONDS = np.arange(SESSION_MS // 1000 + 1, dtype=float)
_RATE = seasonality((_SECONDS[:-1] + 0.5) / 3600.0)
_ACTIVITY = np.concatenate([[0.0], np.cumsum(_RATE) / _RATE.sum()])


def _brokers(rng: np.random.Generator, n: int) -> np.ndarray:
    return BROKERS[np.searchsorted(_BROKER_CDF, rng.random(n))]


class _SymbolStream:
    """One symbol's ticks, generated a chunk at a time."""

    def __init__(
        self, symbol: str, seed: int, start: datetime, first_trade_id: int, random_walk: bool
    ) -> None:
        self.symbol = symbol
        self.spec = spec = spec_for(symbol)
        self.rng = np.random.Generator(np.random.PCG64([seed % 2**64, zlib.crc32(symbol.encode())]))
        self.random_walk = random_walk
        # Built once through make_tick, which validates the symbol; every tick is a copy of it.
        self.template = make_tick(symbol, to_ms(start), first_trade_id, spec.base_price, 1)
        self.sigma = spec.daily_vol / math.sqrt(spec.trades_per_session)  # per trade, log price
        # Immigrant orders per session; each starts a cluster of 1/(1-BRANCHING) orders of sweeps.
        self.orders_per_session = spec.trades_per_session * (1 - BRANCHING) / _MEAN_SWEEP
        self.log_price = math.log(spec.base_price)
        self.walk_ticks = round(spec.base_price / spec.tick_size)  # random_walk mode: price in ticks
        self._begin_session(to_ms(start), first_trade_id)

    def _begin_session(self, start_ms: int, trade_id: int) -> None:
        day = datetime.fromtimestamp(start_ms / 1000, B3_TZ).date()
        self.open_ms = to_ms(SESSION.open_of(day))
        self.close_ms = self.open_ms + SESSION_MS
        into = float(np.interp((start_ms - self.open_ms) / 1000.0, _SECONDS, _ACTIVITY))
        self.u = into * self.orders_per_session  # position in the session's immigrant count
        self.pending_t = np.empty(0)  # orders drawn already that fall after the emitted horizon
        self.pending_s = np.empty(0, dtype=np.int64)
        self.trade_id = trade_id
        self.auction_due = start_ms == self.open_ms and trade_id == 1  # a resumed session had it

    def _next_session(self) -> None:
        day = SESSION.next_trading_day(datetime.fromtimestamp(self.open_ms / 1000, B3_TZ).date())
        gap = self.rng.normal(0.0, 0.3 * self.spec.daily_vol)  # overnight news
        if self.random_walk:
            self.walk_ticks = max(1, self.walk_ticks + round(gap * self.walk_ticks))
        else:
            self.log_price += gap
        self._begin_session(to_ms(SESSION.open_of(day)), 1)  # B3 trade numbers restart each session

    def chunk(self) -> list[Tick]:
        rng = self.rng
        u = self.u + np.cumsum(rng.exponential(1.0, _ORDERS_PER_CHUNK))
        session_ends = bool(u[-1] >= self.orders_per_session)
        u = u[u < self.orders_per_session]
        t = self.open_ms + np.interp(u / self.orders_per_session, _ACTIVITY, _SECONDS) * 1000.0
        s = rng.integers(0, 2, t.size) * 2 - 1
        # Later chunks only add orders after this chunk's last immigrant: all before it is final.
        horizon = float(self.close_ms) if session_ends else float(t[-1])
        if u.size:
            self.u = float(u[-1])
        times, sides = [self.pending_t, t], [self.pending_s, s]
        while t.size:  # reaction orders, one generation at a time (Hawkes branching)
            counts = rng.poisson(BRANCHING, t.size)
            n = int(counts.sum())
            fast = rng.random(n) < FAST_SHARE
            delay = np.where(fast, rng.exponential(FAST_MS, n), rng.exponential(SLOW_MS, n))
            follow = np.where(rng.random(n) < FOLLOW, 1, -1)
            t, s = np.repeat(t, counts) + delay, np.repeat(s, counts) * follow
            alive = t < self.close_ms  # reactions after the close never trade
            t, s = t[alive], s[alive]
            times.append(t)
            sides.append(s)
        all_t, all_s = np.concatenate(times), np.concatenate(sides)
        order = np.argsort(all_t, kind="stable")
        all_t, all_s = all_t[order], all_s[order]
        cut = int(np.searchsorted(all_t, horizon, side="left" if session_ends else "right"))
        self.pending_t, self.pending_s = all_t[cut:], all_s[cut:]
        ticks = self._fills(np.floor(all_t[:cut]).astype(np.int64), all_s[:cut])
        if session_ends:
            self._next_session()
        return ticks

    def _fills(self, order_ms: np.ndarray, order_side: np.ndarray) -> list[Tick]:
        """Each order prints a sweep of fills in its millisecond."""
        rng, spec = self.rng, self.spec
        k = np.searchsorted(_SWEEP_CDF, rng.random(order_ms.size)) + 1
        ms = np.repeat(order_ms, k)
        n = ms.size
        first = np.zeros(n, dtype=bool)
        first[np.cumsum(k) - k] = True  # the first fill of each order carries its impact
        aggressor = np.repeat(_brokers(rng, order_ms.size), k)
        passive = _brokers(rng, n)
        quantity = np.minimum(np.floor(rng.random(n) ** (-1.0 / SIZE_ALPHA)), SIZE_MAX).astype(np.int64)
        out = [self._auction()] if self.auction_due and n else []  # at the pre-chunk price
        if self.random_walk:
            side = rng.integers(0, 2, n) * 2 - 1
            lam = (self.sigma * self.walk_ticks) ** 2 / 2  # Skellam variance 2*lam = per-trade var
            path = self.walk_ticks + np.cumsum(rng.poisson(lam, n) - rng.poisson(lam, n))
            price_ticks = np.maximum(path, 1)  # positive prices (a floor never reached in practice)
            trade_type = np.where(side > 0, 2, 3)
            if n:
                self.walk_ticks = int(price_ticks[-1])
        else:
            side = np.repeat(order_side, k)
            steps = rng.normal(0.0, self.sigma, n) + first * side * (IMPACT * self.sigma)
            log_price = self.log_price + np.cumsum(steps)
            bid = np.maximum(np.floor(np.exp(log_price) / spec.tick_size), 1)
            price_ticks = bid + (side > 0)  # buyers lift the ask, sellers hit the bid
            trade_type = np.where(side > 0, 2, 3)
            cross = rng.random(n) < CROSS_SHARE
            trade_type[cross] = 1
            passive[cross] = aggressor[cross]  # a broker crossing two of its clients
            if n:
                self.log_price = float(log_price[-1])
        buyer = np.where(side > 0, aggressor, passive)
        seller = np.where(side > 0, passive, aggressor)
        price = np.round(price_ticks * spec.tick_size, 8)  # 0.5, 5: exact; 0.01: no float dust
        volume = price * quantity * spec.multiplier  # the same float arithmetic as make_tick
        return self._build(out, ms, price, quantity, volume, buyer, seller, trade_type)

    def _auction(self) -> Tick:
        """The opening auction print: 09:00:00.000, trade type 4, a large uncrossing quantity."""
        spec = self.spec
        self.auction_due = False
        ticks = self.walk_ticks if self.random_walk else round(math.exp(self.log_price) / spec.tick_size)
        buyer, seller = _brokers(self.rng, 2).tolist()
        tick = make_tick(
            self.symbol, self.open_ms, self.trade_id, round(max(1, ticks) * spec.tick_size, 8),
            int(self.rng.integers(50, 500)), multiplier=spec.multiplier, buyer=buyer, seller=seller,
            trade_type=4,
        )  # fmt: skip
        self.trade_id += 1
        return tick

    def _build(self, out: list[Tick], ms: np.ndarray, *columns: np.ndarray) -> list[Tick]:
        """Ticks from columns valid by construction, without validating each one again (5x faster
        than make_tick; the tests check both give equal ticks): copy a validated template, set fields."""
        template, clone, put = self.template, copy.copy, msgspec.structs.force_setattr
        names = ("buy", "sell")
        trade_id = self.trade_id
        last_ms, stamp = -1, None
        for m, price, qty, volume, buyer, seller, trade_type in zip(
            ms.tolist(), *(c.tolist() for c in columns), strict=True
        ):
            if m != last_ms:  # bursts share a millisecond: one datetime for all of them
                stamp, last_ms = datetime.fromtimestamp(m / 1000, B3_TZ), m  # exact to the ms
            t = clone(template)
            put(t, "timestamp", stamp)
            put(t, "timestamp_ms", m)
            put(t, "trade_id", trade_id)
            put(t, "price", price)
            put(t, "volume", volume)
            put(t, "quantity", qty)
            put(t, "buyer", buyer)
            put(t, "seller", seller)
            put(t, "trade_type", trade_type)
            put(t, "aggressor", names[trade_type - 2] if 2 <= trade_type <= 3 else "none")
            out.append(t)
            trade_id += 1
        self.trade_id = trade_id
        return out

    def __iter__(self) -> Iterator[Tick]:
        while True:
            yield from self.chunk()


class MarketSimulator:
    """Merged, time-ordered ticks of several symbols; infinite. Same seed, symbols, start: same ticks."""

    def __init__(
        self,
        symbols: Sequence[str],
        *,
        seed: int = 7,
        start: datetime | None = None,
        first_trade_ids: Mapping[str, int] | None = None,
        random_walk: bool = False,
    ) -> None:
        self.symbols = list(symbols)
        if not self.symbols or len(set(self.symbols)) != len(self.symbols):
            raise ValueError(f"symbols must be distinct and at least one, got {self.symbols!r}")
        begin = SESSION.start_for(datetime.now(B3_TZ)) if start is None else start
        if begin.tzinfo is None or begin.utcoffset() is None:
            raise ValueError(f"start {begin.isoformat()} has no timezone")
        ids = dict(first_trade_ids or {})
        if set(ids) - set(self.symbols) or any(i < 0 for i in ids.values()):
            raise ValueError(f"first_trade_ids must be >= 0 and of simulated symbols, got {ids!r}")
        self._start = SESSION.trading_moment(begin)  # outside trading hours: the next session's open
        self._streams = [
            _SymbolStream(s, seed, self._start, ids.get(s, 1), random_walk) for s in self.symbols
        ]
        self._last: Tick | None = None
        self._iterator: Iterator[Tick] | None = None

    @property
    def clock(self) -> datetime:
        """Exchange time of the last tick produced; before any, the start (moved into a session)."""
        return self._start if self._last is None else self._last.timestamp

    def ticks(self) -> Iterator[Tick]:
        """The one infinite tick iterator of this simulator (calling again returns the same one)."""
        if self._iterator is None:
            self._iterator = self._merged()
        return self._iterator

    def _merged(self) -> Iterator[Tick]:
        # heapq.merge breaks ties by input order: same-millisecond ticks go in symbol order.
        for tick in heapq.merge(*self._streams, key=operator.attrgetter("timestamp_ms")):
            self._last = tick
            yield tick


class Timed(Protocol):
    """Anything stamped with an exchange time: a tick, a book batch."""

    @property
    def timestamp_ms(self) -> int: ...


T = TypeVar("T", bound=Timed)


def pace(
    ticks: Iterable[T],
    speed: float,
    *,
    stop: threading.Event | None = None,
    clock: Callable[[], float] = _time.monotonic,
    sleep: Callable[[float], object] | None = None,
    max_wait: float = 1.0,
    step: float = 0.05,
) -> Iterator[T]:
    """Release ticks (or anything with a `timestamp_ms`, such as book batches) at `speed` times
    exchange time (1 = real time, 60 = a minute per second; 0 or inf = as fast as possible). A single
    wait is capped at `max_wait` s, so the night between sessions (or a long lull) passes in a
    second, not hours; the pace restarts from there. Sleeps in steps of at most `step` s (by default
    waiting on `stop` itself), so a set `stop` ends iteration promptly. A consumer that falls behind
    gets the backlog as fast as it takes it, like a real feed."""
    if math.isnan(speed) or speed < 0:
        raise ValueError(f"speed must be >= 0 (0 or inf: unpaced), got {speed!r}")
    wait = sleep or (stop.wait if stop is not None else _time.sleep)
    unpaced = speed == 0 or math.isinf(speed)

    def paced() -> Iterator[T]:  # a nested generator, so a bad speed raises at the call
        anchor_wall, anchor_ms = 0.0, None
        for tick in ticks:
            if stop is not None and stop.is_set():
                return
            if unpaced:
                yield tick
                continue
            now = clock()
            if anchor_ms is None:
                anchor_wall, anchor_ms = now, tick.timestamp_ms
            due = anchor_wall + (tick.timestamp_ms - anchor_ms) / 1000.0 / speed
            if due - now > max_wait:  # re-anchor: this tick after max_wait, the pace resumes from it
                anchor_wall, anchor_ms = now + max_wait, tick.timestamp_ms
                due = anchor_wall
            while (left := due - clock()) > 0:
                wait(min(left, step))
                if stop is not None and stop.is_set():
                    return
            yield tick

    return paced()
