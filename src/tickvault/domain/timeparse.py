"""Time arguments of queries: timezone-aware datetimes, ISO text, 'now' and relative offsets.

Naive times are refused: a market-data query that silently assumes a timezone returns the wrong
hours. A bare date (`2026-11-24`) means that calendar day in B3 time (America/Sao_Paulo).
"""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta
from typing import Union

import pandas as pd

from tickvault.domain.events import B3_TZ, to_ms
from tickvault.errors import DataError

TimeLike = Union[datetime, pd.Timestamp, str, int]  # noqa: UP007 - used at runtime in isinstance checks

_RELATIVE = re.compile(r"([+-])(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNITS = {"ms": "milliseconds", "s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
_DATE_ONLY = re.compile(r"\d{4}-\d{2}-\d{2}")
_RANGE = "a time must fall in the years 1 to 9999"


def parse_time(value: TimeLike, *, field: str = "time", now: datetime | None = None) -> datetime:
    """A timezone-aware datetime from a datetime, pandas Timestamp, epoch ms, or text:
    ISO 8601 with an offset (`2026-11-24T10:00:00-03:00`, `...Z`), a date (`2026-11-24`, B3 day),
    `now`, or an offset from now (`-2h`, `-30m`, `+1d`)."""
    if isinstance(value, bool):
        raise DataError(field, f"expected a time, got {value!r}")
    if isinstance(value, int):
        try:
            return datetime.fromtimestamp(value / 1000, tz=B3_TZ)
        except (ValueError, OverflowError, OSError):
            raise DataError(field, f"{value} (epoch ms) is out of range: {_RANGE}") from None
    if isinstance(value, pd.Timestamp):
        value = value.to_pydatetime()
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise DataError(field, f"{value.isoformat()} has no timezone; add one (e.g. -03:00 or Z)")
        return value
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=B3_TZ)
    if not isinstance(value, str):
        raise DataError(field, f"expected a time, got {type(value).__name__}")
    text = value.strip()
    current = now or datetime.now(B3_TZ)
    if text.lower() == "now":
        return current
    rel = _RELATIVE.fullmatch(text)
    if rel:
        sign, amount, unit = rel.groups()
        try:
            delta = timedelta(**{_UNITS[unit]: float(amount)})
            return current + delta if sign == "+" else current - delta
        except OverflowError:
            raise DataError(field, f"{text!r} is out of range: {_RANGE}") from None
    if _DATE_ONLY.fullmatch(text):
        try:
            day = date.fromisoformat(text)
        except ValueError as exc:
            raise DataError(field, f"{text!r} is not a date: {exc}") from None
        return datetime(day.year, day.month, day.day, tzinfo=B3_TZ)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise DataError(
            field, f"{text!r} is not a time; use ISO 8601 with an offset, a date, 'now' or e.g. '-2h'"
        ) from None
    if parsed.tzinfo is None:
        raise DataError(field, f"{text!r} has no timezone; add one (e.g. -03:00 or Z)")
    return parsed


def _whole_day(value: TimeLike) -> bool:
    if isinstance(value, str):
        return bool(_DATE_ONLY.fullmatch(value.strip()))
    return isinstance(value, date) and not isinstance(value, datetime)


def to_ms_bounds(start: TimeLike, end: TimeLike) -> tuple[int, int]:
    """Inclusive [start, end] in epoch ms; refuses an end before the start or before 1970 (epoch ms,
    and so stream ids, start there: a start before it means from the first). An end given as a bare
    date takes in that whole B3 day (as pandas' `df["2025-11-24":"2025-11-24"]` does)."""
    now = datetime.now(B3_TZ)
    start_ms = max(0, to_ms(parse_time(start, field="start", now=now)))
    end_at = parse_time(end, field="end", now=now)
    end_ms = to_ms(end_at)
    if _whole_day(end):  # up to the next B3 midnight, exclusive
        day = end_at.date() + timedelta(days=1)
        end_ms = to_ms(datetime(day.year, day.month, day.day, tzinfo=B3_TZ)) - 1
    if end_ms < 0:
        raise DataError("end", f"{end!r} is before 1970-01-01 UTC: nothing is stored before it")
    if end_ms < start_ms:
        raise DataError("end", f"is before start ({end!r} < {start!r})")
    return start_ms, end_ms


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def parse_duration_ms(value: str | int, *, field: str = "every") -> int:
    """A positive duration in ms from `500ms`, `1s`, `5m`, `1h`, `1d` (or an int of ms)."""
    if isinstance(value, int) and not isinstance(value, bool):
        ms = value
    else:
        found = _DURATION.fullmatch(str(value).strip())
        if found is None:
            raise DataError(field, f"{value!r} is not a duration; use e.g. 500ms, 1s, 5m, 1h")
        ms = round(float(found.group(1)) * _UNIT_MS[found.group(2)])
    if ms <= 0:
        raise DataError(field, f"must be positive, got {value!r}")
    return ms
