"""Kernels: the array computations behind the fused ops, as plain NumPy references (and later Numba).

Arrays in, arrays out: nothing here knows about Tensor or autograd. Each forward kernel has a backward
kernel that the op of the same name in `tinymoe.ops` calls from its backward closure. One module per
family, each a readable reference with the math in its docstrings:

    activation.py  gelu_forward / gelu_backward (tanh approximation)
    linear.py      linear_forward / linear_backward (x W + b over any leading axes)
    norm.py        layer_norm_forward / layer_norm_backward
    softmax.py     softmax, log_softmax and cross_entropy, forward and backward
    attention.py   attention_forward / attention_backward (scores, softmax, weighted sum, fused)
    backend.py     the switch between the references and Numba versions (see its docstring)

The names below are `backend.Kernel` objects: calling one runs the implementation of the active
backend. The ops call these, never the reference functions directly, so registering a Numba version
(`backend.register(name, numba=fn)`) is all it takes to make every op use it.
"""

from tinymoe.kernels import activation, attention, expert, linear, norm, softmax
from tinymoe.kernels.backend import active_backend, register, report, require_numba, use_backend, using

# The table of kernels: name -> reference implementation. Numba versions are registered beside these.
gelu_forward = register("gelu_forward", reference=activation.gelu_forward)
gelu_backward = register("gelu_backward", reference=activation.gelu_backward)
linear_forward = register("linear_forward", reference=linear.linear_forward)
linear_backward = register("linear_backward", reference=linear.linear_backward)
layer_norm_forward = register("layer_norm_forward", reference=norm.layer_norm_forward)
layer_norm_backward = register("layer_norm_backward", reference=norm.layer_norm_backward)
softmax_forward = register("softmax_forward", reference=softmax.softmax_forward)
softmax_backward = register("softmax_backward", reference=softmax.softmax_backward)
log_softmax_forward = register("log_softmax_forward", reference=softmax.log_softmax_forward)
log_softmax_backward = register("log_softmax_backward", reference=softmax.log_softmax_backward)
cross_entropy_forward = register("cross_entropy_forward", reference=softmax.cross_entropy_forward)
cross_entropy_backward = register("cross_entropy_backward", reference=softmax.cross_entropy_backward)
attention_forward = register("attention_forward", reference=attention.attention_forward)
attention_backward = register("attention_backward", reference=attention.attention_backward)

# Numba versions, registered beside their references (each in the "Numba versions" section of its
# module). They run under the "numba" backend; bench/kernels.py times each against its reference.
register("gelu_forward", numba=activation.gelu_forward_numba)
register("gelu_backward", numba=activation.gelu_backward_numba)
register("layer_norm_forward", numba=norm.layer_norm_forward_numba)
register("layer_norm_backward", numba=norm.layer_norm_backward_numba)
register("softmax_forward", numba=softmax.softmax_forward_numba)
register("softmax_backward", numba=softmax.softmax_backward_numba)
register("log_softmax_forward", numba=softmax.log_softmax_forward_numba)
register("log_softmax_backward", numba=softmax.log_softmax_backward_numba)
register("cross_entropy_forward", numba=softmax.cross_entropy_forward_numba)
register("cross_entropy_backward", numba=softmax.cross_entropy_backward_numba)
register("attention_forward", numba=attention.attention_forward_numba)
register("attention_backward", numba=attention.attention_backward_numba)

# The expert MLPs of an MoE block (tinymoe.kernels.expert), reference and Numba together.
expert_mlp_forward = register(
    "expert_mlp_forward", reference=expert.expert_mlp_forward, numba=expert.expert_mlp_forward_numba
)
expert_mlp_backward = register(
    "expert_mlp_backward", reference=expert.expert_mlp_backward, numba=expert.expert_mlp_backward_numba
)

__all__ = [
    "active_backend",
    "register",
    "report",
    "require_numba",
    "use_backend",
    "using",
    "gelu_forward",
    "gelu_backward",
    "linear_forward",
    "linear_backward",
    "layer_norm_forward",
    "layer_norm_backward",
    "softmax_forward",
    "softmax_backward",
    "log_softmax_forward",
    "log_softmax_backward",
    "cross_entropy_forward",
    "cross_entropy_backward",
    "attention_forward",
    "attention_backward",
    "expert_mlp_forward",
    "expert_mlp_backward",
]
