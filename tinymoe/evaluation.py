"""Evaluate a model on a labelled image set: top-1/top-5 accuracy, loss, routing statistics.

Used by the training loop (periodic evaluation), by `python -m tinymoe.evaluate`, and by the superclass
step (which needs the dense model's predictions on the held-out split).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from tinymoe.data.batches import IMAGENET_MEAN, IMAGENET_STD, BatchLoader
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

    def as_dict(self) -> dict:
        return asdict(self)


def predict(
    model, images: np.ndarray, batch_size: int = 256, mean=IMAGENET_MEAN, std=IMAGENET_STD, shards: int = 1
) -> Predictions:
    """Run `model` in eval mode over uint8 images (N, H, W, 3); restores the model's previous mode.

    `shards` > 1 splits every batch into that many slices run on as many threads (see tinymoe.parallel):
    an eval-mode forward pass changes nothing in the model, so the threads share it as it is."""
    loader = BatchLoader(images, np.zeros(images.shape[0], np.int64), batch_size, shuffle=False, mean=mean, std=std)
    pool = ShardPool(shards)
    was_training = model.training
    model.eval()
    logits, experts, counts = [], [], None

    def run(x):
        def shard(_index, start, stop):
            with no_grad():  # per thread: each shard thread must switch recording off itself
                return model(x[start:stop])

        return pool.run(shard, pool.bounds(x.shape[0]))

    try:
        for x, _ in loader:
            for out in run(x):  # the shards' outputs, in batch order
                logits.append(out.logits.data)
                if out.routing is not None:
                    experts.append(out.routing.experts)
                batch_counts = out.expert_counts()
                if batch_counts is not None:
                    counts = batch_counts if counts is None else counts + batch_counts
    finally:
        model.train(was_training)
        pool.close()
    num_classes = model.config.num_classes
    return Predictions(
        logits=np.concatenate(logits) if logits else np.zeros((0, num_classes), np.float32),
        experts=np.concatenate(experts) if experts else None,
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
    """Mean cross-entropy in float64 (for reporting; training uses the differentiable op)."""
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    log_probs = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-np.mean(log_probs[np.arange(labels.size), labels])) if labels.size else 0.0


def evaluate(
    model, images: np.ndarray, labels: np.ndarray, batch_size: int = 256, mean=IMAGENET_MEAN, std=IMAGENET_STD,
    shards: int = 1,
) -> EvalResult:
    """Accuracy, loss and routing statistics of `model` on (images uint8 (N, H, W, 3), labels (N,))."""
    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape != (images.shape[0],):
        raise ValueError(f"evaluate: {images.shape[0]} images but labels of shape {labels.shape}")
    pred = predict(model, images, batch_size, mean, std, shards=shards)
    top1, top5 = accuracy_from_logits(pred.logits, labels)
    router_acc = None
    groups = getattr(model, "class_to_group", None)
    if pred.experts is not None and groups is not None and labels.size:
        router_acc = float(np.mean(pred.experts[:, 0] == np.asarray(groups)[labels]) * 100)
    return EvalResult(
        images=int(labels.size),
        loss=cross_entropy_np(pred.logits, labels),
        top1=top1,
        top5=top5,
        router_accuracy=router_acc,
        expert_counts=None if pred.expert_counts is None else [int(c) for c in pred.expert_counts],
    )


__all__ = ["EvalResult", "Predictions", "accuracy_from_logits", "evaluate", "predict"]
