"""Valkey Streams storage of ticks: idempotent batched writes and exact time-range reads.

Stream ids are the exchange time in ms plus a sequence (`<ms>-<n>`), so a time range is an id range.
A tick older than the stream's last id (a history download, an edit, a clock step) cannot take its
own time as id; it is stored right after the current last entry, keeps its exchange time in the
`timestamp_ms` field, and is indexed by exchange time in a small sorted set (`tv:late:SYMBOL`) so
range reads still find it. Writes are idempotent on (symbol, session, trade_id): a bitmap per session
remembers which trade ids are stored (1 bit per trade number), edits are remembered by content.
A batch is one MULTI/EXEC, so a crash never leaves half a batch (see `writer`).
Its reads live in mixins: `TickQueries` (tick_reader.py), `EventQueries` (candles, features,
predictions, signals: event_reader.py) and `BookQueries` (book_reader.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import valkey

from tickvault.analytics.candles import TIMEFRAMES
from tickvault.domain.events import Features, Prediction, Signal, from_ms, to_fields
from tickvault.domain.keys import KeySpace
from tickvault.domain.tick_schema import stream_id
from tickvault.store.book_reader import BookQueries
from tickvault.store.cluster import is_cluster, primaries_with_key
from tickvault.store.event_reader import _EVENT_STREAM, EventQueries
from tickvault.store.sealing import History
from tickvault.store.tick_reader import TickQueries
from tickvault.store.tick_reader import columns_frame as columns_frame  # re-exported: imported from here
from tickvault.store.tick_reader import frame_to_ticks as frame_to_ticks
from tickvault.store.tick_writer import AppendResult, TickLike, TickWriter
from tickvault.store.valkey_errors import map_valkey_errors, store_error

if TYPE_CHECKING:
    from tickvault.store.connection import Connection

log = logging.getLogger("tickvault.store")

DEAD_LETTER_MAXLEN = 100_000  # the dead-letter stream keeps about this many entries, the newest


class Store(TickQueries, EventQueries, BookQueries):
    """Ticks (and, through `BookQueries`, order books) in Valkey. `client` must be created with
    decode_responses=False."""

    def __init__(
        self,
        client: valkey.Valkey,
        keys: KeySpace | None = None,
        *,
        owner: Connection | None = None,
        writer_name: str | None = None,
    ) -> None:
        self.client = client
        self.keys = keys or KeySpace(cluster=is_cluster(client))
        self.writer = TickWriter(client, self.keys, owner=writer_name)
        self.history = History(client, self.keys)
        self._owner = owner
        self._event_ids: dict[str, tuple[int, int]] = {}  # stream -> last (ms, n) appended

    def wait_durable(self, timeout_ms: int = 5000) -> bool:
        """True once everything written so far is fsynced to Valkey's append-only file. A write on
        this connection followed by WAITAOF covers every earlier write too: the file is sequential."""
        durable = True
        with map_valkey_errors():
            for node, probe in primaries_with_key(self.client, self.keys.durability_probe()):
                pipe = node.pipeline(transaction=False)  # in a cluster: every node's file
                pipe.incr(probe)
                pipe.execute_command("WAITAOF", 1, 0, timeout_ms)
                _, (local, _) = pipe.execute()
                durable = durable and int(local) >= 1
        return durable

    def close(self) -> None:
        """Close the connection this store opened (see `tickvault.connect`)."""
        if self._owner is not None:
            self._owner.close()
            self._owner = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing ---------------------------------------------------------------------------------

    def append_ticks(self, ticks: Iterable[TickLike]) -> AppendResult:
        """Store ticks once each, in arrival order, in one round trip (see `writer.TickWriter`);
        returns once Valkey has applied them."""
        result = self.writer.write(list(ticks))
        self.writer.flush()
        return result

    def dead_letter(
        self, reason: str, field: str, *, topic: str | bytes = b"", payload: bytes = b"", **extra: str | bytes
    ) -> None:
        """Keep a refused message aside in the dead-letter stream, capped at DEAD_LETTER_MAXLEN
        entries: why (`reason`, and `field`, the part at fault, a short word), where it came from
        (`topic`) and what it was (`payload`), cut to a bounded size, with when it was received."""
        fields: dict[str, str | bytes | int] = {
            "reason": reason[:500], "field": field, "topic": topic[:200], **extra,
            "payload": payload[:4096], "received_ms": int(time.time() * 1000),
        }  # fmt: skip
        with map_valkey_errors():
            self.client.xadd(self.keys.dead_letters(), fields, maxlen=DEAD_LETTER_MAXLEN, approximate=True)

    # -- features, predictions, signals: one entry per event, appended in time order by their one
    #    producer (issue 5 writes them); read back by the same range API

    def append_events(self, events: Sequence[Features | Prediction | Signal]) -> int:
        """Append events to their streams (`stream:features:SYM`, ...). Ids are explicit: the
        exchange ms and a counter of events of that stream within the ms (`ms-0`, `ms-1`, ...), the
        same ids a feature or predictor worker computes for the same events, so whoever writes an
        event second is refused. An event not newer than its stream's last entry (a rerun over the
        same times, a second writer) is skipped, not an error. Returns how many were appended."""
        pipe = self.client.pipeline(transaction=False)
        for event in events:
            key = self.keys.stream(_EVENT_STREAM[type(event)], event.symbol)
            ms = event.timestamp_ms
            last_ms, last_n = self._event_ids.get(key, (-1, -1))
            n = last_n + 1 if ms == last_ms else 0
            if ms >= last_ms:
                self._event_ids[key] = (ms, n)
            pipe.xadd(key, to_fields(event), id=f"{ms}-{n}")
        with map_valkey_errors():
            try:
                replies = pipe.execute(raise_on_error=False)
            except valkey.ValkeyError:
                self._event_ids.clear()  # a retry of this batch must compute the same ids again
                raise
        errors = [r for r in replies if isinstance(r, Exception)]
        for error in errors:
            if not isinstance(error, valkey.ResponseError) or "equal or smaller" not in str(error):
                raise store_error(error)
        return len(events) - len(errors)

    # -- housekeeping ----------------------------------------------------------------------------

    def compact(self, symbol: str, live_ms: int, max_len: int = 0) -> int:
        """Seal what is older than `live_ms` before the newest tick, and beyond `max_len` live
        entries (0: no bound) the oldest; the newest tick always stays live. Returns ticks sealed."""
        key = self.keys.ticks(symbol)
        with map_valkey_errors():
            top = self.client.xrevrange(key, count=1)
            if not top:
                return 0
            sealed = self.history.seal(symbol, stream_id(top[0][0])[0] - live_ms)
            excess = int(self.client.xlen(key)) - max_len if max_len > 0 else 0
            if excess > 0:
                oldest = self.client.xrange(key, count=excess + 1)
                sealed += self.history.seal(symbol, stream_id(oldest[-1][0])[0])
        return sealed

    @map_valkey_errors()
    def seal(self, symbol: str, before_ms: int) -> int:
        """Move live-stream ticks stored before `before_ms` into history blocks (see history.py)."""
        return self.history.seal(symbol, before_ms)

    def apply_retention(self, symbol: str, days: float) -> int:
        """Remove ticks whose exchange time is more than `days` before the symbol's newest tick
        (not the wall clock: loading 2013 data for research must not delete it on arrival). Exact:
        nothing newer is removed, nothing older remains. Returns how many entries were removed."""
        key, late = self.keys.ticks(symbol), self.keys.late(symbol)
        with map_valkey_errors():
            top = self.client.xrevrange(key, count=1)
            # the newest exchange time stored is the top id's ms (a late tick never raises it)
            newest = max([stream_id(top[0][0])[0]] if top else [], default=self.history.newest_ms(symbol))
            if newest is None or days <= 0:
                return 0
            cutoff = newest - int(days * 86_400_000)
            removed = int(self.client.xtrim(key, minid=str(cutoff), approximate=False))
            removed += self.history.expire(symbol, cutoff)
            # derived streams (candles, features, predictions, signals) go with the ticks they came from
            for kind in (*(f"candles:{tf}" for tf in TIMEFRAMES), "features", "predictions", "signals"):
                self.client.xtrim(self.keys.stream(kind, symbol), minid=str(cutoff), approximate=False)
            # ticks stored late sit at newer ids than their time: remove those by exchange time
            old_late = self.client.zrangebyscore(late, "-inf", f"({cutoff}")
            if old_late:
                removed += int(self.client.xdel(key, *old_late))
            self.client.zremrangebyscore(late, "-inf", f"({cutoff}")
            cutoff_session = from_ms(cutoff).strftime("%Y%m%d")
            stale = [
                k
                for pattern in self.keys.session_patterns(symbol)
                for k in self.client.scan_iter(match=pattern, count=1000)
                if k.decode().removeprefix(self.keys.prefix).split(":")[3] < cutoff_session
            ]
            if stale:
                self.client.delete(*stale)
        return removed

    def cleanup(self, days: float) -> dict[str, int]:
        """`apply_retention` (and `book_retention`) for every stored symbol: symbol -> entries removed."""
        out = {symbol: self.apply_retention(symbol, days) for symbol in self.symbols()}
        for symbol in self.book_symbols():
            out[symbol] = out.get(symbol, 0) + self.book_retention(symbol, days)
        return out

    @map_valkey_errors()
    def symbols(self) -> list[str]:
        return sorted(s.decode() for s in self.client.smembers(self.keys.symbols()))
