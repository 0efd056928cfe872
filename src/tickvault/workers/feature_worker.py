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
2. the dead owner's unacknowledged entries are claimed (XAUTOCLAIM) and acknowledged: the replay
   covered them; the group's cursor is set to E (XGROUP SETID), and reading goes on after it.
Output ids are the features' exchange ms and a counter within that ms, written explicitly: what the
replay emits again is refused by Valkey ("equal or smaller") and counted, never stored twice; what
the dead owner had not written yet is written by the replay. So a SIGKILLed worker loses nothing and
duplicates nothing. Known limit: the replayed stretch reads sealed ticks in exchange-time order, so a
tick that arrived late there is folded rather than skipped as it was live.
"""

from __future__ import annotations

import logging
import threading
import uuid
from dataclasses import dataclass

import valkey

from tickvault.analytics.features import FeatureConfig, FeatureEngine
from tickvault.domain.events import Features, Tick, day_start_ms, from_fields, to_fields
from tickvault.domain.tick_schema import stream_id
from tickvault.store.api import Store
from tickvault.store.cluster import read_streams, transaction
from tickvault.store.leases import SymbolLeases
from tickvault.workers.core_flow import store_history

log = logging.getLogger("tickvault.featureworker")

GROUP = "features"


@dataclass
class FeatureWorkerStats:
    ticks: int = 0
    written: int = 0
    replayed: int = 0  # ticks folded again after taking a symbol over
    duplicates: int = 0  # features refused as already written (a takeover's replay)
    claimed: int = 0
    takeovers: int = 0
    errors: int = 0


@dataclass
class _Owned:
    engine: FeatureEngine
    written: tuple[int, int]  # (ms, n) of the newest features entry in the stream at takeover
    read_after: bytes  # tick entries up to this id are folded already
    last_id: tuple[int, int] = (-1, -1)  # (ms, n) of the last features the engine emitted


class FeatureWorker:
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
        self.store = store
        self.client = store.client
        self.keys = store.keys
        self.symbols = symbols
        self.config = config or FeatureConfig()
        self.name = name or f"features-{uuid.uuid4().hex[:8]}"
        self.lease_ms = lease_ms
        self.batch = batch
        self.owned: dict[str, _Owned] = {}
        self.stats = FeatureWorkerStats()
        self._history = store_history(store)
        self.leases = SymbolLeases(self.client, self.lease_key, self.name, lease_ms)

    def lease_key(self, symbol: str) -> str:
        return self.keys.feature_lease(symbol)

    # -- ownership -------------------------------------------------------------------------------

    def _claim_symbols(self) -> None:
        """Renew our leases, take free ones; a symbol whose lease is ours but whose state is gone
        (after an error) is taken over again from the store."""
        held = self.leases.held(self.symbols)
        for symbol in [s for s in self.owned if s not in held]:
            log.warning("%s lost the lease of %s", self.name, symbol)
            del self.owned[symbol]
        for symbol in held:
            if symbol not in self.owned:
                try:
                    self._take_over(symbol)
                except BaseException:
                    self.leases.give_up(symbol)  # let another worker try
                    raise

    def _take_over(self, symbol: str) -> None:
        ticks_key, out_key = self.keys.ticks(symbol), self.keys.features(symbol)
        try:
            self.client.xgroup_create(ticks_key, GROUP, id="0", mkstream=True)
        except valkey.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        written = self.client.xrevrange(out_key, count=1)
        last_out = stream_id(written[0][0]) if written else (-1, -1)
        top = self.client.xrevrange(ticks_key, count=1)
        end = top[0][0] if top else b"0-0"
        engine = FeatureEngine([symbol], self.config, history=self._history)
        owned = _Owned(engine, last_out, end)
        if top:
            start = day_start_ms(last_out[0] if written else stream_id(end)[0])
            replay = self.store.tick_events(symbol, start, stream_id(end)[0])
            self.stats.replayed += len(replay)
            self._fold(symbol, owned, replay, [])
        # what a dead owner had read and not acknowledged is covered by the replay
        start_id = "0-0"
        while True:
            reply = self.client.xautoclaim(
                ticks_key, GROUP, self.name, min_idle_time=0, start_id=start_id, count=self.batch
            )
            start_id, claimed = reply[0], [e[0] for e in reply[1] if e is not None]
            if claimed:
                self.stats.claimed += len(claimed)
                self.client.xack(ticks_key, GROUP, *claimed)
            if start_id in (b"0-0", "0-0"):
                break
        self.client.xgroup_setid(ticks_key, GROUP, end)
        self.owned[symbol] = owned
        self.stats.takeovers += 1
        log.info("%s took %s over: replayed %d ticks up to %s", self.name, symbol, self.stats.replayed, end)

    # -- work ------------------------------------------------------------------------------------

    def _fold(self, symbol: str, owned: _Owned, ticks: list[Tick], entry_ids: list[bytes]) -> None:
        """Fold ticks; write new features with the XACK of `entry_ids` in one transaction."""
        found: list[tuple[str, Features]] = []
        for tick in ticks:
            self.stats.ticks += 1
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
            pipe.xadd(self.keys.features(symbol), to_fields(features), id=entry_id)  # type: ignore[arg-type]
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

    def step(self, block_ms: int = 100) -> int:
        """Renew leases, take free symbols, fold what is new; returns tick entries read."""
        self._claim_symbols()
        if not self.owned:
            return 0
        streams = {self.keys.ticks(s): ">" for s in sorted(self.owned)}
        group = (GROUP, self.name)
        reply = read_streams(self.client, streams, count=self.batch, block_ms=block_ms, group=group)
        read = 0
        for key, entries in reply:
            symbol = (key.decode() if isinstance(key, bytes) else key).rsplit(":", 1)[1].strip("{}")
            owned = self.owned.get(symbol)
            if owned is None:
                continue
            fresh = [(i, f) for i, f in entries if stream_id(i) > stream_id(owned.read_after)]
            ticks = [from_fields({k.decode(): v.decode() for k, v in f.items()}, Tick) for _, f in fresh]
            if fresh:
                owned.read_after = fresh[-1][0]
            self._fold(symbol, owned, ticks, [i for i, _ in entries])
            read += len(entries)
        return read

    def release(self) -> None:
        self.leases.release(list(self.owned))
        self.owned.clear()

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.step()
            except Exception as exc:  # noqa: BLE001 - a long-running worker logs and retries
                self.stats.errors += 1
                self.owned.clear()  # rebuilt from the store on the next step: nothing half-folded
                log.warning("feature worker %s: %s; retrying", self.name, exc)
                stop.wait(0.5)
        self.release()
