"""The trading model with no I/O of market data: training set, labels, walk-forward evaluation, the
saved model file, one-row predictions in microseconds, the HTML report.

Imports: `analytics`, `domain`, `errors`.
"""
