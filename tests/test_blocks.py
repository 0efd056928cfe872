"""The history block codec: exact round trips of any columns, compact blocks of realistic sessions,
damaged data refused with DataError, and the Columns helpers. Pure logic, no Valkey."""

from __future__ import annotations

import struct
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tickvault.errors import DataError
from tickvault.store.block_codec import (
    AGGRESSOR_CODES,
    COLUMNS,
    MAGIC,
    VERSION,
    Columns,
    block_header,
    decode_block,
    encode_block,
)

DTYPES = {
    "timestamp_ms": np.int64, "trade_id": np.int64, "price": np.float64, "volume": np.float64,
    "quantity": np.int64, "buyer": np.int64, "seller": np.int64, "trade_type": np.int64,
    "aggressor": np.int8, "is_edit": np.bool_, "seq": np.int64,
}  # fmt: skip
START_MS = 1_764_000_000_000  # 2025-11-24 13:00 in B3 time (16:00 UTC)
BROKERS = np.array([3, 8, 13, 15, 16, 21, 27, 39, 40, 45, 58, 72, 77, 85, 88, 90, 93, 107, 114, 120,
                    127, 129, 147, 172, 174, 190, 226, 238, 262, 308, 386, 1099, 1130, 1618, 1855,
                    1982, 2197, 2379, 2640, 4090])  # fmt: skip


def assert_same(got: Columns, want: Columns) -> None:
    """Bit-for-bit equality, dtypes included (-0.0 is not 0.0, NaN payloads count)."""
    assert len(got) == len(want)
    for name in COLUMNS:
        g, w = getattr(got, name), getattr(want, name)
        assert g.dtype == DTYPES[name], name
        assert g.tobytes() == np.asarray(w, DTYPES[name]).tobytes(), name


def round_trip(cols: Columns, **kw: int) -> bytes:
    data = encode_block(cols, **kw)
    assert_same(decode_block(data), cols)
    return data


def session(n: int, *, tick: float, center: float, multiplier: float, seed: int) -> Columns:
    """A realistic B3 future session: aggressive orders arriving at ~100 trades/s, each filling one to
    a dozen resting orders in the same millisecond at the same or worse prices; prices on the tick
    grid moving by 1-3 ticks; mostly 1-5 contracts, rare 100s; ~40 brokers, a few very active."""
    rng = np.random.default_rng(seed)
    sizes = np.minimum(rng.geometric(0.45, n), 12)  # trades per aggressive order
    orders = int(np.searchsorted(np.cumsum(sizes), n)) + 1
    order = np.repeat(np.arange(orders), sizes[:orders])[:n]
    first = np.r_[True, order[1:] != order[:-1]]
    order_ms = START_MS + np.cumsum(rng.exponential(10.0 * n / orders, orders).astype(np.int64))
    side = rng.integers(1, 3, orders).astype(np.int8)[order]  # 1 buy, 2 sell
    move = rng.choice([-3, -2, -1, 0, 1, 2, 3], n, p=[0.03, 0.07, 0.2, 0.4, 0.2, 0.07, 0.03])
    sweep = np.where(side == 1, 1, -1) * rng.binomial(1, 0.3, n)  # an order walks the book
    walk = np.cumsum(np.where(first, move, sweep))
    ticks = np.abs((walk + 120) % 240 - 120) - 60  # reflected: stays within +-60 ticks of center
    price = center + tick * ticks
    quantity = rng.choice([1, 1, 1, 1, 2, 2, 3, 4, 5, 5, 10, 15, 20, 25, 50], n)
    quantity[rng.random(n) < 0.004] = 100
    weights = 1.0 / np.arange(1, len(BROKERS) + 1) ** 1.1
    aggressor_broker = rng.choice(BROKERS, orders, p=weights / weights.sum())[order]
    resting_broker = rng.choice(BROKERS, n, p=weights / weights.sum())
    return Columns(
        timestamp_ms=order_ms[order],
        trade_id=np.arange(150_001, 150_001 + n),
        price=price,
        volume=price * quantity.astype(np.float64) * multiplier,
        quantity=quantity.astype(np.int64),
        buyer=np.where(side == 1, aggressor_broker, resting_broker),
        seller=np.where(side == 1, resting_broker, aggressor_broker),
        trade_type=side.astype(np.int64) + 1,  # ProfitDLL: 2 buy aggression, 3 sell aggression
        aggressor=side,
        is_edit=np.zeros(n, np.bool_),
        seq=np.arange(7, 7 + n),
    )


def wdo(n: int, seed: int = 1) -> Columns:
    return session(n, tick=0.5, center=5400.0, multiplier=10.0, seed=seed)


def win(n: int, seed: int = 2) -> Columns:
    return session(n, tick=5.0, center=128_000.0, multiplier=0.2, seed=seed)


# -- any columns come back exactly -------------------------------------------------------------------

int64s = st.integers(-(2**63), 2**63 - 1)
floats = st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=True)


@st.composite
def int_column(draw: st.DrawFn, n: int) -> np.ndarray:
    """Arbitrary int64s, or the shapes the codec packs specially: few values, steps, near +-2^63."""
    shape = draw(st.sampled_from(["any", "small", "few", "step", "walk", "edge"]))
    if shape == "any":
        return draw(hnp.arrays(np.int64, n, elements=int64s))
    if shape == "small":
        lo = draw(int64s.filter(lambda v: v < 2**63 - 300))
        return lo + draw(
            hnp.arrays(np.int64, n, elements=st.integers(0, draw(st.sampled_from([1, 3, 15, 255]))))
        )
    if shape == "few":
        values = np.array(draw(st.lists(int64s, min_size=1, max_size=20)), np.int64)
        return values[draw(hnp.arrays(np.int64, n, elements=st.integers(0, len(values) - 1)))]
    if shape == "step":
        return draw(int64s) + np.arange(n, dtype=np.int64) * draw(st.integers(-(2**40), 2**40))
    if shape == "walk":
        steps = draw(hnp.arrays(np.int64, n, elements=st.integers(-1000, 1000)))
        return draw(st.integers(-(2**62), 2**62)) + np.cumsum(steps * draw(st.sampled_from([1, 5, 10, 1000])))
    edge = [-(2**63), -(2**63) + 1, -1, 0, 1, 2**63 - 2, 2**63 - 1]
    return np.array(draw(st.lists(st.sampled_from(edge), min_size=n, max_size=n)), np.int64)


@st.composite
def float_column(draw: st.DrawFn, n: int) -> np.ndarray:
    shape = draw(st.sampled_from(["any", "grid", "bits", "few"]))
    if shape == "any":  # -0.0, subnormals, inf, NaN
        return draw(hnp.arrays(np.float64, n, elements=floats))
    if shape == "grid":  # on a decimal grid, but maybe one value is not
        k = draw(st.integers(0, 9))
        ints = draw(hnp.arrays(np.int64, n, elements=st.integers(-(10**12), 10**12)))
        out = ints / 10.0**k
        if n and draw(st.booleans()):
            out[draw(st.integers(0, n - 1))] = draw(floats)
        return out
    if shape == "bits":  # any 64-bit pattern: NaN payloads, signalling NaNs
        return draw(hnp.arrays(np.uint64, n, elements=st.integers(0, 2**64 - 1))).view(np.float64)
    values = np.array(draw(st.lists(floats, min_size=1, max_size=5)))
    return values[draw(hnp.arrays(np.int64, n, elements=st.integers(0, len(values) - 1)))]


@st.composite
def columns(draw: st.DrawFn) -> Columns:
    n = draw(st.integers(0, 500))
    price = draw(float_column(n))
    quantity = draw(int_column(n))
    multiplier = draw(st.sampled_from([None, 1.0, 0.2, 10.0, 50.0, 0.25, 3.7]))
    if multiplier is None:
        volume = draw(float_column(n))
    else:
        with np.errstate(all="ignore"):
            volume = price * quantity.astype(np.float64) * multiplier
        if n and draw(st.booleans()):  # a few rows that do not follow the rule
            wrong = draw(hnp.arrays(np.int64, draw(st.integers(1, 3)), elements=st.integers(0, n - 1)))
            volume[wrong] = draw(floats)
    trade_type = (
        draw(int_column(n))
        if draw(st.booleans())
        else draw(hnp.arrays(np.int64, n, elements=st.integers(0, 4)))
    )
    if draw(st.booleans()):
        aggressor = np.select([trade_type == 2, trade_type == 3], [1, 2], 0).astype(np.int8)
    else:
        aggressor = draw(hnp.arrays(np.int8, n))
    ms = draw(int_column(n))
    if draw(st.booleans()):  # ms timestamps, late ticks out of order
        ms = START_MS + np.abs(ms % 100_000)
    return Columns(
        timestamp_ms=ms, trade_id=draw(int_column(n)), price=price, volume=volume, quantity=quantity,
        buyer=draw(int_column(n)), seller=draw(int_column(n)), trade_type=trade_type, aggressor=aggressor,
        is_edit=draw(hnp.arrays(np.bool_, n)), seq=draw(int_column(n)),
    )  # fmt: skip


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(columns())
def test_any_columns_round_trip_bit_for_bit(cols: Columns) -> None:
    data = round_trip(cols)
    header = block_header(data)
    assert header.rows == len(cols)
    assert header.version == VERSION
    if len(cols):
        assert (header.first_ms, header.last_ms) == (cols.timestamp_ms.min(), cols.timestamp_ms.max())


@pytest.mark.parametrize("n", [0, 1, 2, 3, 7, 8, 9])
def test_tiny_blocks(n: int) -> None:
    cols = wdo(50).take(np.arange(n))
    round_trip(cols)
    rng = np.random.default_rng(n)
    odd = Columns(
        timestamp_ms=rng.integers(-(2**63), 2**63 - 1, n, dtype=np.int64, endpoint=True),
        trade_id=np.full(n, 2**63 - 1), price=np.full(n, -0.0), volume=np.full(n, 5e-324),
        quantity=np.full(n, -(2**63)), buyer=np.arange(n), seller=-np.arange(n),
        trade_type=np.zeros(n, np.int64), aggressor=np.full(n, -128, np.int8), is_edit=np.ones(n, np.bool_),
        seq=np.arange(n)[::-1].copy(),
    )  # fmt: skip
    round_trip(odd)


def test_floats_off_any_grid_and_special_values() -> None:
    specials = np.array(
        [0.0, -0.0, 5e-324, -5e-324, 2.2250738585072014e-308, 1.7976931348623157e308, np.inf, -np.inf,
         np.nan, 0.1, 1 / 3, 5400.5, 5400.500000000001, 1e22, 1e-22]
    )  # fmt: skip
    payload_nans = (np.uint64(0x7FF0000000000001) + np.arange(5, dtype=np.uint64)).view(np.float64)
    values = np.concatenate([specials, payload_nans, -payload_nans])
    base = wdo(len(values))
    for price in (values, np.sort(np.abs(values[np.isfinite(values)]))):
        n = len(price)
        cols = base.take(np.arange(n))
        round_trip(Columns(**{**_fields(cols), "price": price, "volume": price[::-1].copy()}))


def test_prices_on_a_grid_of_k_decimals_and_negative_zero() -> None:
    base = wdo(2000)
    for k in range(10):
        price = np.round(base.price * 1.001 + 0.123456789, k)
        round_trip(Columns(**{**_fields(base), "price": price, "volume": price * base.quantity * 10.0}))
    with_zero = base.price.copy()
    with_zero[::7] = -0.0  # on the grid as a number, but its sign bit must survive
    round_trip(Columns(**{**_fields(base), "price": with_zero}))


def test_wide_price_range_falls_back_from_a_dictionary_to_differences() -> None:
    base = wdo(50_000)
    drift = 100.0 + np.arange(50_000) * 0.01  # 50k distinct prices on a 0.01 grid
    data = round_trip(Columns(**{**_fields(base), "price": drift, "volume": drift * base.quantity * 10.0}))
    assert len(data) / 50_000 <= 8


def test_volume_rules_and_exceptions() -> None:
    base = win(5000)
    qty = base.quantity.astype(np.float64)
    for volume in (
        base.price * qty * 0.2,
        base.price * qty / 5.0,  # what a decimal source gives for * 0.2
        base.price * qty * 0.2 + np.where(np.arange(5000) % 97 == 0, 0.01, 0.0),  # a few odd rows
        base.price * qty * 7.3,
        np.zeros(5000),
    ):
        round_trip(Columns(**{**_fields(base), "volume": volume}))


def test_unsorted_timestamps_and_late_ticks() -> None:
    cols = wdo(20_000)
    rng = np.random.default_rng(5)
    ms = cols.timestamp_ms.copy()
    late = rng.choice(len(ms), 300, replace=False)
    ms[late] -= rng.integers(1, 3_600_000, 300)  # trades reported late (edits, history downloads)
    shuffled = Columns(**{**_fields(cols), "timestamp_ms": ms, "is_edit": np.isin(np.arange(len(ms)), late)})
    data = round_trip(shuffled)
    assert len(data) / len(ms) <= 8
    header = block_header(data)
    assert (header.first_ms, header.last_ms) == (ms.min(), ms.max())
    round_trip(shuffled.take(rng.permutation(len(ms))))  # any order at all


def test_inputs_of_other_dtypes_are_accepted() -> None:
    cols = wdo(100)
    narrow = Columns(**{name: getattr(cols, name).astype(np.int32) if name in ("quantity", "buyer") else
                        getattr(cols, name) for name in COLUMNS})  # fmt: skip
    assert_same(decode_block(encode_block(narrow)), cols)
    lists = Columns(**{name: getattr(cols, name).tolist() for name in COLUMNS})  # type: ignore[arg-type]
    assert_same(decode_block(encode_block(lists)), cols)


def test_levels_and_threads_give_the_same_columns() -> None:
    cols = wdo(30_000)
    assert {bytes(decode_block(encode_block(cols, level=lvl)).price) for lvl in (-5, 1, 3, 9)} == {
        cols.price.tobytes()
    }
    parts = [wdo(5_000, seed=s) for s in range(8)]
    with ThreadPoolExecutor(4) as pool:
        back = list(pool.map(lambda c: decode_block(encode_block(c)), parts * 3))
    for got, want in zip(back, parts * 3, strict=True):
        assert_same(got, want)


# -- realistic sessions are small -------------------------------------------------------------------


@pytest.mark.parametrize("make", [wdo, win], ids=["WDO", "WIN"])
@pytest.mark.parametrize("n", [10_000, 40_000, 100_000])
def test_realistic_sessions_round_trip_within_8_bytes_a_tick(make: object, n: int) -> None:
    cols = make(n)  # type: ignore[operator]
    data = round_trip(cols)
    assert len(data) / n <= 8, f"{len(data) / n:.2f} B/tick"
    # and the codec uses what the data offers: a full block is well under half the budget
    assert len(data) / n <= 4, f"{len(data) / n:.2f} B/tick"


def test_realistic_session_split_into_blocks_and_concatenated() -> None:
    cols = win(60_000, seed=9)
    bounds = [0, 1, 17_000, 17_001, 45_000, 60_000]
    parts = [
        decode_block(encode_block(cols.take(np.arange(a, b))))
        for a, b in zip(bounds[:-1], bounds[1:], strict=True)
    ]
    assert_same(Columns.concat(parts), cols)


# -- damaged data ----------------------------------------------------------------------------------------


def test_bad_magic_version_and_truncation_raise_data_error() -> None:
    data = encode_block(wdo(3000))
    with pytest.raises(DataError, match="not a tickvault history block"):
        decode_block(b"XXXX" + data[4:])
    with pytest.raises(DataError, match="not a tickvault history block"):
        block_header(b"")
    with pytest.raises(DataError, match="unsupported history block format: version 99"):
        decode_block(data[:4] + bytes([99]) + data[5:])
    legacy = MAGIC + struct.pack("<Iqq", 3000, 1, 2) + data[28:]  # the unversioned first layout
    with pytest.raises(DataError, match="unversioned"):
        block_header(legacy)
    for cut in (0, 3, 4, 27, 28, 29, 31, 32, 40, 100, len(data) // 2, len(data) - 5, len(data) - 1):
        with pytest.raises(DataError, match="history block"):
            decode_block(data[:cut])
    with pytest.raises(DataError, match="damaged"):
        decode_block(data + b"\x00")


def test_damaged_header_fields_are_caught_by_the_checksummed_copy() -> None:
    data = bytearray(encode_block(wdo(3000)))
    for offset in (8, 12, 20, 27):  # rows, first, last
        bad = data.copy()
        bad[offset] ^= 0x01
        with pytest.raises(DataError, match="damaged"):
            decode_block(bytes(bad))


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_any_damage_raises_data_error_or_changes_nothing(data: st.DataObject) -> None:
    cols = wdo(400, seed=3)
    block = bytearray(encode_block(cols))
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(block) - 1))
        block[pos] = data.draw(st.integers(0, 255))
    try:
        back = decode_block(bytes(block))
    except DataError as exc:
        assert "history block" in str(exc)
    else:
        assert_same(back, cols)  # only the reserved bytes, or a byte set to its own value


def test_mismatched_columns_are_refused_on_encode() -> None:
    cols = wdo(10)
    with pytest.raises(DataError, match="equal length"):
        encode_block(Columns(**{**_fields(cols), "price": cols.price[:-1]}))


# -- header without decompressing -----------------------------------------------------------------


def test_header_reads_span_and_rows_from_the_first_bytes() -> None:
    cols = wdo(5000)
    data = encode_block(cols)
    header = block_header(data[:28])  # the header alone: nothing to decompress
    assert (header.rows, header.version) == (5000, VERSION)
    assert (header.first_ms, header.last_ms) == (cols.timestamp_ms[0], cols.timestamp_ms[-1])
    assert_same(decode_block(bytearray(data)), cols)  # any bytes-like value, as clients return them
    assert_same(decode_block(memoryview(data)), cols)
    empty = block_header(encode_block(Columns.empty()))
    assert (empty.rows, empty.first_ms, empty.last_ms) == (0, 0, 0)
    assert data[:4] == MAGIC


# -- Columns helpers ---------------------------------------------------------------------------------


def test_empty_has_every_column_with_its_dtype() -> None:
    empty = Columns.empty()
    assert len(empty) == 0
    assert {name: getattr(empty, name).dtype for name in COLUMNS} == {
        k: np.dtype(v) for k, v in DTYPES.items()
    }
    assert_same(decode_block(encode_block(empty)), empty)
    assert AGGRESSOR_CODES == ("none", "buy", "sell")


def test_concat() -> None:
    cols = wdo(100)
    assert_same(Columns.concat([]), Columns.empty())
    assert Columns.concat([cols]) is cols
    parts = [cols.take(np.arange(0, 30)), Columns.empty(), cols.take(np.arange(30, 100))]
    assert_same(Columns.concat(parts), cols)


def test_slice_time_sorted_is_inclusive_and_keeps_whole_milliseconds() -> None:
    ms = np.array([10, 10, 11, 12, 12, 12, 15, 20], np.int64)
    cols = Columns(**{**_fields(wdo(len(ms))), "timestamp_ms": ms})
    assert cols.slice_time(0, 100) is cols
    assert cols.slice_time(12, 12).timestamp_ms.tolist() == [12, 12, 12]
    assert cols.slice_time(11, 15).timestamp_ms.tolist() == [11, 12, 12, 12, 15]
    assert cols.slice_time(13, 14).timestamp_ms.tolist() == []
    assert cols.slice_time(20, 10).timestamp_ms.tolist() == []
    assert cols.slice_time(-(2**70), 2**70) is cols  # bounds beyond int64 are clamped
    part = cols.slice_time(10, 11)
    assert part.trade_id.tolist() == cols.trade_id[:3].tolist()
    assert all(len(getattr(part, name)) == 3 for name in COLUMNS)
    assert len(Columns.empty().slice_time(0, 10)) == 0


def test_slice_time_unsorted_keeps_stored_order() -> None:
    ms = np.array([30, 10, 20, 10, 40], np.int64)
    cols = Columns(**{**_fields(wdo(len(ms))), "timestamp_ms": ms})
    part = cols.slice_time(10, 30)
    assert part.timestamp_ms.tolist() == [30, 10, 20, 10]
    assert part.trade_id.tolist() == cols.trade_id[:4].tolist()


def test_decoded_arrays_are_writable_and_independent() -> None:
    data = encode_block(wdo(1000))
    first, second = decode_block(data), decode_block(data)
    first.price[:] = 0.0
    first.timestamp_ms[:] = 0
    assert second.price.min() > 0 and second.timestamp_ms.min() > 0


def _fields(cols: Columns) -> dict[str, np.ndarray]:
    return {name: getattr(cols, name) for name in COLUMNS}
