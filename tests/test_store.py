from __future__ import annotations

import random

import pytest
import valkey

from factories import BASE_MS, tick, ticks
from tickvault.domain.events import from_ms
from tickvault.errors import DataError, StoreUnavailable
from tickvault.store import api
from tickvault.store.api import Store, frame_to_ticks


def test_written_ticks_come_back_exactly_in_order(store: Store) -> None:
    written = ticks(500)
    result = store.append_ticks(written)
    assert (result.stored, result.duplicates, result.late) == (500, 0, 0)
    assert store.tick_events("WDOFUT", BASE_MS, BASE_MS + 10_000) == written
    frame = store.ticks("WDOFUT", BASE_MS, BASE_MS + 10_000)
    assert frame_to_ticks(frame) == written
    assert list(frame.index) == [t.timestamp for t in written]


def test_stream_ids_are_exchange_time_not_write_time(store: Store, valkey_client: valkey.Valkey) -> None:
    """Guide defect 8: ids came from the publisher's clock."""
    store.append_ticks(ticks(9, per_ms=3))
    ids = [e[0].decode() for e in valkey_client.xrange("stream:ticks:WDOFUT")]
    assert ids == [f"{BASE_MS + i // 3}-{i % 3}" for i in range(9)]


def test_same_tick_written_twice_is_stored_once(store: Store) -> None:
    batch = ticks(200)
    store.append_ticks(batch)
    again = store.append_ticks(batch[50:] + batch[:50])
    assert (again.stored, again.duplicates) == (0, 200)
    assert store.count("WDOFUT") == 200


def test_trade_ids_restart_each_session_and_are_not_duplicates(store: Store) -> None:
    day = 86_400_000
    store.append_ticks([tick(trade_id=1), tick(ts_ms=BASE_MS + day, trade_id=1)])
    assert store.count("WDOFUT") == 2


def test_tick_older_than_the_stream_top_is_kept_and_found_by_exchange_time(
    store: Store, valkey_client: valkey.Valkey
) -> None:
    """Guide defect 1: an XADD id not after the top was refused and the tick lost."""
    store.append_ticks(ticks(30))
    late = [tick(ts_ms=BASE_MS - 60_000, trade_id=900), tick(ts_ms=BASE_MS + 2, trade_id=901)]
    result = store.append_ticks(late)
    assert (result.stored, result.late) == (2, 2)
    assert store.count("WDOFUT") == 32
    around = store.tick_events("WDOFUT", BASE_MS - 60_000, BASE_MS - 60_000)
    assert around == [late[0]]
    window = store.tick_events("WDOFUT", BASE_MS + 2, BASE_MS + 2)
    assert [t.trade_id for t in window] == [7, 8, 9, 901]  # same-ms peers first, then the late one
    everything = store.tick_events("WDOFUT", BASE_MS - 100_000, BASE_MS + 100_000)
    assert sorted(t.trade_id for t in everything) == sorted([t.trade_id for t in ticks(30)] + [900, 901])
    assert len(everything) == 32  # once each, although the late ones also sit at later stream ids
    assert store.append_ticks(late).duplicates == 2


def test_resume_point_is_the_newest_tick_and_the_highest_seq_even_after_late_ticks(store: Store) -> None:
    on_time = [tick(ts_ms=BASE_MS + i, trade_id=i, seq=400 + i) for i in range(1, 11)]
    store.append_ticks(on_time)
    assert store.last_seq("WDOFUT") == 410 and store.last_tick("WDOFUT") == on_time[-1]
    # written late (a spool drained after newer ticks): older times and older seqs at the stream's end
    store.append_ticks([tick(ts_ms=BASE_MS - 300 + i, trade_id=100 + i, seq=1 + i) for i in range(300)])
    assert store.last_seq("WDOFUT") == 410 and store.last_tick("WDOFUT") == on_time[-1]
    # a clock step back: newer seqs with older times
    stepped = tick(ts_ms=BASE_MS - 5_000, trade_id=500, seq=411)
    store.append_ticks([stepped])
    assert store.last_seq("WDOFUT") == 411
    assert store.last_tick("WDOFUT") == on_time[-1]
    assert store.last_seq("NOSUCH") == 0 and store.last_tick("NOSUCH") is None


def test_equal_and_out_of_order_burst_is_all_kept(store: Store) -> None:
    rng = random.Random(3)
    burst = ticks(300, per_ms=5)
    shuffled = burst[:]
    rng.shuffle(shuffled)
    for i in range(0, 300, 37):
        store.append_ticks(shuffled[i : i + 37])
    back = store.tick_events("WDOFUT", BASE_MS, BASE_MS + 1000)
    assert sorted(back, key=lambda t: t.trade_id) == burst
    assert [t.timestamp_ms for t in back] == sorted(t.timestamp_ms for t in back)


def test_edits_are_stored_once_each(store: Store) -> None:
    original = tick(trade_id=5, price=5400.0)
    edit = tick(trade_id=5, price=5400.5, is_edit=True)
    assert store.append_ticks([original, edit, edit]).stored == 2
    assert store.append_ticks([edit]).duplicates == 1
    back = store.tick_events("WDOFUT", BASE_MS, BASE_MS)
    assert [t.is_edit for t in back] == [False, True]


def test_range_end_includes_its_whole_millisecond(store: Store) -> None:
    """Guide defect 4: the end id `{end_ms}-0` dropped 2 of 3 same-millisecond ticks."""
    store.append_ticks(ticks(9, per_ms=3))
    assert len(store.ticks("WDOFUT", BASE_MS, BASE_MS + 2)) == 9
    assert len(store.ticks("WDOFUT", BASE_MS + 1, BASE_MS + 1)) == 3


def test_an_end_given_as_a_date_takes_in_that_whole_day(store: Store) -> None:
    from datetime import date

    late = tick(ts_ms=BASE_MS + 5 * 3_600_000 + 59 * 60_000, trade_id=99)  # 2025-11-24 18:59 -03:00
    next_day = tick(ts_ms=BASE_MS + 11 * 3_600_000, trade_id=100)  # 2025-11-25 00:00 -03:00
    store.append_ticks([tick(), late, next_day])
    assert list(store.ticks("WDOFUT", "2025-11-24", "2025-11-24").trade_id) == [1, 99]
    assert list(store.ticks("WDOFUT", "2025-11-24", date(2025, 11, 24)).trade_id) == [1, 99]
    assert list(store.ticks("WDOFUT", "2025-11-24", "2025-11-25").trade_id) == [1, 99, 100]
    # a time is a time: midnight exactly, inclusive
    assert list(store.ticks("WDOFUT", "2025-11-24", "2025-11-25T00:00:00-03:00").trade_id) == [1, 99, 100]
    assert list(store.ticks("WDOFUT", "2025-11-24", "2025-11-24T23:59:59.999-03:00").trade_id) == [1, 99]


def test_no_init_entry_and_types_restored(store: Store, valkey_client: valkey.Valkey) -> None:
    """Guide defects 2 and 3: an 'init' entry in the tick stream; every field came back as str."""
    store.append_ticks(ticks(3))
    assert all(b"init" not in fields for _, fields in valkey_client.xrange("stream:ticks:WDOFUT"))
    frame = store.ticks("WDOFUT", BASE_MS, BASE_MS + 10)
    assert len(frame) == 3
    assert str(frame["quantity"].dtype) == "int64" and str(frame["trade_id"].dtype) == "int64"
    assert str(frame["price"].dtype) == "float64" and str(frame["is_edit"].dtype) == "bool"
    assert not frame["is_edit"].any()


def test_empty_range_has_the_same_columns(store: Store) -> None:
    store.append_ticks(ticks(3))
    full = store.ticks("WDOFUT", BASE_MS, BASE_MS + 10)
    empty = store.ticks("WDOFUT", BASE_MS + 1_000_000, BASE_MS + 2_000_000)
    assert empty.empty
    assert list(empty.columns) == list(full.columns)
    assert dict(empty.dtypes) == dict(full.dtypes)
    assert store.ticks("NOSUCH", BASE_MS, BASE_MS + 10).empty


def test_time_arguments(store: Store) -> None:
    store.append_ticks(ticks(9))
    start = from_ms(BASE_MS)
    assert len(store.ticks("WDOFUT", start.isoformat(), "2025-11-24T13:00:00.002-03:00")) == 9
    assert len(store.ticks("WDOFUT", "2025-11-24", "2025-11-25")) == 9
    assert len(store.ticks("WDOFUT", "2025-11-24T16:00:00Z", "2025-11-24T16:00:00.002Z")) == 9
    with pytest.raises(DataError, match="start: .*no timezone"):
        store.ticks("WDOFUT", "2025-11-24T13:00:00", "now")
    with pytest.raises(DataError, match="end: is before start"):
        store.ticks("WDOFUT", BASE_MS + 5, BASE_MS)
    with pytest.raises(DataError, match="not a time"):
        store.ticks("WDOFUT", "yesterday-ish", "now")


def test_as_of_returns_last_tick_at_or_before(store: Store) -> None:
    written = ticks(9, per_ms=3)
    store.append_ticks(written)
    assert store.as_of("WDOFUT", BASE_MS + 1) == written[5]
    assert store.as_of("WDOFUT", BASE_MS - 1) is None
    late = tick(ts_ms=BASE_MS + 1, trade_id=77)
    store.append_ticks([late])
    assert store.as_of("WDOFUT", BASE_MS + 1) == late
    assert store.as_of("WDOFUT", BASE_MS + 10) == written[-1]


def test_unreachable_valkey_is_an_error_not_empty_data() -> None:
    """Guide defect 9: an unreachable server looked the same as 'no data' ([])."""
    from tickvault.store.server import free_port

    dead = Store(valkey.Valkey(port=free_port(), socket_connect_timeout=0.5))
    with pytest.raises(StoreUnavailable):
        dead.ticks("WDOFUT", BASE_MS, BASE_MS + 10)
    with pytest.raises(StoreUnavailable):
        dead.append_ticks(ticks(1))


def test_symbols_are_listed(store: Store) -> None:
    store.append_ticks(ticks(2) + ticks(2, symbol="WINFUT"))
    assert store.symbols() == ["WDOFUT", "WINFUT"]


def test_retention_is_exact_and_counts_from_the_newest_tick(
    store: Store, valkey_client: valkey.Valkey
) -> None:
    """Guide defect 5: an approximate XTRIM left 350,039 of 360,000 expired entries behind."""
    day = 86_400_000
    old = ticks(3000, start_ms=BASE_MS - 40 * day)  # 2025-10-15
    new = ticks(3000, start_ms=BASE_MS)  # the newest is at BASE_MS + 999
    edge = ticks(3, start_ms=BASE_MS + 999 - 30 * day)  # exactly at the cutoff: kept
    late_old = [tick(ts_ms=BASE_MS - 45 * day, trade_id=777)]  # stored after the new ones, expired
    store.append_ticks(old + edge + new)
    store.append_ticks(late_old)
    assert store.apply_retention("WDOFUT", 30) == 3001
    remaining = store.tick_events("WDOFUT", 0, BASE_MS + day)
    assert remaining == edge + new
    assert valkey_client.zcard("tv:late:WDOFUT") == 0
    assert not list(valkey_client.scan_iter("tv:seen:WDOFUT:20251015:*"))
    assert list(valkey_client.scan_iter("tv:seen:WDOFUT:20251124:*"))


def test_retention_never_deletes_old_research_data_on_arrival(store: Store) -> None:
    """Guide defect 7 (the other half): retention counted from the wall clock would delete 2013 data."""
    from datetime import datetime

    from tickvault.domain.events import B3_TZ, to_ms

    t2013 = to_ms(datetime(2013, 5, 2, 10, 0, tzinfo=B3_TZ))
    store.append_ticks(ticks(1000, start_ms=t2013))
    assert store.cleanup(30) == {"WDOFUT": 0}
    assert store.count("WDOFUT") == 1000


def test_several_symbols_in_one_frame_in_time_order(store: Store) -> None:
    store.append_ticks(ticks(30, per_ms=1) + ticks(20, symbol="WINFUT", start_ms=BASE_MS + 5, per_ms=2))
    frame = store.ticks(["WDOFUT", "WINFUT"], BASE_MS, BASE_MS + 1000)
    assert len(frame) == 50
    assert frame.index.is_monotonic_increasing
    assert list(frame["symbol"].cat.categories) == ["WDOFUT", "WINFUT"]
    assert (frame["symbol"] == "WINFUT").sum() == 20
    with pytest.raises(DataError, match="symbol"):
        store.ticks(["WDOFUT", "bad sym"], BASE_MS, BASE_MS + 1)


def test_features_predictions_and_signals_by_the_same_range_api(store: Store) -> None:
    from tickvault.domain.events import Features, Prediction, Signal

    stamps = [(BASE_MS + i * 1000, from_ms(BASE_MS + i * 1000)) for i in range(5)]
    base = {"symbol": "WDOFUT"}
    feats_in = [
        Features(**base, timestamp=t, timestamp_ms=ms, values={"rsi": 50.0 + i, "regime": "LOW_VOL"})
        for i, (ms, t) in enumerate(stamps)
    ]
    preds_in = [
        Prediction(**base, timestamp=t, timestamp_ms=ms, model="m1", probabilities={"up": 0.6, "down": 0.4})
        for ms, t in stamps
    ]
    signals_in = [
        Signal(**base, timestamp=t, timestamp_ms=ms, action="BUY", confidence=0.7) for ms, t in stamps
    ]
    store.append_events(feats_in + preds_in + signals_in)
    feats = store.features("WDOFUT", BASE_MS + 1000, BASE_MS + 3000)
    assert list(feats["rsi"]) == [51.0, 52.0, 53.0] and set(feats["regime"]) == {"LOW_VOL"}
    assert str(feats.index.tz) == "America/Sao_Paulo"
    assert list(store.predictions("WDOFUT", BASE_MS, BASE_MS + 10_000)["up"]) == [0.6] * 5
    assert list(store.signals("WDOFUT", BASE_MS, BASE_MS + 10_000)["action"]) == ["BUY"] * 5
    assert store.features("WDOFUT", BASE_MS + 10**6, BASE_MS + 10**7).empty


def test_retention_also_trims_candles_and_features(store: Store, valkey_client: valkey.Valkey) -> None:
    from tickvault.domain.events import Features
    from tickvault.workers.candle_worker import CandleWorker

    day = 86_400_000
    store.append_ticks(ticks(300, start_ms=BASE_MS - 40 * day) + ticks(300, start_ms=BASE_MS))
    worker = CandleWorker(store, ("WDOFUT",))
    while worker.step(block_ms=0):
        pass
    worker.write(flush=True)
    store.append_events(
        [
            Features(symbol="WDOFUT", timestamp=from_ms(ms), timestamp_ms=ms, values={"x": 1.0})
            for ms in (BASE_MS - 40 * day, BASE_MS)
        ]
    )
    assert len(store.candle_stream("WDOFUT", "1m", 0, BASE_MS + day)) == 2
    store.apply_retention("WDOFUT", 30)
    kept = store.candle_stream("WDOFUT", "1m", 0, BASE_MS + day)
    assert list(kept.index) == list(store.candles("WDOFUT", "1m", BASE_MS - day, BASE_MS + day).index)
    assert len(store.features("WDOFUT", 0, BASE_MS + day)) == 1


def test_a_tick_stored_late_takes_its_place_among_same_millisecond_ticks_by_seq(store: Store) -> None:
    """A spool drained after newer ticks: the late tick shares a millisecond with stored ones and
    is read back in the order the source produced it (seq), live or sealed."""
    first = [tick(ts_ms=BASE_MS + 5, trade_id=i, seq=i) for i in (1, 3)]
    store.append_ticks(first + [tick(ts_ms=BASE_MS + 9, trade_id=4, seq=4)])
    store.append_ticks([tick(ts_ms=BASE_MS + 5, trade_id=2, seq=2)])  # arrives last
    assert [t.seq for t in store.tick_events("WDOFUT", BASE_MS, BASE_MS + 10)] == [1, 2, 3, 4]
    store.seal("WDOFUT", BASE_MS + 100)
    assert [t.seq for t in store.tick_events("WDOFUT", BASE_MS, BASE_MS + 10)] == [1, 2, 3, 4]


def test_the_dead_letter_stream_keeps_each_refusal_bounded_and_is_capped(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every writer of dead letters goes through `Store.dead_letter`: the entry says why, where and
    what (cut to a bounded size), and the stream stays near its cap (trimmed in whole nodes)."""
    monkeypatch.setattr(api, "DEAD_LETTER_MAXLEN", 100)
    store.dead_letter("x" * 1000, "price", topic="tick_WDOFUT", payload=b"p" * 10_000, entry=b"1-0")
    [(_, fields)] = store.client.xrange(store.keys.dead_letters())
    assert (len(fields[b"reason"]), fields[b"field"], fields[b"topic"]) == (500, b"price", b"tick_WDOFUT")
    assert (len(fields[b"payload"]), fields[b"entry"]) == (4096, b"1-0") and int(fields[b"received_ms"]) > 0
    for _ in range(400):
        store.dead_letter("bad", "price")
    assert 100 <= store.client.xlen(store.keys.dead_letters()) < 300
