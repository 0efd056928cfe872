"""The recorder: this process's own (fed by its bus, or in-process without one), or the recorder of
`run --only recorder`, subscribed to the configured ports. Stopping it waits until everything the
source produced is written (`drained`), then confirms the append-only file (`durable`)."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter

from tickvault.app.components.base import (
    DRAIN_TIMEOUT_S,
    SummaryPart,
    Wiring,
    client_keys_of,
    detach,
    last_stored,
    own_client_keys,
    primed,
    spawn,
)
from tickvault.bus.envelope import endpoint
from tickvault.bus.publisher import Publisher
from tickvault.bus.subscriber import Subscriber
from tickvault.domain.keys import tick_topic
from tickvault.errors import ConfigError, StoreError
from tickvault.recorder.recorder import Recorder
from tickvault.store.api import Store

log = logging.getLogger("tickvault.system")


class _RecorderPart:
    name = "recorder"

    def __init__(self, wiring: Wiring) -> None:
        self.wiring = wiring
        self.recorder: Recorder | None = None
        self.subscriber: Subscriber | None = None
        self._publisher: Publisher | None = None  # the bus it reads, flushed before it drains
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _recorder(self, store: Store, spool: str) -> Recorder:
        s = self.wiring.settings
        self.recorder = self.wiring.recorder = Recorder(
            store,
            spool_path=s.data_dir / "spool" / spool,
            retention_days=s.stream_retention_days,
            stream_max_len=s.stream_max_len,
        )
        return self.recorder

    def stop(self) -> SummaryPart | None:
        if self.recorder is None:
            return None
        if self._publisher is not None:
            self._publisher.flush(DRAIN_TIMEOUT_S)
        produced = self.wiring.ingest.produced_seq
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while not self.recorder.caught_up(produced()) and time.monotonic() < deadline:
            time.sleep(0.01)
        drained = self.recorder.caught_up(produced())
        detach(self.wiring.ingest, self.recorder.submit_one)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            if self.recorder.buffered or self._thread.is_alive():
                drained = False  # ticks received and not in Valkey (kept in the spool file, if any)
        if self.subscriber is not None:
            self.subscriber.close()
        stats = self.recorder.stats
        return SummaryPart(
            stored=Counter(stats.stored), duplicates=stats.duplicates, rejected=stats.rejected_total,
            drained=drained, durable=drained and self._durable(),
        )  # fmt: skip

    def _durable(self) -> bool:
        assert self.recorder is not None
        try:
            return self.recorder.store.wait_durable()
        except StoreError as exc:
            log.error("could not confirm the append-only file fsync: %s", exc)
            return False

    def counters(self) -> dict[str, int]:
        out: dict[str, int] = {}
        if self.subscriber is not None:
            b = self.subscriber.stats
            out.update(
                delivered=b.received - b.heartbeats, gaps=b.gaps, missing=b.missing, recovered=b.recovered,
                unrecovered=b.unrecovered, duplicates_dropped=b.duplicates, seq_behind=b.behind,
            )  # fmt: skip
        if self.recorder is not None:
            r, spool = self.recorder.stats, self.recorder.spool
            out.update(
                stored=r.stored_total, duplicates=r.duplicates, late=r.late, rejected=r.rejected_total,
                write_errors=r.write_errors, rewritten=r.rewritten, sealed=r.sealed, expired=r.expired,
                buffered=self.recorder.buffered, spilled=spool.spilled, spill_errors=spool.spill_errors,
                store_lag_ms=self.recorder.store_lag_ms(),
            )  # fmt: skip
            out.update({f"rejected_{reason}": n for reason, n in sorted(dict(r.rejected).items())})
        return out


class LocalRecorder(_RecorderPart):
    """Records what this process's source produces: subscribed to its own publisher before the
    source starts (no slow-joiner loss), or fed in-process when there is no bus."""

    def start(self) -> None:
        w = self.wiring
        if w.store is None:
            return  # no Valkey: nothing to record to
        recorder = self._recorder(w.store, "recorder.spool")
        publisher = self._publisher = w.publisher
        if publisher is None:
            w.ingest.add_handler(recorder.submit_one)
            self._thread = spawn("recorder", recorder.run, None, self._stop)
            return
        self.subscriber = Subscriber(
            endpoint("127.0.0.1", publisher.port),
            ["tick_"],
            replay=publisher.replay_endpoint,
            curve=own_client_keys(w.settings, w.private_bus),
            ordered=False,  # the recorder keeps every valid tick; fills run beside it
        )
        self.subscriber.prime(primed(w.settings.symbols, w.lasts()))
        self._thread = spawn("recorder", recorder.run, self.subscriber, self._stop)
        if not publisher.wait_for_subscriber("tick_", timeout=10):
            log.warning("recorder did not subscribe within 10 s; early ticks may need recovery")


class BusRecorder(_RecorderPart):
    """`run --only recorder`: subscribes to the configured ports and records (`--symbols`: exactly
    those, so several recorders can share one bus, each symbol with one writer)."""

    def start(self) -> None:
        w, s = self.wiring, self.wiring.settings
        if w.store is None:
            raise ConfigError("VALKEY_ENABLED", False, "the recorder needs Valkey")
        shard, curve = w.record_only, client_keys_of(s)
        host = "127.0.0.1" if s.zmq_host in ("0.0.0.0", "*") else s.zmq_host
        self.subscriber = Subscriber(
            endpoint(host, s.zmq_tick_port),
            [tick_topic(sym) for sym in shard] if shard else ["tick_"],
            replay=endpoint(host, s.zmq_replay_port),
            recover=None,  # the recorder is the writer: what the ring lost, Valkey never had
            curve=curve,
            exact=bool(shard),
            ordered=False,  # the recorder keeps every valid tick; fills run beside it
        )
        # one recorder per symbol group: its own spool file
        recorder = self._recorder(w.store, f"recorder-{'-'.join(shard)}.spool" if shard else "recorder.spool")
        symbols = shard or tuple(dict.fromkeys((*s.symbols, *w.store.symbols())))
        lasts = last_stored(w.store, symbols)
        # a symbol with nothing stored yet starts at 0, so its first live message shows any gap before it
        self.subscriber.prime({tick_topic(sym): lasts[sym].seq if sym in lasts else 0 for sym in symbols})
        self._thread = spawn("recorder", recorder.run, self.subscriber, self._stop)
