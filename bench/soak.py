"""Soak: a simulated 24 hours of several symbols through the running system while faults fire.

`make soak` (or `python bench/soak.py`). Every component runs as its own process, as in production:
the embedded Valkey server (append-only file on), a source process (a `System` with `only="source"`: the
simulator, ingest, the ZeroMQ publisher with its replay ring, the feature engine) and a recorder
process (a `System` with `only="recorder"`), plus, in this process, a watched subscriber of the bus. The
market is compressed in time: as fast as the machine stores it (the source is held back when more than
`window` ticks are published but not yet stored, so a killed recorder's backlog stays within the
publisher's replay ring). The fault schedule is data (`Fault`); each one really happens:

- recorder_kill: SIGKILL of the recorder process; the market goes on; a new recorder process starts.
- valkey_kill: SIGKILL of the Valkey server (no shutdown, no fsync); restarted on the same port and
  data directory while the recorder retries.
- subscriber_pause: the watched subscriber stops reading (the publisher queues for it), then loses
  its connection, then rejoins with the last sequence numbers it has: the gap must be recovered from
  the publisher's ring and Valkey, in order, exactly once.
- publisher_stall: SIGSTOP of the source process (publisher and all) for `hold_s` seconds, then SIGCONT.
- recorder_stall: SIGSTOP of the recorder while the market goes on, then SIGCONT.
- disk_full: the recorder is restarted with a file-size limit on its spill file (RLIMIT_FSIZE, SIGXFSZ
  ignored: writes past it fail with EFBIG, as on a full disk) and Valkey is killed, so the recorder
  buffers past its memory bound into a spill directory that refuses data; then Valkey returns.
- clock_step: the source's exchange clock jumps back (`step_s`) for `hold_min` minutes, then resumes.

At the end every tick of the source (regenerated: the simulator is deterministic) is compared with
the store, read back through `Store.columns` over the whole range, by (symbol, session, trade_id).
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import msgspec
import numpy as np
import pandas as pd
import valkey

from tickvault.bus.envelope import endpoint
from tickvault.bus.subscriber import Subscriber
from tickvault.config import Settings
from tickvault.domain.events import B3_TZ, Tick, from_ms, to_ms
from tickvault.errors import StoreError
from tickvault.recorder.recovery import store_recovery
from tickvault.sources.simulator import MarketSimulator
from tickvault.store.api import Store
from tickvault.store.sealing import BlockRef
from tickvault.store.server import EmbeddedValkey, ServerInfo, free_port

RECORDER_KILL = "recorder_kill"
VALKEY_KILL = "valkey_kill"
SUBSCRIBER_PAUSE = "subscriber_pause"
PUBLISHER_STALL = "publisher_stall"
RECORDER_STALL = "recorder_stall"
DISK_FULL = "disk_full"
CLOCK_STEP = "clock_step"
FAULT_KINDS = (
    RECORDER_KILL, VALKEY_KILL, SUBSCRIBER_PAUSE, PUBLISHER_STALL, RECORDER_STALL, DISK_FULL, CLOCK_STEP
)  # fmt: skip

SETTING_ENV_NAMES = [
    str(info.validation_alias)
    for info in Settings.model_fields.values()
    if isinstance(info.validation_alias, str)
]
MIN_MS = 60_000
TAIL = 256


class _SeqOnly(msgspec.Struct):
    seq: int = 0


_seq_decoder = msgspec.json.Decoder(_SeqOnly)


@dataclass(frozen=True)
class Fault:
    """One fault: it fires once the source has published up to `at_min` simulated minutes after the
    start and lasts `hold_min` simulated minutes of market (or `hold_s` wall seconds for a frozen
    publisher: while the source is stopped, market time does not move)."""

    kind: str
    at_min: float
    hold_min: float = 0.0
    hold_s: float = 0.0
    step_s: float = 120.0  # clock_step: how far the exchange clock jumps back

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"fault kind {self.kind!r} must be one of {', '.join(FAULT_KINDS)}")


# 24 h from Monday 12:00: the afternoon session, the close, the night (no trading, trade numbers
# restart), the next morning. Minutes are after the start; Tuesday's session opens at minute 1260.
FULL_SCHEDULE = (
    Fault(RECORDER_KILL, 30, hold_min=10),
    Fault(VALKEY_KILL, 75, hold_min=5),
    Fault(SUBSCRIBER_PAUSE, 110, hold_min=30),
    Fault(PUBLISHER_STALL, 160, hold_s=5),
    Fault(RECORDER_STALL, 190, hold_min=10),
    Fault(CLOCK_STEP, 230, hold_min=5, step_s=120),
    Fault(RECORDER_KILL, 270, hold_min=2),
    Fault(VALKEY_KILL, 320, hold_min=10),
    Fault(RECORDER_KILL, 1262, hold_min=5),  # the opening burst of the next session
    Fault(SUBSCRIBER_PAUSE, 1280, hold_min=60),  # past the ring for WINFUT: Valkey must fill the rest
    Fault(CLOCK_STEP, 1350, hold_min=3, step_s=600),
    Fault(DISK_FULL, 1380, hold_min=20),  # last: its recorder keeps the file-size limit to the end
)

# The suite's short soak: every fault once in 24 minutes of the opening burst (~5k ticks a minute).
SHORT_SCHEDULE = (
    Fault(RECORDER_KILL, 2, hold_min=1),
    Fault(VALKEY_KILL, 5, hold_min=1),
    Fault(SUBSCRIBER_PAUSE, 8, hold_min=2),
    Fault(PUBLISHER_STALL, 11, hold_s=1.5),
    Fault(RECORDER_STALL, 13, hold_min=1),
    Fault(CLOCK_STEP, 16, hold_min=1, step_s=120),
    Fault(DISK_FULL, 19, hold_min=2),
)


@dataclass(frozen=True)
class SoakConfig:
    symbols: tuple[str, ...] = ("WDOFUT", "WINFUT", "DOLFUT", "INDFUT")
    seed: int = 7
    start: datetime = datetime(2025, 11, 24, 12, 0, tzinfo=B3_TZ)
    hours: float = 24.0
    faults: tuple[Fault, ...] = FULL_SCHEDULE
    window: int = 30_000  # flow control: ticks published and not yet stored, at most (ring: 100k/topic)
    step_ms: int = 60_000  # the source is let on this much simulated time ahead at a time
    spool_memory: int = 10_000  # the recorder's spool memory bound (ticks) before it spills to disk
    fsize_limit: int = 256 * 1024  # disk_full: bytes the recorder may write to one file
    subscriber_hwm: int = 1000
    recovery_timeout_s: float = 120.0
    workdir: Path | None = None  # None: a temporary directory, removed at the end unless `keep`
    keep: bool = False

    @property
    def start_ms(self) -> int:
        return to_ms(self.start)

    @property
    def end_ms(self) -> int:
        return self.start_ms + round(self.hours * 3_600_000)

    def fault_ms(self, minutes: float) -> int:
        return self.start_ms + round(minutes * MIN_MS)


@dataclass
class FaultResult:
    kind: str
    at: str  # simulated exchange time it fired
    hold: str
    fired: bool = False
    evidence: str = ""
    recovered: bool = False
    recovery_s: float | None = None  # from the fault's end until everything published was stored
    started: float = 0.0  # monotonic, for attributing lag and losses
    ended: float = 0.0


@dataclass
class SoakReport:
    symbols: list[str]
    start: str
    end: str
    ticks: int = 0
    stored: int = 0
    lost: int = 0
    duplicated: int = 0
    phantom: int = 0  # stored but never produced by the source
    altered: int = 0  # stored with another timestamp, price, quantity or seq than produced
    out_of_order: int = 0  # stored rows not in exchange-time order (ties by seq)
    stepped_emitted: int = 0  # ticks the clock step sent with an earlier timestamp
    stepped_kept: int = 0  # of those, stored with that timestamp
    per_symbol: dict[str, dict[str, int]] = field(default_factory=dict)
    lost_by_fault: dict[str, int] = field(default_factory=dict)
    lost_examples: list[str] = field(default_factory=list)
    max_lag_s: float = 0.0
    max_lag_outside_faults_s: float = 0.0
    # the recorder's own measure (store_lag_ms: how long the oldest tick it received waits for Valkey)
    max_recorder_lag_s: float = 0.0
    max_recorder_lag_outside_faults_s: float = 0.0
    subscriber: dict[str, int] = field(default_factory=dict)
    faults: list[FaultResult] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    workdir: str = ""

    @property
    def ok(self) -> bool:
        sub = self.subscriber
        return (
            self.lost == self.duplicated == self.phantom == self.altered == self.out_of_order == 0
            and self.stepped_kept == self.stepped_emitted
            and sub.get("lost", 1) == sub.get("duplicated", 1) == sub.get("out_of_order", 1) == 0
            and all(f.fired and f.recovered for f in self.faults)
            and not self.problems
        )


# -- the source stream (shared by the source process and the final comparison) ---------------------


@dataclass(frozen=True)
class StreamSpec:
    symbols: tuple[str, ...]
    seed: int
    start_ms: int
    end_ms: int
    steps: tuple[tuple[int, int, int], ...] = ()  # (from_ms, until_ms, back_ms): clock steps


def stream_spec(cfg: SoakConfig) -> StreamSpec:
    steps = tuple(
        (cfg.fault_ms(f.at_min), cfg.fault_ms(f.at_min + f.hold_min), round(f.step_s * 1000))
        for f in cfg.faults
        if f.kind == CLOCK_STEP
    )
    return StreamSpec(tuple(cfg.symbols), cfg.seed, cfg.start_ms, cfg.end_ms, steps)


def source_stream(spec: StreamSpec) -> Iterator[tuple[int, Tick]]:
    """(simulator time in ms, tick) until `end_ms`; inside a clock step the tick's exchange time is
    moved back by the step (the simulator time is what the harness schedules by)."""
    sim = MarketSimulator(list(spec.symbols), seed=spec.seed, start=from_ms(spec.start_ms))
    for tick in sim.ticks():
        ms = tick.timestamp_ms
        if ms >= spec.end_ms:
            return
        for begin, until, back in spec.steps:
            if begin <= ms < until:
                tick = msgspec.structs.replace(tick, timestamp=from_ms(ms - back), timestamp_ms=ms - back)
                break
        yield ms, tick


# -- child processes -------------------------------------------------------------------------------


class _Gate:
    """Holds the source before the first tick later than `limit` (simulator ms)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.limit = -1
        self.waiting = False
        self.closed = False

    def set(self, limit: int) -> None:
        with self._cond:
            self.limit = max(self.limit, limit)
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    def wait_for(self, ms: int) -> bool:
        with self._cond:
            while ms > self.limit and not self.closed:
                self.waiting = True
                self._cond.wait()
            self.waiting = False
            return not self.closed


def _child_source(spec: StreamSpec) -> int:
    """The source process: a `System` with `only="source"` fed by the gated stream; commands on stdin
    (`{"limit": ms}`, `{"stop": true}`), progress as JSON lines on stdout."""
    from tickvault.app.logs import setup_logging
    from tickvault.app.system import System
    from tickvault.config import load_settings

    settings = load_settings(only="source")
    setup_logging(settings.log_level)
    gate = _Gate()
    state = {"n": 0, "ms": 0, "done": False}

    def gated(_store: Store | None) -> Iterator[Tick]:
        for ms, tick in source_stream(spec):
            if ms > gate.limit and not gate.wait_for(ms):
                return
            state["n"] += 1
            state["ms"] = ms
            yield tick
        state["done"] = True  # asked for the next tick: the last one went through ingest

    system = System(settings, source=gated)
    system.start()
    out_lock = threading.Lock()

    def say(kind: str, **fields: Any) -> None:
        with out_lock:
            sys.stdout.write(json.dumps({"t": kind, "mono": time.monotonic(), **fields}) + "\n")
            sys.stdout.flush()

    stop = threading.Event()

    def commands() -> None:
        for line in sys.stdin:
            command = json.loads(line)
            if "limit" in command:
                gate.set(int(command["limit"]))
            if command.get("stop"):
                break
        stop.set()

    threading.Thread(target=commands, daemon=True).start()
    say("ready", endpoint=system.publisher.endpoint if system.publisher else None)
    last: tuple[Any, ...] = ()
    while not stop.wait(0.02):
        subs = sum(1 for s in system.publisher.subscriptions() if s == b"tick_") if system.publisher else 0
        now = (state["n"], gate.waiting, gate.limit, state["done"], subs)
        if now != last:
            last = now
            seqs = dict(system.ingest.last_seq)
            say("progress", n=state["n"], ms=state["ms"], limit=gate.limit, waiting=gate.waiting,
                done=state["done"], subs=subs, seqs=seqs)  # fmt: skip
    gate.close()
    summary = system.stop()
    say(
        "stopped", published=summary.published, generated=summary.generated_total, seqs=system.ingest.last_seq
    )
    return 0


def _child_recorder(stats_path: Path, spool_memory: int, fsize_limit: int) -> int:
    """The recorder process: a `System` with `only="recorder"`, its counters written to `stats_path` every
    50 ms; SIGTERM stops it cleanly. With `fsize_limit`, no file it writes may grow past that."""
    if fsize_limit:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of death, like a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize_limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    from tickvault.app.logs import setup_logging
    from tickvault.app.system import System
    from tickvault.config import load_settings

    settings = load_settings(only="recorder")
    setup_logging(settings.log_level)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    system = System(settings)
    system.start()
    assert system.recorder is not None
    system.recorder.spool.max_memory = spool_memory

    def write_stats(running: bool) -> None:
        recorder = system.recorder
        assert recorder is not None
        stats = {
            "pid": os.getpid(),
            "running": running,
            **system.counters(),
            "spill_errors": recorder.spool.spill_errors,
            "on_disk": recorder.spool.on_disk,
            "writer_alive": any(t.name == "recorder-writer" and t.is_alive() for t in threading.enumerate()),
        }
        tmp = stats_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(stats))
        tmp.replace(stats_path)

    while not stop.wait(0.05):
        write_stats(True)
    system.stop()
    write_stats(False)
    return 0


# -- the harness's view of its children --------------------------------------------------------------


def _proc_state(pid: int) -> str:
    """The kernel's one-letter state of `pid` (T: stopped), '?' if it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0]
    except (OSError, IndexError):
        return "?"


def _poll(predicate: Callable[[], bool], timeout: float, interval: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


class _SourceProcess:
    def __init__(
        self, cmd: list[str], env: dict[str, str], cwd: Path, log: IO[bytes], symbols: Sequence[str]
    ):
        self.proc = subprocess.Popen(
            cmd, env=env, cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log
        )
        self.pid = self.proc.pid
        self._lock = threading.Lock()
        self.progress: dict[str, Any] = {"n": 0, "ms": 0, "limit": -1, "waiting": False, "done": False}
        self.seqs: dict[str, int] = {}
        self.timeline: dict[str, tuple[list[float], list[int]]] = {s: ([], []) for s in symbols}
        self.ready = threading.Event()
        self.stopped = threading.Event()
        self.final: dict[str, Any] = {}
        self.limit = -1
        threading.Thread(target=self._read, name="soak-source-reader", daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            kind = msg.get("t")
            if kind == "ready":
                self.ready.set()
            elif kind == "progress":
                with self._lock:
                    self.progress = msg
                    for symbol, seq in msg["seqs"].items():
                        monos, seqs = self.timeline.setdefault(symbol, ([], []))
                        if not seqs or seq > seqs[-1]:
                            monos.append(msg["mono"])
                            seqs.append(seq)
                    self.seqs = dict(msg["seqs"])
            elif kind == "stopped":
                self.final = msg
        self.stopped.set()

    def snapshot(self) -> tuple[dict[str, Any], dict[str, int]]:
        with self._lock:
            return dict(self.progress), dict(self.seqs)

    def send(self, command: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        with contextlib.suppress(BrokenPipeError, ValueError):
            self.proc.stdin.write((json.dumps(command) + "\n").encode())
            self.proc.stdin.flush()

    def set_limit(self, ms: int) -> None:
        if ms > self.limit:
            self.limit = ms
            self.send({"limit": ms})

    def published_at(self, symbol: str, seq: int) -> float | None:
        """When (monotonic) the source had published `seq` of `symbol`, to its report's resolution."""
        with self._lock:
            monos, seqs = self.timeline.get(symbol, ([], []))
            i = bisect.bisect_left(seqs, seq)
            return monos[i] if i < len(monos) else None

    def oldest_unstored(self, symbol: str, stored: int) -> float | None:
        """When the first tick after `stored` was published (None: none is published yet)."""
        return self.published_at(symbol, stored + 1)


class _RecorderProcess:
    def __init__(self, cmd: list[str], env: dict[str, str], cwd: Path, log_path: Path, stats_path: Path):
        self.stats_path = stats_path
        self.log_path = log_path
        stats_path.unlink(missing_ok=True)
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=log)
        self.pid = self.proc.pid

    def stats(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.stats_path.read_text()))
        except (OSError, ValueError):
            return {}

    def log_tail(self, lines: int = 6) -> str:
        try:
            return " | ".join(self.log_path.read_text(errors="replace").strip().splitlines()[-lines:])
        except OSError:
            return ""


class _Sampler(threading.Thread):
    """Every 20 ms, per symbol, in one MULTI (an atomic view, even while the recorder seals blocks):
    the highest seq among the last TAIL stored entries (entries stored late sit at the end with older
    seqs; with more than TAIL of them this underestimates, which only delays "recovered") and how
    many ticks are stored. Their minimum is a stored prefix: with seqs
    1..last held once each, count == last; a hole makes count < last, and the first hole is at most
    count + 1. Lag: the age of the first published tick past that prefix (a lower bound if holes)."""

    def __init__(
        self,
        client: valkey.Valkey,
        store: Store,
        source: _SourceProcess,
        symbols: Sequence[str],
        recorder_lag: Callable[[], float | None] = lambda: None,
    ):
        super().__init__(name="soak-sampler", daemon=True)
        self.client, self.store, self.source, self.symbols = client, store, source, list(symbols)
        self.recorder_lag = recorder_lag
        self.recorder_samples: list[tuple[float, float]] = []  # (monotonic, the recorder's lag s)
        self.stored: dict[str, int] = {}
        self.fresh = 0.0  # monotonic time of the last successful sample
        self.samples: list[tuple[float, float]] = []  # (monotonic, lag s)
        self.stop = threading.Event()
        self._deep_at: dict[str, float] = {}
        self._deep: dict[str, int] = {}

    def run(self) -> None:
        keys = self.store.keys
        while not self.stop.wait(0.02):
            reported = self.recorder_lag()
            if reported is not None:
                self.recorder_samples.append((time.monotonic(), reported))
            try:
                pipe = self.client.pipeline(transaction=True)
                for symbol in self.symbols:
                    pipe.xrevrange(keys.ticks(symbol), count=TAIL)
                    pipe.xlen(keys.ticks(symbol))
                    pipe.zrange(keys.block_index(symbol), 0, -1)
                found = pipe.execute()
            except valkey.ValkeyError:
                continue  # Valkey is down: that is one of the faults
            now = time.monotonic()
            prefix: dict[str, int] = {}
            exact = True
            for i, symbol in enumerate(self.symbols):
                tail, live, blocks = found[3 * i : 3 * i + 3]
                last = max((int(fields[b"seq"]) for _, fields in tail), default=0)
                count = int(live) + sum(BlockRef.parse(m).rows for m in blocks)
                last = max(last, self._deep.get(symbol, 0))  # the highest stored seq only grows
                if last < count and now >= self._deep_at.get(symbol, 0.0):
                    # more than TAIL entries stored late: walk back to the newest on-time one (costly
                    # while a clock step makes every entry late, hence at most twice a second)
                    self._deep_at[symbol] = now + 0.5
                    with contextlib.suppress(StoreError):
                        self._deep[symbol] = self.store.last_seq(symbol)
                        last = max(last, self._deep[symbol])
                prefix[symbol] = min(last, count)
                exact = exact and last >= count
            self.stored, self.fresh = prefix, now
            if not exact:
                continue  # the highest seq is not known this round: no lag sample rather than a false one
            lag = 0.0
            for symbol, seq in prefix.items():
                published = self.source.oldest_unstored(symbol, seq)
                if published is not None:
                    lag = max(lag, now - published)
            self.samples.append((now, lag))


class _WatchedSubscriber(threading.Thread):
    """A bus consumer in this process that checks what it gets: every seq of every symbol once, in
    order. `pause` stops reading, `drop` closes its connection, `resume` rejoins from the last seqs."""

    def __init__(self, tick: str, replay: str, valkey_port: int, symbols: Sequence[str], hwm: int) -> None:
        super().__init__(name="soak-subscriber", daemon=True)
        self.tick_endpoint, self.replay_endpoint, self.hwm = tick, replay, hwm
        self.client = valkey.Valkey(
            host="127.0.0.1", port=valkey_port, socket_timeout=5, socket_connect_timeout=2
        )
        self.symbols = list(symbols)
        self.last: dict[str, int] = {f"tick_{s}": 0 for s in symbols}
        self.seen: dict[str, bytearray] = {t: bytearray(1 << 16) for t in self.last}
        self.delivered = 0
        self.duplicated = 0
        self.out_of_order = 0
        self.totals: Counter[str] = Counter()
        self.paused = threading.Event()
        self.dropped = threading.Event()
        self._drop = threading.Event()
        self.stop = threading.Event()
        self.connected = False
        self.current: Subscriber | None = None

    def _open(self) -> Subscriber:
        sub = Subscriber(
            self.tick_endpoint, ["tick_"], replay=self.replay_endpoint, rcvhwm=self.hwm,
            recover=store_recovery(Store(self.client)),
        )  # fmt: skip
        sub.prime(dict(self.last))
        self.connected = True
        self.current = sub
        return sub

    @staticmethod
    def _counts(sub: Subscriber) -> Counter[str]:
        s = sub.stats
        return Counter(
            gaps=s.gaps, missing=s.missing, recovered_replay=s.recovered_replay,
            recovered_store=s.recovered_store, unrecovered=s.unrecovered, dropped_duplicates=s.duplicates,
            heartbeats=s.heartbeats,
        )  # fmt: skip

    def _close(self, sub: Subscriber) -> None:
        self.totals.update(self._counts(sub))
        self.current = None
        sub.close()
        self.connected = False

    def heartbeats(self) -> int:
        current = self.current
        return self.totals["heartbeats"] + (current.stats.heartbeats if current is not None else 0)

    def stats(self) -> Counter[str]:
        """Recovery counters of every Subscriber this consumer has had, the open one included."""
        current = self.current
        out = Counter(self.totals)
        if current is not None:
            out.update(self._counts(current))
        return out

    def pause(self) -> None:
        self.paused.set()

    def drop(self) -> None:
        self._drop.set()

    def resume(self) -> None:
        self._drop.clear()
        self.dropped.clear()
        self.paused.clear()

    def run(self) -> None:
        sub: Subscriber | None = self._open()
        try:
            while not self.stop.is_set():
                if self.paused.is_set():
                    if self._drop.is_set() and sub is not None:
                        self._close(sub)
                        sub = None
                        self.dropped.set()
                    self.stop.wait(0.02)
                    continue
                if sub is None:
                    sub = self._open()
                for frames in sub.receive(timeout_ms=50):
                    self._check(frames)
        finally:
            if sub is not None:
                self._close(sub)
            self.client.close()

    def _check(self, frames: list[bytes]) -> None:
        topic = frames[0].decode()
        seq = _seq_decoder.decode(frames[1]).seq if len(frames) == 2 else 0
        last = self.last.get(topic, 0)
        seen = self.seen.setdefault(topic, bytearray(1 << 16))
        if seq >= len(seen):
            seen.extend(bytes(max(seq + 1 - len(seen), len(seen))))
        if seen[seq]:
            self.duplicated += 1
            return
        seen[seq] = 1
        self.delivered += 1
        if seq != last + 1:
            self.out_of_order += 1
        self.last[topic] = max(last, seq)

    def count_seen(self, topic: str, upto: int) -> int:
        return self.seen.get(topic, bytearray())[1 : upto + 1].count(1)


# -- the harness ------------------------------------------------------------------------------------


class SoakError(RuntimeError):
    pass


class _Harness:
    def __init__(self, cfg: SoakConfig) -> None:
        self.cfg = cfg
        self.spec = stream_spec(cfg)
        self.work = Path(cfg.workdir) if cfg.workdir else Path(tempfile.mkdtemp(prefix="tickvault-soak-"))
        self.work.mkdir(parents=True, exist_ok=True)
        self.data = self.work / "data"
        self.server = EmbeddedValkey(self.work / "valkey")
        self.report = SoakReport(
            list(cfg.symbols), from_ms(cfg.start_ms).isoformat(), from_ms(cfg.end_ms).isoformat(),
            workdir=str(self.work),
        )  # fmt: skip
        self.recorders: list[_RecorderProcess] = []
        self.source: _SourceProcess | None = None
        self.sampler: _Sampler | None = None
        self.subscriber: _WatchedSubscriber | None = None
        self.client: valkey.Valkey | None = None
        self._valkey: ServerInfo | None = None
        self.ports: dict[str, str] = {}
        self._flow_off = False
        self._logs: list[IO[bytes]] = []

    # -- processes ------------------------------------------------------------------------------

    @property
    def valkey(self) -> ServerInfo:
        if self._valkey is None:
            raise SoakError("valkey is not running")
        return self._valkey

    @valkey.setter
    def valkey(self, info: ServerInfo) -> None:
        self._valkey = info

    def _env(self, info: ServerInfo) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in SETTING_ENV_NAMES}
        env.update(
            VALKEY_URL=f"valkey://{info.host}:{info.port}/0",
            TICKVAULT_DATA_DIR=str(self.data),
            TICKVAULT_SYMBOLS=",".join(self.cfg.symbols),
            TICKVAULT_SEED=str(self.cfg.seed),
            OMP_NUM_THREADS="1",
            **self.ports,
        )
        return env

    def _child(self, *args: str) -> list[str]:
        return [sys.executable, str(Path(__file__).resolve()), "--child", *args]

    @property
    def recorder(self) -> _RecorderProcess:
        return self.recorders[-1]

    def _start_recorder(self, fsize_limit: int = 0) -> _RecorderProcess:
        n = len(self.recorders) + 1
        stats = str(self.work / f"recorder-{n}.json")
        memory, limit = str(self.cfg.spool_memory), str(fsize_limit)
        cmd = self._child("recorder", "--stats", stats, "--spool-memory", memory, "--fsize-limit", limit)
        proc = _RecorderProcess(
            cmd,
            self._env(self.valkey),
            self.work,
            self.work / f"recorder-{n}.log",
            self.work / f"recorder-{n}.json",
        )
        self.recorders.append(proc)
        if not _poll(lambda: proc.stats().get("running") is True, 60):
            raise SoakError(f"recorder {n} did not start: {proc.log_tail()}")
        return proc

    def _subscribed(self, count: int) -> bool:
        assert self.source is not None
        return bool(self.source.snapshot()[0].get("subs", 0) >= count)

    # -- progress and flow control ----------------------------------------------------------------

    def _recorder_lag(self) -> float | None:
        if not self.recorders:
            return None
        lag = self.recorder.stats().get("store_lag_ms")
        return None if lag is None else lag / 1000

    def _backlog(self) -> int:
        assert self.source is not None and self.sampler is not None
        _, published = self.source.snapshot()
        stored = self.sampler.stored
        return sum(max(0, seq - stored.get(s, 0)) for s, seq in published.items())

    def _drive(self, until_ms: int, *, flow: bool) -> None:
        """Let the source run until it has published everything up to `until_ms` (simulator time);
        with `flow`, never more than `window` ticks ahead of the store."""
        assert self.source is not None
        deadline = time.monotonic() + self.cfg.recovery_timeout_s * 3
        stalled_since = time.monotonic()
        last_n = -1
        while True:
            progress, _ = self.source.snapshot()
            # `waiting` counts only at the limit the source reports having (not one still in the pipe)
            at_limit = progress["waiting"] and progress["limit"] >= until_ms
            if progress["done"] or progress["ms"] >= until_ms or at_limit:
                return
            if progress["n"] != last_n:
                last_n, stalled_since = progress["n"], time.monotonic()
            stalled = time.monotonic() - stalled_since > self.cfg.recovery_timeout_s
            if stalled and flow and not self._flow_off:
                self._flow_off = True  # let the run end, so the comparison shows what the store missed
                self.report.problems.append(
                    f"the store stopped keeping up at {from_ms(progress['ms']).isoformat()} (backlog "
                    f"{self._backlog()} ticks); flow control off from here; recorder: "
                    f"{self.recorder.stats()} log: {self.recorder.log_tail(12)}"
                )
                stalled_since = time.monotonic()
                continue
            if time.monotonic() > deadline or stalled:
                raise SoakError(
                    f"the source stopped at {from_ms(progress['ms']).isoformat()} (backlog {self._backlog()} "
                    f"ticks not stored); recorder: {self.recorder.log_tail()}"
                )
            if not flow or self._flow_off or self._backlog() < self.cfg.window:
                self.source.set_limit(min(self.cfg.end_ms, max(until_ms, progress["ms"] + self.cfg.step_ms)))
            time.sleep(0.005)

    def _wait_stored(self, target: dict[str, int], timeout: float) -> bool:
        assert self.sampler is not None
        start = time.monotonic()

        def done() -> bool:
            return (
                self.sampler is not None
                and self.sampler.fresh > start
                and all(self.sampler.stored.get(s, 0) >= n for s, n in target.items())
            )

        return _poll(done, timeout)

    def _recover(
        self, result: FaultResult, cleared: float | None = None, target_of: Callable[[], bool] | None = None
    ) -> None:
        """From `cleared` (the fault's end, default now): how long until everything published by
        then is stored (or `target_of` holds)."""
        assert self.source is not None
        cleared = cleared or time.monotonic()
        _, target = self.source.snapshot()
        ok = (
            _poll(target_of, self.cfg.recovery_timeout_s)
            if target_of is not None
            else self._wait_stored(target, self.cfg.recovery_timeout_s)
        )
        result.recovered = ok
        result.ended = time.monotonic()
        result.recovery_s = result.ended - cleared if ok else None
        if not ok:
            self.report.problems.append(
                f"{result.kind} at {result.at}: not recovered within {self.cfg.recovery_timeout_s:.0f} s; "
                f"recorder: {self.recorder.stats()} log: {self.recorder.log_tail()}"
            )

    # -- faults -----------------------------------------------------------------------------------

    def _fault(self, fault: Fault) -> FaultResult:
        cfg = self.cfg
        at = cfg.fault_ms(fault.at_min)
        hold = f"{fault.hold_s:g} s" if fault.kind == PUBLISHER_STALL else f"{fault.hold_min:g} min"
        self._drive(at, flow=True)
        assert self.source is not None
        result = FaultResult(fault.kind, from_ms(at).strftime("%a %H:%M"), hold)
        result.started = time.monotonic()
        until = cfg.fault_ms(fault.at_min + fault.hold_min)
        getattr(self, f"_fault_{fault.kind}")(fault, result, until)
        if result.ended == 0.0:
            result.ended = time.monotonic()
        return result

    def _fault_recorder_kill(self, fault: Fault, result: FaultResult, until: int) -> None:
        old = self.recorder
        os.kill(old.pid, signal.SIGKILL)  # no flush, no goodbye
        old.proc.wait(30)
        self._drive(until, flow=False)  # the market goes on with nobody recording
        cleared = time.monotonic()
        new = self._start_recorder()
        result.fired = old.proc.returncode == -signal.SIGKILL and new.pid != old.pid
        result.evidence = (
            f"recorder pid {old.pid} SIGKILLed (exit {old.proc.returncode}), restarted as pid {new.pid}"
        )
        self._recover(result, cleared)

    def _fault_valkey_kill(self, fault: Fault, result: FaultResult, until: int) -> None:
        old = self.valkey
        errors = self.recorder.stats().get("write_errors", 0)
        os.kill(old.pid, signal.SIGKILL)  # no shutdown, no final fsync
        self._drive(until, flow=False)
        noticed = _poll(lambda: self.recorder.stats().get("write_errors", 0) > errors, 30)
        cleared = time.monotonic()
        self.valkey = self.server.ensure_running()
        result.fired = noticed and self.valkey.port == old.port and self.valkey.pid != old.pid
        self._recover(result, cleared)
        stats = self.recorder.stats()
        result.evidence = (
            f"valkey pid {old.pid} SIGKILLed, restarted as pid {self.valkey.pid} on port {self.valkey.port} "
            f"(append-only file); recorder write errors {stats.get('write_errors', 0) - errors}, "
            f"re-stored {stats.get('rewritten', 0)}"
        )

    def _fault_subscriber_pause(self, fault: Fault, result: FaultResult, until: int) -> None:
        sub = self.subscriber
        assert sub is not None and self.source is not None
        before = Counter(sub.stats())
        sub.pause()
        self._drive(self.cfg.fault_ms(fault.at_min + fault.hold_min / 2), flow=True)
        sub.drop()
        if not sub.dropped.wait(30):
            raise SoakError("the watched subscriber did not let go of its connection")
        self._drive(until, flow=True)
        _, target = self.source.snapshot()
        sub.resume()
        self._recover(
            result,
            target_of=lambda: (
                all(sub.last.get(f"tick_{s}", 0) >= n for s, n in target.items()) and sub.connected
            ),
        )
        got = sub.stats()
        got.subtract(before)
        result.fired = got["gaps"] > 0 and got["missing"] > 0
        result.evidence = (
            f"stopped reading {fault.hold_min / 2:g} min, then disconnected {fault.hold_min / 2:g} min; "
            f"rejoined: {got['gaps']} gaps, {got['missing']:,} missing → {got['recovered_replay']:,} from "
            f"the ring, {got['recovered_store']:,} from Valkey, {got['unrecovered']:,} unrecovered"
        )

    def _fault_publisher_stall(self, fault: Fault, result: FaultResult, until: int) -> None:
        source, sub = self.source, self.subscriber
        assert source is not None and sub is not None
        os.kill(source.pid, signal.SIGSTOP)
        stopped = _poll(lambda: _proc_state(source.pid) == "T", 5)
        beats = sub.heartbeats()
        time.sleep(fault.hold_s)  # the fault's duration: the publisher is frozen this long
        silent = sub.heartbeats() - beats
        os.kill(source.pid, signal.SIGCONT)
        self._recover(result)
        beating = _poll(lambda: sub.heartbeats() > beats + silent, 10)  # the publisher speaks again
        result.fired = stopped and beating
        result.evidence = (
            f"source process (publisher, ring, heartbeats) pid {source.pid} SIGSTOPped {fault.hold_s:g} s: "
            f"state T {stopped}, {silent} heartbeats meanwhile (every 0.5 s otherwise), after SIGCONT "
            f"heartbeats again {beating}"
        )

    def _fault_recorder_stall(self, fault: Fault, result: FaultResult, until: int) -> None:
        assert self.source is not None
        rec = self.recorder
        n0 = self.source.snapshot()[0]["n"]
        os.kill(rec.pid, signal.SIGSTOP)
        stopped = _poll(lambda: _proc_state(rec.pid) == "T", 5)
        self._drive(until, flow=False)
        if not _poll(lambda: self.source is not None and self.source.snapshot()[0]["n"] > n0, 10):
            # the source was already at `until` (it runs up to a step ahead): let the market move on
            self._drive(until + self.cfg.step_ms, flow=False)
            _poll(lambda: self.source is not None and self.source.snapshot()[0]["n"] > n0, 30)
        n1 = self.source.snapshot()[0]["n"]
        os.kill(rec.pid, signal.SIGCONT)
        result.fired = stopped and n1 > n0
        self._recover(result)
        result.evidence = (
            f"recorder pid {rec.pid} SIGSTOPped while {n1 - n0} ticks were published, then SIGCONT"
        )

    def _fault_disk_full(self, fault: Fault, result: FaultResult, until: int) -> None:
        old = self.recorder
        old.proc.send_signal(signal.SIGTERM)  # a clean restart, with the limit
        try:
            old.proc.wait(90)
        except subprocess.TimeoutExpired:
            old.proc.kill()
            old.proc.wait(30)
            self.report.problems.append(f"disk_full: recorder {old.pid} did not stop on SIGTERM within 90 s")
        rec = self._start_recorder(fsize_limit=self.cfg.fsize_limit)
        valkey_pid = self.valkey.pid
        os.kill(valkey_pid, signal.SIGKILL)
        self._drive(until, flow=False)
        refused = _poll(lambda: rec.stats().get("spill_errors", 0) > 0, 30)
        at_peak = rec.stats()
        cleared = time.monotonic()
        self.valkey = self.server.ensure_running()
        self._recover(result, cleared)
        after = rec.stats()
        result.fired = refused and at_peak.get("spilled", 0) > 0
        result.evidence = (
            f"recorder pid {rec.pid} limited to {self.cfg.fsize_limit // 1024} KiB per file, spool memory "
            f"{self.cfg.spool_memory}; valkey pid {valkey_pid} SIGKILLed for {fault.hold_min:g} min: "
            f"{at_peak.get('buffered', 0)} buffered, {at_peak.get('spilled', 0)} spilled, "
            f"{at_peak.get('spill_errors', 0)} spill errors (EFBIG); after Valkey returned: "
            f"{after.get('buffered', 0)} buffered, {after.get('on_disk', 0)} on disk, writer thread "
            f"{'alive' if after.get('writer_alive') else 'DEAD'}"
        )
        if not after.get("writer_alive", False):
            self.report.problems.append(f"disk_full: the recorder's writer thread died: {rec.log_tail(12)}")

    def _fault_clock_step(self, fault: Fault, result: FaultResult, until: int) -> None:
        self._drive(until, flow=True)
        result.fired = True  # confirmed at the end: the stepped-back ticks are in the store
        result.evidence = f"exchange clock {fault.step_s:g} s back for {fault.hold_min:g} min"
        self._recover(result)

    # -- run --------------------------------------------------------------------------------------

    def run(self) -> SoakReport:
        began = time.monotonic()
        cfg = self.cfg
        try:
            names = (
                "ZMQ_TICK_PORT",
                "ZMQ_REPLAY_PORT",
                "ZMQ_SIGNAL_PORT",
                "ZMQ_BOOK_PORT",
                "ZMQ_HISTORY_PORT",
            )
            self.ports = {name: str(free_port()) for name in names}
            self.valkey = self.server.ensure_running()
            self.client = valkey.Valkey(
                host=self.valkey.host, port=self.valkey.port, socket_timeout=5, socket_connect_timeout=1
            )
            store = Store(self.client)
            self._start_recorder()
            host = "127.0.0.1"
            tick = endpoint(host, int(self.ports["ZMQ_TICK_PORT"]))
            replay = endpoint(host, int(self.ports["ZMQ_REPLAY_PORT"]))
            self.subscriber = _WatchedSubscriber(
                tick, replay, self.valkey.port, cfg.symbols, cfg.subscriber_hwm
            )
            self.subscriber.start()
            log = open(self.work / "source.log", "wb")  # noqa: SIM115 - closed in `finally`
            self._logs.append(log)
            spec = json.dumps(asdict(self.spec))
            self.source = _SourceProcess(
                self._child("source", "--stream", spec), self._env(self.valkey), self.work, log, cfg.symbols
            )
            if not self.source.ready.wait(60):
                raise SoakError("the source process did not start (see source.log)")
            if not _poll(lambda: self._subscribed(2), 30):
                raise SoakError("recorder and subscriber did not subscribe to the source")
            self.sampler = _Sampler(self.client, store, self.source, cfg.symbols, self._recorder_lag)
            self.sampler.start()
            for fault in sorted(cfg.faults, key=lambda f: f.at_min):
                self.report.faults.append(self._fault(fault))
            self._drive(cfg.end_ms, flow=True)
            if not _poll(lambda: self.source is not None and self.source.snapshot()[0]["done"], 60):
                raise SoakError("the source did not reach the end of the stream")
            _, final = self.source.snapshot()
            if not self._wait_stored(final, cfg.recovery_timeout_s):
                self.report.problems.append(
                    f"end: the store did not reach the last published ticks {final} within "
                    f"{cfg.recovery_timeout_s:.0f} s (stored {self.sampler.stored}); recorder: "
                    f"{self.recorder.stats()} log: {self.recorder.log_tail(12)}"
                )
            sub = self.subscriber
            _poll(lambda: all(sub.last.get(f"tick_{s}", 0) >= n for s, n in final.items()), 60)
            self.source.send({"stop": True})
            if not self.source.stopped.wait(120):
                self.report.problems.append("the source process did not stop within 120 s")
            self.recorder.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.recorder.proc.wait(90)
            self.report.wall_s = time.monotonic() - began
            self._stop_threads()
            # a client with room for long reads: the whole range comes back in one go
            with valkey.Valkey(host=self.valkey.host, port=self.valkey.port, socket_timeout=300) as reader:
                self._compare(Store(reader), final)
        except SoakError as exc:
            self.report.problems.append(str(exc))
        finally:
            self.report.wall_s = self.report.wall_s or time.monotonic() - began
            self._stop_threads()
            self._cleanup()
        return self.report

    def _stop_threads(self) -> None:
        for thread in (self.sampler, self.subscriber):
            if thread is not None and thread.is_alive():
                thread.stop.set()
                thread.join(30)

    def _cleanup(self) -> None:
        procs = [r.proc for r in self.recorders] + ([self.source.proc] if self.source else [])
        for proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGCONT)
                    proc.kill()
                proc.wait(30)
        if self.client is not None:
            self.client.close()
        with contextlib.suppress(Exception):
            self.server.stop()
        info = self.server._read_state()
        if info is not None:  # a server that did not answer the shutdown
            with contextlib.suppress(ProcessLookupError):
                os.kill(info.pid, signal.SIGKILL)
            self.server._wait_exit(info.pid)
        for log in self._logs:
            log.close()
        if not self.cfg.keep and self.cfg.workdir is None and self.report.ok:
            shutil.rmtree(self.work, ignore_errors=True)

    # -- the comparison ---------------------------------------------------------------------------

    def _compare(self, store: Store, final: dict[str, int]) -> None:
        """Every tick of the source against the store, by (symbol, session, trade_id)."""
        rep = self.report
        produced: dict[str, dict[str, list[int]]] = {
            s: {"ts": [], "trade_id": [], "price_x": [], "quantity": [], "stepped": []}
            for s in self.cfg.symbols
        }
        for ms, tick in source_stream(self.spec):
            cols = produced[tick.symbol]
            cols["ts"].append(tick.timestamp_ms)
            cols["trade_id"].append(tick.trade_id)
            cols["price_x"].append(round(tick.price * 1e6))
            cols["quantity"].append(tick.quantity)
            cols["stepped"].append(int(tick.timestamp_ms != ms))
        lo, hi = self.cfg.start_ms - 86_400_000, self.cfg.end_ms + 86_400_000
        lost_by: Counter[str] = Counter()
        subscriber = self.subscriber
        sub_lost = 0
        for symbol, cols in produced.items():
            src = {k: np.asarray(v, dtype=np.int64) for k, v in cols.items()}
            n = len(src["ts"])
            src_seq = np.arange(1, n + 1, dtype=np.int64)
            got = store.columns(symbol, lo, hi)
            ts = np.asarray(got.timestamp_ms, dtype=np.int64)
            seq = np.asarray(got.seq, dtype=np.int64)
            src_key = _keys(src["ts"], src["trade_id"])
            st_key = _keys(ts, np.asarray(got.trade_id, dtype=np.int64))
            uniq, first_at, counts = np.unique(st_key, return_index=True, return_counts=True)
            order = np.argsort(src_key)
            pos = np.searchsorted(uniq, src_key[order])
            found = (pos < len(uniq)) & (uniq[np.minimum(pos, len(uniq) - 1)] == src_key[order])
            lost_idx = order[~found]
            row = first_at[pos[found]]
            want = order[found]
            altered = int(
                np.count_nonzero(
                    (ts[row] != src["ts"][want])
                    | (seq[row] != src_seq[want])
                    | (np.round(np.asarray(got.price)[row] * 1e6).astype(np.int64) != src["price_x"][want])
                    | (np.asarray(got.quantity, dtype=np.int64)[row] != src["quantity"][want])
                )
            )
            phantom = int(len(uniq) - np.count_nonzero(found))
            disorder = int(np.count_nonzero((np.diff(ts) < 0) | ((np.diff(ts) == 0) & (np.diff(seq) < 0))))
            stepped = src["stepped"].astype(bool)
            rep.stepped_emitted += int(stepped.sum())
            rep.stepped_kept += int(np.count_nonzero(stepped[want] & (ts[row] == src["ts"][want])))
            dups = int((counts - 1).sum())
            rep.per_symbol[symbol] = {
                "source": n,
                "stored": len(ts),
                "lost": len(lost_idx),
                "duplicated": dups,
            }
            rep.ticks += n
            rep.stored += len(ts)
            rep.lost += len(lost_idx)
            rep.duplicated += dups
            rep.phantom += phantom
            rep.altered += altered
            rep.out_of_order += disorder
            for i in lost_idx[:5]:
                when = from_ms(int(src["ts"][i])).isoformat()
                rep.lost_examples.append(f"{symbol} seq {src_seq[i]} trade {src['trade_id'][i]} at {when}")
            for i in lost_idx:
                lost_by[self._fault_at(symbol, int(src_seq[i]))] += 1
            if subscriber is not None:
                topic = f"tick_{symbol}"
                sub_lost += n - subscriber.count_seen(topic, n)
        rep.lost_by_fault = dict(lost_by)
        if self.sampler is not None:
            rep.max_lag_s = max((lag for _, lag in self.sampler.samples), default=0.0)
            windows = [(f.started, f.ended) for f in rep.faults]
            rep.max_lag_outside_faults_s = max(
                (lag for t, lag in self.sampler.samples if not any(a <= t <= b + 1.0 for a, b in windows)),
                default=0.0,
            )
            rep.max_recorder_lag_s = max((lag for _, lag in self.sampler.recorder_samples), default=0.0)
            rep.max_recorder_lag_outside_faults_s = max(
                (
                    lag
                    for t, lag in self.sampler.recorder_samples
                    if not any(a <= t <= b + 1.0 for a, b in windows)
                ),
                default=0.0,
            )
        if subscriber is not None:
            totals = subscriber.stats()
            rep.subscriber = {
                "delivered": subscriber.delivered,
                "lost": sub_lost,
                "duplicated": subscriber.duplicated,
                "out_of_order": subscriber.out_of_order,
                **{k: int(v) for k, v in totals.items()},
            }
        for f in rep.faults:
            if f.kind == CLOCK_STEP:
                f.fired = rep.stepped_emitted > 0
                f.evidence += (
                    f"; {rep.stepped_kept} of {rep.stepped_emitted} stepped-back ticks (all steps) stored"
                )

    def _fault_at(self, symbol: str, seq: int) -> str:
        assert self.source is not None
        when = self.source.published_at(symbol, seq)
        for f in self.report.faults:
            if when is not None and f.started <= when <= f.ended + 1.0:
                return f"{f.kind} at {f.at}"
        return "outside faults"


def _keys(ts: np.ndarray, trade_id: np.ndarray) -> np.ndarray:
    """(session, trade_id) as one int64: the B3 date of the exchange time, trade numbers per session."""
    local = pd.DatetimeIndex(pd.to_datetime(ts, unit="ms", utc=True)).tz_convert(B3_TZ)
    session = np.asarray(local.year * 10_000 + local.month * 100 + local.day, dtype=np.int64)
    return session * 1_000_000_000 + trade_id


def run_soak(cfg: SoakConfig | None = None) -> SoakReport:
    """Run the soak (see the module docstring) and return what it measured."""
    return _Harness(cfg or SoakConfig()).run()


# -- output -----------------------------------------------------------------------------------------


def format_report(rep: SoakReport) -> str:
    out = [
        f"soak {rep.start} → {rep.end}, symbols {','.join(rep.symbols)}",
        f"ticks {rep.ticks:,}  stored {rep.stored:,}  lost {rep.lost:,}  duplicated {rep.duplicated:,}  "
        f"out of order {rep.out_of_order:,}  altered {rep.altered:,}  phantom {rep.phantom:,}",
        f"clock step: {rep.stepped_kept:,} of {rep.stepped_emitted:,} stepped-back ticks kept",
        f"max bus→store lag {rep.max_lag_s:.2f} s (outside faults {rep.max_lag_outside_faults_s:.2f} s); "
        f"as the recorder measures it {rep.max_recorder_lag_s:.2f} s (outside faults "
        f"{rep.max_recorder_lag_outside_faults_s:.2f} s)",
    ]
    s = rep.subscriber
    if s:
        out.append(
            f"watched subscriber: delivered {s.get('delivered', 0):,}, lost {s.get('lost', 0):,}, "
            f"duplicated {s.get('duplicated', 0):,}, out of order {s.get('out_of_order', 0):,}; "
            f"gaps {s.get('gaps', 0)}, missing {s.get('missing', 0):,} → ring "
            f"{s.get('recovered_replay', 0):,}, Valkey {s.get('recovered_store', 0):,}, "
            f"unrecovered {s.get('unrecovered', 0):,}"
        )
    for name, info in rep.per_symbol.items():
        out.append(f"  {name}: {info}")
    out.append(f"{'fault':<17} {'at (exchange)':<14} {'held':<8} {'fired':<5} {'recovery':>9}  evidence")
    for f in rep.faults:
        rec = f"{f.recovery_s:.2f} s" if f.recovery_s is not None else "NONE"
        out.append(
            f"{f.kind:<17} {f.at:<14} {f.hold:<8} {'yes' if f.fired else 'NO':<5} {rec:>9}  {f.evidence}"
        )
    if rep.lost:
        out.append(f"lost by fault window: {rep.lost_by_fault}")
        out.append(f"first lost: {rep.lost_examples[:5]}")
    for problem in rep.problems:
        out.append(f"PROBLEM: {problem}")
    rate = rep.ticks / rep.wall_s if rep.wall_s else 0.0
    out.append(
        f"wall time {rep.wall_s:.0f} s ({rate:,.0f} ticks/s end to end); {'OK' if rep.ok else 'FAILED'}"
    )
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--child", choices=("source", "recorder"), help=argparse.SUPPRESS)
    parser.add_argument("--stream", help=argparse.SUPPRESS)
    parser.add_argument("--stats", help=argparse.SUPPRESS)
    parser.add_argument("--spool-memory", type=int, default=SoakConfig.spool_memory, help=argparse.SUPPRESS)
    parser.add_argument("--fsize-limit", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument(
        "--short", action="store_true", help="the suite's short soak (24 min, every fault once)"
    )
    parser.add_argument("--hours", type=float, help="simulated hours (default 24)")
    parser.add_argument("--symbols", help="comma-separated symbols")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workdir", type=Path, help="keep everything here (logs, Valkey data)")
    parser.add_argument("--json", type=Path, help="also write the report as JSON here")
    args = parser.parse_args(argv)
    if args.child == "source":
        raw = json.loads(args.stream)
        spec = StreamSpec(
            tuple(raw["symbols"]), raw["seed"], raw["start_ms"], raw["end_ms"],
            tuple(tuple(s) for s in raw["steps"]),  # type: ignore[misc]
        )  # fmt: skip
        return _child_source(spec)
    if args.child == "recorder":
        return _child_recorder(Path(args.stats), args.spool_memory, args.fsize_limit)
    cfg = short_config() if args.short else SoakConfig()
    cfg = replace(cfg, seed=args.seed, workdir=args.workdir, keep=args.workdir is not None)
    if args.hours is not None:
        cfg = replace(cfg, hours=args.hours)
    if args.symbols:
        cfg = replace(cfg, symbols=tuple(args.symbols.split(",")))
    print(f"soak: {cfg.hours:g} h of simulated market from {cfg.start.isoformat()}, symbols "
          f"{','.join(cfg.symbols)}, {len(cfg.faults)} faults; this takes a while", flush=True)  # fmt: skip
    rep = run_soak(cfg)
    print(format_report(rep))
    if args.json:
        args.json.write_text(json.dumps(asdict(rep), indent=2, default=str))
    return 0 if rep.ok else 1


def short_config(**overrides: Any) -> SoakConfig:
    """The suite's short soak: 24 minutes of the opening burst of two symbols, every fault once."""
    base = SoakConfig(
        symbols=("WDOFUT", "WINFUT"),
        start=datetime(2025, 11, 24, 9, 0, tzinfo=B3_TZ),
        hours=24 / 60,
        faults=SHORT_SCHEDULE,
        window=20_000,
        step_ms=20_000,
        spool_memory=2_000,
        fsize_limit=64 * 1024,
        recovery_timeout_s=90.0,  # a deadline, not a target: CI machines are shared
    )
    return replace(base, **overrides)


if __name__ == "__main__":
    raise SystemExit(main())
