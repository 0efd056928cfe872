"""The bulk path's file reader (sources/tick_files.py, tick_table.py) against the row reader
(files.read_ticks), the oracle: every layout, every kind of bad row, chunks of any size, .gz and
.zip, give the same ticks in the same order and the same bad rows with the same line and reason."""

from __future__ import annotations

import gzip
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tickvault.errors import DataError
from tickvault.sources.files import BadRow, read_ticks
from tickvault.sources.tick_files import expand, members
from tickvault.store.block_codec import AGGRESSOR_CODES

Row = tuple[object, ...]

B3 = """\
DataReferencia;CodigoInstrumento;AcaoAtualizacao;PrecoNegocio;QuantidadeNegociada;HoraFechamento;CodigoIdentificadorNegocio;TipoSessaoPregao;DataNegocio;CodigoParticipanteComprador;CodigoParticipanteVendedor
2025-11-24;WDOZ25;0;5412,500;5;090000003;10;1;2025-11-24;3;308
2025-11-24;WDOZ25;0;5413,000;2;090000017;20;1;2025-11-24;308;85
2025-11-24;WINZ25;0;128450;1;100512250;30;1;2025-11-24;72;3
2025-11-24;WDOZ25;2;5413,000;2;090000017;20;1;2025-11-24;308;85
2025-11-24;WDOZ25;0;5413,500;1;09000;40;1;2025-11-24;3;3

2025-11-24;WDOZ25;0;5413,500;1;090000;40;1;2025-11-24;3
2025-11-24;WDO Z25;0;5413,500;1;090000;41;1;2025-11-24;3;3
2025-11-24;WDOZ25;0;-5413,500;1;090000;42;1;2025-11-24;3;3
2025-11-24;WDOZ25;0;5.413,500;1;090000;43;1;2025-11-24;3;3
2025-11-24;WDOZ25;0;5413,500;1;250000;44;1;2025-11-24;3;3
2025-11-24;WDOZ25;0;5413,500;1;230000;45;1;24/11/2025;3;3
2025-11-24;WDOZ25;0;5413,500;1;230000;46;1;31/11/2025;3;3
2025-11-24;WDOZ25;0;5413,500; 1 ;230000;47;1;24/11/2025;3;3
2025-11-24;WDOZ25;0;5413,500;1;23:00:00,5;48;1;2025-11-24;3;3
2025-11-24;WDOZ25;0;5413,500;1;;49;1;2025-11-24 10:00:00;3;3
2025-11-24;WDOZ25;0;5413,500;x;230000;50;1;2025-11-24;3;3
2025-11-24;WDOZ25;;5413,500;1;230000;;1;2025-11-24;;
"""

TICKVAULT = """\
timestamp,symbol,timestamp_ms,trade_id,price,volume,quantity,buyer,seller,trade_type,aggressor,is_edit,seq
2025-11-24T10:00:00.000-03:00,WDOFUT,1763989200000,1,5400.5,54005.0,1,3,8,2,buy,false,1
2025-11-24T10:00:00.000-03:00,WDOFUT,1763989200000,2,5400.5,,2,3,8,3,,false,2
2025-11-24T10:00:00.001-03:00,WDOFUT,,3,5401,,1,,,2,,true,3
2025-11-24T10:00:00.001-03:00,WDOFUT,1763989200002,4,5401,,1,3,8,2,sell,false,4
,WINFUT,1763989200003,5,128000,,1,3,8,2,sell,0,5
2025-11-24T10:00:00.004Z,WINFUT,,6,128000,,1,3,8,2,sell,no,6
2025-11-24T10:00:00.004123-03:00,WINFUT,,7,128000,,1,3,8,2,sell,no,7
2025-11-24,WINFUT,,8,128000,,1,3,8,2,sell,no,8
0000-11-24T10:00:00.004-03:00,WINFUT,,9,128000,,1,3,8,2,sell,no,9
2025-11-24T10:00:00.004-03:00,WINFUT,,+10,128000,,1,3,8,2,sell,no,10
2025-11-24T10:00:00.004-03:00,WINFUT,,11, 128000 ,,1,3,8,2,sell,no,11
2025-11-24T10:00:00.004-03:00,WINFUT,,12,nan,,1,3,8,2,sell,no,12
2025-11-24T10:00:00.004-03:00,WINFUT,,13,1e400,,1,3,8,2,sell,no,13
2025-11-24T10:00:00.004-03:00,WINFUT,,14,128000,-1,1,3,8,2,sell,no,14
2025-11-24T10:00:00.004-03:00,WINFUT,,15,128000,,-1,3,8,2,sell,no,15
2025-11-24T10:00:00.004-03:00,WINFUT,,-16,128000,,1,3,8,2,sell,no,16
2025-11-24T10:00:00.004-03:00,WINFUT,,17,128000,,1.0,3,8,2,sell,no,17
2025-11-24T10:00:00.004-03:00,WINFUT,,18,128000,,1,3,8,2,sideways,no,18
2025-11-24T10:00:00.004-03:00,WINFUT,,19,128000,,1,3,8,2,sell,maybe,19
2025-11-24T10:00:00.004-03:00,WINFUT,1,20,128000,,1,3,8,2,sell,no,20
2025-11-24T10:00:00.004-03:00,,,21,128000,,1,3,8,2,sell,no,21
2025-11-24T10:00:00.004-03:00,win fut,,22,128000,,1,3,8,2,sell,no,22
2025-11-24T10:00:00.004-03:00, WINFUT ,,23,1_280,,1,3,8,2,Compra,no,23
2025-11-24T10:00:00.004-03:00,WINFUT,,24,1,,1,3,8,2,V,no,24
"2025-11-24T10:00:00.004-03:00","WINFUT",,25,"128005",,1,3,8,2,S,no,25
2025-11-24T10:00:00.004-03:00,WINFUT,,26,128000,,1,3,8,2,sell,no
2025-11-24T10:00:00.004-03:00,WINFUT,,27,128000,,1,3,8,2,sell,no,27,extra
"""


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def by_rows(path: Path, symbol: str | None = None) -> tuple[list[Row], list[tuple[int, str]]]:
    good: list[Row] = []
    bad: list[tuple[int, str]] = []
    for item in read_ticks(path, symbol=symbol):
        if isinstance(item, BadRow):
            bad.append((item.line, str(item.error)))
        else:
            good.append(
                (item.symbol, item.timestamp_ms, item.trade_id, item.price, item.volume, item.quantity,
                 item.buyer, item.seller, item.trade_type, item.aggressor, item.is_edit)
            )  # fmt: skip
    return good, bad


def by_columns(
    path: Path, symbol: str | None = None, chunk: int = 1 << 20
) -> tuple[list[Row], list[tuple[int, str]]]:
    good: list[Row] = []
    bad: list[tuple[int, str]] = []
    read = 0
    for file in members(path, symbol=symbol, chunk_bytes=chunk):
        for batch in file.batches():
            c = batch.cols
            read += batch.rows
            for i in range(len(c)):
                good.append(
                    (batch.symbols[batch.symbol[i]], int(c.timestamp_ms[i]), int(c.trade_id[i]),
                     float(c.price[i]), float(c.volume[i]), int(c.quantity[i]), int(c.buyer[i]),
                     int(c.seller[i]), int(c.trade_type[i]), AGGRESSOR_CODES[c.aggressor[i]],
                     bool(c.is_edit[i]))
                )  # fmt: skip
            bad += [(row.line, str(row.error)) for row in batch.bad]
    assert read == len(good) + len(bad)
    return good, bad


def _same(path: Path, symbol: str | None = None, chunks: tuple[int, ...] = (1 << 20, 64)) -> None:
    expected = by_rows(path, symbol)
    for chunk in chunks:
        assert by_columns(path, symbol, chunk) == expected, f"chunk {chunk}"


def test_b3_trade_file_with_every_kind_of_bad_row(tmp_path: Path) -> None:
    path = _write(tmp_path, "TradeIntraday_20251124_1.txt", B3)
    good, bad = by_columns(path)
    assert len(good) == 9 and len(bad) == 8  # the fixture covers both outcomes
    assert (9, "symbol: 'WDO Z25' must match [A-Z0-9._-]{1,32}") in bad
    _same(path)


def test_b3_clocks_all_of_nine_digits_take_the_arithmetic_path_with_the_same_result(tmp_path: Path) -> None:
    head = B3.splitlines()[0]
    clocks = [
        "090000003",
        "235959999",
        "250000000",
        "236000000",
        "000000000",
        "120060001",
        "095959000",
        "-10000000",
    ]
    rows = [
        f"2025-11-24;WDOZ25;0;5412,500;5;{c};{10 * (i + 1)};1;2025-11-24;3;308" for i, c in enumerate(clocks)
    ]
    path = _write(tmp_path, "TradeIntraday_20251124_2.txt", "\n".join([head, *rows]) + "\n")
    good, bad = by_columns(path)
    assert len(good) == 4 and [line for line, _ in bad] == [4, 5, 7, 9]
    _same(path)


def test_tickvault_layout_with_every_kind_of_bad_row(tmp_path: Path) -> None:
    path = _write(tmp_path, "ticks.csv", TICKVAULT)
    good, bad = by_columns(path)
    assert len(good) == 12 and len(bad) == 15
    assert (27, "row: 12 values for 13 columns") in bad and (28, "row: 14 values for 13 columns") in bad
    _same(path)


def test_an_id_beyond_64_bits_is_a_bad_row(tmp_path: Path) -> None:
    """The row reader makes a Tick of it that no store could hold; the bulk reader refuses it."""
    text = "symbol,timestamp_ms,trade_id,price,quantity\nWDOFUT,1763989200000,99999999999999999999,1,1\n"
    good, bad = by_columns(_write(tmp_path, "big.csv", text))
    assert good == [] and bad == [(2, "trade_id: 99999999999999999999 is out of the 64-bit integer range")]


def test_blank_lines_crlf_and_quoted_line_breaks_keep_line_numbers(tmp_path: Path) -> None:
    lines = TICKVAULT.splitlines()
    text = "\r\n".join(
        lines[:3] + ["", "\r"] + lines[3:6] + ['x,"WIN\nFUT",1,2,3,4,5,6,7,8,9,10,11'] + lines[6:]
    )
    path = tmp_path / "crlf.csv"
    path.write_bytes(text.encode() + b"\r\n")
    _same(path, chunks=(1 << 20, 300, 64))


def test_other_layouts(tmp_path: Path) -> None:
    portuguese = (
        "Ativo,Data,Preço,Quantidade,Agressor,Negócio\n"
        "WDOFUT,24/11/2025 10:00:00.123,5400.5,3,Comprador,7\n"
        "WDOFUT,24/11/2025 10:00:01,5400,1,Vendedor,8\n"
        "WDOFUT,24/11/2025 10:00:02,5400,1,Leilão,9\n"
        "WDOFUT,24/11/2025 10:00:03,5400,1,talvez,10\n"
        "WDOFUT,24/11/2025,5400,1,C,11\n"
        "WDOFUT,2025-11-24 10:00:04.5,5400,1,c,12\n"
    )
    _same(_write(tmp_path, "pt.csv", portuguese))
    english = (
        "time\tpx\tqty\tside\n"
        "2025-11-24T10:00:00.000-03:00\t5400.5\t2\tB\n"
        "2025-11-24T10:00:00.000-03:00\t5401\t1\tS\n"
        "2025-11-24T10:00:00.000-03:00\tx\t1\tS\n"
        "2025-11-25T09:00:00.000-03:00\t5410\t4\tB\n"
    )
    path = _write(tmp_path, "wdo.tsv", english)
    _same(path, "WDOFUT")
    assert [row[2] for row in by_columns(path, "WDOFUT")[0]] == [1, 2, 1]  # numbered per session
    profit = "Ativo;Data;Hora;Preço;Quantidade\n" + "".join(
        f"WDOFUT;24/11/2025;10:00:{i // 10:02d}.{i % 10:03d};5400,{5 * (i % 2)};{1 + i % 3}\n"
        for i in range(300)
    )
    _same(_write(tmp_path, "profit.csv", profit), chunks=(1 << 20, 200))


def test_trade_numbers_continue_across_chunks_and_skip_bad_rows_like_the_row_reader(tmp_path: Path) -> None:
    rows = ["symbol;date;hora;price;qty"]
    for i in range(500):
        day = "24/11/2025" if i % 7 else "25/11/2025"
        price = "x" if i % 11 == 0 else f"54{i % 10},5"
        rows.append(f"{'WDOFUT' if i % 3 else 'WINFUT'};{day};10:00:{i % 60:02d}.{i:03d};{price};{1 + i % 4}")
    _same(_write(tmp_path, "n.csv", "\n".join(rows) + "\n"), chunks=(1 << 20, 500, 97))


def test_parquet_typed_columns(tmp_path: Path) -> None:
    ms = [1763989200000 + i for i in range(6)]
    table = pa.table(
        {
            "ticker": ["WINFUT", "WINFUT", None, "WINFUT", "WIN FUT", "WINFUT"],
            "timestamp": pa.array(ms, pa.timestamp("ms", tz="America/Sao_Paulo")),
            "trade_id": pa.array([1, 2, 3, None, 5, 6], pa.int64()),
            "last": [128000.0, float("nan"), 128005.0, 128010.0, 128015.0, -1.0],
            "size": pa.array([1.0, 3.0, 2.0, 2.5, 1.0, 1.0]),
            "side": ["B", "S", None, "B", "S", "x"],
            "edit": [False, False, True, False, None, False],
        }
    )
    path = tmp_path / "x.parquet"
    pq.write_table(table, path, row_group_size=4)
    _same(path, chunks=(1 << 20, 64))
    naive = tmp_path / "naive.parquet"
    pq.write_table(table.set_column(1, "timestamp", pa.array(ms, pa.timestamp("ms"))), naive)
    _same(naive)


def test_gzip_zip_directories_and_globs(tmp_path: Path) -> None:
    plain = _write(tmp_path / "in", "a.csv", TICKVAULT) if (tmp_path / "in").mkdir() is None else None
    assert plain is not None
    with gzip.open(tmp_path / "in" / "b.csv.gz", "wt") as fh:
        fh.write(TICKVAULT)
    with zipfile.ZipFile(tmp_path / "in" / "c.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("TradeIntraday_20251124_1.txt", B3)
        archive.writestr("more/d.csv", TICKVAULT)
    (tmp_path / "in" / "notes.md").write_text("not ticks")
    found = expand([str(tmp_path / "in")])
    assert [p.name for p in found] == ["a.csv", "b.csv.gz", "c.zip"]
    assert expand([str(tmp_path / "in" / "*.gz"), str(plain)]) == [tmp_path / "in" / "b.csv.gz", plain]
    names = [f.name for p in found for f in members(p)]
    assert names == ["a.csv", "b.csv.gz", "c.zip:TradeIntraday_20251124_1.txt", "c.zip:more/d.csv"]
    expected = by_rows(plain)
    assert by_columns(tmp_path / "in" / "b.csv.gz") == expected
    inner = [f for f in members(tmp_path / "in" / "c.zip")]
    assert [len(list(f.batches())) > 0 for f in inner] == [True, True]
    with pytest.raises(DataError, match="matches no file"):
        expand([str(tmp_path / "nothing*.csv")])


def test_a_missing_column_is_one_error_naming_what_the_file_has(tmp_path: Path) -> None:
    path = _write(tmp_path, "bad.csv", "when,how much\n1,2\n")
    (file,) = members(path)
    with pytest.raises(DataError) as err:
        list(file.batches())
    assert "bad.csv lacks price, quantity" in str(err.value) and "(has when, how much)" in str(err.value)


CELLS = st.sampled_from(
    ["", " ", "0", "1", "-1", "+2", "007", "1.0", "1e3", "1_000", "nan", "inf", "-0", "5400.5", "5400,5",
     "9999999999999999999", "2025-11-24T10:00:00.123-03:00", "2025-11-24T10:00:00Z", "2025-11-24",
     "1763989200000", "buy", "sell", "B", "s", "Compra", "x", "true", "FALSE", "yes", "WDOFUT", " WDOFUT",
     "wdo", "WDO FUT", "10:00:00", "100000123", "24/11/2025", "\u00e9"]
)  # fmt: skip


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    cells=st.lists(st.lists(CELLS, min_size=8, max_size=8), min_size=1, max_size=12),
    sep=st.sampled_from(",;"),
)
def test_any_mix_of_odd_values_reads_the_same_both_ways(
    tmp_path: Path, cells: list[list[str]], sep: str
) -> None:
    header = sep.join(
        ["symbol", "timestamp", "timestamp_ms", "trade_id", "price", "quantity", "aggressor", "is_edit"]
    )
    clean = [[c.replace(sep, ".") for c in row] for row in cells]
    path = tmp_path / f"fuzz{abs(hash(str(cells))) % 10**8}.csv"
    path.write_text(header + "\n" + "\n".join(sep.join(row) for row in clean) + "\n", encoding="utf-8")
    _same(path, "WINFUT", chunks=(1 << 20, 50))


def test_a_large_file_in_small_chunks_equals_one_chunk(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    n = 20_000
    ms = 1763989200000 + np.cumsum(rng.integers(0, 3, n))
    lines = ["symbol,timestamp_ms,trade_id,price,quantity,trade_type"]
    lines += [f"WDOFUT,{m},{i + 1},{5400 + 0.5 * rng.integers(0, 20)},{rng.integers(1, 9)},{2 + i % 2}"
              for i, m in enumerate(ms.tolist())]  # fmt: skip
    path = _write(tmp_path, "big.csv", "\n".join(lines) + "\n")
    one = by_columns(path, chunk=1 << 30)
    assert len(one[0]) == n
    assert by_columns(path, chunk=4096) == one
