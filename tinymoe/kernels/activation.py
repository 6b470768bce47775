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


# ------------------------------------------------------------------------------------------------------
# Numba versions (registered beside the references in tinymoe/kernels/__init__.py)
#
# One pass over memory instead of the reference's ~8 (each NumPy expression above makes a temporary),
# in parallel over the elements. They use the identity
#
#     0.5 (1 + tanh(u)) = sigmoid(2u) = 1 / (1 + exp(-2u))
#
# so the only transcendental is exp, which `vecmath.exp` computes in vectorizable float32 arithmetic
# (Numba's own tanh/exp call the C library once per element, and lose to NumPy's SIMD tanh). The form
# also has no cancellation where tanh(u) -> -1. float64 inputs use the exact np.exp.
# ------------------------------------------------------------------------------------------------------

from numba import njit, prange  # noqa: E402

from tinymoe.kernels.vecmath import exp  # noqa: E402


@njit(cache=True, fastmath=False, nogil=True, parallel=True)
def _gelu_forward_flat(x, out):
    c = x.dtype.type(SQRT_2_OVER_PI)
    a = x.dtype.type(CUBIC_COEFF)
    one = x.dtype.type(1.0)
    two = x.dtype.type(2.0)
    for i in prange(x.size):
        v = x[i]
        u = c * (v + a * v * v * v)
        out[i] = v / (one + exp(-two * u))  # v * sigmoid(2u) = 0.5 v (1 + tanh u)


@njit(cache=True, fastmath=False, nogil=True, parallel=True)
def _gelu_backward_flat(x, grad_out, dx):
    c = x.dtype.type(SQRT_2_OVER_PI)
    a = x.dtype.type(CUBIC_COEFF)
    one = x.dtype.type(1.0)
    two = x.dtype.type(2.0)
    three_a = x.dtype.type(3.0 * CUBIC_COEFF)
    for i in prange(x.size):
        v = x[i]
        v2 = v * v
        e = exp(-two * c * (v + a * v2 * v))
        s = one / (one + e)  # s = sigmoid(2u) = 0.5 (1 + t)
        s_minus = one / (one + one / e)  # 1 - s = e / (1 + e), written so that e = inf gives 1, not nan
        # dy/dx = 0.5 (1 + t) + 0.5 x (1 - t^2) du/dx, with 1 - t^2 = 4 s (1 - s)
        du_dx = c * (one + three_a * v2)
        dx[i] = grad_out[i] * (s + two * v * s * s_minus * du_dx)


def _numba_dtype_ok(*arrays) -> bool:
    """The jitted kernels are compiled for float32 and float64; other dtypes (float16) use the reference."""
    return all(arr.dtype in (np.float32, np.float64) for arr in arrays)


def gelu_forward_numba(x: np.ndarray) -> np.ndarray:
    """Same result as `gelu_forward`, one parallel pass (float16 runs the reference)."""
    if not _numba_dtype_ok(x):
        return gelu_forward(x)
    x = np.asarray(x, order="C")  # a strided view is copied once so the loop walks memory in order
    out = np.empty_like(x)
    _gelu_forward_flat(x.reshape(-1), out.reshape(-1))
    return out


def gelu_backward_numba(x: np.ndarray, grad_out: np.ndarray) -> np.ndarray:
    """Same result as `gelu_backward`, one parallel pass (float16 runs the reference)."""
    if not _numba_dtype_ok(x, grad_out) or grad_out.dtype != x.dtype:
        return gelu_backward(x, grad_out)
    x = np.asarray(x, order="C")  # (np.ascontiguousarray would turn a 0-d array into a 1-d one)
    grad_out = np.asarray(np.broadcast_to(grad_out, x.shape), order="C")
    dx = np.empty_like(x)
    _gelu_backward_flat(x.reshape(-1), grad_out.reshape(-1), dx.reshape(-1))
    return dx
