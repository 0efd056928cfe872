"""Order-book files (Tardis-style price levels, order events): read into batches, ingested into the
store, played by `run --source replay:`. The oracle is the slow reference book of
tests/book_reference.py, fed the file's rows by the file layouts' own rules, written here."""

from __future__ import annotations

import gzip
import random
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd
import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from book_reference import State, reference_for
from conftest import subprocess_env
from tickvault.analytics.book import live_book
from tickvault.domain.book import LAST, SNAPSHOT, BookBatch
from tickvault.sources.book_files import read_book
from tickvault.sources.book_load import load_book_paths
from tickvault.sources.files import BadRow
from tickvault.store.api import Store

T0_US = 1_764_000_000_000_000  # 2025-11-24 in µs since the epoch
TARDIS = ["exchange", "symbol", "timestamp", "local_timestamp", "is_snapshot", "side", "price", "amount"]
ORDERS = ["order_id", "symbol", "timestamp", "side", "price", "size", "action"]


# --- files and their oracle --------------------------------------------------------------------------


def tardis_rows(
    seed: int, symbols: tuple[str, ...] = ("WDOF26", "WINF26"), groups: int = 300
) -> list[dict[str, Any]]:
    """Level deltas with absolute sizes: a few rows before the first snapshot, a snapshot, deltas
    (several rows per timestamp, several timestamps per ms), a second snapshot midway."""
    rnd = random.Random(seed)
    rows: list[dict[str, Any]] = []
    t = T0_US

    def row(symbol: str, snapshot: bool, side: str, price: float, amount: int) -> dict[str, Any]:
        flag = "true" if snapshot else "false"
        return {"exchange": "b3", "symbol": symbol, "timestamp": t, "local_timestamp": t + 250,
                "is_snapshot": flag, "side": side, "price": price, "amount": amount}  # fmt: skip

    def snapshot(symbol: str) -> None:
        for k in range(8):
            rows.append(row(symbol, True, "bid", 5000.0 - 0.5 * k, rnd.randint(1, 50)))
            rows.append(row(symbol, True, "ask", 5000.5 + 0.5 * k, rnd.randint(1, 50)))

    for symbol in symbols:  # before any snapshot: skipped
        rows.append(row(symbol, False, "bid", 4999.0, 7))
    t += 1000
    for symbol in symbols:
        snapshot(symbol)
    for g in range(groups):
        t += rnd.choice((1, 200, 1000, 3000))
        symbol = rnd.choice(symbols)
        if g == groups // 2:
            snapshot(symbol)
            continue
        for _ in range(rnd.randint(1, 4)):
            side = rnd.choice(("bid", "ask"))
            k = rnd.randint(0, 12)
            price = 5000.0 - 0.5 * k if side == "bid" else 5000.5 + 0.5 * k
            rows.append(row(symbol, False, side, price, rnd.choice((0, rnd.randint(1, 90)))))
    return rows


def order_rows(seed: int, symbol: str = "WDOF26", events: int = 600) -> list[dict[str, Any]]:
    """Order events: adds, updates (a new price or size, absolute), deletes, with every spelling."""
    rnd = random.Random(seed)
    live: dict[int, tuple[str, float]] = {}
    rows: list[dict[str, Any]] = []
    t, next_id = T0_US, 1
    for _ in range(events):
        t += rnd.choice((0, 0, 1, 500, 2000))
        pick = rnd.random()
        if pick < 0.5 or not live:
            side = rnd.choice(("buy", "sell", "bid", "ask"))
            bid = side in ("buy", "bid")
            price = (5000.0 - 0.5 * rnd.randint(0, 8)) if bid else (5000.5 + 0.5 * rnd.randint(0, 8))
            live[next_id] = (side, price)
            rows.append({"order_id": next_id, "symbol": symbol, "timestamp": t, "side": side, "price": price,
                         "size": rnd.randint(1, 40), "action": rnd.choice(("add", "created"))})  # fmt: skip
            next_id += 1
        elif pick < 0.8:
            oid = rnd.choice(list(live))
            side, price = live[oid]
            if rnd.random() < 0.3:
                price += 0.5 if side in ("sell", "ask") else -0.5
                live[oid] = (side, price)
            size, action = rnd.randint(1, 40), rnd.choice(("update", "changed"))
            rows.append({"order_id": oid, "symbol": symbol, "timestamp": t, "side": side, "price": price,
                         "size": size, "action": action})  # fmt: skip
        else:
            oid = rnd.choice(list(live))
            side, _ = live.pop(oid)
            rows.append({"order_id": oid, "symbol": symbol, "timestamp": t, "side": side, "price": "",
                         "size": "", "action": rnd.choice(("delete", "deleted"))})  # fmt: skip
    return rows


def write(path: Path, columns: list[str], rows: list[dict[str, Any]]) -> Path:
    if path.suffix == ".parquet":
        blank = [{k: (None if v == "" else v) for k, v in r.items()} for r in rows]  # a missing value
        frame = pd.DataFrame(blank, columns=columns)
        frame.to_parquet(path)
        return path
    lines = [",".join(columns)] + [",".join(str(r[c]) for c in columns) for r in rows]
    text = "\n".join(lines) + "\n"
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


_SIDE = {"bid": "bid", "buy": "bid", "ask": "ask", "sell": "ask"}


def oracle(rows: list[dict[str, Any]], kind: str) -> dict[str, list[tuple[int, State]]]:
    """symbol -> [(ms, the book after the rows of that timestamp)], by the layouts' rules, row by
    row: a level file skips what comes before its first snapshot; a snapshot run clears first."""
    books: dict[str, Any] = {}
    started: dict[str, bool] = {}
    in_snapshot: dict[str, bool] = {}
    after: dict[str, list[tuple[int, State]]] = {}
    for row in rows:
        symbol = row["symbol"]
        book = books.setdefault(symbol, reference_for(kind))
        snap = row.get("is_snapshot") == "true"
        if kind == "mbp" and not started.get(symbol) and not snap:
            continue
        if snap and not in_snapshot.get(symbol):
            book.apply(SimpleNamespace(action="clear", side="none"))
        in_snapshot[symbol], started[symbol] = snap, True
        side = _SIDE[row["side"]]
        if kind == "mbp":
            action = "delete" if row["amount"] == 0 else "update"
            book.apply(
                SimpleNamespace(
                    action=action, side=side, price=row["price"], quantity=row["amount"], orders=0
                )
            )
        else:
            action = {"created": "add", "changed": "update", "deleted": "delete"}.get(
                row["action"], row["action"]
            )
            quantity = 0 if row["size"] == "" else row["size"]
            book.apply(SimpleNamespace(action=action, side=side, price=row["price"] or 0.0,
                                       quantity=quantity, order_id=row["order_id"]))  # fmt: skip
        after.setdefault(symbol, []).append((row["timestamp"] // 1000, book.state()))
    return after


def expected_at(history: list[tuple[int, State]], at_ms: int) -> State:
    """The book after the last row stamped at or before `at_ms` (rows of a ms all apply)."""
    state: State = {"bid": [], "ask": []}
    for ms, book in history:
        if ms > at_ms:
            break
        state = book
    return state


def stored_state(store: Store, symbol: str, at_ms: int) -> State:
    frame = store.book(symbol, at_ms, depth=None)
    out: State = {"bid": [], "ask": []}
    for side, price, quantity, orders in zip(
        frame.side, frame.price, frame.quantity, frame.orders, strict=True
    ):
        out[side].append((float(price), int(quantity), int(orders)))
    return out


def moments(history: list[tuple[int, State]], n: int = 12) -> list[int]:
    times = sorted({ms for ms, _ in history})
    picks = [times[i * (len(times) - 1) // (n - 1)] for i in range(n)]
    return [times[0] - 1, *picks, *(t + 1 for t in picks[:3]), times[-1] + 10_000]


def levels_only(state: State, kind: str) -> State:
    """Order counts of a level file are not in it (0): compare what the file says."""
    return state if kind == "mbo" else {s: [(p, q, 0) for p, q, _ in levels] for s, levels in state.items()}


# --- reading -----------------------------------------------------------------------------------------


def test_a_level_file_becomes_batches_a_snapshot_its_own_marked_group(tmp_path: Path) -> None:
    rows = tardis_rows(1, symbols=("WDOF26",), groups=40)
    items = list(read_book(write(tmp_path / "l2.csv", TARDIS, rows)))
    batches = [b for b in items if isinstance(b, BookBatch)]
    assert not [b for b in items if isinstance(b, BadRow)]
    snapshots = [b for b in batches if b[0].flags & SNAPSHOT]
    assert len(snapshots) == 2
    for batch in snapshots:
        assert batch[0].action == "clear" and batch[0].side == "none"
        assert all(e.flags & SNAPSHOT for e in batch)
    for batch in batches:
        assert [bool(e.flags & LAST) for e in batch] == [False] * (len(batch) - 1) + [True]
        if not batch[0].flags & SNAPSHOT:
            assert len({e.timestamp_ms for e in batch}) == 1
    # the row before the first snapshot is not in any batch; every other row is, in file order
    written = [(r["side"], r["price"], r["amount"]) for r in rows[1:]]
    got = [(e.side, e.price, e.quantity) for b in batches for e in b if e.action != "clear"]
    assert got == written
    assert [e.seq for b in batches for e in b] == list(range(1, sum(map(len, batches)) + 1))


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(("add", "update", "delete", "created", "changed", "deleted")),
            st.integers(1, 6),  # order id
            st.sampled_from(("buy", "sell", "bid", "ask")),
            st.integers(1, 8),  # price tick
            st.integers(0, 30),  # size
            st.integers(0, 2),  # µs to the next row
        ),
        max_size=60,
    )
)
def test_any_order_file_read_into_batches_builds_the_reference_book(
    tmp_path_factory: Any, ops: list[Any]
) -> None:
    rows, t = [], T0_US
    for action, oid, side, tick, size, step in ops:
        t += step
        rows.append({"order_id": oid, "symbol": "WDOF26", "timestamp": t, "side": side,
                     "price": 5000.0 + 0.5 * tick, "size": size, "action": action})  # fmt: skip
    path = write(tmp_path_factory.mktemp("mbo") / "orders.csv", ORDERS, rows)
    book = live_book("WDOF26", "mbo")
    seen: list[State] = []
    for item in read_book(path):
        assert isinstance(item, BookBatch)
        for event in item:
            book.apply(event)
        assert book.readable
        levels = {s: book.levels(s) for s in ("bid", "ask")}  # type: ignore[arg-type]
        seen.append({s: list(zip(v.price.tolist(), v.quantity.tolist(), v.orders.tolist(), strict=True))
                     for s, v in levels.items()})  # fmt: skip
    history = oracle(rows, "mbo").get("WDOF26", [])
    # after each batch (a timestamp's rows), the book is the reference's after that timestamp's last row
    ends = [
        state
        for i, (ms, state) in enumerate(history)
        if i + 1 == len(history) or rows[i + 1]["timestamp"] != rows[i]["timestamp"]
    ]
    assert seen == ends


def test_every_bad_row_is_reported_with_its_line_and_reason_and_the_rest_goes_on(tmp_path: Path) -> None:
    good = tardis_rows(2, symbols=("WDOF26",), groups=20)
    lines = [",".join(TARDIS)] + [",".join(str(r[c]) for c in TARDIS) for r in good]
    first = len(lines)  # data rows after the snapshot: break some of them
    bad = {
        first - 10: ("side", "x", 5),
        first - 8: ("price", "abc", 6),
        first - 6: ("amount", "-3", 7),
        first - 4: ("timestamp", "", 2),
        first - 2: ("is_snapshot", "maybe", 4),
    }
    expected = {}
    for index, (column, value, position) in bad.items():
        cells = lines[index].split(",")
        cells[TARDIS.index(column)] = value
        lines[index] = ",".join(cells)
        del position
        expected[index + 1] = {"amount": "quantity", "is_snapshot": "is_snapshot"}.get(column, column)
    lines.insert(first - 1, "b3,WDOF26,1,2")  # a row with too few values
    expected = {(line + 1 if line > first - 1 else line): field for line, field in expected.items()}
    expected[first] = "row"
    path = tmp_path / "bad.csv"
    path.write_text("\n".join(lines) + "\n")
    items = list(read_book(path))
    got = {b.line: b.error.field for b in items if isinstance(b, BadRow)}
    assert got == expected
    reasons = {b.error.field: b.error.reason for b in items if isinstance(b, BadRow)}
    assert "'x'" in reasons["side"] and "'abc'" in reasons["price"] and "'-3'" in reasons["quantity"]
    assert "4 values for 8 columns" in reasons["row"] and "'maybe'" in reasons["is_snapshot"]
    kept = sum(1 for b in items if isinstance(b, BookBatch) for e in b if e.action != "clear")
    assert kept == len(good) - 1 - (len(bad) - 0)  # the skipped row and the five broken ones


# --- ingest ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["l2.csv", "l2.csv.gz", "l2.parquet"])
def test_an_ingested_level_file_gives_the_reference_book_at_every_moment(
    store: Store, tmp_path: Path, name: str
) -> None:
    rows = tardis_rows(3)
    path = write(tmp_path / name, TARDIS, rows)
    reports = load_book_paths(store, [path])
    report = reports[0]
    assert report.error is None and report.rejected == 0
    assert report.skipped == 2 and report.read == len(rows)  # type: ignore[attr-defined]
    expected = oracle(rows, "mbp")
    for symbol, history in expected.items():
        for at in moments(history):
            assert stored_state(store, symbol, at) == levels_only(expected_at(history, at), "mbp"), (
                symbol,
                at,
            )
    assert store.book("WDOF26", T0_US // 1000 + 10**7).attrs["valid"]
    # again: nothing stored twice
    again = load_book_paths(store, [path])[0]
    assert again.stored == 0 and again.duplicates == report.stored


@pytest.mark.parametrize("name", ["orders.csv", "orders.parquet"])
def test_an_ingested_order_file_gives_the_reference_book_at_every_moment(
    store: Store, tmp_path: Path, name: str
) -> None:
    rows = order_rows(4)
    if name.endswith(".csv"):  # ISO 8601 times with an offset, as well as integers
        for row in rows[::2]:
            ts = pd.Timestamp(row["timestamp"] * 1000, unit="ns", tz="UTC").tz_convert("America/Sao_Paulo")
            row["timestamp"] = ts.isoformat()
    path = write(tmp_path / name, ORDERS, rows)
    report = load_book_paths(store, [path])[0]
    assert report.error is None and report.rejected == 0 and report.stored == len(rows)
    if name.endswith(".csv"):
        for row in rows[::2]:
            row["timestamp"] = pd.Timestamp(row["timestamp"]).value // 1000
    history = oracle(rows, "mbo")["WDOF26"]
    for at in moments(history):
        assert stored_state(store, "WDOF26", at) == expected_at(history, at), at


def test_a_book_file_older_than_the_stored_book_is_refused_clearly(store: Store, tmp_path: Path) -> None:
    rows = order_rows(5, events=200)
    half = len(rows) // 2
    later = write(tmp_path / "later.csv", ORDERS, rows[half:])
    earlier = write(tmp_path / "earlier.csv", ORDERS, rows[:half])
    assert load_book_paths(store, [later])[0].error is None
    refused = load_book_paths(store, [earlier])[0]
    assert refused.error is not None and "time order" in refused.error and refused.stored == 0
    assert load_book_paths(store, [later])[0].stored == 0  # the one stored is still recognised


def test_the_ingest_command_loads_a_gzipped_level_file_and_says_what_it_skipped(
    system_env: dict[str, str], store: Store, tmp_path: Path
) -> None:
    rows = tardis_rows(6, symbols=("WDOF26",), groups=50)
    path = write(tmp_path / "incremental_book_L2.csv.gz", TARDIS, rows)
    done = subprocess.run(
        [sys.executable, "-m", "tickvault", "ingest", str(path)],
        env=subprocess_env(system_env), cwd=tmp_path, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "skipped=1" in done.stdout and "durable=yes" in done.stdout
    history = oracle(rows, "mbp")["WDOF26"]
    at = history[len(history) // 2][0]
    assert stored_state(store, "WDOF26", at) == levels_only(expected_at(history, at), "mbp")


# --- run --source replay: ----------------------------------------------------------------------------


def test_run_replays_a_book_file_beside_a_tick_file_and_records_both(
    system_env: dict[str, str], store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tickvault.app.components.source import SourceSpec
    from tickvault.app.system import System
    from tickvault.config import load_settings

    rows = tardis_rows(8, groups=150)
    book = write(tmp_path / "l2.csv", TARDIS, rows)
    ticks = tmp_path / "ticks.csv"
    first_ms = T0_US // 1000
    ticks.write_text(
        "timestamp_ms,symbol,trade_id,price,quantity\n"
        + "".join(f"{first_ms + 7 * i},WDOF26,{i + 1},5000.5,{i % 5 + 1}\n" for i in range(40))
    )
    monkeypatch.setenv("WEB_ENABLED", "false")
    spec = SourceSpec.parse(f"replay:{ticks},{book}", None)
    assert spec.makes_book and spec.symbols == "WDOF26,WINF26"
    settings = load_settings(symbols=spec.symbols, speed=0)
    stop = threading.Event()
    system = System(settings, source=spec.factory(settings, stop), book=spec.makes_book)
    system.stop_event = stop
    system.start()
    try:
        system.wait(60)
    finally:
        summary = system.stop()
    assert summary.drained and system.source_error is None
    assert store.count("WDOF26") == 40
    expected = oracle(rows, "mbp")
    for symbol, history in expected.items():
        for at in moments(history, 6):
            assert stored_state(store, symbol, at) == levels_only(expected_at(history, at), "mbp"), (
                symbol,
                at,
            )


def test_a_book_file_is_not_sent_via_the_bus_where_a_rerun_would_store_it_twice(
    system_env: dict[str, str], store: Store, tmp_path: Path
) -> None:
    from rich.console import Console

    from tickvault.app.ingest import run_ingest
    from tickvault.config import load_settings

    path = write(tmp_path / "orders.csv", ORDERS, order_rows(9, events=20))
    said: list[str] = []
    code = run_ingest(
        load_settings(), [str(path)], via_bus=True, err=Console(), say=lambda line, _: said.append(line)
    )
    assert code == 2 and any("is a book file" in line for line in said)
    assert store.book_position("WDOF26").kind is None


def test_bad_order_rows_each_say_why(tmp_path: Path) -> None:
    lines = [
        ",".join(ORDERS),
        "1,WDOF26,1764000000000000,buy,5000.0,3,add",
        "2,WDOF26,1764000000000000,buy,5000.0,3,cancelled",  # not an action of the layout
        "x,WDOF26,1764000000000001,sell,5001.0,3,add",  # order id not a number
        "3,WDOF26,1764000000000001,sell,,3,add",  # an add needs its price
        "4,WDOF26,2025-11-24T10:00:00,sell,5001.0,3,add",  # no offset
        "5,WDOF26,1764000000000002,sell,5001.0,2.5,add",  # half a contract
        "1,WDOF26,1764000000000003,buy,,,deleted",  # a delete needs no price or size
    ]
    path = tmp_path / "orders.csv"
    path.write_text("\n".join(lines) + "\n")
    items = list(read_book(path))
    bad = {b.line: (b.error.field, b.error.reason) for b in items if isinstance(b, BadRow)}
    assert {line: field for line, (field, _) in bad.items()} == {
        3: "action", 4: "order_id", 5: "price", 6: "timestamp", 7: "quantity",
    }  # fmt: skip
    assert "'cancelled'" in bad[3][1] and "offset" in bad[6][1] and "'2.5'" in bad[7][1]
    events = [(e.order_id, e.action) for b in items if isinstance(b, BookBatch) for e in b]
    assert events == [(1, "add"), (1, "delete")]


# --- the column-wise reader equals the row reader ------------------------------------------------------

_CELLS = {
    "symbol": ["WDOF26", "WINF26", "bad symbol", "", " WDOF26"],
    "timestamp": ["{us}", "{ms}", "{ns}", "{iso}", "2025-11-24T10:00:00", "", "abc", "-5", " {us}", "{us}.0",
                  "0000-01-01T00:00:00Z", "99999999999999999999"],
    "local_timestamp": ["{us}", "", "x"],
    "is_snapshot": ["true", "false", "1", "0", "True", "maybe", ""],
    "side": ["bid", "ask", "buy", "sell", "B", "a", "x", "", " bid"],
    "price": ["5000.5", "5000", "-1", "0", "abc", "", "inf", "nan", "1e3", " 5000.5"],
    "amount": ["3", "0", "-2", "2.0", "2.5", "", "abc", "+4", "1_000"],
    "order_id": ["1", "2", "3", "x", "", "-1", "18446744073709551615"],
    "size": ["3", "0", "2.0", "", "-1"],
    "action": ["add", "update", "delete", "created", "changed", "deleted", "cancel", ""],
}  # fmt: skip


@st.composite
def messy_rows(draw: st.DrawFn, columns: list[str]) -> list[list[str]]:
    rows, us = [], T0_US
    for _ in range(draw(st.integers(1, 25))):
        us += draw(st.sampled_from((0, 0, 1, 1000)))
        stamps = {"us": us, "ms": us // 1000, "ns": us * 1000,
                  "iso": pd.Timestamp(us * 1000, unit="ns", tz="UTC").isoformat()}  # fmt: skip
        row = []
        for column in columns:
            usual = {"symbol": "WDOF26", "timestamp": "{us}", "local_timestamp": "{us}",
                     "is_snapshot": "false", "side": "bid", "price": "5000.5", "amount": "3",
                     "order_id": "1", "size": "3", "action": "add", "exchange": "b3"}[column]  # fmt: skip
            cells = _CELLS.get(column, [usual])
            odds = 1 if column == "timestamp" else 3  # the time's forms most often: each unit its scale
            cell = draw(st.sampled_from(cells)) if draw(st.integers(0, odds)) == 0 else usual
            row.append(cell.format(**stamps))
        rows.append(row)
    return rows


@pytest.mark.parametrize("columns", [TARDIS, ORDERS], ids=["levels", "orders"])
# no shrinking: each example reads a file twice, and shrinking one would outrun the test's timeout
@settings(max_examples=25, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate])
@given(data=st.data())
def test_the_column_wise_reader_equals_the_row_reader_on_any_cells(
    tmp_path_factory: Any, columns: list[str], data: st.DataObject
) -> None:
    from tickvault.domain.book import BookColumns
    from tickvault.sources.book_files import BookFileReader, book_layout
    from tickvault.sources.tick_files import members

    rows = data.draw(messy_rows(columns))
    path = tmp_path_factory.mktemp("messy") / "book.csv"
    path.write_text(",".join(columns) + "\n" + "".join(",".join(r) + "\n" for r in rows))
    results = []
    for vectorised in (True, False):
        file = next(members(path))
        layout = book_layout(file)
        assert layout is not None
        reader = BookFileReader(file, layout, vectorised=vectorised)
        parts, bad = [], []
        for got, rejected in reader.chunks():
            parts += got
            bad += [(b.line, b.error.field, b.error.reason) for b in rejected]
        by_symbol: dict[str, list[BookColumns]] = {}
        for part in parts:
            by_symbol.setdefault(part.symbol, []).append(part)
        cols = {s: BookColumns.concat(p).columns() for s, p in by_symbol.items()}
        results.append((cols, sorted(bad), dict(reader.skipped), reader.rows))
    (fast, fast_bad, fast_skipped, fast_rows), (slow, slow_bad, slow_skipped, slow_rows) = results
    assert fast_bad == slow_bad and fast_skipped == slow_skipped and fast_rows == slow_rows == len(rows)
    assert fast.keys() == slow.keys()
    for symbol in fast:
        for name in fast[symbol]:
            assert fast[symbol][name].tolist() == slow[symbol][name].tolist(), (symbol, name)


def test_a_source_process_publishes_the_book_a_recorder_process_records(
    system_env: dict[str, str], store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`run --only source --source replay:BOOK` beside `run --only recorder` (here in one process)."""
    from conftest import wait_until
    from tickvault.app.components.source import SourceSpec
    from tickvault.app.system import System
    from tickvault.config import load_settings

    rows = tardis_rows(10, symbols=("WDOF26",), groups=120)
    spec = SourceSpec.parse(f"replay:{write(tmp_path / 'l2.csv', TARDIS, rows)}", None)
    monkeypatch.setenv("WEB_ENABLED", "false")
    recorder = System(load_settings(only="recorder", symbols=spec.symbols))
    recorder.start()
    try:
        settings = load_settings(only="source", symbols=spec.symbols, speed=0)
        stop = threading.Event()
        source = System(settings, source=spec.factory(settings, stop), book=spec.makes_book)
        source.stop_event = stop
        source.start()
        try:
            source.wait(60)
            produced = source.ingest.book_seq["WDOF26"]
            assert produced > len(rows) // 2
            assert wait_until(lambda: store.book_position("WDOF26").seq == produced, timeout=60)
        finally:
            source.stop()
    finally:
        recorder.stop()
    history = oracle(rows, "mbp")["WDOF26"]
    for at in moments(history, 5):
        assert stored_state(store, "WDOF26", at) == levels_only(expected_at(history, at), "mbp"), at


def test_an_ingested_file_is_sealed_in_blocks_of_bounded_size(store: Store, tmp_path: Path) -> None:
    """Any moment is read back from a snapshot and at most about SNAPSHOT_EVERY updates, as the live
    recorder's writes leave it: a long file is written in pieces, each closed by a snapshot."""
    from tickvault.store.book_writer import SNAPSHOT_EVERY

    rows = order_rows(11, events=3 * SNAPSHOT_EVERY + 500)
    report = load_book_paths(store, [write(tmp_path / "orders.csv", ORDERS, rows)])[0]
    assert report.error is None and report.stored == len(rows)
    refs = store.book_history.refs("WDOF26", 0, 2**62)
    assert len(refs) >= 3 and sum(r.updates for r in refs) + store.book_position("WDOF26").updates >= len(
        rows
    )
    assert max(r.updates for r in refs) <= SNAPSHOT_EVERY + 10  # a piece ends at a batch's end


def test_ingest_json_says_what_a_book_file_skipped(
    system_env: dict[str, str], store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from rich.console import Console

    from tickvault.app.ingest import run_ingest
    from tickvault.config import load_settings

    rows = tardis_rows(12, groups=30)
    path = write(tmp_path / "l2.csv", TARDIS, rows)
    code = run_ingest(load_settings(), [str(path)], json_output=True, err=Console(), say=lambda *_: None)
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    (file,) = doc["files"]
    assert file["skipped"] == 2 and file["read"] == len(rows) and file["rejected"] == 0
    # three snapshots (one a symbol at the start, one midway): a clear each
    assert file["stored"] == len(rows) - 2 + 3 and doc["durable"]
