"""Tick files in other layouts: B3's public trade file, Portuguese and English headers, no symbol
column, no trade ids; each read into the same Ticks, bad rows still named with their line."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tickvault.domain.events import Tick, to_ms
from tickvault.domain.timeparse import parse_time
from tickvault.errors import DataError
from tickvault.sources.files import BadRow, file_symbols, read_ticks
from tickvault.sources.layouts import fold

B3_TRADES = """\
DataReferencia;CodigoInstrumento;AcaoAtualizacao;PrecoNegocio;QuantidadeNegociada;HoraFechamento;CodigoIdentificadorNegocio;TipoSessaoPregao;DataNegocio;CodigoParticipanteComprador;CodigoParticipanteVendedor
2025-11-24;WDOZ25;0;5412,500;5;090000003;10;1;2025-11-24;3;308
2025-11-24;WDOZ25;0;5413,000;2;090000017;20;1;2025-11-24;308;85
2025-11-24;WINZ25;0;128450;1;100512250;30;1;2025-11-24;72;3
2025-11-24;WDOZ25;2;5413,000;2;090000017;20;1;2025-11-24;308;85
2025-11-24;WDOZ25;0;5413,500;1;09000;40;1;2025-11-24;3;3
"""


def _ms(text: str) -> int:
    return to_ms(parse_time(text))


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_header_names_are_folded() -> None:
    assert fold("Preço Negócio") == "preconegocio" == fold("PRECO_NEGOCIO")


def test_b3_trade_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "TradeIntraday_20251124_1.txt", B3_TRADES)
    got = list(read_ticks(path))
    ticks = [t for t in got if isinstance(t, Tick)]
    bad = [b for b in got if isinstance(b, BadRow)]
    assert [(t.symbol, t.trade_id, t.price, t.quantity, t.buyer, t.seller) for t in ticks] == [
        ("WDOZ25", 10, 5412.5, 5, 3, 308),
        ("WDOZ25", 20, 5413.0, 2, 308, 85),
        ("WINZ25", 30, 128450.0, 1, 72, 3),
    ]
    assert [t.timestamp_ms for t in ticks] == [
        _ms("2025-11-24T09:00:00.003-03:00"),
        _ms("2025-11-24T09:00:00.017-03:00"),
        _ms("2025-11-24T10:05:12.250-03:00"),
    ]
    assert ticks[0].volume == 5412.5 * 5 * 10  # WDO: 10 BRL per point
    assert [(b.line, b.error.field) for b in bad] == [(5, "AcaoAtualizacao"), (6, "timestamp")]
    assert "cancelled" in str(bad[0]) and "09000" in str(bad[1])
    assert file_symbols(path) == ["WDOZ25", "WINZ25"]


def test_portuguese_headers_with_one_date_time_column_and_sides(tmp_path: Path) -> None:
    text = (
        "Ativo,Data,Preço,Quantidade,Agressor,Negócio\n"
        "WDOFUT,24/11/2025 10:00:00.123,5400.5,3,Comprador,7\n"
        "WDOFUT,24/11/2025 10:00:01,5400,1,Vendedor,8\n"
        "WDOFUT,24/11/2025 10:00:02,5400,1,Leilão,9\n"
        "WDOFUT,24/11/2025 10:00:03,5400,1,talvez,10\n"
    )
    got = list(read_ticks(_write(tmp_path, "t.csv", text)))
    ticks = [t for t in got if isinstance(t, Tick)]
    assert [(t.aggressor, t.trade_id) for t in ticks] == [("buy", 7), ("sell", 8), ("none", 9)]
    assert ticks[0].timestamp_ms == _ms("2025-11-24T10:00:00.123-03:00")
    (bad,) = [b for b in got if isinstance(b, BadRow)]
    assert bad.line == 5 and bad.error.field == "aggressor" and "talvez" in str(bad)


def test_english_headers_without_symbol_or_trade_ids(tmp_path: Path) -> None:
    text = (
        "time\tpx\tqty\tside\n"
        "2025-11-24T10:00:00.000-03:00\t5400.5\t2\tB\n"
        "2025-11-24T10:00:00.000-03:00\t5401\t1\tS\n"
        "2025-11-25T09:00:00.000-03:00\t5410\t4\tB\n"
    )
    path = _write(tmp_path, "wdo.tsv", text)
    with pytest.raises(DataError, match="lacks symbol"):
        list(read_ticks(path))
    ticks = [t for t in read_ticks(path, symbol="WDOFUT") if isinstance(t, Tick)]
    # trades numbered per symbol and session in file order: a second read finds the same ids
    assert [(t.symbol, t.trade_id, t.aggressor) for t in ticks] == [
        ("WDOFUT", 1, "buy"),
        ("WDOFUT", 2, "sell"),
        ("WDOFUT", 1, "buy"),
    ]
    assert [t.trade_id for t in read_ticks(path, symbol="WDOFUT") if isinstance(t, Tick)] == [1, 2, 1]
    assert file_symbols(path, symbol="WDOFUT") == ["WDOFUT"]


def test_parquet_with_other_names(tmp_path: Path) -> None:
    path = tmp_path / "x.parquet"
    table = pa.table(
        {
            "ticker": ["WINFUT", "WINFUT"],
            "timestamp_ms": [_ms("2025-11-24T10:00:00-03:00"), _ms("2025-11-24T10:00:01-03:00")],
            "trade_id": [1, 2],
            "last": [128000.0, 128005.0],
            "size": [1, 3],
        }
    )
    pq.write_table(table, path)
    ticks = [t for t in read_ticks(path) if isinstance(t, Tick)]
    assert [(t.symbol, t.price, t.quantity) for t in ticks] == [
        ("WINFUT", 128000.0, 1),
        ("WINFUT", 128005.0, 3),
    ]
    assert file_symbols(path) == ["WINFUT"]


def test_a_file_missing_a_field_says_what_it_has(tmp_path: Path) -> None:
    path = _write(tmp_path, "bad.csv", "when,how much\n1,2\n")
    with pytest.raises(DataError) as err:
        list(read_ticks(path))
    assert "bad.csv lacks price, quantity" in str(err.value) and "(has when, how much)" in str(err.value)
