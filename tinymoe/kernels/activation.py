"""GELU, tanh approximation: the reference kernels (plain NumPy, arrays in, arrays out).

    gelu(x) = 0.5 x (1 + tanh(u)),    u = c (x + a x^3),    c = sqrt(2/pi),  a = 0.044715

This is the approximation ViTs are trained with (torch.nn.GELU(approximate="tanh"),
jax.nn.gelu(approximate=True)). It differs from the exact x·Phi(x) by less than 5e-4 everywhere.
"""

from __future__ import annotations

import math

import numpy as np

# Python floats, not NumPy float64 scalars: under NumPy's promotion rules a Python float takes the
# array's dtype, so float32 inputs stay float32.
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
CUBIC_COEFF = 0.044715


def gelu_forward(x: np.ndarray) -> np.ndarray:
    """y = 0.5 x (1 + tanh(c (x + a x^3))), elementwise; same shape and dtype as x."""
    u = SQRT_2_OVER_PI * (x + CUBIC_COEFF * x * x * x)
    return 0.5 * x * (1.0 + np.tanh(u))


def gelu_backward(x: np.ndarray, grad_out: np.ndarray) -> np.ndarray:
    """dL/dx from dL/dy, recomputing tanh from x (cheaper to store x than to store tanh(u) too).

    By the product rule on y = 0.5 x (1 + t) with t = tanh(u):

        dy/dx = 0.5 (1 + t)  +  0.5 x (1 - t^2) du/dx,     du/dx = c (1 + 3 a x^2)

    using d tanh(u)/du = 1 - tanh(u)^2.
    """
    x2 = x * x
    t = np.tanh(SQRT_2_OVER_PI * (x + CUBIC_COEFF * x2 * x))
    du_dx = SQRT_2_OVER_PI * (1.0 + 3.0 * CUBIC_COEFF * x2)
    dy_dx = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du_dx
    return grad_out * dy_dx
