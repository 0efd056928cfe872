"""Valkey: reaching it (embedded server, URL, cluster), writing ticks idempotently to the live
streams, sealing them into zstd column blocks, merging past ticks straight into blocks (`bulk`), and
reading any time range back (`api.Store`).
Also the small Valkey-backed mechanisms the workers share: leases and health keys.

Imports: `analytics` (candles computed on read), `domain`, `config`, `errors`. Never `bus`,
`recorder`, `workers` or `app`.
"""
