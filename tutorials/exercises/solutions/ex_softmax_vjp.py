"""Solution: softmax's VJP, O(n) per row instead of an (n, n) Jacobian."""

import numpy as np


def softmax_vjp(y: np.ndarray, g: np.ndarray) -> np.ndarray:
    return y * (g - (g * y).sum(axis=-1, keepdims=True))
