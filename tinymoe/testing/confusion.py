"""A synthetic confusion matrix with planted superclasses: the fixture the superclass tests, the
hypothesis strategies (`tinymoe.testing.strategies.planted_confusions`) and tutorial 06 start from."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from tinymoe.superclasses.algorithm import _check_count, canonical_labels

__all__ = ["planted_confusion"]


def planted_confusion(
    group_sizes: Sequence[int], seed: int = 0, noise: float = 0.05
) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic confusion matrix with known superclasses, for demos, tests and benchmarks.

    Classes are split into groups of the given sizes (scattered over the class indices, not
    contiguous). Each class gets 100-300 held-out images and an accuracy drawn from [0.3, 0.85]; of its
    mistakes, a fraction `noise` (on average) goes to classes of *other* groups at random, the rest to
    every one of its group-mates (at least one mistake each, so each group is internally connected).
    Groups of size 1 are allowed but such a class is only ever confused by noise.

    Returns (confusion (C, C) int64 with rows = true class, truth (C,) int64 planted group of each
    class, canonical as `canonical_labels`).
    """
    sizes = [_check_count(s, "group size", "planted_confusion") for s in group_sizes]
    if not sizes:
        raise ValueError("planted_confusion: need at least one group size")
    if not 0.0 <= noise <= 1.0:
        raise ValueError(f"planted_confusion: noise is a fraction of the mistakes, in [0, 1], got {noise}")
    rng = np.random.default_rng(seed)
    truth = rng.permutation(np.repeat(np.arange(len(sizes)), sizes))
    num_classes = truth.size
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    for c in range(num_classes):
        images = int(rng.integers(100, 301))
        mistakes = images - int(round(rng.uniform(0.3, 0.85) * images))
        confusion[c, c] = images - mistakes
        mates = np.flatnonzero((truth == truth[c]) & (np.arange(num_classes) != c))
        strangers = np.flatnonzero(truth != truth[c])
        stray = int(rng.binomial(mistakes, noise)) if strangers.size else 0
        if mates.size == 0:
            stray = mistakes if strangers.size else 0
        if stray:
            confusion[c, strangers] += rng.multinomial(stray, np.full(strangers.size, 1.0 / strangers.size))
        if mates.size:
            within = max(mistakes - stray - mates.size, 0)
            share = rng.dirichlet(np.full(mates.size, 5.0))  # uneven, but no mate left near zero
            confusion[c, mates] += 1 + rng.multinomial(within, share)
    return confusion, canonical_labels(truth)
