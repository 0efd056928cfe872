"""The exceptions tickvault raises.

TickvaultError
├── ConfigError        a setting or CLI value is invalid (names the setting and the value)
├── DataError          an event, frame or file row is invalid (names the field and why)
├── BusError           a ZeroMQ socket cannot be bound or used
└── StoreError         Valkey refused or failed a request
    └── StoreUnavailable   Valkey cannot be reached (never reported as "no data")
"""

from __future__ import annotations


class TickvaultError(Exception):
    """Base of every error tickvault raises on purpose."""


class ConfigError(TickvaultError):
    """An invalid setting; the message names the setting and the value it got."""

    def __init__(self, name: str, value: object, reason: str) -> None:
        self.name = name
        self.value = value
        self.reason = reason
        super().__init__(f"{name}={value!r}: {reason}")


class DataError(TickvaultError):
    """Invalid market data; `field` names what is wrong (or '' for the whole message)."""

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}" if field else reason)

    @property
    def kind(self) -> str:
        """A short stable label for counters, e.g. 'price', 'symbol', 'json'."""
        return self.field or "message"


class BusError(TickvaultError):
    """A ZeroMQ endpoint could not be bound, connected or used."""


class InsecureBind(BusError):
    """Binding beyond loopback without CURVE was refused (a setting to change, not a port to retry)."""


class StoreError(TickvaultError):
    """Valkey refused or failed a request."""


class StoreUnavailable(StoreError):
    """Valkey cannot be reached; callers must never mistake this for an empty result."""
