"""mlp(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias) = fc2(gelu(fc1(x))), the transformer MLP as one op.

Against linear → gelu → linear as three ops it keeps less for the backward (x and the pre-activation h;
the GELU output is recomputed, see `tinymoe.kernels.mlp`) and fuses the bias add with the GELU. The
result and the gradients are those of the three ops.
"""

from __future__ import annotations

from tinymoe import kernels
from tinymoe.ops.validate import float_operands
from tinymoe.tensor import Tensor


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
    out, h = kernels.mlp_forward(x.data, w1.data, b1.data, w2.data, b2.data)

    def backward(g):
        return kernels.mlp_backward(g, x.data, w1.data, w2.data, h)

    return Tensor.from_op(out, (x, w1, b1, w2, b2), backward, "mlp")
