"""Book frames from the bus, validated, then as columns: the recorder's path for the order book.

A frame (`domain.book.BookFrame`) holds one or more whole batches: `{"seq", "symbol", "kind",
"events": [...]}`, each batch ending with its LAST event. msgspec decodes it into `MbpFrame` or
`MboFrame` (tagged by `kind`), checking in C what the schema says (field names and JSON types, an MBP
event carrying no order id nor an MBO one a level count, numbers that fit 64 bits). Everything else
is checked for the whole received batch of frames at once with numpy and pyarrow: every rule of
`domain.book` (`BookUpdate`, `OrderUpdate`: known sides and actions, non-negative sizes, ids and
times, flags 0..3, a finite price, positive where it names a level or an order, side "none" for a
clear only, timestamp text and ms agreeing), and what makes a frame whole batches: events numbered
consecutively from 1 up, LAST on the frame's last event (a batch is never split across frames),
SNAPSHOT on all of a batch or none, a snapshot opening with a clear of the whole book.

Two levels of rejection, each with the field and the reason, counted and dead-lettered by the
recorder: a frame that does not decode, or whose symbol or topic is wrong, is rejected whole (its
number counts for nothing); a batch that breaks a value rule is rejected alone, the frame's other
batches are kept (and the frame's number counts). The frames around a bad one go on.
"""

from __future__ import annotations

import itertools
import operator
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any, ClassVar

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tickvault.domain.book import (
    ACTION_CODES,
    CLEAR,
    COLUMN_NAMES,
    DELETE,
    LAST,
    NO_SIDE,
    SIDE_CODES,
    SNAPSHOT,
    BookColumns,
    BookKind,
)
from tickvault.domain.events import data_error, to_ms, validate_symbol
from tickvault.domain.keys import book_topic
from tickvault.domain.tick_schema import NonNegativeInt
from tickvault.errors import DataError
from tickvault.recorder.frames import Rejected, decode_each
from tickvault.store.book_writer import BookPart

Int64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]  # what a column holds


# The wire types check the schema (names, types); the values are checked column-wise, batch by batch
# (`_Batch._rules`). gc=False: scalar fields only, so no cycles, and no collector passes over them.
class LevelWire(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True, gc=False):
    """An MBP event (`BookUpdate`) as the bus carries it (`order_id`, `agent`: 0, the columns')."""

    symbol: str
    timestamp: str
    timestamp_ms: Int64
    side: str
    price: float
    quantity: Int64
    orders: Int64 = 0
    action: str = "update"
    received_ms: Int64 = 0
    seq: Int64
    flags: Int64 = 0

    order_id: ClassVar[int] = 0
    agent: ClassVar[int] = 0


class OrderWire(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True, gc=False):
    """An MBO event (`OrderUpdate`) as the bus carries it."""

    symbol: str
    timestamp: str
    timestamp_ms: Int64
    side: str
    price: float
    quantity: Int64
    order_id: Int64
    agent: Int64 = 0
    action: str = "add"
    received_ms: Int64 = 0
    seq: Int64
    flags: Int64 = 0

    orders: ClassVar[int] = 0


class MbpFrame(msgspec.Struct, tag_field="kind", tag="mbp", forbid_unknown_fields=True, frozen=True):
    seq: NonNegativeInt  # the frame number (0: not numbered)
    symbol: str
    events: Annotated[list[LevelWire], msgspec.Meta(min_length=1)]


class MboFrame(msgspec.Struct, tag_field="kind", tag="mbo", forbid_unknown_fields=True, frozen=True):
    seq: NonNegativeInt
    symbol: str
    events: Annotated[list[OrderWire], msgspec.Meta(min_length=1)]


FrameWire = MbpFrame | MboFrame

_decoder = msgspec.json.Decoder(FrameWire)
_list_decoder = msgspec.json.Decoder(list[FrameWire])
_TS_UTC = pa.timestamp("us", tz="UTC")
_TZ_OFFSET = re.compile(r"(Z|[+-]\d\d:?\d\d)$")
_EVENT_PATH = re.compile(r"`\$\.events\[\d+\]\.(\w+)`")


def kind_of(frame: FrameWire) -> BookKind:
    return "mbp" if isinstance(frame, MbpFrame) else "mbo"


@dataclass
class DecodedFrames:
    frames: list[FrameWire] = field(default_factory=list)  # those with a batch kept, in the order received
    parts: list[BookPart] = field(default_factory=list)  # their valid batches as columns, one part per symbol
    rejected: list[Rejected] = field(default_factory=list)  # a bad frame, or a bad batch of one


def _decode_one(message: Sequence[bytes]) -> FrameWire:
    if len(message) != 2:
        raise DataError("frames", f"expected [topic, payload], got {len(message)} frames")
    try:
        return _decoder.decode(message[1])
    except msgspec.MsgspecError as exc:
        error = data_error(exc)
        inner = _EVENT_PATH.search(str(exc))  # `$.events[3].price`: name the event's field
        raise (DataError(inner.group(1), error.reason) if inner else error) from None


def decode_book_frames(messages: Sequence[Sequence[bytes]]) -> DecodedFrames:
    """Validate a batch of `[topic, payload]` book messages; bad frames and bad batches come back in
    `rejected`."""
    out = DecodedFrames()
    wires: list[FrameWire | None]
    try:  # the common case, every frame well-formed, decodes in one C call
        if any(len(m) != 2 for m in messages):
            raise ValueError
        wires = list(_list_decoder.decode(b"[" + b",".join(bytes(m[1]) for m in messages) + b"]"))
        if len(wires) != len(messages):
            raise ValueError
    except (msgspec.MsgspecError, ValueError):
        wires = decode_each(messages, _decode_one, out.rejected)
    _Batch(messages, wires).check(out)
    out.rejected.sort(key=lambda r: r.index)
    return out


_INTS = ("timestamp_ms", "received_ms", "seq", "quantity", "orders", "order_id", "agent", "flags")
_TEXTS = ("symbol", "timestamp", "side", "action")
_NUMBERS = np.dtype([("price", np.float64), *((name, np.int64) for name in _INTS)])
_numbers = operator.attrgetter("price", *_INTS)  # one tuple per event, read by numpy in C
_NOT_NEGATIVE = ("quantity", "orders", "order_id", "agent", "received_ms")


def _codes(values: list[str], codes: Mapping[Any, int]) -> np.ndarray:
    """Integer codes of side or action names, -1 for an unknown name."""
    return np.fromiter(map(codes.get, values, itertools.repeat(-1)), np.int8, len(values))


class _Batch:
    """The events of a received batch's decoded frames as columns, checked together."""

    def __init__(self, messages: Sequence[Sequence[bytes]], wires: list[FrameWire | None]) -> None:
        self.messages, self.wires = messages, wires
        self.errors: dict[int, DataError] = {}  # frame (message index) -> why it is rejected whole

    def _frames(self) -> None:
        """The frames whose frame-level fields hold (symbol, topic), with their events in one list;
        the rest get their error."""
        if self._one_topic():
            return
        symbols: dict[str, DataError | None] = {}
        topics: dict[str, bytes] = {}
        groups: dict[tuple[str, bool], int] = {}
        self.keep: list[int] = []
        self.group: list[int] = []  # per kept frame: its (symbol, kind)
        self.seqs: list[int] = []
        self.sizes: list[int] = []
        self.events: list[LevelWire | OrderWire] = []
        for i, wire in enumerate(self.wires):
            if wire is None:
                continue
            symbol = wire.symbol
            if symbol not in symbols:
                try:
                    validate_symbol(symbol)
                    symbols[symbol] = None
                except DataError as exc:
                    symbols[symbol] = exc
                topics[symbol] = book_topic(symbol).encode()
            problem = symbols[symbol]
            if problem is not None:
                self.errors[i] = problem
            elif bytes(self.messages[i][0]) != topics[symbol]:
                topic = bytes(self.messages[i][0])[:64]
                self.errors[i] = DataError("topic", f"{topic!r} does not match symbol {symbol!r}")
            else:
                key = (symbol, type(wire) is MboFrame)
                self.group.append(groups.setdefault(key, len(groups)))
                self.keep.append(i)
                self.seqs.append(wire.seq)
                self.sizes.append(len(wire.events))
                self.events.extend(wire.events)
        self.groups = list(groups)

    def _one_topic(self) -> bool:
        """The common case at once: every frame decoded, of one symbol and kind, on its topic."""
        wires = self.wires
        if not wires or any(w is None for w in wires):
            return False
        first = wires[0]
        assert first is not None
        if len({bytes(m[0]) for m in self.messages}) != 1 or {w.symbol for w in wires} != {first.symbol}:  # type: ignore[union-attr]
            return False
        try:
            validate_symbol(first.symbol)
        except DataError:
            return False
        if (
            bytes(self.messages[0][0]) != book_topic(first.symbol).encode()
            or len({type(w) for w in wires}) != 1
        ):
            return False
        self.groups = [(first.symbol, type(first) is MboFrame)]
        self.keep = list(range(len(wires)))
        self.group = [0] * len(wires)
        self.seqs = [w.seq for w in wires]  # type: ignore[union-attr]
        self.sizes = [len(w.events) for w in wires]  # type: ignore[union-attr]
        self.events = [e for w in wires for e in w.events]  # type: ignore[union-attr]
        return True

    def check(self, out: DecodedFrames) -> None:
        self._frames()
        kept: set[int] = set()
        if self.events:
            kept = self._rules(out)
        for i, wire in enumerate(self.wires):
            if wire is None:
                continue
            if i in self.errors:
                out.rejected.append(Rejected(i, self.errors[i], self.messages[i]))
            elif i in kept:
                out.frames.append(wire)

    def _rules(self, out: DecodedFrames) -> set[int]:
        """Every value rule, column-wise; a batch that breaks one is rejected (the first broken rule
        named), the other batches of its frame are kept. Returns the frames with a batch kept."""
        events = self.events
        n = len(events)
        got: dict[str, list[Any]] = {name: list(map(operator.attrgetter(name), events)) for name in _TEXTS}
        numbers = np.fromiter(map(_numbers, events), _NUMBERS, n)
        columns: dict[str, np.ndarray] = {name: numbers[name].copy() for name in _INTS}
        sizes = self.sizes
        at = np.repeat(np.array(self.keep, np.int64), sizes)  # per event: its message
        frame_group = np.array(self.group, np.int64)
        event_group = np.repeat(frame_group, sizes)
        side, action = _codes(got["side"], SIDE_CODES), _codes(got["action"], ACTION_CODES)
        price, seq, flags = numbers["price"].copy(), columns["seq"], columns["flags"]
        is_mbo = np.array([mbo for _, mbo in self.groups], bool)[event_group]
        frame_first = np.r_[True, at[1:] != at[:-1]]  # an event that opens its frame
        frame_last = np.r_[at[1:] != at[:-1], True]
        is_last = (flags & LAST) > 0
        batch_first = frame_first | np.r_[False, is_last[:-1]]  # a batch ends with its LAST event
        batch_of = np.cumsum(batch_first) - 1
        priced = np.where(is_mbo, (action != DELETE) & (action != CLEAR), action != CLEAR)
        snapshot = (flags & SNAPSHOT) > 0
        snap_any = np.bincount(batch_of, weights=snapshot)[batch_of] > 0
        if len(self.groups) == 1 and got["symbol"].count(self.groups[0][0]) == n:
            other_symbol = np.zeros(n, bool)
        else:
            frame_symbol = np.array([symbol for symbol, _ in self.groups], dtype=object)[event_group]
            other_symbol = np.array(got["symbol"], dtype=object) != frame_symbol
        rules: list[tuple[np.ndarray, str, str]] = [
            (other_symbol, "symbol", "an event of another symbol than its frame's"),
            (side < 0, "side", "must be bid, ask, or none for a clear"),
            (action < 0, "action", "must be add, update, delete or clear"),
            (~np.isfinite(price), "price", "must be a finite number"),
            (price < 0, "price", "must not be negative"),
            (priced & (price <= 0), "price", "must be positive for a level or a resting order"),
            *((columns[name] < 0, name, "must not be negative") for name in _NOT_NEGATIVE),
            (seq < 1, "seq", "must be 1 or more"),
            ((flags < 0) | (flags > LAST | SNAPSHOT), "flags", "unknown bits (LAST=1, SNAPSHOT=2)"),
            (
                (side == NO_SIDE) & (action != CLEAR),
                "side",
                "must be bid or ask ('none' is for a clear only)",
            ),
            (
                ~frame_first & (seq != np.r_[0, seq[:-1]] + 1),
                "seq",
                "events of a frame must be numbered consecutively",
            ),
            (
                frame_last & ~is_last,
                "flags",
                "the last event of a frame must be flagged LAST (a batch is never split across frames)",
            ),
            (snap_any & ~snapshot, "flags", "SNAPSHOT on some events of a batch but not all"),
            (
                batch_first & snapshot & ((action != CLEAR) | (side != NO_SIDE)),
                "flags",
                "a snapshot must open with a clear of the whole book",
            ),
        ]
        bad: dict[int, tuple[int, DataError]] = {}  # batch -> (an event of it, the first rule it broke)
        for broken, name, reason in rules:
            for k in np.flatnonzero(broken).tolist():
                bad.setdefault(int(batch_of[k]), (k, DataError(name, reason)))
        ms = columns["timestamp_ms"]
        for k, error in _time_mismatches(got["timestamp"], ms).items():
            bad.setdefault(int(batch_of[k]), (k, error))
        valid = np.ones(n, bool)
        if bad:
            valid = ~np.isin(batch_of, list(bad))
            self._reject_batches(bad, at, batch_of, batch_first, out)
        columns.update(side=side, price=price, action=action)
        # one part per (symbol, kind) of the valid batches, in the order first seen
        frame_kept = np.ones(len(self.keep), bool)
        if bad:
            frame_kept = np.isin(np.array(self.keep, np.int64), np.unique(at[valid]))
        frame_seq = np.array(self.seqs, np.int64)
        for k, (name, mbo) in enumerate(self.groups):
            rows = valid & (event_group == k) if len(self.groups) > 1 else valid
            if not rows.any():
                continue
            take = rows if not rows.all() else slice(None)
            cols = BookColumns(name, "mbo" if mbo else "mbp", **{c: columns[c][take] for c in COLUMN_NAMES})
            out.parts.append(BookPart(cols, int(frame_seq[frame_kept & (frame_group == k)].max())))
        return set(np.array(self.keep, np.int64)[frame_kept].tolist())

    def _reject_batches(
        self,
        bad: dict[int, tuple[int, DataError]],
        at: np.ndarray,
        batch_of: np.ndarray,
        batch_first: np.ndarray,
        out: DecodedFrames,
    ) -> None:
        """A rejection per bad batch, naming the batch when its frame holds several."""
        frame_batches = np.bincount(at, weights=batch_first)  # per message index: its batches
        for batch, (k, error) in sorted(bad.items()):
            i = int(at[k])
            count = int(frame_batches[i])
            if count > 1:
                number = batch - int(batch_of[np.searchsorted(at, i)]) + 1
                error = DataError(error.field, f"{error.reason} (batch {number} of the frame's {count})")
            out.rejected.append(Rejected(i, error, self.messages[i]))


def _time_mismatches(texts: Sequence[str], millis: np.ndarray) -> dict[int, DataError]:
    """Event index -> error where the ISO timestamp is unparsable, naive, or not timestamp_ms."""
    try:
        parsed = (
            pc.cast(pa.array(texts, pa.string()), _TS_UTC).cast(pa.int64()).to_numpy(zero_copy_only=False)
        )
        bad = np.flatnonzero(parsed // 1000 != millis)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        bad = np.arange(len(texts))  # find the culprits one by one
    errors: dict[int, DataError] = {}
    for i in bad.tolist():
        text, ms = texts[i], int(millis[i])
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            errors[i] = DataError("timestamp", f"{text!r} is not an ISO 8601 time")
            continue
        if moment.tzinfo is None or not _TZ_OFFSET.search(text):
            errors[i] = DataError("timestamp", f"{text} has no timezone offset")
        elif to_ms(moment) != ms:
            errors[i] = DataError("timestamp_ms", f"{ms} does not match timestamp {text}")
    return errors
