"""Differentiable functions on Tensors: primitives (elementwise, reductions, shapes, matmul) and the
fused ops a transformer needs (linear, GELU, softmax, cross-entropy, layer norm, attention).

Each op is a forward/backward pair; see `tinymoe.ops.elementwise` for the recipe they all follow.
"""

from tinymoe.ops.elementwise import add, div, exp, lift, log, maximum, mul, neg, pow, relu, sub, tanh
from tinymoe.ops.matmul import matmul
from tinymoe.ops.reduction import max, mean, sum
from tinymoe.ops.shape import concatenate, getitem, reshape, scatter_add, stack, take, transpose
from tinymoe.ops.linear import linear  # fused transformer ops: each calls tinymoe.kernels
from tinymoe.ops.activation import gelu, normal_cdf
from tinymoe.ops.softmax import cross_entropy, log_softmax, softmax
from tinymoe.ops.norm import layer_norm
from tinymoe.ops.attention import attention
from tinymoe.ops.expert import expert_linear, expert_mlp

__all__ = ["add", "div", "exp", "lift", "log", "maximum", "mul", "neg", "pow", "relu", "sub", "tanh"]
__all__ += ["matmul", "max", "mean", "sum"]
__all__ += ["concatenate", "getitem", "reshape", "scatter_add", "stack", "take", "transpose"]
__all__ += ["attention", "cross_entropy", "gelu", "layer_norm", "linear", "log_softmax", "softmax"]
__all__ += ["expert_linear", "expert_mlp", "normal_cdf"]
