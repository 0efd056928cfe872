"""One leased stream worker: the loop the candle, feature and predictor workers share.

Several processes of one kind share the symbols; each symbol is owned by one worker at a time through
a lease (`store/leases.py`), renewed every step; a dead worker's symbols are taken when its lease
expires. `LeasedWorker` owns what they all do the same way, a subclass only what it computes:

- `take(symbol)` builds a symbol's state from Valkey when the worker takes it (a first start, a dead
  owner's symbol, or after an error); `resumable` says whether state kept across a lapsed and
  retaken lease is still current;
- `handle(symbol, entries)` does the work for entries read from the symbol's stream (and
  `handle_claimed` for those claimed from an earlier owner, by default the same).

Reading is XREADGROUP on a consumer group (`group`): on taking a symbol the group is created if
needed and what an earlier owner read and never acknowledged is claimed (XAUTOCLAIM) and handled
first. A worker that must see every entry of a symbol in order and saves its own position (candles)
sets `group = None` and reads with XREAD from `position(symbol, state)`.

Acknowledging (workers with a group): an entry is acknowledged once its writes are known to be done,
written or refused as repeats (`is_repeat`: the id is there already). A write refused for another
reason (a key of the wrong type, out of memory, read-only) goes to `retry_or_dead_letter`: raised, so
the entry stays pending and the step fails, until the entry's `max_deliveries`-th delivery (XPENDING's
count); then it is dead-lettered (`Store.dead_letter`), counted (`dead_lettered`) and may be
acknowledged, so a lasting refusal cannot stop the symbol for good.

`run(stop)` steps until `stop`. After a failed step the owned state is dropped and rebuilt from
Valkey on the next one (the leases are kept), so nothing half-done carries on. While Valkey is
unreachable it backs off, logging one line when Valkey goes and one when it is back. At stop,
`finish()` and then the leases are released at once. `counters()` feeds the process's health hash.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import ClassVar, Generic, TypeVar

import valkey

from tickvault.errors import StoreUnavailable
from tickvault.store.api import Store
from tickvault.store.cluster import read_streams
from tickvault.store.leases import SymbolLeases
from tickvault.store.valkey_errors import map_valkey_errors

S = TypeVar("S")
Entry = tuple[bytes, dict[bytes, bytes]]

RETRY_S = 0.5  # after an error, and the first wait while Valkey is unreachable
BACKOFF_MAX_S = 5.0  # the longest wait between tries while Valkey is unreachable
MAX_DELIVERIES = 5  # a refused write is tried this many times (one per retry of the step), then dead-lettered


def is_repeat(result: object) -> bool:
    """A transaction's reply to an XADD with an explicit id: refused because that id is written already."""
    return isinstance(result, Exception) and "equal or smaller" in str(result)


def refusal(result: object) -> Exception | None:
    """A transaction's reply to a write: the refusal to act on, or None (written, or a repeat)."""
    return result if isinstance(result, Exception) and not is_repeat(result) else None


@dataclass
class WorkerStats:
    errors: int = 0  # failed steps (each retried)
    outages: int = 0  # times Valkey became unreachable
    claimed: int = 0  # entries an earlier owner left pending in the group, taken over
    dead_lettered: int = 0  # entries whose writes were refused on their max_deliveries-th delivery


class LeasedWorker(Generic[S]):
    """Symbols shared by lease with other workers of its kind; `run(stop)` in a thread."""

    group: ClassVar[str | None] = None  # the consumer group; None: the worker tracks its own position
    log: ClassVar[logging.Logger] = logging.getLogger("tickvault.workers")
    COUNTERS: ClassVar[dict[str, str]] = {}  # stats field -> name in the health hash

    def __init__(
        self,
        store: Store,
        symbols: tuple[str, ...],
        stats: WorkerStats,
        *,
        name: str,
        lease_key: Callable[[str], str],
        lease_ms: int | None,
        batch: int,
        max_deliveries: int = MAX_DELIVERIES,
    ) -> None:
        """`lease_ms` None: this worker owns every symbol (it is the only one)."""
        self.store = store
        self.client = store.client
        self.keys = store.keys
        self.symbols = symbols
        self.stats = stats
        self.name = name
        self.lease_key = lease_key
        self.lease_ms = lease_ms
        self.batch = batch
        self.max_deliveries = max_deliveries
        self.leases = None if lease_ms is None else SymbolLeases(self.client, lease_key, name, lease_ms)
        self.owned: dict[str, S] = {}
        self._stop = threading.Event()  # run's: waiting with nothing owned ends at stop

    # -- hooks -----------------------------------------------------------------------------------

    def stream(self, symbol: str) -> str:
        """The stream the worker reads for `symbol`."""
        raise NotImplementedError

    def take(self, symbol: str) -> S:
        """The symbol's state, built from Valkey (called with its lease held)."""
        raise NotImplementedError

    def handle(self, symbol: str, entries: list[Entry]) -> None:
        """Do the work for `entries` of the symbol's stream (claimed ones included)."""
        raise NotImplementedError

    def handle_claimed(self, symbol: str, entries: list[Entry]) -> None:
        """Entries an earlier owner read and never acknowledged, claimed on taking the symbol: by
        default handled as if read now."""
        self.handle(symbol, entries)

    def position(self, symbol: str, state: S) -> str:
        """Without a group: the id after which the symbol's stream is read."""
        raise NotImplementedError

    def resumable(self, symbol: str, state: S) -> bool:
        """Our lease lapsed and we took it back: may `state` go on (nobody else worked meanwhile)?"""
        return True

    def finish(self) -> None:
        """At stop, before the leases are released."""

    # -- ownership -------------------------------------------------------------------------------

    def _claim_symbols(self) -> None:
        """Renew our leases and take free symbols; drop the state of those we lost."""
        held = self.symbols if self.leases is None else self.leases.held(self.symbols)
        for symbol in [s for s in self.owned if s not in held]:
            self.log.warning("%s lost the lease of %s", self.name, symbol)
            del self.owned[symbol]
        retaken = set() if self.leases is None else self.leases.taken
        for symbol in held:
            if symbol in self.owned and symbol in retaken and not self.resumable(symbol, self.owned[symbol]):
                self.log.info("%s took %s back after another worker; starting from Valkey", self.name, symbol)
                del self.owned[symbol]
            if symbol not in self.owned:
                try:
                    self._take(symbol)
                except BaseException:
                    self.owned.pop(symbol, None)
                    if self.leases is not None:
                        self.leases.give_up(symbol)  # let another worker try
                    raise

    def _take(self, symbol: str) -> None:
        if self.group is not None:
            self._ensure_group(symbol)
        self.owned[symbol] = self.take(symbol)
        if self.group is not None:
            for entries in self._pending(symbol):
                if entries:
                    self.stats.claimed += len(entries)
                    self.handle_claimed(symbol, entries)

    def _ensure_group(self, symbol: str) -> None:
        try:
            self.client.xgroup_create(self.stream(symbol), self.group, id="0", mkstream=True)
        except valkey.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _pending(self, symbol: str) -> Iterator[list[Entry]]:
        """What earlier owners read from the group and never acknowledged, now ours, in id order."""
        stream, start = self.stream(symbol), "0-0"
        while True:
            reply = self.client.xautoclaim(
                stream, self.group, self.name, min_idle_time=0, start_id=start, count=self.batch
            )
            start = reply[0]
            yield [e for e in reply[1] if e is not None and e[1]]
            if start in (b"0-0", "0-0"):
                return

    def release(self) -> None:
        """A clean stop hands the symbols over at once instead of after the lease expires."""
        if self.leases is not None:
            self.leases.release(self.symbols)  # those still ours, whether or not we hold state for them
        self.owned.clear()

    # -- acknowledging ---------------------------------------------------------------------------

    def ack(self, symbol: str, entry_ids: list[bytes]) -> None:
        if entry_ids:
            self.client.xack(self.stream(symbol), self.group, *entry_ids)

    def retry_or_dead_letter(
        self,
        symbol: str,
        entry_id: bytes,
        exc: Exception,
        *,
        what: str,
        field: str,
        payload: bytes,
        **extra: str | bytes,
    ) -> None:
        """A write for `entry_id` refused, not as a repeat: raised (the entry stays pending, and the
        retry delivers it again) until its `max_deliveries`-th delivery; then dead-lettered and
        counted, and the caller acknowledges it."""
        stream = self.stream(symbol)
        pending = self.client.xpending_range(stream, self.group, min=entry_id, max=entry_id, count=1)
        deliveries = int(pending[0]["times_delivered"]) if pending else 0
        if deliveries < self.max_deliveries:
            raise exc
        reason = f"{what} not written after {deliveries} deliveries: {exc}"
        self.store.dead_letter(reason, field, topic=stream, payload=payload, entry=entry_id, **extra)
        self.stats.dead_lettered += 1
        self.log.error("%s: entry %s of %s dead-lettered: %s", self.name, entry_id, stream, reason)

    # -- work ------------------------------------------------------------------------------------

    def step(self, block_ms: int = 100) -> int:
        """Renew leases, take free symbols, read what is new and handle it; returns entries read."""
        try:
            with map_valkey_errors():
                self._claim_symbols()
                if not self.owned:
                    self._stop.wait(block_ms / 1000)  # every symbol is another worker's
                    return 0
                return self._read(block_ms)
        except Exception:
            self.stats.errors += 1
            raise

    def _read(self, block_ms: int) -> int:
        symbol_of = {self.stream(s): s for s in sorted(self.owned)}
        if self.group is None:
            streams = {key: self.position(s, self.owned[s]) for key, s in symbol_of.items()}
            group = None
        else:
            streams, group = dict.fromkeys(symbol_of, ">"), (self.group, self.name)
        reply = read_streams(self.client, streams, count=self.batch, block_ms=block_ms, group=group)
        read = 0
        for key, entries in reply:
            symbol = symbol_of.get(key.decode() if isinstance(key, bytes) else key)
            if symbol is None or symbol not in self.owned or not entries:
                continue  # lost while handling an earlier stream of this reply
            self.handle(symbol, entries)
            read += len(entries)
        return read

    def run(self, stop: threading.Event) -> None:
        """Until `stop`: step, retrying after errors; then `finish()` and release the leases."""
        self._stop = stop
        down_since: float | None = None
        wait = RETRY_S
        while not stop.is_set():
            try:
                self.step()
            except StoreUnavailable as exc:
                self.owned.clear()  # rebuilt from Valkey when it is back
                if down_since is None:
                    down_since, wait = time.monotonic(), RETRY_S
                    self.stats.outages += 1
                    self.log.warning("%s: %s; retrying until it is back", self.name, exc)
                stop.wait(wait)
                wait = min(wait * 2, BACKOFF_MAX_S)
                continue
            except Exception as exc:  # noqa: BLE001 - a long-running worker logs and retries
                self.owned.clear()  # rebuilt from Valkey on the next step: nothing half-done goes on
                self.log.warning("%s: %s; retrying", self.name, exc)
                stop.wait(RETRY_S)
                continue
            if down_since is not None:
                self.log.warning("%s: valkey is back after %.1f s", self.name, time.monotonic() - down_since)
                down_since = None
        try:
            self.finish()
        except Exception as exc:  # noqa: BLE001
            self.log.error("%s could not finish at stop: %s", self.name, exc)
        self.release()

    def counters(self) -> dict[str, int]:
        """The worker's counters by their names in the health hash (`tickvault monitor`)."""
        return {name: int(getattr(self.stats, field)) for field, name in self.COUNTERS.items()}
