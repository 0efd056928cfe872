"""Column layouts of order-book files: which column is which book field, and one row read and checked.

Two layouts, told apart by their columns (`BookLayout.detect`; a file that is neither is a tick file):

- **Price levels** (MBP), absolute sizes, as Tardis' `incremental_book_L2`: `timestamp`,
  `local_timestamp`, `is_snapshot`, `side`, `price`, `amount` (0: the level is removed), optional
  `symbol` and `orders`. A run of `is_snapshot` rows is one snapshot: the book is cleared, then every
  level set. Detected by `is_snapshot` with side, price and a size.
- **Orders** (MBO): `order_id`, `timestamp`, `side` (bid, ask, buy, sell), `price`, a size (`size`,
  `volume`, `quantity`), `action` (add, update, delete; also created, changed, deleted). An update
  carries the order's new price and remaining size, absolute (as Databento's MBO modify); a delete
  needs no price or size. Optional `agent` (broker). Detected by an order id and an action column.

Names are matched folded as tick columns are (`layouts.fold`: case, accents, punctuation). Times are
ISO 8601 with an offset or integers since the epoch, their unit told by their size (seconds,
milliseconds, microseconds as Tardis writes them, nanoseconds as Databento's `ts_event`); tickvault
keeps milliseconds, and the full value groups rows into batches (`book_files`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from tickvault.domain.book import BookAction, BookKind, BookSide
from tickvault.domain.events import validate_symbol
from tickvault.errors import DataError
from tickvault.sources.layouts import fold, match_columns

# folded header name -> book field
_ALIASES: dict[str, tuple[str, ...]] = {
    "symbol": ("symbol", "ticker", "ativo", "instrument", "instrumento", "codigoinstrumento", "asset"),
    "timestamp": ("timestamp", "time", "ts", "tsevent", "datetime", "datahora", "eventtime",
                  "exchangetimestamp", "timestampms", "timestampus", "timestampns"),
    "received": ("localtimestamp", "tsrecv", "received", "receivedms", "receivetime", "recvtime"),
    "is_snapshot": ("issnapshot", "snapshot"),
    "side": ("side", "direction", "bookside", "lado"),
    "price": ("price", "px", "preco"),
    "quantity": ("amount", "size", "volume", "quantity", "qty", "quantidade", "remaining", "leavesqty"),
    "orders": ("orders", "ordercount", "numorders", "count"),
    "order_id": ("orderid", "oid", "order", "offerid", "id"),
    "agent": ("agent", "broker", "corretora", "participant"),
    "action": ("action", "event", "eventtype", "updatetype", "acao"),
}  # fmt: skip
_FIELD_OF = {alias: name for name, aliases in _ALIASES.items() for alias in aliases}
_SIDES: dict[str, BookSide] = {
    "bid": "bid", "bids": "bid", "buy": "bid", "b": "bid", "compra": "bid",
    "ask": "ask", "asks": "ask", "sell": "ask", "a": "ask", "s": "ask", "offer": "ask", "venda": "ask",
}  # fmt: skip
_ACTIONS: dict[str, BookAction] = {
    "add": "add", "added": "add", "new": "add", "create": "add", "created": "add", "insert": "add",
    "update": "update", "updated": "update", "modify": "update", "modified": "update",
    "change": "update", "changed": "update",
    "delete": "delete", "deleted": "delete", "remove": "delete", "removed": "delete",
}  # fmt: skip
_TRUE = {"true", "1", "t", "yes", "y"}
_FALSE = {"false", "0", "f", "no", "n"}
_MAX_INT = 2**63 - 1
MAX_NS = 2**63 - 1  # times are kept as int64 ns (to 2262)


class BookRow(NamedTuple):
    """One file row, checked: `stamp` is the time as written in ns (rows of one batch share it)."""

    symbol: str
    stamp: int
    timestamp_ms: int
    received_ms: int
    side: BookSide
    price: float
    quantity: int
    orders: int
    order_id: int
    agent: int
    action: BookAction
    is_snapshot: bool


@dataclass(frozen=True)
class BookLayout:
    """How one book file's columns map to book fields."""

    kind: BookKind
    fields: dict[str, str]  # file column -> book field
    symbol: str | None = None  # for a file without a symbol column

    @classmethod
    def detect(cls, columns: Iterable[str], *, symbol: str | None = None) -> BookLayout | None:
        """The layout of a header, None when it is not a book file; DataError when it is one that
        lacks a column (naming what is missing and what the file has)."""
        columns = [c for c in columns if c is not None]
        fields = match_columns(columns, _FIELD_OF)
        have = set(fields.values())
        if {"order_id", "action"} <= have:
            kind: BookKind = "mbo"
        elif "is_snapshot" in have and {"side", "price"} <= have:
            kind = "mbp"
        else:
            return None
        needed = ("timestamp", "side", "price", "quantity")
        missing = [name for name in needed if name not in have]
        if "symbol" not in have and symbol is None:
            missing.append("symbol (a column, or the file's one symbol named with --symbol)")
        if missing:
            found = ", ".join(columns)
            raise DataError("columns", f"is a {kind} book file but lacks {', '.join(missing)} (has {found})")
        return cls(kind, fields, symbol)

    @property
    def symbol_column(self) -> str | None:
        return next((column for column, name in self.fields.items() if name == "symbol"), None)

    @property
    def has_snapshots(self) -> bool:
        """A price-level file with snapshots (an order file's `is_snapshot` column, if any, is ignored)."""
        return self.kind == "mbp" and "is_snapshot" in self.fields.values()

    def row(self, raw: dict[str, Any]) -> BookRow:
        """A file row (text or typed values, by the file's column names) as a checked BookRow;
        DataError names the field and says why."""
        out = {name: raw.get(column) for column, name in self.fields.items()}
        symbol = out.get("symbol")
        if _blank(symbol):
            if self.symbol is None:
                raise DataError("symbol", "required field is missing")
            symbol = self.symbol
        symbol = validate_symbol(str(symbol).strip())
        stamp = time_ns(out.get("timestamp"), "timestamp")
        received = time_ns(out["received"], "received") if not _blank(out.get("received")) else stamp
        ms, received_ms = stamp // 1_000_000, received // 1_000_000
        side = side_of(out.get("side"))
        snapshot = parse_bool(out.get("is_snapshot"), "is_snapshot") if self.has_snapshots else False
        if self.kind == "mbo":
            action = action_of(out.get("action"))
            deleting = action == "delete"
            price = _price(out.get("price"), blank_ok=deleting)
            quantity = _integer(out.get("quantity"), "quantity", 0 if deleting else None)
            order_id = _integer(out.get("order_id"), "order_id")
            agent = _integer(out.get("agent"), "agent", 0)
            if price <= 0 and not deleting:
                raise DataError("price", f"must be positive for {action!r}, got {out.get('price')!r}")
            return BookRow(
                symbol, stamp, ms, received_ms, side, price, quantity, 0, order_id, agent, action, snapshot
            )
        price = _price(out.get("price"), blank_ok=False)
        if price <= 0:
            raise DataError("price", f"must be positive (it names the level), got {out.get('price')!r}")
        quantity = _integer(out.get("quantity"), "quantity")
        orders = _integer(out.get("orders"), "orders", 0)
        if not _blank(out.get("action")) and action_of(out.get("action")) == "delete":
            quantity = 0
        level: BookAction = "delete" if quantity == 0 else "update"
        return BookRow(symbol, stamp, ms, received_ms, side, price, quantity, orders, 0, 0, level, snapshot)


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip() == "")


def time_ns(value: Any, name: str) -> int:
    """A file's time as ns since the epoch: ISO 8601 with an offset, a datetime with a zone, or an
    integer since the epoch in s, ms, µs or ns (told by its size)."""
    if _blank(value):
        raise DataError(name, "required field is missing")
    if hasattr(value, "to_pydatetime"):
        value = value.to_pydatetime()
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise DataError(name, f"{value.isoformat()} has no timezone")
        ns = _epoch_ns(value)
    elif isinstance(value, bool):
        raise DataError(name, f"expected a time, got {value!r}")
    elif isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit()):
        number = int(value)
        scale = (
            1 if number >= 10**17 else 1_000 if number >= 10**14 else 1_000_000 if number >= 10**11 else 10**9
        )
        ns = number * scale
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise DataError(name, f"{value!r} is not ISO 8601 nor an integer time since the epoch") from None
        if moment.tzinfo is None:
            raise DataError(name, f"{value!r} has no timezone offset (add -03:00 or Z)")
        ns = _epoch_ns(moment)
    else:
        raise DataError(name, f"expected a time, got {value!r}")
    if not 0 <= ns <= MAX_NS:
        raise DataError(name, f"{value!r} is not a time between 1970 and 2262")
    return ns


def _epoch_ns(moment: datetime) -> int:
    offset = moment.utcoffset()
    assert offset is not None
    naive = moment.replace(tzinfo=None) - offset
    delta = naive - datetime(1970, 1, 1)
    return (delta.days * 86_400 + delta.seconds) * 10**9 + delta.microseconds * 1000


def side_of(value: Any) -> BookSide:
    side = _SIDES.get(fold(str(value))) if not _blank(value) else None
    if side is None:
        raise DataError("side", f"must be bid, ask, buy or sell, got {value!r}")
    return side


def action_of(value: Any) -> BookAction:
    action = _ACTIONS.get(fold(str(value))) if not _blank(value) else None
    if action is None:
        raise DataError(
            "action", f"must be add, update or delete (or created, changed, deleted), got {value!r}"
        )
    return action


def parse_bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower() if value is not None else ""
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise DataError(name, f"expected true or false, got {value!r}")


def _price(value: Any, *, blank_ok: bool) -> float:
    if _blank(value):
        if blank_ok:
            return 0.0
        raise DataError("price", "required field is missing")
    try:
        price = float(value)
    except (TypeError, ValueError):
        raise DataError("price", f"expected a number, got {value!r}") from None
    if not math.isfinite(price):
        raise DataError("price", f"must be a finite number, got {value!r}")
    if price < 0:
        raise DataError("price", f"must not be negative, got {value!r}")
    return price


def _integer(value: Any, name: str, default: int | None = None) -> int:
    """A whole non-negative number (`12`, `12.0`); `default` for a blank one (None: required)."""
    if _blank(value):
        if default is None:
            raise DataError(name, "required field is missing")
        return default
    if isinstance(value, bool):
        raise DataError(name, f"expected a whole number, got {value!r}")
    if isinstance(value, int):
        number = value
    else:
        text = str(value).strip()
        try:
            number = int(text)
        except ValueError:
            try:
                real = float(text)
            except ValueError:
                raise DataError(name, f"expected a whole number, got {value!r}") from None
            if not math.isfinite(real) or not real.is_integer():
                raise DataError(name, f"expected a whole number, got {value!r}") from None
            number = int(real)
    if number < 0:
        raise DataError(name, f"must not be negative, got {value!r}")
    if number > _MAX_INT:
        raise DataError(name, f"{value!r} is too large (at most 2^63 - 1)")
    return number
