"""The two layers every transformer block is made of: Linear and LayerNorm."""

from __future__ import annotations

import numpy as np

from tinymoe import ops
from tinymoe.nn.init import truncated_normal
from tinymoe.nn.module import Module, Parameter


class Linear(Module):
    """y = x W + b, with W of shape (in_features, out_features) and b of shape (out_features,).

    The weight is stored (in, out) so the forward reads as the math, x @ W. (PyTorch and timm store
    (out, in); converting a checkpoint transposes it.) The weight starts as a truncated normal with
    std 0.02 drawn from `rng`, the bias as zeros, as in timm's ViT. Pass a seeded
    `np.random.default_rng(seed)` for a reproducible model; the default draws from fresh entropy.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        rng: np.random.Generator | None = None,
        dtype=np.float32,
        init_std: float = 0.02,
    ):
        super().__init__()
        if in_features < 1 or out_features < 1:
            raise ValueError(
                f"Linear: in_features and out_features must be >= 1, got {in_features} and {out_features}"
            )
        rng = np.random.default_rng() if rng is None else rng
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.weight = Parameter(truncated_normal(rng, (in_features, out_features), std=init_std, dtype=dtype))
        self.bias = Parameter(np.zeros(out_features, dtype=dtype)) if bias else None

    def forward(self, x):
        return ops.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class LayerNorm(Module):
    """Normalise over the last axis, then scale by `weight` (starts at 1) and shift by `bias` (starts at 0).

    eps = 1e-6 as in ViT (PyTorch's default is 1e-5).
    """

    def __init__(self, dim: int, eps: float = 1e-6, dtype=np.float32):
        super().__init__()
        if dim < 1:
            raise ValueError(f"LayerNorm: dim must be >= 1, got {dim}")
        self.dim, self.eps = int(dim), float(eps)
        self.weight = Parameter(np.ones(dim, dtype=dtype))
        self.bias = Parameter(np.zeros(dim, dtype=dtype))

    def forward(self, x):
        return ops.layer_norm(x, self.weight, self.bias, eps=self.eps)

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps:g}"
