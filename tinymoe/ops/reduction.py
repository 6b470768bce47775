"""Reductions: sum, mean and max over any set of axes, with or without `keepdims`.

A reduction maps many input entries to one output entry, so its backward does the opposite: it
*spreads* each output gradient back over the entries that were reduced into it.

- sum:  every reduced entry contributed with weight 1, so each one receives the output gradient as is.
- mean: every entry contributed with weight 1/n, so each receives the output gradient divided by n.
- max:  only the largest entry contributed, so it alone receives the gradient (see `max` for ties).

Spreading is broadcasting: the output gradient, with the reduced axes put back as size-1 axes, is
broadcast to the input's shape. That is the only shape work these backwards do.

`axis` may be None (reduce everything), an int, or a tuple of ints; negative axes count from the end,
as in NumPy.
"""

from __future__ import annotations

import operator

import numpy as np

from tinymoe.ops.elementwise import lift
from tinymoe.tensor import Tensor


def normalize_axes(axis, ndim: int, op: str) -> tuple[int, ...]:
    """`axis` (None, int or sequence of ints, possibly negative) as a sorted tuple of axes in [0, ndim).

    Raises a ValueError naming `op` for an axis out of range or listed twice, and a TypeError for
    anything that is not an integer.
    """
    if axis is None:
        return tuple(range(ndim))
    raw = (axis,) if not isinstance(axis, (tuple, list)) else tuple(axis)
    axes = []
    for a in raw:
        try:
            a = operator.index(a)  # ints and NumPy integers; floats are rejected
        except TypeError:
            raise TypeError(f"{op}: axis must be an int or a tuple of ints, got {axis!r}") from None
        if not -ndim <= a < ndim:
            valid = f"{-ndim}..{ndim - 1}" if ndim else "none (the tensor is 0-d; use axis=None)"
            raise ValueError(f"{op}: axis {a} is out of range for a tensor with {ndim} dims; valid axes: {valid}")
        axes.append(a % ndim)
    if len(set(axes)) != len(axes):
        raise ValueError(f"{op}: axis {axis!r} names the same axis more than once")
    return tuple(sorted(axes))


def _kept_shape(shape: tuple[int, ...], axes: tuple[int, ...]) -> tuple[int, ...]:
    """`shape` with every reduced axis set to 1: the shape of the output had keepdims been True."""
    return tuple(1 if i in axes else n for i, n in enumerate(shape))


def sum(x, axis=None, keepdims: bool = False) -> Tensor:
    """Sum over `axis`. Backward: d(sum)/dx_i = 1, so each input entry receives its output's gradient."""
    (x,) = lift(x)
    axes = normalize_axes(axis, x.ndim, "sum")
    out = np.sum(x.data, axis=axes, keepdims=keepdims)
    kept = _kept_shape(x.shape, axes)

    def backward(g):
        # (kept) -> broadcast to x's shape; copy so the gradient is an ordinary writable array
        return (np.broadcast_to(g.reshape(kept), x.shape).copy(),)

    return Tensor.from_op(np.asarray(out), (x,), backward, "sum")


def mean(x, axis=None, keepdims: bool = False) -> Tensor:
    """Mean over `axis`: sum / n, where n is the number of entries reduced into each output entry.

    Backward: d(mean)/dx_i = 1/n.
    """
    (x,) = lift(x)
    axes = normalize_axes(axis, x.ndim, "mean")
    n = int(np.prod([x.shape[a] for a in axes], dtype=np.int64))
    if n == 0:
        raise ValueError(f"mean: cannot average over an empty axis (shape {x.shape}, axis {axis!r})")
    out = np.mean(x.data, axis=axes, keepdims=keepdims)
    kept = _kept_shape(x.shape, axes)

    def backward(g):
        # g / n keeps g's dtype: n is a Python int, which NumPy treats as a weak scalar (no upcast)
        return (np.broadcast_to(g.reshape(kept) / n, x.shape).copy(),)

    return Tensor.from_op(np.asarray(out), (x,), backward, "mean")


def max(x, axis=None, keepdims: bool = False) -> Tensor:
    """Largest entry over `axis`.

    Backward: the max is a selection, so its gradient flows only to the entry that was selected (the
    argmax); all other entries get 0. At a tie (k entries equal to the max) the function is not
    differentiable; we split the gradient evenly, giving each tied entry 1/k of it. That keeps the
    total gradient equal to the output gradient and matches `maximum`'s rule for two inputs
    (it is also what PyTorch's `amax` does).
    """
    (x,) = lift(x)
    axes = normalize_axes(axis, x.ndim, "max")
    if any(x.shape[a] == 0 for a in axes):
        raise ValueError(f"max: cannot take the max over an empty axis (shape {x.shape}, axis {axis!r})")
    out_kept = np.max(x.data, axis=axes, keepdims=True)  # (kept): broadcasts against x
    out = out_kept if keepdims else out_kept.reshape([n for i, n in enumerate(x.shape) if i not in axes])

    def backward(g):
        winners = x.data == out_kept  # True at the max of each reduced group (several at a tie)
        count = np.sum(winners, axis=axes, keepdims=True)  # k, the number of tied winners per group
        share = winners / count.astype(g.dtype)  # 1/k at each winner, 0 elsewhere (in g's dtype)
        return (g.reshape(out_kept.shape) * share,)

    return Tensor.from_op(np.asarray(out), (x,), backward, "max")
