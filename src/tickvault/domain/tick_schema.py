"""The tick schema, declared once: every fact about a tick's fields that more than one module needs.

`TICK_FIELDS` lists the fields in stream order: the order the tick writer writes a stream entry's
fields (the fast reader in `store/stream_codec.py` relies on it, and existing entries in Valkey are
in it), which is also the order of `Tick`'s attributes, of a history block's sections and of the
ticks DataFrame's columns. Per field:

- `type`: the Python type of the attribute on `events.Tick` (and on the writer's `TickLike`);
- `wire`: the msgspec type a bus frame is decoded into (`TickWire`): the checks msgspec makes in C;
- `default`: the value when a frame leaves the field out (`msgspec.NODEFAULT`: required);
- `column`: the numpy dtype of its array in `Columns` and in history blocks; None: not a column
  (the symbol is one per `Columns`, `timestamp` is written from `timestamp_ms`);
- `frame`: its dtype in the ticks DataFrame, "category" a pandas Categorical; None: the index;
- `delta`: history blocks store the differences between rows (values that count up);
- `codes`: for a column of int8 codes, the names they stand for (the DataFrame's categories).

Everything else derives from it: the stream writer's fields and texts, both stream readers, the block
codec's columns and dtypes, the DataFrame's columns and dtypes. The classes the type checker must see
(`events.Tick`, `recorder.frames.TickWire`, `store.tick_writer.TickLike`, `store.block_codec.Columns`)
repeat the names; tests/test_tick_schema.py holds each of them to this table, field for field.

Adding a field: its line in `TICK_FIELDS`, and the attribute in those four classes (the test names any
that lacks it). A new column changes block bytes: bump `block_codec.VERSION`. New stream fields come
after the existing ones (entries already stored keep their order and take the per-entry read path).

Here too: the one aggressor map (ProfitDLL trade type -> aggressor -> int8 code) and the one parser of
stream entry ids (`<ms>-<n>`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Final, Literal

import msgspec
import numpy as np

Aggressor = Literal["buy", "sell", "none"]

# Columns.aggressor and history blocks hold int8 codes into this; a DataFrame shows the names
AGGRESSOR_CODES: Final[tuple[Aggressor, ...]] = ("none", "buy", "sell")
# ProfitDLL trade types: 2 is a buy aggression, 3 a sell aggression; anything else has no aggressor
TRADE_TYPE_AGGRESSOR: Final[dict[int, Aggressor]] = {2: "buy", 3: "sell"}


def aggressor_from_trade_type(trade_type: int) -> Aggressor:
    return TRADE_TYPE_AGGRESSOR.get(trade_type, "none")


@dataclass(frozen=True)
class TickField:
    name: str
    type: Any
    wire: Any
    default: Any = msgspec.NODEFAULT
    column: np.dtype[Any] | None = None
    frame: str | None = None
    delta: bool = False
    codes: tuple[str, ...] = ()


# the wire types with constraints (named, so that TickWire can say them without restating them)
TimeText = Annotated[str, msgspec.Meta(min_length=10, max_length=40)]  # ISO 8601 with an offset
NonNegativeInt = Annotated[int, msgspec.Meta(ge=0)]
NonNegativeFloat = Annotated[float, msgspec.Meta(ge=0)]
PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
_I64, _F64, _I8, _BOOL = np.dtype(np.int64), np.dtype(np.float64), np.dtype(np.int8), np.dtype(np.bool_)

TICK_FIELDS: Final[tuple[TickField, ...]] = (
    TickField("symbol", str, str, frame="category"),
    TickField("timestamp", datetime, TimeText),
    TickField("timestamp_ms", int, int, column=_I64, frame="int64", delta=True),
    TickField("trade_id", int, NonNegativeInt, column=_I64, frame="int64", delta=True),
    TickField("price", float, PositiveFloat, column=_F64, frame="float64"),
    TickField("volume", float, NonNegativeFloat, column=_F64, frame="float64"),  # financial volume
    TickField("quantity", int, NonNegativeInt, column=_I64, frame="int64"),  # contracts
    TickField("buyer", int, int, 0, _I64, "int64"),
    TickField("seller", int, int, 0, _I64, "int64"),
    TickField("trade_type", int, int, 0, _I64, "int64"),
    TickField("aggressor", Aggressor, Aggressor, "none", _I8, "category", codes=AGGRESSOR_CODES),
    TickField("is_edit", bool, bool, False, _BOOL, "bool"),
    TickField("seq", int, int, 0, _I64, "int64", delta=True),
)

FIELD: Final[dict[str, TickField]] = {f.name: f for f in TICK_FIELDS}
STREAM_FIELDS: Final[tuple[str, ...]] = tuple(f.name for f in TICK_FIELDS)  # a stream entry's, in order
COLUMN_FIELDS: Final[tuple[TickField, ...]] = tuple(f for f in TICK_FIELDS if f.column is not None)
COLUMNS: Final[tuple[str, ...]] = tuple(f.name for f in COLUMN_FIELDS)  # Columns' arrays, block sections
COLUMN_DTYPES: Final[dict[str, np.dtype[Any]]] = {
    f.name: f.column for f in TICK_FIELDS if f.column is not None
}
# what the writer reads from a tick: the symbol and the columns (it writes `timestamp` from timestamp_ms)
ROW_FIELDS: Final[tuple[str, ...]] = ("symbol", *COLUMNS)


# -- stream ids ---------------------------------------------------------------------------------------


def stream_id(entry_id: bytes | str) -> tuple[int, int]:
    """(ms, n) of a stream entry id `<ms>-<n>`; a bare `<ms>` (a range bound) is n = 0."""
    if isinstance(entry_id, bytes):
        ms, _, n = entry_id.partition(b"-")
        return int(ms), int(n or 0)
    text_ms, _, text_n = entry_id.partition("-")
    return int(text_ms), int(text_n or 0)


def stream_ids_ms(entry_ids: Iterable[bytes]) -> np.ndarray:
    """The ms part of many entry ids at once, as int64."""
    return np.array([i.partition(b"-")[0] for i in entry_ids], dtype="S").astype(np.int64)
