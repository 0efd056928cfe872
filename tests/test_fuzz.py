"""Fuzzing the parsers that face the outside: bus frames, time arguments, tick files.
Whatever comes in, the answer is a value or a DataError naming the problem; never another exception."""

from __future__ import annotations

import string
from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from factories import ticks
from tickvault.domain.events import Tick, encode
from tickvault.domain.timeparse import parse_time
from tickvault.errors import DataError
from tickvault.recorder.frames import decode_frames
from tickvault.sources.files import BadRow, read_ticks

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


@given(
    st.one_of(
        st.integers(),
        st.text(alphabet="+-0123456789.:TZdhms", max_size=30),
        st.from_regex(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", fullmatch=True),
    )
)
def test_time_parser_refuses_any_number_out_of_range_with_a_data_error(value: int | str) -> None:
    """Epoch ms, offsets and dates no datetime can hold: a DataError, not ValueError/OverflowError."""
    try:
        moment = parse_time(value)
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


_B3_HEADER = "DataNegocio;CodigoInstrumento;PrecoNegocio;QuantidadeNegociada;HoraFechamento;AcaoAtualizacao"
_cell = st.one_of(
    st.text(alphabet=string.digits + ",.:/- ", max_size=14),
    st.sampled_from(["24/11/2025", "2025-11-24", "100000123", "10:00:00.5", "5412,500", "1.234,5", "0", "2"]),
    st.text(alphabet=string.printable.replace("\n", "").replace("\r", ""), max_size=10),
)


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.lists(_cell, min_size=6, max_size=6), max_size=6))
def test_other_layouts_yield_ticks_or_bad_rows(tmp_path: Path, rows: list[list[str]]) -> None:
    """B3's trade file layout (';', decimal comma, split date and clock) with any cell values."""
    path = tmp_path / "fuzz.txt"
    good = "2025-11-24;WDOZ25;5412,500;5;100000123;0"
    path.write_text("\n".join([_B3_HEADER, good, *(";".join(r) for r in rows)]) + "\n")
    items = list(read_ticks(path))
    assert isinstance(items[0], Tick) and items[0].price == 5412.5
    for item in items:
        assert isinstance(item, Tick | BadRow)
        if isinstance(item, BadRow):
            assert item.line >= 3 and str(item.error)


_parquet_columns = {
    "timestamp_ms": st.one_of(st.integers(-(2**63), 2**63 - 1), st.floats(), st.text(max_size=12)),
    "symbol": st.one_of(st.text(max_size=40), st.integers()),
    "trade_id": st.one_of(st.integers(-(2**63), 2**63 - 1), st.floats(), st.text(max_size=8)),
    "price": st.one_of(st.floats(), st.integers(-(2**63), 2**63 - 1), st.text(max_size=8)),
    "quantity": st.one_of(st.integers(-(2**63), 2**63 - 1), st.floats(), st.text(max_size=8)),
}


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_parquet_reader_yields_ticks_or_bad_rows(tmp_path: Path, data: st.DataObject) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = data.draw(st.integers(0, 6))
    columns: dict[str, list[object]] = {}
    for name, values in _parquet_columns.items():
        if data.draw(st.integers(0, 9)) == 0:
            continue  # a missing column is a clear error for the whole file
        kind = data.draw(values.map(type))  # one type per column, as a Parquet file has
        column = [data.draw(values.filter(lambda v, k=kind: type(v) is k)) for _ in range(rows)]
        columns[name] = [None if data.draw(st.integers(0, 7)) == 0 else v for v in column]
    path = tmp_path / "fuzz.parquet"
    pq.write_table(pa.table(columns) if columns else pa.table({"x": [1]}), path)
    try:
        items = list(read_ticks(path))
    except DataError as exc:
        assert exc.field and str(exc)  # a file-level problem (a missing column), named
        return
    assert len(items) == rows
    for item in items:
        assert isinstance(item, Tick | BadRow)
        if isinstance(item, BadRow):
            assert str(item.error)


_CLI_WORDS = [
    "query", "ingest", "train", "report", "cleanup", "--start", "--end", "--kind", "--format", "--symbols",
    "--output", "--limit", "--folds", "--horizon", "--fee", "--threshold", "--days", "--show", "--model",
    "--valkey-port", "--log-level", "--signal-threshold", "--features-interval-ms", "--help",
    "now", "-2h", "2025-11-24", "candles:1m", "candles:7m", "csv", "json", "parquet", "WDOFUT", "0", "-1",
    "nan", "1e309", "x.csv", "",
]  # fmt: skip


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(st.sampled_from(_CLI_WORDS), st.text(max_size=12)), max_size=7))
def test_cli_arguments_give_a_result_or_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str]
) -> None:
    from typer.testing import CliRunner

    from tickvault.app.cli import app

    monkeypatch.chdir(tmp_path)
    env = {"VALKEY_URL": "valkey://127.0.0.1:1/0", "TICKVAULT_DATA_DIR": str(tmp_path), "LOG_LEVEL": "ERROR"}
    result = CliRunner().invoke(app, args, env=env)
    # 0 done (or help), 1 a failure said in one line (here: Valkey unreachable), 2 bad input
    assert result.exit_code in (0, 1, 2), (args, result.output)
    assert result.exception is None or isinstance(result.exception, SystemExit), (args, result.exception)
    assert "Traceback" not in result.output
