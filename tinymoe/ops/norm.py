"""layer_norm(x, weight, bias): normalise each row over the last axis, then scale and shift; one fused op.

See `tinymoe.kernels.norm` for the forward (two-pass variance, safe in float32) and the derivation of
the backward. The op saves x and the per-row mean and 1/std, not the normalised x.
"""

from __future__ import annotations

from tinymoe import kernels
from tinymoe.ops.validate import float_operands
from tinymoe.tensor import Tensor


def layer_norm(x, weight=None, bias=None, eps: float = 1e-6) -> Tensor:
    """(x - mean) / sqrt(var + eps) * weight + bias over the last axis of x (..., D).

    weight and bias have shape (D,); either may be None (no scale / no shift). eps = 1e-6 is the
    ViT default (PyTorch's LayerNorm default is 1e-5).
    """
    x, weight, bias = float_operands("layer_norm", ("x", "weight", "bias"), (x, weight, bias))
    if x.ndim == 0:
        raise ValueError("layer_norm: x must have at least one axis (the one normalised over), got a 0-d tensor")
    dim = x.shape[-1]
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None and p.shape != (dim,):
            raise ValueError(
                f"layer_norm: {name} must have shape ({dim},) to match x of shape {x.shape} "
                f"(normalised over its last axis), got {p.shape}"
            )
    eps = float(eps)
    if not eps > 0:
        raise ValueError(f"layer_norm: eps must be > 0 (it keeps 1/sqrt(var + eps) finite), got {eps}")

    out, mean, rstd = kernels.layer_norm_forward(
        x.data, None if weight is None else weight.data, None if bias is None else bias.data, eps
    )

    def backward(g):
        dx, dweight, dbias = kernels.layer_norm_backward(
            g, x.data, None if weight is None else weight.data, mean, rstd, has_bias=bias is not None
        )
        return tuple(grad for grad, p in ((dx, x), (dweight, weight), (dbias, bias)) if p is not None)

    parents = tuple(p for p in (x, weight, bias) if p is not None)
    return Tensor.from_op(out, parents, backward, "layer_norm")
