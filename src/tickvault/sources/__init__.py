"""Where events come from: the B3 market simulator, tick files in common layouts (read row by row
for replays, by columns for loads), Nelogica's ProfitDLL through ctypes, and past ticks written
straight into history: files (`bulk_load`) and simulated sessions (`backfill`).

Imports: `domain`, `errors`, and `store` (the history writers, the column types).
"""
