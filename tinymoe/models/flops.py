"""Inference FLOPs and parameter counts of a ViT / Mobile V-MoE, from the config alone (no arrays).

What is counted (the paper's convention, FLOPs = 2 x multiply-adds):
  * every matrix product of one image's forward pass: the patch embedding (a linear map of each flattened
    patch, the same multiply-adds as the stride-p convolution), the q/k/v and output projections, the
    attention scores q kᵀ and the weighted sum of values (N·N·D multiply-adds each, summed over heads),
    the MLP's two linear maps, the router(s), and the classifier head (class token only);
  * for an MoE block: the k experts each image (or, for token routing, each token) is sent to, plus the
    router. Expert capacity is ignored: the count is the nominal cost with no token dropped.
What is not counted: elementwise work (bias adds, residual adds, LayerNorm, GELU, softmax, the gate
multiply). It is O(N·D) per block against O(N·D²) for the matmuls, and it is why these counts are a
little below the paper's (which were measured by a compiler that counts every op): 52.7M vs 54M for
6×64, 612.1M vs 618M for 12×192, 2285.8M vs 2297M for 12×384 (224 px, patch 32, 1000 classes); the gap
shrinks with width, as an O(N·D) term should.

Parameters: every array of the model (see the table in `tinymoe.models.vit`). "Active" parameters are
those used to process one image: all of them except the experts the image is not routed to, i.e. minus
(E - k) expert MLPs per MoE block. For token routing the same number is the parameters used per token
(an image's tokens may together touch every expert).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tinymoe.models.config import ModelConfig
from tinymoe.models.moe import router_class


@dataclass(frozen=True)
class ModelCost:
    """Per-image inference cost of one config."""

    config: ModelConfig
    macs: dict[str, int] = field(default_factory=dict)  # multiply-adds per component
    params: int = 0  # all parameters
    active_params: int = 0  # parameters used for one image (per token for token routing)

    @property
    def total_macs(self) -> int:
        return sum(self.macs.values())

    @property
    def flops(self) -> int:
        """FLOPs = 2 x multiply-adds (one multiply and one add each)."""
        return 2 * self.total_macs


def attention_macs(tokens: int, dim: int) -> dict[str, int]:
    """Multiply-adds of one multi-head self-attention on `tokens` tokens of width `dim`.

    Heads split the width, so their costs add up to the single-head numbers: q kᵀ is (N, Dh) @ (Dh, N)
    per head = N·N·Dh, times H heads = N·N·D; the same for attn @ v.
    """
    n, d = tokens, dim
    return {
        "qkv": n * d * 3 * d,  # (N, D) @ (D, 3D)
        "scores": n * n * d,  # q kᵀ, all heads
        "weighted_sum": n * n * d,  # softmax(...) v, all heads
        "proj": n * d * d,  # (N, D) @ (D, D)
    }


def mlp_macs(tokens: int, dim: int, hidden: int) -> int:
    return tokens * dim * hidden + tokens * hidden * dim  # fc1 (D -> 4D) then fc2 (4D -> D)


def mlp_params(dim: int, hidden: int) -> int:
    return dim * hidden + hidden + hidden * dim + dim  # two weights and two biases


def count(config: ModelConfig) -> ModelCost:
    """Count multiply-adds per image and parameters of `config` (see the module docstring for the rules)."""
    c = config
    n, d, h = c.num_tokens, c.dim, c.hidden_dim
    macs: dict[str, int] = {"patch_embed": c.num_patches * c.patch_dim * d}

    attn_per_block = attention_macs(n, d)
    for name, value in attn_per_block.items():
        macs[f"attention.{name}"] = c.layers * value
    macs["mlp.dense"] = c.dense_layers * mlp_macs(n, d, h)
    if c.is_moe:
        # Each chosen expert runs on all N tokens (per-image routing), or each token visits k experts
        # (token routing): k expert MLPs' worth of work per MoE block either way.
        macs["mlp.experts"] = c.moe_layers * c.k * mlp_macs(n, d, h)
        per_token = router_class(c).per_token
        # token routing: a router per block, on every token; per-image: one router, on one D-vector
        macs["router"] = c.moe_layers * n * d * c.experts if per_token else d * c.experts
    macs["head"] = d * c.num_classes

    block_shared = 4 * d + (d * 3 * d + 3 * d) + (d * d + d)  # two LayerNorms, qkv, proj
    params = (c.patch_dim * d + d) + d + n * d  # patch embedding, class token, position embedding
    params += c.layers * block_shared
    params += c.dense_layers * mlp_params(d, h)
    params += c.moe_layers * c.experts * mlp_params(d, h)
    if c.is_moe:
        params += (c.moe_layers if router_class(c).per_token else 1) * d * c.experts  # bias-free routers
    params += 2 * d + d * c.num_classes + c.num_classes  # final LayerNorm, head
    unused = c.moe_layers * (c.experts - c.k) * mlp_params(d, h)
    return ModelCost(config=c, macs=macs, params=params, active_params=params - unused)


def human(n: float) -> str:
    """1234567 -> '1.23M' (K, M, G as powers of 1000, two decimals)."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(int(n))


def mega(n: float) -> str:
    """FLOPs in millions, as the paper writes them: 2285819904 -> '2285.8M'."""
    return f"{n / 1e6:.1f}M"


def format_table(costs: list[tuple[str, ModelCost]], breakdown: bool = False) -> str:
    """A plain-text table: one row per (name, cost)."""
    header = f"{'model':<34}{'FLOPs':>12}{'params':>12}{'active params':>16}"
    lines = [header, "-" * len(header)]
    for name, cost in costs:
        lines.append(
            f"{name:<34}{mega(cost.flops):>12}{human(cost.params):>12}{human(cost.active_params):>16}"
        )
        if breakdown:
            for part, value in cost.macs.items():
                lines.append(f"    {part:<30}{mega(2 * value):>12}")
    return "\n".join(lines)


__all__ = ["ModelCost", "count", "attention_macs", "mlp_macs", "mlp_params", "human", "mega", "format_table"]
