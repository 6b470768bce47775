"""The paired difference of two models scored on the same images: Δ top-1 and its standard error from
the choice of images (the study's error bars)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass
class PairedDifference:
    """Top-1 of model B minus top-1 of model A on the same images, and how much of it the images decide.

    Per image i let d_i = [B right] - [A right], which is -1, 0 or +1. Then Δ = mean(d) (in percent below)
    and, treating the n images as a sample from the distribution they were drawn from, Δ's standard error
    is sd(d) / √n. Images both models get right or both get wrong have d_i = 0: only the discordant ones
    (`b_only_right`, `a_only_right`) make Δ uncertain, which is why this paired error is much smaller than
    that of two accuracies measured on separate image sets. It covers the choice of images only, not the
    training noise (another seed gives other models), which is often larger.

    Pooled over seeds: given S pairs of models (one per seed) scored on the same n images, let d_i be the
    mean of the S per-seed differences on image i (a multiple of 1/S between -1 and +1). Δ = mean(d) is
    then the mean of the seeds' Δ's, and sd(d) / √n its error from the choice of images, which the seeds
    share; the seeds' own spread (training noise) is not in it: report it beside. The counts are then
    over (seed, image) pairs."""

    images: int
    delta: float  # percent: top1(B) - top1(A)
    standard_error: float  # percent
    b_only_right: int  # images B classifies correctly and A does not
    a_only_right: int  # ... and the other way round

    def interval(self, z: float = 1.96) -> tuple[float, float]:
        """Δ ± z standard errors (z = 1.96: the normal approximation's 95% interval), in percent."""
        return self.delta - z * self.standard_error, self.delta + z * self.standard_error

    def as_dict(self) -> dict:
        return {**asdict(self), "ci95": list(self.interval())}


def paired_difference(correct_a: np.ndarray, correct_b: np.ndarray) -> PairedDifference:
    """Compare two models on the same images from their per-image correctness: bool arrays (N,) each, or
    (S, N) for S seeds' pairs of models on the same N images (Δ pooled over the seeds, see PairedDifference)."""
    a, b = np.asarray(correct_a), np.asarray(correct_b)
    if a.dtype != np.bool_ or b.dtype != np.bool_ or a.ndim not in (1, 2) or a.shape != b.shape or 0 in a.shape[:-1]:
        raise ValueError(f"paired_difference: needs two bool arrays of the same shape, (N,) with one entry per "
                         f"image or (S, N) with one row per seed; got {a.dtype} {a.shape} and {b.dtype} {b.shape}")
    n = a.shape[-1]
    if n < 2:
        raise ValueError(f"paired_difference: needs at least 2 images for a standard error, got {n}")
    d = b.astype(np.float64) - a.astype(np.float64)  # (N,) or (S, N), entries in {-1, 0, +1}
    d = d.reshape(-1, n).mean(axis=0)  # (N,): one seed's difference, or the seeds' mean difference, per image
    se = d.std(ddof=1) / np.sqrt(n)  # ddof=1: the sample's variance estimates the population's without bias
    return PairedDifference(images=int(n), delta=float(d.mean() * 100), standard_error=float(se * 100),
                            b_only_right=int(np.sum(b & ~a)), a_only_right=int(np.sum(a & ~b)))


__all__ = ["PairedDifference", "paired_difference"]
