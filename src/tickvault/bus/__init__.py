"""The ZeroMQ bus: ingest (where a source hands over its events), the publisher with its replay ring
and heartbeats, the gap-filling subscriber, CURVE keys, and the spool that holds what cannot be sent.

Imports: `domain`, `errors`; a store is only passed in (a recovery callable), never imported.
"""
