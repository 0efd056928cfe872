"""The vocabulary every other package speaks: market events (ticks, order-book updates by level and
by order with their columnar form, candles, features, predictions, signals) and their one JSON
codec, the tick schema (every tick field's types, stream order, column and DataFrame dtypes,
declared once), Valkey key and ZeroMQ topic names, time arguments, the instruments (tick size,
multiplier, session and calendar per B3 symbol root).

Imports: `tickvault.errors` only. Everything else may import it.
"""
