"""Per-symbol ownership among several worker processes: a lease key per symbol holding the owner's
name with an expiry. The owner renews it every step; a dead owner's lease expires and the next
worker to look takes the symbol. Used by the leased workers (candles, features, predictor) and by the
tick and book writers (one writer per symbol: `hold`)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from typing import Any

import valkey

from tickvault.errors import StoreError


class SymbolLeases:
    def __init__(
        self,
        client: Any,
        key_of: Callable[[str], str],
        name: str,
        lease_ms: int,
        *,
        subject: str = "{}",
        renew_every_ms: float | None = None,
    ) -> None:
        """`subject`: what `hold`'s refusal says is being written (`{}` the symbol). `renew_every_ms`:
        how long `hold` trusts a lease it renewed without asking Valkey (a third of the lease)."""
        self.client = client
        self.key_of = key_of
        self.name = name
        self.lease_ms = lease_ms
        self.subject = subject
        self.renew_every_ms = lease_ms / 3 if renew_every_ms is None else renew_every_ms
        self.taken: set[str] = set()  # symbols the last `held` took (not renewed): maybe after a lapse
        self._good_until: dict[str, float] = {}  # `hold`: symbol -> monotonic time to check it again

    def held(self, symbols: Iterable[str]) -> list[str]:
        """Renew the leases we hold and take the free ones; returns the symbols we own now. A symbol
        in `taken` may have had another owner since we last held it: its state must be re-checked."""
        mine = self.name.encode()
        owned = []
        self.taken = set()
        for symbol in symbols:
            key = self.key_of(symbol)
            holder = self.client.get(key)
            if holder == mine:
                self.client.pexpire(key, self.lease_ms)
            elif holder is not None or not self.client.set(key, self.name, nx=True, px=self.lease_ms):
                continue
            else:
                self.taken.add(symbol)
            owned.append(symbol)
        return owned

    def hold(self, symbol: str) -> bool:
        """A writer's lease on `symbol`, before each write: renewed (at most every `renew_every_ms`;
        the writer's own writes extend it too) or taken. True when taken rather than renewed (a first
        write, a lapse, or after `forget`): someone else may have written meanwhile, so the caller
        reloads its state of the symbol. StoreError while another writer holds it."""
        now = time.monotonic()
        if self._good_until.get(symbol, 0.0) > now:
            return False
        known = symbol in self._good_until
        if not self.held([symbol]):
            holder = self.owner(symbol) or "another writer"
            raise StoreError(
                f"{self.subject.format(symbol)} is being written by {holder!r}; waiting for its lease"
            )
        self._good_until[symbol] = now + self.renew_every_ms / 1000
        return symbol in self.taken or not known

    def forget(self) -> None:
        """The caller dropped its state (a failed write): the next `hold` of each symbol says taken."""
        self._good_until.clear()

    def owner(self, symbol: str) -> str | None:
        """Who holds the lease of `symbol` now (None: nobody)."""
        holder = self.client.get(self.key_of(symbol))
        return holder.decode() if holder is not None else None

    def give_up(self, symbol: str) -> None:
        with contextlib.suppress(valkey.ValkeyError):
            if self.client.get(self.key_of(symbol)) == self.name.encode():
                self.client.delete(self.key_of(symbol))

    def release(self, symbols: Iterable[str] | None = None) -> None:
        """A clean stop hands the symbols over at once instead of after the lease expires (None: those
        `hold` holds; one that cannot be released expires by itself)."""
        for symbol in list(self._good_until) if symbols is None else symbols:
            self.give_up(symbol)
        if symbols is None:
            self._good_until.clear()
