"""The web dashboard's live feed: one reader of Valkey for all the pages open, so the cost does not grow
with the pages and the browser never receives every tick.

Every `INTERVAL_S` (250 ms: at most four updates a second per panel) the feed reads, for each symbol a
page watches, the tick stream entries stored since its last read (one XRANGE, decoded column-wise),
folds them into the bars of every timeframe and a short ring of the newest trades, and reads the
newest features, prediction, signals and book. Every second it gathers the pipeline's health the way
`tickvault monitor` does (`monitor.gather`). Every change is stamped with a version; a page's stream
sends what changed after the version it last sent, so a slow page skips intermediate states but never
a bar, a trade of the last `TAPE_ROWS` or a signal (coalesced, not lossy); one that fell behind the
bars kept is told to reload.

A bar is folded incrementally from the ticks in stream order; a tick stored late (an id past its
exchange time) lands in its bar in time order, as in the store; a trade edit marks its bar for
recomputing from the stored ticks, the source of truth. So a live bar equals the one `Store.candles`
computes and the chart loads afterwards (tested). The open bars of a symbol are read once, when a
page first watches it (bars.forming_bars), and the symbol is kept warm `KEEP_WARM_S` after its last
page leaves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import numpy as np
import valkey

from tickvault.analytics.candles import TIMEFRAMES, bar_bounds, candles_from_ticks
from tickvault.app.monitor import MonitorSnapshot, gather
from tickvault.app.web.bars import Bar, bars_of, fold, forming_bars
from tickvault.app.web.panels import (
    TAPE_ROWS,
    BookSource,
    book_ladder,
    features_view,
    marker,
    prediction_view,
    tape_until,
    trade_row,
)
from tickvault.app.web.pipeline import PipelineHealth
from tickvault.domain.events import Features, Prediction, Signal, from_fields
from tickvault.domain.tick_schema import AGGRESSOR_CODES
from tickvault.errors import StoreError
from tickvault.store.api import Store
from tickvault.store.block_codec import Columns
from tickvault.store.stream_codec import columns_of, id_ms, raw_command

log = logging.getLogger("tickvault.web")

INTERVAL_S = 0.25
HEALTH_EVERY_S = 1.0
KEEP_BARS = 600  # per timeframe: a page further behind than this reloads its chart
MAX_READ = 20_000  # tick entries per symbol per read: a backlog is caught up over several reads
MARKERS_KEPT = 200
# a symbol no page watches is still read this long: its open bars cost up to a minute of ticks to
# read afresh (seconds at 10k ticks/s), so a reload or a timeframe switch must not pay it again
KEEP_WARM_S = 300.0
_FAILURES = (StoreError, valkey.ValkeyError, OSError)


@dataclass
class SymbolState:
    symbol: str
    watchers: int = 0
    idle_since: float = 0.0  # when its last page left (monotonic s)
    ready: bool = False
    position: str = "-"  # the tick stream id read up to (exclusive start of the next read)
    bars: dict[str, dict[int, Bar]] = field(default_factory=lambda: {tf: {} for tf in TIMEFRAMES})
    floor: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TIMEFRAMES, 0))
    trades: deque[tuple[int, dict[str, Any]]] = field(default_factory=lambda: deque(maxlen=TAPE_ROWS))
    signals: deque[tuple[int, int, str, float]] = field(default_factory=lambda: deque(maxlen=MARKERS_KEPT))
    signal_position: str = "-"
    features: tuple[int, bytes, dict[str, Any] | None] = (0, b"", None)  # version, entry id, view
    prediction: tuple[int, bytes, dict[str, Any] | None] = (0, b"", None)
    book: tuple[int, dict[str, Any] | None] = (0, None)
    last: dict[str, Any] | None = None
    dirty: set[tuple[str, int]] = field(default_factory=set)  # (tf, open_ms) to recompute
    max_seq: int = 0  # the highest sequence number read from the stream so far


@dataclass
class Cursor:
    """What one page has been sent: changes up to `version`; `started` once it had the full state."""

    version: int = 0
    started: bool = False
    since_ms: int = 0  # the page's chart was loaded up to this exchange time


class Changes:
    """A version counter that asyncio tasks in another thread can wait on."""

    def __init__(self) -> None:
        self.version = 0
        self._lock = threading.Lock()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    def bump(self) -> int:
        with self._lock:
            self.version += 1
            waiters, self._waiters = self._waiters, []
        for loop, future in waiters:
            with contextlib.suppress(RuntimeError):  # that loop closed meanwhile (the server stopped)
                loop.call_soon_threadsafe(_settle, future)
        return self.version

    async def wait(self, beyond: int, timeout: float) -> None:
        """Until the version passes `beyond` or `timeout` seconds pass."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if self.version > beyond:
                return
            future: asyncio.Future[None] = loop.create_future()
            self._waiters.append((loop, future))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(future, timeout)


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class LiveFeed:
    """Reads what the pages watch, on its own thread, and hands each page what changed."""

    def __init__(
        self,
        store: Store,
        *,
        book: BookSource = book_ladder,
        problems: Callable[[], Iterable[str]] | None = None,
        where: str = "",
        interval: float = INTERVAL_S,
    ) -> None:
        self.store = store
        self.book = book
        self.problems = problems or (lambda: ())
        self.where = where
        self.interval = interval
        self.changes = Changes()
        self._lock = threading.Lock()  # the state below, between the feed's thread and the pages
        self._symbols: dict[str, SymbolState] = {}
        self._snap: MonitorSnapshot | None = None
        self._pipeline = PipelineHealth(where)
        self._health: tuple[int, dict[str, Any] | None] = (0, None)
        self._next_health = 0.0
        self._seq = 0  # the version of the latest change written to the state (under the lock)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="web-feed", daemon=True)
        self.reads = 0  # polling rounds done (for the bench and tests)
        self._last_error = ""

    # -- the pages' side -------------------------------------------------------------------------

    def watch(self, symbol: str) -> None:
        with self._lock:
            self._symbols.setdefault(symbol, SymbolState(symbol)).watchers += 1
        self._wake.set()

    def unwatch(self, symbol: str) -> None:
        with self._lock:
            state = self._symbols.get(symbol)
            if state is not None:
                state.watchers -= 1
                if state.watchers <= 0:  # kept warm a while: a reload or a timeframe switch is instant
                    state.idle_since = time.monotonic()

    def update(self, symbol: str, tf: str, cursor: Cursor) -> bytes | None:
        """The JSON update for a page showing `symbol` at `tf` that was sent up to `cursor` (which
        moves on), or None when nothing changed for it."""
        with self._lock:
            state = self._symbols.get(symbol)
            health_version, health = self._health
            if state is None or not state.ready:  # not read yet: health only, the chart waits
                if health is None or cursor.version >= health_version:
                    return None
                cursor.version = max(cursor.version, health_version)
                return msgspec.json.encode({"symbol": symbol, "tf": tf, "health": health})
            message = self._message(state, tf, cursor, health_version, health)
            cursor.started = True
            # every change written so far was considered: they are written under this lock
            cursor.version = self._seq
        return msgspec.json.encode(message) if message is not None else None

    def _message(
        self, state: SymbolState, tf: str, cursor: Cursor, health_version: int, health: dict[str, Any] | None
    ) -> dict[str, Any] | None:
        first = not cursor.started
        since = cursor.version
        out: dict[str, Any] = {"symbol": state.symbol, "tf": tf}
        if not first and since < state.floor[tf]:
            out["reload"] = True  # bars it never got were dropped: it reloads its chart
        bars = state.bars[tf].values()
        if first:
            current = bar_bounds(cursor.since_ms, tf)[0] if cursor.since_ms else 0
            out["bars"] = [b.row() for b in bars if b.open_ms >= current]
            out["tape"] = [row for _, row in reversed(state.trades)]
            out["tape_reset"] = True
            out["markers"] = [marker(ms, tf, a, c) for _, ms, a, c in state.signals if ms > cursor.since_ms]
        else:
            changed = [b.row() for b in bars if b.version > since]
            if changed:
                out["bars"] = changed
            trades = [row for v, row in reversed(state.trades) if v > since]
            if trades:
                out["tape"] = trades
            markers = [marker(ms, tf, a, c) for v, ms, a, c in state.signals if v > since]
            if markers:
                out["markers"] = markers
        for name, (version, _, value) in (("features", state.features), ("prediction", state.prediction)):
            if (first and value is not None) or (not first and version > since):
                out[name] = value
        if first or state.book[0] > since:
            out["book"] = state.book[1]
        if state.last is not None and (first or any(v > since for v, _ in state.trades)):
            out["last"] = state.last
        if health is not None and (first or health_version > since):
            out["health"] = health
        return out if len(out) > 2 else None

    def health(self) -> dict[str, Any]:
        """The pipeline's health as the pages last got it, or read now if no page is open."""
        with self._lock:
            version, view = self._health
            fresh = view is not None and any(s.watchers > 0 for s in self._symbols.values())
        if fresh and view is not None:
            return view
        try:
            snap = gather(self.store, ())
        except _FAILURES as exc:  # gather catches the usual ones; a socket error may still slip by
            snap = MonitorSnapshot(connected=False, error=str(exc))
        return PipelineHealth(self.where).view(snap, self.store, list(self.problems()))

    # -- the feed's thread -----------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def _stamp(self) -> int:
        """A new version for changes about to be written (call with the lock held)."""
        self._seq += 1
        return self._seq

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            began = time.monotonic()
            with self._lock:
                for symbol in [s for s, st in self._symbols.items() if self._cold(st, began)]:
                    del self._symbols[symbol]  # read afresh if a page watches it again
                watched = list(self._symbols)
            if watched:
                self._round(watched)
            else:
                self._next_health = 0.0  # a page that opens gets health at once
            self._wake.wait(max(0.0, self.interval - (time.monotonic() - began)) if watched else 1.0)
            self._wake.clear()

    @staticmethod
    def _cold(state: SymbolState, now: float) -> bool:
        return state.watchers <= 0 and now - state.idle_since > KEEP_WARM_S

    def _round(self, symbols: list[str]) -> None:
        changed = False
        try:
            for symbol in symbols:
                changed = self._read_symbol(symbol) or changed
            if changed:  # the pages draw the market now, not after the health read below
                self.changes.bump()
                changed = False
            if time.monotonic() >= self._next_health:
                self._next_health = time.monotonic() + HEALTH_EVERY_S
                self._read_health()
                changed = True
        except _FAILURES as exc:
            log.debug("web feed: store unreachable: %s", exc)
            self._next_health = time.monotonic() + HEALTH_EVERY_S
            self._set_health(MonitorSnapshot(connected=False, error=str(exc), taken_at=time.monotonic()))
            changed = True
        except Exception as exc:  # noqa: BLE001 - bad stored data must not stop the pages' feed
            if str(exc) != self._last_error:  # once per new error, not four times a second
                log.exception("web feed: read failed")
            self._last_error = str(exc)
        self.reads += 1
        if changed:
            self.changes.bump()

    def _read_health(self) -> None:
        snap = gather(self.store, (), self._snap)
        self._set_health(snap)

    def _set_health(self, snap: MonitorSnapshot) -> None:
        try:
            view = self._pipeline.view(snap, self.store, list(self.problems()))
        except _FAILURES as exc:  # the server went away between the two reads
            snap = MonitorSnapshot(connected=False, error=str(exc), taken_at=time.monotonic())
            view = self._pipeline.view(snap, self.store, [])
        self._snap = snap
        with self._lock:
            self._health = (self._stamp(), view)

    # -- one symbol ------------------------------------------------------------------------------

    def _read_symbol(self, symbol: str) -> bool:
        with self._lock:
            state = self._symbols.get(symbol)
        if state is None:
            return False
        first = not state.ready
        if first:
            self._first_read(state)
        key = self.store.keys.ticks(symbol)
        raw = raw_command(self.store.client, key, "XRANGE", key, state.position, "+", "COUNT", MAX_READ)
        changed = self._side_streams(state) or first
        if raw:
            self._fold(state, raw)
            changed = True
        if state.dirty:
            self._recompute(state)
        if first:
            with self._lock:
                state.ready = True  # pages get it whole: the bars and everything stored until now
        return changed

    def _first_read(self, state: SymbolState) -> None:
        """The bars open now, from the store (see bars.forming_bars); reading on from the newest entry."""
        store, symbol = self.store, state.symbol
        top = store.client.xrevrange(store.keys.ticks(symbol), count=1)
        bars: dict[str, dict[int, Bar]] = {tf: {} for tf in TIMEFRAMES}
        position, recent = "-", []
        if top:
            top_ms = int(top[0][0].split(b"-")[0])
            # the bars as of the ms before the newest entry; that whole ms and on are read from the
            # stream, so ticks sharing it are counted once
            for tf, frame in forming_bars(store, symbol, top_ms - 1).items():
                bars[tf] = {bar.open_ms: bar for bar in bars_of(frame, 0)}
            position = f"{top_ms}-0"
            recent = tape_until(store, symbol, top_ms - 1)  # newest first
        signal_top = store.client.xrevrange(store.keys.signals(symbol), count=1)
        with self._lock:
            version = self._stamp()
            for tf_bars in bars.values():
                for bar in tf_bars.values():
                    bar.version = version
            state.bars, state.position = bars, position
            state.signal_position = "(" + signal_top[0][0].decode() if signal_top else "-"
            for row in reversed(recent):
                state.trades.append((version, row))
            state.last = recent[0] if recent else None

    def _fold(self, state: SymbolState, raw: list[Any]) -> None:
        cols = columns_of(raw)
        on_time = id_ms(raw) == cols.timestamp_ms
        fresh = cols.take(on_time & ~cols.is_edit)
        late = np.flatnonzero(~on_time & ~cols.is_edit)
        edits = np.unique(cols.timestamp_ms[cols.is_edit])
        last_id = raw[-1][0]
        with self._lock:
            version = self._stamp()
            state.position = "(" + (last_id.decode() if isinstance(last_id, bytes) else str(last_id))
            state.max_seq = max(state.max_seq, int(cols.seq.max()))
            for tf in TIMEFRAMES:
                bars = state.bars[tf]
                fold(bars, fresh, tf, version)
                for k in late:  # stored late: added in time order, or its bar recomputed
                    at = int(cols.timestamp_ms[k])
                    bar = bars.get(bar_bounds(at, tf)[0])
                    tick = (at, int(cols.seq[k]), float(cols.price[k]), int(cols.quantity[k]))
                    if bar is not None and not bar.add_late(*tick, version):
                        state.dirty.add((tf, bar.open_ms))
                for ms in edits:  # an edit replaces a trade: its bar is recomputed from the store
                    open_ms = bar_bounds(int(ms), tf)[0]
                    if open_ms in bars:
                        state.dirty.add((tf, open_ms))
                while len(bars) > KEEP_BARS:
                    dropped = bars.pop(min(bars))
                    state.floor[tf] = max(state.floor[tf], dropped.version)
            for i in range(max(0, len(fresh) - TAPE_ROWS), len(fresh)):
                state.trades.append((version, _trade_at(fresh, i)))
            if len(fresh):
                state.last = _trade_at(fresh, len(fresh) - 1)

    def _recompute(self, state: SymbolState) -> None:
        """Bars touched by an edit (or a late tick in a bar read whole), recomputed from the stored
        ticks (the source of truth) as `Store.candles` does, from the ticks read so far: the source
        numbers ticks in the order the stream receives them, so a tick stored since the last read
        (sequence number past it) is left to the next read, not counted twice. It costs the bar's
        ticks: edits are rare."""
        with self._lock:
            dirty, state.dirty, max_seq = sorted(state.dirty), set(), state.max_seq
        for tf, open_ms in dirty:
            ticks = self.store.ticks(state.symbol, open_ms, bar_bounds(open_ms, tf)[1] - 1)
            frame = candles_from_ticks(ticks[ticks["seq"].to_numpy() <= max_seq], tf)
            with self._lock:
                version = self._stamp()
                bars = state.bars[tf]
                for bar in bars_of(frame, version):
                    if bar.open_ms in bars:
                        bars[bar.open_ms] = bar

    def _side_streams(self, state: SymbolState) -> bool:
        """Newest features and prediction, signals since the last read, the book: True if any changed."""
        store, symbol = self.store, state.symbol
        pipe = store.client.pipeline(transaction=False)
        pipe.xrevrange(store.keys.features(symbol), count=1)
        pipe.xrevrange(store.keys.predictions(symbol), count=1)
        pipe.xrange(store.keys.signals(symbol), min=state.signal_position, max="+", count=MARKERS_KEPT)
        features, prediction, signals = pipe.execute()
        ladder = self.book(store, symbol, None)
        book = ladder.view() if ladder is not None else None
        changed = False
        with self._lock:
            version = self._stamp()
            if features and features[0][0] != state.features[1]:
                event = from_fields(_text(features[0][1]), Features)
                state.features = (version, features[0][0], features_view(event.timestamp_ms, event.values))
                changed = True
            if prediction and prediction[0][0] != state.prediction[1]:
                p = from_fields(_text(prediction[0][1]), Prediction)
                state.prediction = (version, prediction[0][0],
                                    prediction_view(p.timestamp_ms, p.model, p.probabilities))  # fmt: skip
                changed = True
            for entry_id, fields in signals:
                s = from_fields(_text(fields), Signal)
                if s.action != "HOLD":
                    state.signals.append((version, s.timestamp_ms, s.action, s.confidence))
                    changed = True
                state.signal_position = "(" + entry_id.decode()
            if book != state.book[1]:
                state.book = (version, book)
                changed = True
        return changed


def _text(fields: dict[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in fields.items()}


def _trade_at(cols: Columns, i: int) -> dict[str, Any]:
    return trade_row(
        int(cols.timestamp_ms[i]), int(cols.trade_id[i]), float(cols.price[i]), int(cols.quantity[i]),
        AGGRESSOR_CODES[int(cols.aggressor[i])], int(cols.buyer[i]), int(cols.seller[i]),
    )  # fmt: skip
