"""Columnar batches of ticks: the recorder's fast path from bus frames to validated columns.

Decoding a frame into a `Tick` runs Python validation per field (~7 µs); at 200k ticks/s the whole
budget is 5 µs. So the recorder decodes into `TickWire`, whose constraints msgspec checks in C
(symbol pattern, timezone present, price > 0, non-negative sizes, known aggressor), then checks the
one rule msgspec cannot express (timestamp and timestamp_ms must agree) for the whole batch at once
with pyarrow, and hands the writer one column per field. Every rule of `events.Tick` holds here too;
a frame that breaks one is rejected with the field and the reason, and the rest of the batch goes on.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tickvault.domain.events import data_error, validate_symbol
from tickvault.domain.keys import tick_topic
from tickvault.domain.tick_schema import (
    Aggressor,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    TimeText,
)
from tickvault.errors import DataError


class TickWire(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A tick as it arrives on the bus, validated by msgspec's C decoder: the `wire` types and
    defaults of `tick_schema.TICK_FIELDS` (a test holds this class to them)."""

    symbol: str  # checked once per distinct symbol of a batch (a regex per frame costs 1 µs)
    timestamp: TimeText
    timestamp_ms: int
    trade_id: NonNegativeInt
    price: PositiveFloat
    volume: NonNegativeFloat
    quantity: NonNegativeInt
    buyer: int = 0
    seller: int = 0
    trade_type: int = 0
    aggressor: Aggressor = "none"
    is_edit: bool = False
    seq: int = 0


_wire_decoder = msgspec.json.Decoder(TickWire)
_wire_list_decoder = msgspec.json.Decoder(list[TickWire])
_TS_UTC = pa.timestamp("us", tz="UTC")
_TZ_OFFSET = re.compile(r"(Z|[+-]\d\d:?\d\d)$")


@dataclass
class Rejected:
    index: int
    error: DataError
    frames: Sequence[bytes]


@dataclass
class DecodedBatch:
    ticks: list[TickWire] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)


W = TypeVar("W")


def decode_each(
    messages: Sequence[Sequence[bytes]], decode_one: Callable[[Sequence[bytes]], W], rejected: list[Rejected]
) -> list[W | None]:
    """Each message decoded on its own (the path once the batch's one-call decode failed): None in
    its place, and its reason in `rejected`, for each that does not decode."""
    wires: list[W | None] = []
    for i, message in enumerate(messages):
        try:
            wires.append(decode_one(message))
        except DataError as exc:
            wires.append(None)
            rejected.append(Rejected(i, exc, message))
    return wires


def _decode_one(frames: Sequence[bytes]) -> TickWire:
    if len(frames) != 2:
        raise DataError("frames", f"expected [topic, payload], got {len(frames)} frames")
    try:
        wire = _wire_decoder.decode(frames[1])
    except msgspec.MsgspecError as exc:
        raise data_error(exc) from None
    validate_symbol(wire.symbol)
    if frames[0] != tick_topic(wire.symbol).encode():
        raise DataError("topic", f"{bytes(frames[0])[:64]!r} does not match symbol {wire.symbol!r}")
    return wire


def decode_frames(messages: Sequence[Sequence[bytes]]) -> DecodedBatch:
    """Validate a batch of `[topic, payload]` messages; bad ones come back in `rejected`."""
    out = DecodedBatch()
    wires: list[TickWire | None] = []
    # the common case, every frame valid, decodes in one C call; a bad frame sends us frame by frame
    try:
        if any(len(m) != 2 for m in messages):
            raise ValueError
        batch = _wire_list_decoder.decode(b"[" + b",".join(bytes(m[1]) for m in messages) + b"]")
        for symbol in {w.symbol for w in batch}:
            validate_symbol(symbol)
        if len(batch) != len(messages) or any(
            m[0] != tick_topic(w.symbol).encode() for m, w in zip(messages, batch, strict=True)
        ):
            raise ValueError
        wires = list(batch)
    except (msgspec.MsgspecError, ValueError, DataError):
        wires = decode_each(messages, _decode_one, out.rejected)
    bad_time = _time_mismatches([w for w in wires if w is not None])
    k = 0
    for i, wire in enumerate(wires):
        if wire is None:
            continue
        if k in bad_time:
            out.rejected.append(Rejected(i, bad_time[k], messages[i]))
        else:
            out.ticks.append(wire)
        k += 1
    out.rejected.sort(key=lambda r: r.index)
    return out


def valid_seqs(messages: Sequence[Sequence[bytes]]) -> list[int | None]:
    """Per message, its `seq` if it is a valid tick frame, else None: a Subscriber's `validate` for
    tick topics, so that an invalid frame's number never moves a topic's position."""
    decoded = decode_frames(messages)
    bad = {r.index for r in decoded.rejected}
    out: list[int | None] = [None] * len(messages)
    valid = (i for i in range(len(messages)) if i not in bad)
    for i, wire in zip(valid, decoded.ticks, strict=True):
        out[i] = wire.seq
    return out


def _time_mismatches(wires: Sequence[TickWire]) -> dict[int, DataError]:
    """Index -> error for wires whose ISO timestamp is unparsable, naive, or not timestamp_ms."""
    if not wires:
        return {}
    texts = pa.array([w.timestamp for w in wires], pa.string())
    millis = np.fromiter((w.timestamp_ms for w in wires), np.int64, len(wires))
    try:
        parsed = pc.cast(texts, _TS_UTC).cast(pa.int64()).to_numpy(zero_copy_only=False) // 1000
        bad = np.flatnonzero(parsed != millis)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        bad = np.arange(len(wires))  # find the culprits one by one
    errors: dict[int, DataError] = {}
    for i in bad.tolist():
        error = _check_time_text(wires[i].timestamp, wires[i].timestamp_ms)
        if error is not None:
            errors[i] = error
    return errors


def _check_time_text(text: str, ms: int) -> DataError | None:
    from datetime import datetime

    from tickvault.domain.events import to_ms

    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return DataError("timestamp", f"{text!r} is not an ISO 8601 time")
    if moment.tzinfo is None or not _TZ_OFFSET.search(text):
        return DataError("timestamp", f"{text} has no timezone offset")
    if to_ms(moment) != ms:
        return DataError("timestamp_ms", f"{ms} does not match timestamp {text}")
    return None
