"""Mixture-of-experts layers: the per-image router of Mobile V-MoE, V-MoE's per-token router, the
expert MLPs, and the MoE-ViT block.

Routing variants (`ModelConfig.routing`), so a course can compare them on the same code (the paper's
ablation, Fig. 3e):

  superclass  Mobile V-MoE. One router per image reads the image's representation after the last dense
              block (the class token by default; `router_input="mean_tokens"` uses the mean of the patch
              tokens instead) and computes probs = softmax(r W_router) over the E experts. The image's top-k
              experts process ALL its tokens in EVERY MoE block (one decision per image, reused by each
              block). The router is also trained to predict the image's superclass:
                  loss = CE(logits, label) + router_weight · CE(router_logits, superclass[label])
  learned     the same per-image router, trained only through the gates (no superclass loss).
  random      like superclass, but against a fixed random, balanced class -> group map (seeded).
  token       regular V-MoE (Riquelme et al. 2021): a router in every MoE block, top-k experts per
              *token*, noisy top-k in training, importance + load auxiliary losses, and expert capacity
              (dropped tokens get zero from the MoE, so only the residual passes them on).

Gates: an expert's output is multiplied by its softmax probability, NOT renormalised over the top-k.
With k = 1 renormalising would make every gate 1 and cut the router off from the classification loss
(the only signal a `learned` router has); V-MoE does not renormalise either.

Teacher forcing (`ModelConfig.teacher_forcing`, per-image routing with superclass targets, training
only): each image goes to the expert of its TRUE superclass instead of the router's top choice (for
k > 1, the remaining k - 1 experts are the router's best others). The gate is still the router's
softmax probability of that expert, so the router keeps learning through the gate and its superclass
loss, and every expert trains only on its own superclass. In eval mode the router decides, as always.

Sparse compute: experts are stored stacked, (E, D, hidden), and each expert runs one matrix product on
exactly the rows routed to it (see `tinymoe.models.routing`); no expert ever sees a masked-out row.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tinymoe import ops
from tinymoe.models.layers import Attention, drop_path
from tinymoe.models.routing import (
    Dispatch,
    capacity_keep_mask,
    expert_capacity,
    expert_linear,
    normal_cdf,
    plan_dispatch,
    top_k,
)
from tinymoe.nn import LayerNorm, Module, Parameter, truncated_normal
from tinymoe.ops.expert import expert_mlp
from tinymoe.tensor import Tensor


def random_class_groups(num_classes: int, groups: int, seed: int) -> np.ndarray:
    """A random, balanced class -> group map: shuffle the classes, deal them round-robin to the groups.

    Group sizes differ by at most one (200 classes, 10 groups: 20 each). Used by routing="random".
    """
    perm = np.random.default_rng(seed).permutation(num_classes)
    groups_of = np.empty(num_classes, dtype=np.int64)
    groups_of[perm] = np.arange(num_classes) % groups
    return groups_of


# --------------------------------------------------------------------------------------------------
# The experts
# --------------------------------------------------------------------------------------------------
class ExpertMlps(Module):
    """E independent GELU MLPs (D -> hidden -> D), stored stacked so each is one slice.

    Parameters: fc1_weight (E, D, hidden), fc1_bias (E, hidden), fc2_weight (E, hidden, D), fc2_bias (E, D).
    Each expert is initialised like a dense MLP (truncated normal, std 0.02; zero biases).
    """

    def __init__(self, experts: int, dim: int, hidden: int, rng: np.random.Generator, dtype=np.float32):
        super().__init__()
        self.experts, self.dim, self.hidden = experts, dim, hidden
        self.fc1_weight = Parameter(truncated_normal(rng, (experts, dim, hidden), dtype=dtype))
        self.fc1_bias = Parameter(np.zeros((experts, hidden), dtype=dtype))
        self.fc2_weight = Parameter(truncated_normal(rng, (experts, hidden, dim), dtype=dtype))
        self.fc2_bias = Parameter(np.zeros((experts, dim), dtype=dtype))

    def forward(
        self, x: Tensor, dispatch: Dispatch, gates: Tensor, dropout: float = 0.0, rng: np.random.Generator | None = None
    ) -> Tensor:
        """Run the routed rows through their experts and sum each row's gated outputs.

        Args:
            x: (R, ..., D) rows (images (R=B, N, D), or tokens (R=B·N, D)).
            dispatch: which rows go to which expert (from `plan_dispatch`).
            gates: (R·k,) the gate of every (row, choice) pair, row-major.
            dropout: p > 0 drops each hidden activation of the experts with probability p and scales the
                rest by 1 / (1 - p) (inverted dropout; the caller passes 0 in eval mode). Draws from `rng`.
        Returns (R, ..., D): for row r, sum over its kept choices j of gate[r, j] · expert_{e(r,j)}(x[r]);
        zero for a row all of whose choices were dropped.

        One fused op (`tinymoe.ops.expert.expert_mlp`, Numba kernels); `forward_composed` below is the
        same computation spelled out in primitive ops, step by step, and the tests hold the two equal.
        The fused op has no place for a dropout mask, so with dropout the composed version runs.
        """
        if dropout > 0.0:
            if rng is None:
                raise ValueError("ExpertMlps: expert dropout needs a np.random.Generator (rng=)")
            rows = int(dispatch.source.size)
            shape = (rows,) + tuple(x.shape[1:-1]) + (self.hidden,)  # (M, ..., hidden): one draw per activation
            keep = rng.random(shape, dtype=np.float32) >= dropout
            mask = keep.astype(x.dtype) * x.dtype.type(1.0 / (1.0 - dropout))
            return self.forward_composed(x, dispatch, gates, hidden_mask=mask)
        g = ops.take(gates, dispatch.choice, axis=0)  # (M,): the gate of each dispatched row
        return expert_mlp(
            x, g, dispatch.source, dispatch.group_sizes, self.fc1_weight, self.fc1_bias, self.fc2_weight, self.fc2_bias
        )

    def forward_composed(
        self, x: Tensor, dispatch: Dispatch, gates: Tensor, hidden_mask: np.ndarray | None = None
    ) -> Tensor:
        """`forward` from primitive ops: gather, two grouped linear maps with GELU, gate, scatter back.

        `hidden_mask` (M, ..., hidden), if given, multiplies the GELU activations (the dropout mask, already
        scaled by 1 / (1 - p); a constant, so gradients flow only through the kept activations).
        """
        xs = ops.take(x, dispatch.source, axis=0)  # (M, ..., D): each expert's rows, expert by expert
        h = ops.gelu(expert_linear(xs, self.fc1_weight, self.fc1_bias, dispatch.group_sizes))  # (M, ..., hidden)
        if hidden_mask is not None:
            if hidden_mask.shape != h.shape:
                raise ValueError(
                    f"ExpertMlps: hidden_mask has shape {hidden_mask.shape}, the hidden activations {h.shape}"
                )
            h = h * hidden_mask
        y = expert_linear(h, self.fc2_weight, self.fc2_bias, dispatch.group_sizes)  # (M, ..., D)
        g = ops.take(gates, dispatch.choice, axis=0)  # (M,): the gate of each dispatched row
        y = y * ops.reshape(g, g.shape + (1,) * (y.ndim - 1))  # (M, 1, ..., 1) broadcasts over tokens/width
        return ops.scatter_add(y, dispatch.source, size=dispatch.num_rows, axis=0)  # (R, ..., D)

    def extra_repr(self) -> str:
        return f"experts={self.experts}, dim={self.dim}, hidden={self.hidden}"


# --------------------------------------------------------------------------------------------------
# Per-image routing (superclass, learned, random)
# --------------------------------------------------------------------------------------------------
@dataclass
class ImageRouting:
    """One routing decision per image, shared by every MoE block.

    Attributes:
        router_logits: (B, E) Tensor, r W_router.
        probs: (B, E) Tensor, softmax of the logits.
        experts: (B, k) int64, each image's experts, best first.
        gates: (B, k) Tensor, probs of those experts (what their outputs are multiplied by).
        counts: (E,) int64, how many images each expert received (over all k choices).
        dispatch: the dispatch plan of the images (rows = images).
    """

    router_logits: Tensor
    probs: Tensor
    experts: np.ndarray
    gates: Tensor
    counts: np.ndarray
    dispatch: Dispatch


class ImageRouter(Module):
    """Mobile V-MoE's router: probs = softmax(r W) for one representation r per image; W is (D, E), no bias."""

    def __init__(self, dim: int, experts: int, k: int, router_input: str, rng: np.random.Generator, dtype=np.float32):
        super().__init__()
        self.k, self.router_input = k, router_input
        self.weight = Parameter(truncated_normal(rng, (dim, experts), dtype=dtype))  # (D, E)

    def forward(self, x: Tensor, forced: np.ndarray | None = None, gates_from: str = "choice") -> ImageRouting:
        """x: (B, N, D), the tokens after the last dense block (class token first).

        forced: optional (B,) experts that must be each image's first choice (teacher forcing); the
        other k - 1 choices are the router's best remaining experts.
        gates_from: "choice" (training, teacher forcing): each chosen expert's gate is its own probability,
        so the router learns through it. "router" (analysis, e.g. the oracle): the chosen experts get the
        router's top-k probabilities, the confidence it gave its own picks, so a forced expert's output
        keeps the scale the experts were trained at instead of being shrunk by a low probability.
        """
        if gates_from not in ("choice", "router"):
            raise ValueError(f"ImageRouter: gates_from must be 'choice' or 'router', got {gates_from!r}")
        if self.router_input == "class_token":
            r = x[:, 0]  # (B, D)
        else:  # "mean_tokens": the mean of the patch tokens (the class token left out)
            r = ops.mean(x[:, 1:], axis=1)  # (B, D)
        logits = ops.linear(r, self.weight)  # (B, E)
        probs = ops.softmax(logits, axis=-1)
        batch = x.shape[0]
        if forced is None:
            experts = top_k(logits.data, self.k)  # (B, k), best first; logits order = probs order
            own = experts
        else:
            forced = np.asarray(forced, dtype=np.int64)
            num_experts = logits.shape[-1]
            if forced.shape != (batch,) or forced.min(initial=0) < 0 or forced.max(initial=0) >= num_experts:
                raise ValueError(f"ImageRouter: forced must be {batch} experts in [0, {num_experts}), got {forced!r}")
            ranking = top_k(logits.data, num_experts)  # (B, E): every expert, best first
            own = ranking[:, : self.k]  # (B, k): the router's own picks
            others = ranking[ranking != forced[:, None]].reshape(batch, num_experts - 1)  # (B, E-1), order kept
            experts = np.concatenate([forced[:, None], others[:, : self.k - 1]], axis=1)  # (B, k)
        ranked = experts if gates_from == "choice" else own  # whose probabilities gate the chosen experts
        gates = probs[np.arange(batch)[:, None], ranked]  # (B, k), differentiable: reaches the router
        dispatch = plan_dispatch(experts, probs.shape[-1])
        return ImageRouting(logits, probs, experts, gates, dispatch.group_sizes, dispatch)


# --------------------------------------------------------------------------------------------------
# Per-token routing (regular V-MoE)
# --------------------------------------------------------------------------------------------------
@dataclass
class TokenRouting:
    """The routing of one MoE block under routing="token".

    Attributes:
        router_logits: (B, N, E) Tensor, x W_router (before noise).
        probs: (B, N, E) Tensor, softmax(router_logits + noise) (noise is 0 in eval mode).
        noise: (B, N, E) the noise that was added (zeros in eval mode or with router_noise=0).
        experts: (B, N, k) int64 each token's experts, best first.
        gates: (B, N, k) Tensor, probs of those experts.
        kept: (B, N, k) bool, False where the expert was full and the (token, choice) pair was dropped.
        capacity: slots per expert per image.
        counts: (E,) int64 kept (token, choice) pairs per expert, over the batch.
        importance_loss, load_loss: scalar Tensors (load_loss is None without noise; see below).
    """

    router_logits: Tensor
    probs: Tensor
    noise: np.ndarray
    experts: np.ndarray
    gates: Tensor
    kept: np.ndarray
    capacity: int
    counts: np.ndarray
    importance_loss: Tensor
    load_loss: Tensor | None

    @property
    def dropped_fraction(self) -> float:
        """Fraction of (token, choice) pairs dropped for lack of capacity."""
        return float(1.0 - self.kept.mean())

    @property
    def dropped_tokens(self) -> float:
        """Fraction of tokens all of whose choices were dropped (only the residual carries them on)."""
        return float((~self.kept.any(axis=-1)).mean())


def cv_squared(values: Tensor) -> Tensor:
    """Squared coefficient of variation along the last axis, (std / mean)^2 with the population std.

    0 when all entries are equal; E - 1 when one entry holds everything (for E entries).
    """
    mean = ops.mean(values, axis=-1, keepdims=True)
    variance = ops.mean((values - mean) * (values - mean), axis=-1)
    return variance / ops.reshape(mean * mean, variance.shape)


def importance_loss(probs: Tensor) -> Tensor:
    """V-MoE's importance loss for probs (B, N, E), each image a group of N tokens:

        Imp_e(image) = sum over its tokens x of softmax(W x + noise)_e        (B, E)
        L_imp        = mean over images of  (std_e(Imp) / mean_e(Imp))^2

    It is small when every expert receives the same total gate weight.
    """
    return ops.mean(cv_squared(ops.sum(probs, axis=1)))


def load_loss(router_logits: Tensor, noisy_logits: Tensor, experts: np.ndarray, noise_std: float) -> Tensor:
    """V-MoE's load loss (Riquelme et al. 2021, Appendix A), for (B, N, E) logits:

        threshold(x) = the k-th largest noisy logit of token x            (the bar to be selected)
        p_e(x)       = P(logit_e(x) + fresh noise >= threshold(x))
                     = 1 - Φ((threshold(x) - logit_e(x)) / σ) = Φ((logit_e(x) - threshold(x)) / σ)
        Load_e       = sum over the image's tokens of p_e(x)               (B, E)
        L_load       = mean over images of  (std_e(Load) / mean_e(Load))^2

    p is smooth in the router weights, unlike the hard count of tokens per expert it estimates; it is
    only defined with noise (σ > 0). As in V-MoE, the threshold is read from the noisy logits
    (gradient flows through it too), and Load is a mean rather than a sum (the ratio is the same).
    """
    batch, tokens, _ = router_logits.shape
    kth = experts[..., -1]  # (B, N): index of each token's k-th choice
    threshold = noisy_logits[np.arange(batch)[:, None], np.arange(tokens)[None, :], kth]  # (B, N)
    z = (router_logits - ops.reshape(threshold, (batch, tokens, 1))) * (1.0 / noise_std)  # (B, N, E)
    p = normal_cdf(z)
    return ops.mean(cv_squared(ops.mean(p, axis=1)))


class TokenRouter(Module):
    """V-MoE's router: noisy top-k over experts for every token, W (D, E) without bias."""

    def __init__(self, dim: int, experts: int, rng: np.random.Generator, dtype=np.float32):
        super().__init__()
        self.experts = experts
        self.weight = Parameter(truncated_normal(rng, (dim, experts), dtype=dtype))  # (D, E)

    def forward(
        self, h: Tensor, k: int, capacity_factor: float, noise_std: float, rng: np.random.Generator | None
    ) -> tuple[TokenRouting, Dispatch]:
        """Route the tokens h (B, N, D). `noise_std` > 0 adds N(0, noise_std^2) noise (training only)."""
        batch, tokens, _ = h.shape
        logits = ops.linear(h, self.weight)  # (B, N, E)
        if noise_std > 0:
            noise = (noise_std * rng.standard_normal(logits.shape)).astype(logits.dtype)
            noisy = logits + noise
        else:
            noise = np.zeros(logits.shape, dtype=logits.dtype)
            noisy = logits
        probs = ops.softmax(noisy, axis=-1)  # (B, N, E)
        experts = top_k(noisy.data, k)  # (B, N, k)
        b_idx, n_idx = np.arange(batch)[:, None, None], np.arange(tokens)[None, :, None]
        gates = probs[b_idx, n_idx, experts]  # (B, N, k)

        capacity = expert_capacity(tokens, k, self.experts, capacity_factor)
        kept = capacity_keep_mask(experts, self.experts, capacity)  # (B, N, k)
        dispatch = plan_dispatch(experts.reshape(batch * tokens, k), self.experts, kept.reshape(batch * tokens, k))
        routing = TokenRouting(
            router_logits=logits,
            probs=probs,
            noise=noise,
            experts=experts,
            gates=gates,
            kept=kept,
            capacity=capacity,
            counts=dispatch.group_sizes,
            importance_loss=importance_loss(probs),
            load_loss=load_loss(logits, noisy, experts, noise_std) if noise_std > 0 else None,
        )
        return routing, dispatch


# --------------------------------------------------------------------------------------------------
# The MoE-ViT block
# --------------------------------------------------------------------------------------------------
class MoEBlock(Module):
    """A pre-norm block whose MLP is a mixture of E expert MLPs (attention and norms shared):

        x = x + Attention(LayerNorm(x))
        x = x + sum over the chosen experts e of gate_e · Expert_e(LayerNorm(x))

    With per-image routing the experts and gates come from outside (`ImageRouting`, one decision per
    image for all MoE blocks); with token routing the block has its own `router`.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        hidden: int,
        experts: int,
        eps: float,
        token_routing: bool,
        rng: np.random.Generator,
        dtype=np.float32,
        drop_rate: float = 0.0,
        expert_dropout: float = 0.0,
    ):
        super().__init__()
        self.norm1 = LayerNorm(dim, eps=eps, dtype=dtype)
        self.attn = Attention(dim, heads, rng=rng, dtype=dtype)
        self.norm2 = LayerNorm(dim, eps=eps, dtype=dtype)
        self.experts = ExpertMlps(experts, dim, hidden, rng=rng, dtype=dtype)
        if token_routing:
            self.router = TokenRouter(dim, experts, rng=rng, dtype=dtype)
        self.drop_rate = float(drop_rate)  # stochastic depth of both residual branches (training only)
        self.expert_dropout = float(expert_dropout)  # dropout inside the experts (training only)

    def _expert_dropout(self) -> float:
        return self.expert_dropout if self.training else 0.0

    def forward(self, x: Tensor, routing: ImageRouting, rng: np.random.Generator | None = None) -> Tensor:
        """Per-image routing: every token of image b goes to the experts routing.experts[b].
        `rng` draws the stochastic-depth and expert-dropout masks (training only)."""
        x = x + drop_path(self.attn(self.norm1(x)), self.drop_rate, self.training, rng)
        h = self.norm2(x)  # (B, N, D); rows = images, each carrying all N tokens
        gates = ops.reshape(routing.gates, (-1,))  # (B·k,)
        y = self.experts(h, routing.dispatch, gates, self._expert_dropout(), rng)
        return x + drop_path(y, self.drop_rate, self.training, rng)

    def forward_token_routed(
        self, x: Tensor, k: int, capacity_factor: float, noise_std: float, rng: np.random.Generator | None
    ) -> tuple[Tensor, TokenRouting]:
        """Token routing: each token goes to its own top-k experts, within capacity."""
        x = x + drop_path(self.attn(self.norm1(x)), self.drop_rate, self.training, rng)
        h = self.norm2(x)  # (B, N, D)
        batch, tokens, dim = h.shape
        routing, dispatch = self.router(h, k, capacity_factor, noise_std, rng)
        rows = ops.reshape(h, (batch * tokens, dim))  # rows = tokens
        y = self.experts(rows, dispatch, ops.reshape(routing.gates, (-1,)), self._expert_dropout(), rng)  # (B·N, D)
        return x + drop_path(ops.reshape(y, (batch, tokens, dim)), self.drop_rate, self.training, rng), routing


__all__ = [
    "ExpertMlps",
    "ImageRouter",
    "ImageRouting",
    "TokenRouter",
    "TokenRouting",
    "MoEBlock",
    "random_class_groups",
    "cv_squared",
    "importance_loss",
    "load_loss",
]
