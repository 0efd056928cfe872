"""The trading model with no I/O of market data: training set, labels, walk-forward evaluation, the
saved model file, one-row predictions in microseconds, live predictions scored against what
followed (a backtest's), the HTML reports.

Imports: `analytics`, `domain`, `errors`.
"""
