"""The "already stored" bitmaps both live writers keep: one Valkey string per chunk of
2**SEEN_CHUNK_BITS ids (trade ids per session for ticks, update seqs for the book), in Valkey's bit
order (the high bit of a byte first), cached per symbol by the writer that holds its lease.

New bits are OR-ed in through a scratch key, never written over the stored bitmap: a stale cached
copy must not clear bits Valkey already has."""

from __future__ import annotations

from typing import Any

import numpy as np

SEEN_CHUNK_BITS = 23  # one bitmap key per 8M ids: at most 1 MiB each
CHUNK_MASK = (1 << SEEN_CHUNK_BITS) - 1


def cached_bitmap(client: Any, cache: dict[str, np.ndarray], key: str) -> np.ndarray:
    """The bitmap of `key`, read from Valkey the first time and kept in `cache` (writable bytes)."""
    bitmap = cache.get(key)
    if bitmap is None:
        raw = client.get(key) or b""
        bitmap = cache[key] = np.frombuffer(raw, dtype=np.uint8).copy()
    return bitmap


def byte_and_mask(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each id's byte in its chunk's bitmap and the bit within that byte."""
    offsets = ids & CHUNK_MASK
    return offsets >> 3, (0x80 >> (offsets & 7)).astype(np.uint8)


def are_set(bitmap: np.ndarray, byte: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Whether each bit is set (a byte past the bitmap's end: unset)."""
    found = np.zeros(len(byte), np.bool_)
    inside = byte < len(bitmap)
    found[inside] = (bitmap[byte[inside]] & mask[inside]) != 0
    return found


def set_bits(cache: dict[str, np.ndarray], key: str, byte: np.ndarray, mask: np.ndarray) -> tuple[int, int]:
    """Sets the bits in the cached bitmap of `key` (grown as needed); the first and last byte changed."""
    bitmap = cache[key]
    top = int(byte.max())
    if top >= len(bitmap):
        bitmap = cache[key] = np.concatenate([bitmap, np.zeros(top + 1 - len(bitmap), np.uint8)])
    np.bitwise_or.at(bitmap, byte, mask)
    return int(byte.min()), top


def or_in(key: str, bitmap: np.ndarray, lo: int, hi: int) -> list[tuple[str | bytes, ...]]:
    """The commands that OR bytes lo..hi of the cached bitmap into the stored one."""
    scratch = f"{key}:new"
    return [
        ("SETRANGE", scratch, str(lo), bitmap[lo : hi + 1].tobytes()),
        ("BITOP", "OR", key, key, scratch),
        ("DEL", scratch),
    ]
