"""Evaluate a model on a labelled image set: top-1/top-5 accuracy, loss, routing statistics.

Used by the training loop (periodic evaluation), by `python -m tinymoe.evaluate`, and by the superclass
step (which needs the dense model's predictions on the held-out split).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from tinymoe.data.batches import IMAGENET_MEAN, IMAGENET_STD, BatchLoader
from tinymoe.kernels.softmax import cross_entropy_forward
from tinymoe.lab.routing import forward_with_experts
from tinymoe.parallel import ShardPool
from tinymoe.tensor import no_grad


@dataclass
class Predictions:
    """Per-image outputs of a model over a dataset, in dataset order."""

    logits: np.ndarray  # (N, num_classes) float32
    experts: np.ndarray | None  # (N, k) int64: the experts each image was routed to (per-image routing)
    expert_counts: np.ndarray | None  # (E,) images (or token choices, for token routing) per expert


@dataclass
class EvalResult:
    images: int
    loss: float  # mean classification cross-entropy (no label smoothing, no router term)
    top1: float  # percent
    top5: float  # percent
    router_accuracy: float | None  # percent of images whose top-1 expert is their superclass
    expert_counts: list[int] | None
    # Per-image routing with superclasses only (else None). Where the router's mistakes cost accuracy:
    top1_routed_right: float | None = None  # top-1 (%) on the images the router sent to their superclass
    top1_routed_wrong: float | None = None  # ... and on the others
    oracle_top1: float | None = None  # top-1 (%) with every image sent to its true superclass (oracle=True)

    def as_dict(self) -> dict:
        return asdict(self)


def predict(
    model, images: np.ndarray, batch_size: int = 256, mean=IMAGENET_MEAN, std=IMAGENET_STD, shards: int = 1,
    forward=None,
) -> Predictions:
    """Run `model` in eval mode over uint8 images (N, H, W, 3); restores the model's previous mode.

    `shards` > 1 splits every batch into that many slices run on as many threads (see tinymoe.parallel):
    an eval-mode forward pass changes nothing in the model, so the threads share it as it is.
    `forward(model, x, rows)`, if given, replaces `model(x)`: `rows` are the dataset indices of the images
    in x (e.g. the lab's oracle routing, `evaluate(..., oracle=True)`)."""
    loader = BatchLoader(images, np.zeros(images.shape[0], np.int64), batch_size, shuffle=False, mean=mean, std=std)
    pool = ShardPool(shards)
    was_training = model.training
    model.eval()
    logits, routed, counts = [], [], None

    def run(x, offset):
        def shard(_index, start, stop):
            with no_grad():  # per thread: each shard thread must switch recording off itself
                if forward is None:
                    return model(x[start:stop])
                return forward(model, x[start:stop], np.arange(offset + start, offset + stop))

        return pool.run(shard, pool.bounds(x.shape[0]))

    try:
        offset = 0  # the loader keeps dataset order (shuffle=False): batch images start at `offset`
        for x, _ in loader:
            outputs = run(x, offset)
            offset += x.shape[0]
            for out in outputs:  # the shards' outputs, in batch order
                logits.append(out.logits.data)
                if out.routing is not None:
                    routed.append(out.routing.experts)
                batch_counts = out.expert_counts()
                if batch_counts is not None:
                    counts = batch_counts if counts is None else counts + batch_counts
    finally:
        model.train(was_training)
        pool.close()
    num_classes = model.config.num_classes
    return Predictions(
        logits=np.concatenate(logits) if logits else np.zeros((0, num_classes), np.float32),
        experts=np.concatenate(routed) if routed else None,
        expert_counts=counts,
    )


def accuracy_from_logits(logits: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Top-1 and top-5 accuracy in percent (top-5 = the label is among the 5 highest logits)."""
    if logits.shape[0] == 0:
        return 0.0, 0.0
    top1 = float(np.mean(np.argmax(logits, axis=1) == labels) * 100)
    k = min(5, logits.shape[1])
    top_k = np.argpartition(-logits, k - 1, axis=1)[:, :k]  # the k largest, in no particular order
    top5 = float(np.mean(np.any(top_k == labels[:, None], axis=1)) * 100)
    return top1, top5


def cross_entropy_np(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean cross-entropy in float64, for reporting: the reference kernel the training loss runs on."""
    if not labels.size:
        return 0.0
    return float(cross_entropy_forward(logits.astype(np.float64), labels)[0].mean())


def router_accuracy(experts: np.ndarray, labels: np.ndarray, class_to_group) -> float:
    """Fraction of images whose first expert (experts (N, k)) is their label's group (class_to_group[label])."""
    return float(np.mean(np.asarray(experts)[:, 0] == np.asarray(class_to_group)[np.asarray(labels)]))


def predict_with_experts(model, images, experts, **predict_args) -> Predictions:
    """`predict` with image i sent to expert experts[i] (the oracle's routing: `tinymoe.lab.routing`),
    gated by the router's own top probabilities."""
    experts = np.asarray(experts, dtype=np.int64)
    if experts.shape != (images.shape[0],):
        raise ValueError(f"predict_with_experts: experts must give one expert per image, shape ({images.shape[0]},); "
                         f"got {experts.shape}")
    return predict(model, images, forward=lambda m, x, rows: forward_with_experts(m, x, experts[rows]), **predict_args)


def supports_oracle(model) -> bool:
    """Whether `evaluate(model, ..., oracle=True)` applies: a per-image-routed MoE with superclasses."""
    return getattr(model, "router", None) is not None and getattr(model, "class_to_group", None) is not None


def evaluate(
    model, images: np.ndarray, labels: np.ndarray, batch_size: int = 256, mean=IMAGENET_MEAN, std=IMAGENET_STD,
    shards: int = 1, oracle: bool = False,
) -> EvalResult:
    """Accuracy, loss and routing statistics of `model` on (images uint8 (N, H, W, 3), labels (N,)).

    For a Mobile V-MoE with superclasses it also splits top-1 by whether the router sent the image to its
    superclass's expert, and with `oracle=True` runs the images again with each one sent there, gated by
    the router's confidence in its own pick: how much a router that always picked the superclass would add."""
    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape != (images.shape[0],):
        raise ValueError(f"evaluate: {images.shape[0]} images but labels of shape {labels.shape}")
    if oracle and not supports_oracle(model):
        raise ValueError("evaluate(oracle=True) needs a per-image-routed MoE with superclasses "
                         "(model.class_to_group); this model has none")
    pred = predict(model, images, batch_size, mean, std, shards=shards)
    top1, top5 = accuracy_from_logits(pred.logits, labels)
    routing = {}
    groups = getattr(model, "class_to_group", None)
    if pred.experts is not None and groups is not None and labels.size:
        truth = np.asarray(groups)[labels]  # (N,) each image's superclass = its expert under superclass routing
        right = pred.experts[:, 0] == truth
        correct = np.argmax(pred.logits, axis=1) == labels
        routing["router_accuracy"] = router_accuracy(pred.experts, labels, groups) * 100
        routing["top1_routed_right"] = float(np.mean(correct[right]) * 100) if right.any() else None
        routing["top1_routed_wrong"] = float(np.mean(correct[~right]) * 100) if (~right).any() else None
        if oracle:
            forced = predict_with_experts(model, images, truth, batch_size=batch_size, mean=mean, std=std, shards=shards)
            routing["oracle_top1"] = accuracy_from_logits(forced.logits, labels)[0]
    return EvalResult(
        images=int(labels.size),
        loss=cross_entropy_np(pred.logits, labels),
        top1=top1,
        top5=top5,
        router_accuracy=routing.pop("router_accuracy", None),
        expert_counts=None if pred.expert_counts is None else [int(c) for c in pred.expert_counts],
        **routing,
    )


__all__ = ["EvalResult", "Predictions", "accuracy_from_logits", "evaluate", "predict", "predict_with_experts",
           "router_accuracy", "supports_oracle"]
