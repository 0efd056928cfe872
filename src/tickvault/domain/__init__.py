"""The vocabulary every other package speaks: market events (ticks, book updates, candles, features,
predictions, signals) and their one JSON codec, Valkey key and ZeroMQ topic names, time arguments.

Imports: `tickvault.errors` only. Everything else may import it.
"""
