"""packed_attention(qkv, heads): multi-head self-attention on the packed output of one qkv linear map.

The usual way to write it with separate ops,

    qkv = reshape(qkv, (B, N, 3, H, Dh)); qkv = transpose(qkv, (2, 0, 3, 1, 4))   # (3, B, H, N, Dh)
    q, k, v = qkv[0], qkv[1], qkv[2]                                               # getitem x 3
    out = attention(q, k, v); out = reshape(transpose(out, (0, 2, 1, 3)), (B, N, D))

costs more in the backward than the attention itself: each getitem's backward builds a zero array of
the full (3, B, H, N, Dh) size holding its one slice, the engine adds the three, and the transposes copy.
This op takes the packed (B, N, 3D) array and returns (B, N, D) directly: q, k and v are strided views of
the input (BLAS reads them in place), and the backward writes dq, dk, dv straight into one (B, N, 3D)
gradient. The math is `tinymoe.kernels.attention` (same kernels, same backend switch).

Layout: the 3D features of a token are (q | k | v), each D = H · Dh split into H heads of Dh, head
after head (timm's layout): qkv[b, n, s·D + h·Dh + i] is component s ∈ {q, k, v}, head h, feature i.
"""

from __future__ import annotations

import math

import numpy as np

from tinymoe import kernels
from tinymoe.ops.validate import float_operands
from tinymoe.tensor import Tensor


def packed_attention(qkv, heads: int, scale: float | None = None) -> Tensor:
    """softmax(q kᵀ · scale) v per head, for q, k, v packed in qkv (B, N, 3D); returns (B, N, D).

    scale defaults to 1 / sqrt(Dh), Dh = D / heads.
    """
    (qkv,) = float_operands("packed_attention", ("qkv",), (qkv,))
    if qkv.ndim != 3 or qkv.shape[-1] % 3:
        raise ValueError(f"packed_attention: qkv must be (batch, tokens, 3 * dim), got shape {qkv.shape}")
    batch, tokens, three_dim = qkv.shape
    dim = three_dim // 3
    if not isinstance(heads, (int, np.integer)) or heads < 1 or dim % heads:
        raise ValueError(f"packed_attention: heads={heads!r} must be a positive divisor of dim={dim} (qkv {qkv.shape})")
    head_dim = dim // heads
    scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)

    def split(a):  # (B, N, 3D) -> three (B, H, N, Dh) strided views, no copy
        a5 = a.reshape(batch, tokens, 3, heads, head_dim)  # (B, N, 3, H, Dh)
        return [a5[:, :, s].transpose(0, 2, 1, 3) for s in range(3)]

    q, k, v = split(qkv.data)
    out, probs = kernels.attention_forward(q, k, v, scale)  # (B, H, N, Dh)
    merged = np.ascontiguousarray(out.transpose(0, 2, 1, 3)).reshape(batch, tokens, dim)  # heads side by side

    def backward(g):
        g_heads = g.reshape(batch, tokens, heads, head_dim).transpose(0, 2, 1, 3)  # (B, H, N, Dh) view
        grads = kernels.attention_backward(g_heads, q, k, v, probs, scale)
        dqkv = np.empty((batch, tokens, three_dim), dtype=qkv.dtype)
        for view, grad in zip(split(dqkv), grads):
            view[...] = grad  # written straight into the packed gradient
        return (dqkv,)

    return Tensor.from_op(merged, (qkv,), backward, "packed_attention")
