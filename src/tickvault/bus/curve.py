"""ZeroMQ CURVE keys for a bus that leaves loopback: encryption, and the server's identity checked by
every subscriber. Keys are ZeroMQ certificate files (`zmq.auth` format: `name.key` public,
`name.key_secret` public + secret, written 0600). With `ZMQ_CURVE_CLIENTS` (a folder of client public
keys) the publisher also authenticates its clients through ZAP: a client whose key is not there is
refused during the handshake and receives nothing."""

from __future__ import annotations

import ipaddress
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from tickvault.errors import ConfigError

ZAP_DOMAIN = "tickvault"
_authenticators: dict[int, ThreadAuthenticator] = {}  # per ZeroMQ context
_lock = threading.Lock()


@dataclass(frozen=True)
class ServerKeys:
    public: bytes
    secret: bytes
    clients: Path | None = None  # folder of allowed client public keys; None: any client


@dataclass(frozen=True)
class ClientKeys:
    public: bytes
    secret: bytes
    server_public: bytes


def create_keys(folder: Path, name: str) -> tuple[Path, Path]:
    """(public file, secret file) of a new key pair; the secret one readable by its owner only."""
    folder.mkdir(parents=True, exist_ok=True)
    public, secret = zmq.auth.create_certificates(folder, name)
    os.chmod(secret, 0o600)
    return Path(public), Path(secret)


def _load(path: Path, *, secret: bool, setting: str) -> tuple[bytes, bytes | None]:
    try:
        public, private = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(setting, str(path), f"is not a ZeroMQ certificate file ({exc})") from None
    if secret and private is None:
        raise ConfigError(setting, str(path), "holds no secret key (use the .key_secret file)")
    return public, private


def server_keys(
    secret_file: Path, setting: str = "ZMQ_CURVE_SERVER_SECRET", clients: Path | None = None
) -> ServerKeys:
    public, private = _load(secret_file, secret=True, setting=setting)
    assert private is not None
    if clients is not None and not Path(clients).is_dir():
        raise ConfigError("ZMQ_CURVE_CLIENTS", str(clients), "is not a folder of client public keys")
    return ServerKeys(public, private, clients)


def _authenticator(context: zmq.Context, clients: Path) -> ThreadAuthenticator:  # type: ignore[type-arg]
    """The context's ZAP handler (one per context), allowing the public keys in `clients`."""
    with _lock:
        auth = _authenticators.get(id(context))
        if auth is None:
            auth = _authenticators[id(context)] = ThreadAuthenticator(context)
            auth.start()
            # note: once a context has a ZAP handler, ZeroMQ asks it about every CURVE server socket
            # of that context, so a process uses the allow-list for all of them (System does)
            auth.configure_curve(domain=ZAP_DOMAIN, location=str(clients))
        return auth


def stop_authenticators() -> None:
    """Stop every ZAP handler this process started (tests; a process otherwise keeps its own)."""
    with _lock:
        for auth in _authenticators.values():
            auth.stop()
        _authenticators.clear()


def allow_client(context: zmq.Context, public: bytes) -> None:  # type: ignore[type-arg]
    """Let one more client key in (the in-process recorder's own pair), if an allow-list is on."""
    with _lock:
        auth = _authenticators.get(id(context))
        if auth is not None:
            auth.certs.setdefault(ZAP_DOMAIN, {})[public] = True


def client_keys(secret_file: Path, server_public_file: Path) -> ClientKeys:
    public, private = _load(secret_file, secret=True, setting="ZMQ_CURVE_CLIENT_SECRET")
    server_public, _ = _load(server_public_file, secret=False, setting="ZMQ_CURVE_SERVER_PUBLIC")
    assert private is not None
    return ClientKeys(public, private, server_public)


def as_server(sock: zmq.Socket, keys: ServerKeys) -> None:  # type: ignore[type-arg]
    if keys.clients is not None:  # before the first client can connect: ZAP checks its key
        _authenticator(sock.context, keys.clients)
        sock.zap_domain = ZAP_DOMAIN.encode()
    sock.curve_server = True
    sock.curve_publickey = keys.public
    sock.curve_secretkey = keys.secret


def as_client(sock: zmq.Socket, keys: ClientKeys) -> None:  # type: ignore[type-arg]
    sock.curve_publickey = keys.public
    sock.curve_secretkey = keys.secret
    sock.curve_serverkey = keys.server_public


def is_loopback(endpoint: str) -> bool:
    """True for tcp://127.x / [::1] / localhost, ipc:// and inproc://; False for *, 0.0.0.0 and
    any other address."""
    if not endpoint.startswith("tcp://"):
        return True
    host = urlsplit(endpoint).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # '*', an interface name or a host name: beyond loopback
