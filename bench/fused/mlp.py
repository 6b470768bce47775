"""The transformer MLP, fc2(gelu(fc1(x))), as one fused op (`mlp`) with its kernels: reference (plain
NumPy) and Numba versions, forward and backward. Not used by the model (its MLPs are linear -> gelu ->
linear, already fast): kept with its measurement (`bench/throughput.py --variant fused`,
`bench/kernels.py`).

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
from tinymoe.kernels.backend import active_backend
from tinymoe.ops.validate import float_operands
from tinymoe.tensor import Tensor


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


# ------------------------------------------------------------------------------------------------------
# The op (a Tensor in, a Tensor out; the kernels of the active backend, as tinymoe's own ops)
# ------------------------------------------------------------------------------------------------------
def _active(reference, numba):
    return numba if active_backend() == "numba" else reference


def mlp(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias) -> Tensor:
    """gelu(x W1 + b1) W2 + b2 for x (..., D), W1 (D, H), b1 (H,), W2 (H, D_out), b2 (D_out,) -> (..., D_out)."""
    names = ("x", "fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias")
    x, w1, b1, w2, b2 = float_operands("mlp", names, (x, fc1_weight, fc1_bias, fc2_weight, fc2_bias))
    if w1.ndim != 2 or w2.ndim != 2 or w2.shape[0] != w1.shape[1] or b1.shape != (w1.shape[1],) or b2.shape != (w2.shape[1],):
        raise ValueError(
            f"mlp: weights do not fit together: fc1_weight {w1.shape}, fc1_bias {b1.shape}, fc2_weight {w2.shape}, "
            f"fc2_bias {b2.shape}; expected (D, H), (H,), (H, D_out), (D_out,)"
        )
    if x.ndim == 0 or x.shape[-1] != w1.shape[0]:
        raise ValueError(f"mlp: x has shape {x.shape} but fc1_weight {w1.shape} needs a last axis of {w1.shape[0]}")
    out, h = _active(mlp_forward, mlp_forward_numba)(x.data, w1.data, b1.data, w2.data, b2.data)

    def backward(g):
        return _active(mlp_backward, mlp_backward_numba)(g, x.data, w1.data, w2.data, h)

    return Tensor.from_op(out, (x, w1, b1, w2, b2), backward, "mlp")
