"""The affine map of a dense layer, y = x W + b: the reference kernels (plain NumPy).

x is (..., in) with any number of leading axes (batch, tokens), W is (in, out), b is (out,). All the
leading axes are flattened into one, M = prod(leading), so the forward is a single (M, in) @ (in, out)
matrix product: one large BLAS call instead of a batched loop of small ones.
"""

from __future__ import annotations

import numpy as np


def linear_forward(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """y = x W + b, shape (..., out)."""
    in_features, out_features = weight.shape
    x2 = x.reshape(-1, in_features)  # (M, in)
    y = x2 @ weight  # (M, out)
    if bias is not None:
        y += bias  # y is a fresh array, so adding in place mutates nothing the caller owns
    return y.reshape(x.shape[:-1] + (out_features,))  # (..., out)


def linear_backward(
    grad_out: np.ndarray,
    x: np.ndarray,
    weight: np.ndarray,
    has_bias: bool = True,
    need_dx: bool = True,
    need_dweight: bool = True,
):
    """(dx, dweight, dbias) from dL/dy.

    With y_mo = sum_i x_mi W_io + b_o over the flattened rows m:

        dx = dy W^T              (..., in)
        dW = x^T dy              (in, out): every row m contributes, so the rows are summed
        db = sum_m dy_m          (out,)

    Gradients that are not needed (need_dx=False for the input images, no bias) are returned as
    None and not computed: each skipped one saves a matrix product.
    """
    in_features, out_features = weight.shape
    g2 = grad_out.reshape(-1, out_features)  # (M, out)
    dx = (g2 @ weight.T).reshape(x.shape) if need_dx else None  # (..., in)
    dweight = x.reshape(-1, in_features).T @ g2 if need_dweight else None  # (in, out)
    dbias = g2.sum(axis=0) if has_bias else None  # (out,)
    return dx, dweight, dbias
