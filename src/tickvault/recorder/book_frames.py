"""Book frames from the bus, validated whole, then as columns: the recorder's path for the order book.

A frame (`domain.book.BookFrame`) is one batch: `{"seq", "symbol", "kind", "events": [...]}`. msgspec
decodes it into `MbpFrame` or `MboFrame` (tagged by `kind`), checking in C what types can say (known
sides and actions, non-negative sizes, ids and times, flags 0..3, an MBP event carrying no order id
nor an MBO one a level count). The rest is checked for the whole received batch at once with numpy
and pyarrow: every rule of `domain.book` (`BookUpdate`, `OrderUpdate`: a finite price, positive
where it names a level or an order, side "none" for a clear only, timestamp text and ms agreeing),
and what makes a frame one batch: events of the frame's symbol and topic, numbered consecutively
from 1 up, LAST on the last event only, SNAPSHOT on all or none, a snapshot opening with a clear of
the whole book. A frame that breaks any rule is rejected whole with the field and the reason; the
frames around it go on.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Literal

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tickvault.domain.book import (
    ACTION_CODES,
    CLEAR,
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
from tickvault.domain.tick_schema import NonNegativeFloat, NonNegativeInt, TimeText
from tickvault.errors import DataError
from tickvault.store.book_writer import BookPart

Numbered = Annotated[int, msgspec.Meta(ge=1)]
Flags = Annotated[int, msgspec.Meta(ge=0, le=3)]
Side = Literal["bid", "ask", "none"]
Action = Literal["add", "update", "delete", "clear"]


class LevelWire(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """An MBP event (`BookUpdate`) as the bus carries it."""

    symbol: str
    timestamp: TimeText
    timestamp_ms: int
    side: Side
    price: NonNegativeFloat
    quantity: NonNegativeInt
    orders: NonNegativeInt = 0
    action: Action = "update"
    received_ms: NonNegativeInt = 0
    seq: Numbered
    flags: Flags = 0


class OrderWire(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """An MBO event (`OrderUpdate`) as the bus carries it."""

    symbol: str
    timestamp: TimeText
    timestamp_ms: int
    side: Side
    price: NonNegativeFloat
    quantity: NonNegativeInt
    order_id: NonNegativeInt
    agent: NonNegativeInt = 0
    action: Action = "add"
    received_ms: NonNegativeInt = 0
    seq: Numbered
    flags: Flags = 0


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


def encode_frame(frame: FrameWire) -> bytes:
    """A validated frame as JSON again (the recorder's spool file)."""
    return msgspec.json.encode(frame)


def decode_frame(data: bytes) -> FrameWire:
    return _decoder.decode(data)


def kind_of(frame: FrameWire) -> BookKind:
    return "mbp" if isinstance(frame, MbpFrame) else "mbo"


@dataclass
class RejectedFrame:
    index: int
    error: DataError
    frames: Sequence[bytes]


@dataclass
class DecodedFrames:
    frames: list[FrameWire] = field(default_factory=list)
    rejected: list[RejectedFrame] = field(default_factory=list)


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
    """Validate a batch of `[topic, payload]` book messages; bad ones come back in `rejected`."""
    out = DecodedFrames()
    wires: list[FrameWire | None]
    try:  # the common case, every frame well-formed, decodes in one C call
        if any(len(m) != 2 for m in messages):
            raise ValueError
        wires = list(_list_decoder.decode(b"[" + b",".join(bytes(m[1]) for m in messages) + b"]"))
        if len(wires) != len(messages):
            raise ValueError
    except (msgspec.MsgspecError, ValueError):
        wires = []
        for i, message in enumerate(messages):
            try:
                wires.append(_decode_one(message))
            except DataError as exc:
                wires.append(None)
                out.rejected.append(RejectedFrame(i, exc, message))
    errors = _check(messages, wires)
    for i, wire in enumerate(wires):
        if wire is None:
            continue
        if i in errors:
            out.rejected.append(RejectedFrame(i, errors[i], messages[i]))
        else:
            out.frames.append(wire)
    out.rejected.sort(key=lambda r: r.index)
    return out


def _check(messages: Sequence[Sequence[bytes]], wires: list[FrameWire | None]) -> dict[int, DataError]:
    """Message index -> the first broken rule, for the decoded frames (see the module docstring)."""
    errors: dict[int, DataError] = {}
    symbols: dict[str, DataError | None] = {}
    index: list[int] = []  # per event: its message, its frame's symbol and kind
    owners: list[str] = []
    mbo: list[bool] = []
    events: list[LevelWire | OrderWire] = []
    for i, wire in enumerate(wires):
        if wire is None:
            continue
        if wire.symbol not in symbols:
            try:
                validate_symbol(wire.symbol)
                symbols[wire.symbol] = None
            except DataError as exc:
                symbols[wire.symbol] = exc
        problem = symbols[wire.symbol]
        if problem is not None:
            errors[i] = problem
        elif bytes(messages[i][0]) != book_topic(wire.symbol).encode():
            topic = bytes(messages[i][0])[:64]
            errors[i] = DataError("topic", f"{topic!r} does not match symbol {wire.symbol!r}")
        else:
            count = len(wire.events)
            index.extend([i] * count)
            owners.extend([wire.symbol] * count)
            mbo.extend([isinstance(wire, MboFrame)] * count)
            events.extend(wire.events)
    if not events:
        return errors
    at = np.array(index, np.int64)
    n = len(events)
    other_symbol = np.fromiter((e.symbol != s for e, s in zip(events, owners, strict=True)), bool, n)
    side = np.fromiter((SIDE_CODES[e.side] for e in events), np.int8, n)
    action = np.fromiter((ACTION_CODES[e.action] for e in events), np.int8, n)
    price = np.fromiter((e.price for e in events), np.float64, n)
    seq = np.fromiter((e.seq for e in events), np.int64, n)
    flags = np.fromiter((e.flags for e in events), np.int64, n)
    is_mbo = np.array(mbo, bool)
    first = np.r_[True, at[1:] != at[:-1]]  # an event that opens its frame
    last = np.r_[at[1:] != at[:-1], True]
    priced = np.where(is_mbo, (action != DELETE) & (action != CLEAR), action != CLEAR)
    snapshot = (flags & SNAPSHOT) > 0
    frame_of = np.cumsum(first) - 1
    snap_any = np.bincount(frame_of, weights=snapshot)[frame_of] > 0
    rules: list[tuple[np.ndarray, str, str]] = [
        (other_symbol, "symbol", "an event of another symbol than its frame's"),
        (~np.isfinite(price), "price", "must be a finite number"),
        (priced & (price <= 0), "price", "must be positive for a level or a resting order"),
        ((side == NO_SIDE) & (action != CLEAR), "side", "must be bid or ask ('none' is for a clear only)"),
        (~first & (seq != np.r_[0, seq[:-1]] + 1), "seq", "events of a frame must be numbered consecutively"),
        (~last & ((flags & LAST) > 0), "flags", "LAST before the end of a frame (one frame is one batch)"),
        (last & ((flags & LAST) == 0), "flags", "the last event of a frame must be flagged LAST"),
        (snap_any & ~snapshot, "flags", "SNAPSHOT on some events of a frame but not all"),
        (
            first & snapshot & ((action != CLEAR) | (side != NO_SIDE)),
            "flags",
            "a snapshot must open with a clear of the whole book",
        ),
    ]
    for bad, name, reason in rules:
        for k in np.flatnonzero(bad).tolist():
            errors.setdefault(index[k], DataError(name, reason))
    for k, error in _time_mismatches(events).items():
        errors.setdefault(index[k], error)
    return errors


def _time_mismatches(events: Sequence[LevelWire | OrderWire]) -> dict[int, DataError]:
    """Event index -> error where the ISO timestamp is unparsable, naive, or not timestamp_ms."""
    texts = pa.array([e.timestamp for e in events], pa.string())
    millis = np.fromiter((e.timestamp_ms for e in events), np.int64, len(events))
    try:
        parsed = pc.cast(texts, _TS_UTC).cast(pa.int64()).to_numpy(zero_copy_only=False) // 1000
        bad = np.flatnonzero(parsed != millis)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        bad = np.arange(len(events))  # find the culprits one by one
    errors: dict[int, DataError] = {}
    for i in bad.tolist():
        text, ms = events[i].timestamp, events[i].timestamp_ms
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


def book_parts(frames: Sequence[FrameWire]) -> list[BookPart]:
    """Validated frames as writer input: per symbol, their events as columns, in the order given."""
    groups: dict[tuple[str, BookKind], list[FrameWire]] = {}
    for frame in frames:
        groups.setdefault((frame.symbol, kind_of(frame)), []).append(frame)
    parts = []
    for (symbol, kind), group in groups.items():
        events: list[LevelWire | OrderWire] = [e for f in group for e in f.events]
        n = len(events)
        zeros = np.zeros(n, np.int64)
        if kind == "mbp":
            orders = np.fromiter((e.orders for e in events), np.int64, n)  # type: ignore[union-attr]
            order_id, agent = zeros, zeros
        else:
            orders = zeros
            order_id = np.fromiter((e.order_id for e in events), np.int64, n)  # type: ignore[union-attr]
            agent = np.fromiter((e.agent for e in events), np.int64, n)  # type: ignore[union-attr]
        cols = BookColumns(
            symbol,
            kind,
            np.fromiter((e.timestamp_ms for e in events), np.int64, n),
            np.fromiter((e.received_ms for e in events), np.int64, n),
            np.fromiter((e.seq for e in events), np.int64, n),
            np.fromiter((SIDE_CODES[e.side] for e in events), np.int8, n),
            np.fromiter((e.price for e in events), np.float64, n),
            np.fromiter((e.quantity for e in events), np.int64, n),
            orders,
            order_id,
            agent,
            np.fromiter((ACTION_CODES[e.action] for e in events), np.int8, n),
            np.fromiter((e.flags for e in events), np.uint8, n),
        )
        parts.append(BookPart(cols, max(f.seq for f in group)))
    return parts
