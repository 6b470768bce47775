"""The transformer MLP, fc2(gelu(fc1(x))), as one fused computation: reference kernels (plain NumPy) and
Numba versions, forward and backward.

    h = x W1 + b1          (M, H)   M = all leading axes of x flattened (tokens), H = hidden width
    a = gelu(h)            (M, H)
    y = a W2 + b2          (M, D)

Fusing the three steps changes two things against linear → gelu → linear as separate ops:

- memory: only x and h are kept for the backward. The GELU output a (as large as h: 4·D per token,
  the largest activation of a ViT block) is recomputed from h in the backward, one elementwise pass.
  At the 6×64 model's size that frees 8.5 MB per block between forward and backward.
- passes: the bias add and the GELU are one pass over h (the Numba version), and in the backward
  GELU' is applied to da in place.

Backward (g = dL/dy):

    dW2 = aᵀ g,   db2 = Σ_rows g,   da = g W2ᵀ
    dh  = da · gelu'(h)
    dW1 = xᵀ dh,  db1 = Σ_rows dh,  dx = dh W1ᵀ

The matrix products are BLAS calls through NumPy in both versions.
"""

from __future__ import annotations

import numpy as np

from tinymoe.kernels.activation import gelu_backward, gelu_forward


def mlp_forward(x, w1, b1, w2, b2):
    """y (..., D_out) and the saved h (M, H); see the module docstring."""
    x2 = x.reshape(-1, w1.shape[0])  # (M, D)
    h = x2 @ w1 + b1  # (M, H)
    y = gelu_forward(h) @ w2 + b2  # (M, D_out)
    return y.reshape(x.shape[:-1] + (w2.shape[1],)), h


def mlp_backward(grad_out, x, w1, w2, h):
    """(dx, dw1, db1, dw2, db2) from dL/dy, recomputing a = gelu(h)."""
    g2 = grad_out.reshape(-1, w2.shape[1])  # (M, D_out)
    x2 = x.reshape(-1, w1.shape[0])  # (M, D)
    a = gelu_forward(h)
    dw2 = a.T @ g2
    db2 = g2.sum(axis=0)
    dh = gelu_backward(h, g2 @ w2.T)  # (M, H)
    dw1 = x2.T @ dh
    db1 = dh.sum(axis=0)
    dx = (dh @ w1.T).reshape(x.shape)
    return dx, dw1, db1, dw2, db2


# ------------------------------------------------------------------------------------------------------
# Numba versions: BLAS for the products, and the jitted passes of tinymoe.kernels.expert and .activation
# for bias + GELU (in place on the product, writing a), GELU (the recomputation) and GELU' (in place on da).
# ------------------------------------------------------------------------------------------------------
from tinymoe.kernels.activation import _gelu_forward_flat  # noqa: E402
from tinymoe.kernels.expert import _bias_gelu_, _gelu_backward_  # noqa: E402


def _jit_ok(*arrays) -> bool:
    return all(a.dtype in (np.float32, np.float64) for a in arrays) and len({a.dtype for a in arrays}) == 1


def mlp_forward_numba(x, w1, b1, w2, b2):
    """Same as `mlp_forward`."""
    if not _jit_ok(x, w1, b1, w2, b2):
        return mlp_forward(x, w1, b1, w2, b2)
    x2 = x.reshape(-1, w1.shape[0])
    h = np.empty((x2.shape[0], w1.shape[1]), dtype=x.dtype)
    np.matmul(x2, w1, out=h)
    a = np.empty_like(h)
    _bias_gelu_(h, np.ascontiguousarray(b1), a)  # h += b1 (kept), a = gelu(h): one pass
    y = a @ w2
    del a  # not kept: the backward recomputes it from h
    y += b2
    return y.reshape(x.shape[:-1] + (w2.shape[1],)), h


def mlp_backward_numba(grad_out, x, w1, w2, h):
    """Same as `mlp_backward`."""
    if not _jit_ok(grad_out, x, w1, w2, h):
        return mlp_backward(grad_out, x, w1, w2, h)
    g2 = grad_out.reshape(-1, w2.shape[1])
    x2 = x.reshape(-1, w1.shape[0])
    a = np.empty_like(h)  # h is the C-contiguous array the forward made
    _gelu_forward_flat(h.reshape(-1), a.reshape(-1))  # a = gelu(h), recomputed
    dw2 = a.T @ g2
    del a
    db2 = g2.sum(axis=0)
    dh = g2 @ w2.T  # da, turned into dh in place
    _gelu_backward_(h, dh)
    dw1 = x2.T @ dh
    db1 = dh.sum(axis=0)
    dx = (dh @ w1.T).reshape(x.shape)
    return dx, dw1, db1, dw2, db2
