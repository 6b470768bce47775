"""linear(x, weight, bias): the affine map of a dense layer, y = x W + b, as one fused op.

Built from primitives it would be matmul + add, two graph nodes and an extra (..., out) temporary;
fused, the forward is one matrix product over all leading axes at once and the backward three
(see `tinymoe.kernels.linear` for the math).
"""

from __future__ import annotations

from tinymoe import kernels
from tinymoe.ops.validate import float_operands
from tinymoe.tensor import Tensor


def linear(x, weight, bias=None) -> Tensor:
    """y = x W + b for x (..., in), weight W (in, out) and optional bias b (out,); y is (..., out).

    The weight is stored (in, out), so that y = x @ W reads like the math (PyTorch stores the
    transpose, (out, in)). Any number of leading axes is allowed: (in,), (B, in), (B, N, in), ...
    """
    x, weight, bias = float_operands("linear", ("x", "weight", "bias"), (x, weight, bias))
    if weight.ndim != 2:
        raise ValueError(f"linear: weight must be 2-D (in_features, out_features), got shape {weight.shape}")
    in_features, out_features = weight.shape
    if x.ndim == 0 or x.shape[-1] != in_features:
        raise ValueError(
            f"linear: x has shape {x.shape} and weight has shape {weight.shape}; x's last axis must equal "
            f"weight's first axis (in_features = {in_features})"
        )
    if bias is not None and bias.shape != (out_features,):
        raise ValueError(
            f"linear: bias must have shape (out_features,) = ({out_features},) to match weight of shape "
            f"{weight.shape}, got {bias.shape}"
        )

    out = kernels.linear_forward(x.data, weight.data, None if bias is None else bias.data)

    def backward(g):
        dx, dweight, dbias = kernels.linear_backward(
            g,
            x.data,
            weight.data,
            has_bias=bias is not None and bias.requires_grad,
            need_dx=x.requires_grad,
            need_dweight=weight.requires_grad,
        )
        return (dx, dweight) if bias is None else (dx, dweight, dbias)

    parents = (x, weight) if bias is None else (x, weight, bias)
    return Tensor.from_op(out, parents, backward, "linear")
