"""ZeroMQ CURVE keys for a bus that leaves loopback: encryption, and the server's identity checked by
every subscriber. Keys are ZeroMQ certificate files (`zmq.auth` format: `name.key` public,
`name.key_secret` public + secret, written 0600)."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import zmq
import zmq.auth

from tickvault.errors import ConfigError


@dataclass(frozen=True)
class ServerKeys:
    public: bytes
    secret: bytes


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


def server_keys(secret_file: Path, setting: str = "ZMQ_CURVE_SERVER_SECRET") -> ServerKeys:
    public, private = _load(secret_file, secret=True, setting=setting)
    assert private is not None
    return ServerKeys(public, private)


def client_keys(secret_file: Path, server_public_file: Path) -> ClientKeys:
    public, private = _load(secret_file, secret=True, setting="ZMQ_CURVE_CLIENT_SECRET")
    server_public, _ = _load(server_public_file, secret=False, setting="ZMQ_CURVE_SERVER_PUBLIC")
    assert private is not None
    return ClientKeys(public, private, server_public)


def as_server(sock: zmq.Socket, keys: ServerKeys) -> None:  # type: ignore[type-arg]
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
