"""The recorder, the only writer of live market data to Valkey: bus frames validated into columns
(`frames`; the order book's: `book_frames`), spooled while Valkey is away, written in idempotent
batches (`recorder`; `book_recorder`).

Imports: `bus`, `store`, `domain`, `errors`.
"""
