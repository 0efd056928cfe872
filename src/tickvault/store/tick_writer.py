"""The tick stream writer: one round trip per batch, everything decided column-wise in Python.

Per-tick work is what limits a Python writer: a server-side script costs ~15 µs of Valkey time per
tick in argument marshalling, a valkey-py pipeline ~30 µs of Python per command, even building one
XADD per tick with f-strings ~9 µs. So this writer keeps, per symbol, the stream's last id, its
`entries-added` counter and the session bitmaps of stored trade ids, and computes stream ids,
duplicates and late ticks with numpy, and the XADD commands (RESP bytes) with pyarrow kernels.

A batch is sent as `CLIENT REPLY OFF, MULTI, XADD..., SETRANGE (bitmap bytes), EXEC, CLIENT REPLY ON,
XINFO STREAM` per symbol: Valkey applies it whole or not at all (also in its append-only file), and
the XINFO replies prove it did: the last id and the entries-added counter must be what this writer
expects. Any surprise (Valkey restarted and lost its last second, someone else wrote, the batch was
refused) drops the cached state, so the caller's retry is decided against Valkey's own state.

The writer must be the only writer of its symbols' tick streams (the recorder is).
"""

from __future__ import annotations

import contextlib
import logging
import operator
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import valkey

from tickvault.domain.events import B3_TZ
from tickvault.domain.keys import KeySpace
from tickvault.domain.tick_schema import COLUMN_DTYPES, FIELD, ROW_FIELDS, Aggressor, stream_id
from tickvault.errors import StoreError
from tickvault.store.block_codec import Columns
from tickvault.store.cluster import is_cluster, node_client, refresh
from tickvault.store.leases import SymbolLeases
from tickvault.store.live_copy import CopyRun, stream_ids
from tickvault.store.raw_resp import EXEC_REPLY_ON, REPLY_OFF_MULTI, RawConnection
from tickvault.store.raw_resp import pack as _pack
from tickvault.store.seen_bits import SEEN_CHUNK_BITS, are_set, byte_and_mask, cached_bitmap, or_in, set_bits
from tickvault.store.stream_codec import (
    FIELDS,  # stream fields after the id, in the schema's order (the fast reader relies on it)
)
from tickvault.store.valkey_errors import map_valkey_errors

log = logging.getLogger("tickvault.writer")

LEASE_MS = 10_000


_row = operator.attrgetter(*ROW_FIELDS)
_ARROW = {name: pa.from_numpy_dtype(dtype) for name, dtype in COLUMN_DTYPES.items()}


class TickLike(Protocol):
    """A Tick, or the recorder's validated wire form of one: the same (read-only) attributes, those
    of `tick_schema.ROW_FIELDS` with their schema types (a test holds this protocol to them)."""

    @property
    def symbol(self) -> str: ...

    @property
    def timestamp_ms(self) -> int: ...

    @property
    def trade_id(self) -> int: ...

    @property
    def price(self) -> float: ...

    @property
    def volume(self) -> float: ...

    @property
    def quantity(self) -> int: ...

    @property
    def buyer(self) -> int: ...

    @property
    def seller(self) -> int: ...

    @property
    def trade_type(self) -> int: ...

    @property
    def aggressor(self) -> Aggressor: ...

    @property
    def is_edit(self) -> bool: ...

    @property
    def seq(self) -> int: ...


@dataclass
class AppendResult:
    stored: int = 0
    duplicates: int = 0
    late: int = 0
    stored_by_symbol: Counter[str] = field(default_factory=Counter)


@dataclass
class _SymbolState:
    last_ms: int = 0  # a new stream's top is the implicit 0-0
    last_seq: int = 0
    entries_added: int = 0
    exists: bool = False
    seen: dict[str, np.ndarray] = field(default_factory=dict)  # key -> bitmap bytes (Valkey bit order)
    edits: dict[str, set[bytes]] = field(default_factory=dict)
    copy: CopyRun = field(default_factory=CopyRun)  # the columnar copy of the live stream (live_copy.py)


class _Sessions:
    """B3 session date of a timestamp, cached per hour (offsets come from the tz database: B3 had DST)."""

    def __init__(self) -> None:
        self._by_hour: dict[int, str] = {}

    def __call__(self, ms: np.ndarray) -> np.ndarray:
        hours = ms // 3_600_000
        unique, inverse = np.unique(hours, return_inverse=True)
        names = []
        for hour in unique.tolist():
            name = self._by_hour.get(hour)
            if name is None:
                name = self._by_hour[hour] = datetime.fromtimestamp(hour * 3600, B3_TZ).strftime("%Y%m%d")
            names.append(name)
        return np.array(names, dtype=object)[inverse]


def _text(values: pa.Array) -> pa.Array:
    return pc.cast(values, pa.string())


class _IsoClock:
    """ISO 8601 text in B3 time with milliseconds, e.g. 2026-11-24T10:00:00.123-03:00. Formatting
    with a timezone per row costs ~3 µs; a batch spans few distinct seconds, formatted once each."""

    def __init__(self) -> None:
        self._seconds: dict[int, tuple[str, str]] = {}

    def __call__(self, ms: np.ndarray) -> pa.Array:
        seconds, millis = np.divmod(ms, 1000)
        unique, inverse = np.unique(seconds, return_inverse=True)
        heads, tails = [], []
        if len(self._seconds) > 200_000:
            self._seconds.clear()
        for sec in unique.tolist():
            parts = self._seconds.get(sec)
            if parts is None:
                moment = datetime.fromtimestamp(sec, B3_TZ)
                offset = moment.strftime("%z")
                parts = self._seconds[sec] = (
                    moment.strftime("%Y-%m-%dT%H:%M:%S."),
                    f"{offset[:3]}:{offset[3:]}",
                )
            heads.append(parts[0])
            tails.append(parts[1])
        index = pa.array(inverse)
        return pc.binary_join_element_wise(
            pa.array(heads, pa.string()).take(index),
            pc.utf8_lpad(_text(pa.array(millis)), 3, "0"),
            pa.array(tails, pa.string()).take(index),
            "",
        )


def _resp_xadd(stream: str, ids: pa.Array, columns: dict[str, pa.Array]) -> bytes:
    """RESP bytes of one `XADD stream id field value ...` per row, built with pyarrow kernels."""
    key = stream.encode()
    head = f"*{3 + 2 * len(FIELDS)}\r\n$4\r\nXADD\r\n${len(key)}\r\n{stream}\r\n"
    pieces: list[Any] = [pa.scalar(head)]

    def bulk(values: pa.Array) -> None:
        pieces.extend(
            (pa.scalar("$"), _text(pc.binary_length(values)), pa.scalar("\r\n"), values, pa.scalar("\r\n"))
        )

    bulk(ids)
    for name in FIELDS:
        pieces.append(pa.scalar(f"${len(name)}\r\n{name}\r\n"))
        bulk(columns[name])
    return _concat(pc.binary_join_element_wise(*pieces, ""))


def _concat(strings: pa.Array) -> bytes:
    """All values of a string array, back to back (its data buffer between the first and last offset)."""
    if len(strings) == 0:
        return b""
    offsets = np.frombuffer(strings.buffers()[1], dtype=np.int32)[
        strings.offset : strings.offset + len(strings) + 1
    ]
    data: bytes = strings.buffers()[2].to_pybytes()
    return data[offsets[0] : offsets[-1]]


def _parse_info(reply: Any) -> tuple[int, int, int]:
    """(last ms, last seq, entries-added) from a raw XINFO STREAM reply."""
    info = dict(zip(reply[::2], reply[1::2], strict=True))
    ms, seq = stream_id(info[b"last-generated-id"])
    return ms, seq, int(info[b"entries-added"])


class TickWriter:
    def __init__(
        self, client: valkey.Valkey, keys: KeySpace | None = None, *, owner: str | None = None
    ) -> None:
        """`owner` names this writer in its leases; a restarted writer with the same name takes over
        at once, a different one waits until the lease expires (LEASE_MS after the last write)."""
        self.client = client
        self.keys = keys or KeySpace(cluster=is_cluster(client))
        self.owner = owner or f"writer-{uuid.uuid4().hex[:12]}"
        self._symbol_leases = SymbolLeases(client, self.keys.writer_lease, self.owner, LEASE_MS)
        self._conns: dict[str, RawConnection] = {}  # node ("" standalone) -> its connection
        # the batch in flight: (node, symbol) in send order, and each symbol's expected stream state
        self._in_flight: tuple[list[tuple[str, str]], dict[str, tuple[int, int, int]]] | None = None
        self._state: dict[str, _SymbolState] = {}
        self._sessions = _Sessions()
        self._iso = _IsoClock()

    @contextlib.contextmanager
    def _reset_on_failure(self) -> Iterator[None]:
        """Any failure drops the cached state, so the caller's retry is decided against Valkey's."""
        with map_valkey_errors():
            try:
                yield
            except BaseException:
                self.reset()
                refresh(self.client)  # in a cluster the slot may have moved: the retry goes to its new node
                raise

    def reset(self) -> None:
        """Forget cached state (and the batch in flight); state is reloaded from Valkey on the next write."""
        self._state.clear()
        self._symbol_leases.forget()
        self._drop_connection()

    def release(self) -> None:
        """Give up this writer's leases (at a clean stop, after `flush`), so another writer need not wait."""
        self._symbol_leases.release()

    def _lease(self, symbol: str) -> None:
        """Hold the symbol's writer lease; a symbol newly taken over is reloaded from Valkey."""
        if self._symbol_leases.hold(symbol):
            # (re)taken: someone else may have written meanwhile. Reload, but only after the batch in
            # flight is applied, or the reloaded state would miss it.
            self._collect()
            self._state.pop(symbol, None)

    # -- state -----------------------------------------------------------------------------------

    def _load(self, symbol: str) -> _SymbolState:
        state = self._state.get(symbol)
        if state is None:
            state = _SymbolState()
            try:
                raw = self.client.execute_command("XINFO", "STREAM", self.keys.ticks(symbol))
                state.last_ms, state.last_seq, state.entries_added = _parse_info(raw)
                state.exists = True
            except valkey.ResponseError:
                pass  # no stream yet
            self._state[symbol] = state
        return state

    def _edit_set(self, state: _SymbolState, key: str) -> set[bytes]:
        edits = state.edits.get(key)
        if edits is None:
            edits = state.edits[key] = set(self.client.smembers(key))
        return edits

    # -- writing ---------------------------------------------------------------------------------

    def write(self, ticks: Sequence[TickLike]) -> AppendResult:
        """Store ticks once each, in arrival order. On failure raises StoreError / StoreUnavailable
        and forgets its cached state, so retrying the same batch is safe (writes are idempotent)."""
        if not ticks:
            return AppendResult()
        with self._reset_on_failure():
            return self._write(ticks)

    def _write(self, ticks: Sequence[TickLike]) -> AppendResult:
        result = AppendResult()
        by_symbol: dict[str, list[TickLike]] = {}
        for t in ticks:
            by_symbol.setdefault(t.symbol, []).append(t)
        commands: dict[str, list[bytes]] = {}
        expected: dict[str, tuple[int, int, int]] = {}
        new_symbols = []
        for symbol, group in by_symbol.items():
            self._lease(symbol)
            out = commands[symbol] = [_pack(("PEXPIRE", self.keys.writer_lease(symbol), str(LEASE_MS)))]
            state = self._load(symbol)
            if not state.exists:
                new_symbols.append(symbol)
            stored, dups, late = self._commands(symbol, state, group, out)
            result.stored += stored
            result.duplicates += dups
            result.late += late
            if stored:
                result.stored_by_symbol[symbol] += stored
            expected[symbol] = (state.last_ms, state.last_seq, state.entries_added)
        if new_symbols:
            self.client.sadd(self.keys.symbols(), *new_symbols)  # another slot in a cluster: on its own
        self._send(commands, expected)
        return result

    def _commands(
        self, symbol: str, state: _SymbolState, group: list[TickLike], out: list[bytes]
    ) -> tuple[int, int, int]:
        """Append the commands that store `group`; advance `state` as if they were applied."""
        n = len(group)
        # one pass over the objects, then columns: per-attribute generators cost ~0.5 µs per value
        cols = dict(zip(ROW_FIELDS, zip(*map(_row, group), strict=True), strict=True))
        ms = np.array(cols["timestamp_ms"], np.int64)
        trade_id = np.array(cols["trade_id"], np.int64)
        is_edit = np.array(cols["is_edit"], np.bool_)
        sessions = self._sessions(ms)
        keep = np.ones(n, dtype=np.bool_)
        changed: dict[str, tuple[int, int]] = {}  # bitmap key -> (first, last) byte touched
        for index in np.flatnonzero(is_edit).tolist():
            t = group[index]
            key = self.keys.seen_edits(symbol, sessions[index])
            mark = f"{t.trade_id}:{t.timestamp_ms}:{t.price!r}:{t.quantity}".encode()
            edits = self._edit_set(state, key)
            if mark in edits:
                keep[index] = False
            else:
                edits.add(mark)
                out.append(_pack(("SADD", key, mark)))
        plain = ~is_edit
        chunk = trade_id >> SEEN_CHUNK_BITS
        for session in np.unique(sessions[plain]).tolist():
            in_session = plain & (sessions == session)
            for c in np.unique(chunk[in_session]).tolist():
                rows = np.flatnonzero(in_session & (chunk == c))
                key = self.keys.seen(symbol, session, c)
                byte, mask = byte_and_mask(trade_id[rows])
                seen = are_set(cached_bitmap(self.client, state.seen, key), byte, mask)
                # the same trade twice in one batch: only the first is new
                _, first = np.unique(trade_id[rows], return_index=True)
                repeat = np.ones(len(rows), dtype=np.bool_)
                repeat[first] = False
                drop = seen | repeat
                keep[rows[drop]] = False
                new = ~drop
                if new.any():
                    lo, hi = set_bits(state.seen, key, byte[new], mask[new])
                    prev = changed.get(key)
                    changed[key] = (min(lo, prev[0]), max(hi, prev[1])) if prev else (lo, hi)
        rows = np.flatnonzero(keep)
        stored = len(rows)
        if stored:
            kept_ms = ms[rows]
            prev = (state.last_ms, state.last_seq)
            eff, seq = stream_ids(kept_ms, prev)
            late = kept_ms < eff
            ids = pc.binary_join_element_wise(_text(pa.array(eff)), _text(pa.array(seq)), "-")
            columns = self._columns(symbol, cols, rows)
            columns["timestamp"] = self._iso(kept_ms)
            out.append(_resp_xadd(self.keys.ticks(symbol), ids, columns))
            for i in np.flatnonzero(late).tolist():
                out.append(_pack(("ZADD", self.keys.late(symbol), str(int(kept_ms[i])), ids[i].as_py())))
            # the same rows as columns, in the same transaction: fast reads of the live tail
            out.extend(
                state.copy.commands(
                    self.keys.live_copy(symbol),
                    self._copy_columns(cols, rows, kept_ms),
                    (int(eff[0]), int(seq[0])),
                    (int(eff[-1]), int(seq[-1])),
                    prev,
                    state.entries_added,
                )
            )
            state.last_ms, state.last_seq = int(eff[-1]), int(seq[-1])
            state.entries_added += stored
            state.exists = True
        for key, (lo, hi) in changed.items():
            out.extend(_pack(command) for command in or_in(key, state.seen[key], lo, hi))
        return stored, n - stored, int(np.count_nonzero(late)) if stored else 0

    @staticmethod
    def _copy_columns(cols: dict[str, tuple[Any, ...]], rows: np.ndarray, kept_ms: np.ndarray) -> Columns:
        """The kept `rows` as Columns: the values a reader parses back from their stream texts."""
        out: dict[str, np.ndarray] = {"timestamp_ms": kept_ms}
        for name, kind in COLUMN_DTYPES.items():
            if name == "timestamp_ms":
                continue
            codes = FIELD[name].codes
            if codes:  # names -> int8 codes, an unknown name code 0 (as stream_codec reads them)
                texts = np.array(cols[name], dtype=object)[rows]
                out[name] = np.zeros(len(rows), kind)
                for code, text in enumerate(codes):
                    out[name][texts == text] = code
            else:
                out[name] = np.asarray(cols[name], dtype=kind)[rows]
        return Columns(**out)

    @staticmethod
    def _columns(symbol: str, cols: dict[str, tuple[Any, ...]], rows: np.ndarray) -> dict[str, pa.Array]:
        """Stream field texts of the kept `rows`, one pyarrow array per field (but `timestamp`)."""
        index = pa.array(rows)
        out = {"symbol": pa.array([symbol] * len(rows), pa.string())}
        for name, kind in _ARROW.items():
            if FIELD[name].codes:  # the tick carries the name itself
                out[name] = pa.array(cols[name], pa.string()).take(index)
            elif kind == pa.bool_():
                out[name] = pc.if_else(pa.array(cols[name], kind).take(index), "true", "false")
            else:
                out[name] = _text(pa.array(cols[name], kind).take(index))
        return out

    # -- the connection: one batch in flight ------------------------------------------------------
    # write() sends a batch and returns; the next write() (or flush()) reads and checks its replies
    # first. Valkey applies batch k while Python prepares batch k+1. A failure reported late is safe:
    # the recorder re-sends its recent batches after any failure, and writes are idempotent.

    def _connection(self, symbol: str) -> tuple[str, RawConnection]:
        """(node, connection) for `symbol`'s stream: the one connection when standalone, the
        connection to the node owning the symbol's slot in a cluster."""
        key = self.keys.ticks(symbol)
        name = ""
        if is_cluster(self.client):
            name = self.client.get_node_from_key(key).name
        held = self._conns.get(name)
        if held is None:
            held = self._conns[name] = RawConnection(node_client(self.client, key))
        return name, held

    def _drop_connection(self) -> None:
        self._in_flight = None
        conns, self._conns = self._conns, {}
        for conn in conns.values():
            conn.disconnect()  # unread replies must not reach anyone else
            conn.release()

    def flush(self) -> None:
        """Wait for the batch in flight and check that Valkey applied it (raises like `write`)."""
        with self._reset_on_failure():
            self._collect()

    def _collect(self) -> None:
        in_flight, self._in_flight = self._in_flight, None
        if in_flight is None:
            return
        order, expected = in_flight
        replies = {}
        try:
            for name, symbol in order:  # per connection, in the order sent
                conn = self._conns[name]
                conn.read()  # the +OK of CLIENT REPLY ON: the transaction itself answers nothing
                replies[symbol] = conn.read()  # XINFO STREAM
        except BaseException:
            self._drop_connection()
            raise
        for symbol, want in expected.items():
            got = _parse_info(replies[symbol])
            if got != want:
                raise StoreError(
                    f"{symbol}: after the batch the stream is at {got[0]}-{got[1]} with {got[2]} entries "
                    f"added, expected {want[0]}-{want[1]} with {want[2]} "
                    "(refused batch, restarted server, moved slot, or another writer); will reload and retry"
                )

    def _send(self, commands: dict[str, list[bytes]], expected: dict[str, tuple[int, int, int]]) -> None:
        """One transaction per symbol (its keys share a slot), each followed by XINFO STREAM; the
        symbols of one node go out in one write."""
        self._collect()  # the batch before this one is checked before this one goes
        payloads: dict[str, list[bytes]] = {}
        order: list[tuple[str, str]] = []
        for symbol, cmds in commands.items():
            name, _ = self._connection(symbol)
            info = _pack(("XINFO", "STREAM", self.keys.ticks(symbol)))
            payloads.setdefault(name, []).extend((REPLY_OFF_MULTI, *cmds, EXEC_REPLY_ON, info))
            order.append((name, symbol))
        try:
            for name, parts in payloads.items():
                self._conns[name].send(b"".join(parts))
        except BaseException:
            self._drop_connection()
            raise
        self._in_flight = (order, expected)
