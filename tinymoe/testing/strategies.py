"""Hypothesis strategies shared by every property test (and usable for your own ops).

Requires the `test` extra (hypothesis). The values they draw are *well-conditioned*: moderate
magnitudes, so float64 finite differences are accurate, and optionally kept away from zero or from
each other where an op has a kink (relu, max) or a pole (division, log).

    >>> from hypothesis import given
    >>> from tinymoe.testing import strategies as st_
    >>> @given(st_.arrays(st_.shapes()))
    ... def test_something(x): ...
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tinymoe.testing.confusion import planted_confusion


def shapes(min_dims: int = 0, max_dims: int = 3, min_side: int = 1, max_side: int = 4):
    """Array shapes, including size-1 axes (the ones broadcasting stretches) and 0-d scalars."""
    return hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=min_side, max_side=max_side)


def broadcastable_shapes(num_shapes: int = 2, min_dims: int = 0, max_dims: int = 3, max_side: int = 4):
    """`num_shapes` shapes that broadcast together (some with fewer axes, some with size-1 axes)."""
    return hnp.mutually_broadcastable_shapes(
        num_shapes=num_shapes, min_dims=min_dims, max_dims=max_dims, max_side=max_side
    ).map(lambda r: r.input_shapes)


def _finite(low: float, high: float):
    return st.floats(low, high, allow_nan=False, allow_infinity=False, allow_subnormal=False)


def arrays(shape, low: float = -2.0, high: float = 2.0, *, away_from_zero: float = 0.0, dtype=np.float64):
    """Float arrays with values in [low, high]; with `away_from_zero=d`, every |value| >= d.

    `shape` may be a tuple or a strategy of tuples.
    """
    elements = _finite(low, high)
    if away_from_zero:
        elements = elements.filter(lambda v: abs(v) >= away_from_zero)
    return hnp.arrays(dtype=dtype, shape=shape, elements=elements)


def positive_arrays(shape, low: float = 0.2, high: float = 3.0, dtype=np.float64):
    """Strictly positive values, for log, division and fractional powers."""
    return hnp.arrays(dtype=dtype, shape=shape, elements=_finite(low, high))


def distinct_arrays(shape, low: float = -2.0, high: float = 2.0, min_gap: float = 1e-3, dtype=np.float64):
    """Arrays whose values are pairwise at least `min_gap` apart, so max/argmax have no ties.

    Drawn as a random permutation of evenly spread values plus a small jitter, which is both fast and
    guaranteed (filtering random floats for distinctness would reject too often on larger arrays).
    """

    def build(shape_and_seed):
        shp, seed = shape_and_seed
        n = int(np.prod(shp, dtype=np.int64))
        rng = np.random.default_rng(seed)
        step = (high - low) / max(n, 1)
        if step < 2 * min_gap:
            raise ValueError(f"distinct_arrays: {n} values do not fit in [{low}, {high}] with gap {min_gap}")
        values = low + step * (np.arange(n) + 0.5) + rng.uniform(-0.25, 0.25, n) * step
        return rng.permutation(values).astype(dtype).reshape(shp)

    shape_strategy = shape if isinstance(shape, st.SearchStrategy) else st.just(tuple(shape))
    return st.tuples(shape_strategy, st.integers(0, 2**32 - 1)).map(build)


@st.composite
def maybe_noncontiguous(draw, array_strategy):
    """The drawn array, or the same values in a non-contiguous layout (a transposed or strided view).

    Ops must give identical results either way; kernels that assume C-contiguity fail here.
    """
    a = draw(array_strategy)
    layout = draw(st.sampled_from(["contiguous", "fortran", "strided"]))
    if a.ndim == 0:  # one number has one layout (and np.asfortranarray would turn it into shape (1,))
        return a
    if layout == "fortran":
        return np.asfortranarray(a)
    if layout == "strided":
        # Embed the values in an array twice as long on the last axis and take every other element.
        big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), dtype=a.dtype)
        big[..., ::2] = a
        view = big[..., ::2]
        assert not view.flags.c_contiguous or a.shape[-1] <= 1
        return view
    return a


def labels(num_classes: int, size: int):
    """Integer class labels in [0, num_classes)."""
    return hnp.arrays(dtype=np.int64, shape=(size,), elements=st.integers(0, num_classes - 1))


def soft_targets(batch: int, num_classes: int, normalized: bool = True, dtype=np.float64):
    """(batch, num_classes) non-negative class probabilities (soft labels, as mixup makes), some zero.

    Each row sums to 1 if `normalized`; otherwise rows are arbitrary non-negative weights, which
    cross-entropy must still differentiate exactly.
    """
    elements = st.one_of(st.just(0.0), _finite(0.05, 1.0))
    weights = hnp.arrays(dtype=dtype, shape=(batch, num_classes), elements=elements)

    def finish(w):
        w = w.copy()
        w[:, 0] += (w.sum(axis=1) == 0)  # no all-zero rows: a target needs some probability mass
        return w / w.sum(axis=1, keepdims=True) if normalized else w

    return weights.map(finish)


@st.composite
def attention_shapes(draw, max_tokens: int = 4, max_width: int = 3):
    """Shapes (q, k, v) = ((B, H, Nq, D), (B, H, Nk, D), (B, H, Nk, Dv)) with odd sizes allowed and
    Nq != Nk possible; small enough (<= 2*2*4*3 = 48 entries each) for a finite-difference check."""
    b, h = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    nq, nk = draw(st.integers(1, max_tokens)), draw(st.integers(1, max_tokens))
    d, dv = draw(st.integers(1, max_width)), draw(st.integers(1, max_width))
    return (b, h, nq, d), (b, h, nk, d), (b, h, nk, dv)


# --------------------------------------------------------------------------------------------------
# Arguments of the primitive ops (reductions, matmul, reshape, indexing, gather/scatter)
# --------------------------------------------------------------------------------------------------
def reduction_axes(ndim: int):
    """The `axis` argument of a reduction over an array with `ndim` axes: None, one axis, or a tuple of
    distinct axes in any order; every axis may be written as a negative number (counted from the end)."""
    if ndim == 0:
        return st.sampled_from([None, ()])
    single = st.integers(-ndim, ndim - 1)
    several = st.lists(st.integers(0, ndim - 1), unique=True, max_size=ndim).flatmap(
        lambda axes: st.tuples(*[st.sampled_from([a, a - ndim]) for a in axes])
    )
    return st.none() | single | several


@st.composite
def matmul_shapes(draw, max_side: int = 3, max_batch_dims: int = 2, max_batch_side: int = 2):
    """A pair of shapes (a_shape, b_shape) that `a @ b` accepts, covering all of NumPy's cases:
    vector·vector, vector·matrix, matrix·vector, matrix·matrix, and batched (..., n, k) @ (..., k, m)
    where the batch axes broadcast (one side may have fewer of them, or size-1 ones) and either side
    may be a plain vector or matrix. The defaults keep every operand at 36 entries or fewer."""
    n, k, m = (draw(st.integers(1, max_side)) for _ in range(3))
    batch_a, batch_b = draw(broadcastable_shapes(2, min_dims=0, max_dims=max_batch_dims, max_side=max_batch_side))
    kind_a, kind_b = (draw(st.sampled_from(["vector", "matrix", "batched"])) for _ in range(2))
    a_shape = {"vector": (k,), "matrix": (n, k), "batched": tuple(batch_a) + (n, k)}[kind_a]
    b_shape = {"vector": (k,), "matrix": (k, m), "batched": tuple(batch_b) + (k, m)}[kind_b]
    return a_shape, b_shape


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


@st.composite
def reshape_targets(draw, shape):
    """A shape with the same number of entries as `shape` (a random factorisation, with size-1 axes
    and sometimes one axis given as -1 for reshape to infer)."""
    remaining = int(np.prod(shape, dtype=np.int64))
    target = []
    for _ in range(draw(st.integers(0, 3))):
        d = draw(st.sampled_from(_divisors(remaining))) if remaining else 0
        target.append(d)
        remaining = remaining // d if d else 0
    target.append(remaining)
    target = draw(st.permutations(target))
    if target and remaining and draw(st.booleans()):  # -1 is ambiguous for empty arrays, so only then
        target[draw(st.integers(0, len(target) - 1))] = -1
    return tuple(target)


def index_arrays(size: int, shape):
    """Integer index arrays with entries in [0, size), repeats included (e.g. several tokens sent to
    one expert). `shape` may be a tuple or a strategy of tuples."""
    return hnp.arrays(dtype=np.int64, shape=shape, elements=st.integers(0, size - 1))


@st.composite
def getitem_indices(draw, shape):
    """An index `i` valid for `x[i]` with x of `shape`, covering NumPy's kinds of indexing:
    basic (ints, slices with steps, None/newaxis, Ellipsis), one integer array beside slices (negative
    and repeated entries), several integer arrays broadcast together, and a boolean mask over the
    leading axes."""
    kinds = ["basic"]
    if len(shape) and all(n > 0 for n in shape):
        kinds += ["integer_array", "integer_arrays", "mask"]
    kind = draw(st.sampled_from(kinds))
    if kind == "basic":
        return draw(hnp.basic_indices(shape, allow_newaxis=True, allow_ellipsis=True))
    if kind == "integer_array":
        axis = draw(st.integers(0, len(shape) - 1))
        n = shape[axis]
        array_shape = hnp.array_shapes(min_dims=0, max_dims=2, max_side=3)
        idx = draw(hnp.arrays(np.int64, array_shape, elements=st.integers(-n, n - 1)))
        # One slice per axis before `axis` so the array lands on it; a None adds an axis and consumes none.
        slices = st.sampled_from([slice(None), slice(None, None, -1), slice(1, None)])
        leading = tuple(draw(slices) for _ in range(axis))
        newaxis = draw(st.sampled_from([(), (None,)]))
        return newaxis + leading + (idx,) + draw(st.sampled_from([(), (Ellipsis,), (None,)]))
    if kind == "integer_arrays":
        result_shape = hnp.array_shapes(min_dims=1, max_dims=2, max_side=3)
        return draw(hnp.integer_array_indices(shape, result_shape=result_shape))
    k = draw(st.integers(1, len(shape)))
    return (draw(hnp.arrays(np.bool_, shape[:k])),)


# --------------------------------------------------------------------------------------------------
# Confusion matrices (superclass clustering)
# --------------------------------------------------------------------------------------------------
@st.composite
def planted_confusions(draw, n_groups=None, min_size: int = 2, max_size: int = 12, max_noise: float = 0.2):
    """(confusion (C, C) int64, truth (C,) int64): a confusion matrix whose mistakes stay inside planted
    superclasses of unequal sizes, except a fraction of stray mistakes (noise) to other groups.

    `n_groups` is an int, a strategy, or None (2..20). Sizes are drawn in [min_size, max_size]; with
    min_size >= 2 and the default max_noise the planted grouping is unambiguous, so a clustering
    routine should recover it exactly. See `tinymoe.testing.confusion.planted_confusion`.
    """
    if n_groups is None:
        n_groups = st.integers(2, 20)
    groups = draw(n_groups) if isinstance(n_groups, st.SearchStrategy) else int(n_groups)
    sizes = draw(st.lists(st.integers(min_size, max_size), min_size=groups, max_size=groups))
    noise = draw(st.floats(0.0, max_noise))
    seed = draw(st.integers(0, 2**32 - 1))
    return planted_confusion(sizes, seed=seed, noise=noise)


@st.composite
def confusion_matrices(draw, max_classes: int = 30):
    """Arbitrary (C, C) non-negative int64 count matrices, 1 <= C <= max_classes, with the awkward cases
    drawn often: all zeros, diagonal only (a perfect model), a few confused classes among many never
    confused, one row or column only, and sparse or dense random counts."""
    size = draw(st.integers(1, max_classes))
    kind = draw(st.sampled_from(["zeros", "diagonal", "few_confused", "one_line", "sparse", "dense"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    counts = np.zeros((size, size), dtype=np.int64)
    if kind == "diagonal":
        counts[np.diag_indices(size)] = rng.integers(1, 100, size)
    elif kind == "few_confused":
        counts[np.diag_indices(size)] = rng.integers(0, 100, size)
        pairs = rng.integers(0, size, (draw(st.integers(1, 3)), 2))
        counts[pairs[:, 0], pairs[:, 1]] += rng.integers(1, 20, len(pairs))
    elif kind == "one_line":
        line = int(rng.integers(size))
        if draw(st.booleans()):
            counts[line] = rng.integers(0, 50, size)
        else:
            counts[:, line] = rng.integers(0, 50, size)
    elif kind == "sparse":
        counts = rng.integers(0, 30, (size, size)) * (rng.random((size, size)) < 0.1)
    elif kind == "dense":
        counts = rng.integers(0, 30, (size, size))
    return counts.astype(np.int64)
