"""The feature engine: per-tick state, point-in-time features, history statistics cached per session.

Every feature at time t uses only ticks stamped <= t (the engine folds ticks in the order given and
refuses nothing: a tick older than the engine's clock is folded into nothing and emits nothing, see
`FeatureEngine.on_tick`). Replaying the stored ticks through a fresh engine (`backfill`) gives the same
values as the live run at the same timestamps. Definitions (also in the README, "Features"):

Base features, updated per tick or per closed minute (minutes are B3 wall-clock minutes):
- `ret_1m`, `ret_5m`, `ret_15m`: log return of the last price against the last price at or before the
  end of the second `h` earlier (a one-second grid; None until the session has that much history).
- `ema_fast`, `ema_slow` (12 and 26 closed minutes), `ema_gap` (fast/slow - 1), `rsi_14` (Wilder, on
  closed-minute closes).
- `realized_vol_30m`: sqrt of the sum of squared 1-minute log returns over the last 30 closed minutes
  (not annualised: a 30-minute figure, in log-return units).
- `vwap_distance`: last price / session VWAP - 1.
- `trade_intensity_60s`: trades in the last 60 seconds; `ofi_60s`: (buy - sell aggressor quantity) /
  (buy + sell) in the last 60 seconds (None without aggressor trades).
- `spread`, `book_imbalance`, `depth_imbalance_5`, `microprice`: from the best five levels of the book
  after its last complete batch stamped before the tick (`analytics.book_features` defines them, and
  why "before"): the live book of the updates a source sends (`on_book`), or in a backfill the stored
  book (`backfill(..., book=...)`); None without a book.

History-aware features (previous sessions' statistics are computed once per session day; when they
cannot be had at the session start, see `FeatureEngine.set_history`). With
`FeatureConfig.time_travel` off (TIME_TRAVEL_ENABLED=false) none of them is computed: all five are
None and no history is read or kept.
- `volume_pattern_score`: Pearson correlation between this session's per-minute traded quantity over
  the last 60 closed minutes and the mean quantity of the same clock minutes over the previous sessions
  (up to 30). None with fewer than 10 closed minutes today or no previous session.
- `historical_momentum_rank`: percentile (0..1, ties count half) of the last hour's return (closed
  minute closes, m-60 to m) against the same clock window on each previous session (up to 30). None
  with fewer than 5 usable previous sessions.
- `microstructure_imbalance`: (B - S) / (B + S) over the last 5 minutes, where B and S are the
  quantities of buy- and sell-aggressor "large" trades; a trade is large when its quantity is at least
  the 90th percentile of trade quantities over the previous sessions. 0.0 when no large trade in the
  window; None without a previous session.
- `volatility_regime_30d`: `realized_vol_30m` ranked against the same clock window on the previous
  sessions (up to 30): HIGH_VOL above the 80th percentile, LOW_VOL below the 20th, else NORMAL_VOL;
  UNKNOWN with fewer than 5 usable sessions or 30 closed minutes today.
- `correlation_stability`: for every other configured symbol, the correlation of 1-minute log returns
  over the last 30 closed minutes is sampled at each minute close; stability = 1 - the mean (over the
  other symbols) of the standard deviation of the last 12 samples. 1 means the co-movement did not
  change over the last hour. None with no other symbol or fewer than 12 samples.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta

import numpy as np

from tickvault.analytics.book import LevelBook, OrderBook
from tickvault.analytics.book_features import (
    BOOK_FEATURES,
    NO_VALUES,
    BookFeatureTable,
    BookValues,
    LiveBookFeatures,
)
from tickvault.domain.book import BookColumns, BookKind, BookUpdate, OrderUpdate
from tickvault.domain.events import B3_TZ, Features, Tick, from_ms, to_ms
from tickvault.errors import DataError

MINUTES = 1440
BASE_FEATURES = (
    "price", "ret_1m", "ret_5m", "ret_15m", "ema_fast", "ema_slow", "ema_gap", "rsi_14", "realized_vol_30m",
    "vwap_distance", "trade_intensity_60s", "ofi_60s", *BOOK_FEATURES,
)  # fmt: skip
HISTORY_FEATURES = (
    "volume_pattern_score", "historical_momentum_rank", "microstructure_imbalance", "volatility_regime_30d",
    "correlation_stability",
)  # fmt: skip
FEATURE_NAMES = BASE_FEATURES + HISTORY_FEATURES
REGIMES = ("LOW_VOL", "NORMAL_VOL", "HIGH_VOL", "UNKNOWN")


@dataclass(frozen=True)
class FeatureConfig:
    emit_interval_ms: int = 1_000  # a symbol's features go out at most once per interval of exchange time
    lookback_sessions: int = 30
    min_sessions: int = 5
    large_trade_quantile: float = 0.9
    ema_fast: int = 12
    ema_slow: int = 26
    rsi_period: int = 14
    vol_window: int = 30
    pattern_window: int = 60
    corr_window: int = 30
    corr_samples: int = 12
    time_travel: bool = True  # False: no previous sessions, the HISTORY_FEATURES are all None


@dataclass
class SessionSummary:
    """What later sessions need of one session: per clock minute the last price and the quantity
    traded, and a histogram of trade quantities. Exact (no float sums), so a summary built live
    equals one built from the store."""

    day: date
    minute_close: np.ndarray  # float64[1440], NaN before the first trade, carried forward after
    minute_quantity: np.ndarray  # int64[1440]
    quantities: Counter[int]

    def window_return(self, end_minute: int, length: int) -> float | None:
        if end_minute - length < 0:
            return None
        a, b = self.minute_close[end_minute - length], self.minute_close[end_minute]
        return float(math.log(b / a)) if np.isfinite(a) and np.isfinite(b) else None

    def window_vol(self, end_minute: int, length: int) -> float | None:
        if end_minute - length < 0:
            return None
        closes = self.minute_close[end_minute - length : end_minute + 1]
        if not np.all(np.isfinite(closes)):
            return None
        return float(math.sqrt(float(np.sum(np.diff(np.log(closes)) ** 2))))


def _ema(previous: float | None, value: float, span: int) -> float:
    return value if previous is None else previous + 2.0 / (span + 1) * (value - previous)


def local_minute(ms: int) -> tuple[date, int]:
    """(B3 calendar day, minute of that day) of an exchange time."""
    local = from_ms(ms, B3_TZ)
    return local.date(), local.hour * 60 + local.minute


def quantile_of(hist: Counter[int], q: float) -> float | None:
    """The q-quantile (lower) of a histogram of integers: exact, independent of arrival order."""
    total = sum(hist.values())
    if not total:
        return None
    rank, seen = math.ceil(q * total), 0
    for value in sorted(hist):
        seen += hist[value]
        if seen >= rank:
            return float(value)
    return float(max(hist))


def summarize_session(day: date, ms: np.ndarray, price: np.ndarray, quantity: np.ndarray) -> SessionSummary:
    """The summary of one session from its ticks in time order."""
    minutes = np.array([local_minute(int(m))[1] for m in ms], dtype=np.int64) if len(ms) else np.empty(0, int)
    close = np.full(MINUTES, np.nan)
    qty = np.zeros(MINUTES, dtype=np.int64)
    if len(ms):
        last_of_minute = np.r_[minutes[1:] != minutes[:-1], True]
        close[minutes[last_of_minute]] = price[last_of_minute]
        np.add.at(qty, minutes, quantity)
    return SessionSummary(day, _carry_forward(close), qty, Counter(quantity.tolist()))


def _carry_forward(values: np.ndarray) -> np.ndarray:
    idx = np.where(np.isfinite(values), np.arange(len(values)), -1)
    np.maximum.accumulate(idx, out=idx)
    out = np.where(idx >= 0, values[np.maximum(idx, 0)], np.nan)
    return out


class SecondWindow:
    """Running sums over the last `seconds` seconds, per channel, O(1) per update."""

    def __init__(self, seconds: int, channels: int) -> None:
        self.n = seconds
        self.slots = np.zeros((seconds, channels))
        self.totals = np.zeros(channels)
        self.head = -1  # newest second folded in

    def advance(self, second: int) -> None:
        if self.head < 0 or second - self.head >= self.n:
            self.slots[:] = 0.0
            self.totals[:] = 0.0
        else:
            for s in range(self.head + 1, second + 1):
                slot = self.slots[s % self.n]
                self.totals -= slot
                slot[:] = 0.0
        self.head = max(self.head, second)

    def add(self, second: int, values: Sequence[float]) -> None:
        if second > self.head:
            self.advance(second)
        self.slots[second % self.n] += values
        self.totals += values


class PriceGrid:
    """Last price at the end of each second, for the last `seconds` seconds."""

    def __init__(self, seconds: int) -> None:
        self.n = seconds
        self.price = np.full(seconds, np.nan)
        self.stamp = np.full(seconds, -1, dtype=np.int64)
        self.head = -1

    def set(self, second: int, price: float) -> None:
        if self.head >= 0 and second > self.head:
            carried = self.price[self.head % self.n]
            for s in range(max(self.head + 1, second - self.n + 1), second):
                self.price[s % self.n], self.stamp[s % self.n] = carried, s
        self.price[second % self.n], self.stamp[second % self.n] = price, second
        self.head = max(self.head, second)

    def at(self, second: int) -> float | None:
        slot = second % self.n
        return float(self.price[slot]) if self.stamp[slot] == second else None


@dataclass
class SymbolState:
    symbol: str
    config: FeatureConfig
    day: date | None = None
    last_ms: int = -1
    last_emit_ms: int = -(2**62)
    price: float = math.nan
    notional: float = 0.0
    quantity: int = 0
    minute: int = -1  # current (open) minute of the day
    close: np.ndarray = field(default_factory=lambda: np.full(MINUTES, np.nan))
    minute_qty: np.ndarray = field(default_factory=lambda: np.zeros(MINUTES, dtype=np.int64))
    quantities: Counter[int] = field(default_factory=Counter)
    grid: PriceGrid = field(default_factory=lambda: PriceGrid(16 * 60))
    flow: SecondWindow = field(default_factory=lambda: SecondWindow(60, 3))  # trades, buy qty, sell qty
    large: SecondWindow = field(default_factory=lambda: SecondWindow(300, 2))  # large buy qty, large sell qty
    ema_fast: float | None = None
    ema_slow: float | None = None
    rsi_gain: float | None = None
    rsi_loss: float | None = None
    rsi_seen: int = 0
    prev_close: float | None = None
    closed: list[float] = field(default_factory=list)  # closes of the closed minutes, in order
    history: list[SessionSummary] = field(default_factory=list)
    large_threshold: float | None = None
    # the provider could not give the history at the session start: aggressor trades of the last
    # `large` window (second, quantity, buy, sell) are kept so `set_history` can rebuild that window
    history_pending: bool = False
    recent: deque[tuple[int, int, int, int]] = field(default_factory=deque)
    cached: dict[str, float | str | None] = field(default_factory=dict)  # values updated at minute close
    corr_samples: dict[str, deque[float]] = field(default_factory=dict)
    day_end_ms: int = -(2**62)  # the next B3 midnight: a tick from then on opens a session and emits

    def summary(self) -> SessionSummary:
        assert self.day is not None
        return SessionSummary(
            self.day, _carry_forward(self.close), self.minute_qty.copy(), Counter(self.quantities)
        )

    def closes_until(self, minute: int) -> np.ndarray:
        return _carry_forward(self.close[: minute + 1])


# (symbol, the times of its ticks, ascending and distinct) -> the book features there, from a stored
# book (None: no book stored for that symbol)
BookProvider = Callable[[str, np.ndarray], BookFeatureTable | None]

# (symbol, day, n) -> the summaries of up to n sessions before day, oldest first; None when they cannot
# be had now (the store is unreachable): the session starts without them, `set_history` brings them
HistoryProvider = Callable[[str, date, int], list[SessionSummary] | None]


class FeatureEngine:
    """Features of several symbols from their ticks in time order. `on_tick` returns the Features
    event due at that tick (at most one per `emit_interval_ms` of exchange time per symbol) or None.

    `history(symbol, day, n)` gives the summaries of the `n` sessions before `day` (from the store in
    a running system), or None when it cannot now (see `set_history`); without it, the engine
    remembers the sessions it has seen itself."""

    def __init__(
        self,
        symbols: Iterable[str],
        config: FeatureConfig | None = None,
        history: HistoryProvider | None = None,
    ) -> None:
        self.config = config or FeatureConfig()
        self.states = {s: SymbolState(s, self.config) for s in symbols}
        self.history = history
        self.late = 0  # ticks older than their symbol's clock: not folded (point-in-time)
        self.live_books: dict[str, LiveBookFeatures] = {}  # the book features' live books
        self.stored_books: dict[str, BookFeatureTable | None] = {}  # a backfill's, from the store
        self.book_rejected = 0

    @property
    def books(self) -> dict[str, LevelBook | OrderBook]:
        """The live order books, per symbol."""
        return {symbol: live.book for symbol, live in self.live_books.items()}

    @property
    def book_late(self) -> int:
        """Book batches that arrived after a tick they are stamped before (live != backfill there)."""
        return sum(live.late for live in self.live_books.values())

    @property
    def book_gaps(self) -> int:
        """Gaps in the live books' update seqs (their values None until the next snapshot)."""
        return sum(live.gaps for live in self.live_books.values())

    def book_time(self, symbol: str) -> int | None:
        """The effective time of `symbol`'s live book (its last complete batch); None: no batch yet."""
        live = self.live_books.get(symbol)
        return live.time_ms if live is not None else None

    def on_book(self, update: BookUpdate | OrderUpdate) -> None:
        """Fold one book update (MBP or MBO, by the symbol's first one) into the symbol's live book;
        the book features read it between complete batches only (`analytics.book_features`)."""
        state = self.states.get(update.symbol)
        if state is None:
            return
        live = self.live_books.get(update.symbol)
        if live is None:
            kind: BookKind = "mbp" if isinstance(update, BookUpdate) else "mbo"
            live = self.live_books[update.symbol] = LiveBookFeatures(update.symbol, kind)
        # no tick before this emits: before it, the book's values need not be kept
        needed_from = min(state.last_emit_ms + self.config.emit_interval_ms, state.day_end_ms)
        try:
            live.add(update, needed_from=needed_from, clock_ms=state.last_ms)
        except DataError:  # the other kind of update than this symbol's book: counted, not folded
            self.book_rejected += 1

    def load_book(self, cols: BookColumns, *, live_after_ms: int | None = None) -> None:
        """Start `cols.symbol`'s live book from a stored one (a restart; see `LiveBookFeatures.load`).
        `live_after_ms`: the batches of effective time after it are applied one by one, as if they
        came live, so a tick stamped before the stored book's clock (a run resumed after its last
        stored tick, its book stored further) reads the book as it was then, as a backfill does."""
        if cols.symbol not in self.states:
            return
        live = self.live_books[cols.symbol] = LiveBookFeatures(cols.symbol, cols.kind)
        ends = cols.batch_ends()
        if live_after_ms is None or not ends.size:
            live.load(cols)
            return
        effective = np.maximum.accumulate(cols.timestamp_ms)[ends]
        settled = int(np.searchsorted(effective, live_after_ms, side="right"))  # batches loaded at once
        start = int(ends[settled - 1]) + 1 if settled else 0
        if settled:
            live.load(cols.take(slice(0, start)))
        for event in cols.take(slice(start, int(ends[-1]) + 1)).events():
            self.on_book(event)

    def use_stored_book(self, symbol: str, table: BookFeatureTable | None) -> None:
        """Read `symbol`'s book features from `table` (a stored book's, at its ticks' times; None: no
        book) instead of a live book: how a backfill gives the live values."""
        self.stored_books[symbol] = table

    def _book_values(self, symbol: str, t_ms: int) -> BookValues:
        if symbol in self.stored_books:
            table = self.stored_books[symbol]
            return table.at(t_ms) if table is not None else NO_VALUES
        live = self.live_books.get(symbol)
        return live.values_before(t_ms) if live is not None else NO_VALUES

    def on_tick(self, tick: Tick) -> Features | None:
        state = self.states.get(tick.symbol)
        if state is None:
            state = self.states[tick.symbol] = SymbolState(tick.symbol, self.config)
        if tick.timestamp_ms < state.last_ms or tick.is_edit:
            self.late += 1
            return None
        day, minute = local_minute(tick.timestamp_ms)
        if day != state.day:
            self._new_session(state, day)
        if minute != state.minute:
            for closed in range(max(state.minute, 0) if state.minute >= 0 else minute, minute):
                self._close_minute(state, closed)  # minutes without trades close too, at the last price
            state.minute = minute
        self._fold(state, tick, minute)
        if tick.timestamp_ms - state.last_emit_ms < self.config.emit_interval_ms:
            return None
        state.last_emit_ms = tick.timestamp_ms
        values = self.values(state)
        return Features(
            symbol=tick.symbol, timestamp=tick.timestamp, timestamp_ms=tick.timestamp_ms, values=values
        )

    # -- per tick ---------------------------------------------------------------------------------

    def _fold(self, state: SymbolState, tick: Tick, minute: int) -> None:
        second = tick.timestamp_ms // 1000
        state.last_ms = tick.timestamp_ms
        state.price = tick.price
        state.notional += tick.price * tick.quantity
        state.quantity += tick.quantity
        state.close[minute] = tick.price
        state.minute_qty[minute] += tick.quantity
        state.quantities[tick.quantity] += 1
        state.grid.set(second, tick.price)
        buy = tick.quantity if tick.aggressor == "buy" else 0
        sell = tick.quantity if tick.aggressor == "sell" else 0
        state.flow.add(second, (1.0, buy, sell))
        state.large.advance(second)
        if state.large_threshold is not None and tick.quantity >= state.large_threshold and (buy or sell):
            state.large.add(second, (buy, sell))
        if state.history_pending and (buy or sell):
            state.recent.append((second, tick.quantity, buy, sell))
            while state.recent[0][0] <= second - state.large.n:
                state.recent.popleft()

    def values(self, state: SymbolState) -> dict[str, float | str | None]:
        second = state.last_ms // 1000
        state.flow.advance(second)
        state.large.advance(second)
        out: dict[str, float | str | None] = {"price": state.price}
        for name, h in (("ret_1m", 60), ("ret_5m", 300), ("ret_15m", 900)):
            then = state.grid.at(second - h)
            out[name] = math.log(state.price / then) if then else None
        out["ema_fast"], out["ema_slow"] = state.ema_fast, state.ema_slow
        out["ema_gap"] = state.ema_fast / state.ema_slow - 1 if state.ema_fast and state.ema_slow else None
        out["rsi_14"] = state.cached.get("rsi_14")
        out["realized_vol_30m"] = state.cached.get("realized_vol_30m")
        out["vwap_distance"] = state.price / (state.notional / state.quantity) - 1 if state.quantity else None
        trades, buy, sell = (float(x) for x in state.flow.totals)
        out["trade_intensity_60s"] = trades
        out["ofi_60s"] = (buy - sell) / (buy + sell) if buy + sell > 0 else None
        out.update(zip(BOOK_FEATURES, self._book_values(state.symbol, state.last_ms), strict=True))
        if not self.config.time_travel:
            out.update(dict.fromkeys(HISTORY_FEATURES))
            return out
        for name in ("volume_pattern_score", "historical_momentum_rank", "correlation_stability"):
            out[name] = state.cached.get(name)
        out["volatility_regime_30d"] = state.cached.get("volatility_regime_30d", "UNKNOWN")
        if state.large_threshold is None:
            out["microstructure_imbalance"] = None
        else:
            lb, ls = (float(x) for x in state.large.totals)
            out["microstructure_imbalance"] = (lb - ls) / (lb + ls) if lb + ls > 0 else 0.0
        return out

    # -- per session and per closed minute -------------------------------------------------------

    def _new_session(self, state: SymbolState, day: date) -> None:
        pending = False
        if self.config.time_travel:  # off: no history is read or kept (no large-trade threshold either)
            if state.day is not None and self.history is None:
                state.history = [*state.history, state.summary()][-self.config.lookback_sessions :]
            if self.history is not None:
                found = self.history(state.symbol, day, self.config.lookback_sessions)
                pending = found is None
                state.history = found or []
        fresh = SymbolState(state.symbol, self.config, history=state.history)
        fresh.day = day
        fresh.day_end_ms = to_ms(datetime.combine(day + timedelta(days=1), time(), B3_TZ))
        fresh.history_pending = pending
        fresh.large_threshold = self._large_threshold(state.history)
        fresh.last_ms = state.last_ms
        state.__dict__.update(fresh.__dict__)

    def _large_threshold(self, history: list[SessionSummary]) -> float | None:
        merged: Counter[int] = Counter()
        for past in history:
            merged.update(past.quantities)
        return quantile_of(merged, self.config.large_trade_quantile)

    def set_history(self, symbol: str, day: date, history: list[SessionSummary]) -> bool:
        """The history the provider could not give when `symbol`'s session `day` began (it returned
        None) has arrived. Until now the history-aware features were those of a symbol without
        history (volume_pattern_score, historical_momentum_rank, microstructure_imbalance None,
        volatility_regime_30d UNKNOWN); from here on the state is what it would have been with the
        history from the start, so the next features equal a backfill's: the large-trade window is
        rebuilt from the session's last 5 minutes of aggressor trades and the history-aware values of
        the last closed minute are computed again. False (and nothing changes) if that session is no
        longer the symbol's current one or it was not waiting for history."""
        state = self.states.get(symbol)
        if state is None or state.day != day or not state.history_pending:
            return False
        state.history = history
        state.large_threshold = threshold = self._large_threshold(history)
        large = SecondWindow(state.large.n, 2)
        if threshold is not None:
            for second, quantity, buy, sell in state.recent:
                if quantity >= threshold:
                    large.add(second, (buy, sell))
        if state.large.head >= 0:
            large.advance(state.large.head)
        state.large = large
        state.history_pending, state.recent = False, deque()
        if state.closed:  # minutes close up to the open one: the last closed is the one before it
            minute = state.minute - 1
            vol = state.cached.get("realized_vol_30m")
            assert vol is None or isinstance(vol, float)
            self._history_values(state, state.closes_until(minute), vol, minute)
        return True

    def _close_minute(self, state: SymbolState, minute: int) -> None:
        """Minute `minute` closed: update the indicators on minute closes and the cached features."""
        c = self.config
        close = float(state.close[minute]) if np.isfinite(state.close[minute]) else state.prev_close
        if close is None:
            return
        if state.prev_close is not None:
            change = close - state.prev_close
            gain, loss = max(change, 0.0), max(-change, 0.0)
            state.rsi_seen += 1
            if state.rsi_gain is None or state.rsi_loss is None:
                state.rsi_gain, state.rsi_loss = gain, loss
            else:
                state.rsi_gain = (state.rsi_gain * (c.rsi_period - 1) + gain) / c.rsi_period
                state.rsi_loss = (state.rsi_loss * (c.rsi_period - 1) + loss) / c.rsi_period
            if state.rsi_seen >= c.rsi_period:
                g, lo = state.rsi_gain, state.rsi_loss
                state.cached["rsi_14"] = 100.0 if lo == 0 else 100.0 - 100.0 / (1.0 + g / lo)
        state.ema_fast = _ema(state.ema_fast, close, c.ema_fast)
        state.ema_slow = _ema(state.ema_slow, close, c.ema_slow)
        state.prev_close = close
        state.closed.append(close)
        closes = state.closes_until(minute)
        vol = SessionSummary(state.day or date.min, closes, state.minute_qty, state.quantities).window_vol(
            minute, c.vol_window
        )
        state.cached["realized_vol_30m"] = vol
        if c.time_travel:
            self._history_values(state, closes, vol, minute)
            # not in _history_values: it keeps a rolling sample, so it must run once per closed minute
            state.cached["correlation_stability"] = self._correlation_stability(state, closes, minute)

    def _history_values(self, state: SymbolState, closes: np.ndarray, vol: float | None, minute: int) -> None:
        """The features that compare closed minute `minute` with the previous sessions."""
        state.cached["volume_pattern_score"] = self._volume_pattern(state, minute)
        state.cached["historical_momentum_rank"] = self._momentum_rank(state, closes, minute)
        state.cached["volatility_regime_30d"] = self._regime(state, vol, minute)

    def _volume_pattern(self, state: SymbolState, minute: int) -> float | None:
        c = self.config
        first_today = int(np.argmax(state.minute_qty > 0)) if state.minute_qty.any() else minute
        if minute - first_today + 1 < 10 or not state.history:
            return None
        lo = max(first_today, minute - c.pattern_window + 1)
        today = state.minute_qty[lo : minute + 1].astype(float)
        usual = np.mean([h.minute_quantity[lo : minute + 1] for h in state.history], axis=0)
        if today.std() == 0 or usual.std() == 0:
            return None
        return float(np.corrcoef(today, usual)[0, 1])

    def _momentum_rank(self, state: SymbolState, closes: np.ndarray, minute: int) -> float | None:
        if minute < 60 or not (np.isfinite(closes[minute - 60]) and np.isfinite(closes[minute])):
            return None
        now = math.log(closes[minute] / closes[minute - 60])
        past = [r for h in state.history if (r := h.window_return(minute, 60)) is not None]
        if len(past) < self.config.min_sessions:
            return None
        arr = np.array(past)
        return float((np.sum(arr < now) + 0.5 * np.sum(arr == now)) / len(arr))

    def _regime(self, state: SymbolState, vol: float | None, minute: int) -> str:
        past = [v for h in state.history if (v := h.window_vol(minute, self.config.vol_window)) is not None]
        if vol is None or len(past) < self.config.min_sessions:
            return "UNKNOWN"
        arr = np.array(past)
        rank = (np.sum(arr < vol) + 0.5 * np.sum(arr == vol)) / len(arr)
        return "HIGH_VOL" if rank > 0.8 else "LOW_VOL" if rank < 0.2 else "NORMAL_VOL"

    def _correlation_stability(self, state: SymbolState, closes: np.ndarray, minute: int) -> float | None:
        c = self.config
        others = [o for s, o in self.states.items() if s != state.symbol and o.day == state.day]
        if not others or minute < c.corr_window:
            return None
        mine = np.diff(np.log(closes[minute - c.corr_window : minute + 1]))
        spreads = []
        for other in others:
            theirs_closes = other.closes_until(minute)[minute - c.corr_window : minute + 1]
            samples = state.corr_samples.setdefault(other.symbol, deque(maxlen=c.corr_samples))
            if np.all(np.isfinite(mine)) and np.all(np.isfinite(theirs_closes)):
                theirs = np.diff(np.log(theirs_closes))
                if mine.std() > 0 and theirs.std() > 0:
                    samples.append(float(np.corrcoef(mine, theirs)[0, 1]))
            if len(samples) == c.corr_samples:
                spreads.append(float(np.std(samples)))
        return 1.0 - float(np.mean(spreads)) if spreads else None


def backfill(
    engine: FeatureEngine,
    ticks: Iterable[Tick],
    *,
    on_features: Callable[[Features], None] | None = None,
    book: BookProvider | None = None,
) -> list[Features]:
    """Replay ticks (in time order) through `engine`; returns every Features event it emits. `book`:
    the stored book's features at each symbol's tick times (what the live book gave them then)."""
    if book is not None:
        ticks = list(ticks)
        times: dict[str, list[int]] = {}
        for tick in ticks:
            times.setdefault(tick.symbol, []).append(tick.timestamp_ms)
        for symbol, ms in times.items():
            engine.use_stored_book(symbol, book(symbol, np.unique(np.array(ms, np.int64))))
    out = []
    for tick in ticks:
        found = engine.on_tick(tick)
        if found is not None:
            out.append(found)
            if on_features is not None:
                on_features(found)
    return out
