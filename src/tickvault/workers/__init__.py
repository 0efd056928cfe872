"""What runs continuously after the store: the in-process core flow (features, model, signals on a
thread of `run`), and the leased stream workers that share symbols across processes (candles,
features, predictions), each a `LeasedWorker` (leased.py: leases, reading, claiming, the loop).

Imports: `analytics`, `ml`, `store`, `bus`, `domain`, `config`, `errors`. Never `app`.
"""
