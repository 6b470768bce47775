"""The paper's algorithm: which classes should share an expert (Mobile V-MoE, Daxberger et al., 2023).

    labels, predictions of a dense model on the held-out split
      -> confusion_matrix    (C, C) counts, row = true class, column = predicted class
      -> confusion_graph     (C, C) symmetric edge weights in [0, 1], no self-loops
      -> spectral_embedding  one unit-length point in R^k per class
      -> kmeans              k groups, none empty
      -> cluster             (C,) superclass id of each class: exactly E non-empty groups

`cluster` runs the last three steps (and places classes that were never confused); `superclasses_from_predictions`
runs all of them. Pure NumPy, no I/O, nothing else from tinymoe: the eigen-solver is `np.linalg.eigh`,
k-means is written out below. Files and tables are in `tinymoe.superclasses.files`.
"""

from __future__ import annotations

import operator

import numpy as np

__all__ = [
    "confusion_matrix",
    "confusion_graph",
    "isolated_classes",
    "spectral_embedding",
    "kmeans",
    "canonical_labels",
    "cluster",
    "superclasses_from_predictions",
]


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


def superclasses_from_predictions(
    labels, predictions, num_classes: int, n_groups: int, seed: int = 0
) -> np.ndarray:
    """The paper's routine from a dense model's held-out predictions: confusion matrix -> `cluster`.

    labels, predictions: (N,) class indices on the held-out split (carved from train, never the
    validation set). Returns (num_classes,) int64 superclass id per class, exactly n_groups groups.
    """
    return cluster(confusion_matrix(labels, predictions, num_classes), n_groups, seed=seed)
