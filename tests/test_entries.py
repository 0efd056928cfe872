"""Raw stream replies parsed column-wise equal the per-entry parse, and odd entries fall back to it."""

from __future__ import annotations

import numpy as np
import valkey

from factories import BASE_MS, ticks
from tickvault.store.api import Store
from tickvault.store.block_codec import COLUMNS
from tickvault.store.stream_codec import columns_from_entries, columns_of, id_ms, raw_command


def _same(a: object, b: object) -> None:
    for name in COLUMNS:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


def test_raw_replies_give_the_columns_the_per_entry_parse_gives(
    store: Store, valkey_client: valkey.Valkey
) -> None:
    sent = [t for t in ticks(500, per_ms=4)]
    sent[7] = sent[7].__class__(
        **{**{f: getattr(sent[7], f) for f in sent[7].__struct_fields__}, "is_edit": True}
    )
    store.append_ticks(sent)
    key = store.keys.ticks("WDOFUT")
    raw = raw_command(valkey_client, key, "XRANGE", key, "-", "+")
    assert len(raw) == 500 and isinstance(raw[0][1], list)
    _same(columns_of(raw), columns_from_entries(valkey_client.xrange(key)))
    assert list(id_ms(raw)) == [int(i.split(b"-")[0]) for i, _ in raw]
    assert columns_of(raw).is_edit[7] and columns_of(raw).timestamp_ms[0] == BASE_MS


def test_entries_of_another_shape_take_the_per_entry_path(valkey_client: valkey.Valkey) -> None:
    fields = {
        "timestamp_ms": BASE_MS, "trade_id": 1, "price": 5400.5, "volume": 54005.0, "quantity": 1,
        "buyer": 3, "seller": 8, "trade_type": 2, "aggressor": "buy", "is_edit": "false", "seq": 1,
    }  # fmt: skip
    valkey_client.xadd("odd", fields)  # written by hand: no symbol or timestamp, another field order
    valkey_client.xadd("odd", {**fields, "trade_id": 2, "seq": 2, "extra": "x"})
    raw = raw_command(valkey_client, "odd", "XRANGE", "odd", "-", "+")
    cols = columns_of(raw)
    assert (
        list(cols.trade_id) == [1, 2] and list(cols.aggressor) == [1, 1] and list(cols.price) == [5400.5] * 2
    )


def test_an_error_reply_takes_the_client_path_and_raises_there(valkey_client: valkey.Valkey) -> None:
    import pytest

    valkey_client.set("not-a-stream", "x")
    with pytest.raises(valkey.ResponseError, match="WRONGTYPE"):
        raw_command(valkey_client, "not-a-stream", "XRANGE", "not-a-stream", "-", "+")
    assert valkey_client.ping()  # the connection that saw the error was dropped, the pool still works
