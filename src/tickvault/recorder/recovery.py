"""Gap fills from the store: what a subscriber missed on the bus, read back from Valkey."""

from __future__ import annotations

from tickvault.bus.subscriber import Recover
from tickvault.domain.events import encode
from tickvault.store.api import Store


def store_recovery(store: Store) -> Recover:
    """Fill gaps of `tick_{SYMBOL}` topics from the ticks stored in Valkey."""

    def recover(topic: str, first: int, last: int) -> list[bytes]:
        if not topic.startswith("tick_"):
            return []
        return [encode(t) for t in store.ticks_by_seq(topic.removeprefix("tick_"), first, last)]

    return recover
