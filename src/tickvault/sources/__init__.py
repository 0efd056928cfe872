"""Where events come from: the B3 market simulator, tick files in common layouts, Nelogica's
ProfitDLL through ctypes, and simulated past sessions written straight into history (`backfill`).

Imports: `domain`, `errors`, and `store` (backfill only).
"""
