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
