"""Per-symbol ownership among several worker processes: a lease key per symbol holding the owner's
name with an expiry. The owner renews it every step; a dead owner's lease expires and the next
worker to look takes the symbol. Used by the leased workers (candles, features, predictor) and by the
tick writer (one writer per symbol)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from typing import Any

import valkey


class SymbolLeases:
    def __init__(self, client: Any, key_of: Callable[[str], str], name: str, lease_ms: int) -> None:
        self.client = client
        self.key_of = key_of
        self.name = name
        self.lease_ms = lease_ms
        self.taken: set[str] = set()  # symbols the last `held` took (not renewed): maybe after a lapse

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

    def owner(self, symbol: str) -> str | None:
        """Who holds the lease of `symbol` now (None: nobody)."""
        holder = self.client.get(self.key_of(symbol))
        return holder.decode() if holder is not None else None

    def give_up(self, symbol: str) -> None:
        with contextlib.suppress(valkey.ValkeyError):
            if self.client.get(self.key_of(symbol)) == self.name.encode():
                self.client.delete(self.key_of(symbol))

    def release(self, symbols: Iterable[str]) -> None:
        """A clean stop hands the symbols over at once instead of after the lease expires."""
        for symbol in symbols:
            self.give_up(symbol)
