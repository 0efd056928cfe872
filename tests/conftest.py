"""Fixtures: a real embedded Valkey on a free loopback port (one per session, flushed per test),
real ZeroMQ sockets, and an environment with none of the developer's settings leaking in."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

# scikit-learn's OpenMP threads spin-wait; beside Valkey, ZeroMQ and the pipeline's threads on a
# 2-core machine that turns a 20 s fit into minutes. One thread each keeps the suite predictable.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import valkey  # noqa: E402
from valkey.cluster import ValkeyCluster  # noqa: E402

import browser  # noqa: E402
import leaks  # noqa: E402
from tickvault.app.system import System
from tickvault.bus.subscriber import Subscriber  # noqa: E402
from tickvault.config import Settings
from tickvault.recorder.recorder import Recorder
from tickvault.store.api import Store
from tickvault.store.cluster import EmbeddedCluster, close_client
from tickvault.store.cluster import cluster_client as connect_cluster
from tickvault.store.server import EmbeddedValkey, ServerInfo, free_port

SETTING_ENV_NAMES = [
    str(info.validation_alias)
    for info in Settings.model_fields.values()
    if isinstance(info.validation_alias, str)
]


_BEFORE = pytest.StashKey[leaks.Snapshot]()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """One line when the browser tests (test_web_browser.py) could not run here, and why."""
    skipped = terminalreporter.stats.get("skipped", [])
    if any("test_web_browser" in getattr(report, "nodeid", "") for report in skipped):
        reason = browser.missing() or "see the skip reasons above"
        terminalreporter.write_line(f"browser tests skipped: {reason}", yellow=True, bold=True)


@pytest.fixture(autouse=True)
def no_leftovers(request: pytest.FixtureRequest) -> None:
    """Snapshot threads and children once the wider-scoped fixtures (servers) are up; checked after
    the test's teardown (pytest_runtest_teardown below)."""
    request.node.stash[_BEFORE] = leaks.snapshot()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Iterator[None]:
    yield
    before = item.stash.get(_BEFORE, None)
    if before is None:
        return
    left = leaks.leftovers(before)
    leaks.kill_children(before)  # reported below, but never left to disturb the next tests
    if left:
        raise AssertionError(f"{item.nodeid} left running after its teardown: " + "; ".join(left))


@pytest.fixture(autouse=True)
def stop_systems(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every `System` a test builds is stopped when the test ends, passed or failed (stop() is
    idempotent: a test that stopped its own gets the same summary back)."""
    made: list[System] = []
    build = System.__init__

    def tracked(self: System, *args: Any, **kwargs: Any) -> None:
        build(self, *args, **kwargs)
        made.append(self)  # one whose construction failed has nothing to stop

    monkeypatch.setattr(System, "__init__", tracked)
    yield
    for system in made:
        with contextlib.suppress(Exception):  # the test's own outcome is what gets reported
            system.stop()


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """An in-process CLI call configures tickvault's logger (a handler on that test's stderr, no
    propagation): undo it, so later tests neither write to a closed stream nor miss records."""
    logger = logging.getLogger("tickvault")
    saved = (list(logger.handlers), logger.propagate, logger.level)
    yield
    for handler in logger.handlers:
        if handler not in saved[0]:
            handler.close()
    logger.handlers[:], logger.propagate, logger.level = saved


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No setting from the machine's environment or a .env file reaches a test."""
    for name in SETTING_ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    # a System built in-process serves no web page unless its test asks; a `tickvault run` subprocess
    # gets its environment from subprocess_env (system_env: a free WEB_PORT) and serves as users see
    monkeypatch.setenv("WEB_ENABLED", "false")
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def valkey_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerInfo]:
    server = EmbeddedValkey(tmp_path_factory.mktemp("valkey-session"))
    info = server.ensure_running()
    yield info
    server.stop()


@pytest.fixture(scope="session")
def valkey_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedCluster]:
    """A real 3-node Valkey Cluster on loopback (started once; its data is flushed per test)."""
    cluster = EmbeddedCluster(tmp_path_factory.mktemp("valkey-cluster"), nodes=3)
    cluster.ensure_running()
    yield cluster
    cluster.stop()


@pytest.fixture
def cluster_client(valkey_cluster: EmbeddedCluster) -> Iterator[ValkeyCluster]:
    client = connect_cluster(valkey_cluster.url)
    for node in client.get_primaries():
        client.get_valkey_connection(node).flushall()
    yield client
    close_client(client)


@pytest.fixture
def valkey_url(valkey_server: ServerInfo) -> str:
    return f"valkey://{valkey_server.host}:{valkey_server.port}/0"


@pytest.fixture
def valkey_client(valkey_server: ServerInfo) -> Iterator[valkey.Valkey]:
    client = valkey.Valkey(host=valkey_server.host, port=valkey_server.port)
    client.flushall()
    yield client
    client.close()


@pytest.fixture
def store(valkey_client: valkey.Valkey) -> Store:
    return Store(valkey_client)


@pytest.fixture
def system_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, valkey_url: str, valkey_client: valkey.Valkey
) -> dict[str, str]:
    """Environment for a whole-system run against the test server, on free loopback ports."""
    env = {
        "VALKEY_URL": valkey_url,
        "TICKVAULT_DATA_DIR": str(tmp_path / "data"),
        "ZMQ_TICK_PORT": str(free_port()),
        "ZMQ_BOOK_PORT": str(free_port()),
        "ZMQ_HISTORY_PORT": str(free_port()),
        "ZMQ_SIGNAL_PORT": str(free_port()),
        "ZMQ_REPLAY_PORT": str(free_port()),
        "WEB_PORT": str(free_port()),  # `run` serves the web dashboard: never two tests on 8050
        "ZMQ_BOOK_REPLAY_PORT": str(free_port()),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


def subprocess_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The current environment without tickvault settings, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in SETTING_ENV_NAMES}
    env.update(extra or {})
    return env


def wait_until(predicate: Callable[[], bool], timeout: float = 60) -> bool:
    """Poll `predicate` until it holds or `timeout` seconds pass (no sleeping as synchronisation)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


@contextlib.contextmanager
def running_recorder(
    store: Store, subscriber: Subscriber | None = None, **kwargs: object
) -> Iterator[Recorder]:
    """A recorder on its own thread, fed by `subscriber` or by `submit`; stopped (and flushed) on exit."""
    recorder = Recorder(store, **kwargs)  # type: ignore[arg-type]
    stop = threading.Event()
    thread = threading.Thread(target=recorder.run, args=(subscriber, stop), daemon=True)
    thread.start()
    try:
        yield recorder
    finally:
        stop.set()
        thread.join(30)
