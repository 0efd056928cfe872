"""How tickvault reaches Valkey: the embedded server or a URL, with valkey-py's own retry and backoff."""

from __future__ import annotations

import logging
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import valkey
from valkey.backoff import ExponentialBackoff
from valkey.retry import Retry

from tickvault.config import Settings
from tickvault.domain.keys import KeySpace
from tickvault.errors import StoreUnavailable
from tickvault.store.cluster import close_client, cluster_client, is_cluster_url, parse_cluster_url
from tickvault.store.server import EmbeddedValkey, client_name
from tickvault.store.valkey_errors import UNREACHABLE

log = logging.getLogger("tickvault.connection")


def _retry() -> Retry:
    # A few quick retries ride over a blip; longer outages are the caller's to handle (the recorder
    # buffers). AuthenticationError is not retried: a wrong password must fail at once, not storm.
    return Retry(ExponentialBackoff(cap=0.5, base=0.02), retries=3)


# open Connections to each embedded server in this process: the server's own count sees processes,
# so a process's first Connection to close (a backtest's system, before its reader) must not stop it
_in_process: Counter[Path] = Counter()
_in_process_lock = threading.Lock()


@dataclass
class Connection:
    """A Valkey target resolved from settings; `client()` hands out named clients."""

    settings: Settings
    url: str = ""
    embedded: EmbeddedValkey | None = None
    _clients: list[valkey.Valkey] = field(default_factory=list)
    _held: bool = False  # counted in `_in_process` until closed

    @classmethod
    def open(cls, settings: Settings) -> Connection:
        password = settings.valkey_password.get_secret_value() if settings.valkey_password else None
        if settings.embedded:
            server = EmbeddedValkey(settings.valkey_data_dir, password=password)
            info = server.ensure_running()
            with _in_process_lock:
                _in_process[server.data_dir] += 1
            return cls(settings, url=f"{info.url}/{settings.valkey_db}", embedded=server, _held=True)
        return cls(settings, url=settings.external_url)

    @property
    def cluster(self) -> bool:
        return is_cluster_url(self.url)

    @property
    def keys(self) -> KeySpace:
        """The keys everything this connection's users read and write (TICKVAULT_NAMESPACE's)."""
        return KeySpace(cluster=self.cluster, namespace=self.settings.namespace)

    @property
    def where(self) -> str:
        """Where the data lives, for the startup line (never includes a password)."""
        if self.cluster:
            seeds, _ = parse_cluster_url(self.url)
            return "valkey cluster " + ",".join(f"{h}:{p}" for h, p in seeds)
        target = valkey.connection.parse_url(self.url)
        host = target.get("host") or target.get("path", "?")
        port = target.get("port", "")
        kind = "embedded valkey" if self.embedded else "valkey"
        data = f" data={self.embedded.data_dir}" if self.embedded else ""
        return f"{kind} {host}:{port} db={target.get('db', 0)}{data}"

    def client(self, role: str = "client", *, decode: bool = False) -> valkey.Valkey:
        password = self.settings.valkey_password.get_secret_value() if self.settings.valkey_password else None
        kwargs: dict[str, object] = {
            "decode_responses": decode,
            "socket_timeout": 10,
            "socket_connect_timeout": 3,
            "retry": _retry(),
            "retry_on_error": list(UNREACHABLE),
            "health_check_interval": 30,
            "client_name": client_name(role),
        }
        if password and "@" not in self.url:
            kwargs["password"] = password
        if self.url.startswith("unix://"):
            kwargs.pop("socket_connect_timeout")
        if self.url.startswith(("valkeys://", "rediss://", "valkeys+cluster://", "rediss+cluster://")):
            kwargs["ssl_cert_reqs"] = "required"  # certificate and host name checked, never optional
            kwargs["ssl_check_hostname"] = True
            if self.settings.valkey_ca_cert is not None:
                kwargs["ssl_ca_certs"] = str(self.settings.valkey_ca_cert)
        client: valkey.Valkey
        if self.cluster:
            # the cluster client retries redirects itself; connection errors are retried per command
            for name in ("retry", "retry_on_error", "health_check_interval"):
                kwargs.pop(name)
            client = cluster_client(self.url, **kwargs)
        else:
            client = valkey.Valkey.from_url(self.url, **kwargs)
        self._clients.append(client)
        return client

    def check(self) -> None:
        """Raise StoreUnavailable (with host, never the password) unless the server answers."""
        client = self.client("check")
        try:
            client.ping()
        except valkey.AuthenticationError as exc:
            raise StoreUnavailable(f"valkey at {self.where} refused the credentials: {exc}") from None
        except valkey.ValkeyError as exc:
            raise StoreUnavailable(f"valkey at {self.where} is unreachable: {exc}") from None

    def close(self) -> None:
        """Close clients; the last tickvault process out (its last Connection) stops the embedded
        server."""
        for client in self._clients:
            close_client(client)
        self._clients.clear()
        if self.embedded is None or not self._held:
            return
        self._held = False
        with _in_process_lock:
            _in_process[self.embedded.data_dir] -= 1
            last = _in_process[self.embedded.data_dir] <= 0
            if last:
                del _in_process[self.embedded.data_dir]
        if last and self.embedded.release():
            log.info("stopped embedded valkey (data kept in %s)", self.embedded.data_dir)

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
