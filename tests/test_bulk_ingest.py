"""History at disk speed (issue 15): tick files straight into history blocks (sources/bulk_load.py,
store/bulk.py), with the live path's guarantees: each trade once per (symbol, session, trade id),
edits once, files that overlap each other or live-recorded ticks merged, the live writer told about
every bulk-stored id, derived data (candle streams, day summaries) right for every day touched."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
from collections.abc import Iterable
from datetime import date
from pathlib import Path

import msgspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest
import valkey
from rich.console import Console
from valkey.cluster import ValkeyCluster

from conftest import subprocess_env, wait_until
from factories import BASE_MS, tick
from tickvault.analytics.candles import TIMEFRAMES, candles_from_ticks
from tickvault.analytics.features import summarize_session
from tickvault.app.ingest import BarProgress
from tickvault.domain.events import Tick
from tickvault.errors import StoreError
from tickvault.sources.bulk_load import load_files
from tickvault.store.api import Store, columns_frame
from tickvault.store.bulk import LEASE_OWNER, BulkWriter
from tickvault.store.session_rows import SessionDays
from tickvault.workers.candle_worker import CandleWorker
from tickvault.workers.session_history import store_history

DAY_MS = 86_400_000
HEADER = (
    "timestamp,symbol,timestamp_ms,trade_id,price,volume,quantity,buyer,seller,trade_type,aggressor,is_edit"
)
WHOLE = (BASE_MS - 100 * DAY_MS, BASE_MS + 10 * DAY_MS)


def write_csv(path: Path, ticks: Iterable[Tick]) -> Path:
    lines = [HEADER] + [
        f"{t.timestamp.isoformat(timespec='milliseconds')},{t.symbol},{t.timestamp_ms},{t.trade_id},{t.price!r},"
        f"{t.volume!r},{t.quantity},{t.buyer},{t.seller},{t.trade_type},{t.aggressor},{str(t.is_edit).lower()}"
        for t in ticks
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def day_of(symbol: str, day_ms: int, n: int, seed: int, first_id: int = 1) -> list[Tick]:
    """`n` trades of one session from 10:00 local, several per millisecond, in time order."""
    rng = np.random.default_rng(seed)
    start = day_ms - 3 * 3_600_000  # BASE_MS is 13:00 local
    ms = start + np.sort(rng.integers(0, 6 * 3_600_000, n))
    ms[1::4] = ms[0::4][: len(ms[1::4])]  # bursts: trades sharing a millisecond
    ms.sort()
    price = 5400 + 0.5 * np.cumsum(rng.integers(-2, 3, n))
    return [
        tick(symbol, int(ms[i]), first_id + i, float(price[i]), int(rng.integers(1, 9)),
             trade_type=int(2 + i % 2), buyer=int(rng.integers(1, 90)), seller=int(rng.integers(1, 90)))
        for i in range(n)
    ]  # fmt: skip


def stored_once(files: Iterable[Iterable[Tick]]) -> dict[str, list[Tick]]:
    """The oracle: what the live path keeps of ticks arriving in this order (a trade once per
    symbol, session and id, an edit once per content), per symbol in exchange-time order, ties in
    arrival order."""
    seen: set[tuple[str, str, int]] = set()
    marks: set[tuple[str, str, int, int, float, int]] = set()
    kept: dict[str, list[Tick]] = {}
    for file in files:
        for t in file:
            if t.is_edit:
                key = (t.symbol, t.session, t.trade_id, t.timestamp_ms, t.price, t.quantity)
                if key in marks:
                    continue
                marks.add(key)
            else:
                if (t.symbol, t.session, t.trade_id) in seen:
                    continue
                seen.add((t.symbol, t.session, t.trade_id))
            kept.setdefault(t.symbol, []).append(t)
    return {s: sorted(ts, key=lambda t: t.timestamp_ms) for s, ts in kept.items()}


def fields(ticks: Iterable[Tick]) -> list[tuple[object, ...]]:
    return [
        (t.timestamp_ms, t.trade_id, t.price, t.volume, t.quantity, t.buyer, t.seller, t.trade_type,
         t.aggressor, t.is_edit)
        for t in ticks
    ]  # fmt: skip


def assert_store_holds(store: Store, expected: dict[str, list[Tick]]) -> None:
    for symbol, ticks in expected.items():
        back = store.tick_events(symbol, *WHOLE)
        assert fields(back) == fields(ticks), symbol
        frame = store.ticks(symbol, *WHOLE)
        same_ms = np.diff(frame["timestamp_ms"].to_numpy()) == 0
        assert np.all(np.diff(frame["seq"].to_numpy())[same_ms] > 0)  # ties ordered by seq: kept as stored
        assert store.count(symbol) == len(ticks)


def test_several_overlapping_files_round_trip_to_what_they_hold_once(store: Store, tmp_path: Path) -> None:
    monday = day_of("WDOFUT", BASE_MS, 3000, 1) + day_of("WINFUT", BASE_MS, 1000, 2)
    late = monday[100:130]  # rows out of time order in the file: sent again after the rest
    first = [t for t in monday if t not in late] + late
    edits = [
        msgspec.structs.replace(monday[i], price=monday[i].price + 0.5, is_edit=True) for i in (5, 6, 2000)
    ]
    friday = day_of("WDOFUT", BASE_MS - 3 * DAY_MS, 500, 3)  # Thursday 2025-11-20 is a B3 holiday
    wednesday = day_of("WDOFUT", BASE_MS - 5 * DAY_MS, 500, 4)
    second = monday[2500:3200] + edits + edits[:1] + day_of("WDOFUT", BASE_MS + DAY_MS, 800, 5)
    third = wednesday + friday + monday[:10]
    files = [write_csv(tmp_path / f"{i}.csv", f) for i, f in enumerate((first, second, third))]
    reports = load_files(store, files)
    assert [(r.read, r.stored, r.rejected) for r in reports] == [
        (4000, 4000, 0), (len(second), 800 + 3, 0), (1010, 1000, 0)
    ]  # fmt: skip
    assert_store_holds(store, stored_once([first, second, third]))
    # blocks in time order per hour, none overlapping another: reads need no sort
    refs = store.history.refs("WDOFUT", *WHOLE)
    assert all(a.last_ms < b.first_ms for a, b in zip(refs, refs[1:], strict=False))
    assert store.client.xlen(store.keys.ticks("WDOFUT")) == 0  # nothing went through the live stream


def test_the_same_files_twice_store_nothing_twice(store: Store, tmp_path: Path) -> None:
    ticks = day_of("WDOFUT", BASE_MS, 2000, 7)
    edit = msgspec.structs.replace(ticks[3], price=1.0, is_edit=True)
    path = write_csv(tmp_path / "a.csv", [*ticks, edit])
    assert [(r.stored, r.duplicates) for r in load_files(store, [path])] == [(2001, 0)]
    index = store.client.zrange(store.keys.block_index("WDOFUT"), 0, -1)
    copy = tmp_path / "b.csv"
    copy.write_bytes(path.read_bytes())
    assert [(r.stored, r.duplicates) for r in load_files(store, [path, copy])] == [(0, 2001), (0, 2001)]
    assert store.client.zrange(store.keys.block_index("WDOFUT"), 0, -1) == index  # not even rewritten
    assert_store_holds(store, stored_once([[*ticks, edit]]))


def test_files_overlapping_live_recorded_ticks_merge_and_the_live_writer_learns_their_ids(
    store: Store, tmp_path: Path
) -> None:
    day = day_of("WDOFUT", BASE_MS, 3000, 11)
    live = [msgspec.structs.replace(t, seq=i + 1) for i, t in enumerate(day[1000:2000])]
    assert store.append_ticks(live).stored == 1000
    assert store.seal("WDOFUT", day[1500].timestamp_ms) > 0  # part of it sealed, part still live
    # while a live writer holds the symbol, the bulk load waits for it, then gives up naming it
    waiting = BulkWriter(store, lease_wait_s=0.3)
    waiting.add(["WDOFUT"], np.zeros(1, np.int32), _cols(day[:1]))
    with pytest.raises(StoreError, match="being written live by 'writer-"):
        waiting.flush()
    store.writer.release()  # as a recorder does when it stops
    path = write_csv(tmp_path / "day.csv", day)
    (report,) = load_files(store, [path])
    assert (report.stored, report.duplicates) == (2000, 1000)
    assert_store_holds(store, stored_once([live, day]))
    # the live entries of that session moved into the blocks, but the stream's newest stays live
    assert store.client.xlen(store.keys.ticks("WDOFUT")) == sum(
        t.timestamp_ms == live[-1].timestamp_ms for t in live
    )
    # the writer (which had this session's ids in memory) takes the symbol back, reloads, and refuses
    # the trades the bulk load stored; a new trade still goes in
    result = store.append_ticks([day[0], day[2999], tick("WDOFUT", day[-1].timestamp_ms + 5, 999_999)])
    assert (result.stored, result.duplicates) == (1, 2)
    assert store.count("WDOFUT") == 3001


def test_blocks_written_without_seen_bits_still_count_as_stored(store: Store, tmp_path: Path) -> None:
    """History.put (backfill, older loads) writes blocks but no seen bits: a file of the same trades
    is matched against the blocks' own ids."""
    day = day_of("WDOFUT", BASE_MS, 1000, 31)
    store.history.put(
        "WDOFUT", _cols([msgspec.structs.replace(t, seq=i + 1) for i, t in enumerate(day[:600])])
    )
    (report,) = load_files(store, [write_csv(tmp_path / "d.csv", day)])
    assert (report.stored, report.duplicates) == (400, 600)
    assert_store_holds(store, stored_once([day]))
    result = store.append_ticks([day[10]])  # and now the live writer knows those ids too
    assert (result.stored, result.duplicates) == (0, 1)


def test_a_cluster_takes_bulk_loads_like_one_server(cluster_client: ValkeyCluster, tmp_path: Path) -> None:
    """Every key of a symbol shares its slot: the merge's WATCH and MULTI/EXEC run on its node."""
    store = Store(cluster_client)
    days = [day_of(s, BASE_MS, 800, k) for k, s in enumerate(("WDOFUT", "WINFUT", "DOLF26", "INDZ25"))]
    live = [msgspec.structs.replace(t, seq=i + 1) for i, t in enumerate(days[0][:300])]
    store.append_ticks(live)
    store.writer.release()
    files = [write_csv(tmp_path / f"{k}.csv", day) for k, day in enumerate(days)]
    assert [r.stored for r in load_files(store, files)] == [500, 800, 800, 800]
    assert [r.stored for r in load_files(store, files)] == [0, 0, 0, 0]
    assert_store_holds(store, stored_once([live, *days]))
    assert not [
        s for s in ("WDOFUT", "WINFUT", "DOLF26", "INDZ25") if cluster_client.get(store.keys.writer_lease(s))
    ]


def test_a_killed_bulk_writer_leaves_its_lease_to_the_next_one(store: Store) -> None:
    store.client.set(store.keys.writer_lease("WDOFUT"), LEASE_OWNER, px=10_000)  # a SIGKILLed load
    ticks = day_of("WDOFUT", BASE_MS, 10, 1)
    writer = BulkWriter(store, lease_wait_s=0.0)
    writer.add(["WDOFUT"], np.zeros(10, np.int32), _cols(ticks))
    assert writer.flush().stored == 10
    assert store.client.get(store.keys.writer_lease("WDOFUT")) is None  # given up when done


def _cols(ticks: list[Tick]):  # type: ignore[no-untyped-def]
    from tickvault.store.block_codec import AGGRESSOR_CODES, Columns

    return Columns(
        timestamp_ms=np.array([t.timestamp_ms for t in ticks], np.int64),
        trade_id=np.array([t.trade_id for t in ticks], np.int64),
        price=np.array([t.price for t in ticks]),
        volume=np.array([t.volume for t in ticks]),
        quantity=np.array([t.quantity for t in ticks], np.int64),
        buyer=np.array([t.buyer for t in ticks], np.int64),
        seller=np.array([t.seller for t in ticks], np.int64),
        trade_type=np.array([t.trade_type for t in ticks], np.int64),
        aggressor=np.array([AGGRESSOR_CODES.index(t.aggressor) for t in ticks], np.int8),
        is_edit=np.array([t.is_edit for t in ticks], np.bool_),
        seq=np.array([t.seq for t in ticks], np.int64),
    )


def test_candle_streams_and_day_summaries_of_a_touched_day_equal_a_recomputation(
    store: Store, tmp_path: Path
) -> None:
    day = day_of("WDOFUT", BASE_MS, 4000, 21)
    live = [msgspec.structs.replace(t, seq=i + 1) for i, t in enumerate(day[:1500])]
    store.append_ticks(live)
    store.writer.release()
    worker = CandleWorker(store, ("WDOFUT",))
    while worker.step(block_ms=0):
        pass
    worker.write(flush=True)
    tuesday = date(2025, 11, 25)
    history = store_history(store)
    (partial,) = history("WDOFUT", tuesday, 1)  # caches Monday's summary from what is stored so far
    assert int(partial.minute_quantity.sum()) == sum(t.quantity for t in live)
    untouched = day_of("WDOFUT", BASE_MS - 7 * DAY_MS, 50, 22)  # a day without bars: none written for it
    (report,) = load_files(store, [write_csv(tmp_path / "day.csv", [*untouched, *day])])
    assert report.stored == 4050 - 1500
    whole = columns_frame("WDOFUT", store.columns("WDOFUT", *WHOLE))
    for tf in TIMEFRAMES:
        expected = candles_from_ticks(whole.loc[whole["timestamp_ms"] >= BASE_MS - DAY_MS], tf)
        got = store.candle_stream("WDOFUT", tf, BASE_MS - DAY_MS, BASE_MS + DAY_MS)
        pd.testing.assert_frame_equal(got, expected, check_freq=False)
        assert store.candle_stream("WDOFUT", tf, *(BASE_MS - 8 * DAY_MS, BASE_MS - 6 * DAY_MS)).empty
    (summary,) = store_history(store)("WDOFUT", tuesday, 1)
    mine = [t for t in day]
    scratch = summarize_session(
        date(2025, 11, 24),
        np.array([t.timestamp_ms for t in mine]), np.array([t.price for t in mine]),
        np.array([t.quantity for t in mine]),
    )  # fmt: skip
    np.testing.assert_array_equal(summary.minute_close, scratch.minute_close)
    np.testing.assert_array_equal(summary.minute_quantity, scratch.minute_quantity)
    assert summary.quantities == scratch.quantities


def test_sessions_are_b3_dates_across_daylight_saving_time() -> None:
    days = SessionDays()
    # 2018-11-04 00:00 local did not exist (clocks went to 01:00 -02:00); 23:00 on 2019-02-16 came twice
    ms = np.array([1541300399999, 1541300400000, 1550368799999, 1550368800000, 1550372400000])
    assert days(ms).tolist() == [20181103, 20181104, 20190216, 20190216, 20190217]


# -- the command -------------------------------------------------------------------------------------


def _ingest(
    env: dict[str, str], cwd: Path, *args: str, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tickvault", "ingest", *args], env=subprocess_env(env), cwd=cwd,
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def test_bad_rows_of_every_layout_are_named_and_the_rest_stored(
    system_env: dict[str, str], store: Store, tmp_path: Path
) -> None:
    b3 = tmp_path / "TradeIntraday_20251124_1.txt"
    b3.write_text(
        "DataReferencia;CodigoInstrumento;AcaoAtualizacao;PrecoNegocio;QuantidadeNegociada;HoraFechamento;"
        "CodigoIdentificadorNegocio;TipoSessaoPregao;DataNegocio;CodigoParticipanteComprador;"
        "CodigoParticipanteVendedor\n"
        "2025-11-24;WDOZ25;0;5412,500;5;090000003;10;1;2025-11-24;3;308\n"
        "2025-11-24;WDOZ25;2;5413,000;2;090000017;20;1;2025-11-24;308;85\n"
        "2025-11-24;WDOZ25;0;5413,500;1;09000;40;1;2025-11-24;3;3\n"
        "2025-11-24;WDOZ25;0;5413,500;1;100000000;50;1;2025-11-24;3\n"
    )
    mine = tmp_path / "mine.csv"
    lines = write_csv(mine, day_of("WINFUT", BASE_MS, 6, 1)).read_text().splitlines()
    lines[2] = lines[2].replace(",WINFUT,", ",WIN FUT,")
    lines[4] = lines[4].replace(",false", ",maybe")
    mine.write_text("\n".join(lines) + "\n")
    english = tmp_path / "wdo.tsv"
    english.write_text(
        "time\tpx\tqty\tside\n2025-11-24T10:00:00.000-03:00\t5400.5\t2\tB\n2025-11-24T10:00:01-03:00\tnan\t1\tS\n"
    )
    rejects = tmp_path / "rejects.csv"
    proc = _ingest(system_env, tmp_path, str(b3), str(mine), str(english), "--symbol", "WDOFUT",
                   "--rejects", str(rejects))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "TradeIntraday_20251124_1.txt: read=4 stored=1 duplicates=0 rejected=3" in proc.stdout
    assert "mine.csv: read=6 stored=4 duplicates=0 rejected=2 (symbol=1, is_edit=1)" in proc.stdout
    assert "wdo.tsv: read=2 stored=1 duplicates=0 rejected=1 (price=1)" in proc.stdout
    assert "durable=yes" in proc.stdout
    assert "rejected TradeIntraday_20251124_1.txt:line 3: AcaoAtualizacao:" in proc.stderr
    assert "rejected TradeIntraday_20251124_1.txt:line 4: timestamp: '09000' is not a time" in proc.stderr
    assert "rejected TradeIntraday_20251124_1.txt:line 5: row: 10 values for 11 columns" in proc.stderr
    assert "rejected mine.csv:line 3: symbol: 'WIN FUT' must match" in proc.stderr
    assert "rejected wdo.tsv:line 3: price: must be a finite number, got 'nan'" in proc.stderr
    assert len(rejects.read_text().splitlines()) == 1 + 6
    assert store.count("WDOZ25") == 1 and store.count("WINFUT") == 4 and store.count("WDOFUT") == 1
    missing = tmp_path / "bad.csv"
    missing.write_text("symbol,price\nWDOFUT,1\n")
    fine = write_csv(tmp_path / "fine.csv", day_of("WDOFUT", BASE_MS + DAY_MS, 10, 2))
    proc = _ingest(system_env, tmp_path, str(missing), str(fine), "--format", "json")
    assert proc.returncode == 2  # the file that cannot be read is an error; the other is loaded
    doc = msgspec.json.decode(proc.stdout)
    bad, good = doc["files"]
    lacks = "bad.csv lacks quantity, timestamp, timestamp_ms, or date and time columns (has symbol, price)"
    assert lacks in bad["error"] and lacks in proc.stderr
    assert {k: good[k] for k in ("file", "read", "stored", "duplicates", "rejected", "error")} == {
        "file": "fine.csv", "read": 10, "stored": 10, "duplicates": 0, "rejected": 0, "error": None
    }  # fmt: skip
    assert doc["durable"] is True and store.count("WDOFUT") == 11


def test_a_terminal_gets_a_progress_bar_per_file(store: Store, tmp_path: Path) -> None:
    out = io.StringIO()
    bars = BarProgress(Console(file=out, force_terminal=True, width=140))
    files = [
        write_csv(tmp_path / f"day{k}.csv", day_of("WDOFUT", BASE_MS + k * DAY_MS, 3000, k)) for k in (0, 1)
    ]
    with bars.bars:
        reports = load_files(store, files, progress=bars)
    text = out.getvalue()
    assert [r.stored for r in reports] == [3000, 3000]
    assert "day0.csv" in text and "day1.csv" in text and "100%" in text
    assert "3,000 rows" in text and "rows/s" in text


def test_a_load_killed_at_any_moment_and_run_again_stores_the_files_ticks_once(
    system_env: dict[str, str], store: Store, valkey_client: valkey.Valkey, tmp_path: Path
) -> None:
    days = [
        day_of(s, BASE_MS - d * DAY_MS, 4000, d * 7 + k)
        for d in range(12)
        for k, s in enumerate(("WDOFUT", "WINFUT"))
    ]
    ticks = [t for day in days for t in day]
    ticks = ticks[::2] + ticks[1::2]  # every session appears twice in the file: merged again later
    path = write_csv(tmp_path / "many.csv", ticks)
    blocks = store.keys.block_index("WDOFUT")
    for kill_after in (1, 15):
        proc = subprocess.Popen(
            [sys.executable, "-m", "tickvault", "ingest", str(path), "--memory", "4MiB"],
            env=subprocess_env(system_env), cwd=tmp_path, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            running = proc
            assert wait_until(
                lambda n=kill_after, p=running: valkey_client.zcard(blocks) >= n or p.poll() is not None
            )
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait(30)
    again = _ingest(system_env, tmp_path, str(path), "--memory", "4MiB")
    assert again.returncode == 0, again.stderr
    assert "read=96000" in again.stdout
    assert_store_holds(store, stored_once([ticks]))


def test_sigterm_stops_after_the_chunk_in_hand_and_a_rerun_loads_the_rest(
    system_env: dict[str, str], store: Store, valkey_client: valkey.Valkey, tmp_path: Path
) -> None:
    days = [day_of("WDOFUT", BASE_MS - d * DAY_MS, 4000, d) for d in range(15)]
    path = write_csv(tmp_path / "days.csv", [t for day in days for t in day])
    proc = subprocess.Popen(
        [sys.executable, "-m", "tickvault", "ingest", str(path), "--memory", "4MiB"],
        env=subprocess_env(system_env), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        blocks = store.keys.block_index("WDOFUT")
        assert wait_until(lambda: valkey_client.zcard(blocks) > 0 or proc.poll() is not None)
        assert proc.poll() is None, "finished before it could be stopped"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
        proc.wait(30)
    assert proc.returncode == 1 and "interrupted" in err
    stored = int(out.split(" stored=")[1].split()[0])
    assert 0 < stored < 60_000 and store.count("WDOFUT") == stored  # what it says it stored, durable
    again = _ingest(system_env, tmp_path, str(path))
    assert again.returncode == 0, again.stderr
    assert f"stored={60_000 - stored} duplicates={stored}" in again.stdout
    assert_store_holds(store, stored_once(days))


MEMORY_PROBE = """
import sys
from tickvault.sources.bulk_load import load_files
from tickvault.store.api import Store
import valkey
from valkey.cluster import ValkeyCluster

def status(name):  # KiB
    return int(open("/proc/self/status").read().split(name + ":")[1].split()[0])

store = Store(valkey.Valkey.from_url(sys.argv[1]))
load_files(store, [sys.argv[3]], memory_bytes=int(sys.argv[4]))  # warm up: every module loaded once
store.client.flushall()
with open("/proc/self/clear_refs", "w") as fh:
    fh.write("5")  # the peak RSS starts again from now
before = status("VmRSS")
(report,) = load_files(store, [sys.argv[2]], memory_bytes=int(sys.argv[4]))
print(report.stored, (status("VmHWM") - before) * 1024)
"""


def test_a_file_several_times_the_memory_bound_loads_within_it(
    system_env: dict[str, str], store: Store, tmp_path: Path
) -> None:
    bound = 32 << 20
    rng = np.random.default_rng(5)
    n = 2_400_000
    ms = BASE_MS - 60 * DAY_MS + np.sort(rng.integers(0, 60 * DAY_MS, n))
    table = pa.table(
        {"symbol": np.where(rng.random(n) < 0.5, "WDOFUT", "WINFUT"), "timestamp_ms": ms,
         "trade_id": np.arange(1, n + 1), "price": 5400 + 0.5 * rng.integers(0, 400, n),
         "quantity": rng.integers(1, 50, n), "buyer": rng.integers(1, 5000, n),
         "seller": rng.integers(1, 5000, n), "trade_type": rng.integers(1, 4, n)}
    )  # fmt: skip
    big = tmp_path / "big.csv"
    pacsv.write_csv(table, big, pacsv.WriteOptions(quoting_style="none"))
    assert big.stat().st_size > 3 * bound  # and its rows take 5x the bound as columns
    small = write_csv(tmp_path / "small.csv", day_of("WDOFUT", BASE_MS - 90 * DAY_MS, 50_000, 1))
    proc = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE, system_env["VALKEY_URL"], str(big), str(small), str(bound)],
        env=subprocess_env(system_env), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    stored, growth = map(int, proc.stdout.split())
    assert stored == n
    assert growth <= bound, f"peak RSS grew {growth >> 20} MiB for a {bound >> 20} MiB bound"
