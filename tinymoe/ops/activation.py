"""gelu(x): the Gaussian error linear unit of ViT MLPs, tanh approximation, as one fused op.

Composed from primitives, 0.5 x (1 + tanh(c (x + a x^3))) would be eight graph nodes, each keeping
an array alive for the backward; fused, the op keeps only x and recomputes the rest
(see `tinymoe.kernels.activation` for the formula and its derivative).
"""

from __future__ import annotations

from tinymoe import kernels
from tinymoe.ops.validate import float_operands
from tinymoe.tensor import Tensor


def gelu(x) -> Tensor:
    """0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), elementwise; = torch.nn.GELU(approximate="tanh")."""
    (x,) = float_operands("gelu", ("x",), (x,))
    out = kernels.gelu_forward(x.data)
    return Tensor.from_op(out, (x,), lambda g: (kernels.gelu_backward(x.data, g),), "gelu")
