"""The Vision Transformer and Mobile V-MoE of Daxberger et al. (2023), as one model class.

    model = VisionTransformer(ModelConfig(layers=6, dim=64), rng=0)       # Mobile V-MoE, E=10, k=1, L=2
    out = model(images)                  # images: float32 (B, H, W, 3), channel-last (NHWC)
    out.logits                           # (B, num_classes) Tensor
    out.routing.experts                  # (B, k) experts chosen per image (per-image routing)
    loss = model.loss(out, labels)       # LossTerms: .total (Tensor), .classification, .router, ...

Architecture (ViT, Dosovitskiy et al. 2021, pre-norm as in timm):
  1. patch embedding: cut the (H, W, C) image into (H/p)·(W/p) patches of p·p·C values, flatten each and
     map it linearly to D values (the same as a stride-p convolution with a p×p kernel);
  2. prepend a learned class token, add a learned position embedding;
  3. `layers` pre-norm blocks (multi-head self-attention + GELU MLP, hidden width mlp_ratio·D); the last
     `moe_layers` are MoE blocks (see tinymoe/models/moe.py), whose per-image router reads the tokens
     after the last dense block;
  4. a final LayerNorm of the class token, and a linear head.
Images are channel-last, (B, H, W, C), because that is how the data loaders (and PIL) produce them;
a channel-first array gets an error telling you to transpose it.

Initialisation, all drawn from one seeded np.random.Generator. `init="timm"` (timm's ViT
scheme): linear weights and the position embedding truncated normal with std 0.02 (cut at 2 std),
linear biases 0, the class token normal with std 1e-6, LayerNorms 1 and 0, and the patch embedding
uniform in ±1/sqrt(p·p·C) (weight and bias; PyTorch's default for the convolution timm uses there).
`init="pytorch"` (the default, the calibrated recipe's): what a model written with plain nn.Linear layers starts from: every linear map's
weight and bias uniform in ±1/sqrt(fan_in) (nn.Linear's kaiming_uniform(a=√5); experts and routers
alike), the position embedding N(0, 0.02), the class token 0, LayerNorms 1 and 0. With fan-in 64 that
is a weight std of 0.072, 3.6× timm's 0.02, which changes how fast a small model learns in a short
schedule (bench/RESULTS.md, Calibration).

Parameters (`model.state_dict()` names; D = dim, H = mlp_ratio·dim, E = experts, C = classes,
N = patches + 1, p = patch_size, c = channels). Every weight is stored (in, out), so x @ W; PyTorch /
timm store (out, in), so converting a Linear weight is a transpose (`w_timm = w.T`).

  name                             shape           layout / timm `vit_*` equivalent
  patch_embed.weight               (p·p·c, D)      rows ordered (row in patch, column in patch, channel);
                                                   = timm patch_embed.proj.weight (D, c, p, p)
                                                     .permute(2, 3, 1, 0).reshape(p·p·c, D)
  patch_embed.bias                 (D,)            patch_embed.proj.bias
  cls_token                        (1, 1, D)       cls_token
  pos_embed                        (1, N, D)       pos_embed (class token first, then patches row by row)
  blocks.{i}.norm1.weight / .bias  (D,)            same
  blocks.{i}.attn.qkv.weight       (D, 3D)         .T of timm's; output columns ordered (q, k, v) x head x Dh
  blocks.{i}.attn.qkv.bias         (3D,)           same
  blocks.{i}.attn.proj.weight      (D, D)          .T of timm's; input rows ordered head x Dh
  blocks.{i}.attn.proj.bias        (D,)            same
  blocks.{i}.norm2.weight / .bias  (D,)            same
  blocks.{i}.mlp.fc1.weight        (D, H)          .T of timm's       } dense blocks
  blocks.{i}.mlp.fc1.bias          (H,)            same               }
  blocks.{i}.mlp.fc2.weight        (H, D)          .T of timm's       }
  blocks.{i}.mlp.fc2.bias          (D,)            same               }
  blocks.{i}.experts.fc1_weight    (E, D, H)       [e] = expert e's fc1 weight, (in, out)  } MoE blocks
  blocks.{i}.experts.fc1_bias      (E, H)          [e] = expert e's fc1 bias               }
  blocks.{i}.experts.fc2_weight    (E, H, D)       [e] = expert e's fc2 weight, (in, out)  }
  blocks.{i}.experts.fc2_bias      (E, D)          [e] = expert e's fc2 bias               }
  blocks.{i}.router.weight         (D, E)          token routing only: the block's router, no bias
  router.weight                    (D, E)          per-image routing only: the image router, no bias
  norm.weight / .bias              (D,)            same
  head.weight                      (D, C)          .T of timm's head.weight
  head.bias                        (C,)            same
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tinymoe import ops
from tinymoe.models.config import ModelConfig
from tinymoe.models.layers import Block
from tinymoe.models.losses import model_loss
from tinymoe.models.moe import (
    ExpertMlps, ImageRouter, ImageRouting, MoEBlock, TokenMoEBlock, TokenRouter, TokenRouting, random_class_groups,
    router_class, RandomGroupRouter,
)
from tinymoe.nn import LayerNorm, Linear, Module, ModuleList, Parameter, truncated_normal
from tinymoe.tensor import Tensor


@dataclass
class ModelOutput:
    """What a forward pass returns.

    Attributes:
        logits: (B, num_classes) Tensor.
        routing: per-image routing (superclass, learned, random): the experts, gates, router logits and
            per-expert counts, shared by all MoE blocks. None for a dense model and for token routing.
        token_routing: routing="token": one TokenRouting per MoE block (experts and gates per token,
            kept/dropped pairs, auxiliary losses). Empty otherwise.
    """

    logits: Tensor
    routing: ImageRouting | None = None
    token_routing: list[TokenRouting] = field(default_factory=list)

    def expert_counts(self) -> np.ndarray | None:
        """(E,) images per expert (per-image routing) or kept (token, choice) pairs per expert summed
        over the MoE blocks (token routing); None for a dense model."""
        if self.routing is not None:
            return self.routing.counts
        if self.token_routing:
            return np.sum([r.counts for r in self.token_routing], axis=0)
        return None


class VisionTransformer(Module):
    """A dense ViT (config.moe_layers == 0) or a Mobile V-MoE (config.moe_layers > 0). See the module doc.

    Args:
        config: the architecture.
        rng: a np.random.Generator or an int seed for the initial weights (None: fresh entropy).
            The same seed gives the same weights. A second generator derived from it drives the
            router noise of token routing in training (`model.rng`; pass `rng=` to forward to use
            your own, e.g. one whose state you checkpoint).
        dtype: parameter dtype: float32 to train, float64 for gradient checks.
    """

    def __init__(self, config: ModelConfig, rng: np.random.Generator | int | None = None, dtype=np.float32):
        super().__init__()
        if not isinstance(config, ModelConfig):
            raise TypeError(f"VisionTransformer needs a ModelConfig, got {type(config).__name__}")
        rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        c = self.config = config
        d = c.dim

        self.patch_embed = Linear(c.patch_dim, d, rng=rng, dtype=dtype)
        bound = 1.0 / np.sqrt(c.patch_dim)  # PyTorch's default for timm's Conv2d patch embedding
        self.patch_embed.weight.data[...] = rng.uniform(-bound, bound, (c.patch_dim, d))
        self.patch_embed.bias.data[...] = rng.uniform(-bound, bound, d)
        self.cls_token = Parameter((1e-6 * rng.standard_normal((1, 1, d))).astype(dtype))
        self.pos_embed = Parameter(truncated_normal(rng, (1, c.num_tokens, d), dtype=dtype))

        router = router_class(c)  # the routing variant, by name (tinymoe/models/moe.py: ROUTERS)
        blocks = []
        for i, rate in enumerate(c.drop_path_rates()):
            if not c.is_moe_block(i):
                blocks.append(Block(d, c.heads, c.hidden_dim, c.norm_eps, rng, dtype, drop_rate=rate))
            elif router.per_token:  # V-MoE: every MoE block routes each token with its own router
                blocks.append(TokenMoEBlock(d, c.heads, c.hidden_dim, c.experts, c.norm_eps, rng, dtype, rate,
                                            c.expert_dropout, k=c.k, capacity_factor=c.capacity_factor,
                                            eval_capacity_factor=c.eval_capacity_factor, router_noise=c.router_noise))
            else:
                blocks.append(MoEBlock(d, c.heads, c.hidden_dim, c.experts, c.norm_eps, rng, dtype, rate,
                                       c.expert_dropout))
        self.blocks = ModuleList(blocks)
        self.router = None  # dense, or token routing (routers inside the blocks)
        if c.is_moe and not router.per_token:  # Mobile V-MoE: one router, after the last dense block
            self.router = router(d, c.experts, c.k, c.router_input, rng, dtype)
        self.norm = LayerNorm(d, eps=c.norm_eps, dtype=dtype)
        self.head = Linear(d, c.num_classes, rng=rng, dtype=dtype)

        if c.init == "pytorch":
            self._pytorch_init(rng)
        self.rng = np.random.default_rng(rng.integers(2**63))  # router noise (token routing, training)
        # class -> expert group, the router's target: set by set_class_to_group for "superclass",
        # fixed at random (seeded by config.random_groups_seed) for "random".
        self.class_to_group: np.ndarray | None = None
        if c.is_moe and router is RandomGroupRouter:
            self.class_to_group = random_class_groups(c.num_classes, c.experts, c.random_groups_seed)

    def _pytorch_init(self, rng: np.random.Generator) -> None:
        """Redraw the weights as PyTorch's default layers would (see the module docstring)."""

        def uniform(p: Parameter, fan_in: int) -> None:
            bound = 1.0 / np.sqrt(fan_in)
            p.data[...] = rng.uniform(-bound, bound, p.data.shape)

        for _, module in self.named_modules():
            if isinstance(module, Linear):  # weight (in, out): fan-in is its first axis
                uniform(module.weight, module.in_features)
                if module.bias is not None:
                    uniform(module.bias, module.in_features)
            elif isinstance(module, ExpertMlps):  # fc1 (E, D, H), fc2 (E, H, D)
                uniform(module.fc1_weight, module.dim)
                uniform(module.fc1_bias, module.dim)
                uniform(module.fc2_weight, module.hidden)
                uniform(module.fc2_bias, module.hidden)
            elif isinstance(module, (ImageRouter, TokenRouter)):  # weight (D, E), no bias
                uniform(module.weight, module.weight.data.shape[0])
        self.cls_token.data[...] = 0.0
        self.pos_embed.data[...] = rng.normal(0.0, 0.02, self.pos_embed.data.shape)

    # ----------------------------------------------------------------------------------------------
    @property
    def dtype(self) -> np.dtype:
        return self.cls_token.data.dtype

    def set_class_to_group(self, class_to_group) -> None:
        """Set the router's targets: class_to_group[c] in [0, experts) is the superclass of class c."""
        mapping = np.asarray(class_to_group)
        c = self.config
        if mapping.shape != (c.num_classes,) or mapping.dtype.kind not in "iu":
            raise ValueError(
                f"class_to_group must be {c.num_classes} integers (one expert group per class), "
                f"got an array of shape {mapping.shape} and dtype {mapping.dtype}"
            )
        if mapping.size and (mapping.min() < 0 or mapping.max() >= c.experts):
            raise ValueError(
                f"class_to_group values must lie in [0, {c.experts}) (one group per expert), "
                f"got values from {mapping.min()} to {mapping.max()}"
            )
        self.class_to_group = mapping.astype(np.int64)

    def _check_images(self, images) -> Tensor:
        c = self.config
        data = images.data if isinstance(images, Tensor) else np.asarray(images)
        expected = (c.image_size, c.image_size, c.channels)
        if data.ndim != 4 or data.shape[1:] != expected:
            hint = ""
            if data.ndim == 4 and data.shape[1:] == (c.channels, c.image_size, c.image_size):
                hint = " It looks channel-first (B, C, H, W); transpose it: images.transpose(0, 2, 3, 1)."
            raise ValueError(
                f"VisionTransformer expects channel-last images of shape (batch, {c.image_size}, {c.image_size}, "
                f"{c.channels}), got shape {data.shape}.{hint}"
            )
        if data.dtype.kind != "f":
            raise TypeError(
                f"images must be floating point (normalised pixel values), got dtype {data.dtype}; "
                "e.g. images.astype(np.float32) / 255 followed by the dataset's normalisation"
            )
        if isinstance(images, Tensor):
            if data.dtype != self.dtype:
                raise TypeError(f"images have dtype {data.dtype} but the model's parameters are {self.dtype}")
            return images
        return Tensor(data.astype(self.dtype, copy=False))

    def embed(self, images) -> Tensor:
        """Images (B, S, S, c) -> tokens (B, N, D): patches, linear map, class token, position embedding."""
        c = self.config
        x = self._check_images(images)
        batch, p, grid = x.shape[0], c.patch_size, c.image_size // c.patch_size
        x = ops.reshape(x, (batch, grid, p, grid, p, c.channels))  # (B, gy, py, gx, px, c)
        x = ops.transpose(x, (0, 1, 3, 2, 4, 5))  # (B, gy, gx, py, px, c): patch position, then its pixels
        x = ops.reshape(x, (batch, grid * grid, c.patch_dim))  # (B, P, p·p·c), patches row by row
        x = self.patch_embed(x)  # (B, P, D)
        cls = self.cls_token + np.zeros((batch, 1, c.dim), dtype=self.dtype)  # (B, 1, D); grads sum over B
        x = ops.concatenate([cls, x], axis=1)  # (B, N, D)
        return x + self.pos_embed

    def forward(self, images, rng: np.random.Generator | None = None) -> ModelOutput:
        """Logits and routing for a batch of channel-last images (B, H, W, C): the paper, step by step.

        `rng` drives everything random in training mode (default: `self.rng`): the router noise of token
        routing, the stochastic-depth masks and the expert-dropout masks.
        """
        rng = self.rng if rng is None else rng
        x = self.embed(images)  # (B, N, D): patches + class token + position embedding
        x = self.dense_blocks(x, rng)  # (B, N, D)
        routing = None if self.router is None else self.router(x)  # one decision per image, (B, k) experts
        return self.moe_blocks_and_head(x, routing, rng)

    def dense_blocks(self, x: Tensor, rng: np.random.Generator | None = None) -> Tensor:
        """The first layers - moe_layers blocks: plain ViT blocks."""
        for block in self.blocks[: self.config.dense_layers]:
            x = block(x, rng)
        return x

    def moe_blocks_and_head(self, x: Tensor, routing: ImageRouting | None, rng=None) -> ModelOutput:
        """The MoE blocks (all with the same per-image `routing`; token-routed blocks route themselves),
        then the final norm of the class token and the linear head."""
        token_routing = []
        for block in self.blocks[self.config.dense_layers:]:
            x, block_routing = block(x, routing, rng)
            if block_routing is not routing:  # a TokenMoEBlock's own routing of its tokens
                token_routing.append(block_routing)
        cls = self.norm(x[:, 0])  # (B, D): only the class token is classified, so only it is normalised
        return ModelOutput(self.head(cls), routing, token_routing)

    # ----------------------------------------------------------------------------------------------
    def loss(self, output: ModelOutput, labels, label_smoothing: float = 0.0):
        """The training loss and its terms (see `tinymoe.models.losses.model_loss`). `labels` are int
        class indices (B,) or soft targets (B, num_classes), e.g. from mixup/cutmix."""
        return model_loss(output, labels, self.config, self.router, self.class_to_group, label_smoothing=label_smoothing)

    def extra_repr(self) -> str:
        return self.config.describe()


def build_model(config: ModelConfig, seed: int | None = 0, dtype=np.float32) -> VisionTransformer:
    """`VisionTransformer(config, rng=seed, dtype=dtype)`."""
    return VisionTransformer(config, rng=seed, dtype=dtype)


__all__ = ["VisionTransformer", "ModelOutput", "build_model"]
