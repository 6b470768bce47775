"""Solution: the confusion graph (rates, zero diagonal, symmetric)."""

import numpy as np


def confusion_graph(confusion: np.ndarray) -> np.ndarray:
    counts = np.asarray(confusion, dtype=np.float64)
    totals = counts.sum(axis=1, keepdims=True)
    rates = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    np.fill_diagonal(rates, 0.0)
    return (rates + rates.T) / 2
