"""The contracts tickvault knows, in one registry: per B3 symbol root the tick size, the multiplier
(BRL per point per contract), the currency, and the session (hours in B3 local time, on the days of
the exchange calendar).

A symbol resolves by its root and contract code: `WDOFUT`, `WINFUT` (the continuous contract, as
ProfitDLL names it) or a dated contract, root + B3 month letter + two-digit year (`WDOF25`, `WINZ26`).
Anything else (`PETR4`, a made-up name) gets `DEFAULT`: a share-like 0.01 tick and BRL 1 per point,
so an unknown symbol still simulates, loads from files and reports.

Figures (B3 contract specifications):
- WDO, mini US dollar: 0.5 point tick, BRL 10 per point (USD 10,000 at BRL per USD 1,000).
- DOL, US dollar: 0.5 point tick, BRL 50 per point (USD 50,000).
- WIN, mini Ibovespa: 5 point tick, BRL 0.20 per point.
- IND, Ibovespa: 5 point tick, BRL 1.00 per point.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
import warnings
from collections.abc import Mapping
from datetime import date, datetime, time, timedelta
from types import MappingProxyType

import msgspec

from tickvault.domain.events import B3_TZ

log = logging.getLogger("tickvault.instruments")


class Session(msgspec.Struct, frozen=True):
    """Trading hours [open, close) in B3 local time, on the trading days of an `exchange_calendars`
    calendar."""

    open: time
    close: time
    calendar: str = "BVMF"

    @property
    def length_ms(self) -> int:
        return (self.close.hour * 60 + self.close.minute - self.open.hour * 60 - self.open.minute) * 60_000

    def is_trading_day(self, day: date) -> bool:
        """A session date of the calendar; outside its range (about 20 years back, 1 ahead) a weekday."""
        first, last, days = _trading_days(self.calendar)
        if first <= day <= last:
            return day in days
        return day.weekday() < 5

    def open_of(self, day: date) -> datetime:
        return datetime.combine(day, self.open, tzinfo=B3_TZ)

    def close_of(self, day: date) -> datetime:
        return datetime.combine(day, self.close, tzinfo=B3_TZ)

    def next_trading_day(self, day: date) -> date:
        day += timedelta(days=1)
        while not self.is_trading_day(day):
            day += timedelta(days=1)
        return day

    def previous_trading_day(self, day: date) -> date:
        day -= timedelta(days=1)
        while not self.is_trading_day(day):
            day -= timedelta(days=1)
        return day

    def start_for(self, now: datetime) -> datetime:
        """The open of the session that is current or most recent at `now`."""
        local = now.astimezone(B3_TZ)
        day = local.date()
        if local.time() < self.open or not self.is_trading_day(day):
            day = self.previous_trading_day(day)
        return self.open_of(day)

    def trading_moment(self, moment: datetime) -> datetime:
        """`moment` (in B3 local time) if a session is open then, else the next session's open."""
        local = moment.astimezone(B3_TZ)
        day = local.date()
        if self.is_trading_day(day):
            if self.open <= local.time() < self.close:
                return local
            if local.time() < self.open:
                return self.open_of(day)
        return self.open_of(self.next_trading_day(day))


FUTURES_SESSION = Session(time(9, 0), time(18, 30))


class Instrument(msgspec.Struct, frozen=True):
    root: str
    name: str
    tick_size: float  # points
    multiplier: float  # BRL per point per contract: financial volume = price * quantity * multiplier
    currency: str = "BRL"
    session: Session = FUTURES_SESSION


INSTRUMENTS: Mapping[str, Instrument] = MappingProxyType(
    {
        "WDO": Instrument("WDO", "mini US dollar futures", 0.5, 10.0),
        "DOL": Instrument("DOL", "US dollar futures", 0.5, 50.0),
        "WIN": Instrument("WIN", "mini Ibovespa futures", 5.0, 0.2),
        "IND": Instrument("IND", "Ibovespa futures", 5.0, 1.0),
    }
)
# Unknown symbols keep the futures session too: the simulator runs all its symbols on one clock.
DEFAULT = Instrument("GENERIC", "any other symbol", 0.01, 1.0)

_CONTRACT = re.compile(r"([A-Z]{3})(?:FUT|[FGHJKMNQUVXZ]\d\d)")


@functools.lru_cache(maxsize=4096)  # file loads resolve every row's symbol
def instrument_for(symbol: str) -> Instrument:
    """The instrument of `symbol` (`WDOFUT`, `WDOF25`, `WINZ26`, ...); `DEFAULT` for any other."""
    match = _CONTRACT.fullmatch(symbol)
    return INSTRUMENTS.get(match.group(1), DEFAULT) if match else DEFAULT


# --- trading days: from exchange_calendars (slow to build: once per calendar and process) ---------

_calendar_lock = threading.Lock()
_calendars: dict[str, tuple[date, date, frozenset[date]]] = {}


def _trading_days(name: str) -> tuple[date, date, frozenset[date]]:
    with _calendar_lock:
        if name not in _calendars:
            try:
                import exchange_calendars

                with warnings.catch_warnings():  # pandas deprecation noise from inside the library
                    warnings.simplefilter("ignore")
                    days = frozenset(ts.date() for ts in exchange_calendars.get_calendar(name).sessions)
                _calendars[name] = (min(days), max(days), days)
            except Exception as exc:  # a simulator and a backfill must still run: weekdays as sessions
                log.warning("no %s calendar (%s): every weekday is a session", name, exc)
                _calendars[name] = (date.max, date.min, frozenset())
        return _calendars[name]
