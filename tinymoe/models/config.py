"""The one configuration object for every model in tinymoe: dense ViT and Mobile V-MoE.

A dense ViT is the same config with `moe_layers=0`; `config.dense()` gives the dense counterpart of an
MoE config (same width, depth, patching and classes), which is how the paper pairs its models.

    >>> ModelConfig(layers=6, dim=64)                 # the paper's smallest Mobile V-MoE (E=10, k=1, L=2)
    >>> ModelConfig(layers=12, dim=192, moe_layers=0) # ViT-Tiny, dense

Every field is checked in `__post_init__`; an impossible combination raises `ConfigError` saying which
fields clash and how to fix them, before any array is allocated.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

ROUTING_VARIANTS = ("superclass", "learned", "random", "token")
ROUTER_INPUTS = ("class_token", "mean_tokens")
INITS = ("timm", "pytorch")


class ConfigError(ValueError):
    """An invalid model configuration (the message names the fields and the fix)."""


def default_heads(dim: int) -> int:
    """Number of attention heads for a width, following the paper (384→6, 192→3, 96→3, 64→2).

    The rule behind those four: heads of size 64 from width 192 up, heads of size 32 below. It also gives
    the standard ViT-S/B/L heads (384→6, 768→12, 1024→16). Widths it does not divide need `heads=`.
    """
    head_dim = 64 if dim >= 192 else 32
    if dim % head_dim:
        raise ConfigError(
            f"no default number of heads for dim={dim}: the rule (head size 64 for dim >= 192, else 32) "
            f"does not divide it; pass heads= explicitly (dim must be divisible by heads)"
        )
    return dim // head_dim


@dataclass(frozen=True)
class ModelConfig:
    # ---- the ViT backbone ----
    layers: int = 6  # transformer blocks in total (dense + MoE)
    dim: int = 64  # token width D
    heads: int | None = None  # attention heads; None = from the width (see default_heads)
    mlp_ratio: int = 4  # MLP hidden width = mlp_ratio * dim
    image_size: int = 64  # square input images, pixels per side (Tiny ImageNet: 64)
    patch_size: int = 16  # square patches; (image_size / patch_size)^2 tokens + 1 class token (64 px: 4x4 + 1)
    channels: int = 3  # input channels (images are channel-last: (B, H, W, channels))
    num_classes: int = 200  # classifier outputs (Tiny ImageNet: 200)
    norm_eps: float = 1e-6  # LayerNorm epsilon (as timm's ViT)
    init: str = "pytorch"  # initial weights: "pytorch" (nn.Linear's default, uniform in ±1/sqrt(fan_in); the
    #                        calibrated recipe) or "timm" (truncated normal, std 0.02); see tinymoe/models/vit.py

    # ---- Mobile V-MoE ----
    moe_layers: int = 2  # the LAST moe_layers blocks are MoE blocks; 0 = a dense ViT
    experts: int = 10  # E, expert MLPs per MoE block
    k: int = 1  # experts chosen per image (per token for routing="token")
    routing: str = "superclass"  # one of ROUTING_VARIANTS, see tinymoe/models/moe.py
    router_weight: float = 0.3  # weight of the router's superclass cross-entropy (superclass, random)
    router_input: str = "class_token"  # per-image router reads: "class_token" or "mean_tokens"
    random_groups_seed: int = 0  # seed of the random class->group map (routing="random")

    # ---- token routing (regular V-MoE, routing="token") only ----
    capacity_factor: float = 1.25  # training: each expert takes at most ceil(cf * k * N / E) tokens per image
    eval_capacity_factor: float = 2.0  # the same in eval mode (model.eval())
    router_noise: float = 1.0  # training noise: logits + N(0, (router_noise / E)^2); 0 = no noise
    balance_weight: float = 0.01  # weight of (importance + load) / 2, added once per MoE block

    # ---- regularisation (no effect in eval mode; defaults = off) ----
    drop_path: float = 0.0  # stochastic depth: block i drops its residual branches per image with rate
    #                         drop_path * i / (layers - 1) (DeiT's linear rule); 0.0 = off
    expert_dropout: float = 0.0  # dropout on the hidden activations of the expert MLPs; 0.0 = off

    def __post_init__(self):
        def positive_int(name):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")

        for name in ("layers", "dim", "mlp_ratio", "image_size", "patch_size", "channels", "num_classes"):
            positive_int(name)
        if self.heads is None:
            object.__setattr__(self, "heads", default_heads(self.dim))
        positive_int("heads")
        if self.dim % self.heads:
            raise ConfigError(
                f"dim={self.dim} is not divisible by heads={self.heads}; choose heads that divide the width "
                f"(or leave heads=None for the paper's default)"
            )
        if self.image_size % self.patch_size:
            raise ConfigError(
                f"image_size={self.image_size} is not divisible by patch_size={self.patch_size}; "
                "patches must tile the image exactly"
            )
        if not isinstance(self.moe_layers, int) or not 0 <= self.moe_layers <= self.layers:
            raise ConfigError(
                f"moe_layers={self.moe_layers!r} must be between 0 (dense) and layers={self.layers}"
            )
        if self.norm_eps <= 0:
            raise ConfigError(f"norm_eps must be positive, got {self.norm_eps}")
        positive_int("experts")
        positive_int("k")
        if self.k > self.experts:
            raise ConfigError(f"k={self.k} experts per input cannot exceed experts={self.experts}")
        if self.routing not in ROUTING_VARIANTS:
            raise ConfigError(f"routing={self.routing!r} is not one of {ROUTING_VARIANTS}")
        if self.init not in INITS:
            raise ConfigError(f"init={self.init!r} is not one of {INITS}")
        if self.router_input not in ROUTER_INPUTS:
            raise ConfigError(f"router_input={self.router_input!r} is not one of {ROUTER_INPUTS}")
        if self.router_weight < 0 or self.balance_weight < 0:
            raise ConfigError("router_weight and balance_weight must be >= 0")
        if self.capacity_factor <= 0 or self.eval_capacity_factor <= 0:
            raise ConfigError(
                f"capacity factors must be > 0, got capacity_factor={self.capacity_factor}, "
                f"eval_capacity_factor={self.eval_capacity_factor} (use a value >= experts / k to never drop)"
            )
        if self.router_noise < 0:
            raise ConfigError(f"router_noise must be >= 0, got {self.router_noise}")
        for name in ("drop_path", "expert_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{name} must be in [0, 1) (a probability of dropping), got {getattr(self, name)}")

    # ---- derived sizes ----
    @property
    def is_moe(self) -> bool:
        return self.moe_layers > 0

    @property
    def dense_layers(self) -> int:
        return self.layers - self.moe_layers

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    @property
    def hidden_dim(self) -> int:
        return self.mlp_ratio * self.dim

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def num_tokens(self) -> int:
        """Patches plus the class token."""
        return self.num_patches + 1

    @property
    def patch_dim(self) -> int:
        """Values in one flattened patch: patch_size * patch_size * channels."""
        return self.patch_size * self.patch_size * self.channels

    def is_moe_block(self, index: int) -> bool:
        return index >= self.dense_layers

    # ---- conversions ----
    def dense(self) -> ModelConfig:
        """The dense ViT with the same backbone (the paper's baseline for this MoE). It keeps drop_path (a
        regulariser of the backbone both models share) and turns off the MoE-only expert_dropout, so a
        dense checkpoint never claims settings it could not use."""
        return dataclasses.replace(self, moe_layers=0, expert_dropout=0.0)

    def drop_path_rates(self) -> list[float]:
        """Stochastic-depth rate of each block: linear from 0 (first block) to drop_path (last), as DeiT."""
        if self.layers == 1:
            return [0.0]
        return [self.drop_path * i / (self.layers - 1) for i in range(self.layers)]

    def replace(self, **changes) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown config fields {unknown}; known fields are {sorted(known)}")
        return cls(**values)

    def differences(self, other: ModelConfig) -> dict[str, tuple]:
        """Fields whose values differ: name -> (self's value, other's value)."""
        mine, theirs = self.to_dict(), other.to_dict()
        return {name: (mine[name], theirs[name]) for name in mine if mine[name] != theirs[name]}

    def describe(self) -> str:
        kind = (
            f"Mobile V-MoE (E={self.experts}, k={self.k}, MoE layers={self.moe_layers}, routing={self.routing})"
            if self.is_moe
            else "dense ViT"
        )
        return (
            f"{self.layers}x{self.dim} {kind}, heads={self.heads}, {self.image_size}px / patch {self.patch_size} "
            f"({self.num_tokens} tokens), {self.num_classes} classes"
        )


__all__ = ["ModelConfig", "ConfigError", "default_heads", "ROUTING_VARIANTS", "ROUTER_INPUTS"]
