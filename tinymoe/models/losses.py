"""The training loss of every model variant, with each term kept apart for logging.

    total = CE(logits, labels; label_smoothing)                                       every model
          + router_weight  · CE(router_logits, class_to_group[labels])               superclass, random
          + balance_weight · Σ_MoE blocks ½ (importance_loss + load_loss)            token

(`learned` routing has no extra term: its router learns only through the gates.) The router's
cross-entropy uses no label smoothing: its targets are the superclasses, a different task. The load
loss needs router noise (it is the probability of winning under re-drawn noise), so in eval mode or
with router_noise=0 a block's balance term is its importance loss alone.

Soft targets (mixup / cutmix): `labels` may be float class probabilities t (B, C) instead of int labels.
The classification term is then CE(logits, (1 - s) t + s / C), label smoothing applied to the mixed
target. The router's target is the same mixture carried over to superclasses, t_E = t · G with
G[c, e] = 1 if class c belongs to superclass e: an image that is 70% class a and 30% class b asks the
router for 70% superclass(a) and 30% superclass(b) (the two add up when a and b share a superclass).
That is the choice that keeps the router's task consistent with the classifier's under mixing; the
alternative, the dominant label's superclass, would ask for a hard answer about an image that is
visibly two images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tinymoe import ops
from tinymoe.models.config import ModelConfig
from tinymoe.tensor import Tensor


@dataclass
class LossTerms:
    """total is the Tensor to call backward() on; the other fields are plain floats for logging
    (None when the term does not apply to this model). `router`, `importance` and `load` are the
    unweighted terms; `balance` is the weighted sum that was added to the total."""

    total: Tensor
    classification: float
    router: float | None = None
    importance: float | None = None
    load: float | None = None
    balance: float | None = None

    def as_dict(self) -> dict[str, float]:
        out = {"loss": float(self.total.item()), "loss_classification": self.classification}
        for name in ("router", "importance", "load", "balance"):
            value = getattr(self, name)
            if value is not None:
                out[f"loss_{name}"] = value
        return out


def _labels(labels, batch: int, num_classes: int) -> np.ndarray:
    labels = np.asarray(labels.data if isinstance(labels, Tensor) else labels)
    if labels.dtype.kind == "f":  # soft targets (B, C): cross_entropy checks their shape and values
        if labels.shape != (batch, num_classes):
            raise ValueError(
                f"soft targets must have shape (batch, classes) = ({batch}, {num_classes}), got {labels.shape}"
            )
        return labels
    if labels.shape != (batch,) or labels.dtype.kind not in "iu":
        raise ValueError(f"labels must be {batch} integer class indices (one per image), got shape {labels.shape} "
                         f"and dtype {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got values from {labels.min()} to {labels.max()}")
    return labels


def model_loss(output, labels, config: ModelConfig, router=None, class_to_group=None,
               label_smoothing: float = 0.0) -> LossTerms:
    """The loss of one batch (see the module docstring). `output` is a ModelOutput; `router` the model's
    per-image router (its `aux_loss` is the router term; None for dense and token-routed models)."""
    batch = output.logits.shape[0]
    labels = _labels(labels, batch, config.num_classes)
    classification = ops.cross_entropy(output.logits, labels, label_smoothing=label_smoothing)
    total = classification
    terms = LossTerms(total=total, classification=float(classification.item()))
    if output.routing is not None:  # per-image routing: the router's own term, if its variant has one
        if router.needs_superclasses and class_to_group is None:
            raise ValueError(
                f"routing={config.routing!r} trains the router to predict each image's superclass, but the model "
                "has no class -> superclass map: call model.set_class_to_group(groups) with one group in "
                f"[0, {config.experts}) per class (e.g. from tinymoe.superclasses), or use routing='learned'"
            )
        aux = router.aux_loss(output.routing, labels, class_to_group)
        if aux is not None:
            terms.router = float(aux.item())
            total = total + config.router_weight * aux
    if output.token_routing:  # token routing: each MoE block's balance term
        balance = None
        importance, load = [], []
        for r in output.token_routing:
            aux = r.importance_loss if r.load_loss is None else 0.5 * (r.importance_loss + r.load_loss)
            balance = aux if balance is None else balance + aux
            importance.append(float(r.importance_loss.item()))
            if r.load_loss is not None:
                load.append(float(r.load_loss.item()))
        balance = config.balance_weight * balance
        terms.importance = float(np.mean(importance))
        terms.load = float(np.mean(load)) if load else None
        terms.balance = float(balance.item())
        total = total + balance
    terms.total = total
    return terms


__all__ = ["LossTerms", "model_loss"]
