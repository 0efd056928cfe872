"""The tick schema declared once (domain/tick_schema.py): the classes the type checker reads are held
to it field for field, everything else is derived from it, and the wire formats it describes are
pinned by bytes the code before the schema wrote (stream entries, bus JSON, history blocks)."""

from __future__ import annotations

import typing

import msgspec
import numpy as np
import pytest
import valkey
import zstandard

from tickvault.domain.events import Tick, aggressor_from_trade_type, encode, make_tick
from tickvault.domain.tick_schema import (
    AGGRESSOR_CODES,
    COLUMN_DTYPES,
    COLUMNS,
    ROW_FIELDS,
    STREAM_FIELDS,
    TICK_FIELDS,
    TRADE_TYPE_AGGRESSOR,
    stream_id,
    stream_ids_ms,
)
from tickvault.recorder.frames import TickWire, decode_frames
from tickvault.store import block_codec, stream_codec, tick_writer
from tickvault.store.api import Store, columns_frame
from tickvault.store.block_codec import Columns, decode_block, encode_block

# -- the classes the type checker reads, held to the schema -------------------------------------------


def test_tick_has_the_schema_fields_in_order_with_their_types_and_defaults() -> None:
    got = [(f.name, f.type, f.default) for f in msgspec.structs.fields(Tick)]
    assert got == [(f.name, f.type, f.default) for f in TICK_FIELDS]


def test_tick_wire_has_the_schema_wire_types_and_defaults() -> None:
    got = [(f.name, f.type, f.default) for f in msgspec.structs.fields(TickWire)]
    assert got == [(f.name, f.wire, f.default) for f in TICK_FIELDS]


def test_tick_like_reads_the_row_fields_with_their_schema_types() -> None:
    members = {
        name: typing.get_type_hints(prop.fget)["return"]
        for name, prop in vars(tick_writer.TickLike).items()
        if isinstance(prop, property)
    }
    assert members == {name: next(f.type for f in TICK_FIELDS if f.name == name) for name in ROW_FIELDS}


def test_columns_has_one_array_per_schema_column_in_order_of_its_dtype() -> None:
    import dataclasses

    assert tuple(f.name for f in dataclasses.fields(Columns)) == COLUMNS == block_codec.COLUMNS
    empty = Columns.empty()
    assert {name: getattr(empty, name).dtype for name in COLUMNS} == COLUMN_DTYPES
    assert {name: a.dtype for name, a in vars(decode_block(encode_block(empty))).items()} == COLUMN_DTYPES


# -- derived from it ---------------------------------------------------------------------------------


def test_stream_fields_and_writer_rows_come_from_the_schema() -> None:
    assert stream_codec.FIELDS == tick_writer.FIELDS == STREAM_FIELDS
    assert ("symbol", *COLUMNS) == ROW_FIELDS


@pytest.mark.parametrize("rows", [0, 3])
def test_the_ticks_frame_has_the_schema_columns_and_dtypes(rows: int) -> None:
    ticks = [make_tick("WDOFUT", 1_764_000_000_000 + i, i + 1, 5400.0, 1, trade_type=i) for i in range(rows)]
    frame = columns_frame("WDOFUT", stream_codec.columns_from_entries(_entries(ticks)))
    want = {f.name: f.frame for f in TICK_FIELDS if f.frame is not None}
    assert list(frame.columns) == list(want)
    assert {name: str(dtype) for name, dtype in frame.dtypes.items()} == want
    assert list(frame["aggressor"].cat.categories) == list(AGGRESSOR_CODES)
    assert [str(a) for a in frame["aggressor"]] == [aggressor_from_trade_type(i) for i in range(rows)]


def _entries(ticks: list[Tick]) -> list[tuple[bytes, dict[bytes, bytes]]]:
    from tickvault.domain.events import to_fields

    return [(b"1-0", {k.encode(): v.encode() for k, v in to_fields(t).items()}) for t in ticks]


def test_one_aggressor_map_for_ticks_blocks_and_streams() -> None:
    trade_types = np.arange(-3, 12, dtype=np.int64)
    implied = [aggressor_from_trade_type(int(t)) for t in trade_types]
    assert implied == [TRADE_TYPE_AGGRESSOR.get(int(t), "none") for t in trade_types]
    assert set(typing.get_args(typing.get_type_hints(Tick)["aggressor"])) == set(AGGRESSOR_CODES)
    # a block stores the aggressor as DERIVED exactly when it is the one the trade types imply
    codes = np.array([AGGRESSOR_CODES.index(a) for a in implied], np.int8)
    n = len(trade_types)
    cols = Columns(**{**{k: np.zeros(n, v) for k, v in COLUMN_DTYPES.items()}, "price": np.ones(n),
                      "trade_type": trade_types, "aggressor": codes})  # fmt: skip
    assert np.array_equal(decode_block(encode_block(cols)).aggressor, codes)
    assert _section_kinds(encode_block(cols))["aggressor"] == block_codec.DERIVED
    codes[0] = AGGRESSOR_CODES.index("buy")  # trade type -3 implies none
    assert _section_kinds(encode_block(cols))["aggressor"] == block_codec.INT


def _section_kinds(block: bytes) -> dict[str, int]:
    body, pos, kinds = zstandard.ZstdDecompressor().decompress(block[28:]), 28, {}
    for name in COLUMNS:
        kind, _, _, length, *_ = block_codec._SECTION.unpack_from(body, pos)
        kinds[name], pos = kind, pos + block_codec._SECTION.size + length
    return kinds


def test_stream_ids_parse_in_one_place() -> None:
    assert stream_id(b"1764000000123-7") == stream_id("1764000000123-7") == (1764000000123, 7)
    assert stream_id("1764000000123") == (1764000000123, 0)  # a range bound
    assert stream_ids_ms([b"5-0", b"17-3"]).tolist() == [5, 17]
    with pytest.raises(ValueError):
        stream_id(b"not-an-id")


# -- the wire formats, as the code before the schema wrote them -----------------------------------------

_TICKS = [
    make_tick("WDOFUT", 1_764_000_000_123, 7, 5400.5, 3, multiplier=10.0, buyer=3, seller=8, trade_type=2,
              seq=11),
    make_tick("WDOFUT", 1_764_000_000_123, 8, 5399.0, 1, volume=0.1, trade_type=5, aggressor="sell",
              is_edit=True, seq=12),
]  # fmt: skip


def test_bus_json_is_unchanged_and_decodes_to_the_wire_form() -> None:
    assert encode(_TICKS[1]) == (
        b'{"symbol":"WDOFUT","timestamp":"2025-11-24T13:00:00.123000-03:00","timestamp_ms":1764000000123,'
        b'"trade_id":8,"price":5399.0,"volume":0.1,"quantity":1,"buyer":0,"seller":0,"trade_type":5,'
        b'"aggressor":"sell","is_edit":true,"seq":12}'
    )
    batch = decode_frames([[b"tick_WDOFUT", encode(t)] for t in _TICKS])
    assert not batch.rejected
    assert [[getattr(w, f) for f in ROW_FIELDS] for w in batch.ticks] == [
        [getattr(t, f) for f in ROW_FIELDS] for t in _TICKS
    ]


def test_stream_entries_are_written_as_before(store: Store, valkey_client: valkey.Valkey) -> None:
    store.append_ticks(_TICKS)
    key = store.keys.ticks("WDOFUT")
    raw = stream_codec.raw_command(valkey_client, key, "XRANGE", key, "-", "+")
    assert [(entry_id, list(fields)) for entry_id, fields in raw] == [
        (b"1764000000123-0", [
            b"symbol", b"WDOFUT", b"timestamp", b"2025-11-24T13:00:00.123-03:00",
            b"timestamp_ms", b"1764000000123", b"trade_id", b"7", b"price", b"5400.5", b"volume", b"162015",
            b"quantity", b"3", b"buyer", b"3", b"seller", b"8", b"trade_type", b"2", b"aggressor", b"buy",
            b"is_edit", b"false", b"seq", b"11",
        ]),
        (b"1764000000123-1", [
            b"symbol", b"WDOFUT", b"timestamp", b"2025-11-24T13:00:00.123-03:00",
            b"timestamp_ms", b"1764000000123", b"trade_id", b"8", b"price", b"5399", b"volume", b"0.1",
            b"quantity", b"1", b"buyer", b"0", b"seller", b"0", b"trade_type", b"5", b"aggressor", b"sell",
            b"is_edit", b"true", b"seq", b"12",
        ]),
    ]  # fmt: skip
    fast, slow = stream_codec.columns_of(raw), stream_codec.columns_from_entries(valkey_client.xrange(key))
    for name in COLUMNS:
        np.testing.assert_array_equal(getattr(fast, name), getattr(slow, name), err_msg=name)
    assert fast.aggressor.tolist() == [1, 2] and fast.is_edit.tolist() == [False, True]
    assert [(t.price, t.volume, t.aggressor) for t in store.tick_events("WDOFUT", 0, 2**42)] == [
        (5400.5, 162015.0, "buy"),
        (5399.0, 0.1, "sell"),
    ]


def _golden_columns(derived: bool) -> Columns:
    n = 40
    i = np.arange(n, dtype=np.int64)
    ms = 1_764_000_000_000 + i * 7 // 3
    ms[25] -= 50  # a late tick: negative differences
    price = 5400.0 + 0.5 * (i % 5) if derived else 5400.0 + 0.013 * i + 1e-9 * (i % 3)
    qty = 1 + (i * i) % 7
    volume = price * qty * 10.0
    volume[3] += 0.25  # an exception to the product rule
    tt = 2 + i % 2
    aggressor = (tt - 1).astype(np.int8) if derived else (i % 3).astype(np.int8)
    return Columns(
        timestamp_ms=ms, trade_id=1000 + 2 * i, price=price, volume=volume, quantity=qty,
        buyer=np.array([3, 8, 120, 386])[i % 4], seller=np.array([27, 72])[i % 2], trade_type=tt,
        aggressor=aggressor, is_edit=i == 9, seq=5 + i,
    )  # fmt: skip


# encode_block(_golden_columns(...), level=19) by the codec before the schema
_OLD_BLOCKS = {
    True: bytes.fromhex(
        "54564231020000002800000000e897b69a0100005be897b69a01000028b52ffd6421015d050012091a1e904d63cbf2d7"
        "f996cd62dca6be291c811b69abb9a89c01b3fba0bdf79629ff7579fdddebf577b9a38de5c57417dc6cece0399d99ca25"
        "9067a164787fe2e93ed3139fbbf05305412ee47092eb37fec493cae5ffcff0ad0aa0f49dc14efd6e9d16fe2fbf6ca049"
        "0a21a011907c3393b3d05c0ee09826d728931b0ba508b49c85d242c6431243a03d301c0d91b13094c7a10603af0eb53d"
        "2c034f062417931d549fba0bdbc10f420d51dadbd2"
    ),
    False: bytes.fromhex(
        "54564231020000002800000000e897b69a0100005be897b69a01000028b52ffd6457024d0c00c4125456423102000000"
        "2800e897b69a0100005b01080301000404065f6800e8030002000340000040010025498bb0d4173c60a2c7eb2d5276b8"
        "dd0144698dcff4185a7fa3e50a2f7196bafc214587acd01200d3a66c3f12d9ac7f4518ebb285581ef1c58b5e31f7ca9e"
        "64370ad0a4773d10e3a97d5016e9bc8300f7efe7dfd7cec6beb6aea59d958d857c746c645c534b433b332b221a120a02"
        "f9f1e9e1d9d0c8c00053a7fb4fa3f74b9ff3479bef4397eb3f93e73b8fe3378bdf3387db2f83d72b7ed2267ace2276ca"
        "000306090d1013171a1d2124272b2e3135383b3f4245494c4f5356595d6063676a6d7174777b7e8118b540040000000c"
        "00244003c2f5285c8bc60341010400001410244201412214010204002a087882e40101040015001b48aa010100000500"
        "0a2449922a20b0d08c68da324cc0620698124009d25fa079ce20f4850002e1b850a90d8c596e762d4a017271e5503333"
        "0be41b67314e08d0909c161f26090400fc02ccb20e288ae55932a44bd4de48ac9864771f587fa3e8f07e46190738129f"
        "cb6f0f"
    ),
}


@pytest.mark.parametrize("derived", [True, False])
def test_blocks_written_before_read_back_and_encode_the_same(derived: bool) -> None:
    cols, old = _golden_columns(derived), _OLD_BLOCKS[derived]
    back = decode_block(old)
    for name in COLUMNS:
        np.testing.assert_array_equal(getattr(back, name), getattr(cols, name), err_msg=name)
    body = zstandard.ZstdDecompressor().decompress  # the sections, whatever zstd's version compresses to
    assert body(encode_block(cols)[28:]) == body(old[28:])


def test_entries_lacking_optional_fields_read_with_their_defaults(valkey_client: valkey.Valkey) -> None:
    # as entries stored before a field was added: the per-entry path fills in the schema's default
    fields = {"timestamp_ms": 1_764_000_000_000, "trade_id": 1, "price": 5400.5, "volume": 1.5, "quantity": 1}
    valkey_client.xadd("older", fields)  # type: ignore[arg-type]
    cols = stream_codec.columns_of(
        stream_codec.raw_command(valkey_client, "older", "XRANGE", "older", "-", "+")
    )
    assert (cols.trade_id.tolist(), cols.price.tolist(), cols.volume.tolist()) == ([1], [5400.5], [1.5])
    defaults = {f.name: f.default for f in TICK_FIELDS if f.column is not None and f.name not in fields}
    assert [getattr(cols, name).tolist() for name in defaults] == [
        [AGGRESSOR_CODES.index(d)] if isinstance(d, str) else [d] for d in defaults.values()
    ]
    with pytest.raises(KeyError):  # a required field missing is no tick
        stream_codec.columns_from_entries([(b"1-0", {b"trade_id": b"1"})])
