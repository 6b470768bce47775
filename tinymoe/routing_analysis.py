"""What the router does, image by image: the numbers behind a routing picture.

For a per-image-routed Mobile V-MoE with superclasses, `analyse_model(model, images, labels)` records
for every image its chosen expert, its true superclass, whether the model classified it correctly and
the entropy of the router's softmax; `RoutingAnalysis` turns those into

    confusion[g, e]      images of true superclass g that the router sent to expert e   (G, E)
    load[e]              images expert e received                                        (E,)
    accuracy[e]          top-1 (%) on the images expert e received (None if it got none)  (E,)
    router_accuracy      % of images sent to their superclass's expert (the diagonal of confusion)
    entropy              mean router entropy in nats (ln E = a uniform router, 0 = certain)

Under superclass routing expert e is trained to take superclass e, so a perfect router has a diagonal
confusion matrix. `python -m tinymoe.train` saves `as_dict()` in results.json under moe["routing"], and
`python -m tinymoe.report RUN` draws it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tinymoe.data.batches import IMAGENET_MEAN, IMAGENET_STD


@dataclass
class RoutingAnalysis:
    experts: np.ndarray  # (N,) int64 each image's first-choice expert
    superclasses: np.ndarray  # (N,) int64 each image's true superclass
    correct: np.ndarray  # (N,) bool whether the model's top-1 prediction is the label
    entropy: np.ndarray  # (N,) float64 entropy (nats) of the router's softmax for the image
    num_experts: int

    @property
    def confusion(self) -> np.ndarray:
        """(G, E) int64: images of true superclass g routed to expert e."""
        groups = max(int(self.superclasses.max()) + 1 if self.superclasses.size else 0, self.num_experts)
        out = np.zeros((groups, self.num_experts), np.int64)
        np.add.at(out, (self.superclasses, self.experts), 1)
        return out

    @property
    def load(self) -> np.ndarray:
        return np.bincount(self.experts, minlength=self.num_experts).astype(np.int64)

    @property
    def accuracy(self) -> list[float | None]:
        """Top-1 (%) on the images each expert received; None for an expert that received none."""
        hits = np.bincount(self.experts, weights=self.correct.astype(np.float64), minlength=self.num_experts)
        return [None if n == 0 else float(100 * h / n) for h, n in zip(hits, self.load)]

    @property
    def router_accuracy(self) -> float:
        return float(100 * np.mean(self.experts == self.superclasses)) if self.experts.size else 0.0

    def as_dict(self, per_image: bool = True) -> dict:
        """A JSON-ready summary (and the per-image columns, unless per_image=False)."""
        out = {
            "images": int(self.experts.size),
            "experts": self.num_experts,
            "router_accuracy": self.router_accuracy,
            "confusion": self.confusion.tolist(),
            "load": self.load.tolist(),
            "accuracy_per_expert": self.accuracy,
            "entropy_mean": float(self.entropy.mean()) if self.entropy.size else 0.0,
            "entropy_max": float(np.log(self.num_experts)),
        }
        if per_image:
            out["per_image"] = {"expert": self.experts.tolist(), "superclass": self.superclasses.tolist(),
                                "correct": self.correct.astype(int).tolist()}
        return out

    @classmethod
    def from_dict(cls, d: dict) -> RoutingAnalysis:
        """Rebuild from `as_dict()` (with its per-image columns); entropies come back as the mean only."""
        p = d["per_image"]
        n = len(p["expert"])
        return cls(np.asarray(p["expert"], np.int64), np.asarray(p["superclass"], np.int64),
                   np.asarray(p["correct"], bool), np.full(n, d["entropy_mean"]), int(d["experts"]))


def analyse(probs: np.ndarray, logits: np.ndarray, labels: np.ndarray, class_to_group) -> RoutingAnalysis:
    """From the router's probabilities (N, E), the model's logits (N, C), labels (N,) and the class ->
    superclass map (C,). The first choice is the argmax of probs (ties: the lower expert, as the router)."""
    probs = np.asarray(probs, np.float64)
    labels = np.asarray(labels, np.int64)
    p = np.clip(probs, 1e-300, 1.0)
    return RoutingAnalysis(
        experts=np.argmax(probs, axis=1).astype(np.int64),
        superclasses=np.asarray(class_to_group, np.int64)[labels],
        correct=np.argmax(logits, axis=1) == labels,
        entropy=-(probs * np.log(p)).sum(axis=1),
        num_experts=probs.shape[1],
    )


def analyse_model(model, images: np.ndarray, labels: np.ndarray, batch_size: int = 256, shards: int = 1,
                  mean=IMAGENET_MEAN, std=IMAGENET_STD) -> RoutingAnalysis:
    """Run `model` (a per-image-routed MoE with `class_to_group`) over uint8 images and analyse its routing."""
    from tinymoe.evaluation import predict

    groups = getattr(model, "class_to_group", None)
    if getattr(model, "router", None) is None or groups is None:
        raise ValueError("analyse_model needs a per-image-routed MoE with superclasses (model.class_to_group)")
    probs = np.zeros((images.shape[0], model.config.experts), np.float64)

    def forward(m, x, rows):
        out = m(x)
        probs[rows] = out.routing.probs.data  # each shard writes its own rows
        return out

    pred = predict(model, images, batch_size, mean, std, shards=shards, forward=forward)
    return analyse(probs, pred.logits, labels, groups)


def routing_summary(moe: dict, digits: int = 2) -> list[str]:
    """Sentences on what routing did, from an MoE's results entry (results.json): the router's accuracy,
    top-1 on the images routed right and wrong, and the oracle's top-1, where they were measured."""
    lines = []
    if moe.get("router_accuracy") is not None:
        lines.append(f"Router accuracy (image sent to its superclass's expert): {moe['router_accuracy']:.1f}%.")
    right, wrong = moe.get("top1_routed_right"), moe.get("top1_routed_wrong")
    if right is not None and wrong is not None:
        lines.append(f"Top-1 on the images routed to their superclass: {right:.{digits}f}%, on the others: "
                     f"{wrong:.{digits}f}% (selection as well as routing: see tutorial 07).")
    if moe.get("oracle_top1") is not None:
        lines.append(f"Top-1 if every image went to its true superclass's expert (oracle): {moe['oracle_top1']:.2f}%.")
    return lines


__all__ = ["routing_summary", "RoutingAnalysis", "analyse", "analyse_model"]
