"""Valkey Cluster on a real 3-node local cluster (`tickvault valkey --cluster 3`'s servers): keys of a
symbol share one slot, and the whole flow (ingest through bus and recorder, time travel over blocks
and the live tail, candles, the candle worker, features) gives exactly what one server gives."""

from __future__ import annotations

import contextlib
import itertools
import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import msgspec
import pandas as pd
import pytest
import valkey
from valkey.cluster import ValkeyCluster

from conftest import subprocess_env
from factories import BASE_MS, ticks
from tickvault.analytics.candles import TIMEFRAMES
from tickvault.analytics.features import FeatureConfig, FeatureEngine, backfill
from tickvault.domain.events import Tick, from_ms
from tickvault.domain.keys import KeySpace
from tickvault.errors import ConfigError
from tickvault.sources.simulator import MarketSimulator
from tickvault.store.api import Store
from tickvault.store.cluster import EmbeddedCluster, close_client, is_cluster_url, parse_cluster_url
from tickvault.workers.candle_worker import CandleWorker

SYMBOLS = ("WDOFUT", "WINFUT", "DOLFUT", "INDFUT")
SPAN = (BASE_MS - 86_400_000, BASE_MS + 86_400_000)
HEADER = ",".join(
    ["timestamp", "symbol", "timestamp_ms", "trade_id", "price", "volume", "quantity"]
    + ["buyer", "seller", "trade_type", "aggressor", "is_edit", "seq"]
)


def _row(t: Tick) -> str:
    return (
        f"{t.timestamp.isoformat(timespec='milliseconds')},{t.symbol},{t.timestamp_ms},{t.trade_id},{t.price!r},"
        f"{t.volume!r},{t.quantity},{t.buyer},{t.seller},{t.trade_type},{t.aggressor},"
        f"{'true' if t.is_edit else 'false'},0"
    )


def market_file(path: Path) -> list[Tick]:
    """Two sessions of four symbols, with late ticks and repeated rows, as a CSV file."""
    start = from_ms(BASE_MS) - timedelta(hours=3)  # 10:00 on Monday
    first = list(itertools.islice(MarketSimulator(list(SYMBOLS), seed=11, start=start).ticks(), 0, 80_000, 4))
    second = list(
        itertools.islice(
            MarketSimulator(list(SYMBOLS), seed=12, start=start + timedelta(days=1)).ticks(), 14_000
        )
    )
    rows = first + second
    late = rows[1000:1040]  # sent again, far later in the file: duplicates
    moved = rows[5000:5010]
    rows = rows[:5000] + rows[5010:]
    rows = rows[:20_000] + moved + rows[20_000:] + late  # out of order by minutes
    path.write_text("\n".join([HEADER, *map(_row, rows)]) + "\n")
    return first + second


def test_cluster_urls() -> None:
    seeds, options = parse_cluster_url("valkey+cluster://user:p%40ss@10.0.0.1:7000,10.0.0.2:7001")
    assert seeds == [("10.0.0.1", 7000), ("10.0.0.2", 7001)]
    assert options == {"ssl": False, "username": "user", "password": "p@ss"}
    assert parse_cluster_url("valkeys+cluster://h:1")[1]["ssl"] is True
    assert is_cluster_url("valkey+cluster://h:1") and not is_cluster_url("valkey://h:1/0")
    with pytest.raises(ConfigError, match="only database 0"):
        parse_cluster_url("valkey+cluster://h:1/3")
    with pytest.raises(ConfigError, match="not host:port"):
        parse_cluster_url("valkey+cluster://h:1,nope")


def test_the_local_cluster_covers_every_slot_on_three_nodes(
    valkey_cluster: EmbeddedCluster, cluster_client: ValkeyCluster
) -> None:
    assert len(cluster_client.get_primaries()) == 3
    for node in cluster_client.get_primaries():
        info = cluster_client.get_valkey_connection(node).execute_command("CLUSTER", "INFO").decode()
        assert "cluster_state:ok" in info and "cluster_slots_assigned:16384" in info
        assert "cluster_known_nodes:3" in info
    again = EmbeddedCluster(valkey_cluster.data_dir, nodes=3)  # found, not started twice
    assert [i.pid for i in again.ensure_running()] == [i.pid for i in valkey_cluster.infos]


def test_keys_of_one_symbol_are_in_one_slot_and_symbols_spread_over_nodes(
    cluster_client: ValkeyCluster,
) -> None:
    keys = KeySpace(cluster=True)
    nodes = set()
    symbols = [f"SYM{i}" for i in range(12)]
    for symbol in symbols:
        names = [
            keys.ticks(symbol), keys.features(symbol), keys.signals(symbol), keys.predictions(symbol),
            keys.late(symbol), keys.block_index(symbol), keys.block(symbol, "abc"),
            keys.writer_lease(symbol), keys.seen(symbol, "20251124", 0), keys.seen_edits(symbol, "20251124"),
            keys.candle_position(symbol), *(keys.candles(tf, symbol) for tf in TIMEFRAMES),
        ]  # fmt: skip
        assert len({cluster_client.keyslot(k) for k in names}) == 1, symbol
        nodes.add(cluster_client.get_node_from_key(keys.ticks(symbol)).name)
    assert len(nodes) == 3


def _tickvault(*args: str, url: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = subprocess_env({"VALKEY_URL": url, "TICKVAULT_DATA_DIR": str(cwd / "data")})
    return subprocess.run(
        [sys.executable, "-m", "tickvault", *args], env=env, cwd=cwd, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip


@pytest.mark.timeout(600)
def test_the_whole_flow_on_the_cluster_equals_one_server(
    valkey_cluster: EmbeddedCluster,
    cluster_client: ValkeyCluster,
    valkey_url: str,
    valkey_client: valkey.Valkey,
    tmp_path: Path,
) -> None:
    path = tmp_path / "market.csv"
    produced = market_file(path)
    single, clustered = Store(valkey_client), Store(cluster_client)
    for url in (valkey_url, valkey_cluster.url):
        done = _tickvault("ingest", str(path), "--via-bus", url=url, cwd=tmp_path)  # the live path, replayed
        assert done.returncode == 0, done.stderr
        assert f"stored={len(produced)} duplicates=40 rejected=0\n" in done.stdout, done.stdout
        assert "durable=yes" in done.stdout
    # the same stored entries, each symbol's keys on its own node; then seal part into blocks
    for symbol in SYMBOLS:
        assert clustered.count(symbol) == single.count(symbol) == sum(t.symbol == symbol for t in produced)
        top = single.last_tick(symbol)
        assert top is not None
        for store in (single, clustered):
            store.compact(symbol, 30 * 60_000)  # everything older than 30 min before the top: blocks
        assert clustered.history.refs(symbol, 0, 2**62) and single.history.refs(symbol, 0, 2**62)
    span = (BASE_MS - 4 * 3_600_000, BASE_MS + 2 * 86_400_000)
    for symbol in SYMBOLS:
        pd.testing.assert_frame_equal(clustered.ticks(symbol, *span), single.ticks(symbol, *span))
        for tf in TIMEFRAMES:
            pd.testing.assert_frame_equal(
                clustered.candles(symbol, tf, *span), single.candles(symbol, tf, *span)
            )
    # several symbols in one frame: fanned out over the nodes
    pd.testing.assert_frame_equal(clustered.ticks(list(SYMBOLS), *span), single.ticks(list(SYMBOLS), *span))
    # the CLI prints the same bytes
    args = ["query", ",".join(SYMBOLS), "--start", "2025-11-24", "--end", "2025-11-26", "--format", "csv"]
    one, many = (_tickvault(*args, url=url, cwd=tmp_path) for url in (valkey_url, valkey_cluster.url))
    assert one.returncode == many.returncode == 0, many.stderr
    assert many.stdout == one.stdout and many.stdout.count("\n") == len(produced) + 1
    # live candles: the worker follows the streams of every symbol on every node
    for store in (single, clustered):
        worker = CandleWorker(store, SYMBOLS)
        while worker.step(block_ms=0):
            pass
        worker.write(flush=True)
    for symbol in SYMBOLS:
        for tf in ("1m", "1h"):
            pd.testing.assert_frame_equal(
                clustered.candle_stream(symbol, tf, *span), single.candle_stream(symbol, tf, *span)
            )
    # features from history
    for symbol in SYMBOLS[:2]:
        ticks_of = [clustered.tick_events(symbol, *span), single.tick_events(symbol, *span)]
        assert ticks_of[0] == ticks_of[1]
        found = [backfill(FeatureEngine([symbol], FeatureConfig(emit_interval_ms=5000)), t) for t in ticks_of]
        assert found[0] == found[1] and len(found[0]) > 100


@pytest.mark.timeout(600)
def test_valkey_cluster_command_and_a_whole_run_on_it(tmp_path: Path) -> None:
    """`tickvault valkey --cluster 3` prints the URL; `run` with it records every tick (recorder,
    candles, features on the cluster); `query` reads them back; Ctrl+C stops the nodes."""
    import re
    import signal

    from conftest import subprocess_env
    from tickvault.store.server import free_port

    base = {"TICKVAULT_DATA_DIR": str(tmp_path / "data")}
    server = subprocess.Popen(
        [sys.executable, "-m", "tickvault", "valkey", "--cluster", "3"],
        env=subprocess_env(base), cwd=tmp_path, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert server.stderr is not None
        lines: list[str] = []
        while not any("export VALKEY_URL=" in line for line in lines) and len(lines) < 30:
            lines.append(server.stderr.readline())
        found = re.search(r"export VALKEY_URL=(\S+)", "".join(lines))
        assert found, lines
        url = found.group(1)
        assert url.startswith("valkey+cluster://") and url.count(",") == 2
        env = {**base, "VALKEY_URL": url, "TICKVAULT_SYMBOLS": "WDOFUT,WINFUT,DOLFUT"}
        env.update(
            {name: str(free_port()) for name in ("ZMQ_TICK_PORT", "ZMQ_SIGNAL_PORT", "ZMQ_REPLAY_PORT")}
        )
        run = subprocess.run(
            [sys.executable, "-m", "tickvault", "run", "--duration", "4", "--no-dashboard",
             "--speed", "50"],
            env=subprocess_env(env), cwd=tmp_path, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        assert "valkey cluster" in run.stderr and "drained=yes" in run.stdout
        generated = int(re.search(r"generated=(\d+)", run.stdout).group(1))  # type: ignore[union-attr]
        stored = int(re.search(r"stored=(\d+)", run.stdout).group(1))  # type: ignore[union-attr]
        assert generated == stored > 0
        query = subprocess.run(
            [sys.executable, "-m", "tickvault", "query", "WDOFUT,WINFUT,DOLFUT", "--start", "2000-01-01",
             "--end", "2100-01-01", "--format", "csv"],
            env=subprocess_env(env), cwd=tmp_path, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert query.returncode == 0, query.stderr
        assert query.stdout.count("\n") == stored + 1
    finally:
        server.send_signal(signal.SIGINT)
        server.communicate(timeout=120)
    assert server.returncode == 0
    nodes = EmbeddedCluster(tmp_path / "data" / "valkey-cluster", nodes=3)
    assert all(member.running() is None for member in nodes.members)


@pytest.mark.timeout(600)
def test_a_slot_migrated_mid_ingest_loses_and_duplicates_nothing(
    cluster_client: ValkeyCluster, tmp_path: Path
) -> None:
    import threading

    from conftest import running_recorder, wait_until
    from tickvault.store.cluster import migrate_slot

    store = Store(cluster_client)
    start = from_ms(BASE_MS)
    produced = list(
        itertools.islice(MarketSimulator(["WDOFUT", "WINFUT"], seed=5, start=start).ticks(), 40_000)
    )
    produced = [msgspec.structs.replace(t, seq=i + 1) for i, t in enumerate(produced)]
    slot = cluster_client.keyslot(store.keys.ticks("WDOFUT"))
    owner = cluster_client.get_node_from_key(store.keys.ticks("WDOFUT"))
    target = next(n for n in cluster_client.get_primaries() if n.name != owner.name)
    moving = threading.Event()
    with running_recorder(store, spool_path=tmp_path / "spool") as recorder:
        for i in range(0, 15_000, 500):
            recorder.submit(produced[i : i + 500])
        assert wait_until(lambda: store.count("WDOFUT") > 0, timeout=60)

        def feed_while_moving() -> None:
            moving.wait(60)
            for i in range(15_000, len(produced), 500):
                recorder.submit(produced[i : i + 500])

        feeder = threading.Thread(target=feed_while_moving, daemon=True)
        feeder.start()
        batches: list[int] = []

        def between() -> None:  # writes go on between the batches of keys being moved
            moving.set()
            batches.append(1)

        moved = migrate_slot(cluster_client, slot, target, batch=1, between=between)
        feeder.join(60)
        want = {"WDOFUT": sum(t.symbol == "WDOFUT" for t in produced), "WINFUT": 0}
        want["WINFUT"] = len(produced) - want["WDOFUT"]
        assert wait_until(lambda: all(store.count(s) == n for s, n in want.items()), timeout=120), {
            s: store.count(s) for s in want
        }
    assert moved >= 3 and len(batches) == moved  # the stream, its trade-id bitmap, the writer lease
    assert cluster_client.get_node_from_key(store.keys.ticks("WDOFUT")).name == target.name
    for symbol in ("WDOFUT", "WINFUT"):
        back = store.tick_events(symbol, BASE_MS - 1, BASE_MS + 86_400_000)
        mine = [t for t in produced if t.symbol == symbol]
        assert sorted((t.trade_id, t.seq) for t in back) == sorted((t.trade_id, t.seq) for t in mine)


class ClusterCommand:
    """`tickvault valkey --cluster 3` in a subprocess on one data folder, run as a user runs it."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self.data = cwd / "data"
        self.running: subprocess.Popen[str] | None = None

    def start(self) -> tuple[str, str]:
        """Start it; returns the URL it prints and what it said up to "Ctrl+C to stop"."""
        import re

        self.running = subprocess.Popen(
            [sys.executable, "-m", "tickvault", "valkey", "--cluster", "3"],
            env=subprocess_env({"TICKVAULT_DATA_DIR": str(self.data)}), cwd=self.cwd,
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.running.stderr is not None
        said = ""
        while (line := self.running.stderr.readline()) and "Ctrl+C to stop" not in line:
            said += line
        found = re.search(r"export VALKEY_URL=(\S+)", said)
        assert found, said
        return found.group(1), said

    def stop(self, sig: int) -> tuple[int, str]:
        """Ctrl+C (SIGINT) or SIGTERM; returns its exit code and the rest of what it said."""
        assert self.running is not None
        self.running.send_signal(sig)
        _, said = self.running.communicate(timeout=120)
        self.running, code = None, self.running.returncode
        return code, said

    def close(self) -> None:
        if self.running is not None:
            self.running.kill()
            self.running.communicate(timeout=60)
        EmbeddedCluster(self.data / "valkey-cluster", nodes=3).stop()


@pytest.fixture
def cluster_command(tmp_path: Path) -> Iterator[ClusterCommand]:
    command = ClusterCommand(tmp_path)
    try:
        yield command
    finally:
        command.close()


def _assert_same_cluster(url: str, keys: dict[str, bytes], symbols: list[str], stored: pd.DataFrame) -> None:
    """Every node of `url` says cluster_state:ok and lists exactly the nodes of `url` as the slots'
    owners; a client that discovers the topology from any single node reads back all of `keys`;
    `tickvault.connect` reads back the ticks `stored` of `symbols`."""
    import tickvault

    seeds, _ = parse_cluster_url(url)
    for host, port in seeds:
        with valkey.Valkey(host=host, port=port) as node:
            assert "cluster_state:ok" in node.execute_command("CLUSTER", "INFO").decode(), (host, port)
            owners = {(o[0].decode(), o[1]) for r in node.execute_command("CLUSTER", "SLOTS") for o in r[2:]}
            assert owners == set(seeds), (port, owners)
        client = ValkeyCluster(host=host, port=port)  # the rest of the topology: from this node
        try:
            assert client.mget_nonatomic(list(keys)) == list(keys.values())
        finally:
            close_client(client)
    with tickvault.connect(url) as store:
        pd.testing.assert_frame_equal(store.ticks(symbols, *SPAN), stored)


@contextlib.contextmanager
def _listening(*addresses: tuple[str, int]) -> Iterator[None]:
    """Someone else listens on these ports meanwhile."""
    import socket

    with contextlib.ExitStack() as stack:
        for address in addresses:
            taken = stack.enter_context(socket.socket())
            taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past the stopped node's TIME_WAIT
            taken.bind(address)
            taken.listen()
        yield


@pytest.mark.timeout(600)
def test_the_cluster_command_stopped_and_started_again_is_the_same_cluster_with_its_data(
    cluster_command: ClusterCommand,
) -> None:
    """Stopped with Ctrl+C and started again, `tickvault valkey --cluster 3` comes back on its ports
    with its data; when a port was taken meanwhile, that node moves and its peers learn where; after
    a crash (the command and its nodes killed) it comes back too."""
    import os
    import signal

    import tickvault
    from tickvault.store.server import EmbeddedValkey

    url, _ = cluster_command.start()
    symbols = [f"SYM{i}" for i in range(12)]  # spread over the three nodes
    keys = {f"restart:{{{i}}}": str(i).encode() for i in range(300)}
    host, port = parse_cluster_url(url)[0][0]
    written = ValkeyCluster(host=host, port=port)
    try:
        written.mset_nonatomic(keys)
    finally:
        close_client(written)
    with tickvault.connect(url) as store:
        store.append_ticks([t for s in symbols for t in ticks(50, symbol=s)])
        assert store.wait_durable()  # every node's file on disk: the crash below loses nothing
        stored = store.ticks(symbols, *SPAN)
    assert len(stored) == 600

    code, said = cluster_command.stop(signal.SIGINT)
    assert code == 0 and "stopped the embedded cluster (data kept)" in said, said
    again, said = cluster_command.start()
    assert again == url and "the same URL as the last start" in said, said
    _assert_same_cluster(again, keys, symbols, stored)

    # a port taken while it was stopped: that node starts elsewhere, the others are told where
    code, said = cluster_command.stop(signal.SIGTERM)
    assert code == 0, said
    seeds = parse_cluster_url(url)[0]
    with _listening(seeds[1]):
        moved, said = cluster_command.start()
    assert f"the URL changed, a port was taken; was {url}" in said, said
    now = parse_cluster_url(moved)[0]
    assert now[0] == seeds[0] and now[2] == seeds[2] and now[1] != seeds[1]
    _assert_same_cluster(moved, keys, symbols, stored)

    # every port taken, the cluster bus ports too: no node can reach a peer where its nodes.conf
    # says, each must be told
    buses = []
    for host, port in now:
        with valkey.Valkey(host=host, port=port) as node:
            buses.append((host, int(node.config_get("cluster-port")["cluster-port"])))
    code, said = cluster_command.stop(signal.SIGINT)
    assert code == 0, said
    with _listening(*now, *buses):
        elsewhere, said = cluster_command.start()
    assert not set(parse_cluster_url(elsewhere)[0]) & set(now), elsewhere
    _assert_same_cluster(elsewhere, keys, symbols, stored)

    # a crash: the command and every node killed; they come back where they were
    nodes = [EmbeddedValkey(cluster_command.data / "valkey-cluster" / f"node-{k}") for k in range(3)]
    pids = [info.pid for info in (node.running() for node in nodes) if info is not None]
    assert len(pids) == 3
    cluster_command.stop(signal.SIGKILL)
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    back, said = cluster_command.start()
    assert back == elsewhere and "the same URL as the last start" in said, said
    _assert_same_cluster(back, keys, symbols, stored)
    code, said = cluster_command.stop(signal.SIGINT)
    assert code == 0 and "stopped the embedded cluster (data kept)" in said, said


def test_a_cluster_folder_started_with_another_node_count_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "valkey-cluster"
    folder.mkdir()
    nodes = [
        {"id": f"{k:040x}", "host": "127.0.0.1", "port": 7000 + k, "bus_port": 17000 + k} for k in range(3)
    ]
    (folder / "cluster.json").write_text(json.dumps(nodes))
    local = EmbeddedCluster(folder, nodes=4)
    try:
        with pytest.raises(ConfigError, match="holds a cluster of 3 nodes"):
            local.ensure_running()
        assert all(member.running() is None for member in local.members), "nothing started"
    finally:
        local.stop()
