"""History block codec: bytes per tick and decode time of one hour (360,000 ticks) of one symbol.

The columnar zstd block beside the original guide's per-entry text (every field stored as str(v)),
pickle and Parquet of the same ticks; decoding a block to numpy columns and to a pandas DataFrame,
and encoding. Pure CPU, no Valkey (bench_timetravel measures blocks inside Valkey).
"""

from __future__ import annotations

import io
import pickle
import statistics
import time
from collections.abc import Callable

import numpy as np
import pandas as pd
import zstandard

from tickvault.store.block_codec import AGGRESSOR_CODES, COLUMNS, Columns, decode_block, encode_block

N = 360_000
START_MS = 1_764_000_000_000  # 2025-11-24 13:00 in B3 time (16:00 UTC)
BROKERS = np.array([3, 8, 13, 15, 16, 21, 27, 39, 40, 45, 58, 72, 77, 85, 88, 90, 93, 107, 114, 120,
                    127, 129, 147, 172, 174, 190, 226, 238, 262, 308, 386, 1099, 1130, 1618, 1855,
                    1982, 2197, 2379, 2640, 4090])  # fmt: skip
GUIDE_FIELDS = ("symbol", "timestamp", "timestamp_ms", "trade_id", "price", "volume", "quantity", "buyer",
                "seller", "trade_type", "aggressor", "is_edit", "seq")  # fmt: skip
ENTRY_OVERHEAD = 20  # bytes per stream entry besides its fields and values (id, lengths), roughly


def realistic(n: int, seed: int = 1) -> Columns:
    """One WDO-like hour (same model as tests/test_blocks.py): aggressive orders at ~100 trades/s, each
    filling 1-12 resting orders in one millisecond; 0.5 grid around 5400 moving 1-3 ticks; mostly 1-5
    contracts, rare 100s; ~40 brokers; volume = price * quantity * 10; trade ids and seq +1."""
    rng = np.random.default_rng(seed)
    sizes = np.minimum(rng.geometric(0.45, n), 12)
    orders = int(np.searchsorted(np.cumsum(sizes), n)) + 1
    order = np.repeat(np.arange(orders), sizes[:orders])[:n]
    first = np.r_[True, order[1:] != order[:-1]]
    order_ms = START_MS + np.cumsum(rng.exponential(10.0 * n / orders, orders).astype(np.int64))
    side = rng.integers(1, 3, orders).astype(np.int8)[order]
    move = rng.choice([-3, -2, -1, 0, 1, 2, 3], n, p=[0.03, 0.07, 0.2, 0.4, 0.2, 0.07, 0.03])
    walk = np.cumsum(np.where(first, move, np.where(side == 1, 1, -1) * rng.binomial(1, 0.3, n)))
    price = 5400.0 + 0.5 * (np.abs((walk + 120) % 240 - 120) - 60)
    quantity = rng.choice([1, 1, 1, 1, 2, 2, 3, 4, 5, 5, 10, 15, 20, 25, 50], n)
    quantity[rng.random(n) < 0.004] = 100
    weights = 1.0 / np.arange(1, len(BROKERS) + 1) ** 1.1
    aggressing = rng.choice(BROKERS, orders, p=weights / weights.sum())[order]
    resting = rng.choice(BROKERS, n, p=weights / weights.sum())
    return Columns(
        timestamp_ms=order_ms[order],
        trade_id=np.arange(150_001, 150_001 + n),
        price=price,
        volume=price * quantity.astype(np.float64) * 10.0,
        quantity=quantity.astype(np.int64),
        buyer=np.where(side == 1, aggressing, resting),
        seller=np.where(side == 1, resting, aggressing),
        trade_type=side.astype(np.int64) + 1,
        aggressor=side,
        is_edit=np.zeros(n, np.bool_),
        seq=np.arange(7, 7 + n),
    )


def to_frame(cols: Columns) -> pd.DataFrame:
    index = pd.to_datetime(cols.timestamp_ms, unit="ms", utc=True).tz_convert("America/Sao_Paulo")
    return pd.DataFrame({name: getattr(cols, name) for name in COLUMNS}, index=index, copy=False)


def guide_text_bytes(cols: Columns, frame: pd.DataFrame) -> int:
    """The guide's per-entry form: each of the 13 field names and str(value), ~20 B per entry more."""
    values: dict[str, list[object]] = {name: getattr(cols, name).tolist() for name in COLUMNS}
    values["aggressor"] = [AGGRESSOR_CODES[a] for a in values["aggressor"]]
    values["is_edit"] = [bool(e) for e in values["is_edit"]]
    values["timestamp"] = list(frame.index.to_pydatetime())
    values["symbol"] = ["WDOFUT"] * len(cols)
    total = (sum(map(len, GUIDE_FIELDS)) + ENTRY_OVERHEAD) * len(cols)
    return total + sum(len(str(v)) for name in GUIDE_FIELDS for v in values[name])


def median_ms(fn: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    cols = realistic(N)
    block = encode_block(cols)
    back = decode_block(block)
    assert all(getattr(back, n).tobytes() == getattr(cols, n).tobytes() for n in COLUMNS), "not exact"
    frame = to_frame(cols)
    sizes = {
        "guide per-entry text (str(v) fields)": guide_text_bytes(cols, frame),
        "pickle of the DataFrame": len(pickle.dumps(frame, protocol=5)),
        "Parquet, snappy (pandas default)": len(frame.to_parquet(compression="snappy")),
        "Parquet, zstd": len(frame.to_parquet(compression="zstd")),
    }
    per_tick = len(block) / N
    print(f"  {N:,} WDO-like ticks (one busy hour); block {len(block):,} B = {per_tick:.2f} B/tick")
    for label, size in sizes.items():
        print(f"  {label:38s} {size / N:7.2f} B/tick  ({size / len(block):5.1f}x the block)")

    frame_zstd = frame.to_parquet(compression="zstd")
    columns_ms = median_ms(lambda: decode_block(block), 20)
    frame_ms = median_ms(lambda: to_frame(decode_block(block)), 20)
    zstd_ms = median_ms(lambda: zstandard.ZstdDecompressor().decompress(block[28:]), 20)
    parquet_ms = median_ms(lambda: pd.read_parquet(io.BytesIO(frame_zstd)), 10)
    pickle_bytes = pickle.dumps(frame, protocol=5)
    pickle_ms = median_ms(lambda: pickle.loads(pickle_bytes), 10)
    floor_ms = median_ms(lambda: [np.full(N, 1, getattr(cols, name).dtype) for name in COLUMNS], 20)
    print(
        f"  decode block -> numpy Columns: {columns_ms:.1f} ms (median of 20), of which zstd {zstd_ms:.1f} ms"
    )
    print(f"    for scale: just filling 11 new arrays of {N:,} rows takes {floor_ms:.1f} ms on this machine")
    print(f"  decode block -> pandas DataFrame (B3-time index): {frame_ms:.1f} ms (median of 20)")
    print(f"  Parquet zstd -> DataFrame: {parquet_ms:.1f} ms ({parquet_ms / frame_ms:.1f}x the block's time)")
    print(f"  pickle -> DataFrame: {pickle_ms:.1f} ms ({pickle_ms / frame_ms:.1f}x the block's time)")

    encode_ms = median_ms(lambda: encode_block(cols), 5)
    print(f"  encode: {N / encode_ms / 1000:.2f} M rows/s ({encode_ms:.0f} ms for the hour, median of 5)")
    levels = []
    for level in (-1, 1, 3, 9):
        data = encode_block(cols, level=level)
        levels.append(
            f"{level}: {len(data) / N:.2f} B/tick {median_ms(lambda d=data: decode_block(d), 10):.1f} ms"
        )
    print("  zstd level -> size, decode to Columns:  " + "  |  ".join(levels))


if __name__ == "__main__":
    main()
