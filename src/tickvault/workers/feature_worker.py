"""Feature workers: `tickvault run --only features`, any number of processes sharing the symbols.

Features are a fold over a symbol's ticks (VWAP, EMA, session statistics), so one worker owns a
symbol at a time: a lease `tv:featureworker:{SYMBOL}`, renewed every step; a dead worker's symbols
are taken when its lease expires. Ticks are read through a consumer group (`features`) on each tick
stream with XREADGROUP, and every features entry is written together with the XACK of the ticks it
came from, in one MULTI on the symbol's slot, so the group always shows what is done.

Taking a symbol over (a first start, or a dead owner's symbol):
1. the engine is rebuilt by replaying, from the store, the session of the last features entry
   written (or of the newest tick) up to the stream's newest entry E; the history-aware features
   come from the stored sessions, so this gives the state the dead owner had;
2. the group's cursor is set to E (XGROUP SETID), and reading goes on after it; the dead owner's
   unacknowledged entries are claimed (XAUTOCLAIM) and acknowledged: the replay covered them.
The lease, the group, the claim and the loop are `LeasedWorker`'s (leased.py).
A lease that lapsed and is taken back keeps the engine only if the group's cursor is still where
this worker left it (`resumable`); otherwise another worker folded ticks meanwhile, and the symbol
is taken over as above.
The book features come from the stored book (`stream:book:{SYMBOL}` and its blocks), followed beside
the ticks by `StoredBookFeed` (stored_book_feed.py): the live book is rebuilt as of the first tick
folded (a takeover's replay included), and before each tick at T the stored batches of effective
time < T are applied, as a backfill reads them. The book recorder writes apart from the tick
recorder, so before folding ticks up to T the worker waits until the stored book has reached T, at
most BOOK_WAIT_S; past that it goes on, and the ticks folded ahead of the stored book are counted
(`features_book_late`): their book features may differ from a backfill's.
Output ids are the features' exchange ms and a counter within that ms, written explicitly: what the
replay emits again is refused by Valkey ("equal or smaller") and counted, never stored twice; what
the dead owner had not written yet is written by the replay. So a SIGKILLed worker loses nothing and
duplicates nothing. Known limit: the replayed stretch reads sealed ticks in exchange-time order, so a
tick that arrived late there is folded rather than skipped as it was live.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass

from tickvault.analytics.features import FeatureConfig, FeatureEngine
from tickvault.domain.events import Features, Tick, day_start_ms, from_fields, to_fields
from tickvault.domain.tick_schema import stream_id
from tickvault.store.api import Store
from tickvault.store.cluster import transaction
from tickvault.workers.leased import Entry, LeasedWorker, WorkerStats
from tickvault.workers.session_history import store_history
from tickvault.workers.stored_book_feed import StoredBookFeed

log = logging.getLogger("tickvault.featureworker")

GROUP = "features"
BOOK_WAIT_S = 1.0  # the longest the ticks wait for the stored book to reach them (wall time)
BOOK_CHUNK = 1_000  # ticks folded per read of the stored book


@dataclass
class FeatureWorkerStats(WorkerStats):
    ticks: int = 0
    written: int = 0
    replayed: int = 0  # ticks folded again after taking a symbol over
    duplicates: int = 0  # features refused as already written (a takeover's replay)
    takeovers: int = 0
    book_late: int = 0  # ticks folded before the stored book had reached them (the wait ran out)


@dataclass
class _Owned:
    engine: FeatureEngine
    book: StoredBookFeed
    written: tuple[int, int]  # (ms, n) of the newest features entry in the stream at takeover
    read_after: bytes  # tick entries up to this id are folded already
    last_id: tuple[int, int] = (-1, -1)  # (ms, n) of the last features the engine emitted


class FeatureWorker(LeasedWorker[_Owned]):
    group = GROUP
    log = log
    COUNTERS = {
        "ticks": "feature_ticks", "written": "features_written", "replayed": "features_replayed",
        "duplicates": "feature_duplicates", "takeovers": "feature_takeovers", "errors": "feature_errors",
        "outages": "feature_outages", "book_late": "features_book_late",
    }  # fmt: skip
    stats: FeatureWorkerStats

    def __init__(
        self,
        store: Store,
        symbols: tuple[str, ...],
        config: FeatureConfig | None = None,
        *,
        name: str | None = None,
        lease_ms: int = 5_000,
        batch: int = 1_000,
    ) -> None:
        super().__init__(
            store, symbols, FeatureWorkerStats(), name=name or f"features-{uuid.uuid4().hex[:8]}",
            lease_key=store.keys.feature_lease, lease_ms=lease_ms, batch=batch,
        )  # fmt: skip
        self.config = config or FeatureConfig()
        self._history = store_history(store)

    def stream(self, symbol: str) -> str:
        return self.keys.ticks(symbol)

    def resumable(self, symbol: str, state: _Owned) -> bool:
        # another worker that held the symbol while our lease had lapsed read on through the group:
        # its cursor is past ours, and our engine never saw what it folded
        groups = self.client.xinfo_groups(self.keys.ticks(symbol))
        cursor = next((g["last-delivered-id"] for g in groups if g["name"] == GROUP.encode()), None)
        return cursor == state.read_after

    def take(self, symbol: str) -> _Owned:
        """Rebuild the engine by replaying the stored session up to the stream's newest entry E and
        move the group's cursor to E (see the module's doc)."""
        ticks_key, out_key = self.keys.ticks(symbol), self.keys.features(symbol)
        written = self.client.xrevrange(out_key, count=1)
        last_out = stream_id(written[0][0]) if written else (-1, -1)
        top = self.client.xrevrange(ticks_key, count=1)
        end = top[0][0] if top else b"0-0"
        engine = FeatureEngine([symbol], self.config, history=self._history)
        owned = _Owned(engine, StoredBookFeed(self.store, symbol, engine), last_out, end)
        replay: list[Tick] = []
        if top:
            start = day_start_ms(last_out[0] if written else stream_id(end)[0])
            replay = self.store.tick_events(symbol, start, stream_id(end)[0])
            self.stats.replayed += len(replay)
            self._fold(symbol, owned, replay, [])
        self.client.xgroup_setid(ticks_key, GROUP, end)
        self.stats.takeovers += 1
        log.info("%s took %s over: replayed %d ticks up to %s", self.name, symbol, len(replay), end)
        return owned

    def _fold(self, symbol: str, owned: _Owned, ticks: list[Tick], entry_ids: list[bytes]) -> None:
        """Fold ticks; write new features with the XACK of `entry_ids` in one transaction."""
        found: list[tuple[str, Features]] = []
        book = owned.book
        for at in range(0, len(ticks), BOOK_CHUNK):
            chunk = ticks[at : at + BOOK_CHUNK]
            newest = max(t.timestamp_ms for t in chunk)
            if not book.started:
                book.start(chunk[0].timestamp_ms)
            reached = self._book_reached(book, newest)
            book.read(newest)
            for tick in chunk:
                self.stats.ticks += 1
                book.feed_before(tick.timestamp_ms)
                if tick.timestamp_ms > reached:
                    self.stats.book_late += 1
                features = owned.engine.on_tick(tick)
                if features is None:
                    continue
                ms = features.timestamp_ms
                out = (ms, owned.last_id[1] + 1 if ms == owned.last_id[0] else 0)
                owned.last_id = out
                if out > owned.written:  # what the stream holds already is not sent again
                    found.append((f"{out[0]}-{out[1]}", features))
        if not found and not entry_ids:
            return
        pipe = transaction(self.client, self.keys.ticks(symbol))
        for entry_id, features in found:
            pipe.xadd(self.keys.features(symbol), to_fields(features), id=entry_id)
        if entry_ids:
            pipe.xack(self.keys.ticks(symbol), GROUP, *entry_ids)
        results = pipe.execute(raise_on_error=False)
        for result in results[: len(found)]:
            if isinstance(result, Exception):
                if "equal or smaller" not in str(result):
                    raise result
                self.stats.duplicates += 1
            else:
                self.stats.written += 1

    def _book_reached(self, book: StoredBookFeed, t_ms: int) -> int:
        """How far the stored book has got, once it has reached `t_ms` or BOOK_WAIT_S has passed."""
        deadline = time.monotonic() + BOOK_WAIT_S
        while (reached := book.reached()) < t_ms and time.monotonic() < deadline:
            if self._stop.wait(0.01):
                break
        return reached

    def handle_claimed(self, symbol: str, entries: list[Entry]) -> None:
        self.client.xack(self.keys.ticks(symbol), GROUP, *[i for i, _ in entries])  # the replay covered them

    def handle(self, symbol: str, entries: list[Entry]) -> None:
        """Fold the entries not folded yet (a replay covered those up to `read_after`), acknowledge all."""
        owned = self.owned[symbol]
        fresh = [(i, f) for i, f in entries if stream_id(i) > stream_id(owned.read_after)]
        ticks = [from_fields({k.decode(): v.decode() for k, v in f.items()}, Tick) for _, f in fresh]
        if fresh:
            owned.read_after = fresh[-1][0]
        self._fold(symbol, owned, ticks, [i for i, _ in entries])
