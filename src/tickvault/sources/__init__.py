"""Where events come from: the B3 market simulator (and its order book), tick files in common
layouts, Nelogica's ProfitDLL through ctypes (its book callbacks translated in pure Python), and
simulated past sessions written straight into history (`backfill`).

Imports: `domain`, `errors`, and `store` (backfill only).
"""
