"""Layer normalisation over the last axis: the reference kernels (plain NumPy, arrays in, arrays out).

For each row x (the last axis, D entries):

    mu   = mean(x)
    var  = mean((x - mu)^2)
    rstd = 1 / sqrt(var + eps)
    xhat = (x - mu) * rstd          # zero mean, unit variance
    y    = xhat * weight + bias     # weight, bias: (D,), shared by all rows

The variance is computed in two passes, as the mean of squared deviations. The one-pass formula
E[x^2] - E[x]^2 subtracts two large, nearly equal numbers when |mean| >> std, and in float32 can even
come out negative; the two-pass form cannot.
"""

from __future__ import annotations

import numpy as np


def layer_norm_forward(x: np.ndarray, weight: np.ndarray | None, bias: np.ndarray | None, eps: float):
    """Normalise each row of x (..., D) over its last axis, then scale and shift.

    Returns:
        (y, mean, rstd): y has x's shape; mean and rstd have shape (..., 1) (one per row, kept as a
        size-1 axis so they broadcast against x) and are what the backward needs besides x.
    """
    mean = x.mean(axis=-1, keepdims=True)  # (..., 1)
    centered = x - mean
    var = np.mean(centered * centered, axis=-1, keepdims=True)  # two-pass variance, never negative
    rstd = 1.0 / np.sqrt(var + eps)  # eps is a Python float, so float32 stays float32
    y = centered * rstd
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y, mean, rstd


def layer_norm_backward(
    grad_out: np.ndarray,
    x: np.ndarray,
    weight: np.ndarray | None,
    mean: np.ndarray,
    rstd: np.ndarray,
    has_bias: bool = True,
):
    """Gradients (dx, dweight, dbias) from dL/dy, given the forward's x, mean and rstd.

    Write g = dL/dy and ghat = g * weight = dL/dxhat. Within a row, xhat depends on every x_j through
    mu and rstd; differentiating xhat_i = (x_i - mu) rstd gives

        dxhat_i/dx_j = rstd (delta_ij - 1/D - xhat_i xhat_j / D)

    so that the vector-Jacobian product is

        dx = rstd * (ghat - mean(ghat) - xhat * mean(ghat * xhat))        (means over the row)

    The two subtracted terms remove the parts of ghat that would change the row's mean or its
    variance, which normalisation undoes anyway. weight and bias are shared by all rows, so their
    gradients sum over the rows:  dweight = sum_rows g * xhat,  dbias = sum_rows g.

    Returns None for dweight (dbias) when weight is None (has_bias is False).
    """
    xhat = (x - mean) * rstd
    ghat = grad_out if weight is None else grad_out * weight
    mean_ghat = ghat.mean(axis=-1, keepdims=True)  # (..., 1)
    mean_ghat_xhat = np.mean(ghat * xhat, axis=-1, keepdims=True)  # (..., 1)
    dx = rstd * (ghat - mean_ghat - xhat * mean_ghat_xhat)

    rows = tuple(range(x.ndim - 1))  # every axis but the last
    dweight = None if weight is None else np.sum(grad_out * xhat, axis=rows)  # (D,)
    dbias = np.sum(grad_out, axis=rows) if has_bias else None  # (D,)
    return dx, dweight, dbias


# ------------------------------------------------------------------------------------------------------
# Numba versions (registered beside the references in tinymoe/kernels/__init__.py)
#
# One row at a time, in parallel over rows: the row (D numbers) stays in L1 cache for its three passes
# (mean, variance, output), where the reference streams the whole (..., D) array through memory once per
# NumPy expression. Row sums are accumulated in float64, the only place rounding errors build up.
# The backward splits the rows into one chunk per thread; each chunk sums its own partial dweight and
# dbias (no two threads write the same memory), and the partials are added at the end.
# ------------------------------------------------------------------------------------------------------

import numba  # noqa: E402
from numba import njit, prange  # noqa: E402

from tinymoe.kernels.vecmath import sum_f64  # noqa: E402


@njit(cache=True, fastmath=False, nogil=True)
def _sum_squared_deviations(a, mu):
    """sum_j (a[j] - mu)^2 in float64, in 8 independent lanes (see vecmath.sum_f64 for why)."""
    n = a.shape[0]
    body = n - n % 8
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = 0.0
    for j in range(0, body, 8):
        d0, d1, d2, d3 = a[j] - mu, a[j + 1] - mu, a[j + 2] - mu, a[j + 3] - mu
        d4, d5, d6, d7 = a[j + 4] - mu, a[j + 5] - mu, a[j + 6] - mu, a[j + 7] - mu
        s0 += d0 * d0
        s1 += d1 * d1
        s2 += d2 * d2
        s3 += d3 * d3
        s4 += d4 * d4
        s5 += d5 * d5
        s6 += d6 * d6
        s7 += d7 * d7
    total = ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))
    for j in range(body, n):
        d = a[j] - mu
        total += d * d
    return total


@njit(cache=True, fastmath=False, nogil=True, parallel=True)
def _layer_norm_forward_rows(x, weight, bias, eps, y, mean, rstd):
    """x (M, D) -> y (M, D), mean (M,), rstd (M,)."""
    rows, dim = x.shape
    for r in prange(rows):
        mu = sum_f64(x[r]) / dim
        sq = _sum_squared_deviations(x[r], mu)
        mean[r] = mu  # stored in x's dtype, then read back, so y uses the same rounded values as
        rstd[r] = 1.0 / np.sqrt(sq / dim + eps)  # the reference (which computes everything in x's dtype)
        m = mean[r]
        s = rstd[r]
        for j in range(dim):
            y[r, j] = (x[r, j] - m) * s * weight[j] + bias[j]


@njit(cache=True, fastmath=False, nogil=True, parallel=True)
def _layer_norm_backward_rows(g, x, weight, mean, rstd, dx, dweight_parts, dbias_parts):
    """g, x (M, D) -> dx (M, D); per-chunk partial sums dweight_parts, dbias_parts (chunks, D) float64."""
    rows, dim = x.shape
    chunks = dweight_parts.shape[0]
    for c in prange(chunks):
        dw = dweight_parts[c]
        db = dbias_parts[c]
        for r in range(c * rows // chunks, (c + 1) * rows // chunks):
            m = mean[r]
            s = rstd[r]
            sum_ghat = 0.0
            sum_ghat_xhat = 0.0
            for j in range(dim):
                xhat = (x[r, j] - m) * s
                ghat = g[r, j] * weight[j]
                sum_ghat += ghat
                sum_ghat_xhat += ghat * xhat
                dw[j] += g[r, j] * xhat
                db[j] += g[r, j]
            mean_ghat = x.dtype.type(sum_ghat / dim)
            mean_ghat_xhat = x.dtype.type(sum_ghat_xhat / dim)
            for j in range(dim):
                xhat = (x[r, j] - m) * s
                # dx = rstd * (ghat - mean(ghat) - xhat * mean(ghat * xhat)), as in the reference
                dx[r, j] = s * (g[r, j] * weight[j] - mean_ghat - xhat * mean_ghat_xhat)


def _as_rows(x: np.ndarray) -> np.ndarray:
    """(..., D) -> contiguous (M, D) (a copy only when x is not already C-contiguous)."""
    return np.ascontiguousarray(x).reshape(-1, x.shape[-1])


def layer_norm_forward_numba(x: np.ndarray, weight: np.ndarray | None, bias: np.ndarray | None, eps: float):
    """Same as `layer_norm_forward`: (y, mean, rstd) with mean, rstd of shape (..., 1)."""
    if x.dtype not in (np.float32, np.float64):
        return layer_norm_forward(x, weight, bias, eps)  # float16: the jitted kernels are not compiled for it
    dim = x.shape[-1]
    x2 = _as_rows(x)  # (M, D)
    # A missing weight (bias) is the same as ones (zeros); passing arrays keeps one compiled version.
    w = np.ones(dim, x.dtype) if weight is None else np.ascontiguousarray(weight, dtype=x.dtype)
    b = np.zeros(dim, x.dtype) if bias is None else np.ascontiguousarray(bias, dtype=x.dtype)
    y = np.empty_like(x2)
    mean = np.empty(x2.shape[0], x.dtype)
    rstd = np.empty(x2.shape[0], x.dtype)
    _layer_norm_forward_rows(x2, w, b, float(eps), y, mean, rstd)
    stats_shape = x.shape[:-1] + (1,)
    return y.reshape(x.shape), mean.reshape(stats_shape), rstd.reshape(stats_shape)


def layer_norm_backward_numba(
    grad_out: np.ndarray,
    x: np.ndarray,
    weight: np.ndarray | None,
    mean: np.ndarray,
    rstd: np.ndarray,
    has_bias: bool = True,
):
    """Same as `layer_norm_backward`: (dx, dweight, dbias)."""
    if x.dtype not in (np.float32, np.float64) or grad_out.dtype != x.dtype:
        return layer_norm_backward(grad_out, x, weight, mean, rstd, has_bias)
    dim = x.shape[-1]
    x2 = _as_rows(x)
    g2 = _as_rows(np.broadcast_to(grad_out, x.shape))
    w = np.ones(dim, x.dtype) if weight is None else np.ascontiguousarray(weight, dtype=x.dtype)
    rows = x2.shape[0]
    chunks = max(1, min(numba.get_num_threads(), rows))
    dx = np.empty_like(x2)
    dweight_parts = np.zeros((chunks, dim))  # float64 partial sums, one row per chunk of rows
    dbias_parts = np.zeros((chunks, dim))
    _layer_norm_backward_rows(
        g2, x2, w, np.ascontiguousarray(mean).reshape(-1), np.ascontiguousarray(rstd).reshape(-1),
        dx, dweight_parts, dbias_parts,
    )
    dweight = None if weight is None else dweight_parts.sum(axis=0).astype(x.dtype)
    dbias = dbias_parts.sum(axis=0).astype(x.dtype) if has_bias else None
    return dx.reshape(x.shape), dweight, dbias
