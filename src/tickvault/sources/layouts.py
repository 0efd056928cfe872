"""Column layouts of tick files: which column is which tick field, whatever the file calls it.

A file's header names are matched after folding case, accents and punctuation (`Preço` = `preco` =
`PRECO`), so tickvault's own names, common English ones (`time`, `px`, `qty`, `side`, `ticker`)
and Portuguese ones work, among them the columns of B3's public trade files ("Negócios",
`TradeIntraday_*.txt`: `CodigoInstrumento;PrecoNegocio;QuantidadeNegociada;HoraFechamento;...`, `;`
separated, decimal comma, time as HHMMSSmmm beside the date). A time split over a date column and a
clock column is B3 local time (America/Sao_Paulo), as B3 and Profit write it; a single timestamp
column must carry its offset. A file without a symbol column takes one from `--symbol`; one without
trade ids numbers its trades per symbol and session in file order, so ingesting it again finds the
same ids and stores nothing twice.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tickvault.domain.events import B3_TZ
from tickvault.errors import DataError

# folded header name -> tick field; "date" and "clock" are the two halves of a split time
_ALIASES: dict[str, tuple[str, ...]] = {
    "symbol": ("symbol", "ticker", "ativo", "instrument", "instrumento", "codigoinstrumento", "papel",
               "codigo", "asset"),
    "timestamp": ("timestamp", "time", "datetime", "ts", "datahora", "tradetime", "eventtime"),
    "timestamp_ms": ("timestampms", "tsms", "epochms", "timems", "unixms"),
    "date": ("date", "data", "datanegocio", "tradedate", "dia"),
    "clock": ("hora", "horario", "horafechamento", "clock", "timeofday", "hour"),
    "trade_id": ("tradeid", "id", "tradenumber", "negocio", "numeronegocio", "codigoidentificadornegocio",
                 "ntradenumber", "numero", "tradeno"),
    "price": ("price", "px", "last", "tradeprice", "preco", "preconegocio"),
    "quantity": ("quantity", "qty", "size", "quantidade", "quantidadenegociada", "qtd", "contracts",
                 "contratos", "amount"),
    "volume": ("volume", "financialvolume", "volumefinanceiro", "notional", "financeiro"),
    "buyer": ("buyer", "buyerbroker", "buyeragent", "comprador", "agentecomprador",
              "codigoparticipantecomprador", "corretoracompradora"),
    "seller": ("seller", "sellerbroker", "selleragent", "vendedor", "agentevendedor",
               "codigoparticipantevendedor", "corretoravendedora"),
    "trade_type": ("tradetype", "tipo", "tipodenegocio", "ntradetype"),
    "aggressor": ("aggressor", "side", "agressor", "lado", "aggressorside"),
    "is_edit": ("isedit", "edit", "edited", "bedit", "correcao"),
    "action": ("acaoatualizacao",),  # B3: 0 a trade; anything else cancels one (not a tick)
    "seq": ("seq", "sequence"),
}  # fmt: skip
_FIELD_OF = {alias: name for name, aliases in _ALIASES.items() for alias in aliases}
_NUMERIC = ("price", "volume")
_SIDES = {
    "buy": "buy", "b": "buy", "compra": "buy", "comprador": "buy", "c": "buy",
    "sell": "sell", "s": "sell", "venda": "sell", "vendedor": "sell", "v": "sell",
    "none": "none", "": "none", "n": "none", "leilao": "none", "direto": "none", "cross": "none",
    "auction": "none",
}  # fmt: skip
_CLOCK = re.compile(r"(\d{2}):?(\d{2}):?(\d{2})(?:[.,:]?(\d{1,6}))?")
_DMY = re.compile(r"(\d{2})/(\d{2})/(\d{4})")


def fold(name: str) -> str:
    """A header name without case, accents, spaces or punctuation: `Preço Negócio` -> `preconegocio`."""
    plain = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]", "", plain.lower())


def match_columns(columns: list[str], field_of: dict[str, str]) -> dict[str, str]:
    """column -> field for the columns whose folded name is an alias of a field (the first column
    of each field wins)."""
    fields: dict[str, str] = {}
    for column in columns:
        name = field_of.get(fold(column))
        if name is not None and name not in fields.values():
            fields[column] = name
    return fields


@dataclass
class Layout:
    """How one file's columns map to tick fields, and what the file leaves out."""

    fields: dict[str, str]  # file column -> tick field
    symbol: str | None = None  # for a file without a symbol column
    decimal_comma: bool = False
    _next_id: dict[tuple[str, str], int] = field(default_factory=dict)

    @classmethod
    def detect(cls, columns: Iterable[str], *, symbol: str | None = None, delimiter: str = ",") -> Layout:
        """The layout of a header; DataError naming what is missing (and what the file has)."""
        columns = [c for c in columns if c is not None]
        fields = match_columns(columns, _FIELD_OF)
        have = set(fields.values())
        missing = [name for name in ("price", "quantity") if name not in have]
        if "symbol" not in have and symbol is None:
            missing.append("symbol (a column, or the file's one symbol named on the command line)")
        # a date column alone may hold the whole time ("27/11/2025 10:00:00.123")
        if not have & {"timestamp", "timestamp_ms", "date"}:
            missing.append("timestamp, timestamp_ms, or date and time columns")
        if missing:
            raise DataError("columns", f"lacks {', '.join(missing)} (has {', '.join(columns) or 'none'})")
        return cls(fields, symbol=symbol, decimal_comma=delimiter == ";")

    def row(self, raw: dict[str, Any]) -> dict[str, Any]:
        """A file row as tick fields (what `files.tick_from_row` takes), values still unchecked."""
        out: dict[str, Any] = {}
        for column, name in self.fields.items():
            out[name] = raw.get(column)
        if self.symbol is not None and out.get("symbol") in (None, ""):
            out["symbol"] = self.symbol
        if self.decimal_comma:
            for name in _NUMERIC:
                value = out.get(name)
                if isinstance(value, str) and "," in value:
                    out[name] = value.replace(".", "").replace(",", ".")
        day, clock = out.pop("date", None), out.pop("clock", None)
        if "timestamp" not in out and "timestamp_ms" not in out:
            out["timestamp"] = local_time(day, clock)
        side = out.get("aggressor")
        if isinstance(side, str):
            out["aggressor"] = side_of(side)
        check_action(out.pop("action", None))
        return out

    def number(self, out: dict[str, Any], symbol: str, ms: int) -> None:
        """Give a row without a trade id the next id of its symbol and B3 session."""
        if out.get("trade_id") not in (None, ""):
            return
        key = (symbol, datetime.fromtimestamp(ms / 1000, B3_TZ).strftime("%Y%m%d"))
        out["trade_id"] = self._next_id[key] = self._next_id.get(key, 0) + 1

    @property
    def symbol_column(self) -> str | None:
        """The file's column that holds the symbol, if it has one."""
        return next((column for column, name in self.fields.items() if name == "symbol"), None)


def side_of(side: str) -> str:
    """A file's aggressor text as buy, sell or none (`Compra`, `V`, `Leilão`, ...)."""
    folded = fold(side)
    if folded not in _SIDES:
        raise DataError("aggressor", f"must be buy or sell (or compra, venda, B, S...), got {side!r}")
    return _SIDES[folded]


def check_action(action: Any) -> None:
    """B3's AcaoAtualizacao: 0 (or nothing) is a trade; anything else cancels one."""
    if action not in (None, "") and str(action).strip() not in ("0", "0.0"):
        raise DataError(
            "AcaoAtualizacao",
            f"{action!r}: a cancelled trade, not a trade (tickvault stores trades and edits)",
        )


def local_time(day: Any, clock: Any) -> str:
    """`2025-11-27` or `27/11/2025` with `10:00:00.123` or B3's `100000123` -> ISO 8601 in B3 time."""
    if day in (None, ""):
        raise DataError("timestamp", "required field is missing (no date)")
    text = str(day).strip()
    if clock in (None, "") and " " in text:
        text, clock = text.split(" ", 1)
    dmy = _DMY.fullmatch(text)
    if dmy:
        text = f"{dmy.group(3)}-{dmy.group(2)}-{dmy.group(1)}"
    if clock in (None, ""):
        raise DataError("timestamp", f"no time of day with the date {day!r}")
    found = _CLOCK.fullmatch(str(clock).strip())
    if found is None:
        raise DataError("timestamp", f"{clock!r} is not a time of day (HH:MM:SS.mmm or HHMMSSmmm)")
    hh, mm, ss, frac = found.groups()
    millis = (frac or "0").ljust(3, "0")[:3]
    try:
        moment = datetime.fromisoformat(f"{text}T{hh}:{mm}:{ss}.{millis}")
    except ValueError:
        raise DataError("timestamp", f"{day!r} {clock!r} is not a date and time") from None
    return moment.replace(tzinfo=B3_TZ).isoformat(timespec="milliseconds")
