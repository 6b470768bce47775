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
    if layout == "fortran" or a.ndim == 0:
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
