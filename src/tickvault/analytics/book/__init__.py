"""The order book computed from its events, with no I/O: `live` keeps one symbol's book up to date
event by event (`LevelBook`, `OrderBook`); `history` reconstructs past books from `BookColumns`,
vectorised (`book_at`, `book_frames` / `frames_at`, `quotes`); `snapshot` exports the book after any row as a
snapshot group (`snapshot_at`: what the store keeps every N updates). All follow `domain.book`'s
semantics and are held against the same slow reference books or the live engine in the tests.
"""

from __future__ import annotations

from tickvault.analytics.book.history import (
    BookAt,
    BookFrames,
    LevelRows,
    Quotes,
    book_at,
    book_frames,
    cutoffs,
    frames_at,
    level_codes,
    level_rows,
    quotes,
)
from tickvault.analytics.book.live import LevelBook, Levels, OrderBook, Top, live_book
from tickvault.analytics.book.snapshot import snapshot_at, valid_rows, valid_through

__all__ = [
    "BookAt",
    "BookFrames",
    "LevelBook",
    "LevelRows",
    "Levels",
    "OrderBook",
    "Quotes",
    "Top",
    "book_at",
    "book_frames",
    "cutoffs",
    "frames_at",
    "level_codes",
    "level_rows",
    "live_book",
    "quotes",
    "snapshot_at",
    "valid_rows",
    "valid_through",
]
