"""Superclasses: which classes should share an expert.

Mobile V-MoE (Daxberger et al., 2023) routes each *whole image* to one expert, and trains the router to
predict the image's **superclass**: a group of classes that a trained dense model confuses with each
other. Classes that look alike then share an expert, and that expert specialises in telling them apart.
The paper gets the groups from a dense model's confusion matrix on a held-out part of the training set,
turned into a confusion graph and cut into E clusters (one per expert). This module does the same:

    labels, predictions of a dense model on the held-out split
      -> confusion_matrix  (C, C) counts, row = true class, column = predicted class
      -> confusion_graph   (C, C) symmetric edge weights in [0, 1], no self-loops
      -> cluster           (C,)   superclass id of each class: exactly E non-empty groups
      -> save_superclasses JSON with wnid, index, name and superclass of every class

    >>> confusion = confusion_matrix(labels, predictions, num_classes=200)
    >>> superclass = cluster(confusion, n_groups=10, seed=0)      # superclass[c] in 0..9
    >>> print(superclass_table(superclass, class_names))

The held-out split is carved from *train* and is never the validation set: the superclasses become
training targets for the router, so computing them on validation images would leak the evaluation set
into training.

Command line (`python -m tinymoe.superclasses --help`):

    python -m tinymoe.superclasses --checkpoint DENSE.npz --data DIR --experts 10 --out superclasses.json
    python -m tinymoe.superclasses --predictions heldout.npz --experts 10 --out superclasses.json

Pure NumPy: the eigen-solver is `np.linalg.eigh`, k-means is written out below.
"""

from __future__ import annotations

import argparse
import json
import operator
import os
import zipfile
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from tinymoe.atomic import atomic_write_text

__all__ = [
    "confusion_matrix",
    "confusion_graph",
    "isolated_classes",
    "spectral_embedding",
    "kmeans",
    "canonical_labels",
    "cluster",
    "superclasses_from_predictions",
    "planted_confusion",
    "GroupBalance",
    "group_balance",
    "superclass_table",
    "Superclasses",
    "SuperclassFileError",
    "save_superclasses",
    "load_superclasses",
    "load_predictions",
    "write_superclasses",
    "predict_held_out",
    "main",
]

FILE_FORMAT = "tinymoe-superclasses"
FILE_VERSION = 1


# ----------------------------------------------------------------------------------------------------
# Input checks
# ----------------------------------------------------------------------------------------------------


def _check_count(value, name: str, where: str, minimum: int = 1) -> int:
    """A Python int >= minimum (numpy integers accepted; bools and floats refused)."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{where}: {name} must be an integer, got a bool ({value!r})")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{where}: {name} must be an integer, got {type(value).__name__} ({value!r})") from None
    if value < minimum:
        raise ValueError(f"{where}: {name} must be >= {minimum}, got {value}")
    return value


def _check_class_indices(values, name: str, num_classes: int, where: str) -> np.ndarray:
    """A 1-D integer array with every value in [0, num_classes)."""
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{where}: {name} must be 1-D (one class index per image), got shape {array.shape}")
    if array.size == 0:
        return array.astype(np.int64)
    if array.dtype.kind not in "iu":
        raise TypeError(
            f"{where}: {name} must hold integer class indices, got dtype {array.dtype}; "
            "pass argmax(logits, axis=-1) for predictions, or cast with .astype(np.int64)"
        )
    low, high = int(array.min()), int(array.max())
    if low < 0 or high >= num_classes:
        raise ValueError(
            f"{where}: {name} must lie in [0, {num_classes}) for num_classes={num_classes}, "
            f"got values from {low} to {high}"
        )
    return array.astype(np.int64)


def _check_confusion(confusion, where: str) -> np.ndarray:
    """A square, finite, non-negative (C, C) matrix of counts (or rates), returned as float64."""
    array = np.asarray(confusion)
    if array.dtype.kind not in "iuf":
        raise TypeError(f"{where}: the confusion matrix must be numeric (ints or floats), got dtype {array.dtype}")
    if array.ndim != 2 or array.shape[0] != array.shape[1]:
        raise ValueError(
            f"{where}: the confusion matrix must be square (C, C) with rows = true class and "
            f"columns = predicted class, got shape {array.shape}"
        )
    if array.shape[0] == 0:
        raise ValueError(f"{where}: the confusion matrix is empty (0 classes)")
    array = array.astype(np.float64)
    if not np.all(np.isfinite(array)):
        bad = np.argwhere(~np.isfinite(array))[0]
        raise ValueError(f"{where}: the confusion matrix holds NaN or inf (first at row {bad[0]}, column {bad[1]})")
    if np.any(array < 0):
        bad = np.argwhere(array < 0)[0]
        raise ValueError(
            f"{where}: the confusion matrix holds negative counts (first at row {bad[0]}, "
            f"column {bad[1]}: {array[bad[0], bad[1]]})"
        )
    return array


def _check_assignment(assignment, where: str) -> np.ndarray:
    array = np.asarray(assignment)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(
            f"{where}: assignment must be a non-empty 1-D array (one superclass per class), got shape {array.shape}"
        )
    if array.dtype.kind not in "iu":
        raise TypeError(f"{where}: assignment must hold integer superclass ids, got dtype {array.dtype}")
    if array.min() < 0:
        raise ValueError(f"{where}: superclass ids must be >= 0, got {int(array.min())}")
    return array.astype(np.int64)


# ----------------------------------------------------------------------------------------------------
# Confusion matrix and confusion graph
# ----------------------------------------------------------------------------------------------------


def confusion_matrix(labels, predictions, num_classes: int) -> np.ndarray:
    """Counts of (true class, predicted class) pairs: `out[i, j]` = images of class i predicted as j.

    labels, predictions: (N,) integer class indices in [0, num_classes). Returns (C, C) int64; rows are
    the true class, so row i sums to the number of held-out images of class i.
    """
    where = "confusion_matrix"
    num_classes = _check_count(num_classes, "num_classes", where)
    labels = _check_class_indices(labels, "labels", num_classes, where)
    predictions = _check_class_indices(predictions, "predictions", num_classes, where)
    if labels.shape != predictions.shape:
        raise ValueError(
            f"{where}: labels {labels.shape} and predictions {predictions.shape} must have the same length "
            "(one prediction per labelled image)"
        )
    # Each pair (i, j) becomes the flat index i*C + j of a C*C grid, so one bincount counts every pair.
    flat = labels * num_classes + predictions
    counts = np.bincount(flat, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).astype(np.int64)  # (C, C)


def confusion_graph(confusion) -> np.ndarray:
    """Edge weights of the confusion graph: how strongly classes i and j are mistaken for each other.

    Three choices, each for a reason:

    1. **Rates, not counts.** Row i is divided by its total, so `rate[i, j]` = fraction of class-i images
       predicted as j. With raw counts, a class with ten times more held-out images would have ten times
       heavier edges and pull groups around itself; rates weigh every class equally. The denominator
       includes the correct predictions, so a class that is right 99% of the time and wrong 1% of the
       time gets weak edges (a few stray mistakes are not strong evidence of similarity).
    2. **No self-loops.** The diagonal (correct predictions) says how good the model is on a class, not
       which *other* classes it resembles, so it is set to zero after computing the rates.
    3. **Symmetric.** "i predicted as j" and "j predicted as i" are both evidence that i and j look
       alike, and graph clustering needs an undirected graph: `W = (rate + rateᵀ) / 2`.

    A class absent from the held-out set has an all-zero row; it still gets edges from other classes
    predicted as it (its column). A class with no edges at all is *isolated*: see `isolated_classes`
    and `cluster` for where it goes.

    confusion: (C, C) non-negative counts (rows = true class). Returns (C, C) float64, symmetric, zero
    diagonal, entries in [0, 1].
    """
    counts = _check_confusion(confusion, "confusion_graph")
    totals = counts.sum(axis=1, keepdims=True)  # (C, 1) held-out images of each true class
    rates = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    np.fill_diagonal(rates, 0.0)
    return 0.5 * (rates + rates.T)


def isolated_classes(confusion) -> np.ndarray:
    """Indices of classes with no edge in the confusion graph: never mistaken for, nor mistaken as, any other."""
    graph = confusion_graph(confusion)
    return np.flatnonzero(graph.sum(axis=1) == 0)


# ----------------------------------------------------------------------------------------------------
# Spectral clustering: embedding + k-means
# ----------------------------------------------------------------------------------------------------


def spectral_embedding(graph: np.ndarray, k: int) -> np.ndarray:
    """Normalised spectral embedding (Ng, Jordan & Weiss, 2001): one unit-length point in R^k per node.

    With W the edge weights and D = diag(degrees), the symmetric normalised Laplacian is
    `L = I - D^{-1/2} W D^{-1/2}`. Its eigenvalue 0 has one eigenvector per connected component
    (D^{1/2} times the component's indicator), and weakly linked groups give eigenvalues close to 0.
    So the k eigenvectors with the smallest eigenvalues, stacked as columns, put the nodes of one
    group at (nearly) the same direction in R^k; scaling each row to unit length removes the D^{1/2}
    factor, leaving tight, well-separated clusters for k-means.

    graph: (n, n) symmetric, non-negative, every node with degree > 0. Returns (n, k) float64.
    """
    degree = graph.sum(axis=1)  # (n,)
    if np.any(degree <= 0):
        raise ValueError(
            "spectral_embedding: every node needs at least one edge (degree > 0); "
            f"nodes {np.flatnonzero(degree <= 0)[:10].tolist()} have none"
        )
    if not 1 <= k <= graph.shape[0]:
        raise ValueError(f"spectral_embedding: k must be in [1, {graph.shape[0]}], got {k}")
    inv_sqrt_degree = 1.0 / np.sqrt(degree)
    laplacian = np.eye(graph.shape[0]) - inv_sqrt_degree[:, None] * graph * inv_sqrt_degree[None, :]
    _, eigenvectors = np.linalg.eigh(laplacian)  # eigenvalues in ascending order
    embedding = eigenvectors[:, :k]  # (n, k)
    norms = np.linalg.norm(embedding, axis=1, keepdims=True)  # (n, 1)
    # A row can only vanish if the node lies outside the span of the first k eigenvectors; it then
    # stays at the origin, equally far from every direction, and k-means places it by distance.
    return embedding / np.where(norms > 0, norms, 1.0)


def _squared_distances(points: np.ndarray, centres: np.ndarray, points_sq: np.ndarray) -> np.ndarray:
    """(n, k) squared Euclidean distances, via |x|^2 - 2 x.c + |c|^2 (clipped at 0 against round-off).

    points_sq: (n,) the points' squared norms, computed once by the caller since the points never move.
    """
    d2 = points_sq[:, None] - 2.0 * points @ centres.T + (centres**2).sum(axis=1)[None, :]
    return np.maximum(d2, 0.0)


def _kmeans_plus_plus(points: np.ndarray, points_sq: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding (Arthur & Vassilvitskii, 2007): each new centre is a point drawn with
    probability proportional to its squared distance to the nearest centre chosen so far, so the
    initial centres spread over the clusters instead of landing several in one."""
    n = points.shape[0]
    chosen = [int(rng.integers(n))]
    nearest = _squared_distances(points, points[chosen[0]][None, :], points_sq)[:, 0]  # (n,)
    for _ in range(1, k):
        total = nearest.sum()
        if total > 0:
            index = int(rng.choice(n, p=nearest / total))
        else:
            # Every point coincides with a chosen centre (fewer distinct points than k): any unchosen
            # point will do; the empty cluster this causes is repaired after Lloyd's iterations.
            index = int(rng.choice(np.setdiff1d(np.arange(n), chosen)))
        chosen.append(index)
        nearest = np.minimum(nearest, _squared_distances(points, points[index][None, :], points_sq)[:, 0])
    return points[chosen].copy()  # (k, d)


def _fill_empty_clusters(points: np.ndarray, labels: np.ndarray, centres: np.ndarray, k: int) -> np.ndarray:
    """Give every empty cluster one point, so that exactly k clusters are non-empty.

    Repair rule: while a cluster is empty, take the largest cluster (lowest id on ties) and move its
    member farthest from its centre (lowest index on ties) into the empty cluster. The largest cluster
    has at least 2 members whenever one is empty (n >= k), so it never empties itself, and the moved
    point is the one its old cluster fitted worst.
    """
    labels = labels.copy()
    sizes = np.bincount(labels, minlength=k)
    for empty in np.flatnonzero(sizes == 0):
        donor = int(np.argmax(sizes))
        members = np.flatnonzero(labels == donor)
        distance = ((points[members] - centres[donor]) ** 2).sum(axis=1)
        moved = members[int(np.argmax(distance))]
        labels[moved] = empty
        sizes[donor] -= 1
        sizes[empty] += 1
    return labels


def kmeans(
    points: np.ndarray, k: int, rng: np.random.Generator, n_init: int = 10, max_iter: int = 100
) -> tuple[np.ndarray, float]:
    """Lloyd's k-means with k-means++ seeding, restarted `n_init` times; the lowest inertia wins.

    Inertia = sum over points of the squared distance to its cluster's centre. Each restart runs until
    no point changes cluster (or `max_iter` rounds); a cluster that loses all its points keeps its old
    centre and may win points back. Ties in inertia keep the earliest restart, so the result depends
    only on `rng`'s state. Every one of the k clusters is non-empty (see `_fill_empty_clusters`).

    points: (n, d) with n >= k. Returns (labels (n,) int64 in [0, k), inertia).
    """
    n = points.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"kmeans: k must be in [1, {n}] (number of points), got {k}")
    points_sq = (points**2).sum(axis=1)  # (n,)
    best_labels, best_inertia = None, np.inf
    for _ in range(n_init):
        centres = _kmeans_plus_plus(points, points_sq, k, rng)  # (k, d)
        labels = np.full(n, -1, dtype=np.int64)
        for _ in range(max_iter):
            new_labels = _squared_distances(points, centres, points_sq).argmin(axis=1)
            if np.array_equal(new_labels, labels):
                break
            labels = new_labels
            for c in range(k):
                members = labels == c
                if members.any():
                    centres[c] = points[members].mean(axis=0)
        labels = _fill_empty_clusters(points, labels, centres, k)
        for c in range(k):  # centres of the final, repaired clusters
            centres[c] = points[labels == c].mean(axis=0)
        inertia = float(((points - centres[labels]) ** 2).sum())
        if inertia < best_inertia:
            best_labels, best_inertia = labels, inertia
    return best_labels, best_inertia


def canonical_labels(assignment) -> np.ndarray:
    """Renumber groups in order of their smallest member: class 0's group becomes 0, the group of the
    first class not in group 0 becomes 1, and so on. Two assignments describe the same partition
    exactly when their canonical labels are equal, so results compare across runs and seeds."""
    array = np.asarray(assignment)
    uniques, first_index, inverse = np.unique(array, return_index=True, return_inverse=True)
    rank = np.empty(uniques.size, dtype=np.int64)
    rank[np.argsort(first_index)] = np.arange(uniques.size)
    return rank[inverse.reshape(-1)]


def _count_components(graph: np.ndarray) -> int:
    """Number of connected components of the graph (edges where weight > 0), by breadth-first search."""
    adjacency = graph > 0
    unvisited = np.ones(graph.shape[0], dtype=bool)
    count = 0
    for start in range(graph.shape[0]):
        if not unvisited[start]:
            continue
        count += 1
        frontier = np.zeros_like(unvisited)
        frontier[start] = True
        unvisited[start] = False
        while frontier.any():
            frontier = adjacency[frontier].any(axis=0) & unvisited  # neighbours not seen yet
            unvisited &= ~frontier
    return count


def cluster(confusion, n_groups: int, seed: int = 0, *, n_init: int = 10) -> np.ndarray:
    """Cut the classes into exactly `n_groups` superclasses of mutually confused classes.

    Steps:

    1. `confusion_graph(confusion)`: rates, symmetrised, no self-loops.
    2. Classes with at least one edge ("connected") are clustered by normalised spectral clustering:
       `spectral_embedding` into k dimensions, then `kmeans` into k groups (k-means++, `n_init` seeded
       restarts, lowest inertia), which leaves no group empty. Normally k = n_groups. When some classes
       are isolated (step 3), the connected classes get k = max(their share of the groups,
       round(n_groups * #connected / C); their number of connected components, at most n_groups),
       kept within [n_groups - #isolated, min(n_groups, #connected)] so the isolated classes can fill
       every remaining group. The share keeps groups balanced; the component count keeps separate
       islands of confusion apart; and a single island of a few confused classes is not spread over
       extra groups just because nothing else is confused (that would split exactly the classes
       that belong together).
    3. **Isolated classes** (no edge at all: never confused with anything, e.g. a perfectly recognised
       class, or one with no held-out images that nothing is mistaken for) carry no evidence about
       where they belong. They are dealt out in increasing class index, each to the currently smallest
       group (lowest id on ties). This keeps groups balanced and fills the groups step 2 left empty.
       A confusion matrix with no mistakes at all therefore gives class c -> group c mod n_groups.
    4. Group ids are made canonical (`canonical_labels`: numbered by smallest member class).

    Guarantees: the result has shape (C,), dtype int64, values 0..n_groups-1, and every group is
    non-empty. Same inputs and seed give the same result. When the grouping is unambiguous (e.g.
    clearly separated blocks) it does not depend on the seed or on the order of the classes; when it is
    ambiguous, the seed breaks the ties.

    confusion: (C, C) non-negative counts, rows = true class. n_groups: 1 <= n_groups <= C (the number
    of experts E). Returns (C,) int64.
    """
    where = "cluster"
    counts = _check_confusion(confusion, where)
    num_classes = counts.shape[0]
    n_groups = _check_count(n_groups, "n_groups", where)
    if n_groups > num_classes:
        raise ValueError(
            f"{where}: n_groups={n_groups} is more than the {num_classes} classes; every superclass needs "
            "at least one class, so use at most as many experts as classes"
        )
    seed = _check_count(seed, "seed", where, minimum=0)
    n_init = _check_count(n_init, "n_init", where)
    rng = np.random.default_rng(seed)

    graph = confusion_graph(counts)
    has_edge = graph.sum(axis=1) > 0
    connected, isolated = np.flatnonzero(has_edge), np.flatnonzero(~has_edge)

    assignment = np.full(num_classes, -1, dtype=np.int64)
    if connected.size:  # an edge joins two classes, so this is 0 or >= 2
        subgraph = graph[np.ix_(connected, connected)]  # (m, m) isolated nodes had no edges to drop
        share = int(np.floor(n_groups * connected.size / num_classes + 0.5))  # nearest integer, halves up
        wanted = max(share, min(_count_components(subgraph), n_groups))
        k = min(max(wanted, n_groups - isolated.size), n_groups, connected.size)
        labels, _ = kmeans(spectral_embedding(subgraph, k), k, rng, n_init=n_init)
        # Canonical before dealing out isolated classes, so "lowest id on ties" means the same thing
        # whatever ids k-means happened to use.
        assignment[connected] = canonical_labels(labels)

    sizes = np.bincount(assignment[connected], minlength=n_groups)
    for c in isolated:
        smallest = int(np.argmin(sizes))  # argmin returns the lowest id among ties
        assignment[c] = smallest
        sizes[smallest] += 1
    return canonical_labels(assignment)


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


def superclasses_from_predictions(
    labels, predictions, num_classes: int, n_groups: int, seed: int = 0
) -> np.ndarray:
    """The paper's routine from a dense model's held-out predictions: confusion matrix -> `cluster`.

    labels, predictions: (N,) class indices on the held-out split (carved from train, never the
    validation set). Returns (num_classes,) int64 superclass id per class, exactly n_groups groups.
    """
    return cluster(confusion_matrix(labels, predictions, num_classes), n_groups, seed=seed)


# ----------------------------------------------------------------------------------------------------
# Reporting: balance and a table like the paper's Table 1
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GroupBalance:
    """Sizes of the superclasses (classes per group). Even sizes let the experts share the classes evenly."""

    sizes: np.ndarray  # (n_groups,) int64
    min: int
    max: int
    mean: float
    std: float

    def __str__(self) -> str:
        return (
            f"{self.sizes.size} superclasses of {self.min}-{self.max} classes "
            f"(mean {self.mean:.1f}, std {self.std:.1f})"
        )

    def as_dict(self) -> dict:
        return {"sizes": self.sizes.tolist(), "min": self.min, "max": self.max, "mean": self.mean, "std": self.std}


def group_balance(assignment, n_groups: int | None = None) -> GroupBalance:
    """Group sizes of an assignment (class -> group), with min, max, mean and standard deviation.

    n_groups defaults to max(assignment) + 1; pass it to count trailing empty groups as size 0.
    """
    where = "group_balance"
    assignment = _check_assignment(assignment, where)
    if n_groups is None:
        n_groups = int(assignment.max()) + 1
    n_groups = _check_count(n_groups, "n_groups", where)
    if assignment.max() >= n_groups:
        raise ValueError(f"{where}: superclass id {int(assignment.max())} is out of range for n_groups={n_groups}")
    sizes = np.bincount(assignment, minlength=n_groups).astype(np.int64)
    return GroupBalance(sizes, int(sizes.min()), int(sizes.max()), float(sizes.mean()), float(sizes.std()))


def _short_name(name: str) -> str:
    """First synonym of a WordNet entry: words.txt lists several, e.g. 'goldfish, Carassius auratus'."""
    return name.split(",")[0].strip() or name.strip()


def superclass_table(assignment, class_names: Sequence[str], per_group: int = 5) -> str:
    """A plain-text table like the paper's Table 1: one row per superclass with a few of its classes.

    Each row shows the superclass id, its size and the first `per_group` member classes (in class
    order), each by its first synonym ('goldfish, Carassius auratus' -> 'goldfish'), then "(+N more)".
    """
    where = "superclass_table"
    assignment = _check_assignment(assignment, where)
    if len(class_names) != assignment.size:
        raise ValueError(
            f"{where}: {len(class_names)} class names for {assignment.size} classes; give one name per class"
        )
    per_group = _check_count(per_group, "per_group", where)
    balance = group_balance(assignment)
    rows = [("superclass", "size", "classes")]
    for group, size in enumerate(balance.sizes):
        members = np.flatnonzero(assignment == group)
        shown = ", ".join(_short_name(str(class_names[c])) for c in members[:per_group])
        if size > per_group:
            shown += f" (+{size - per_group} more)"
        rows.append((str(group), str(size), shown))
    id_width = max(len(r[0]) for r in rows)
    size_width = max(len(r[1]) for r in rows)
    lines = [f"{r[0]:>{id_width}}  {r[1]:>{size_width}}  {r[2]}".rstrip() for r in rows]
    lines.insert(1, "-" * max(len(line) for line in lines))
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------
# Files: superclasses JSON, predictions npz
# ----------------------------------------------------------------------------------------------------


class SuperclassFileError(ValueError):
    """A superclasses JSON file that cannot be read: not JSON, wrong format, or inconsistent content."""


@dataclass(frozen=True)
class Superclasses:
    """A loaded superclass file: `assignment[c]` is the superclass of class c (in wnids order)."""

    assignment: np.ndarray  # (C,) int64, values 0..num_superclasses-1, all groups non-empty
    wnids: tuple[str, ...]
    names: tuple[str, ...]
    meta: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return int(self.assignment.size)

    @property
    def num_superclasses(self) -> int:
        return int(self.assignment.max()) + 1

    def members(self, superclass: int) -> np.ndarray:
        """Class indices of one superclass, ascending."""
        return np.flatnonzero(self.assignment == superclass)


def _check_superclass_content(assignment: np.ndarray, wnids, names, where: str) -> None:
    num_classes = assignment.size
    for what, values in (("wnids", wnids), ("names", names)):
        if len(values) != num_classes:
            raise ValueError(f"{where}: {len(values)} {what} for {num_classes} classes; give one per class")
        if not all(isinstance(v, str) for v in values):
            raise TypeError(f"{where}: {what} must all be strings")
    if len(set(wnids)) != len(wnids):
        duplicates = sorted({w for w in wnids if list(wnids).count(w) > 1})
        raise ValueError(f"{where}: wnids must be unique, repeated: {duplicates[:5]}")
    sizes = np.bincount(assignment)
    if np.any(sizes == 0):
        raise ValueError(
            f"{where}: superclass ids must run 0..{sizes.size - 1} with no gaps, but superclasses "
            f"{np.flatnonzero(sizes == 0).tolist()} have no classes"
        )


def save_superclasses(
    path, assignment, wnids: Sequence[str], names: Sequence[str], meta: dict | None = None
) -> None:
    """Write class -> superclass as JSON (atomically): one record per class with its index, wnid, name
    and superclass, plus `meta` (any JSON-serialisable dict: seed, accuracy, balance...).

    The file looks like:

        {"format": "tinymoe-superclasses", "version": 1, "num_classes": 200, "num_superclasses": 10,
         "classes": [{"index": 0, "wnid": "n01443537", "name": "goldfish, Carassius auratus",
                      "superclass": 3}, ...],
         "meta": {...}}
    """
    where = "save_superclasses"
    assignment = _check_assignment(assignment, where)
    wnids, names = list(wnids), list(names)
    _check_superclass_content(assignment, wnids, names, where)
    document = {
        "format": FILE_FORMAT,
        "version": FILE_VERSION,
        "num_classes": int(assignment.size),
        "num_superclasses": int(assignment.max()) + 1,
        "classes": [
            {"index": i, "wnid": w, "name": n, "superclass": int(g)}
            for i, (w, n, g) in enumerate(zip(wnids, names, assignment))
        ],
        "meta": dict(meta or {}),
    }
    # Serialise first: an unserialisable meta fails here, before any file is touched.
    try:
        text = json.dumps(document, indent=1, ensure_ascii=False, allow_nan=False) + "\n"
    except (TypeError, ValueError) as error:
        raise TypeError(
            f"{where}: meta must be JSON-serialisable (numbers, strings, lists, dicts): {error}"
        ) from None
    atomic_write_text(path, text)


def load_superclasses(path) -> Superclasses:
    """Read a file written by `save_superclasses`; a malformed file raises SuperclassFileError naming
    the file and what is wrong with it."""
    path = os.fspath(path)

    def fail(problem: str):
        raise SuperclassFileError(f"load_superclasses: {path}: {problem}")

    if not os.path.exists(path):
        raise FileNotFoundError(
            f"load_superclasses: {path} does not exist; create it with "
            f"`python -m tinymoe.superclasses ... --out {path}`"
        )
    try:
        with open(path, encoding="utf-8") as handle:
            document = json.load(handle)
    except json.JSONDecodeError as error:
        fail(f"not valid JSON ({error})")
    except UnicodeDecodeError as error:
        fail(f"not UTF-8 text ({error})")
    if not isinstance(document, dict):
        fail(f"expected a JSON object at the top level, got {type(document).__name__}")
    if document.get("format") != FILE_FORMAT:
        fail(f"not a superclasses file (format is {document.get('format')!r}, expected {FILE_FORMAT!r})")
    if document.get("version") != FILE_VERSION:
        fail(f"unsupported version {document.get('version')!r} (this tinymoe reads version {FILE_VERSION})")
    for key in ("num_classes", "num_superclasses", "classes"):
        if key not in document:
            fail(f"missing key {key!r}")
    records = document["classes"]
    if not isinstance(records, list) or not records:
        fail("'classes' must be a non-empty list of class records")
    if document["num_classes"] != len(records):
        fail(f"num_classes is {document['num_classes']!r} but 'classes' holds {len(records)} records")
    wnids, names, assignment = [], [], []
    for position, record in enumerate(records):
        if not isinstance(record, dict):
            fail(f"class record {position} is not an object")
        missing = [k for k in ("index", "wnid", "name", "superclass") if k not in record]
        if missing:
            fail(f"class record {position} lacks {missing}")
        if record["index"] != position or isinstance(record["index"], bool):
            fail(
                f"class record {position} has index {record['index']!r}; "
                "records must be in class order 0, 1, 2, ..."
            )
        group = record["superclass"]
        if not isinstance(group, int) or isinstance(group, bool) or group < 0:
            fail(f"class record {position} has superclass {group!r}; expected an integer >= 0")
        if not isinstance(record["wnid"], str) or not isinstance(record["name"], str):
            fail(f"class record {position}: wnid and name must be strings")
        wnids.append(record["wnid"])
        names.append(record["name"])
        assignment.append(group)
    assignment = np.asarray(assignment, dtype=np.int64)
    if document["num_superclasses"] != int(assignment.max()) + 1:
        fail(
            f"num_superclasses is {document['num_superclasses']!r} "
            f"but the largest superclass id is {int(assignment.max())}"
        )
    try:
        _check_superclass_content(assignment, wnids, names, "load_superclasses")
    except (TypeError, ValueError) as error:
        fail(str(error).removeprefix("load_superclasses: "))
    meta = document.get("meta", {})
    if not isinstance(meta, dict):
        fail(f"'meta' must be an object, got {type(meta).__name__}")
    return Superclasses(assignment, tuple(wnids), tuple(names), meta)


def load_predictions(path) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """Read held-out predictions from an .npz with arrays `labels` (N,), `predictions` (N,) (integer
    class indices), `wnids` (C,) strings and optionally `names` (C,) strings (default: the wnids).

    This is how predictions made elsewhere (another framework, a notebook) enter the routine.
    Returns (labels, predictions, wnids, names).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"load_predictions: {path} does not exist")
    required = ("labels", "predictions", "wnids")
    try:
        archive = np.load(path, allow_pickle=False)
    except (ValueError, OSError, zipfile.BadZipFile) as error:
        raise ValueError(f"load_predictions: {path} is not a readable .npz file ({error})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(
            f"load_predictions: {path} holds a single array; expected an .npz with arrays {list(required)}"
        )
    with archive:
        missing = [k for k in required if k not in archive.files]
        if missing:
            raise ValueError(
                f"load_predictions: {path} lacks arrays {missing}; it needs labels (N,), predictions (N,) "
                f"and wnids (C,), has {sorted(archive.files)}"
            )
        try:  # object arrays would need pickle, which is refused for safety
            arrays = {key: archive[key] for key in archive.files if key in required + ("names",)}
        except ValueError as error:
            raise ValueError(f"load_predictions: {path}: {error}; store strings as a NumPy str array") from None
    labels, predictions = arrays["labels"], arrays["predictions"]
    wnids = [str(w) for w in arrays["wnids"].reshape(-1)]
    names = [str(n) for n in arrays["names"].reshape(-1)] if "names" in arrays else list(wnids)
    return labels, predictions, wnids, names


# ----------------------------------------------------------------------------------------------------
# The whole routine and the command line
# ----------------------------------------------------------------------------------------------------


def write_superclasses(
    out,
    labels,
    predictions,
    wnids: Sequence[str],
    names: Sequence[str],
    n_groups: int,
    seed: int = 0,
    per_group: int = 5,
) -> str:
    """Held-out predictions -> superclasses JSON at `out`; returns a printable report (accuracy,
    isolated classes, balance, and the Table-1-style table)."""
    num_classes = len(wnids)
    if len(names) != num_classes:
        raise ValueError(
            f"write_superclasses: {len(names)} names for {num_classes} wnids; give one name per class"
        )
    confusion = confusion_matrix(labels, predictions, num_classes)
    assignment = cluster(confusion, n_groups, seed=seed)
    balance = group_balance(assignment, n_groups)
    images = int(confusion.sum())
    accuracy = float(np.trace(confusion)) / images if images else float("nan")
    isolated = isolated_classes(confusion)
    meta = {
        "seed": int(seed),
        "held_out_images": images,
        "held_out_accuracy": None if images == 0 else accuracy,
        "isolated_classes": [wnids[c] for c in isolated],
        "balance": balance.as_dict(),
    }
    save_superclasses(out, assignment, wnids, names, meta=meta)
    lines = [
        f"held-out split: {images} images of {num_classes} classes, dense-model accuracy {accuracy:.2%}",
        f"{isolated.size} classes never confused with another (placed by the balance rule)",
        str(balance),
        "",
        superclass_table(assignment, names, per_group=per_group),
        "",
        f"wrote {os.fspath(out)}",
    ]
    return "\n".join(lines)


def predict_held_out(
    checkpoint, data: str | None = None, batch_size: int = 256, *, holdout_fraction: float | None = None,
    holdout_seed: int | None = None, cache_dir=None,
):
    """Run a trained dense model over the held-out split: returns (labels, predictions, wnids, names).

    The held-out split must be the one the dense model did *not* train on. `python -m tinymoe.train`
    records its fraction and seed, and how it loaded the data, in the checkpoint's metadata; they are
    read from there. `data`, `holdout_fraction` and `holdout_seed` override them (needed only for a
    checkpoint trained some other way).
    """
    # Imported here: the clustering above needs none of this, and pipeline imports this module.
    from tinymoe.checkpoint import load_checkpoint, load_model
    from tinymoe.data import holdout_split
    from tinymoe.evaluation import predict
    from tinymoe.pipeline import load_splits

    recorded = load_checkpoint(checkpoint).metadata
    fraction = recorded.get("holdout_fraction") if holdout_fraction is None else holdout_fraction
    seed = recorded.get("holdout_seed") if holdout_seed is None else holdout_seed
    if fraction is None or seed is None:
        raise ValueError(
            f"{checkpoint} does not record which held-out split its training excluded (it was not written by "
            "python -m tinymoe.train); pass --holdout-fraction and --holdout-seed with the values its training used"
        )
    load_args = dict(recorded.get("data") or {})
    if data is not None:
        load_args = {"data": data} if data != load_args.get("data") else load_args
    if "data" not in load_args:
        raise ValueError(f"{checkpoint} does not record its dataset; pass --data")
    model = load_model(checkpoint)
    splits = load_splits(**load_args, cache_dir=cache_dir)
    if splits.num_classes != model.config.num_classes:
        raise ValueError(
            f"{checkpoint} classifies {model.config.num_classes} classes but {splits.name} has {splits.num_classes}"
        )
    _, held_out = holdout_split(splits.train_labels, fraction, seed=seed)
    logits = predict(model, splits.train_images[held_out], batch_size).logits
    return splits.train_labels[held_out], np.argmax(logits, axis=1), splits.wnids, splits.classes


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tinymoe.superclasses",
        description=(
            "Group classes into superclasses (one per expert) by clustering a dense model's confusion "
            "graph on the held-out split, write them as JSON and print a table of them."
        ),
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="trained dense model (.npz) to evaluate on the held-out split")
    source.add_argument(
        "--predictions",
        help="held-out predictions made elsewhere: .npz with labels, predictions, wnids (and optionally names)",
    )
    parser.add_argument(
        "--data", "--data-dir", dest="data", default=None,
        help="with --checkpoint: the dataset, as for python -m tinymoe.train (default: the one it was trained on)",
    )
    parser.add_argument("--holdout-fraction", type=float, default=None,
                        help="with --checkpoint: override the held-out fraction recorded in it")
    parser.add_argument("--holdout-seed", type=int, default=None,
                        help="with --checkpoint: override the held-out seed recorded in it")
    parser.add_argument("--cache-dir", default=None, help="where decoded images are cached")
    parser.add_argument(
        "--experts", "-E", type=int, required=True, help="number of superclasses = number of experts"
    )
    parser.add_argument("--out", "--output", dest="out", default="superclasses.json", help="JSON file to write")
    parser.add_argument("--seed", type=int, default=0, help="seed of the k-means restarts (default 0)")
    parser.add_argument("--per-group", type=int, default=5, help="class names shown per superclass in the table")
    parser.add_argument("--batch-size", "-b", type=int, default=256, help="evaluation batch size")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.checkpoint is not None:
        from tinymoe.checkpoint import CheckpointError
        from tinymoe.data import DatasetFormatError, DatasetNotFoundError

        try:
            labels, predictions, wnids, names = predict_held_out(
                args.checkpoint, data=args.data, batch_size=args.batch_size, holdout_fraction=args.holdout_fraction,
                holdout_seed=args.holdout_seed, cache_dir=args.cache_dir,
            )
        except (CheckpointError, DatasetFormatError, DatasetNotFoundError, ValueError) as error:
            parser.exit(1, f"{parser.prog}: error: {error}\n")
    else:
        try:
            labels, predictions, wnids, names = load_predictions(args.predictions)
        except (OSError, ValueError) as error:
            parser.exit(1, f"{parser.prog}: error: {error}\n")
    try:
        report = write_superclasses(
            args.out, labels, predictions, wnids, names, args.experts, seed=args.seed, per_group=args.per_group
        )
    except (OSError, TypeError, ValueError) as error:
        parser.exit(1, f"{parser.prog}: error: {error}\n")
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
