"""Where events come from: the B3 market simulator (and its order book), tick files in common
layouts (read row by row for replays, by columns for loads), Nelogica's ProfitDLL through ctypes
(its book callbacks translated in pure Python), and past ticks written straight into history: files
(`bulk_load`) and simulated sessions (`backfill`).

Imports: `domain`, `errors`, and `store` (the history writers, the column types).
"""
