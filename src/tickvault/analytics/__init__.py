"""Market arithmetic with no I/O: candles from ticks, the feature engine (live and history-aware
features), per-session statistics, the order book (live engine, and past books reconstructed from
columns). Same numbers live and recomputed from history.

Imports: `domain`, `errors`. Used by `store` (candles on read), `ml`, `workers`.
"""
