"""History blocks: many ticks of one symbol packed column by column and compressed with zstd.

Layout of a block (little-endian):

    b"TVB1"  u32 rows  i64 min timestamp_ms  i64 max timestamp_ms  zstd frame

The zstd frame holds one section per column, in `COLUMNS` order, each
`u8 transform, u8 dtype, i64 base, f64 extra, u32 length, bytes`:

- timestamp_ms, trade_id, seq: deltas from the previous row (the first row's value in `base`),
  stored in the narrowest signed integer type that holds them; late ticks make negative deltas.
- price: when every price is on a decimal grid (k decimals, k <= 8), the integers price * 10^k,
  delta-coded as above (`extra` = 10^k); otherwise the raw float64 bytes, byte-shuffled.
- volume: when volume == price * quantity * m for one multiplier m for every row (B3 contracts),
  only m (`extra`); otherwise the raw float64 bytes, byte-shuffled.
- quantity, buyer, seller, trade_type: the narrowest integer type; aggressor: int8 codes
  (none, buy, sell); is_edit: a bitmap.

Floats come back bit for bit; a block decodes straight into numpy arrays (no Python per row).
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
import zstandard

from tickvault.errors import DataError

MAGIC = b"TVB1"
AGGRESSOR_CODES = ("none", "buy", "sell")
_HEADER = struct.Struct("<4sIqq")
_SECTION = struct.Struct("<BBqdI")
_INT_TYPES = (np.int8, np.int16, np.int32, np.int64)
_DTYPES = {0: np.int8, 1: np.int16, 2: np.int32, 3: np.int64, 4: np.uint8, 5: np.float64}
_CODE = {np.dtype(v): k for k, v in _DTYPES.items()}
RAW, DELTA, GRID, PRODUCT, BITS = 0, 1, 2, 3, 4
_local = threading.local()


@dataclass(frozen=True)
class Columns:
    """One symbol's ticks as columns of equal length, in stored order."""

    timestamp_ms: np.ndarray
    trade_id: np.ndarray
    price: np.ndarray
    volume: np.ndarray
    quantity: np.ndarray
    buyer: np.ndarray
    seller: np.ndarray
    trade_type: np.ndarray
    aggressor: np.ndarray  # int8 codes into AGGRESSOR_CODES
    is_edit: np.ndarray
    seq: np.ndarray

    def __len__(self) -> int:
        return len(self.timestamp_ms)

    @classmethod
    def empty(cls) -> Columns:
        return cls(**{f.name: np.empty(0, _KINDS[f.name]) for f in fields(cls)})

    @classmethod
    def concat(cls, parts: Sequence[Columns]) -> Columns:
        if not parts:
            return cls.empty()
        return cls(**{f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(cls)})

    def take(self, index: np.ndarray) -> Columns:
        return Columns(**{f.name: getattr(self, f.name)[index] for f in fields(self)})


_KINDS = {
    "timestamp_ms": np.int64, "trade_id": np.int64, "price": np.float64, "volume": np.float64,
    "quantity": np.int64, "buyer": np.int64, "seller": np.int64, "trade_type": np.int64,
    "aggressor": np.int8, "is_edit": np.bool_, "seq": np.int64,
}  # fmt: skip
COLUMNS = tuple(_KINDS)


def _codecs() -> tuple[zstandard.ZstdCompressor, zstandard.ZstdDecompressor]:
    codecs = getattr(_local, "codecs", None)
    if codecs is None:  # building them per call costs more than compressing a small block
        codecs = _local.codecs = (zstandard.ZstdCompressor(level=3), zstandard.ZstdDecompressor())
    return codecs


def _narrow(values: np.ndarray) -> np.ndarray:
    if len(values) == 0:
        return values.astype(np.int8)
    lo, hi = int(values.min()), int(values.max())
    for kind in _INT_TYPES:
        info = np.iinfo(kind)
        if info.min <= lo and hi <= info.max:
            return values.astype(kind)
    return values.astype(np.int64)


def _section(transform: int, data: np.ndarray, base: int = 0, extra: float = 0.0) -> bytes:
    raw = data.tobytes()
    return _SECTION.pack(transform, _CODE[data.dtype], base, extra, len(raw)) + raw


def _delta(values: np.ndarray) -> bytes:
    base = int(values[0]) if len(values) else 0
    return _section(DELTA, _narrow(np.diff(values.astype(np.int64), prepend=base)), base)


def _shuffled(values: np.ndarray) -> bytes:
    # byte-shuffle: the high bytes of similar floats line up and compress well
    as_bytes = values.astype(np.float64).view(np.uint8).reshape(-1, 8).T.copy()
    return _section(RAW, as_bytes.reshape(-1))


def _price(price: np.ndarray) -> tuple[bytes, np.ndarray | None]:
    for decimals in range(9):
        scale = 10.0**decimals
        ints = np.round(price * scale)
        if np.all(np.abs(ints) < 2**52) and np.array_equal(ints / scale, price):
            as_int = ints.astype(np.int64)
            base = int(as_int[0]) if len(as_int) else 0
            return _section(GRID, _narrow(np.diff(as_int, prepend=base)), base, scale), as_int
    return _shuffled(price), None


def _volume(cols: Columns) -> bytes:
    price, quantity, volume = cols.price, cols.quantity.astype(np.float64), cols.volume
    usable = np.flatnonzero((price > 0) & (quantity > 0))
    candidates = [1.0, 10.0, 0.2, 50.0, 0.25]
    if len(usable):
        candidates.insert(0, float(volume[usable[0]] / (price[usable[0]] * quantity[usable[0]])))
    for m in candidates:
        if np.array_equal(price * quantity * m, volume):
            return _section(PRODUCT, np.empty(0, np.uint8), 0, m)
    return _shuffled(volume)


def encode_block(cols: Columns) -> bytes:
    """Pack one symbol's columns (any order of timestamps) into a compressed block."""
    n = len(cols)
    ms = cols.timestamp_ms.astype(np.int64)
    lo, hi = (int(ms.min()), int(ms.max())) if n else (0, 0)
    price_section, _ = _price(cols.price.astype(np.float64))
    sections = [
        _delta(ms),
        _delta(cols.trade_id),
        price_section,
        _volume(cols),
        _section(RAW, _narrow(cols.quantity.astype(np.int64))),
        _section(RAW, _narrow(cols.buyer.astype(np.int64))),
        _section(RAW, _narrow(cols.seller.astype(np.int64))),
        _section(RAW, _narrow(cols.trade_type.astype(np.int64))),
        _section(RAW, cols.aggressor.astype(np.int8)),
        _section(BITS, np.packbits(cols.is_edit.astype(np.bool_))),
        _delta(cols.seq),
    ]
    compressor, _ = _codecs()
    return _HEADER.pack(MAGIC, n, lo, hi) + compressor.compress(b"".join(sections))


@dataclass(frozen=True)
class BlockHeader:
    rows: int
    first_ms: int
    last_ms: int


def block_header(data: bytes) -> BlockHeader:
    if len(data) < _HEADER.size or data[:4] != MAGIC:
        raise DataError("block", "not a tickvault history block (bad magic or truncated)")
    _, rows, first, last = _HEADER.unpack_from(data)
    return BlockHeader(rows, first, last)


def decode_block(data: bytes) -> Columns:
    header = block_header(data)
    n = header.rows
    try:
        _, decompressor = _codecs()
        body = decompressor.decompress(data[_HEADER.size :])
    except zstandard.ZstdError as exc:
        raise DataError("block", f"damaged history block: {exc}") from None
    out: dict[str, np.ndarray] = {}
    pos = 0
    multiplier: float | None = None
    try:
        for name in COLUMNS:
            transform, code, base, extra, length = _SECTION.unpack_from(body, pos)
            pos += _SECTION.size
            dtype = np.dtype(_DTYPES[code])
            raw = np.frombuffer(body, dtype=dtype, count=length // dtype.itemsize, offset=pos)
            pos += length
            if transform == DELTA:
                out[name] = np.cumsum(raw, dtype=np.int64) + base
            elif transform == GRID:
                out[name] = (np.cumsum(raw, dtype=np.int64) + base) / extra
            elif transform == PRODUCT:
                multiplier = extra  # volume = price * quantity * multiplier, computed below
            elif transform == BITS:
                out[name] = np.unpackbits(raw, count=n).astype(np.bool_)
            elif name in ("price", "volume"):  # byte-shuffled float64
                out[name] = raw.reshape(8, -1).T.copy().view(np.float64).reshape(-1)
            else:
                out[name] = raw
    except (struct.error, ValueError, KeyError) as exc:
        raise DataError("block", f"damaged history block: {exc}") from None
    if multiplier is not None:
        out["volume"] = out["price"] * out["quantity"].astype(np.float64) * multiplier
    cols = Columns(**{name: out[name].astype(_KINDS[name], copy=False) for name in COLUMNS})
    if len(cols.timestamp_ms) != n:
        raise DataError("block", f"damaged history block: {len(cols.timestamp_ms)} rows, header says {n}")
    return cols
