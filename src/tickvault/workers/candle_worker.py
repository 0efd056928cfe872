"""Live candles: a worker that follows the stored tick streams and writes `stream:candles:{TF}:{SYMBOL}`.

Each entry of a candle stream is one version of one bar (its `timestamp` is the bar's open time). A bar
is written when it closes (a later tick of its symbol opens the next bar, or the worker stops) and again
whenever a late tick or a trade edit changes it; readers keep the last version per open time
(`Store.candle_stream`). So the live bars end up equal to the ones `Store.candles` recomputes from
history, corrections included.

Bars are summed incrementally, late ticks included (a bar's open and close follow exchange time, then
seq, as in the store). A trade edit, or a bar the worker did not see open (after a restart, or one
older than the bars it keeps), switches the bar to "store" mode: it is recomputed from the store, the
source of truth, when it closes or is corrected.
A store-mode bar never adds ticks incrementally, so a tick is never counted twice.

The position in each tick stream is saved with the bars it produced in one MULTI/EXEC: a restarted
worker neither skips nor repeats work. Several workers (`run --only candles`, started N times) share
the symbols: each symbol is owned by one worker at a time through a lease (`tv:candlelease:{SYMBOL}`,
in the symbol's slot), a worker that dies loses its symbols when the lease expires and the next owner
resumes from the saved position; every write WATCHes the lease, so a worker that stalled past its
lease cannot write a stale bar version after the new owner. If the worker fell so far behind that
ticks were sealed out of the live stream before it read them, the bars of that stretch are
recomputed from the store. The lease and the loop are `LeasedWorker`'s (leased.py); this worker
reads with XREAD from the position it saves, not through a consumer group: it needs every tick of a
symbol, in order.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field

import numpy as np
import valkey

from tickvault.analytics.candles import TIMEFRAMES, bar_bounds, candles_from_ticks
from tickvault.domain.events import Candle, from_ms, to_fields
from tickvault.domain.tick_schema import AGGRESSOR_CODES, stream_id
from tickvault.store.api import Store, columns_frame
from tickvault.store.block_codec import Columns
from tickvault.store.cluster import transaction
from tickvault.store.stream_codec import columns_from_entries
from tickvault.workers.leased import Entry, LeasedWorker, WorkerStats

log = logging.getLogger("tickvault.candles")

_BUY, _SELL = AGGRESSOR_CODES.index("buy"), AGGRESSOR_CODES.index("sell")  # codes in Columns.aggressor


@dataclass
class Bar:
    open_ms: int
    end_ms: int
    incremental: bool = True  # False: recompute from the store before writing
    dirty: bool = False
    written: bool = False
    first_ms: int = 0
    first_seq: int = 0
    last_ms: int = 0
    last_seq: int = 0
    open: float = 0.0
    high: float = 0.0
    low: float = 0.0
    close: float = 0.0
    volume: float = 0.0
    quantity: int = 0
    trades: int = 0
    notional: float = 0.0
    buy_quantity: int = 0
    sell_quantity: int = 0
    vwap: float | None = None  # as recomputed from the store (bit-identical to Store.candles)

    def add(self, ms: int, seq: int, price: float, volume: float, qty: int, aggressor: int) -> None:
        """Fold in one trade, wherever it falls in time: the store orders a bar's trades by
        (exchange time, seq), so a late trade can still become the open or the close."""
        if self.trades == 0:
            self.first_ms, self.first_seq, self.open, self.high, self.low = ms, seq, price, price, price
            self.last_ms, self.last_seq, self.close = ms, seq, price
        if (ms, seq) < (self.first_ms, self.first_seq):
            self.first_ms, self.first_seq, self.open = ms, seq, price
        if (ms, seq) > (self.last_ms, self.last_seq):
            self.last_ms, self.last_seq, self.close = ms, seq, price
        self.high, self.low = max(self.high, price), min(self.low, price)
        self.volume += volume
        self.quantity += qty
        self.notional += price * qty
        self.trades += 1
        if aggressor == _BUY:
            self.buy_quantity += qty
        elif aggressor == _SELL:
            self.sell_quantity += qty

    def candle(self, symbol: str, tf: str) -> Candle:
        vwap = self.notional / self.quantity if self.quantity > 0 else self.close
        if self.vwap is not None:
            vwap = self.vwap
        return Candle(
            symbol=symbol, timestamp=from_ms(self.open_ms), timestamp_ms=self.open_ms, timeframe=tf,
            open=self.open, high=self.high, low=self.low, close=self.close, volume=self.volume,
            quantity=self.quantity, trades=self.trades, vwap=vwap, buy_quantity=self.buy_quantity,
            sell_quantity=self.sell_quantity,
        )  # fmt: skip


@dataclass
class SymbolBars:
    """Every timeframe's recent bars of one symbol; `current[tf]` is the newest bar's open."""

    bars: dict[str, dict[int, Bar]] = field(default_factory=lambda: {tf: {} for tf in TIMEFRAMES})
    current: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TIMEFRAMES, -1))
    position: str = "0-0"  # last tick stream id processed
    saved: str | None = None  # the position as Valkey holds it (None: no key), loaded or last written

    def bar(self, tf: str, ms: int) -> Bar:
        """The bar holding `ms`, created if new: a bar that opens after the current one starts
        incremental (the worker sees all its ticks); one that opens before it does not."""
        current = self.bars[tf].get(self.current[tf])
        if current is not None and current.open_ms <= ms < current.end_ms:
            return current
        open_ms, end_ms = bar_bounds(ms, tf)
        found = self.bars[tf].get(open_ms)
        if found is None:
            found = Bar(open_ms, end_ms, incremental=open_ms > self.current[tf] and self.current[tf] >= 0)
            self.bars[tf][open_ms] = found
        return found

    def apply(self, cols: Columns) -> None:
        """Fold ticks (in stream order) into the bars of every timeframe."""
        for i in range(len(cols)):
            ms, seq = int(cols.timestamp_ms[i]), int(cols.seq[i])
            edit = bool(cols.is_edit[i])
            for tf in TIMEFRAMES:
                bar = self.bar(tf, ms)
                bar.dirty = True
                if bar.open_ms > self.current[tf]:
                    self.current[tf] = bar.open_ms
                if bar.incremental and not edit:
                    bar.add(ms, seq, float(cols.price[i]), float(cols.volume[i]), int(cols.quantity[i]),
                            int(cols.aggressor[i]))  # fmt: skip
                else:
                    bar.incremental = False

    def due(self, tf: str, *, flush: bool) -> list[Bar]:
        """Dirty bars to write now: closed ones (and, when flushing, the open one too)."""
        return [b for b in self.bars[tf].values() if b.dirty and (flush or b.open_ms < self.current[tf])]

    def forget_before(self, tf: str, keep: int) -> None:
        """Drop all but the newest `keep` bars; an older bar reappearing is recomputed from the store."""
        bars = self.bars[tf]
        if len(bars) > keep:
            for open_ms in sorted(bars)[: len(bars) - keep]:
                if not bars[open_ms].dirty:
                    del bars[open_ms]


@dataclass
class CandleStats(WorkerStats):
    ticks: int = 0
    written: int = 0
    recomputed: int = 0
    caught_up_gaps: int = 0


class CandleWorker(LeasedWorker[SymbolBars]):
    """Follows the tick streams of `symbols` and writes their candle streams; `run(stop)` in a thread.
    It reads with XREAD from the position it saves with its bars (no consumer group): every tick of a
    symbol, in stream order."""

    log = log
    COUNTERS = {
        "ticks": "candle_ticks", "written": "candles_written", "recomputed": "candles_recomputed",
        "errors": "candle_errors", "outages": "candle_outages",
    }  # fmt: skip
    # bars kept per timeframe and symbol (two days), so a late tick corrects its bar without a store read
    KEEP_BARS = {"1m": 2 * 1440, "5m": 2 * 288, "15m": 2 * 96, "1h": 48, "1d": 2}
    stats: CandleStats

    def __init__(
        self,
        store: Store,
        symbols: tuple[str, ...],
        *,
        batch: int = 10_000,
        name: str | None = None,
        lease_ms: int | None = None,
    ) -> None:
        """`lease_ms` None: this worker owns every symbol (one worker). Else symbols are shared with
        other workers by lease (see the module's doc)."""
        super().__init__(
            store, symbols, CandleStats(), name=name or f"candles-{uuid.uuid4().hex[:8]}",
            lease_key=store.keys.candle_lease, lease_ms=lease_ms, batch=batch,
        )  # fmt: skip
        self._last_id: dict[tuple[str, str], int] = {}

    def stream(self, symbol: str) -> str:
        return self.keys.ticks(symbol)

    def position(self, symbol: str, state: SymbolBars) -> str:
        return state.position

    def resumable(self, symbol: str, state: SymbolBars) -> bool:
        # if another worker wrote while our lease had lapsed, its bars and position are newer than ours
        return self._saved_position(symbol) == state.saved

    def _saved_position(self, symbol: str) -> str | None:
        saved = self.client.get(self.keys.candle_position(symbol))
        return saved.decode() if saved else None

    def take(self, symbol: str) -> SymbolBars:
        saved = self._saved_position(symbol)
        state = SymbolBars()
        state.position = saved or "0-0"
        state.saved = saved
        if saved:
            # the bars open when the last worker stopped may never have been written: the newest
            # tick read so far sits at the position's time, so recompute the bars holding it
            pos_ms = stream_id(state.position)[0]
            for tf in TIMEFRAMES:
                bar = state.bar(tf, pos_ms)
                bar.dirty = True
                state.current[tf] = bar.open_ms
        for tf in TIMEFRAMES:
            top = self.client.xrevrange(self.keys.candles(tf, symbol), count=1)
            self._last_id[(symbol, tf)] = stream_id(top[0][0])[0] if top else 0
        return state

    def handle(self, symbol: str, entries: list[Entry]) -> None:
        """Fold the new ticks into the bars, then write the due bars with the new position."""
        state = self.owned[symbol]
        self._check_sealed_gap(symbol, state, entries[0][0])
        state.apply(columns_from_entries(entries))
        state.position = entries[-1][0].decode()
        self.stats.ticks += len(entries)
        self._write_symbol(symbol, state, flush=False)

    def finish(self) -> None:
        """Read to the end, then write the bars still open (a later version replaces them when they
        close)."""
        while self.step(block_ms=0):
            pass
        self.write(flush=True)

    def _check_sealed_gap(self, symbol: str, state: SymbolBars, first_new: bytes) -> None:
        """Sealing trims a stream from its oldest end: if the first entry after our position is the
        stream's oldest, ticks between may have been sealed before we read them, so the bars of that
        stretch are recomputed from the store (recomputing a bar twice is harmless)."""
        if state.position == "0-0":
            return
        oldest = self.client.xrange(self.keys.ticks(symbol), min="-", max="+", count=1)
        if not oldest or oldest[0][0] != first_new:
            return
        pos_ms, first_ms = stream_id(state.position)[0], stream_id(first_new)[0]
        sealed = self.store.history.read(symbol, pos_ms, first_ms)
        if not len(sealed):
            return
        self.stats.caught_up_gaps += 1
        minutes = np.unique(sealed.timestamp_ms // 60_000) * 60_000  # every bar of any tf holds whole minutes
        for tf in TIMEFRAMES:
            for ms in minutes:
                bar = state.bar(tf, int(ms))
                bar.incremental, bar.dirty = False, True

    def write(self, *, flush: bool) -> int:
        """Write every due bar and the stream position of each symbol in one transaction per symbol."""
        return sum(
            self._write_symbol(symbol, state, flush=flush) for symbol, state in list(self.owned.items())
        )

    def _write_symbol(self, symbol: str, state: SymbolBars, *, flush: bool) -> int:
        due = {tf: sorted(state.due(tf, flush=flush), key=lambda b: b.open_ms) for tf in TIMEFRAMES}
        self._recompute(symbol, {tf: [b for b in bars if not b.incremental] for tf, bars in due.items()})
        pipe = transaction(self.client, self.keys.ticks(symbol))
        retake = False
        if self.lease_ms is not None:
            lease, position = self.keys.candle_lease(symbol), self.keys.candle_position(symbol)
            pipe.watch(lease, position)  # the write happens only while the lease is still ours
            holder = pipe.get(lease)
            if holder is None and self._saved_position(symbol) == state.saved:
                retake = True  # it lapsed (a slow step) and nobody wrote since: still ours to write
            elif holder != self.name.encode():
                pipe.reset()
                del self.owned[symbol]
                log.warning("%s lost the lease of %s before writing its bars", self.name, symbol)
                return 0
            pipe.multi()
            if retake:
                pipe.set(lease, self.name, px=self.lease_ms)
        count = 0
        for tf in TIMEFRAMES:
            for bar in due[tf]:
                if not bar.dirty:  # recomputed and found empty
                    continue
                last = max(bar.open_ms, self._last_id[(symbol, tf)])
                fields = to_fields(bar.candle(symbol, tf))
                pipe.xadd(self.keys.candles(tf, symbol), fields, id=f"{last}-*")
                self._last_id[(symbol, tf)] = last
                bar.dirty, bar.written = False, True
                count += 1
            state.forget_before(tf, self.KEEP_BARS[tf])
        pipe.set(self.keys.candle_position(symbol), state.position)
        try:
            pipe.execute()
            state.saved = state.position
        except valkey.WatchError:
            del self.owned[symbol]  # another worker owns it now; it resumes from the saved position
            log.warning(
                "%s lost the lease of %s while writing; its bars are left to the owner", self.name, symbol
            )
            return 0
        except valkey.ResponseError:
            # refused (say, a bar id behind what the stream holds): start over from what Valkey
            # has, or the same refusal would repeat on every step
            del self.owned[symbol]
            raise
        self.stats.written += count
        return count

    def _recompute(self, symbol: str, bars: dict[str, list[Bar]]) -> None:
        """Replace store-mode bars' values by the store's, reading each stretch of time once for
        every timeframe (a history load can make thousands of bars due at once). A bar the store
        holds no tick for is left clean and not written."""
        spans = sorted((b.open_ms, b.end_ms) for group in bars.values() for b in group)
        stretches: list[list[int]] = []
        for lo, hi in spans:
            if stretches and lo <= stretches[-1][1]:
                stretches[-1][1] = max(stretches[-1][1], hi)
            else:
                stretches.append([lo, hi])
        for lo, hi in stretches:
            frame = columns_frame(symbol, self.store.columns(symbol, lo, hi - 1))
            for tf, group in bars.items():
                mine = [b for b in group if lo <= b.open_ms < hi]
                if not mine:
                    continue
                found = candles_from_ticks(frame, tf)
                opens = found.index.as_unit("ms").asi8.tolist()
                rows = dict(zip(opens, found.itertuples(index=False), strict=True))
                for bar in mine:
                    self.stats.recomputed += 1
                    row = rows.get(bar.open_ms)
                    if row is None:
                        bar.dirty = False
                        continue
                    bar.open, bar.high, bar.low, bar.close = (
                        float(row.open),
                        float(row.high),
                        float(row.low),
                        float(row.close),
                    )
                    bar.volume, bar.quantity, bar.trades = (
                        float(row.volume),
                        int(row.quantity),
                        int(row.trades),
                    )
                    bar.vwap = float(row.vwap)
                    bar.buy_quantity, bar.sell_quantity = int(row.buy_quantity), int(row.sell_quantity)
