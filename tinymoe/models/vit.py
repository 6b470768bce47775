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

Every block is pre-norm, as in ViT: x = x + Attention(LayerNorm(x)); x = x + MLP(LayerNorm(x)), so the
residual stream x is never normalised itself and gradients reach early blocks unchanged; an MoE block
replaces the MLP by the gated sum of its chosen experts. All activations are (B, N, D): batch, tokens,
width. Stochastic depth (Huang et al. 2016; "drop path" in timm and DeiT): in training, each residual
branch is dropped for a random subset of the images, x = x + keep_b / (1 - rate) · branch(x), keep_b ~
Bernoulli(1 - rate) per image b, so the expected update equals the branch and eval mode (no dropping,
no scaling) computes exactly that expectation.
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

Parameters (`model.state_dict()` names): every weight is stored (in, out), so x @ W (PyTorch and timm
store (out, in): a transpose); the patch embedding is (p·p·c, D) with rows ordered (row in patch,
column in patch, channel); experts are stacked, blocks.{i}.experts.fc1_weight (E, D, H) etc. The table
of every name, shape and layout, with its timm equivalent, is in `tinymoe/exported.py` (one table, the
one the export is tested against).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tinymoe import ops
from tinymoe.models.config import ModelConfig
from tinymoe.models.losses import model_loss
from tinymoe.models.moe import (
    ExpertMlps, ImageRouter, ImageRouting, TokenRouter, TokenRouting, router_class,
)
from tinymoe.nn import LayerNorm, Linear, Module, ModuleList, Parameter, truncated_normal
from tinymoe.tensor import Tensor


# --------------------------------------------------------------------------------------------------
# The dense pieces: attention, MLP, pre-norm block (and stochastic depth)
# --------------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------------
# The MoE-ViT block
# --------------------------------------------------------------------------------------------------
class MoEBlock(Module):
    """A pre-norm block whose MLP is a mixture of E expert MLPs (attention and norms shared):

        x = x + Attention(LayerNorm(x))
        x = x + sum over the chosen experts e of gate_e · Expert_e(LayerNorm(x))

    Per-image routing: the experts and gates come from outside (`ImageRouting`, one decision per image,
    made once by the model's router and reused by every MoE block).
    """

    def __init__(self, dim: int, heads: int, hidden: int, experts: int, eps: float, rng: np.random.Generator,
                 dtype=np.float32, drop_rate: float = 0.0, expert_dropout: float = 0.0):
        super().__init__()
        self.norm1 = LayerNorm(dim, eps=eps, dtype=dtype)
        self.attn = Attention(dim, heads, rng=rng, dtype=dtype)
        self.norm2 = LayerNorm(dim, eps=eps, dtype=dtype)
        self.experts = ExpertMlps(experts, dim, hidden, rng=rng, dtype=dtype)
        self.drop_rate = float(drop_rate)  # stochastic depth of both residual branches (training only)
        self.expert_dropout = float(expert_dropout)  # dropout inside the experts (training only)

    def _expert_dropout(self) -> float:
        return self.expert_dropout if self.training else 0.0

    def forward(self, x: Tensor, routing: ImageRouting, rng: np.random.Generator | None = None):
        """Every token of image b goes to the experts routing.experts[b]. Returns (x, routing).
        `rng` draws the stochastic-depth and expert-dropout masks (training only)."""
        x = x + drop_path(self.attn(self.norm1(x)), self.drop_rate, self.training, rng)
        h = self.norm2(x)  # (B, N, D); rows = images, each carrying all N tokens
        gates = ops.reshape(routing.gates, (-1,))  # (B·k,)
        y = self.experts(h, routing.dispatch, gates, self._expert_dropout(), rng)
        return x + drop_path(y, self.drop_rate, self.training, rng), routing


class TokenMoEBlock(MoEBlock):
    """Regular V-MoE's MoE block: its own `TokenRouter` sends each token to its top-k experts, within
    capacity (capacity_factor in training, eval_capacity_factor in eval mode), with router noise of
    std router_noise / E in training (V-MoE: sigma = 1/E)."""

    def __init__(self, dim: int, heads: int, hidden: int, experts: int, eps: float, rng: np.random.Generator,
                 dtype=np.float32, drop_rate: float = 0.0, expert_dropout: float = 0.0, *, k: int = 1,
                 capacity_factor: float = 1.25, eval_capacity_factor: float = 2.0, router_noise: float = 1.0):
        super().__init__(dim, heads, hidden, experts, eps, rng, dtype, drop_rate, expert_dropout)
        self.router = TokenRouter(dim, experts, rng=rng, dtype=dtype)
        self.k, self.capacity_factor, self.eval_capacity_factor = k, capacity_factor, eval_capacity_factor
        self.router_noise = router_noise

    def forward(self, x: Tensor, routing=None, rng: np.random.Generator | None = None):
        """Each token goes to its own top-k experts, within capacity. Returns (x, this block's TokenRouting)."""
        x = x + drop_path(self.attn(self.norm1(x)), self.drop_rate, self.training, rng)
        h = self.norm2(x)  # (B, N, D)
        batch, tokens, dim = h.shape
        cf = self.capacity_factor if self.training else self.eval_capacity_factor
        noise_std = self.router_noise / self.router.experts if self.training else 0.0
        routing, dispatch = self.router(h, self.k, cf, noise_std, rng)
        rows = ops.reshape(h, (batch * tokens, dim))  # rows = tokens
        y = self.experts(rows, dispatch, ops.reshape(routing.gates, (-1,)), self._expert_dropout(), rng)  # (B·N, D)
        return x + drop_path(ops.reshape(y, (batch, tokens, dim)), self.drop_rate, self.training, rng), routing


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
        # class -> expert group, the router's target: set by set_class_to_group for "superclass", brought
        # by the router itself for "random" (a fixed random map, seeded by config.random_groups_seed).
        # A buffer once set (saved in state_dict and checkpoints, copied to replicas, never trained).
        self.class_to_group: np.ndarray | None = None
        if c.is_moe and (groups := router.own_groups(c)) is not None:
            self.set_class_to_group(groups)

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
        self.register_buffer("class_to_group", mapping.astype(np.int64))

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
