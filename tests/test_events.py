from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import msgspec
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from factories import BASE_MS, tick
from tickvault.domain.book import BookUpdate, OrderUpdate
from tickvault.domain.events import (
    B3_TZ,
    Candle,
    Event,
    Features,
    Prediction,
    Signal,
    Tick,
    decode,
    decode_tick,
    encode,
    from_fields,
    from_ms,
    from_ms_array,
    stored_ticks,
    to_fields,
    to_ms,
)
from tickvault.domain.tick_schema import AGGRESSOR_CODES, COLUMN_DTYPES, COLUMNS
from tickvault.errors import DataError

symbols = st.from_regex(r"[A-Z0-9._-]{1,32}", fullmatch=True)
millis = st.integers(min_value=0, max_value=4_102_444_800_000)  # 1970..2100
prices = st.floats(min_value=1e-6, max_value=1e9, allow_nan=False, allow_infinity=False)
money = st.floats(min_value=0, max_value=1e15, allow_nan=False, allow_infinity=False)
ints = st.integers(min_value=0, max_value=2**53)
offsets = st.sampled_from(
    [B3_TZ, UTC, timezone(timedelta(hours=-2)), timezone(timedelta(hours=5, minutes=30))]
)


@st.composite
def stamps(draw: st.DrawFn) -> dict[str, object]:
    ms = draw(millis)
    return {"timestamp": from_ms(ms, draw(offsets)), "timestamp_ms": ms}


@st.composite
def tick_events(draw: st.DrawFn) -> Tick:
    return Tick(
        symbol=draw(symbols),
        **draw(stamps()),
        trade_id=draw(ints),
        price=draw(prices),
        volume=draw(money),
        quantity=draw(ints),
        buyer=draw(ints),
        seller=draw(ints),
        trade_type=draw(st.integers(0, 20)),
        aggressor=draw(st.sampled_from(["buy", "sell", "none"])),
        is_edit=draw(st.booleans()),
        seq=draw(ints),
    )


@st.composite
def book_events(draw: st.DrawFn) -> BookUpdate:
    action = draw(st.sampled_from(["add", "update", "delete", "clear"]))
    return BookUpdate(
        symbol=draw(symbols),
        **draw(stamps()),
        side=draw(st.sampled_from(["bid", "ask", "none"] if action == "clear" else ["bid", "ask"])),
        price=draw(prices),
        quantity=draw(ints),
        orders=draw(st.integers(0, 1000)),
        action=action,
        received_ms=draw(millis),
        seq=draw(ints),
        flags=draw(st.integers(0, 3)),
    )


@st.composite
def order_events(draw: st.DrawFn) -> OrderUpdate:
    action = draw(st.sampled_from(["add", "update", "delete", "clear"]))
    return OrderUpdate(
        symbol=draw(symbols),
        **draw(stamps()),
        side=draw(st.sampled_from(["bid", "ask", "none"] if action == "clear" else ["bid", "ask"])),
        price=draw(prices),
        quantity=draw(ints),
        order_id=draw(ints),
        agent=draw(st.integers(0, 5000)),
        action=action,
        received_ms=draw(millis),
        seq=draw(ints),
        flags=draw(st.integers(0, 3)),
    )


@st.composite
def candle_events(draw: st.DrawFn) -> Candle:
    values = sorted(draw(st.lists(prices, min_size=4, max_size=4)))
    low, a, b, high = values
    o, c = draw(st.permutations([a, b]))
    return Candle(
        symbol=draw(symbols),
        **draw(stamps()),
        timeframe=draw(st.sampled_from(["1m", "5m", "15m", "1h", "1d"])),
        open=o,
        high=high,
        low=low,
        close=c,
        volume=draw(money),
        quantity=draw(ints),
        trades=draw(ints),
        vwap=draw(st.floats(min_value=low, max_value=high)),
        buy_quantity=draw(ints),
        sell_quantity=draw(ints),
    )


names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_0123456789", min_size=1, max_size=24)
probs = st.floats(min_value=0, max_value=1)


@st.composite
def feature_events(draw: st.DrawFn) -> Features:
    values = draw(
        st.dictionaries(names, st.one_of(st.floats(allow_nan=False, allow_infinity=False), names, st.none()))
    )
    return Features(symbol=draw(symbols), **draw(stamps()), values=values)


@st.composite
def prediction_events(draw: st.DrawFn) -> Prediction:
    return Prediction(
        symbol=draw(symbols),
        **draw(stamps()),
        model=draw(names),
        probabilities=draw(st.dictionaries(names, probs)),
    )


@st.composite
def signal_events(draw: st.DrawFn) -> Signal:
    return Signal(
        symbol=draw(symbols),
        **draw(stamps()),
        action=draw(st.sampled_from(["BUY", "SELL", "HOLD"])),
        confidence=draw(probs),
        model=draw(names),
    )


ANY_EVENT = st.one_of(
    tick_events(),
    book_events(),
    order_events(),
    candle_events(),
    feature_events(),
    prediction_events(),
    signal_events(),
)


@given(ANY_EVENT)
def test_json_round_trip_every_event_type(event: object) -> None:
    assert decode(encode(event), type(event)) == event  # type: ignore[arg-type]


@given(ANY_EVENT)
def test_stream_fields_round_trip_restore_types(event: object) -> None:
    fields = to_fields(event)  # type: ignore[arg-type]
    assert all(isinstance(v, str) for v in fields.values())
    back = from_fields(fields, type(event))  # type: ignore[arg-type]
    assert back == event
    for name in back.__struct_fields__:
        assert type(getattr(back, name)) is type(getattr(event, name)), name


def test_every_event_type_is_covered() -> None:
    """ANY_EVENT draws these: a new event type must join them."""
    assert set(Event.__subclasses__()) == {
        Tick,
        BookUpdate,
        OrderUpdate,
        Candle,
        Features,
        Prediction,
        Signal,
    }


def test_stream_fields_are_typed_not_python_reprs() -> None:
    """Guide defect 3: str(v) stored None as 'None' and False as 'False' (truthy)."""
    fields = to_fields(tick(is_edit=False))
    assert fields["is_edit"] == "false"
    back = from_fields(fields, Tick)
    assert back.is_edit is False and isinstance(back.quantity, int) and isinstance(back.trade_id, int)


def _payload(**changes: object) -> bytes:
    raw = msgspec.json.decode(encode(tick(trade_type=2)))
    raw.update(changes)
    return msgspec.json.encode({k: v for k, v in raw.items() if v is not ...})


@pytest.mark.parametrize(
    ("payload", "field", "words"),
    [
        (_payload(price=-1.0), "price", "positive"),
        (_payload(price=0.0), "price", "positive"),
        (b'{"price": NaN}', "json", "malformed"),
        (_payload(volume=-5.0), "volume", "negative"),
        (_payload(quantity=-1), "quantity", "negative"),
        (_payload(quantity="3"), "quantity", "Expected `int`"),
        (_payload(symbol=""), "symbol", "empty"),
        (_payload(symbol="WDO FUT"), "symbol", "must match"),
        (_payload(symbol="WDO{X}"), "symbol", "must match"),
        (_payload(symbol="WDO\nX"), "symbol", "must match"),
        (_payload(symbol="wdofut"), "symbol", "must match"),
        (_payload(symbol="A" * 33), "symbol", "must match"),
        (_payload(timestamp="2025-11-24T13:00:00"), "timestamp", "no timezone"),
        (_payload(timestamp_ms=BASE_MS + 1), "timestamp_ms", "does not match"),
        (_payload(aggressor="up"), "aggressor", "Invalid enum"),
        (_payload(extra=1), "extra", "unknown field"),
        (_payload(trade_id=...), "trade_id", "missing"),
        (b"\x00\xff garbage", "json", "malformed"),
        (b'{"symbol": "WDOFUT"', "json", "malformed"),
        (b"[1, 2, 3]", "message", "Expected `object`"),
    ],
)
def test_each_invalid_input_class_has_its_own_message(payload: bytes, field: str, words: str) -> None:
    with pytest.raises(DataError) as err:
        decode_tick(payload)
    assert err.value.field == field
    assert words in str(err.value)


def test_nan_and_infinite_prices_are_refused_on_construction() -> None:
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(DataError, match="price: must be a finite number"):
            tick(price=bad)


def test_naive_timestamp_refused_on_construction() -> None:
    with pytest.raises(DataError, match="no timezone"):
        Tick(
            symbol="WDOFUT",
            timestamp=datetime(2025, 11, 24, 13),
            timestamp_ms=BASE_MS,
            trade_id=1,
            price=1.0,
            volume=1.0,
            quantity=1,
        )


def test_candle_with_ohlc_out_of_order_refused() -> None:
    with pytest.raises(DataError, match="OHLC out of order"):
        Candle(
            symbol="WDOFUT",
            timestamp=from_ms(BASE_MS),
            timestamp_ms=BASE_MS,
            timeframe="1m",
            open=10.0,
            high=9.0,
            low=8.0,
            close=8.5,
            volume=1.0,
            quantity=1,
            trades=1,
            vwap=9.0,
        )


def test_signal_and_prediction_bounds() -> None:
    stamp = {"timestamp": from_ms(BASE_MS), "timestamp_ms": BASE_MS}
    with pytest.raises(DataError, match="confidence"):
        Signal(symbol="WDOFUT", **stamp, action="BUY", confidence=1.5)
    with pytest.raises(DataError, match="action"):
        Signal(symbol="WDOFUT", **stamp, action="BUYNOW", confidence=0.5)  # type: ignore[arg-type]
    with pytest.raises(DataError, match="probabilities.up"):
        Prediction(symbol="WDOFUT", **stamp, model="m", probabilities={"up": 1.2})


def test_aggressor_follows_profitdll_trade_types() -> None:
    assert tick(trade_type=2).aggressor == "buy"
    assert tick(trade_type=3).aggressor == "sell"
    assert tick(trade_type=1).aggressor == "none"


def test_ms_conversion_is_exact_and_in_b3_time() -> None:
    t = from_ms(BASE_MS + 7)
    assert t.utcoffset() == timedelta(hours=-3)
    assert to_ms(t) == BASE_MS + 7
    assert tick(ts_ms=BASE_MS).session == "20251124"


# -- Ticks read back from the store (`stored_ticks`: the store replay's input) ------------------------


@pytest.mark.parametrize(
    "first",
    [
        "2025-11-24T09:00:00-03:00",  # one offset all day (no DST since 2019)
        "2018-11-03T23:30:00-03:00",  # the clock jumps 00:00 -> 01:00 (DST starts)
        "2019-02-16T22:30:00-02:00",  # 23:00-23:59 twice (DST ends): fold 1 the second time
    ],
)
def test_from_ms_array_is_from_ms_of_each_value_across_offset_changes(first: str) -> None:
    start = to_ms(datetime.fromisoformat(first))
    ms = start + np.arange(0, 3 * 3_600_000, 61_013, dtype=np.int64)
    made = from_ms_array(ms)
    expected = [from_ms(m) for m in ms.tolist()]
    assert made == expected
    assert [(d.isoformat(), d.fold, d.tzinfo) for d in made] == [
        (d.isoformat(), d.fold, d.tzinfo) for d in expected
    ]


def test_stored_ticks_equal_validated_ticks_and_leave_the_checks_on() -> None:
    ticks = [
        tick("WDOFUT", BASE_MS + i * 7, i + 1, 5400.0 + i, i % 5 + 1, trade_type=2 + i % 3, is_edit=i == 4)
        for i in range(10)
    ]
    columns = {
        name: np.array([getattr(t, name) for t in ticks], dtype=COLUMN_DTYPES[name])
        for name in COLUMNS
        if name not in ("aggressor", "seq")
    }
    columns["aggressor"] = np.array([AGGRESSOR_CODES.index(t.aggressor) for t in ticks], dtype=np.int8)
    made = stored_ticks([t.symbol for t in ticks], columns)
    assert made == [msgspec.structs.replace(t, seq=0) for t in ticks]
    assert all(type(t) is Tick for t in made)
    # a mismatched column ends the build with an error, and the checks are back on either way
    with pytest.raises(ValueError):
        stored_ticks(["WDOFUT"] * 9, columns)
    with pytest.raises(DataError, match="price"):
        Tick(symbol="WDOFUT", timestamp=from_ms(BASE_MS), timestamp_ms=BASE_MS, trade_id=1, price=-1.0,
             volume=1.0, quantity=1)  # fmt: skip


def test_only_the_store_replay_builds_ticks_unchecked() -> None:
    """The trusted constructor is reached from the store's read-back only: a file, the bus or the
    DLL must never bypass the checks."""
    import tickvault

    root = Path(tickvault.__file__).parent

    def users(name: str) -> list[str]:
        return sorted(str(p.relative_to(root)) for p in root.rglob("*.py") if name in p.read_text())

    assert users("stored_ticks") == ["domain/events.py", "sources/store_replay.py"]
    assert users("_trusted") == ["domain/events.py"]  # the switch itself: nobody else turns it on
