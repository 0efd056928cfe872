"""What one Valkey can take: XADD cost per tick entry on the server, no Python in the loop.

50,000 XADDs sent as raw RESP inside MULTI/EXEC with replies off, against the embedded Valkey with
the append-only file on (fsync every second) and off. Compares the 13-field tick entry of DESIGN.md
with the same tick as a single JSON field: the first bounds the recorder's throughput per instance.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import valkey

from tickvault.store.raw_resp import EXEC_REPLY_ON, REPLY_OFF_MULTI, RawConnection, pack
from tickvault.store.server import EmbeddedValkey

FIELDS_13 = (
    "symbol", "WDOFUT", "timestamp", "2025-11-24T13:00:00.000-03:00", "timestamp_ms", "1764000000000",
    "trade_id", "1", "price", "5400.5", "volume", "54005.0", "quantity", "1", "buyer", "3", "seller", "8",
    "trade_type", "2", "aggressor", "buy", "is_edit", "false", "seq", "1",
)  # fmt: skip
ONE_JSON = (
    "tick",
    '{"symbol":"WDOFUT","timestamp":"2025-11-24T13:00:00.000-03:00","timestamp_ms":1764000000000,"trade_id":1,'
    '"price":5400.5,"volume":54005.0,"quantity":1,"buyer":3,"seller":8,"trade_type":2,"aggressor":"buy",'
    '"is_edit":false,"seq":1}',
)
BATCHES, BATCH = 10, 5000


def _cost(conn: RawConnection, key: str, fields: tuple[str, ...]) -> float:
    total = 0.0
    for b in range(BATCHES):
        body = b"".join(pack(("XADD", key, f"{1000 + b}-{k}", *fields)) for k in range(BATCH))
        payload = REPLY_OFF_MULTI + body + EXEC_REPLY_ON
        start = time.perf_counter()
        conn.send(payload)
        conn.read()
        total += time.perf_counter() - start
    return total / (BATCHES * BATCH) * 1e6


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedValkey(Path(tmp) / "valkey")
        info = server.ensure_running()
        client = valkey.Valkey(host=info.host, port=info.port)
        conn = RawConnection(client, "XADD")
        try:
            for aof in ("yes", "no"):
                client.config_set("appendonly", aof)
                wide = _cost(conn, f"wide:{aof}", FIELDS_13)
                narrow = _cost(conn, f"narrow:{aof}", ONE_JSON)
                head = f"  appendonly={aof}: 13-field entry {wide:.2f} µs/tick (ceiling {1e6 / wide:,.0f}/s)"
                tail = f"one JSON field {narrow:.2f} µs/tick (ceiling {1e6 / narrow:,.0f}/s)"
                print(f"{head}, {tail}, ratio {wide / narrow:.1f}x")
        finally:
            conn.release()
            client.close()
            server.stop()


if __name__ == "__main__":
    main()
