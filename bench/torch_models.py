"""The models of tinymoe written in PyTorch, for the end-to-end benchmark (bench/throughput.py).

This is the PyTorch side of the comparison: the same architecture as `tinymoe.models`, written the way a
PyTorch user would write it (nn.Linear, nn.LayerNorm, F.scaled_dot_product_attention), so the benchmark
measures tinymoe against PyTorch's idiomatic fast path on the same machine, not against a strawman.

Architecture (identical in FLOPs and layout to tinymoe.models):
- input (B, H, W, C) float32 (NHWC); non-overlapping p×p patches flattened in (row, col, channel) order
  and embedded by one linear layer (patch_size² · C → dim);
- a learned class token prepended, a learned position embedding added (N = (H/p)(W/p) + 1 tokens);
- `layers` pre-norm blocks: x + Attn(LN(x)), then x + MLP(LN(x)); MLP = Linear(dim, 4 dim), GELU (tanh
  approximation), Linear(4 dim, dim); LayerNorm eps 1e-6;
- final LayerNorm, linear head on the class token.
- Mobile V-MoE: the last `moe_layers` blocks are MoE blocks whose MLP is one of `experts` expert MLPs.
  One router per image reads the class token after the last dense block and computes softmax(W r + b)
  over experts; the top-k experts process all tokens of the image in every MoE block; the expert
  outputs are combined with the gate values. Images are grouped by expert (index_select / index_add_),
  so each expert runs once per block on just its images. Training loss:
  CE(logits, labels) + router_weight · CE(router_logits, superclass(labels)).

PyTorch is only a benchmark (and parity-test) dependency, never a runtime one.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, d = x.shape
        h = self.heads
        qkv = self.qkv(x).reshape(b, n, 3, h, d // h).permute(2, 0, 3, 1, 4)  # (3, B, H, N, Dh)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (B, H, N, Dh)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLP(dim, mlp_ratio * dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class MoEBlock(nn.Module):
    """A block whose MLP is chosen per image: `experts` expert MLPs, attention and norms shared."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int, experts: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.experts = nn.ModuleList(MLP(dim, mlp_ratio * dim) for _ in range(experts))

    def forward(self, x, expert_index, gates):
        """x (B, N, D); expert_index (B, k) int64; gates (B, k) the router's softmax at those experts."""
        x = x + self.attn(self.norm1(x))
        h = self.norm2(x)
        out = torch.zeros_like(h)
        for e, expert in enumerate(self.experts):
            image, slot = torch.nonzero(expert_index == e, as_tuple=True)  # images routed to e
            if image.numel() == 0:
                continue
            y = expert(h.index_select(0, image))  # (n_e, N, D)
            out.index_add_(0, image, y * gates[image, slot][:, None, None])
        return x + out


class ViT(nn.Module):
    """Dense ViT, or Mobile V-MoE when `experts` > 0 (then forward also returns the router logits)."""

    def __init__(self, layers=6, dim=64, heads=None, mlp_ratio=4, image_size=64, patch_size=8, channels=3,
                 num_classes=200, experts=0, k=1, moe_layers=2):
        super().__init__()
        heads = heads or {384: 6, 192: 3, 96: 3, 64: 2}.get(dim, max(1, dim // 64))
        self.patch_size, self.k = patch_size, k
        num_patches = (image_size // patch_size) ** 2
        self.patch_embed = nn.Linear(patch_size * patch_size * channels, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, num_patches + 1, dim) * 0.02)
        n_dense = layers - moe_layers if experts else layers
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio) for _ in range(n_dense))
        if experts:
            self.router = nn.Linear(dim, experts)
            self.moe_blocks = nn.ModuleList(MoEBlock(dim, heads, mlp_ratio, experts) for _ in range(moe_layers))
        else:
            self.router = None
            self.moe_blocks = nn.ModuleList()
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)

    def patchify(self, images):
        b, hh, ww, c = images.shape
        p = self.patch_size
        x = images.reshape(b, hh // p, p, ww // p, p, c).permute(0, 1, 3, 2, 4, 5)  # (B, H/p, W/p, p, p, C)
        return x.reshape(b, (hh // p) * (ww // p), p * p * c)

    def forward(self, images):
        x = self.patch_embed(self.patchify(images))
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        router_logits = None
        if self.router is not None:
            router_logits = self.router(x[:, 0])  # one router per image, on the class token
            probs = router_logits.softmax(dim=-1)
            gates, expert_index = probs.topk(self.k, dim=-1)
            for block in self.moe_blocks:
                x = block(x, expert_index, gates)
        logits = self.head(self.norm(x[:, 0]))
        return logits, router_logits


def loss_fn(model_out, labels, superclass_labels, router_weight=0.3):
    logits, router_logits = model_out
    loss = F.cross_entropy(logits, labels)
    if router_logits is not None:
        loss = loss + router_weight * F.cross_entropy(router_logits, superclass_labels)
    return loss


def init_like_tinymoe(model: nn.Module, seed: int = 0) -> None:
    """Truncated-normal-ish init (std 0.02) for linear weights, zero biases; matches the scale of tinymoe's
    init so both sides train on comparable numbers (speed does not depend on it, but NaNs would)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear):
                m.weight.normal_(0.0, 0.02, generator=g)
                m.bias.zero_()
