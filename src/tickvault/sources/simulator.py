"""A deterministic simulator of B3 futures sessions: the default source, so a live market runs any hour.

Per symbol, in vectorised chunks (numpy, one PCG64 stream per symbol, seeded from the seed and a
stable hash of the symbol, so a symbol's ticks do not depend on which others are simulated):
- arrivals: bursts (several trades in the same few milliseconds, as aggressive orders sweep levels)
  over a Poisson background whose rate follows B3's intraday U shape (busy open and close, a lunch
  lull around 12:00-14:00), scaled so a session has about `trades_per_session` trades;
- price: an efficient price doing a random walk with the family's daily volatility spread over the
  session's trades, traded at the ask by buyers and at the bid by sellers (a one-tick spread, so
  prints bounce); aggressor sides persist (order-flow autocorrelation) and push the price a little;
- sizes heavy-tailed (mostly 1-5 contracts, rare blocks of hundreds), broker ids Zipf-popular;
- sessions 09:00-18:30 America/Sao_Paulo on BVMF trading days (holidays from exchange_calendars);
  trade ids restart at 1 each session and the first print of a session is the opening auction.
`random_walk=True` removes every predictable structure (independent sides, no impact): a null market.
"""

from __future__ import annotations

import functools
import heapq
import logging
import math
import threading
import time as _time
import warnings
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta

import numpy as np

from tickvault.events import B3_TZ, Tick, make_tick, to_ms

log = logging.getLogger("tickvault.simulator")

SESSION_OPEN = time(9, 0)
SESSION_CLOSE = time(18, 30)
_SESSION_MS = (18 * 60 + 30 - 9 * 60) * 60_000
_CHUNK = 4096
BROKERS = np.array(
    [3, 8, 13, 15, 16, 27, 39, 40, 45, 72, 85, 90, 107, 120, 127, 147, 172, 190, 238, 308, 386, 1982]
)


@dataclass(frozen=True)
class InstrumentSpec:
    family: str
    tick_size: float
    multiplier: float  # financial volume = price * quantity * multiplier
    base_price: float
    daily_vol: float
    trades_per_session: int


SPECS = {
    "WDO": InstrumentSpec("WDO", 0.5, 10.0, 5400.0, 0.008, 300_000),
    "WIN": InstrumentSpec("WIN", 5.0, 0.2, 128_000.0, 0.012, 600_000),
    "GENERIC": InstrumentSpec("GENERIC", 0.01, 1.0, 100.0, 0.015, 20_000),
}


def spec_for(symbol: str) -> InstrumentSpec:
    if symbol.startswith(("WDO", "DOL")):
        return SPECS["WDO"]
    if symbol.startswith(("WIN", "IND")):
        return SPECS["WIN"]
    return SPECS["GENERIC"]


@functools.lru_cache(maxsize=1)
def _calendar() -> object | None:
    try:
        import exchange_calendars

        with warnings.catch_warnings():  # pandas deprecation noise from inside exchange_calendars
            warnings.simplefilter("ignore")
            return exchange_calendars.get_calendar("BVMF")
    except Exception as exc:
        log.warning("no BVMF calendar (%s): simulating every weekday as a session", exc)
        return None


@functools.lru_cache(maxsize=4096)
def is_trading_day(day: date) -> bool:
    """A BVMF session day (holidays from exchange_calendars; weekdays outside its date range)."""
    cal = _calendar()
    if cal is not None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return bool(cal.is_session(day.isoformat()))  # type: ignore[attr-defined]
        except Exception:  # outside the calendar's range
            pass
    return day.weekday() < 5


def _open_of(day: date) -> datetime:
    return datetime.combine(day, SESSION_OPEN, tzinfo=B3_TZ)


def next_session_open(after: datetime) -> datetime:
    """The first session open at or after `after`."""
    local = after.astimezone(B3_TZ)
    day = local.date()
    if local.timetz().replace(tzinfo=None) > SESSION_OPEN or not is_trading_day(day):
        day += timedelta(days=1)
    while not is_trading_day(day):
        day += timedelta(days=1)
    return _open_of(day)


def session_start_for(now: datetime) -> datetime:
    """The open of the session that is current or most recent at `now`."""
    local = now.astimezone(B3_TZ)
    day = local.date()
    if local.time() < SESSION_OPEN or not is_trading_day(day):
        day -= timedelta(days=1)
        while not is_trading_day(day):
            day -= timedelta(days=1)
    return _open_of(day)


def _in_session(moment: datetime) -> bool:
    local = moment.astimezone(B3_TZ)
    return is_trading_day(local.date()) and SESSION_OPEN <= local.time() < SESSION_CLOSE


def seasonality(hours_since_open: np.ndarray) -> np.ndarray:
    """Relative trade rate over the session (mean about 1): U shape with a lunch lull."""
    h = hours_since_open
    return (
        0.55
        + 1.7 * np.exp(-h / 0.6)
        + 1.1 * np.exp(-(9.5 - h) / 0.7)
        - 0.25 * np.exp(-(((h - 3.5) / 1.2) ** 2))
    )


_MEAN_SEASONALITY = float(seasonality(np.linspace(0, 9.5, 10_000)).mean())


class _SymbolStream:
    """One symbol's ticks, generated a chunk at a time."""

    def __init__(
        self, symbol: str, seed: int, start: datetime, first_trade_id: int, random_walk: bool
    ) -> None:
        self.symbol = symbol
        self.spec = spec_for(symbol)
        self.rng = np.random.Generator(np.random.PCG64([seed & 0xFFFFFFFF, zlib.crc32(symbol.encode())]))
        self.random_walk = random_walk
        moment = start if _in_session(start) else next_session_open(start)
        self.session_open_ms = to_ms(_open_of(moment.astimezone(B3_TZ).date()))
        self.clock_ms = to_ms(moment)
        self.trade_id = first_trade_id
        self.auction_pending = self.clock_ms == self.session_open_ms and first_trade_id == 1
        tick = self.spec.tick_size
        self.mid = round(self.spec.base_price / tick)  # in ticks
        self.side = 1
        self.per_trade_sigma = self.spec.daily_vol / math.sqrt(self.spec.trades_per_session)
        weights = 1.0 / np.arange(1, len(BROKERS) + 1) ** 1.1
        self.broker_p = weights / weights.sum()

    def _next_session(self) -> None:
        day = datetime.fromtimestamp(self.session_open_ms / 1000, B3_TZ) + timedelta(days=1)
        opening = next_session_open(_open_of(day.date()))
        self.session_open_ms = self.clock_ms = to_ms(opening)
        self.trade_id = 1
        self.auction_pending = True
        overnight = self.rng.normal(0.0, self.spec.daily_vol * 0.3)  # an opening gap
        self.mid = max(1, round(self.mid * math.exp(overnight)))

    def chunk(self) -> list[Tick]:
        rng, spec = self.rng, self.spec
        hours = (self.clock_ms - self.session_open_ms) / 3_600_000
        mean_rate = spec.trades_per_session / _SESSION_MS  # trades per ms over a session
        rate = mean_rate * float(seasonality(np.array([hours]))[0]) / _MEAN_SEASONALITY
        # about a minute of trading per chunk, so the rate follows the time of day closely
        n = int(min(_CHUNK, max(64, rate * 60_000)))
        burst = rng.random(n) < 0.55
        gaps = np.where(burst, rng.exponential(1.5, n), rng.exponential(1.0 / (rate * 0.45), n))
        times = self.clock_ms + np.floor(np.cumsum(gaps)).astype(np.int64)
        close_ms = self.session_open_ms + _SESSION_MS
        n = int(np.searchsorted(times, close_ms))  # the rest belongs to the next session
        if n == 0:
            self._next_session()
            return self.chunk()
        times = times[:n]
        if self.random_walk:
            sides = np.where(rng.random(n) < 0.5, 1, -1)
            steps = rng.normal(0.0, self.per_trade_sigma, n)
        else:
            flips = rng.random(n) < 0.3  # sides persist: P(same side as the last trade) = 0.7
            sides = self.side * np.cumprod(np.where(flips, -1, 1))
            steps = rng.normal(0.0, self.per_trade_sigma, n) + sides * self.per_trade_sigma * 0.15
        tick = spec.tick_size
        price_ticks = self.mid * np.exp(np.cumsum(steps))
        mids = np.maximum(np.round(price_ticks), 2)
        traded = np.where(sides > 0, mids, mids - 1)  # buyers lift the ask, sellers hit the bid
        quantity = np.minimum(np.floor(rng.pareto(1.3, n) * 1.4) + 1, 500).astype(np.int64)
        buyers = rng.choice(BROKERS, n, p=self.broker_p)
        sellers = rng.choice(BROKERS, n, p=self.broker_p)
        ticks: list[Tick] = []
        for i in range(n):
            trade_type = 2 if sides[i] > 0 else 3
            qty = int(quantity[i])
            if self.auction_pending:
                trade_type, qty = 1, qty * 20 + 100  # the opening auction print
                self.auction_pending = False
            ticks.append(
                make_tick(
                    self.symbol, int(times[i]), self.trade_id, float(traded[i]) * tick, qty,
                    multiplier=spec.multiplier, buyer=int(buyers[i]), seller=int(sellers[i]),
                    trade_type=trade_type,
                )
            )  # fmt: skip
            self.trade_id += 1
        self.mid = int(mids[-1])
        self.side = int(sides[-1])
        self.clock_ms = int(times[-1])
        if times[-1] >= close_ms - 1 or n < len(gaps):
            self._next_session()
        return ticks

    def __iter__(self) -> Iterator[Tick]:
        while True:
            yield from self.chunk()


class MarketSimulator:
    """Merged, time-ordered ticks of several symbols; infinite."""

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
        begin = start or session_start_for(datetime.now(B3_TZ))
        ids = first_trade_ids or {}
        self._streams = [_SymbolStream(s, seed, begin, ids.get(s, 1), random_walk) for s in self.symbols]
        self._clock = begin

    @property
    def clock(self) -> datetime:
        return self._clock

    def ticks(self) -> Iterator[Tick]:
        def keyed(k: int, stream: _SymbolStream) -> Iterator[tuple[int, int, Tick]]:
            return ((t.timestamp_ms, k, t) for t in stream)  # k breaks ties: no Tick comparison

        merged = heapq.merge(*[keyed(k, stream) for k, stream in enumerate(self._streams)])
        for _, _, tick in merged:
            self._clock = tick.timestamp
            yield tick


def pace(
    ticks: Iterable[Tick],
    speed: float,
    *,
    stop: threading.Event | None = None,
    clock: Callable[[], float] = _time.monotonic,
    sleep: Callable[[float], None] = _time.sleep,
    max_wait: float = 1.0,
) -> Iterator[Tick]:
    """Release ticks at `speed` x exchange time (0 or inf: as fast as possible). A single wait is at
    most `max_wait` seconds, so an overnight jump between sessions does not stall the run."""
    if speed <= 0 or math.isinf(speed):
        for tick in ticks:
            if stop is not None and stop.is_set():
                return
            yield tick
        return
    wall_start: float | None = None
    market_start = 0
    for tick in ticks:
        if stop is not None and stop.is_set():
            return
        if wall_start is None:
            wall_start, market_start = clock(), tick.timestamp_ms
        due = wall_start + (tick.timestamp_ms - market_start) / 1000.0 / speed
        wait = due - clock()
        if wait > max_wait:  # a gap (overnight): skip it, keep the pace from here
            wall_start -= wait - max_wait
            wait = max_wait
        while wait > 0:
            if stop is not None and stop.is_set():
                return
            step = min(wait, 0.05)
            sleep(step)
            wait -= step
        yield tick
