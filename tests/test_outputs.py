"""Every Store read in pandas, arrow and polars: the same values with the same types."""

from __future__ import annotations

import itertools
import sys
from datetime import datetime
from typing import Any

import pandas as pd
import polars as pl
import pyarrow as pa
import pytest

from factories import BASE_MS, tick, ticks
from tickvault.domain.book import BookBatch, BookColumns
from tickvault.domain.events import B3_TZ, Features, Signal, from_ms
from tickvault.errors import ConfigError
from tickvault.sources.book_simulator import BookMarketSimulator
from tickvault.store import book_sealing
from tickvault.store.api import Store
from tickvault.store.book_writer import BookPart, BookWriter

END = BASE_MS + 60_000
TICK_TYPES = {
    "timestamp": pa.timestamp("ns", tz="America/Sao_Paulo"),
    "symbol": pa.dictionary(pa.int8(), pa.string()),
    "timestamp_ms": pa.int64(),
    "trade_id": pa.int64(),
    "price": pa.float64(),
    "volume": pa.float64(),
    "quantity": pa.int64(),
    "buyer": pa.int64(),
    "seller": pa.int64(),
    "trade_type": pa.int64(),
    "aggressor": pa.dictionary(pa.int8(), pa.string()),
    "is_edit": pa.bool_(),
    "seq": pa.int64(),
}


def _unordered(frame: pd.DataFrame) -> pd.DataFrame:
    """polars' Enum comes back to pandas as an ordered Categorical; the categories are what count."""
    out = frame.copy()
    for name, column in out.items():
        if isinstance(column.dtype, pd.CategoricalDtype):
            out[name] = column.cat.as_unordered()
    return out


def _same(pandas: pd.DataFrame, arrow: pa.Table, polars: pl.DataFrame) -> None:
    """The three outputs hold the same rows, columns and types (compared through pandas, exactly)."""
    assert isinstance(arrow, pa.Table) and isinstance(polars, pl.DataFrame)
    assert pandas.index.dtype == "datetime64[ns, America/Sao_Paulo]"
    assert arrow.column_names == ["timestamp", *pandas.columns]
    # (a frame without columns has an integer column index in pandas, a string one once converted)
    loose = {"check_column_type": len(pandas.columns) > 0}
    pd.testing.assert_frame_equal(arrow.to_pandas().set_index("timestamp"), pandas, **loose)
    pd.testing.assert_frame_equal(_unordered(polars.to_pandas().set_index("timestamp")), pandas, **loose)
    assert polars.schema["timestamp"] == pl.Datetime("ns", "America/Sao_Paulo")


def _stored(store: Store) -> list[Any]:
    """Sealed and live ticks of two symbols, with a tick of each aggressor and an edit."""
    written = ticks(400) + ticks(50, "WINFUT", start_ms=BASE_MS + 10)
    store.append_ticks(written)
    store.seal("WDOFUT", BASE_MS + 60)  # part history block, part live stream
    late = tick(ts_ms=BASE_MS + 5, trade_id=1000, trade_type=1, is_edit=True)
    store.append_ticks([late])
    return [*written, late]


def test_ticks_are_the_same_in_pandas_arrow_and_polars(store: Store) -> None:
    _stored(store)
    pandas = store.ticks("WDOFUT", BASE_MS, END)
    arrow = store.ticks("WDOFUT", BASE_MS, END, output="arrow")
    assert dict(zip(arrow.schema.names, arrow.schema.types, strict=True)) == TICK_TYPES
    assert len(arrow) == 401 and set(pandas["aggressor"]) == {"buy", "sell", "none"}
    _same(pandas, arrow, store.ticks("WDOFUT", BASE_MS, END, output="polars"))
    polars = store.ticks("WDOFUT", BASE_MS, END, output="polars")
    assert polars.schema["aggressor"] == pl.Enum(["none", "buy", "sell"])


def test_several_symbols_are_in_the_same_time_order_in_every_output(store: Store) -> None:
    _stored(store)
    symbols = ["WINFUT", "WDOFUT"]
    pandas = store.ticks(symbols, BASE_MS, END)
    arrow = store.ticks(symbols, BASE_MS, END, output="arrow")
    assert arrow.column("symbol").type == pa.dictionary(pa.int8(), pa.string())
    assert arrow.column("symbol").chunk(0).dictionary.to_pylist() == symbols
    assert arrow.column("symbol").to_pylist() == list(pandas["symbol"].astype(str))
    _same(pandas, arrow, store.ticks(symbols, BASE_MS, END, output="polars"))


def test_empty_ranges_keep_their_types(store: Store) -> None:
    pandas = store.ticks("WDOFUT", BASE_MS, END)
    arrow = store.ticks("WDOFUT", BASE_MS, END, output="arrow")
    assert len(arrow) == 0 and dict(zip(arrow.schema.names, arrow.schema.types, strict=True)) == TICK_TYPES
    _same(pandas, arrow, store.ticks("WDOFUT", BASE_MS, END, output="polars"))


def test_candles_and_events_in_every_output(store: Store) -> None:
    _stored(store)
    for tf in ("1m", "1h"):
        _same(*(store.candles("WDOFUT", tf, BASE_MS, END, output=o) for o in ("pandas", "arrow", "polars")))
    stamps = [(BASE_MS + i * 1000, from_ms(BASE_MS + i * 1000)) for i in range(5)]
    store.append_events(
        [Features(symbol="WDOFUT", timestamp=t, timestamp_ms=ms, values={"rsi": 50.0 + i})
         for i, (ms, t) in enumerate(stamps)]
        + [Signal(symbol="WDOFUT", timestamp=t, timestamp_ms=ms, action="BUY", confidence=0.7)
           for ms, t in stamps]
    )  # fmt: skip
    for read in (store.features, store.signals, store.predictions):
        outputs = [read("WDOFUT", BASE_MS, END, output=o) for o in ("pandas", "arrow", "polars")]
        _same(*outputs)
    assert store.features("WDOFUT", BASE_MS, END, output="polars")["rsi"].to_list() == [
        50.0 + i for i in range(5)
    ]


def test_as_of_as_a_one_row_frame(store: Store) -> None:
    written = _stored(store)
    assert store.as_of("WDOFUT", BASE_MS + 5) == written[-1]  # without output: the Tick, as before
    outputs = [store.as_of("WDOFUT", BASE_MS + 5, output=o) for o in ("pandas", "arrow", "polars")]
    _same(*outputs)
    assert outputs[1].column("trade_id").to_pylist() == [1000]
    assert outputs[1].column("is_edit").to_pylist() == [True]
    nothing = [store.as_of("WDOFUT", BASE_MS - 1, output=o) for o in ("pandas", "arrow", "polars")]
    assert len(nothing[1]) == 0
    _same(*nothing)


def test_unknown_output_and_missing_polars_are_clear_errors(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.append_ticks(ticks(10))
    with pytest.raises(ConfigError, match="output='excel': must be one of pandas, arrow, polars"):
        store.ticks("WDOFUT", BASE_MS, END, output="excel")  # type: ignore[call-overload]
    monkeypatch.setitem(sys.modules, "polars", None)  # as if the extra were not installed
    with pytest.raises(ConfigError, match=r"pip install 'tickvault\[polars\]'"):
        store.ticks("WDOFUT", BASE_MS, END, output="polars")
    assert len(store.ticks("WDOFUT", BASE_MS, END, output="arrow")) == 10  # arrow needs no polars


def _stored_book(store: Store, kind: str, monkeypatch: pytest.MonkeyPatch) -> tuple[int, int]:
    """A simulated book session's start, its first part sealed, the rest live: (first, last) time."""
    sim = BookMarketSimulator(["WDOFUT"], kind=kind, seed=3, start=datetime(2025, 11, 24, 9, tzinfo=B3_TZ))
    batches = [b for b in itertools.islice(sim.events(), 1500) if isinstance(b, BookBatch)]
    monkeypatch.setattr(book_sealing, "BLOCK_ROWS", 500)  # a few small blocks
    writer = BookWriter(
        store.client, store.keys, snapshot_every=300, snapshot_ms=10**12, owner="recorder@test"
    )
    for i in range(0, len(batches), 50):
        cols = BookColumns.from_events([e for b in batches[i : i + 50] for e in b])
        writer.write([BookPart(cols, i // 50 + 1)])
    first, last = batches[0].timestamp_ms, batches[-1].timestamp_ms
    assert store.compact_book("WDOFUT", 2000) > 0
    return first, last


@pytest.mark.parametrize("kind", ["mbp", "mbo"])
def test_book_reads_are_the_same_in_pandas_arrow_and_polars(
    store: Store, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, last = _stored_book(store, kind, monkeypatch)
    reads = {
        "book": lambda o: store.book("WDOFUT", (first + last) // 2, 5, output=o),
        "book, every level": lambda o: store.book("WDOFUT", last, None, output=o),
        "book before any": lambda o: store.book("WDOFUT", first - 1, output=o),
        "book_frames": lambda o: store.book_frames("WDOFUT", first - 500, last, "250ms", 3, output=o),
        "quotes": lambda o: store.quotes("WDOFUT", first, last, output=o),
        "book_updates": lambda o: store.book_updates("WDOFUT", first, last, output=o),
        "no updates": lambda o: store.book_updates("WDOFUT", last + 1, last + 2, output=o),
    }
    for name, read in reads.items():
        outputs = [read(o) for o in ("pandas", "arrow", "polars")]
        assert len(outputs[0]) > 0 or name in ("book before any", "no updates"), name
        _same(*outputs)
    book = store.book("WDOFUT", last, 5, output="arrow")
    assert book.schema.metadata[b"tickvault.valid"] == b"True"
    assert book.column("side").to_pylist() == ["bid"] * 5 + ["ask"] * 5
    updates = store.book_updates("WDOFUT", first, last, output="arrow")
    assert updates.schema.field("action").type == pa.dictionary(pa.int8(), pa.string())
    assert updates.schema.field("flags").type == pa.uint8()
    frames = store.book_frames("WDOFUT", first - 500, last, "250ms", 3, output="polars")
    assert frames["valid"].to_list()[:2] == [False, False] and frames["valid"][-1]
    assert store.book_updates("WDOFUT", first, last, output="polars").schema["side"] == pl.Enum(
        ["bid", "ask", "none"]
    )
