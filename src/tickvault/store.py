"""Valkey Streams storage of ticks: idempotent batched writes and exact time-range reads.

Stream ids are the exchange time in ms plus a sequence (`<ms>-<n>`), so a time range is an id range.
A tick older than the stream's last id (a history download, an edit, a clock step) cannot take its
own time as id; it is stored right after the current last entry, keeps its exchange time in the
`timestamp_ms` field, and is indexed by exchange time in a small sorted set (`tv:late:SYMBOL`) so
range reads still find it. Writes are idempotent on (symbol, session, trade_id): a bitmap per session
remembers which trade ids are stored (1 bit per trade number), edits are remembered by content.
Everything a batch does runs in one server-side script, so a crash never leaves half a tick.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import valkey

from tickvault.errors import StoreError, StoreUnavailable
from tickvault.events import B3_TZ, TICK_FIELDS, Tick, from_fields, to_fields, to_ms
from tickvault.keys import KeySpace
from tickvault.timeparse import TimeLike, parse_time, to_ms_bounds

if TYPE_CHECKING:
    from tickvault.connection import Connection

log = logging.getLogger("tickvault.store")

SEEN_CHUNK_BITS = 23  # one bitmap key per 8M trade ids: at most 1 MiB each

_APPEND_LUA = """
-- KEYS[1] stream, KEYS[2] late index, KEYS[3..] seen bitmaps / edit sets
-- ARGV[1] nfields; then per tick: ts_ms, seen key index, bit offset or edit member, is_edit, fields...
local nf = tonumber(ARGV[1])
local stored, dups, late = 0, 0, 0
local i = 2
while i <= #ARGV do
  local ts = ARGV[i]
  local seen = KEYS[tonumber(ARGV[i + 1])]
  local mark = ARGV[i + 2]
  local is_edit = ARGV[i + 3] == '1'
  local first = i + 4
  local last = first + 2 * nf - 1
  i = last + 1
  local dup
  if is_edit then
    dup = redis.call('SISMEMBER', seen, mark) == 1
  else
    dup = redis.call('GETBIT', seen, mark) == 1
  end
  if dup then
    dups = dups + 1
  else
    local ok = redis.pcall('XADD', KEYS[1], ts .. '-*', unpack(ARGV, first, last))
    if type(ok) == 'table' and ok.err then
      -- older than the stream's last id: store after it, index by exchange time
      local top = redis.call('XINFO', 'STREAM', KEYS[1])
      local last_id
      for k = 1, #top, 2 do
        if top[k] == 'last-generated-id' then last_id = top[k + 1] end
      end
      local top_ms = string.match(last_id, '^(%d+)-')
      local id = redis.call('XADD', KEYS[1], top_ms .. '-*', unpack(ARGV, first, last))
      redis.call('ZADD', KEYS[2], ts, id)
      late = late + 1
    end
    if is_edit then
      redis.call('SADD', seen, mark)
    else
      redis.call('SETBIT', seen, mark, 1)
    end
    stored = stored + 1
  end
end
return {stored, dups, late}
"""


@dataclass
class AppendResult:
    stored: int = 0
    duplicates: int = 0
    late: int = 0
    stored_by_symbol: Counter[str] = field(default_factory=Counter)


TICK_COLUMNS: tuple[str, ...] = tuple(f for f in TICK_FIELDS if f != "timestamp")
_INT_COLUMNS = ("timestamp_ms", "trade_id", "quantity", "buyer", "seller", "trade_type", "seq")
_FLOAT_COLUMNS = ("price", "volume")


def _wrap(exc: valkey.ValkeyError) -> StoreError:
    if isinstance(exc, valkey.ConnectionError | valkey.TimeoutError):
        return StoreUnavailable(f"valkey unreachable: {exc}")
    return StoreError(str(exc))


class Store:
    """Ticks in Valkey. `client` must be created with decode_responses=False."""

    def __init__(
        self, client: valkey.Valkey, keys: KeySpace | None = None, *, owner: Connection | None = None
    ) -> None:
        self.client = client
        self.keys = keys or KeySpace()
        self._append = client.register_script(_APPEND_LUA)
        self._owner = owner

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

    def append_ticks(self, ticks: Iterable[Tick]) -> AppendResult:
        """Store ticks once each, in arrival order, in one round trip (one script call per symbol)."""
        by_symbol: dict[str, list[Tick]] = defaultdict(list)
        for tick in ticks:
            by_symbol[tick.symbol].append(tick)
        if not by_symbol:
            return AppendResult()
        pipe = self.client.pipeline(transaction=False)
        for symbol, batch in by_symbol.items():
            keys, args = self._append_args(symbol, batch)
            self._append(keys=keys, args=args, client=pipe)
        pipe.sadd(self.keys.symbols(), *by_symbol)
        try:
            replies = pipe.execute()
        except valkey.ValkeyError as exc:
            raise _wrap(exc) from exc
        total = AppendResult()
        for symbol, (stored, dups, late) in zip(by_symbol, replies[:-1], strict=True):
            total.stored += int(stored)
            total.duplicates += int(dups)
            total.late += int(late)
            total.stored_by_symbol[symbol] += int(stored)
        return total

    def _append_args(self, symbol: str, batch: Sequence[Tick]) -> tuple[list[str], list[object]]:
        keys = [self.keys.ticks(symbol), self.keys.late(symbol)]
        index: dict[str, int] = {}
        args: list[object] = [len(TICK_FIELDS)]
        for tick in batch:
            session = tick.session
            if tick.is_edit:
                seen = self.keys.seen_edits(symbol, session)
                mark: object = f"{tick.trade_id}:{tick.timestamp_ms}:{tick.price!r}:{tick.quantity}"
            else:
                seen = self.keys.seen(symbol, session, tick.trade_id >> SEEN_CHUNK_BITS)
                mark = tick.trade_id & ((1 << SEEN_CHUNK_BITS) - 1)
            slot = index.get(seen)
            if slot is None:
                keys.append(seen)
                slot = index[seen] = len(keys)  # Lua KEYS are 1-based
            args += (tick.timestamp_ms, slot, mark, 1 if tick.is_edit else 0)
            for name, value in to_fields(tick).items():
                args += (name, value)
        return keys, args

    # -- reading ---------------------------------------------------------------------------------

    def _entries(self, symbol: str, start_ms: int, end_ms: int) -> list[tuple[bytes, dict[bytes, bytes]]]:
        """Stream entries whose exchange time lies in [start_ms, end_ms], ordered by exchange time."""
        key = self.keys.ticks(symbol)
        try:
            in_range = self.client.xrange(key, min=str(start_ms), max=str(end_ms))
            late_ids = self.client.zrangebyscore(self.keys.late(symbol), start_ms, end_ms)
            late: list[tuple[bytes, dict[bytes, bytes]]] = []
            if late_ids:
                pipe = self.client.pipeline(transaction=False)
                for entry_id in late_ids:
                    pipe.xrange(key, min=entry_id, max=entry_id)
                late = [entry for found in pipe.execute() for entry in found]
        except valkey.ValkeyError as exc:
            raise _wrap(exc) from exc
        # entries stored late sit at ids past their time; keep each exactly once, at its exchange time
        on_time = [e for e in in_range if e[1][b"timestamp_ms"] == e[0].split(b"-", 1)[0]]
        merged = on_time + late
        if late:
            merged.sort(key=lambda e: (int(e[1][b"timestamp_ms"]), _id_key(e[0])))
        return merged

    def tick_events(self, symbol: str, start: TimeLike, end: TimeLike) -> list[Tick]:
        """The stored ticks of `symbol` with exchange time in [start, end], as Tick objects."""
        start_ms, end_ms = to_ms_bounds(start, end)
        return [
            from_fields({k.decode(): v.decode() for k, v in fields.items()}, Tick)
            for _, fields in self._entries(symbol, start_ms, end_ms)
        ]

    def ticks(self, symbol: str, start: TimeLike, end: TimeLike) -> pd.DataFrame:
        """Ticks with exchange time in [start, end] (both inclusive, ms resolution) as a DataFrame
        indexed by exchange timestamp (America/Sao_Paulo)."""
        start_ms, end_ms = to_ms_bounds(start, end)
        entries = self._entries(symbol, start_ms, end_ms)
        return ticks_frame(symbol, [fields for _, fields in entries])

    def as_of(self, symbol: str, when: TimeLike) -> Tick | None:
        """The last tick with exchange time at or before `when` (None if there is none)."""
        at_ms = to_ms(parse_time(when, field="when"))
        key = self.keys.ticks(symbol)
        try:
            found = self.client.xrevrange(key, max=str(at_ms), min="-", count=64)
            late_ids = self.client.zrevrangebyscore(self.keys.late(symbol), at_ms, "-inf", start=0, num=1)
            late = self.client.xrange(key, min=late_ids[0], max=late_ids[0]) if late_ids else []
        except valkey.ValkeyError as exc:
            raise _wrap(exc) from exc
        candidates = [e for e in found if e[1][b"timestamp_ms"] == e[0].split(b"-", 1)[0]][:1] + late
        if not candidates:
            return None
        best = max(candidates, key=lambda e: (int(e[1][b"timestamp_ms"]), _id_key(e[0])))
        return from_fields({k.decode(): v.decode() for k, v in best[1].items()}, Tick)

    def last_tick(self, symbol: str) -> Tick | None:
        """The most recently stored tick of `symbol` (by stream position), or None."""
        try:
            found = self.client.xrevrange(self.keys.ticks(symbol), count=1)
        except valkey.ValkeyError as exc:
            raise _wrap(exc) from exc
        if not found:
            return None
        return from_fields({k.decode(): v.decode() for k, v in found[0][1].items()}, Tick)

    def count(self, symbol: str) -> int:
        try:
            return int(self.client.xlen(self.keys.ticks(symbol)))
        except valkey.ValkeyError as exc:
            raise _wrap(exc) from exc

    def symbols(self) -> list[str]:
        try:
            return sorted(s.decode() for s in self.client.smembers(self.keys.symbols()))
        except valkey.ValkeyError as exc:
            raise _wrap(exc) from exc


def _id_key(entry_id: bytes) -> tuple[int, int]:
    ms, _, seq = entry_id.partition(b"-")
    return int(ms), int(seq)


def ticks_frame(symbol: str, rows: Sequence[dict[bytes, bytes]]) -> pd.DataFrame:
    """Columns of stream entries -> typed DataFrame; the column set is the same when empty."""
    data: dict[str, object] = {}
    for name in TICK_COLUMNS:
        raw = [row[name.encode()] for row in rows]
        if name in _INT_COLUMNS:
            data[name] = np.array(raw, dtype="S").astype(np.int64) if raw else np.empty(0, np.int64)
        elif name in _FLOAT_COLUMNS:
            data[name] = np.array(raw, dtype="S").astype(np.float64) if raw else np.empty(0, np.float64)
        elif name == "is_edit":
            data[name] = np.array([v == b"true" for v in raw], dtype=bool)
        elif name == "symbol":
            data[name] = pd.Categorical([symbol] * len(rows), categories=[symbol])
        else:
            data[name] = pd.array([v.decode() for v in raw], dtype="string")
    ms = data["timestamp_ms"]
    index = pd.DatetimeIndex(pd.to_datetime(ms, unit="ms", utc=True), name="timestamp").tz_convert(B3_TZ)
    return pd.DataFrame(data, index=index)


def frame_to_ticks(frame: pd.DataFrame) -> list[Tick]:
    """Rows of a ticks DataFrame back to Tick objects (for exact comparisons and JSON output)."""
    out = []
    for ts, row in zip(frame.index, frame.itertuples(index=False), strict=True):
        values = row._asdict()
        values["timestamp"] = ts.to_pydatetime()
        values["symbol"] = str(values["symbol"])
        values["aggressor"] = str(values["aggressor"])
        out.append(from_fields(values, Tick))
    return out
