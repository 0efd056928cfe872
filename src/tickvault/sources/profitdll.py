"""Nelogica ProfitDLL as a source of ticks and order-book batches, through ctypes.

The DLL calls our callbacks on its one thread; the manual says they must never block, do disk work or
call back into the DLL (a stalled consumer is reported as MARKET_PARTIAL_CONNECTED and data may be
lost). So a trade callback only converts the trade to a `Tick` and puts it on the queue (a bad trade
is counted by reason and logged, never raised into the DLL), and a book callback only copies its
arguments and the bytes of its full-book pages into an `OfferCall` / `PriceCall`, frees the pages
with `FreePointer`, and puts that on the same queue: one unbounded queue, so a callback never waits
and trades and book updates keep the order the DLL gave them. The translation into book events
happens on the reader's side (`BookFeed`, sources/profitdll_feed.py). Every ctypes callback object
is kept referenced for the session's lifetime (a collected one would crash the DLL).

The seam for `System`: `events(stop)` yields `Tick | BookBatch` in arrival order, the same items as
`BookMarketSimulator.items()`: ticks go to `Ingest.on_tick`, batches to the book topic
(`book_{SYMBOL}` on ZMQ_BOOK_PORT); `book.counters()` has the book's counters (batches, snapshots,
desynced, rejected by reason) and `stats` the DLL side's (calls, pages freed). `ticks(stop)` yields
the trades alone, as before.

Signatures from the public manual: `DLLInitializeMarketLogin(key, user, password, State, NewTrade,
NewDaily, PriceBook, OfferBook, HistoryTrade, Progress, TinyBook)`; the trade callback is
`(TAssetIDRec{pwcTicker, pwcBolsa, nFeed}, pwcDate 'DD/MM/YYYY HH:mm:SS.ZZZ', nTradeNumber, dPrice,
dVol, nQtd, nBuyAgent, nSellAgent, nTradeType, bEdit)`, the history-trade callback the same without
bEdit, and the progress callback `(TAssetIDRec, nProgress)` (1 to 100 for a GetHistoryTrades
request); stdcall on Windows (WinDLL/WINFUNCTYPE), the C convention elsewhere (how the tests drive a
fake library built with gcc). Trade type 2 is a buy aggression, 3 a sell aggression.

History (`GetHistoryTrades(ticker, exchange, 'DD/MM/YYYY HH:mm:SS' start, end)`): its trades come
through the history-trade callback, never the live one, and go on their own queue (`history_queue`,
with the progress reports in arrival order between them), so a past trade can never be taken for a
live one; rejects are counted apart (`stats.history_rejected`). `history_ticks` asks and yields them
until progress 100 (`TProgressCallback(rAssetID, nProgress)`, the login call's slot). The trades come
through `SetHistoryTradeCallbackV2` when the DLL has it and `TranslateTrade` (the manual marks the V1
callback, SetHistoryTradeCallback, deprecated): a `TConnectorTradeCallback(TConnectorAssetIdentifier,
pTrade, nFlags: Cardinal)` whose trade is read, inside the callback as the manual and the Python
example do, with `TranslateTrade(pTrade, var TConnectorTrade)` (Version 0: a SYSTEMTIME date, a 64-bit
quantity, a byte trade type); TC_LAST_PACKET (2) flags the last one (counted; the end is still
progress 100). The login call's history slot then gets NULL, or each trade could arrive twice (once
per version, as issue 16 saw with the books). An older DLL gets the V1 callback in that slot (the
manual's THistoryTradeCallback: the live trade's arguments without bEdit, a 32-bit nQtd). The DLL
serves 30 days of history (`HISTORY_DAYS`); `check_history_window` refuses an older start first.

The books (manual 4.0.0.42, checked against its Delphi, C++, C# and Python examples):
- Only the V2 callbacks are registered, with `SetOfferBookCallbackV2` / `SetPriceBookCallbackV2`
  after the login call; the login call's offer- and price-book slots (the V1 callbacks) get NULL, as
  in the official Python and Delphi examples. With V1 registered too every update arrives twice (once
  per version: what issue 16 reports; the manual says only that Set*Callback overrides the login's
  callback of its own version).
- `TOfferBookCallbackV2(rAssetID, nAction, nPosition, Side: Integer; nQtd: Int64; nAgent: Integer;
  nOfferID: Int64; dPrice: Double; bHasPrice, bHasQtd, bHasDate, bHasOfferID, bHasAgent: Char;
  pwcDate: PWideChar; pArraySell, pArrayBuy: Pointer)`. The manual's parameter table says nOfferID
  is an Integer; its declaration, the Delphi example and every page layout say Int64 (taken here).
  The official Python example declares nQtd 32-bit (c_int): a bug that cuts quantities above 2^31;
  the C# example binds V2 with the V1 delegate (int nQtd) and the Delphi example's UpdateOfferBook
  takes nQtd as Integer too. The Char flags are read as one byte (c_ubyte): every example passes 0/1.
- `TPriceBookCallbackV2(rAssetID, nAction, nPosition, nSide: Integer; nQtds: Int64; nCount: Integer;
  dPrice: Double; pArraySell, pArrayBuy: Pointer)`. The Delphi example declares nCount Int64; the
  manual (declaration and table) Integer, taken here: on x64 every argument has its own 8-byte slot,
  so the low 32 bits read are right either way (not so on 32-bit). The manual marks the price book
  (SubscribePriceBook, SetPriceBookCallbackV2) deprecated for SubscribePriceDepth.
- Pages: int32 count, int32 size (the whole page: what FreePointer takes), the entries, and for the
  offer book a uint32 flags trailer (OB_LAST_PACKET). The manual places the trailer at (Q * 53) + 8,
  which holds only for 23-byte dates; the decoder walks the entries instead (as the Delphi example).
  `FreePointer(pointer, size): Integer` is in no section of the manual; its signature is the
  examples' (Delphi wrapper, profit.h, C#), which call it from inside the callback. The Python example
  never calls it (its pages leak).
"""

from __future__ import annotations

import ctypes
import logging
import queue
import struct
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from tickvault.config import ProfitBook
from tickvault.domain.book import BookBatch
from tickvault.domain.events import B3_TZ, Tick, make_tick, to_ms
from tickvault.errors import ConfigError, DataError, TickvaultError
from tickvault.sources.profitdll_book import parse_profit_date  # the book's callbacks share the date text
from tickvault.sources.profitdll_feed import BookCall, BookFeed, OfferCall, PriceCall

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
UnusedCallback = _FUNC(None)  # daily, tiny book: not subscribed to here
_INT, _INT64, _FLAG, _PTR = ctypes.c_int, ctypes.c_int64, ctypes.c_ubyte, ctypes.c_void_p
OfferBookCallbackV2 = _FUNC(
    None, TAssetIDRec, _INT, _INT, _INT, _INT64, _INT, _INT64, ctypes.c_double,
    _FLAG, _FLAG, _FLAG, _FLAG, _FLAG, ctypes.c_wchar_p, _PTR, _PTR,
)  # fmt: skip
PriceBookCallbackV2 = _FUNC(None, TAssetIDRec, _INT, _INT, _INT, _INT64, _INT, ctypes.c_double, _PTR, _PTR)


class SystemTime(ctypes.Structure):
    _fields_ = [(name, ctypes.c_ushort) for name in (
        "wYear", "wMonth", "wDayOfWeek", "wDay", "wHour", "wMinute", "wSecond", "wMilliseconds",
    )]  # fmt: skip


class TConnectorAssetIdentifier(ctypes.Structure):
    _fields_ = [("Version", ctypes.c_ubyte), ("Ticker", ctypes.c_wchar_p), ("Exchange", ctypes.c_wchar_p),
                ("FeedType", ctypes.c_ubyte)]  # fmt: skip


class TConnectorTrade(ctypes.Structure):
    _fields_ = [
        ("Version", ctypes.c_ubyte), ("TradeDate", SystemTime), ("TradeNumber", ctypes.c_uint),
        ("Price", ctypes.c_double), ("Quantity", ctypes.c_int64), ("Volume", ctypes.c_double),
        ("BuyAgent", ctypes.c_int), ("SellAgent", ctypes.c_int), ("TradeType", ctypes.c_ubyte),
    ]  # fmt: skip


ConnectorTradeCallback = _FUNC(None, TConnectorAssetIdentifier, ctypes.c_void_p, ctypes.c_uint)
TC_IS_EDIT, TC_LAST_PACKET = 1, 2
_PAGE_HEADER = struct.Struct("<ii")  # count, size in bytes of the whole page
MAX_PAGE_BYTES = 64 << 20  # a larger size is not a page: only its header is copied (then rejected)
HISTORY_DAYS = 30  # how far back GetHistoryTrades serves (from today, B3 time)


class ProfitDLLError(TickvaultError):
    pass


@dataclass
class ProfitStats:
    received: int = 0
    history: int = 0
    history_v2: bool = False  # history trades through SetHistoryTradeCallbackV2 (else the V1 slot)
    history_last_packets: int = 0
    edits: int = 0
    book_calls: int = 0  # book callbacks queued
    pages_freed: int = 0  # full-book pages copied and given back with FreePointer
    rejected: Counter[str] = field(default_factory=Counter)
    history_rejected: Counter[str] = field(default_factory=Counter)  # bad trades of a history request


@dataclass(frozen=True)
class HistoryProgress:
    """A progress report of a history request (the DLL's 1..100), queued between its trades."""

    symbol: str
    percent: int


def check_history_window(start: datetime, end: datetime, now: datetime | None = None) -> None:
    """Refuse, before asking the DLL, a range it cannot serve: a start more than HISTORY_DAYS days
    back (from today's B3 midnight), or an end before the start."""
    today = (now or datetime.now(B3_TZ)).astimezone(B3_TZ).date()
    oldest = datetime(today.year, today.month, today.day, tzinfo=B3_TZ) - timedelta(days=HISTORY_DAYS)
    if start < oldest:
        raise DataError(
            "start", f"ProfitDLL serves history {HISTORY_DAYS} days back only, from {oldest:%Y-%m-%d};"
            f" {start.astimezone(B3_TZ):%Y-%m-%d %H:%M} is earlier",
        )  # fmt: skip
    if end < start:
        raise DataError("end", f"{end.isoformat()} is before the start {start.isoformat()}")


class ProfitDLLSource:
    """A ProfitDLL session: `start()` logs in; `subscribe()` (trades), `subscribe_offer_book()` and
    `subscribe_price_book()`, `history()`; `events()` (ticks and book batches) or `ticks()` for
    `System`."""

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
        self.book = BookFeed()  # read only by the thread that reads the queue
        self.queue: queue.SimpleQueue[Tick | BookCall] = queue.SimpleQueue()
        self.history_queue: queue.SimpleQueue[Tick | HistoryProgress] = queue.SimpleQueue()
        self.history_done = threading.Event()
        self._market = threading.Event()
        self._login_failed = threading.Event()
        self._dll: Any = None
        self._free: Any = None  # FreePointer
        self._translate: Any = None  # TranslateTrade (V2 history trades)
        self._book_callbacks = False  # SetOfferBookCallbackV2 and SetPriceBookCallbackV2 accepted ours
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
            (self.stats.history_rejected if history else self.stats.rejected)[str(reason)] += 1
            log.error("ProfitDLL %strade %s rejected: %s", "history " * history, number, exc)
            return
        except Exception as exc:  # noqa: BLE001 - nothing may propagate into the DLL
            (self.stats.history_rejected if history else self.stats.rejected)["unexpected"] += 1
            log.error("ProfitDLL trade %s rejected: %r", number, exc)
            return
        if history:
            self.stats.history += 1
            self.history_queue.put(tick)
            return
        self.stats.received += 1
        self.stats.edits += tick.is_edit
        self.queue.put(tick)

    def _history_v2(self, asset: TConnectorAssetIdentifier, pointer: int | None, flags: int) -> None:
        """A V2 history trade: read with TranslateTrade, then the same checks as every trade."""
        try:
            self.stats.history_last_packets += bool(flags & TC_LAST_PACKET)
            trade = TConnectorTrade(Version=0)
            code = self._translate(pointer, ctypes.byref(trade))
            if code != NL_OK:
                self.stats.history_rejected["translate"] += 1
                log.error("ProfitDLL TranslateTrade returned %s", code)
                return
            d = trade.TradeDate
            date = (f"{d.wDay:02d}/{d.wMonth:02d}/{d.wYear:04d} {d.wHour:02d}:{d.wMinute:02d}:{d.wSecond:02d}"
                    f".{d.wMilliseconds:03d}")  # fmt: skip
            asset_id = TAssetIDRec(asset.Ticker, asset.Exchange, 0)
        except Exception as exc:  # noqa: BLE001 - nothing may propagate into the DLL
            self.stats.history_rejected["unexpected"] += 1
            log.error("ProfitDLL history trade unreadable: %r", exc)
            return
        self._trade(asset_id, date, trade.TradeNumber, trade.Price, trade.Volume, trade.Quantity,
                    trade.BuyAgent, trade.SellAgent, trade.TradeType, 0, history=True)  # fmt: skip

    def _on_progress(self, asset: TAssetIDRec, percent: int) -> None:
        try:
            self.history_queue.put(HistoryProgress(str(asset.pwcTicker or ""), int(percent)))
        except Exception:  # noqa: BLE001 - nothing may propagate into the DLL
            self.stats.history_rejected["progress"] += 1
        if percent >= 100:
            self.history_done.set()

    def _offer(self, asset: TAssetIDRec, action: int, position: int, side: int, quantity: int, agent: int,
               offer_id: int, price: float, has_price: int, has_quantity: int, has_date: int,
               has_offer_id: int, has_agent: int, date: str | None, sell: int | None,
               buy: int | None) -> None:  # fmt: skip
        received = time.time_ns() // 1_000_000
        sell_page, buy_page = self._copy_page(sell), self._copy_page(buy)  # each freed, whatever happens
        try:
            call = OfferCall(
                str(asset.pwcTicker or ""), action, position, side, quantity, agent, offer_id, price,
                bool(has_price), bool(has_quantity), bool(has_date), bool(has_offer_id), bool(has_agent),
                date or "", sell_page, buy_page, received,
            )  # fmt: skip
        except Exception:  # noqa: BLE001 - nothing may propagate into the DLL
            self.stats.rejected["unexpected"] += 1
            return
        self.stats.book_calls += 1
        self.queue.put(call)

    def _price(self, asset: TAssetIDRec, action: int, position: int, side: int, quantity: int, count: int,
               price: float, sell: int | None, buy: int | None) -> None:  # fmt: skip
        received = time.time_ns() // 1_000_000
        sell_page, buy_page = self._copy_page(sell), self._copy_page(buy)
        try:
            call = PriceCall(str(asset.pwcTicker or ""), action, position, side, quantity, count, price,
                             sell_page, buy_page, received)  # fmt: skip
        except Exception:  # noqa: BLE001 - nothing may propagate into the DLL
            self.stats.rejected["unexpected"] += 1
            return
        self.stats.book_calls += 1
        self.queue.put(call)

    def _copy_page(self, address: int | None) -> bytes | None:
        """A full-book page's bytes (its header says how many), then the page goes back to the DLL with
        FreePointer: the pointer is ours to free, and only valid until we do. Never raises."""
        if not address:
            return None
        size = 0
        try:
            _, size = _PAGE_HEADER.unpack(ctypes.string_at(address, _PAGE_HEADER.size))
            length = size if _PAGE_HEADER.size <= size <= MAX_PAGE_BYTES else _PAGE_HEADER.size
            return ctypes.string_at(address, length)
        except Exception:  # noqa: BLE001 - an unreadable page is rejected on the reader's side
            return b""
        finally:
            try:
                self._free(address, size)
                self.stats.pages_freed += 1
            except Exception:  # noqa: BLE001
                self.stats.rejected["free"] += 1

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
        offer, price = OfferBookCallbackV2(self._offer), PriceBookCallbackV2(self._price)
        past_v2 = ConnectorTradeCallback(self._history_v2)
        self._keep = [state, trade, past, past_v2, progress, unused, offer, price]
        self._translate = getattr(self._dll, "TranslateTrade", None)
        v2 = self._translate is not None and hasattr(self._dll, "SetHistoryTradeCallbackV2")
        if self._translate is not None:
            self._translate.argtypes, self._translate.restype = (
                [ctypes.c_void_p, ctypes.c_void_p],
                ctypes.c_int,
            )
        self._free = getattr(self._dll, "FreePointer", None)
        if self._free is not None:
            self._free.argtypes, self._free.restype = [ctypes.c_void_p, ctypes.c_int], ctypes.c_int
        login = self._dll.DLLInitializeMarketLogin
        login.restype = ctypes.c_int
        key, user, password = self._credentials
        # the book slots take the V1 callbacks: NULL, or every update would arrive twice (V1 and V2)
        code = login(ctypes.c_wchar_p(key), ctypes.c_wchar_p(user), ctypes.c_wchar_p(password), state, trade,
                     unused, None, None, None if v2 else past, progress, unused)  # fmt: skip
        if code != NL_OK:
            raise ProfitDLLError(f"DLLInitializeMarketLogin returned {code}")
        if v2:  # V2 only (the V1 slot got NULL): each history trade once
            self._dll.SetHistoryTradeCallbackV2.restype = ctypes.c_int
            code = self._dll.SetHistoryTradeCallbackV2(past_v2)
            if code != NL_OK:
                raise ProfitDLLError(f"SetHistoryTradeCallbackV2 returned {code}")
        self.stats.history_v2 = v2
        self._book_callbacks = self._set_book_callbacks(offer, price)
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

    def _set_book_callbacks(self, offer: Any, price: Any) -> bool:
        """Register the V2 book callbacks; False (books unavailable, trades still fine) when this DLL
        lacks them or FreePointer."""
        names = ("SetOfferBookCallbackV2", "SetPriceBookCallbackV2")
        if self._free is None or not all(hasattr(self._dll, name) for name in names):
            log.warning("this ProfitDLL lacks the V2 book callbacks or FreePointer: no order book")
            return False
        for name, callback in zip(names, (offer, price), strict=True):
            setter = getattr(self._dll, name)
            setter.restype = ctypes.c_int
            code = setter(callback)
            if code != NL_OK:
                raise ProfitDLLError(f"{name} returned {code}")
        return True

    def _each(self, function: str, symbols: Iterable[str], *, book: bool = False) -> None:
        if book and not self._book_callbacks:
            raise ProfitDLLError(f"{function}: this ProfitDLL gives no V2 book callbacks (see the log)")
        for symbol in symbols:
            code = getattr(self._dll, function)(ctypes.c_wchar_p(symbol), ctypes.c_wchar_p(self.exchange))
            if code != NL_OK:
                raise ProfitDLLError(f"{function}({symbol}) returned {code}")

    @property
    def has_book(self) -> bool:
        """Whether this DLL took the V2 book callbacks (known once started)."""
        return self._book_callbacks

    def subscribe(self, symbols: Iterable[str]) -> None:
        """Trades of `symbols`, as ticks."""
        self._each("SubscribeTicker", symbols)

    def subscribe_offer_book(self, symbols: Iterable[str]) -> None:
        """The offer book (by order) of `symbols`: `OrderUpdate` batches, a full book first."""
        self._each("SubscribeOfferBook", symbols, book=True)

    def unsubscribe_offer_book(self, symbols: Iterable[str]) -> None:
        self._each("UnsubscribeOfferBook", symbols, book=True)

    def subscribe_price_book(self, symbols: Iterable[str]) -> None:
        """The price book (by level) of `symbols`: `BookUpdate` batches (deprecated by Nelogica for
        SubscribePriceDepth, still served)."""
        self._each("SubscribePriceBook", symbols, book=True)

    def unsubscribe_price_book(self, symbols: Iterable[str]) -> None:
        self._each("UnsubscribePriceBook", symbols, book=True)

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

    def history_ticks(
        self,
        symbol: str,
        start: datetime,
        end: datetime,
        stop: threading.Event,
        *,
        idle_timeout: float = 120.0,
        on_progress: Callable[[int], None] | None = None,
    ) -> Iterator[Tick]:
        """Ask for the past trades of `symbol` in [start, end] and yield them as they arrive, until
        the DLL reports 100 (`on_progress` sees every report) or `stop` is set. No callback for
        `idle_timeout` seconds is an error (the DLL went quiet mid-download)."""
        check_history_window(start, end)
        self.history(symbol, start, end)
        quiet_since = time.monotonic()
        while not stop.is_set():
            try:
                item = self.history_queue.get(timeout=0.1)
            except queue.Empty:
                if time.monotonic() - quiet_since > idle_timeout:
                    raise ProfitDLLError(
                        f"history of {symbol}: nothing from the DLL for {idle_timeout:g} s"
                    ) from None
                continue
            quiet_since = time.monotonic()
            if isinstance(item, Tick):
                yield item
                continue
            if on_progress is not None:
                on_progress(item.percent)
            if item.percent >= 100 and item.symbol in (symbol, ""):
                return

    def events(self, stop: threading.Event) -> Iterator[Tick | BookBatch]:
        """Ticks and book batches in the order the DLL delivered them, until `stop` is set."""
        while not stop.is_set():
            try:
                item = self.queue.get(timeout=0.1)
            except queue.Empty:
                continue
            yield from self._items(item)

    def drain(self) -> list[Tick | BookBatch]:
        """What has arrived so far, without waiting."""
        out: list[Tick | BookBatch] = []
        while True:
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                return out
            out += self._items(item)

    def _items(self, item: Tick | BookCall) -> list[Tick | BookBatch]:
        return [item] if isinstance(item, Tick) else list(self.book.on_call(item))

    def ticks(self, stop: threading.Event) -> Iterator[Tick]:
        """The trades alone (book callbacks, if subscribed, are still applied to the lists, and their
        batches dropped: use `events` for them)."""
        for item in self.events(stop):
            if isinstance(item, Tick):
                yield item

    def close(self) -> None:
        if self._dll is not None:
            self._dll.DLLFinalize()
            self._dll = None


def profitdll_source(
    settings: Any, stop: threading.Event, *, book: ProfitBook = "none"
) -> Callable[[Any], Iterator[Tick | BookBatch]]:
    """A `System` source: log in with PROFIT_* settings, subscribe to the configured symbols' trades
    and to their `book` (PROFIT_BOOK): the offer book (by order: `OrderUpdate` batches) or the price
    book (by level: `BookUpdate` batches), each opening with a full book. A DLL without the V2 book
    callbacks gives trades only (logged when it loads)."""

    def source(_: Any) -> Iterator[Tick | BookBatch]:
        def secret(value: Any) -> str:
            return str(value.get_secret_value()) if value is not None else ""

        session = ProfitDLLSource(
            settings.profit_dll_path, secret(settings.profit_key), settings.profit_user or "",
            secret(settings.profit_password),
        )  # fmt: skip
        session.start()
        try:
            session.subscribe(settings.symbols)
            if book != "none" and session.has_book:
                subscribe = session.subscribe_offer_book if book == "offer" else session.subscribe_price_book
                subscribe(settings.symbols)
                yield from session.events(stop)
            else:
                yield from session.ticks(stop)
        finally:
            session.close()

    return source
