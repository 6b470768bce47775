"""Exercise (chapters 02-03): the vector-Jacobian product of softmax.

y = softmax(x) along the last axis. Given y and g = dL/dy (same shape), return dL/dx without building
the (n, n) Jacobian: dL/dx_i = y_i * (g_i - sum_j g_j y_j).

    python tutorials/exercises/check.py softmax_vjp
"""

import numpy as np


def softmax_vjp(y: np.ndarray, g: np.ndarray) -> np.ndarray:
    raise NotImplementedError("write softmax_vjp")
