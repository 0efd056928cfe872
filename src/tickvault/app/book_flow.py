"""The order book's part of `tickvault run`: its own publisher on ZMQ_BOOK_PORT (with its replay
endpoint on ZMQ_BOOK_REPLAY_PORT), its recorder, its numbering, and the live book of the features.

`System` owns one `BookFlow` and calls it at the same points as the tick path: `start` after the
tick bus is up (the recorder subscribes before the source starts), `start_recorder_only` for
`run --only recorder`, `unstored` while holding an unpaced source back, `stop` once the source has
stopped (the publisher drains, the recorder catches up, then both close), and `counters`. Book
batches reach it through `Ingest.on_book`: their update seqs numbered there, handed to the in-process
handlers (the features' live book, unless the core flow reads this bus) and, with ZeroMQ off or its
port taken, to the recorder; else
published as `book_{SYMBOL}` frames (the batches queued together in one frame, numbered by the
publisher). Both numberings continue from what the store holds.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tickvault.bus.book_framing import FRAME_HWM
from tickvault.bus.curve import ClientKeys, ServerKeys
from tickvault.bus.envelope import endpoint
from tickvault.bus.ingest import Ingest
from tickvault.bus.publisher import Publisher
from tickvault.bus.subscriber import Subscriber
from tickvault.config import Settings
from tickvault.domain.book import BookBatch
from tickvault.domain.keys import book_topic
from tickvault.errors import BusError
from tickvault.recorder.book_recorder import BookRecorder
from tickvault.store.api import Store

log = logging.getLogger("tickvault.system")

DRAIN_TIMEOUT_S = 60.0


@dataclass
class BookFlow:
    """The book's publisher, recorder and subscriber of one run (all optional)."""

    settings: Settings
    ingest: Ingest
    store: Store | None = None
    private_bus: bool = False
    publisher: Publisher | None = None
    recorder: BookRecorder | None = None
    subscriber: Subscriber | None = None
    degraded: list[str] = field(default_factory=list)
    _thread: threading.Thread | None = None
    _stop: threading.Event = field(default_factory=threading.Event)

    def _recorder(self, store: Store, suffix: str = "") -> BookRecorder:
        s = self.settings
        return BookRecorder(
            store,
            spool_path=s.data_dir / "spool" / f"book-recorder{suffix}.spool",
            retention_days=s.stream_retention_days,
            writer_name=f"bookrecorder@{socket.gethostname()}:{s.data_dir.resolve()}{suffix}",
        )

    def _positions(self, symbols: tuple[str, ...]) -> dict[str, tuple[int, int]]:
        """symbol -> (last frame, last update seq) stored: where numbering and subscribers resume."""
        if self.store is None:
            return {}
        out = {}
        for symbol in symbols:
            position = self.store.book_position(symbol)
            if position.kind is not None:
                out[symbol] = (position.frame, position.seq)
        return out

    def _run_recorder(self, subscriber: Subscriber | None) -> None:
        assert self.recorder is not None
        self._thread = threading.Thread(
            target=self.recorder.run, args=(subscriber, self._stop), name="book-recorder", daemon=True
        )
        self._thread.start()

    def start(
        self,
        *,
        record: bool,
        features: Callable[[BookBatch], None] | None,
        server_keys: ServerKeys | None,
        client_keys: ClientKeys | None,
    ) -> None:
        """The book path of a whole run (or `--only source` with `record` False)."""
        s = self.settings
        positions = self._positions(s.symbols)
        self.ingest.set_book_start({symbol: seq for symbol, (_, seq) in positions.items()})
        if features is not None:
            self.ingest.book_handlers.append(features)
        if s.zmq_enabled:
            try:
                self.publisher = self._bind(server_keys)
            except BusError as exc:  # the book degrades alone: the ticks' bus and the recorder go on
                self.degraded.append(f"book bus unavailable ({exc})")
                log.error("%s: the book is recorded in-process", self.degraded[-1])
            else:
                for symbol, (frame, _) in positions.items():
                    self.publisher.framer.start(book_topic(symbol).encode(), frame)
            self.ingest.book_publisher = self.publisher
        if not record or self.store is None:
            return
        self.recorder = self._recorder(self.store)
        if self.publisher is None:
            self.ingest.book_handlers.append(self.recorder.submit_batch)
            self._run_recorder(None)
            return
        self.subscriber = Subscriber(
            endpoint("127.0.0.1", self.publisher.port),
            ["book_"],
            replay=self.publisher.replay_endpoint,
            rcvhwm=FRAME_HWM,
            curve=client_keys,
            ordered=False,
        )
        # a symbol with nothing stored starts at 0: its first frame missed is a gap to fill
        self.subscriber.prime({book_topic(sym): positions.get(sym, (0, 0))[0] for sym in s.symbols})
        self._run_recorder(self.subscriber)
        if not self.publisher.wait_for_subscriber("book_", timeout=10):
            log.warning("the book recorder did not subscribe within 10 s; early frames may need recovery")

    def _bind(self, keys: ServerKeys | None) -> Publisher:
        s = self.settings
        if self.private_bus:
            return Publisher("tcp://127.0.0.1:*", replay_bind="tcp://127.0.0.1:*", sndhwm=FRAME_HWM)
        return Publisher(
            endpoint(s.zmq_host, s.zmq_book_port),
            replay_bind=endpoint(s.zmq_host, s.zmq_book_replay_port),
            sndhwm=FRAME_HWM,
            curve=keys,
            allow_insecure=s.zmq_allow_insecure,
        )

    def start_recorder_only(
        self, symbols: tuple[str, ...], shard: bool, client_keys: ClientKeys | None
    ) -> None:
        """`run --only recorder`: subscribe to the book port as well, primed with what is stored."""
        s = self.settings
        if self.store is None:
            return
        host = "127.0.0.1" if s.zmq_host in ("0.0.0.0", "*") else s.zmq_host
        suffix = f"-{'-'.join(symbols)}" if shard else ""
        self.recorder = self._recorder(self.store, suffix)
        self.subscriber = Subscriber(
            endpoint(host, s.zmq_book_port),
            [book_topic(sym) for sym in symbols] if shard else ["book_"],
            replay=endpoint(host, s.zmq_book_replay_port),
            rcvhwm=FRAME_HWM,
            curve=client_keys,
            exact=shard,
            ordered=False,
        )
        positions = self._positions(symbols)
        self.subscriber.prime({book_topic(sym): positions.get(sym, (0, 0))[0] for sym in symbols})
        self._run_recorder(self.subscriber)

    def unstored(self) -> int:
        """Book updates this run produced that the recorder has not confirmed yet."""
        if self.recorder is None:
            return 0
        done = self.recorder.stats.last_seq
        return sum(max(0, n - done.get(s, 0)) for s, n in self.ingest.produced_book().items())

    def stop(self) -> bool:
        """Drain: the publisher, then the recorder up to every update produced; then close. True when
        everything produced is in Valkey."""
        drained = True
        if self.publisher is not None:
            self.publisher.flush(DRAIN_TIMEOUT_S)
        if self.recorder is not None and self._thread is not None:
            produced = self.ingest.produced_book()
            deadline = time.monotonic() + DRAIN_TIMEOUT_S
            while not self.recorder.caught_up(produced) and time.monotonic() < deadline:
                time.sleep(0.01)
            drained = self.recorder.caught_up(produced)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
            drained = (
                drained and not self._thread.is_alive() and not (self.recorder and self.recorder.buffered)
            )
        if self.publisher is not None:
            self.publisher.close()
        if self.subscriber is not None:
            self.subscriber.close()
        return drained

    def counters(self) -> dict[str, int]:
        out: dict[str, int] = {}
        stats = self.ingest.stats
        if stats.book_batches:
            out.update(
                book_generated=sum(stats.book_updates.values()), book_batches=sum(stats.book_batches.values())
            )
        if self.publisher is not None:
            out["book_published"] = self.publisher.stats.published
        if self.subscriber is not None:
            b = self.subscriber.stats
            out.update(book_gaps=b.gaps, book_recovered=b.recovered, book_unrecovered=b.unrecovered)
        if self.recorder is not None:
            r = self.recorder.stats
            out.update(
                book_stored=r.stored_total,
                book_duplicates=r.duplicates,
                book_rejected=r.rejected_total,
                book_snapshots=r.snapshots,
                book_write_errors=r.write_errors,
                book_rewritten=r.rewritten,
                book_sealed=r.sealed,
                book_buffered=self.recorder.buffered,
            )
        return out

    def describe(self) -> str:
        return f"zmq book={self.publisher.endpoint}" if self.publisher else ""
