"""The dense pieces of a ViT: multi-head self-attention, the GELU MLP, and the pre-norm block.

All activations are (B, N, D): batch, tokens, width. Each block is pre-norm, as in ViT:

    x = x + Attention(LayerNorm(x))
    x = x + MLP(LayerNorm(x))

so the residual stream x is never normalised itself and gradients reach early blocks unchanged.

Stochastic depth (Huang et al. 2016; "drop path" in timm and DeiT): in training, each residual branch
is dropped for a random subset of the images, x = x + keep_b / (1 - rate) · branch(x), keep_b ~
Bernoulli(1 - rate) per image b, so the expected update equals the branch and eval mode (no dropping,
no scaling) computes exactly that expectation.
"""

from __future__ import annotations

import numpy as np

from tinymoe import ops
from tinymoe.nn import LayerNorm, Linear, Module
from tinymoe.tensor import Tensor


def drop_path(branch: Tensor, rate: float, training: bool, rng: np.random.Generator | None) -> Tensor:
    """Stochastic depth on a residual branch (B, ...): each image's branch is zeroed with probability
    `rate` and the kept ones are scaled by 1 / (1 - rate), so E[output] = branch. Identity when not
    training or rate == 0 (no random numbers are drawn then). `rng` supplies the per-image draws."""
    if not training or rate == 0.0:
        return branch
    if rng is None:
        raise ValueError("drop_path: stochastic depth in training mode needs a np.random.Generator (rng=)")
    batch = branch.shape[0]
    keep = rng.random(batch) >= rate  # (B,) True = this image keeps the branch
    scale = (keep / (1.0 - rate)).astype(branch.dtype)  # 0 or 1/(1 - rate), in the branch's dtype
    return branch * scale.reshape((batch,) + (1,) * (branch.ndim - 1))  # (B, 1, ..., 1) broadcasts


class Attention(Module):
    """Multi-head self-attention: every token attends to every token of its own image.

    One linear map makes q, k and v for all heads at once; its 3·D outputs are ordered (q | k | v), each
    split into heads of width D / heads, the layout timm uses, so weights convert by a transpose only.
    """

    def __init__(self, dim: int, heads: int, rng: np.random.Generator, dtype=np.float32):
        super().__init__()
        if dim % heads:
            raise ValueError(f"Attention: dim={dim} is not divisible by heads={heads}")
        self.dim, self.heads = dim, heads
        self.qkv = Linear(dim, 3 * dim, rng=rng, dtype=dtype)
        self.proj = Linear(dim, dim, rng=rng, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        batch, tokens, dim = x.shape
        head_dim = dim // self.heads
        qkv = self.qkv(x)  # (B, N, 3D)
        qkv = ops.reshape(qkv, (batch, tokens, 3, self.heads, head_dim))  # (B, N, 3, H, Dh)
        qkv = ops.transpose(qkv, (2, 0, 3, 1, 4))  # (3, B, H, N, Dh)
        q, k, v = qkv[0], qkv[1], qkv[2]  # each (B, H, N, Dh)
        out = ops.attention(q, k, v)  # softmax(q kᵀ / sqrt(Dh)) v, per head: (B, H, N, Dh)
        out = ops.transpose(out, (0, 2, 1, 3))  # (B, N, H, Dh)
        out = ops.reshape(out, (batch, tokens, dim))  # heads side by side again: (B, N, D)
        return self.proj(out)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, heads={self.heads}"


class Mlp(Module):
    """fc2(GELU(fc1(x))): D -> hidden -> D, applied to each token independently."""

    def __init__(self, dim: int, hidden: int, rng: np.random.Generator, dtype=np.float32):
        super().__init__()
        self.fc1 = Linear(dim, hidden, rng=rng, dtype=dtype)
        self.fc2 = Linear(hidden, dim, rng=rng, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(ops.gelu(self.fc1(x)))


class Block(Module):
    """A dense pre-norm transformer block: attention, then the MLP, each added to the residual stream.

    `drop_rate` > 0 turns on stochastic depth for both branches in training mode (see `drop_path`).
    """

    def __init__(
        self, dim: int, heads: int, hidden: int, eps: float, rng: np.random.Generator, dtype=np.float32,
        drop_rate: float = 0.0,
    ):
        super().__init__()
        self.norm1 = LayerNorm(dim, eps=eps, dtype=dtype)
        self.attn = Attention(dim, heads, rng=rng, dtype=dtype)
        self.norm2 = LayerNorm(dim, eps=eps, dtype=dtype)
        self.mlp = Mlp(dim, hidden, rng=rng, dtype=dtype)
        self.drop_rate = float(drop_rate)

    def forward(self, x: Tensor, rng: np.random.Generator | None = None) -> Tensor:
        """`rng` draws the stochastic-depth masks (needed only in training with drop_rate > 0)."""
        x = x + drop_path(self.attn(self.norm1(x)), self.drop_rate, self.training, rng)
        return x + drop_path(self.mlp(self.norm2(x)), self.drop_rate, self.training, rng)


__all__ = ["Attention", "Mlp", "Block", "drop_path"]
