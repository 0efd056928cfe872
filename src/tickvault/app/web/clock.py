"""Times as the page shows them: B3 wall clock with its offset. The chart library draws UTC, so a
chart time is the B3 wall-clock time in seconds ("local seconds"), each shifted by its own offset."""

from __future__ import annotations

from tickvault.domain.events import from_ms


def local_s(ms: int) -> int:
    """B3 wall-clock seconds of an epoch-ms time (what the chart's time axis shows)."""
    offset = from_ms(ms).utcoffset()
    return (ms // 1000) + (int(offset.total_seconds()) if offset is not None else 0)


def clock(ms: int) -> str:
    """`2026-11-24 10:00:00.123` in B3 time."""
    return from_ms(ms).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def offset_text(ms: int) -> str:
    """The B3 offset from UTC at `ms`, e.g. `-03:00`."""
    text = from_ms(ms).strftime("%z")
    return f"{text[:3]}:{text[3:]}"
