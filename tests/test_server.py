from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import valkey

from conftest import subprocess_env
from tickvault.config import load_settings
from tickvault.store.connection import Connection
from tickvault.store.server import STATE_FILE, EmbeddedValkey

FIND_SERVER = """
import json, sys
from tickvault.store.server import EmbeddedValkey
info = EmbeddedValkey(sys.argv[1]).ensure_running()
print(json.dumps({"port": info.port, "pid": info.pid}))
"""


def _client(server: EmbeddedValkey) -> valkey.Valkey:
    info = server.running()
    assert info is not None
    return valkey.Valkey(host=info.host, port=info.port)


def test_data_survives_stop_and_start(tmp_path: Path) -> None:
    server = EmbeddedValkey(tmp_path / "valkey")
    first = server.ensure_running()
    with _client(server) as client:
        ids = [client.xadd("stream:ticks:WDOFUT", {"n": str(i)}) for i in range(100)]
    server.stop()
    assert server.running() is None
    assert (tmp_path / "valkey" / "appendonly").is_dir()

    second = server.ensure_running()
    assert second.pid != first.pid
    with _client(server) as client:
        entries = client.xrange("stream:ticks:WDOFUT")
    server.stop()
    assert [e[0] for e in entries] == ids
    assert [e[1][b"n"] for e in entries] == [str(i).encode() for i in range(100)]


def test_config_binds_loopback_with_aof_everysec_and_no_eviction(tmp_path: Path) -> None:
    server = EmbeddedValkey(tmp_path / "valkey")
    server.ensure_running()
    try:
        with _client(server) as client:
            config = client.config_get("*")
    finally:
        server.stop()
    assert config["bind"] == "127.0.0.1"
    assert config["appendonly"] == "yes"
    assert config["appendfsync"] == "everysec"
    assert config["maxmemory-policy"] == "noeviction"


def test_two_processes_share_one_server(tmp_path: Path) -> None:
    data = tmp_path / "valkey"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", FIND_SERVER, str(data)],
            stdout=subprocess.PIPE,
            text=True,
            env=subprocess_env(),
        )
        for _ in range(3)
    ]
    found = [json.loads(p.communicate(timeout=60)[0]) for p in procs]
    server = EmbeddedValkey(data)
    try:
        assert len({(f["port"], f["pid"]) for f in found}) == 1, found
        info = server.running()
        assert info is not None and info.pid == found[0]["pid"]
    finally:
        server.stop()


def test_threads_racing_to_start_get_one_server(tmp_path: Path) -> None:
    results: list[int] = []
    lock = threading.Lock()

    def start() -> None:
        info = EmbeddedValkey(tmp_path / "valkey").ensure_running()
        with lock:
            results.append(info.pid)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    EmbeddedValkey(tmp_path / "valkey").stop()
    assert len(results) == 4 and len(set(results)) == 1


def test_last_process_out_stops_the_server_not_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TICKVAULT_DATA_DIR", str(tmp_path / "data"))
    first = Connection.open(load_settings())
    first.client("a").ping()
    # another tickvault process holds a named connection to the same server
    info = first.embedded.running()  # type: ignore[union-attr]
    assert info is not None
    other = valkey.Valkey(host=info.host, port=info.port, client_name="tickvault-999999-other")
    other.ping()
    first.close()
    assert EmbeddedValkey(tmp_path / "data" / "valkey").running() is not None, "stopped while in use"
    other.close()
    second = Connection.open(load_settings())
    second.client("b").ping()
    second.close()
    assert EmbeddedValkey(tmp_path / "data" / "valkey").running() is None
    assert not (tmp_path / "data" / "valkey" / STATE_FILE).exists()


def test_a_process_stops_the_server_when_its_last_connection_closes_not_its_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`tickvault backtest` reads the namespace through its own connection after its system (with
    a connection of its own) has stopped."""
    monkeypatch.setenv("TICKVAULT_DATA_DIR", str(tmp_path / "data"))
    reader, system = Connection.open(load_settings()), Connection.open(load_settings())
    system.client("recorder").set("k", "v")
    system.close()
    system.close()  # closing twice counts once
    assert reader.client("reader").get("k") == b"v", "stopped while this process still uses it"
    reader.close()
    assert EmbeddedValkey(tmp_path / "data" / "valkey").running() is None


def test_stale_state_file_of_a_dead_server_is_replaced(tmp_path: Path) -> None:
    data = tmp_path / "valkey"
    data.mkdir()
    with socket.socket() as taken:  # its old port is now someone else's
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        old_port = taken.getsockname()[1]
        (data / STATE_FILE).write_text(
            json.dumps({"host": "127.0.0.1", "port": old_port, "pid": 2**22 + 12345})
        )
        server = EmbeddedValkey(data)
        info = server.ensure_running()
    try:
        assert info.port != old_port and info.pid != 2**22 + 12345
        assert server.running() == info
    finally:
        server.stop()


def test_a_crashed_server_comes_back_on_its_port(tmp_path: Path) -> None:
    server = EmbeddedValkey(tmp_path / "valkey")
    first = server.ensure_running()
    os.kill(first.pid, signal.SIGKILL)
    second = server.ensure_running()
    try:
        assert second.pid != first.pid and second.port == first.port
    finally:
        server.stop()


def test_external_server_by_url_with_db(valkey_url: str, valkey_client: valkey.Valkey) -> None:
    url = valkey_url.rsplit("/", 1)[0] + "/3"
    with Connection.open(load_settings(valkey_url=url)) as conn:
        conn.check()
        conn.client("t").set("k", "v")
        assert conn.embedded is None
    valkey_client.select(3)
    assert valkey_client.get("k") == b"v"
    valkey_client.flushdb()
