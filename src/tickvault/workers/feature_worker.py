"""Feature workers: `tickvault run --only features`, any number of processes sharing the symbols.

Features are a fold over a symbol's ticks (VWAP, EMA, session statistics), so one worker owns a
symbol at a time: a lease `tv:featureworker:{SYMBOL}`, renewed every step; a dead worker's symbols
are taken when its lease expires. Ticks are read through a consumer group (`features`) on each tick
stream with XREADGROUP; a batch's features entries are written in one MULTI on the symbol's slot, and
the ticks are acknowledged once their features are known to be written (or refused as repeats), so
the group shows what is done. A write refused for another reason (a key of the wrong type, out of
memory, read-only) leaves its tick entry and those after it pending: the step fails, the engine is
dropped and the symbol taken again from the store as below (nothing is folded twice), which writes
the features again. Each take counts as one more delivery of the oldest pending tick entry (XCLAIM);
on its `max_deliveries`-th, the features that cannot be written are dead-lettered instead (field
`feature_write`, counted `features_dead_lettered`; once each: later takes of this worker start after
them) and the symbol goes on. The rule is `LeasedWorker`'s, as the predictor's.

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

import msgspec
import valkey

from tickvault.analytics.features import FeatureConfig, FeatureEngine
from tickvault.domain.events import Features, Tick, day_start_ms, from_fields, to_fields
from tickvault.domain.tick_schema import stream_id
from tickvault.store.api import Store
from tickvault.store.cluster import transaction
from tickvault.workers.leased import MAX_DELIVERIES, Entry, LeasedWorker, WorkerStats, is_repeat, refusal
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
        "dead_lettered": "features_dead_lettered",
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
        max_deliveries: int = MAX_DELIVERIES,
    ) -> None:
        super().__init__(
            store, symbols, FeatureWorkerStats(), name=name or f"features-{uuid.uuid4().hex[:8]}",
            lease_key=store.keys.feature_lease, lease_ms=lease_ms, batch=batch,
            max_deliveries=max_deliveries,
        )  # fmt: skip
        self.config = config or FeatureConfig()
        self._history = store_history(store)
        # per symbol, the newest features a take dead-lettered: not written again by later takes
        self._dead_through: dict[str, tuple[int, int]] = {}

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
        move the group's cursor to E (see the module's doc). Each take counts as a delivery of the
        oldest pending tick entry; on its `max_deliveries`-th, features the take cannot write (nor
        read) are dead-lettered instead of failing the take, so a lasting refusal cannot stop the
        symbol for good."""
        ticks_key, out_key = self.keys.ticks(symbol), self.keys.features(symbol)
        give_up = self._deliver_oldest(ticks_key) >= self.max_deliveries
        try:
            written = self.client.xrevrange(out_key, count=1)
        except valkey.ResponseError:
            if not give_up:
                self._keep_one_pending(ticks_key)
                raise
            written = []  # unreadable (a key of the wrong type): what it held is not a stream of ours
        last_out = max(
            stream_id(written[0][0]) if written else (-1, -1), self._dead_through.get(symbol, (-1, -1))
        )
        top = self.client.xrevrange(ticks_key, count=1)
        end = top[0][0] if top else b"0-0"
        engine = FeatureEngine([symbol], self.config, history=self._history)
        owned = _Owned(engine, StoredBookFeed(self.store, symbol, engine), last_out, end)
        replay: list[Tick] = []
        if top:
            start = day_start_ms(last_out[0] if last_out[0] >= 0 else stream_id(end)[0])
            replay = self.store.tick_events(symbol, start, stream_id(end)[0])
            self.stats.replayed += len(replay)
            found = self._fold(owned, replay)
            for (_, out_id, features), result in zip(found, self._write(symbol, found), strict=True):
                exc = refusal(result)
                if exc is None:
                    continue
                if not give_up:
                    self._keep_one_pending(ticks_key)
                    raise exc
                self._dead_letter_taken(symbol, out_id, features, exc)
        self.client.xgroup_setid(ticks_key, GROUP, end)
        self.stats.takeovers += 1
        log.info("%s took %s over: replayed %d ticks up to %s", self.name, symbol, len(replay), end)
        return owned

    def _deliver_oldest(self, ticks_key: str) -> int:
        """Deliver the oldest pending tick entry once more (XCLAIM counts it); its deliveries, or 0."""
        oldest = self.client.xpending_range(ticks_key, GROUP, min="-", max="+", count=1)
        if not oldest:
            return 0
        self.client.xclaim(ticks_key, GROUP, self.name, 0, [oldest[0]["message_id"]])
        return int(oldest[0]["times_delivered"]) + 1

    def _keep_one_pending(self, ticks_key: str) -> None:
        """A take refused with nothing pending: deliver one new entry, so the retries are counted."""
        if not self.client.xpending_range(ticks_key, GROUP, min="-", max="+", count=1):
            self.client.xreadgroup(GROUP, self.name, {ticks_key: ">"}, count=1)

    def _dead_letter_taken(self, symbol: str, out_id: str, features: Features, exc: Exception) -> None:
        reason = f"features not written by a take after {self.max_deliveries} deliveries: {exc}"
        payload = msgspec.json.encode(to_fields(features))
        self.store.dead_letter(
            reason, "feature_write", topic=self.keys.ticks(symbol), payload=payload, features_id=out_id
        )
        self.stats.dead_lettered += 1
        self._dead_through[symbol] = max(self._dead_through.get(symbol, (-1, -1)), stream_id(out_id))
        log.error("%s: features %s of %s dead-lettered: %s", self.name, out_id, symbol, reason)

    def _fold(self, owned: _Owned, ticks: list[Tick]) -> list[tuple[int, str, Features]]:
        """Fold ticks; the new features, each with the index of the tick it came from and its id."""
        found: list[tuple[int, str, Features]] = []
        book = owned.book
        for at in range(0, len(ticks), BOOK_CHUNK):
            chunk = ticks[at : at + BOOK_CHUNK]
            newest = max(t.timestamp_ms for t in chunk)
            if not book.started:
                book.start(chunk[0].timestamp_ms)
            reached = self._book_reached(book, newest)
            book.read(newest)
            for index, tick in enumerate(chunk, at):
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
                    found.append((index, f"{out[0]}-{out[1]}", features))
        return found

    def _write(self, symbol: str, found: list[tuple[int, str, Features]]) -> list[object]:
        """Write the features in one transaction; Valkey's reply to each (an exception if refused)."""
        if not found:
            return []
        pipe = transaction(self.client, self.keys.ticks(symbol))
        for _, out_id, features in found:
            pipe.xadd(self.keys.features(symbol), to_fields(features), id=out_id)
        results: list[object] = pipe.execute(raise_on_error=False)
        for result in results:
            if is_repeat(result):
                self.stats.duplicates += 1
            elif not isinstance(result, Exception):
                self.stats.written += 1
        return results

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
        """Fold the entries not folded yet (a replay covered those up to `read_after`), write their
        features, and acknowledge the entries done: up to the first whose features were refused (not
        as repeats), which is raised (it and those after it stay pending) unless dead-lettered."""
        owned = self.owned[symbol]
        fresh = [(i, f) for i, f in entries if stream_id(i) > stream_id(owned.read_after)]
        ticks = [from_fields({k.decode(): v.decode() for k, v in f.items()}, Tick) for _, f in fresh]
        if fresh:
            owned.read_after = fresh[-1][0]
        found = self._fold(owned, ticks)
        refused: dict[int, tuple[Exception, str, Features]] = {}  # tick index -> its first refusal
        for (index, out_id, features), result in zip(found, self._write(symbol, found), strict=True):
            exc = refusal(result)
            if exc is not None:
                refused.setdefault(index, (exc, out_id, features))
        stale = len(entries) - len(fresh)  # entries are in id order: those folded already come first
        done = [i for i, _ in entries[:stale]]
        try:
            for index, (entry_id, _) in enumerate(fresh):
                if index in refused:
                    exc, out_id, features = refused[index]
                    self.retry_or_dead_letter(
                        symbol, entry_id, exc, what="features", field="feature_write",
                        payload=msgspec.json.encode(to_fields(features)), features_id=out_id,
                    )  # fmt: skip
                done.append(entry_id)
        finally:
            self.ack(symbol, done)
