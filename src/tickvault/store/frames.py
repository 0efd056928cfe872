"""What a `Store` read returns: a pandas DataFrame (the default), a pyarrow Table or a polars DataFrame.

The three hold the same values with the same types. pandas: indexed by `timestamp`, tz-aware
America/Sao_Paulo ns, categories as Categorical. arrow and polars have no index: `timestamp` is their
first column (the same instant, ns, the same time zone), then the frame's columns in its order;
categories are dictionary arrays (arrow) and Categorical (polars).

Ticks become arrow straight from the block columns (`ticks_table`, no pandas in between), and so do
the book's reads (`numpy_output`: numpy columns to pandas, or to arrow without pandas); polars is
made from that arrow table (zero copy where the types allow). Frames that are computed in pandas
(candles, features, predictions, signals) are converted from it. polars is an optional extra
(`pip install tickvault[polars]`), imported only when asked for.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, get_args

import numpy as np
import pandas as pd
import pyarrow as pa

from tickvault.domain.events import B3_TZ, Tick
from tickvault.domain.tick_schema import AGGRESSOR_CODES, COLUMN_DTYPES, COLUMN_FIELDS
from tickvault.errors import ConfigError
from tickvault.store.block_codec import Columns

Output = Literal["pandas", "arrow", "polars"]
OUTPUTS: Final[tuple[str, ...]] = get_args(Output)
TZ_NAME: Final[str] = str(B3_TZ.key)
TIMESTAMP: Final[pa.DataType] = pa.timestamp("ns", tz=TZ_NAME)
# the arrow type of each tick column: what pandas' dtype of it converts to (so all outputs agree)
_ARROW: Final[dict[str, pa.DataType]] = {
    "int64": pa.int64(),
    "float64": pa.float64(),
    "bool": pa.bool_(),
}


def check_output(output: str) -> Output:
    if output not in OUTPUTS:
        raise ConfigError("output", output, f"must be one of {', '.join(OUTPUTS)}")
    return output  # type: ignore[return-value]


def polars_module() -> Any:
    """polars, or a ConfigError naming the extra that installs it."""
    try:
        return importlib.import_module("polars")
    except ImportError:
        raise ConfigError("output", "polars", "needs polars: pip install 'tickvault[polars]'") from None


def _dictionary(codes: np.ndarray, names: Sequence[str]) -> pa.DictionaryArray:
    """Codes into `names` as pandas' Categorical converts: the narrowest signed index type."""
    index = pa.int8() if len(names) <= 127 else pa.int16() if len(names) <= 32_767 else pa.int32()
    return pa.DictionaryArray.from_arrays(
        pa.array(codes, type=index), pa.array(list(names), type=pa.string())
    )


def ticks_table(parts: Sequence[tuple[str, Columns]]) -> pa.Table:
    """The ticks of one or more symbols as an arrow Table, in time order (ties: the symbols' order,
    then each one's own order): the same rows, columns and types as `Store.ticks` in pandas."""
    names = [symbol for symbol, _ in parts]
    counts = [len(cols) for _, cols in parts]
    if len(parts) == 1:
        cols, order = parts[0][1], None
    else:
        cols = Columns.concat([c for _, c in parts]) if parts else Columns.empty()
        # a stable sort by time keeps each symbol's order and the symbols' order at equal times
        order = np.argsort(cols.timestamp_ms, kind="stable")
        if bool(np.all(order[1:] > order[:-1])):
            order = None  # already in time order
        else:
            cols = cols.take(order)
    codes = np.repeat(np.arange(len(parts), dtype=np.int64), counts)
    if order is not None:
        codes = codes[order]
    arrays: dict[str, pa.Array] = {
        "timestamp": pa.array(cols.timestamp_ms * 1_000_000, type=pa.int64()).view(TIMESTAMP),
        "symbol": _dictionary(codes, names),
    }
    for f in COLUMN_FIELDS:
        values = getattr(cols, f.name)
        if f.frame == "category":
            arrays[f.name] = _dictionary(values, f.codes)
        else:
            arrays[f.name] = pa.array(values, type=_ARROW[str(f.frame)])
    return pa.table(arrays)


@dataclass(frozen=True)
class Coded:
    """A categorical column of `numpy_output`: integer codes into `names`."""

    codes: np.ndarray
    names: Sequence[str]


def ms_index(time_ms: np.ndarray) -> pd.DatetimeIndex:
    """Exchange times in ms as the `timestamp` index of every read: ns, America/Sao_Paulo."""
    stamps = np.asarray(time_ms, np.int64).astype("datetime64[ms]").astype("datetime64[ns]")
    return pd.DatetimeIndex(stamps, name="timestamp").tz_localize("UTC").tz_convert(B3_TZ)


def ms_timestamps(time_ms: np.ndarray) -> pa.Array:
    """Exchange times in ms as the arrow `timestamp` column (ns, America/Sao_Paulo)."""
    return pa.array(np.asarray(time_ms, np.int64) * 1_000_000, type=pa.int64()).view(TIMESTAMP)


def numpy_output(
    time_ms: np.ndarray,
    data: Mapping[str, np.ndarray | Coded],
    output: Output,
    attrs: Mapping[str, Any] | None = None,
) -> Any:
    """Columns of numpy arrays (one row per time in `time_ms`) in the form asked for: pandas indexed
    by `timestamp` with `attrs`, or arrow made from the arrays themselves (no pandas; `attrs` as
    schema metadata `tickvault.NAME`, their str), or polars made from that arrow table."""
    if output == "pandas":
        columns: dict[str, Any] = {}
        for name, v in data.items():
            if isinstance(v, Coded):
                columns[name] = pd.Categorical.from_codes(v.codes.astype(np.int8), categories=list(v.names))
            elif v.dtype == object:  # text: pandas' string dtype even when empty, as arrow's converts
                columns[name] = pd.Series(v, dtype="str").array
            else:
                columns[name] = v
        frame = pd.DataFrame(columns, index=ms_index(time_ms))
        frame.attrs.update(attrs or {})
        return frame
    arrays: dict[str, pa.Array] = {"timestamp": ms_timestamps(time_ms)}
    for name, v in data.items():
        if isinstance(v, Coded):
            arrays[name] = _dictionary(v.codes, v.names)
        else:  # text as strings even when empty (numpy's object arrays say nothing of their type)
            arrays[name] = pa.array(v, type=pa.string() if v.dtype == object else None)
    table = pa.table(arrays)
    if attrs:
        table = table.replace_schema_metadata({f"tickvault.{k}": str(v) for k, v in attrs.items()})
    return from_table(table, output)


def tick_columns(ticks: Iterable[Tick]) -> Columns:
    """Tick objects as Columns (for a read that found single ticks, such as `as_of`)."""
    rows = list(ticks)
    data: dict[str, np.ndarray] = {}
    for name, dtype in COLUMN_DTYPES.items():
        if name == "aggressor":
            values: list[Any] = [AGGRESSOR_CODES.index(t.aggressor) for t in rows]
        else:
            values = [getattr(t, name) for t in rows]
        data[name] = np.array(values, dtype=dtype)
    return Columns(**data)


def frame_table(frame: pd.DataFrame) -> pa.Table:
    """A frame indexed by `timestamp` as an arrow Table with `timestamp` its first column."""
    table = pa.Table.from_pandas(frame.reset_index(), preserve_index=False)
    return table.replace_schema_metadata(None)  # no pandas index metadata: the index is a column


def from_table(table: pa.Table, output: Output) -> Any:
    """`table` in the form asked for."""
    if output == "arrow":
        return table
    if output == "polars":
        return polars_table(table)
    return table.to_pandas().set_index("timestamp")


def polars_table(table: pa.Table) -> Any:
    """An arrow table as a polars DataFrame. A dictionary column becomes an Enum of its dictionary:
    polars' Categorical of a fixed category list, so that the categories are the same as in pandas and
    arrow (a plain polars Categorical would keep only the values that occur)."""
    pl = polars_module()
    frame = pl.from_arrow(table)
    enums = {
        field.name: pl.Enum(table.column(field.name).chunk(0).dictionary.to_pylist())
        for field in table.schema
        if pa.types.is_dictionary(field.type) and table.column(field.name).num_chunks
    }
    return frame.with_columns(*(pl.col(name).cast(kind) for name, kind in enums.items())) if enums else frame


def from_frame(frame: pd.DataFrame, output: Output) -> Any:
    """A frame computed in pandas (candles, events) in the form asked for."""
    if isinstance(frame.index, pd.DatetimeIndex) and frame.index.unit != "ns":
        frame = frame.set_axis(frame.index.as_unit("ns"))  # ns in every output (pandas 3 picks us for ms)
    if output == "pandas":
        return frame
    return from_table(frame_table(frame), output)
