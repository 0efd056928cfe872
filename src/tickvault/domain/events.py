"""Typed market events and the one JSON codec used on the bus, in files and in Valkey.

Every event is a frozen `msgspec.Struct` validated on construction *and* on decode, so an invalid
value can never enter the system from either side. Timestamps are timezone-aware datetimes carried
together with their integer millisecond form (`timestamp_ms`), which is what stream ids and range
queries use; the two must agree. The order book's events (`BookUpdate`, `OrderUpdate`) are in
`domain/book.py`, on the same `Event` base and this same codec.
"""

from __future__ import annotations

import functools
import math
import re
import threading
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, TypeVar
from zoneinfo import ZoneInfo

import msgspec
import numpy as np

from tickvault.domain.tick_schema import AGGRESSOR_CODES, Aggressor, aggressor_from_trade_type
from tickvault.errors import DataError

B3_TZ = ZoneInfo("America/Sao_Paulo")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
SYMBOL_PATTERN = re.compile(r"[A-Z0-9._-]{1,32}")

Action = Literal["BUY", "SELL", "HOLD"]


def validate_symbol(symbol: object) -> str:
    """Return `symbol` if it is a valid symbol, else raise DataError saying why."""
    if not isinstance(symbol, str):
        raise DataError("symbol", f"must be text, got {type(symbol).__name__}")
    if not symbol:
        raise DataError("symbol", "must not be empty")
    if SYMBOL_PATTERN.fullmatch(symbol) is None:
        raise DataError("symbol", f"{symbol!r} must match [A-Z0-9._-]{{1,32}}")
    return symbol


def to_ms(ts: datetime) -> int:
    """Milliseconds since the epoch of a timezone-aware datetime (floor, exact integer arithmetic)."""
    return (ts - _EPOCH) // _MS


def from_ms(ms: int, tz: ZoneInfo = B3_TZ) -> datetime:
    return (_EPOCH + ms * _MS).astimezone(tz)


def day_start_ms(ms: int) -> int:
    """Midnight in B3 time of the day `ms` falls on: where that B3 session's ticks begin."""
    day = from_ms(ms).date()
    return to_ms(datetime(day.year, day.month, day.day, tzinfo=B3_TZ))


def _check_time(ts: datetime, ms: int) -> None:
    if ts.tzinfo is None or ts.utcoffset() is None:
        raise DataError("timestamp", f"{ts.isoformat()} has no timezone offset")
    if to_ms(ts) != ms:
        raise DataError("timestamp_ms", f"{ms} does not match timestamp {ts.isoformat()}")


def _check_finite(field: str, value: float, *, positive: bool = False) -> None:
    if not math.isfinite(value):
        raise DataError(field, f"must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise DataError(field, f"must be positive, got {value!r}")
    if value < 0:
        raise DataError(field, f"must not be negative, got {value!r}")


class Event(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Fields every event has: what, and when on the exchange clock."""

    symbol: str
    timestamp: datetime
    timestamp_ms: int

    def __post_init__(self) -> None:
        validate_symbol(self.symbol)
        _check_time(self.timestamp, self.timestamp_ms)


# gc=False: its fields (text, numbers, a datetime) cannot form a cycle, and a replay makes millions
class Tick(Event, frozen=True, forbid_unknown_fields=True, kw_only=True, gc=False):
    """One trade. `volume` is the financial volume, `quantity` the number of contracts. Its fields
    are declared in `tick_schema.TICK_FIELDS` (a test holds this class to them)."""

    trade_id: int
    price: float
    volume: float
    quantity: int
    buyer: int = 0
    seller: int = 0
    trade_type: int = 0
    aggressor: Aggressor = "none"
    is_edit: bool = False
    seq: int = 0

    def __post_init__(self) -> None:
        if _trusted.building:  # `stored_ticks`: values this class checked when they were recorded
            return
        super().__post_init__()
        _check_finite("price", self.price, positive=True)
        _check_finite("volume", self.volume)
        if self.quantity < 0:
            raise DataError("quantity", f"must not be negative, got {self.quantity}")
        if self.trade_id < 0:
            raise DataError("trade_id", f"must not be negative, got {self.trade_id}")
        if self.aggressor not in AGGRESSOR_CODES:
            raise DataError("aggressor", f"must be buy, sell or none, got {self.aggressor!r}")

    @property
    def session(self) -> str:
        """The B3 session date (YYYYMMDD) the trade belongs to; trade ids restart each session."""
        return self.timestamp.astimezone(B3_TZ).strftime("%Y%m%d")


class _Trusted(threading.local):
    building = False  # per thread: a Tick made on another thread meanwhile is checked as always


_trusted = _Trusted()


def from_ms_array(ms: np.ndarray) -> list[datetime]:
    """`from_ms` of each value (int64 epoch ms), several times faster: by wall-clock arithmetic from
    the first while the UTC offset is the same at both ends of less than a day (Sao Paulo changes it
    at most twice a year, never twice in a day); otherwise one by one."""
    if not len(ms):
        return []
    first, last = int(ms.min()), int(ms.max())
    base = from_ms(int(ms[0]))
    if last - first >= 86_400_000 or from_ms(first).utcoffset() != from_ms(last).utcoffset():
        return [from_ms(m) for m in ms.tolist()]
    # an aware datetime plus a timedelta keeps its zone and adds wall-clock time: exact at one offset
    steps = (ms - ms[0]).astype("timedelta64[ms]").astype(object)
    return list(map(base.__add__, steps))


def stored_ticks(symbol: Sequence[str], columns: Mapping[str, np.ndarray]) -> list[Tick]:
    """Ticks read back from the store, built without running `Tick`'s checks again: every stored
    value passed them (or the recorder's column-wise ones) when it was recorded, and the checks are
    most of the cost of a replay's input. `symbol[i]` is row i's symbol; `columns` holds the arrays
    of `tick_schema.COLUMNS` but `seq` (0: ingest numbers a replay afresh).

    Only the store replay calls this (a test holds it to that): nothing read from a file or the
    network may come this way. The checks are off for this thread and only while the list is built
    from arrays, with no other code running in between."""
    c = columns
    times = from_ms_array(c["timestamp_ms"])
    aggressors = np.array(AGGRESSOR_CODES, dtype=object)[c["aggressor"]].tolist()
    rows = zip(
        symbol, times, c["timestamp_ms"].tolist(), c["trade_id"].tolist(), c["price"].tolist(),
        c["volume"].tolist(), c["quantity"].tolist(), c["buyer"].tolist(), c["seller"].tolist(),
        c["trade_type"].tolist(), aggressors, c["is_edit"].astype(bool).tolist(), strict=True,
    )  # fmt: skip
    _trusted.building = True
    try:
        return [
            Tick(
                symbol=s,
                timestamp=t,
                timestamp_ms=ms,
                trade_id=i,
                price=p,
                volume=v,
                quantity=q,
                buyer=b,
                seller=se,
                trade_type=tt,
                aggressor=a,
                is_edit=e,
            )  # fmt: skip
            for s, t, ms, i, p, v, q, b, se, tt, a, e in rows
        ]
    finally:
        _trusted.building = False


class Candle(Event, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """OHLCV bar; `timestamp` is the bar's open time."""

    timeframe: str
    open: float
    high: float
    low: float
    close: float
    volume: float
    quantity: int
    trades: int
    vwap: float
    buy_quantity: int = 0
    sell_quantity: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("open", "high", "low", "close", "vwap"):
            _check_finite(name, getattr(self, name), positive=True)
        _check_finite("volume", self.volume)
        if not self.low <= min(self.open, self.close) <= max(self.open, self.close) <= self.high:
            raise DataError(
                "high", f"OHLC out of order: o={self.open} h={self.high} l={self.low} c={self.close}"
            )


class Features(Event, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Feature values of one symbol at one instant (point-in-time: computed from data <= timestamp)."""

    values: dict[str, float | str | None]


class Prediction(Event, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Class probabilities of a model for the move after `timestamp`."""

    model: str
    probabilities: dict[str, float]

    def __post_init__(self) -> None:
        super().__post_init__()
        for label, p in self.probabilities.items():
            if not (math.isfinite(p) and 0.0 <= p <= 1.0):
                raise DataError(f"probabilities.{label}", f"must be within [0, 1], got {p!r}")


class Signal(Event, frozen=True, forbid_unknown_fields=True, kw_only=True):
    action: Action
    confidence: float
    model: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.action not in ("BUY", "SELL", "HOLD"):
            raise DataError("action", f"must be BUY, SELL or HOLD, got {self.action!r}")
        if not (math.isfinite(self.confidence) and 0.0 <= self.confidence <= 1.0):
            raise DataError("confidence", f"must be within [0, 1], got {self.confidence!r}")


E = TypeVar("E", bound=Event)


def make_tick(
    symbol: str,
    timestamp_ms: int,
    trade_id: int,
    price: float,
    quantity: int,
    *,
    volume: float | None = None,
    multiplier: float = 1.0,
    buyer: int = 0,
    seller: int = 0,
    trade_type: int = 0,
    aggressor: Aggressor | None = None,
    is_edit: bool = False,
    seq: int = 0,
) -> Tick:
    """Build a Tick from the exchange time in ms; volume defaults to price * quantity * multiplier."""
    return Tick(
        symbol=symbol,
        timestamp=from_ms(timestamp_ms),
        timestamp_ms=timestamp_ms,
        trade_id=trade_id,
        price=price,
        volume=price * quantity * multiplier if volume is None else volume,
        quantity=quantity,
        buyer=buyer,
        seller=seller,
        trade_type=trade_type,
        aggressor=aggressor_from_trade_type(trade_type) if aggressor is None else aggressor,
        is_edit=is_edit,
        seq=seq,
    )


# --- codec -------------------------------------------------------------------------------------------

_encoder = msgspec.json.Encoder()
_decoders: dict[type, msgspec.json.Decoder[Any]] = {}
_PATH = re.compile(r" - at `\$\.?([^`]*)`")


def _decoder(kind: type[E]) -> msgspec.json.Decoder[E]:
    dec = _decoders.get(kind)
    if dec is None:
        dec = _decoders[kind] = msgspec.json.Decoder(kind)
    return dec


def encode(event: msgspec.Struct) -> bytes:
    """The JSON form of an event (or a book frame), as published on the bus and written to files."""
    return _encoder.encode(event)


def data_error(exc: msgspec.MsgspecError) -> DataError:
    text = str(exc)
    if isinstance(exc, msgspec.DecodeError) and not isinstance(exc, msgspec.ValidationError):
        return DataError("json", f"malformed JSON: {text}")
    match = _PATH.search(text)
    field = match.group(1).split(".")[0].split("[")[0] if match else ""
    reason = _PATH.sub("", text)
    quoted = reason.split("`")[1] if reason.count("`") >= 2 else "?"
    if reason.startswith("Object contains unknown field"):
        return DataError(quoted, "unknown field")
    if reason.startswith("Object missing required field"):
        return DataError(quoted, "required field is missing")
    return DataError(field or "message", reason)


def decode(data: bytes | str, kind: type[E]) -> E:
    """Decode and validate one JSON event; raises DataError naming the field and the reason."""
    try:
        return _decoder(kind).decode(data)
    except msgspec.MsgspecError as exc:
        raise data_error(exc) from None


def decode_tick(data: bytes | str) -> Tick:
    return decode(data, Tick)


@functools.cache
def _dict_fields(kind: type[Event]) -> tuple[str, ...]:
    # cached: msgspec.structs.fields re-evaluates the annotations on every call (~1 ms)
    return tuple(f.name for f in msgspec.structs.fields(kind) if str(f.type).startswith("dict"))


def from_fields(fields: Mapping[str, Any], kind: type[E]) -> E:
    """Rebuild an event from flat text fields (a Valkey stream entry or a CSV row), restoring types."""
    nested = _dict_fields(kind)
    if nested:
        fields = dict(fields)
        for name in nested:
            if isinstance(fields.get(name), str | bytes):
                fields[name] = msgspec.json.decode(fields[name])
    try:
        return msgspec.convert(fields, kind, strict=False)
    except msgspec.MsgspecError as exc:
        raise data_error(exc) from None


def _field_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return value.isoformat(timespec="milliseconds")
    if isinstance(value, float):
        return repr(float(value))  # a numpy float64 is a float whose repr is "np.float64(...)"
    if isinstance(value, dict):
        return _encoder.encode(value).decode()
    return str(value)


def to_fields(event: Event) -> dict[str, str]:
    """Flat text fields for a Valkey stream entry, readable in valkey-cli and restorable by `from_fields`."""
    return {name: _field_text(getattr(event, name)) for name in event.__struct_fields__}
