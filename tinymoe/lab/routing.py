"""Overriding the router's decision, for the study: teacher forcing and oracle routing.

The model's forward pass takes images only (tinymoe/models/vit.py). These functions run the same model
in its three public steps, changing only the decision in between:

    x = model.embed(images); x = model.dense_blocks(x, rng)
    routing = forced_routing(model.router(x), first_choice, gates_from)      # <- the override
    out = model.moe_blocks_and_head(x, routing, rng)

Teacher forcing (training): each image goes to the expert of its TRUE superclass instead of the router's
top choice (for k > 1 the remaining k - 1 experts are the router's best others). The gate is still the
router's softmax probability of that expert (gates_from="choice"), so the router keeps learning through
the gate and its superclass loss, and every expert trains only on its own superclass. In eval mode the
router decides, as always.

Oracle routing (evaluation, `tinymoe.evaluation.evaluate(..., oracle=True)` via `predict_with_experts`): each image goes to its true
superclass's expert, gated by the router's top-k probabilities (gates_from="router"), the confidence it
gave its own picks, so a forced expert's output keeps the scale the experts were trained at.
"""

from __future__ import annotations

import numpy as np

from tinymoe.data.augment import dominant_labels
from tinymoe.models.moe import ImageRouting, route_images, top_k
from tinymoe.tensor import Tensor


def forced_routing(routing: ImageRouting, first_choice: np.ndarray, gates_from: str = "choice") -> ImageRouting:
    """The router's `routing` (B images) with each image's first expert replaced by first_choice[b].

    gates_from: "choice" (teacher forcing): each chosen expert's gate is its own probability, so the router
    learns through it. "router" (oracle): the chosen experts get the router's own top-k probabilities."""
    if gates_from not in ("choice", "router"):
        raise ValueError(f"forced_routing: gates_from must be 'choice' or 'router', got {gates_from!r}")
    logits, probs = routing.router_logits, routing.probs
    batch, num_experts = probs.shape
    k = routing.experts.shape[1]
    forced = np.asarray(first_choice, dtype=np.int64)
    if forced.shape != (batch,) or forced.min(initial=0) < 0 or forced.max(initial=0) >= num_experts:
        raise ValueError(f"forced_routing: first_choice must be {batch} experts in [0, {num_experts}), got {forced!r}")
    ranking = top_k(logits.data, num_experts)  # (B, E): every expert, best first
    others = ranking[ranking != forced[:, None]].reshape(batch, num_experts - 1)  # (B, E-1), order kept
    experts = np.concatenate([forced[:, None], others[:, : k - 1]], axis=1)  # (B, k)
    return route_images(logits, probs, experts, ranked=experts if gates_from == "choice" else ranking[:, :k])


def _require_image_router(model) -> None:
    if model.router is None:
        what = "a dense model" if not model.config.is_moe else "routing='token' (one choice per token, not per image)"
        raise ValueError(f"choosing each image's expert needs per-image routing; this is {what}")


def forward_with_experts(model, images, first_choice, gates_from: str = "router", rng=None):
    """The model's forward pass with each image's first expert chosen by the caller (per-image routing)."""
    _require_image_router(model)
    rng = model.rng if rng is None else rng
    x = model.dense_blocks(model.embed(images), rng)
    routing = forced_routing(model.router(x), first_choice, gates_from)
    return model.moe_blocks_and_head(x, routing, rng)


def teacher_forced_forward(model, x, targets, rng):
    """A `Trainer(forward=...)` for teacher forcing: in training, route each image by its label's
    superclass (under mixup/cutmix, the dominant label's); in eval mode, the router decides."""
    if not model.training:
        return model(x, rng=rng)
    _require_image_router(model)
    if model.class_to_group is None:
        raise ValueError("teacher forcing needs the class -> superclass map: call model.set_class_to_group(groups)")
    labels = dominant_labels(targets.data if isinstance(targets, Tensor) else np.asarray(targets))
    return forward_with_experts(model, x, model.class_to_group[labels], gates_from="choice", rng=rng)


__all__ = ["forced_routing", "forward_with_experts", "teacher_forced_forward"]
