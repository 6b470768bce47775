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

The study's overrides of the router's decision are not here: `tinymoe.lab.routing` makes them from
outside, on the routing these routers return.

Sparse compute: experts are stored stacked, (E, D, hidden), and each expert runs one matrix product on
exactly the rows routed to it (see `plan_dispatch` below); no expert ever sees a masked-out row.

How a sparse MoE layer runs here (per-image and per-token routing alike):

    1. a router scores each *row* (an image, or a token) against the E experts: probs = softmax(W r);
    2. `top_k` picks each row's k best experts (`experts`, (R, k)) and their gate values;
    3. `plan_dispatch` lists the (row, choice) pairs sorted by expert, so that each expert's rows are one
       contiguous block: `source[i]` is the row read by dispatched row i, `group_sizes[e]` how many
       rows expert e gets. Rows dropped by a capacity limit are simply not listed;
    4. ops.take(x, source) gathers the rows (copies of an image for each of its k experts), the experts
       run as one fused op (`ops.expert_mlp`: one matrix product per expert, never E masked ones), each
       result is scaled by its gate, and ops.scatter_add(y, source) sums each row's k outputs back.

Every step costs O(rows · k), so an image routed to one of ten experts costs what a dense MLP costs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tinymoe import ops
from tinymoe.nn import Module, Parameter, truncated_normal
from tinymoe.ops import expert_mlp, normal_cdf
from tinymoe.tensor import Tensor


# --------------------------------------------------------------------------------------------------
# Choosing experts (not differentiable: the choice is discrete; gradients reach the router through
# the gate values, which are read from the softmax with ops.getitem)
# --------------------------------------------------------------------------------------------------
def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest entries along the last axis, largest first; ties go to the lower index.

    (..., E) -> (..., k) int64. A stable sort of -scores keeps equal scores in index order, so the
    choice is deterministic, which the tests of permutation equivariance rely on.
    """
    if not 1 <= k <= scores.shape[-1]:
        raise ValueError(f"top_k: k={k} must be between 1 and the number of experts {scores.shape[-1]}")
    return np.argsort(-scores, axis=-1, kind="stable")[..., :k].astype(np.int64)


@dataclass(frozen=True)
class Dispatch:
    """Which rows each expert processes, listed expert by expert.

    Attributes:
        source: (M,) the input row each dispatched row reads (an image index, or a flat token index).
        choice: (M,) the position of that (row, choice) pair in the flattened (R, k) gate array, so
            gates.reshape(-1)[choice] lines the gate values up with the dispatched rows.
        group_sizes: (E,) rows per expert; dispatched rows [sum(group_sizes[:e]), ... + group_sizes[e])
            belong to expert e.
        num_rows: R, the number of input rows (the size scatter_add restores).
    """

    source: np.ndarray
    choice: np.ndarray
    group_sizes: np.ndarray
    num_rows: int


def plan_dispatch(experts: np.ndarray, num_experts: int, keep: np.ndarray | None = None) -> Dispatch:
    """Sort the (row, choice) pairs of `experts` (R, k) by expert; drop pairs where `keep` is False."""
    num_rows, k = experts.shape
    flat_expert = experts.reshape(-1)  # (R*k,), row-major: row r's choices are r*k ... r*k + k-1
    choice = np.arange(num_rows * k)
    if keep is not None:
        choice = choice[keep.reshape(-1)]
    # A stable sort keeps the rows of one expert in their original order.
    order = np.argsort(flat_expert[choice], kind="stable")
    choice = choice[order]
    return Dispatch(
        source=choice // k,
        choice=choice,
        group_sizes=np.bincount(flat_expert[choice], minlength=num_experts),
        num_rows=num_rows,
    )


def expert_capacity(tokens_per_group: int, k: int, experts: int, capacity_factor: float) -> int:
    """Most (token, choice) pairs one expert accepts from one group (here: one image).

        capacity = ceil(capacity_factor · k · tokens_per_group / experts)

    With capacity_factor = 1 and perfectly balanced routing, every expert is exactly full. V-MoE
    rounds; we round up, so capacity >= 1 and a factor >= experts / k never drops anything.
    """
    return max(1, math.ceil(capacity_factor * k * tokens_per_group / experts))


def capacity_keep_mask(experts: np.ndarray, num_experts: int, capacity: int) -> np.ndarray:
    """Which (token, choice) pairs fit into their expert's buffer, for `experts` of shape (B, N, k).

    Each image is a group with its own buffers of `capacity` slots per expert. Slots are filled in
    priority order: all tokens' first choices (j = 0) before any second choice, and within one choice
    level, tokens in position order (class token first). This is V-MoE's order without Batch
    Prioritized Routing. Returns a (B, N, k) bool array; False = dropped.
    """
    batch, tokens, k = experts.shape
    b, n, j = np.meshgrid(np.arange(batch), np.arange(tokens), np.arange(k), indexing="ij")
    b, n, j, e = b.ravel(), n.ravel(), j.ravel(), experts.ravel()
    # Sort by image, then expert, then choice level, then token position (np.lexsort: last key first).
    order = np.lexsort((n, j, e, b))
    bucket = b[order] * num_experts + e[order]  # one bucket per (image, expert)
    starts = np.r_[True, bucket[1:] != bucket[:-1]]
    first_of_bucket = np.maximum.accumulate(np.where(starts, np.arange(order.size), 0))
    slot = np.empty(order.size, dtype=np.int64)
    slot[order] = np.arange(order.size) - first_of_bucket  # 0, 1, 2, ... within each bucket
    return (slot < capacity).reshape(batch, tokens, k)


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

        One fused op (`tinymoe.ops.expert_mlp`: gather, two grouped linear maps with GELU, gate, scatter
        back; NumPy reference and Numba kernels in `tinymoe.kernels.expert`); the dropout mask multiplies
        its GELU activations.
        """
        mask = None
        if dropout > 0.0:
            if rng is None:
                raise ValueError("ExpertMlps: expert dropout needs a np.random.Generator (rng=)")
            rows = int(dispatch.source.size)
            shape = (rows,) + tuple(x.shape[1:-1]) + (self.hidden,)  # (M, ..., hidden): one draw per activation
            keep = rng.random(shape, dtype=np.float32) >= dropout
            mask = keep.astype(x.dtype) * x.dtype.type(1.0 / (1.0 - dropout))
        g = ops.take(gates, dispatch.choice, axis=0)  # (M,): the gate of each dispatched row
        return expert_mlp(x, g, dispatch.source, dispatch.group_sizes, self.fc1_weight, self.fc1_bias,
                          self.fc2_weight, self.fc2_bias, hidden_mask=mask)

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
    """Mobile V-MoE's router: probs = softmax(r W) for one representation r per image; W is (D, E), no bias.

    The routing variants are subclasses, chosen by name (`ROUTERS`, `ModelConfig.routing`); they route
    alike and differ only in what the router learns from (`aux_loss`)."""

    per_token = False  # one decision per image, shared by every MoE block
    needs_superclasses = False  # whether training needs a class -> superclass map (set_class_to_group)

    def __init__(self, dim: int, experts: int, k: int, router_input: str, rng: np.random.Generator, dtype=np.float32):
        super().__init__()
        self.k, self.router_input = k, router_input
        self.weight = Parameter(truncated_normal(rng, (dim, experts), dtype=dtype))  # (D, E)

    def forward(self, x: Tensor) -> ImageRouting:
        """x: (B, N, D), the tokens after the last dense block (class token first)."""
        if self.router_input == "class_token":
            r = x[:, 0]  # (B, D)
        else:  # "mean_tokens": the mean of the patch tokens (the class token left out)
            r = ops.mean(x[:, 1:], axis=1)  # (B, D)
        logits = ops.linear(r, self.weight)  # (B, E)
        probs = ops.softmax(logits, axis=-1)
        experts = top_k(logits.data, self.k)  # (B, k), best first; logits order = probs order
        return route_images(logits, probs, experts)

    def aux_loss(self, routing: ImageRouting, labels: np.ndarray, class_to_group) -> Tensor | None:
        """The router's own loss term (unweighted), or None: the `learned` router learns only through the gates."""
        return None

    @staticmethod
    def own_groups(config) -> np.ndarray | None:
        """A class -> group map the router brings itself (None: it is given one, or needs none)."""
        return None


def route_images(logits: Tensor, probs: Tensor, experts: np.ndarray, ranked: np.ndarray | None = None) -> ImageRouting:
    """The ImageRouting of `experts` (B, k) chosen from `probs`: gates = the probabilities of `ranked`
    (default: the chosen experts themselves), a differentiable read that lets the router learn."""
    ranked = experts if ranked is None else ranked
    gates = probs[np.arange(experts.shape[0])[:, None], ranked]  # (B, k), differentiable: reaches the router
    dispatch = plan_dispatch(experts, probs.shape[-1])
    return ImageRouting(logits, probs, experts, gates, dispatch.group_sizes, dispatch)


class LearnedRouter(ImageRouter):
    """routing="learned": the per-image router trained only through the gates (the paper's ablation)."""


class SuperclassRouter(ImageRouter):
    """routing="superclass", the paper's: the router is also trained to predict the image's superclass,
    loss += router_weight · CE(router_logits, class_to_group[label])."""

    needs_superclasses = True

    def aux_loss(self, routing: ImageRouting, labels: np.ndarray, class_to_group) -> Tensor:
        groups = np.asarray(class_to_group)
        if labels.ndim == 1:
            targets = groups[labels]  # (B,) the superclass of each image
        else:  # soft targets (B, C) -> their mass per superclass (B, E)
            num_classes, experts = groups.size, routing.probs.shape[-1]
            membership = np.zeros((num_classes, experts), dtype=labels.dtype)  # G (C, E)
            membership[np.arange(num_classes), groups] = 1
            targets = labels @ membership
        return ops.cross_entropy(routing.router_logits, targets)


class RandomGroupRouter(SuperclassRouter):
    """routing="random": as superclass, but the targets are a fixed, random, balanced class -> group map
    (`random_class_groups`, seeded by config.random_groups_seed): routing without meaningful groups."""

    needs_superclasses = False  # it brings its own map (own_groups)

    @staticmethod
    def own_groups(config) -> np.ndarray:
        return random_class_groups(config.num_classes, config.experts, config.random_groups_seed)


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
    """routing="token", V-MoE's router: noisy top-k over experts for every token, W (D, E) without bias.
    It lives in its own block (`TokenMoEBlock`), one per MoE layer; its loss is the balance term."""

    per_token = True  # every MoE block routes each token itself
    needs_superclasses = False
    own_groups = ImageRouter.own_groups  # none

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


# The routing variants by name (ModelConfig.routing): the router class decides everything that differs.
ROUTERS = {"superclass": SuperclassRouter, "learned": LearnedRouter, "random": RandomGroupRouter, "token": TokenRouter}


def router_class(config) -> type:
    """The router class of a config's routing variant."""
    return ROUTERS[config.routing]


__all__ = [
    "ROUTERS",
    "router_class",
    "route_images",
    "LearnedRouter",
    "SuperclassRouter",
    "RandomGroupRouter",
    "ExpertMlps",
    "ImageRouter",
    "ImageRouting",
    "TokenRouter",
    "TokenRouting",
    "random_class_groups",
    "cv_squared",
    "importance_loss",
    "load_loss",
]
