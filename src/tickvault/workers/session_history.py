"""Previous sessions' statistics for the history-aware features: summarised once per symbol and day
from the stored ticks and kept in Valkey (`KeySpace.day_summary`), and `HistoryLookup`, which keeps
the live flow going without them while Valkey is unreachable and brings them when it returns.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable
from datetime import date, datetime, timedelta

import msgspec
import numpy as np

from tickvault.analytics.features import (
    SessionSummary,
    summarize_session,
)
from tickvault.domain.events import B3_TZ, to_ms
from tickvault.domain.keys import KeySpace
from tickvault.store.api import Store
from tickvault.store.valkey_errors import map_valkey_errors

log = logging.getLogger("tickvault.features")

_HISTORY_CALENDAR_DAYS = 50  # enough calendar days to find 30 sessions around B3 holidays
HISTORY_RETRY_S = (0.5, 10.0)  # first and longest wait between background look-ups of the history


class _Summary(msgspec.Struct):
    close: list[float | None]
    quantity: list[int]
    quantities: dict[int, int]


def store_history(
    store: Store, cache: KeySpace | None = None
) -> Callable[[str, date, int], list[SessionSummary]]:
    """Summaries of the sessions before `day`, read once from the ticks and then kept in Valkey
    (`KeySpace.day_summary`: `tv:daysum:{SYMBOL}:{YYYYMMDD}`). Only past days are cached, never the
    day in progress. An unreachable Valkey raises StoreUnavailable (a backfill must not go on without
    history; the live service wraps this in `HistoryLookup`). `cache`: where the summaries are kept
    when not in the store's own keys (a replay reads the live ticks, and writes only its namespace)."""
    keys = cache or store.keys

    @map_valkey_errors()
    def summary(symbol: str, day: date) -> SessionSummary | None:
        key = keys.day_summary(symbol, day.strftime("%Y%m%d"))
        raw = store.client.get(key)
        if raw is not None:
            if raw == b"-":
                return None
            s = msgspec.msgpack.decode(raw, type=_Summary)
            close = np.array([np.nan if c is None else c for c in s.close])
            return SessionSummary(day, close, np.array(s.quantity, dtype=np.int64), _counter(s.quantities))
        start = datetime(day.year, day.month, day.day, tzinfo=B3_TZ)
        cols = store.columns(symbol, to_ms(start), to_ms(start + timedelta(days=1)) - 1)
        if not len(cols):
            store.client.set(key, b"-", ex=86_400)  # no session that day; a late load may still come
            return None
        built = summarize_session(day, cols.timestamp_ms, cols.price, cols.quantity)
        packed = _Summary(
            close=[None if not np.isfinite(c) else float(c) for c in built.minute_close],
            quantity=built.minute_quantity.tolist(),
            quantities=dict(built.quantities),
        )
        store.client.set(key, msgspec.msgpack.encode(packed))
        return built

    def provider(symbol: str, day: date, n: int) -> list[SessionSummary]:
        found: list[SessionSummary] = []
        for back in range(1, _HISTORY_CALENDAR_DAYS + 1):
            if len(found) == n:
                break
            got = summary(symbol, day - timedelta(days=back))
            if got is not None:
                found.append(got)
        return found[::-1]

    return provider


def _counter(d: dict[int, int]) -> Counter[int]:
    return Counter(d)


class HistoryLookup:
    """The live engine's history provider: `provider` on the feature thread while it works; once it
    fails (Valkey unreachable), the session starts at once without history (None) and a background
    thread looks it up again with backoff, for that and any session that starts meanwhile (those do
    not try: no connection attempt per tick or per symbol). One line is logged when it gives up for
    now, one when the history is back. What arrives is collected by `take_arrived` on the feature
    thread, which hands it to the engine (`FeatureEngine.set_history`). The thread starts at the
    first miss and ends with `stop`."""

    def __init__(
        self,
        provider: Callable[[str, date, int], list[SessionSummary]],
        *,
        retry_s: tuple[float, float] = HISTORY_RETRY_S,
    ) -> None:
        self._provider = provider
        self._retry_s = retry_s
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)  # a session misses its history, or stop
        self._wanted: dict[str, tuple[date, int]] = {}  # symbol -> (day, n) still to look up
        self._arrived: list[tuple[str, date, list[SessionSummary]]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.misses = 0  # sessions started without their history

    def __call__(self, symbol: str, day: date, n: int) -> list[SessionSummary] | None:
        with self._lock:
            if self._wanted:  # known to be unreachable: the background look-up takes this one too
                self._wanted[symbol] = (day, n)
                self.misses += 1
                return None
        try:
            return self._provider(symbol, day, n)
        except Exception as exc:  # unreachable, or a cache entry that cannot be read: never lose ticks
            log.warning(
                "history of previous sessions unavailable (%s): %s starts its %s session without it"
                " (history-aware features empty); looking it up again in the background",
                exc,
                symbol,
                day,
            )  # before the look-up starts: its "back" line comes after this one
            with self._wake:
                self._wanted[symbol] = (day, n)
                self.misses += 1
                if self._thread is None and not self._stop.is_set():
                    self._thread = threading.Thread(target=self._run, name="features-history", daemon=True)
                    self._thread.start()
                self._wake.notify_all()
            return None

    def _run(self) -> None:
        first, longest = self._retry_s
        while True:
            with self._wake:
                self._wake.wait_for(lambda: self._stop.is_set() or bool(self._wanted))
            wait, tries = first, 0
            while not self._stop.wait(wait):
                tries += 1
                try:
                    if self._look_up():
                        break
                    wait = first  # sessions that started meanwhile: look them up promptly
                except Exception:  # still unreachable: wait longer
                    wait = min(wait * 2, longest)
            if self._stop.is_set():  # no logging once the owner has stopped
                return
            log.warning(
                "history of previous sessions is back after %d tries: history-aware features resume", tries
            )

    def _look_up(self) -> bool:
        """Look up what is wanted; True when nothing is wanted any more."""
        with self._lock:
            wanted = dict(self._wanted)
        for symbol, (day, n) in wanted.items():
            found = self._provider(symbol, day, n)
            with self._lock:
                self._arrived.append((symbol, day, found))
                if self._wanted.get(symbol) == (day, n):  # not replaced by a newer session meanwhile
                    del self._wanted[symbol]
            if self._stop.is_set():
                return False
        with self._lock:
            return not self._wanted

    @property
    def arrived(self) -> bool:
        return bool(self._arrived)

    def take_arrived(self) -> list[tuple[str, date, list[SessionSummary]]]:
        with self._lock:
            out, self._arrived = self._arrived, []
        return out

    def stop(self, timeout: float = 30.0) -> None:
        """End the background look-up (one in progress finishes its current Valkey call first)."""
        with self._wake:
            self._stop.set()
            self._wake.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
