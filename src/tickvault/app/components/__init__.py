"""The parts `tickvault run` is assembled from, one module each: Valkey, the bus (ingest's sequence
numbers and the publisher), the recorder, the core flow (features, model, signals), the source, the
leased workers (candles, features, predictor), health and metrics. `app/system.py` picks them per
`--only` from its registry, starts them in order and stops them in reverse.

Imports: anything below `app`; never `app.system` or the CLI.
"""
