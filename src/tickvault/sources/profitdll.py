"""Nelogica ProfitDLL as a tick source, through ctypes.

The DLL calls our callbacks on its one thread; the manual says they must never block, do disk work or
call back into the DLL. So a callback only converts the trade to a `Tick` and puts it on a queue (a
bad trade is counted by reason and logged, never raised into the DLL); `ticks()` hands the queue to
the system. Every ctypes callback object is kept referenced for the session's lifetime (a collected
one would crash the DLL).

Signatures from the public manual: `DLLInitializeMarketLogin(key, user, password, State, NewTrade,
NewDaily, PriceBook, OfferBook, HistoryTrade, Progress, TinyBook)`; the trade callback is
`(TAssetIDRec{pwcTicker, pwcBolsa, nFeed}, pwcDate 'DD/MM/YYYY HH:mm:SS.ZZZ', nTradeNumber, dPrice,
dVol, nQtd, nBuyAgent, nSellAgent, nTradeType, bEdit)`, the history-trade callback the same without
bEdit; stdcall on Windows (WinDLL/WINFUNCTYPE), the C convention elsewhere (how the tests drive a
fake library built with gcc). Trade type 2 is a buy aggression, 3 a sell aggression.
"""

from __future__ import annotations

import ctypes
import logging
import queue
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from tickvault.domain.events import B3_TZ, Tick, make_tick, to_ms
from tickvault.errors import ConfigError, TickvaultError
from tickvault.sources.profitdll_book import parse_profit_date  # the book's callbacks share the date text

log = logging.getLogger("tickvault.profitdll")

# connection states and results (manual, "TConnectionState")
STATE_LOGIN, STATE_ROUTING, STATE_MARKET_DATA, STATE_MARKET_LOGIN = 0, 1, 2, 3
LOGIN_CONNECTED, LOGIN_INVALID = 0, 1
MARKET_CONNECTED = 4
NL_OK = 0

_FUNC: Any = ctypes.WINFUNCTYPE if sys.platform == "win32" else ctypes.CFUNCTYPE  # type: ignore[attr-defined]


class TAssetIDRec(ctypes.Structure):
    _fields_ = [("pwcTicker", ctypes.c_wchar_p), ("pwcBolsa", ctypes.c_wchar_p), ("nFeed", ctypes.c_int)]


_TRADE_ARGS = (
    TAssetIDRec, ctypes.c_wchar_p, ctypes.c_uint, ctypes.c_double, ctypes.c_double, ctypes.c_int,
    ctypes.c_int, ctypes.c_int, ctypes.c_int,
)  # fmt: skip
StateCallback = _FUNC(None, ctypes.c_int, ctypes.c_int)
TradeCallback = _FUNC(None, *_TRADE_ARGS, ctypes.c_ubyte)
HistoryTradeCallback = _FUNC(None, *_TRADE_ARGS)
ProgressCallback = _FUNC(None, TAssetIDRec, ctypes.c_int)
UnusedCallback = _FUNC(None)  # daily, price book, offer book, tiny book: not subscribed to here


class ProfitDLLError(TickvaultError):
    pass


@dataclass
class ProfitStats:
    received: int = 0
    history: int = 0
    edits: int = 0
    rejected: Counter[str] = field(default_factory=Counter)


class ProfitDLLSource:
    """A ProfitDLL session: `start()` logs in, `subscribe()`, `history()`, `ticks()` for `System`."""

    def __init__(
        self,
        dll_path: Path,
        key: str,
        user: str,
        password: str,
        *,
        exchange: str = "F",
        login_timeout: float = 30.0,
    ) -> None:
        self.dll_path = Path(dll_path)
        self._credentials = (key, user, password)
        self.exchange = exchange
        self.login_timeout = login_timeout
        self.stats = ProfitStats()
        self.queue: queue.SimpleQueue[Tick] = queue.SimpleQueue()
        self.history_done = threading.Event()
        self._market = threading.Event()
        self._login_failed = threading.Event()
        self._dll: Any = None
        self._keep: list[Any] = []  # every callback object, alive as long as the session

    # -- callbacks: on the DLL's thread, never block, never raise -------------------------------

    def _on_state(self, kind: int, result: int) -> None:
        if kind == STATE_LOGIN and result == LOGIN_INVALID:
            self._login_failed.set()
        elif kind == STATE_MARKET_DATA and result == MARKET_CONNECTED:
            self._market.set()

    def _trade(self, asset: TAssetIDRec, date: str, number: int, price: float, volume: float, qty: int,
               buyer: int, seller: int, trade_type: int, edit: int, *, history: bool) -> None:  # fmt: skip
        try:
            when = parse_profit_date(date)
            tick = make_tick(
                str(asset.pwcTicker or ""), to_ms(when), int(number), float(price), int(qty),
                volume=float(volume), buyer=int(buyer), seller=int(seller), trade_type=int(trade_type),
                is_edit=bool(edit),
            )  # fmt: skip
        except TickvaultError as exc:
            reason = getattr(exc, "field", type(exc).__name__)
            self.stats.rejected[str(reason)] += 1
            log.error("ProfitDLL trade %s rejected: %s", number, exc)
            return
        except Exception as exc:  # noqa: BLE001 - nothing may propagate into the DLL
            self.stats.rejected["unexpected"] += 1
            log.error("ProfitDLL trade %s rejected: %r", number, exc)
            return
        self.stats.received += 1
        self.stats.history += history
        self.stats.edits += tick.is_edit
        self.queue.put(tick)

    def _on_progress(self, asset: TAssetIDRec, percent: int) -> None:
        if percent >= 100:
            self.history_done.set()

    # -- session --------------------------------------------------------------------------------

    def start(self) -> None:
        try:
            loader = ctypes.WinDLL if sys.platform == "win32" else ctypes.CDLL  # type: ignore[attr-defined]
            self._dll = loader(str(self.dll_path))
        except OSError as exc:
            raise ConfigError("PROFIT_DLL_PATH", str(self.dll_path), f"cannot be loaded ({exc})") from None
        state = StateCallback(self._on_state)
        trade = TradeCallback(lambda *a: self._trade(*a, history=False))
        past = HistoryTradeCallback(lambda *a: self._trade(*a, 0, history=True))  # type: ignore[misc, arg-type]
        progress = ProgressCallback(self._on_progress)
        unused = UnusedCallback(lambda: None)
        self._keep = [state, trade, past, progress, unused]
        login = self._dll.DLLInitializeMarketLogin
        login.restype = ctypes.c_int
        key, user, password = self._credentials
        code = login(ctypes.c_wchar_p(key), ctypes.c_wchar_p(user), ctypes.c_wchar_p(password), state, trade,
                     unused, unused, unused, past, progress, unused)  # fmt: skip
        if code != NL_OK:
            raise ProfitDLLError(f"DLLInitializeMarketLogin returned {code}")
        deadline = threading.Event()
        for _ in range(int(self.login_timeout * 20)):
            if self._market.is_set() or self._login_failed.is_set():
                break
            deadline.wait(0.05)
        if self._login_failed.is_set():
            raise ConfigError(
                "PROFIT_USER", user, "login refused by ProfitDLL (invalid user, password or key)"
            )
        if not self._market.is_set():
            raise ProfitDLLError(f"no market data connection within {self.login_timeout:g} s")

    def subscribe(self, symbols: Iterator[str] | list[str] | tuple[str, ...]) -> None:
        for symbol in symbols:
            code = self._dll.SubscribeTicker(ctypes.c_wchar_p(symbol), ctypes.c_wchar_p(self.exchange))
            if code != NL_OK:
                raise ProfitDLLError(f"SubscribeTicker({symbol}) returned {code}")

    def history(self, symbol: str, start: datetime, end: datetime) -> None:
        """Ask for past trades; they arrive through the history callback (then progress 100)."""
        self.history_done.clear()
        fmt = "%d/%m/%Y %H:%M:%S"
        code = self._dll.GetHistoryTrades(
            ctypes.c_wchar_p(symbol), ctypes.c_wchar_p(self.exchange),
            ctypes.c_wchar_p(start.astimezone(B3_TZ).strftime(fmt)),
            ctypes.c_wchar_p(end.astimezone(B3_TZ).strftime(fmt)),
        )  # fmt: skip
        if code != NL_OK:
            raise ProfitDLLError(f"GetHistoryTrades({symbol}) returned {code}")

    def ticks(self, stop: threading.Event) -> Iterator[Tick]:
        while not stop.is_set():
            try:
                yield self.queue.get(timeout=0.1)
            except queue.Empty:
                continue

    def close(self) -> None:
        if self._dll is not None:
            self._dll.DLLFinalize()
            self._dll = None


def profitdll_source(settings: Any, stop: threading.Event) -> Callable[[Any], Iterator[Tick]]:
    """A `System` source: log in with PROFIT_* settings, subscribe to the configured symbols."""

    def source(_: Any) -> Iterator[Tick]:
        def secret(value: Any) -> str:
            return str(value.get_secret_value()) if value is not None else ""

        session = ProfitDLLSource(
            settings.profit_dll_path, secret(settings.profit_key), settings.profit_user or "",
            secret(settings.profit_password),
        )  # fmt: skip
        session.start()
        try:
            session.subscribe(settings.symbols)
            yield from session.ticks(stop)
        finally:
            session.close()

    return source
