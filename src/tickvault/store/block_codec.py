"""History blocks: many ticks of one symbol packed column by column and compressed with zstd.

A block is a 28-byte header, then one zstd frame (content size and checksum on), little-endian:

    0   4s  magic b"TVB1"              12  i64  min timestamp_ms  } the block's span, read without
    4   u8  format version (VERSION)   20  i64  max timestamp_ms  } decompressing (0, 0 when empty)
    5   3x  reserved, zero             28  ...  zstd frame
    8   u32 rows

The frame holds a copy of the header (a damaged header fails the frame checksum), then one section
per column in `COLUMNS` order: a 32-byte section header (u8 kind, u8 bits, u8 flags, a pad byte,
u32 payload bytes, i64 a, i64 b, f64 c) and its payload. Kinds:

- STEP: no payload, value[i] = a + i * b: constant columns (is_edit...) and ids counting up by a fixed
  step (trade_id, seq); one np.arange to decode, no prefix sum.
- INT: unsigned integers u. Plain: value = a + u, a the minimum. Flag DELTA (timestamp_ms, trade_id,
  seq): u are the differences between rows divided by their common divisor b, a is the first value;
  late ticks make negative differences, which flag ZIGZAG maps 0, -1, 1, -2 -> 0, 1, 2, 3. Flag DICT:
  the payload starts with b int64 values and u are codes into them (40 broker ids spread over 1..5000
  become 8-bit codes).
- PRICE: with flag DICT (at most 4096 distinct prices: an hour of a future trades on a few hundred
  levels, and a table lookup is the cheapest decode) b float64 values, then codes. Else a DELTA INT
  section of the integers price * c, c = 10^k for the fewest decimals k in 0..8 that give back every
  price bit for bit (value = int / c). Else FLOAT.
- FLOAT: the float64 bit patterns as 64-bit u.
- PRODUCT (volume): volume = price * float(quantity) * c (flag DIVIDE: / c), evaluated just so, then b
  exceptions: b u32 row numbers and b float64 volumes for the rows that rule does not reproduce.
- DERIVED (aggressor): no payload: the code of `tick_schema.TRADE_TYPE_AGGRESSOR[trade_type]` (ProfitDLL's
  aggression types: 1 buy where trade_type == 2, 2 sell where it is 3, else 0 none); used only when that
  reproduces every row.
- Any other column by its dtype in `tick_schema`: integers and bools INT (flag DELTA where the schema
  says `delta`), float64 FLOAT.

Packing of u, `bits` per value: 1, 2 or 4 put 8 / bits values in a byte, the first in the low bits;
8, 16, 32 and 64 store that width split into byte planes (all lowest bytes, then the next ones), so
the zero high bytes of small numbers compress to nearly nothing. Floats come back bit for bit (-0.0,
NaN payloads, subnormals), int64s exactly. Decoding is numpy only, no Python loop per row; at 360k
rows its cost is memory traffic, so each step writes its output once where it can.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import zstandard

from tickvault.domain.tick_schema import (
    AGGRESSOR_CODES,
    COLUMN_DTYPES,
    COLUMN_FIELDS,
    COLUMNS,
    TRADE_TYPE_AGGRESSOR,
)
from tickvault.errors import DataError

MAGIC = b"TVB1"
VERSION = 2  # 1: the first layout, without a version byte

_HEADER = struct.Struct("<4sB3xIqq")
_SECTION = struct.Struct("<BBBxIqqd")
STEP, INT, PRICE, FLOAT, PRODUCT, DERIVED = range(6)
DELTA, ZIGZAG, DICT, DIVIDE = 1, 2, 4, 8
_UINT = {8: np.uint8, 16: np.uint16, 32: np.uint32, 64: np.uint64}
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_local = threading.local()


@dataclass(frozen=True)
class Columns:
    """One symbol's ticks, all arrays the same length, ordered by (timestamp_ms, arrival). One array
    per column of `tick_schema.TICK_FIELDS`, in its order and of its dtype (a test holds this class to
    them); `aggressor` holds int8 codes into AGGRESSOR_CODES."""

    timestamp_ms: np.ndarray
    trade_id: np.ndarray
    price: np.ndarray
    volume: np.ndarray  # financial volume
    quantity: np.ndarray
    buyer: np.ndarray
    seller: np.ndarray
    trade_type: np.ndarray
    aggressor: np.ndarray
    is_edit: np.ndarray
    seq: np.ndarray

    def __len__(self) -> int:
        return len(self.timestamp_ms)

    @classmethod
    def empty(cls) -> Columns:
        return cls(**{name: np.empty(0, kind) for name, kind in _KINDS.items()})

    @classmethod
    def concat(cls, parts: Sequence[Columns]) -> Columns:
        if len(parts) <= 1:
            return parts[0] if parts else cls.empty()
        return cls(**{name: np.concatenate([getattr(p, name) for p in parts]) for name in COLUMNS})

    def take(self, index: np.ndarray) -> Columns:
        """The rows at `index` (positions or a boolean mask), as new arrays."""
        return Columns(**{name: getattr(self, name)[index] for name in COLUMNS})

    def slice_time(self, start_ms: int, end_ms: int) -> Columns:
        """Rows with start_ms <= timestamp_ms <= end_ms. Sorted timestamps (the usual case): views
        found by binary search; unsorted ones: a filtered copy in stored order."""
        ms = self.timestamp_ms
        lo_ms, hi_ms = (np.int64(min(max(int(t), -(2**63)), 2**63 - 1)) for t in (start_ms, end_ms))
        if len(ms) and bool(np.all(ms[1:] >= ms[:-1])):
            lo, hi = int(np.searchsorted(ms, lo_ms, "left")), int(np.searchsorted(ms, hi_ms, "right"))
            if (lo, hi) == (0, len(ms)):
                return self
            return Columns(**{name: getattr(self, name)[lo : max(lo, hi)] for name in COLUMNS})
        return self.take(np.flatnonzero((ms >= lo_ms) & (ms <= hi_ms)))


_KINDS = COLUMN_DTYPES
_WIDE = tuple(name for name in COLUMNS if _KINDS[name].itemsize == 8)
_DELTA_COLUMNS = frozenset(f.name for f in COLUMN_FIELDS if f.delta)
# (code, trade type) pairs of the aggressor a trade type implies
_DERIVED = tuple((AGGRESSOR_CODES.index(name), kind) for kind, name in TRADE_TYPE_AGGRESSOR.items())


@dataclass(frozen=True)
class BlockHeader:
    rows: int
    first_ms: int  # min timestamp_ms in the block
    last_ms: int  # max timestamp_ms in the block
    version: int


def _compressor(level: int) -> zstandard.ZstdCompressor:
    # creating a (de)compressor costs more than packing a small block: one per level and thread
    cache = _local.__dict__.setdefault("compressors", {})
    if level not in cache:
        cache[level] = zstandard.ZstdCompressor(level=level, write_checksum=True)
    compressor: zstandard.ZstdCompressor = cache[level]
    return compressor


def _decompressor() -> zstandard.ZstdDecompressor:
    if not hasattr(_local, "decompressor"):
        _local.decompressor = zstandard.ZstdDecompressor()
    decompressor: zstandard.ZstdDecompressor = _local.decompressor
    return decompressor


# -- encoding ---------------------------------------------------------------------------------------


def _section(kind: int, payload: bytes = b"", *, bits: int = 0, flags: int = 0, a: int = 0, b: int = 0,
             c: float = 0.0) -> bytes:  # fmt: skip
    return _SECTION.pack(kind, bits, flags, len(payload), a, b, c) + payload


def _bits(top: int) -> int:
    """The narrowest packing (bits per value) that holds the unsigned value `top`."""
    return next(b for b in (1, 2, 4, 8, 16, 32, 64) if top < 1 << b)


def _packed(kind: int, u: np.ndarray, table: bytes = b"", **header: int | float) -> bytes:
    """A section of the unsigned values `u` in their narrowest packing, after `table`."""
    bits = _bits(int(u.max()) if len(u) else 0)
    if bits < 8:
        per = 8 // bits
        padded = np.zeros(-(-len(u) // per) * per, np.uint8)
        padded[: len(u)] = u
        grid = padded.reshape(-1, per)
        data = grid[:, 0].copy()
        for j in range(1, per):  # value j of a byte sits at bit j * bits
            data |= grid[:, j] << (j * bits)
    else:
        data = u.astype(_UINT[bits]).view(np.uint8).reshape(len(u), bits // 8).T  # byte planes
    return _section(kind, table + data.tobytes(), bits=bits, **header)  # type: ignore[arg-type]


def _dictionary(u: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(sorted distinct values, codes) of unsigned `u` if it has at most `limit` distinct values and
    they are below 2^22: a presence table finds them in O(n), no sort."""
    top = int(u.max())
    if top >= 1 << 22:
        return None
    seen = np.zeros(top + 1, np.bool_)
    seen[u] = True
    found = np.flatnonzero(seen)
    if len(found) > limit:
        return None
    lookup = np.zeros(top + 1, np.uint16)
    lookup[found] = np.arange(len(found))
    return found, lookup.take(u)


def _int_section(x: np.ndarray, *, delta: bool, kind: int = INT, c: float = 0.0) -> bytes:
    n = len(x)
    if n == 0:
        return _section(STEP)
    if not delta:
        lo = int(x.min())
        u = (x - lo).view(np.uint64)  # wraps for spans beyond int64: exact modulo 2^64
        top = int(u.max())
        if top == 0:
            return _section(STEP, a=lo)
        found = _dictionary(u, 256) if top >= 16 else None
        if found is not None and 64 * len(found[0]) + n * _bits(len(found[0]) - 1) < n * _bits(top):
            table = (found[0].astype(np.int64) + lo).tobytes()
            return _packed(INT, found[1], table, flags=DICT, b=len(found[0]))
        return _packed(INT, u, a=lo)
    d = np.diff(x, prepend=x[:1])  # wraps like the prefix sum that undoes it
    if kind == INT and (n == 1 or bool(np.all(d[1:] == d[1]))):
        return _section(STEP, a=int(x[0]), b=int(d[-1]))
    step, lo, hi = 1, int(d.min()), int(d.max())
    if lo > -(2**62) and hi < 2**62 and hi > lo:
        step = int(np.gcd.reduce(d))  # prices in tenths on a 0.5 grid, ids counting by 10: pack tighter
        if step > 1:
            d //= step
    if lo < 0:
        return _packed(
            kind, ((d << 1) ^ (d >> 63)).view(np.uint64), flags=DELTA | ZIGZAG, a=int(x[0]), b=step, c=c
        )
    return _packed(kind, d.view(np.uint64), flags=DELTA, a=int(x[0]), b=step, c=c)


def _decimal_grid(price: np.ndarray) -> tuple[np.ndarray, float] | None:
    """(price * 10^k as int64, 10^k) for the fewest decimals k that reproduce every price exactly."""
    if not np.all(np.isfinite(price)):
        return None
    for k in range(9):
        scale = 10.0**k
        for part in (price[:64], price):  # a look at the first rows rules most k out cheaply
            ints = np.round(part * scale)
            if not np.all(np.abs(ints) < 2**53):
                return None
            as_int = ints.astype(np.int64)
            if not np.all((as_int / scale).view(np.int64) == part.view(np.int64)):  # as decoded, bit for bit
                break
        else:
            return as_int, scale
    return None


def _price_section(price: np.ndarray) -> bytes:
    grid = _decimal_grid(price) if len(price) else None
    if grid is None:
        return _packed(FLOAT, price.view(np.uint64))
    ints, scale = grid
    lo = int(ints.min())
    found = _dictionary((ints - lo).view(np.uint64), min(4096, len(price) // 64))
    if found is None:
        return _int_section(ints, delta=True, kind=PRICE, c=scale)
    table = ((found[0].astype(np.int64) + lo) / scale).tobytes()
    return _packed(PRICE, found[1], table, flags=DICT, b=len(found[0]))


def _volume_section(price: np.ndarray, quantity: np.ndarray, volume: np.ndarray) -> bytes:
    qty = quantity.astype(np.float64)
    tries = [(0, m) for m in (1.0, 0.2, 10.0, 50.0, 0.25)] + [(DIVIDE, 5.0)]
    usable = np.flatnonzero((price > 0) & (qty > 0) & (volume > 0))
    if len(usable):
        i = usable[0]
        tries.insert(0, (0, float(volume[i] / (price[i] * qty[i]))))
        inverse = float(price[i] * qty[i] / volume[i])
        if 1 < inverse < 2**20 and inverse == round(inverse):  # / 5 gives decimal volumes; * 0.2 may not
            tries.insert(1, (DIVIDE, inverse))
    best: tuple[int, float, np.ndarray] | None = None
    for flags, m in tries:
        expected = price * qty / m if flags & DIVIDE else price * qty * m
        wrong = np.flatnonzero(expected.view(np.int64) != volume.view(np.int64))
        if best is None or len(wrong) < len(best[2]):
            best = (flags, m, wrong)
        if len(wrong) == 0:
            break
    if best is None or len(best[2]) * 12 > len(volume):  # 12 bytes an exception: raw floats are cheaper
        return _packed(FLOAT, volume.view(np.uint64))
    flags, m, wrong = best
    payload = wrong.astype(np.uint32).tobytes() + volume[wrong].tobytes()
    return _section(PRODUCT, payload, flags=flags, b=len(wrong), c=m)


def _derived_aggressor(trade_type: np.ndarray, offset: int = 0) -> np.ndarray:
    """The aggressor codes the trade types imply (TRADE_TYPE_AGGRESSOR), 0 (none) for any other.
    `trade_type` may be the column's narrow stored values, `offset` below the real ones: comparing
    bytes is cheaper."""
    out = np.zeros(len(trade_type), np.int8)
    info = np.iinfo(trade_type.dtype)
    for code, kind in _DERIVED:
        if info.min <= kind - offset <= info.max:
            out += (trade_type == kind - offset).view(np.int8) * np.int8(code)  # int8 shifts are slow
    return out


def encode_block(cols: Columns, *, level: int = 3) -> bytes:
    """Pack one symbol's columns (timestamps in any order) into a compressed block."""
    arrays: dict[str, np.ndarray] = {
        name: np.ascontiguousarray(getattr(cols, name), dtype=_KINDS[name]) for name in COLUMNS
    }
    n = len(arrays["timestamp_ms"])
    if any(a.ndim != 1 or len(a) != n for a in arrays.values()):
        raise DataError("block", "columns must be one-dimensional and of equal length")
    if n >= 2**32:
        raise DataError("block", f"{n} rows do not fit in one block (at most 2^32 - 1)")
    ms, tt = arrays["timestamp_ms"], arrays["trade_type"]
    sections = []
    with np.errstate(all="ignore"):  # an overflow to inf while trying a transform just rules it out
        for name, values in arrays.items():
            if name == "price":
                sections.append(_price_section(values))
            elif name == "volume":
                sections.append(_volume_section(arrays["price"], arrays["quantity"], values))
            elif name == "aggressor" and n and np.array_equal(values, _derived_aggressor(tt)):
                sections.append(_section(DERIVED))
            elif values.dtype == np.float64:
                sections.append(_packed(FLOAT, values.view(np.uint64)))
            else:
                ints = values.astype(np.int64, copy=False)
                sections.append(_int_section(ints, delta=name in _DELTA_COLUMNS))
    span = (int(ms.min()), int(ms.max())) if n else (0, 0)
    header = _HEADER.pack(MAGIC, VERSION, n, *span)
    return header + _compressor(level).compress(header + b"".join(sections))


# -- decoding ---------------------------------------------------------------------------------------


def _damaged(reason: str) -> DataError:
    return DataError("block", f"damaged history block: {reason}")


def block_header(data: bytes | bytearray | memoryview) -> BlockHeader:
    """Rows and time span of a block, from its first 28 bytes: no decompression."""
    if len(data) < _HEADER.size or bytes(data[:4]) != MAGIC:
        raise DataError("block", "not a tickvault history block (bad magic or truncated)")
    _, version, rows, first, last = _HEADER.unpack_from(data)
    if version != VERSION:  # the first layout had the zstd frame right after a 24-byte header
        found = "the unversioned first layout" if bytes(data[24:28]) == _ZSTD_MAGIC else f"version {version}"
        raise DataError("block", f"unsupported history block format: {found} (this reads version {VERSION})")
    return BlockHeader(rows, first, last, version)


def _unpack(payload: np.ndarray, bits: int, n: int) -> np.ndarray:
    """Inverse of `_pack`: n unsigned values, as uint8 for `bits` <= 8, else as wide as `bits`."""
    if len(payload) != -(-n * bits // 8):
        raise _damaged(f"{len(payload)} payload bytes for {n} values of {bits} bits")
    if bits == 1:
        return np.unpackbits(payload, count=n, bitorder="little")
    if bits < 8:
        per, mask = 8 // bits, (1 << bits) - 1
        out = np.empty((len(payload), per), np.uint8)
        for j in range(per):
            np.bitwise_and(payload >> (j * bits), mask, out=out[:, j])
        return out.reshape(-1)[:n]
    planes = payload.reshape(bits // 8, n)
    out = planes[0].astype(_UINT[bits], copy=False)  # 8 bits: a view, nothing to combine
    for j in range(1, bits // 8):
        out |= planes[j].astype(_UINT[bits]) << (8 * j)
    unpacked: np.ndarray = out
    return unpacked


def _decode_int(
    payload: np.ndarray, bits: int, flags: int, a: int, b: int, out: np.ndarray
) -> np.ndarray | None:
    """Decode an INT (or PRICE) section into `out`, each step writing it once. Returns the narrow
    stored values (out = a + them) when there are such."""
    n = len(out)
    if flags & DICT:
        table = payload[: 8 * b].view(out.dtype if out.dtype.itemsize == 8 else np.int64)
        codes = _unpack(payload[8 * b :], bits, n)
        if n and int(codes.max()) >= b:
            raise _damaged(f"dictionary code {int(codes.max())} with {b} entries")
        # mode="clip" (codes are checked above): "raise" makes numpy write to a temporary copy first
        if out.dtype.itemsize == 8:
            table.take(codes, out=out, mode="clip")
        else:
            np.copyto(out, table.take(codes, mode="clip"), casting="unsafe")
        return None
    u = _unpack(payload, bits, n)
    if flags & ZIGZAG:
        u = ((u >> 1) ^ -(u & 1)).view(u.dtype.str.replace("u", "i"))  # on the narrow dtype: cheaper
    elif u.dtype == np.uint64:  # uint64 with int64 would promote to float64: stay in wrapping int64
        u = u.view(np.int64)
    if not flags & DELTA:
        np.add(u, np.int64(a), out=out, casting="unsafe") if a else np.copyto(out, u, casting="unsafe")
        return u
    np.multiply(u, np.int64(b), out=out, casting="unsafe") if b != 1 else np.copyto(out, u, "unsafe")
    out[0] = a
    np.cumsum(out, out=out)
    return None


def _decode_body(body: bytes, n: int) -> dict[str, np.ndarray]:
    raw = np.frombuffer(body, np.uint8)
    pos = _HEADER.size  # after the checked copy of the header
    wide = np.empty((len(_WIDE), n), np.int64)  # one allocation for the nine 8-byte columns
    out = {name: wide[i].view(_KINDS[name]) for i, name in enumerate(_WIDE)}
    out.update((name, np.empty(n, kind)) for name, kind in _KINDS.items() if name not in out)
    product: tuple[int, int, float, np.ndarray] | None = None
    stepped: tuple[int, int, np.ndarray] | None = None  # the last STEP column: seq = trade_id + k
    narrow_type: tuple[np.ndarray | None, int] = (None, 0)
    for name in COLUMNS:
        kind, bits, flags, length, a, b, c = _SECTION.unpack_from(body, pos)
        pos += _SECTION.size
        payload = raw[pos : pos + length]
        pos += length
        if len(payload) != length or bits not in (0, 1, 2, 4, 8, 16, 32, 64):
            raise _damaged(f"bad section for {name}")
        dest = out[name]
        if kind == STEP and name != "price":
            if b == 0:
                dest.fill(a)
            elif stepped is not None and stepped[1] == b:
                np.add(stepped[2], np.int64((a - stepped[0] + 2**63) % 2**64 - 2**63), out=dest)
            elif -(2**63) <= a + n * b < 2**63:
                dest[:] = np.arange(a, a + n * b, b, dtype=np.int64)
            else:  # wraps around, as the encoded differences did
                np.add(np.arange(n, dtype=np.int64) * b, np.int64(a), out=dest)
            stepped = (a, b, dest) if dest.dtype == np.int64 else stepped
        elif kind == INT and name != "price":
            narrow = _decode_int(payload, bits, flags, a, b, dest)
            if name == "trade_type" and narrow is not None and narrow.dtype.itemsize < 8:
                narrow_type = (narrow, a)
        elif kind == PRICE and name == "price" and flags & DICT:
            _decode_int(payload, bits, flags, a, b, dest)
        elif kind == PRICE and name == "price":
            ints = np.empty(n, np.int64)
            _decode_int(payload, bits, flags, a, b, ints)
            np.divide(ints, c, out=dest)  # the same int -> float, then / 10^k, that the encoder checked
        elif kind == FLOAT and dest.dtype == np.float64:
            np.copyto(dest.view(np.uint64), _unpack(payload, bits, n))
        elif kind == PRODUCT and name == "volume" and length == 12 * b:
            product = (flags, b, c, payload)  # needs quantity, which comes later
        elif kind == DERIVED and name == "aggressor":
            stored, offset = narrow_type  # the stored bytes of trade_type if it has them: cheaper
            out[name] = _derived_aggressor(out["trade_type"] if stored is None else stored, offset)
        else:
            raise _damaged(f"section kind {kind} for {name}")
    if pos != len(body):
        raise _damaged(f"{len(body) - pos} bytes after the last column")
    if product is not None:
        flags, b, c, payload = product
        volume = out["volume"]
        np.multiply(out["price"], out["quantity"], out=volume)  # int64 -> float64 on the fly, as encoded
        np.divide(volume, c, out=volume) if flags & DIVIDE else np.multiply(volume, c, out=volume)
        volume[payload[: 4 * b].view(np.uint32)] = payload[4 * b :].view(np.float64)
    return out


def decode_block(data: bytes | bytearray | memoryview) -> Columns:
    """A block back to the exact columns it was made from: fresh, writable arrays; the nine 8-byte
    columns are rows of one allocation (one big array the kernel can back with huge pages)."""
    n = block_header(data).rows
    frame = memoryview(data)[_HEADER.size :]
    try:
        size = zstandard.frame_content_size(frame[:18])
        if not 0 <= size <= 64 * (n + 1024):  # never allocate what a damaged size field claims
            raise _damaged(f"implausible size {size} for {n} rows")
        body = _decompressor().decompress(frame, allow_extra_data=False)  # two blocks glued: an error
        if body[: _HEADER.size] != bytes(data[: _HEADER.size]):
            raise _damaged("header differs from its checksummed copy")
        with np.errstate(all="ignore"):
            return Columns(**_decode_body(body, n))
    except DataError:
        raise
    except (zstandard.ZstdError, struct.error, ValueError, IndexError, TypeError, OverflowError) as exc:
        raise _damaged(str(exc) or type(exc).__name__) from None
