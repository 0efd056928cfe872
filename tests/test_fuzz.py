"""Fuzzing the parsers that face the outside: bus frames, time arguments, tick files.
Whatever comes in, the answer is a value or a DataError naming the problem; never another exception."""

from __future__ import annotations

import string
from pathlib import Path

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from factories import ticks
from tickvault.batch import decode_frames
from tickvault.errors import DataError
from tickvault.events import Tick, encode
from tickvault.sources.files import BadRow, read_ticks
from tickvault.timeparse import parse_time

VALID = encode(ticks(1)[0])
FIELDS = list(msgspec.json.decode(VALID))
json_values = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=40),
    st.lists(st.integers(), max_size=3),
)  # fmt: skip


@st.composite
def mutated_payloads(draw: st.DrawFn) -> bytes:
    raw = msgspec.json.decode(VALID)
    for _ in range(draw(st.integers(1, 3))):
        field = draw(st.sampled_from([*FIELDS, "extra"]))
        if draw(st.booleans()):
            raw[field] = draw(json_values)
        else:
            raw.pop(field, None)
    return msgspec.json.encode(raw)


frames = st.one_of(
    st.lists(st.binary(max_size=200), min_size=0, max_size=4),
    st.tuples(st.sampled_from([b"tick_WDOFUT", b"tick_", b"x"]), mutated_payloads()).map(list),
    st.tuples(st.just(b"tick_WDOFUT"), st.binary(max_size=300)).map(list),
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(frames, max_size=20))
def test_frame_decoder_accepts_or_rejects_every_message(messages: list[list[bytes]]) -> None:
    batch = [[b"tick_WDOFUT", VALID], *messages, [b"tick_WDOFUT", VALID]]
    decoded = decode_frames(batch)
    assert len(decoded.ticks) + len(decoded.rejected) == len(batch)
    assert all(isinstance(r.error, DataError) and str(r.error) for r in decoded.rejected)
    assert decoded.ticks[0].trade_id == 1 and decoded.ticks[-1].trade_id == 1  # the valid ones survive


@given(st.text(alphabet=string.printable, max_size=40))
def test_time_parser_returns_aware_time_or_data_error(text: str) -> None:
    try:
        moment = parse_time(text)
    except DataError as exc:
        assert exc.field == "time" and str(exc)
    else:
        assert moment.tzinfo is not None


@settings(max_examples=100, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.text(alphabet=string.printable, max_size=60), max_size=8))
def test_csv_reader_yields_ticks_or_bad_rows(tmp_path: Path, rows: list[str]) -> None:
    path = tmp_path / "fuzz.csv"
    header = "timestamp_ms,symbol,trade_id,price,quantity,is_edit"
    path.write_text("\n".join([header, "1764000000000,WDOFUT,1,5400.0,1,false", *rows]) + "\n")
    items = list(read_ticks(path))
    assert isinstance(items[0], Tick)
    for item in items:
        assert isinstance(item, Tick | BadRow)
        if isinstance(item, BadRow):
            assert item.line >= 2 and str(item.error)
