"""gelu(x): the Gaussian error linear unit of ViT MLPs, tanh approximation, as one fused op; and
normal_cdf(x) = Φ(x), the standard normal CDF (exact GELU is x·Φ(x); V-MoE's load loss uses Φ).

Composed from primitives, 0.5 x (1 + tanh(c (x + a x^3))) would be eight graph nodes, each keeping
an array alive for the backward; fused, the op keeps only x and recomputes the rest
(see `tinymoe.kernels.activation` for the formula and its derivative).
"""

from __future__ import annotations

import math

import numpy as np

from tinymoe import kernels
from tinymoe.ops.validate import float_operands
from tinymoe.tensor import Tensor


def gelu(x) -> Tensor:
    """0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), elementwise; = torch.nn.GELU(approximate="tanh")."""
    (x,) = float_operands("gelu", ("x",), (x,))
    out = kernels.gelu_forward(x.data)
    return Tensor.from_op(out, (x,), lambda g: (kernels.gelu_backward(x.data, g),), "gelu")


_erf = np.frompyfunc(math.erf, 1, 1)  # NumPy has no erf; math.erf is exact to double precision


def normal_cdf(x) -> Tensor:
    """Φ(x) = P(Z <= x) for a standard normal Z = ½ (1 + erf(x / √2)); dΦ/dx = φ(x) = e^{-x²/2} / √(2π).

    Computed in float64 and returned in x's dtype. Used by the load-balancing loss of token routing.
    """
    (x,) = float_operands("normal_cdf", ("x",), (x,))
    z = x.data.astype(np.float64)
    out = (0.5 * (1.0 + np.asarray(_erf(z / math.sqrt(2.0)), dtype=np.float64))).astype(x.dtype)

    def backward(g):
        return (g * (np.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)).astype(x.dtype),)

    return Tensor.from_op(out, (x,), backward, "normal_cdf")
