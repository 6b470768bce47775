"""Solution: Δ and its paired 95% half-width, from per-image correctness."""

import numpy as np


def paired_delta(dense_right: np.ndarray, moe_right: np.ndarray) -> tuple[float, float]:
    d = moe_right.astype(np.float64) - dense_right.astype(np.float64)  # (N,) in {-1, 0, +1}
    standard_error = d.std(ddof=1) / np.sqrt(d.size)
    return float(100 * d.mean()), float(100 * 1.96 * standard_error)
