"""The recorder, the only writer of live market data to Valkey: bus frames validated into columns
(`frames`), spooled while Valkey is away, written in idempotent batches.

Imports: `bus`, `store`, `domain`, `errors`.
"""
