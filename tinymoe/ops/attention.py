"""attention(q, k, v): scaled dot-product attention, softmax(q k^T / sqrt(D)) v, as one fused op.

Fused, the graph holds one node instead of five (matmul, scale, softmax, matmul, transposes) and the
backward needs only the attention weights, saved by the forward. The math is in
`tinymoe.kernels.attention`.
"""

from __future__ import annotations

import math

from tinymoe import kernels
from tinymoe.ops.validate import float_operands
from tinymoe.tensor import Tensor


def attention(q, k, v, scale: float | None = None) -> Tensor:
    """softmax(q k^T * scale) v, with softmax over the keys and scale = 1/sqrt(D) by default.

    Shapes: q (..., Nq, D), k (..., Nk, D), v (..., Nk, Dv) -> (..., Nq, Dv). In a ViT these are
    (B, H, N, Dh): batch, heads, tokens, head width. The leading axes of q, k and v must be equal.
    """
    q, k, v = float_operands("attention", ("q", "k", "v"), (q, k, v))
    shapes = f"q {q.shape}, k {k.shape}, v {v.shape}"
    if q.ndim < 2 or k.ndim != q.ndim or v.ndim != q.ndim:
        raise ValueError(
            "attention: q, k and v must have the same number of axes, at least 2 (..., tokens, width), "
            f"got {shapes}"
        )
    if not (q.shape[:-2] == k.shape[:-2] == v.shape[:-2]):
        raise ValueError(f"attention: q, k and v must have equal leading (batch, head) axes, got {shapes}")
    if k.shape[-1] != q.shape[-1]:
        raise ValueError(f"attention: q and k must have the same width (last axis), got {shapes}")
    if v.shape[-2] != k.shape[-2]:
        raise ValueError(f"attention: k and v must have the same number of tokens (axis -2), got {shapes}")
    if q.shape[-1] == 0 and scale is None:
        raise ValueError(f"attention: q and k have width 0, so the default scale 1/sqrt(width) is undefined: {shapes}")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)

    out, probs = kernels.attention_forward(q.data, k.data, v.data, scale)

    def backward(g):
        return kernels.attention_backward(g, q.data, k.data, v.data, probs, scale)

    return Tensor.from_op(out, (q, k, v), backward, "attention")
