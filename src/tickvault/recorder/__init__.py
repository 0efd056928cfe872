"""The recorder, the only writer of live market data to Valkey: bus frames validated into columns
(`frames`; the order book's: `book_frames`), spooled while Valkey is away, written in idempotent
batches by one loop (`loop`) with a frame kind for each (`recorder`; `book_recorder`).

Imports: `bus`, `store`, `domain`, `errors`.
"""
