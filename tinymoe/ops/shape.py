"""Ops that move entries around without changing them: reshape, transpose, indexing, gather/scatter,
concatenate and stack.

None of them does arithmetic, so every backward only routes each output gradient back to the input
entry it came from:

- reshape and transpose are bijections between positions: the backward applies the inverse map.
- getitem and take *select* entries, possibly the same entry several times. The backward starts from
  zeros and adds each output gradient into the position it was read from, with `np.add.at`, which
  (unlike `grad[idx] += g`) accumulates repeated indices instead of keeping only the last write.
- scatter_add is the adjoint of take: take reads out[i] = x[idx[i]], scatter_add writes
  out[idx[i]] += src[i]. So each one's backward is the other one's forward. A sparse MoE layer is built
  on this pair: take dispatches tokens to their experts, scatter_add combines the experts' outputs.
- concatenate and stack place inputs side by side: the backward cuts the gradient back into pieces.
"""

from __future__ import annotations

import operator

import numpy as np

from tinymoe.ops.elementwise import lift
from tinymoe.ops.reduction import normalize_axes
from tinymoe.tensor import Tensor


def _single_axis(axis, ndim: int, op: str) -> int:
    """One axis (an int, possibly negative) checked against `ndim` and made non-negative."""
    try:
        axis = operator.index(axis)
    except TypeError:
        raise TypeError(f"{op}: axis must be an int, got {axis!r}") from None
    return normalize_axes(axis, ndim, op)[0]


# ------------------------------------------------------------------------------------------------
# reshape, transpose
# ------------------------------------------------------------------------------------------------
def reshape(x, shape) -> Tensor:
    """The same entries in row-major order, in a new shape (one axis may be -1: inferred)."""
    (x,) = lift(x)
    try:
        out = x.data.reshape(shape)
    except (ValueError, TypeError) as e:
        raise ValueError(
            f"reshape: cannot reshape a tensor of shape {x.shape} ({x.size} entries) into shape {shape!r}: {e}"
        ) from None
    return Tensor.from_op(out, (x,), lambda g: (g.reshape(x.shape),), "reshape")


def transpose(x, axes=None) -> Tensor:
    """Permute the axes: output axis i is input axis axes[i]. axes=None reverses them (a matrix's transpose).

    Backward: the gradient is permuted back by the inverse permutation, which sends axis axes[i] home to i.
    """
    (x,) = lift(x)
    if axes is None:
        axes = tuple(reversed(range(x.ndim)))
    else:
        axes = tuple(axes)
        if len(axes) != x.ndim:
            raise ValueError(
                f"transpose: axes {axes} do not list the {x.ndim} axes of a tensor of shape {x.shape}"
            )
        normalized = [normalize_axes(a, x.ndim, "transpose")[0] for a in axes]
        if sorted(normalized) != list(range(x.ndim)):
            raise ValueError(
                f"transpose: axes {axes} are not a permutation of the axes of a tensor of shape {x.shape}"
            )
        axes = tuple(normalized)
    inverse = tuple(int(i) for i in np.argsort(axes))
    return Tensor.from_op(x.data.transpose(axes), (x,), lambda g: (g.transpose(inverse),), "transpose")


# ------------------------------------------------------------------------------------------------
# getitem
# ------------------------------------------------------------------------------------------------
def _index_part(part):
    """Index components that are Tensors become their arrays: indices are data, never differentiated."""
    return part.data if isinstance(part, Tensor) else part


def _is_basic(index: tuple) -> bool:
    """True if NumPy treats the index as *basic* (ints, slices, None, Ellipsis): then every output
    entry comes from a different input entry. Anything else (integer arrays, lists, boolean masks,
    including a bare True/False) is *advanced* and may read the same entry more than once."""
    for part in index:
        if part is None or part is Ellipsis or isinstance(part, slice):
            continue
        if isinstance(part, (bool, np.bool_)):
            return False
        if isinstance(part, (int, np.integer)):
            continue
        return False
    return True


def getitem(x, index) -> Tensor:
    """x[index] with NumPy semantics: ints, slices, None/np.newaxis, Ellipsis, integer arrays and
    boolean masks.

    Backward: a zero gradient for x with each output gradient added at the position it was read from.
    Advanced indices may read a position several times (x[[0, 0]]); `np.add.at` then adds every
    contribution, where plain `grad[index] = g` would keep only one of them.
    """
    (x,) = lift(x)
    given = index
    index = tuple(_index_part(p) for p in index) if isinstance(index, tuple) else (_index_part(index),)
    try:
        out = x.data[index]
    except IndexError as e:
        raise IndexError(f"getitem: {e} (indexing a tensor of shape {x.shape} with {given!r})") from None
    basic = _is_basic(index)

    def backward(g):
        grad = np.zeros_like(x.data)
        if basic:
            grad[index] = g  # each input position appears at most once: assignment is enough
        else:
            np.add.at(grad, index, g)  # repeated positions accumulate
        return (grad,)

    return Tensor.from_op(np.asarray(out), (x,), backward, "getitem")


# ------------------------------------------------------------------------------------------------
# take (gather) and scatter_add, the adjoint pair behind MoE dispatch and combine
# ------------------------------------------------------------------------------------------------
def _check_indices(indices, size: int, axis: int, op: str) -> np.ndarray:
    """`indices` as an integer array whose entries all lie in [0, size), else a clear error.

    Negative indices are refused rather than counted from the end: in routing code a -1 usually marks
    a dropped token, and silently sending it to the last expert would hide the bug.
    """
    idx = np.asarray(_index_part(indices))
    if idx.size == 0:
        return idx.astype(np.intp)
    if idx.dtype.kind not in "iu":
        raise TypeError(f"{op}: indices must be integers, got dtype {idx.dtype} (for boolean masks use getitem)")
    low, high = idx.min(), idx.max()
    if low < 0 or high >= size:
        bad = low if low < 0 else high
        raise IndexError(
            f"{op}: index {bad} is out of range for axis {axis} of size {size}; valid indices are "
            f"0..{size - 1} (negative indices are not accepted)"
        )
    return idx


def occurrence_rank(idx: np.ndarray) -> np.ndarray:
    """For each position j, how many earlier positions hold the same index: [3, 5, 3, 3] -> [0, 0, 1, 2]."""
    order = np.argsort(idx, kind="stable")
    sorted_idx = idx[order]
    first = np.ones(idx.size, dtype=bool)
    first[1:] = sorted_idx[1:] != sorted_idx[:-1]  # where each run of equal indices starts
    positions = np.arange(idx.size)
    run_start = np.maximum.accumulate(np.where(first, positions, 0))
    rank = np.empty(idx.size, dtype=np.int64)
    rank[order] = positions - run_start
    return rank


def _scatter_add_array(values: np.ndarray, idx: np.ndarray, size: int, axis: int) -> np.ndarray:
    """out[..., idx[j], ...] += values[..., j, ...] (j over idx's positions), with `size` along `axis`.

    `out[idx] += v` keeps only one of several writes to the same row, and `np.add.at`, which adds them
    all, goes element by element (~20x slower on MoE-sized arrays). So: split the positions into rounds
    by how many times their index occurred before (`occurrence_rank`); within a round no index repeats,
    and a plain fancy-index `+=` is exact. Unique indices (a permutation, MoE routing with k=1) take
    one round; k experts per image take k rounds.
    """
    out_shape = values.shape[:axis] + (size,) + values.shape[axis + idx.ndim :]
    out = np.zeros(out_shape, dtype=values.dtype)
    flat_idx = idx.reshape(-1)  # (n,)
    # Bring the indexed axes of `values` and `axis` of `out` to the front: rows are then scattered whole.
    rows = np.moveaxis(values, tuple(range(axis, axis + idx.ndim)), tuple(range(idx.ndim)))
    rows = rows.reshape((flat_idx.size,) + rows.shape[idx.ndim :])  # (n, ...rest)
    target = np.moveaxis(out, axis, 0)  # a view: writing into it writes `out`
    if flat_idx.size == 0:
        return out
    rank = occurrence_rank(flat_idx)
    for r in range(int(rank.max()) + 1):
        chosen = np.flatnonzero(rank == r)
        target[flat_idx[chosen]] += rows[chosen]
    return out


def take(x, indices, axis: int = 0) -> Tensor:
    """Gather: out = x[..., indices, ...] with `indices` (any shape) indexing `axis`.

    Output shape: x.shape[:axis] + indices.shape + x.shape[axis+1:]. Indices may repeat (one input
    row read by several outputs, e.g. one token sent to two experts). Backward: scatter_add of the
    output gradient back to the rows that were read.
    """
    (x,) = lift(x)
    if x.ndim == 0:
        raise ValueError("take: cannot gather from a 0-d tensor; it has no axis to index")
    axis = _single_axis(axis, x.ndim, "take")
    idx = _check_indices(indices, x.shape[axis], axis, "take")
    out = np.take(x.data, idx, axis=axis)

    def backward(g):
        return (_scatter_add_array(g, idx, x.shape[axis], axis),)

    return Tensor.from_op(out, (x,), backward, "take")


def scatter_add(src, indices, size: int, axis: int = 0) -> Tensor:
    """The adjoint of take: a zero tensor with `size` entries along `axis`, and out[indices[i]] += src[i].

    `src` has shape out.shape[:axis] + indices.shape + out.shape[axis+1:] (the shape `take` would have
    produced). Several i with the same index add up, e.g. the outputs of the experts a token was sent to.
    Backward: gather the output gradient at `indices` (take), since out[j] depends on src[i] with
    derivative 1 exactly when indices[i] == j.
    """
    (src,) = lift(src)
    try:
        size = operator.index(size)
    except TypeError:
        raise TypeError(f"scatter_add: size must be an int, got {size!r}") from None
    if size < 0:
        raise ValueError(f"scatter_add: size must be >= 0, got {size}")
    idx_shape = np.shape(_index_part(indices))
    out_ndim = src.ndim - len(idx_shape) + 1
    if out_ndim < 1:
        raise ValueError(
            f"scatter_add: src of shape {src.shape} has fewer axes than indices of shape {idx_shape}; "
            "src must have shape out.shape[:axis] + indices.shape + out.shape[axis+1:]"
        )
    axis = _single_axis(axis, out_ndim, "scatter_add")
    idx = _check_indices(indices, size, axis, "scatter_add")
    if src.shape[axis : axis + idx.ndim] != idx.shape:
        raise ValueError(
            f"scatter_add: src of shape {src.shape} does not match indices of shape {idx.shape} at axis {axis}: "
            "src must have shape out.shape[:axis] + indices.shape + out.shape[axis+1:]"
        )
    out = _scatter_add_array(src.data, idx, size, axis)

    def backward(g):
        return (np.take(g, idx, axis=axis),)

    return Tensor.from_op(out, (src,), backward, "scatter_add")


# ------------------------------------------------------------------------------------------------
# concatenate, stack
# ------------------------------------------------------------------------------------------------
def _shapes_text(tensors) -> str:
    return ", ".join(str(t.shape) for t in tensors)


def concatenate(tensors, axis: int = 0) -> Tensor:
    """Join tensors along an existing axis; all other axes must match.

    Backward: cut the gradient along `axis` at the same boundaries, one piece per input.
    """
    tensors = lift(*tensors)
    if not tensors:
        raise ValueError("concatenate: needs at least one tensor")
    ndim = tensors[0].ndim
    if ndim == 0 or any(t.ndim != ndim for t in tensors):
        raise ValueError(
            "concatenate: all tensors need the same number of axes (at least 1), "
            f"got shapes {_shapes_text(tensors)}"
        )
    axis = _single_axis(axis, ndim, "concatenate")
    others = {t.shape[:axis] + t.shape[axis + 1 :] for t in tensors}
    if len(others) > 1:
        raise ValueError(
            f"concatenate: shapes must match except along axis {axis}, got {_shapes_text(tensors)}"
        )
    out = np.concatenate([t.data for t in tensors], axis=axis)
    boundaries = np.cumsum([t.shape[axis] for t in tensors])[:-1]  # where one input ends and the next begins

    def backward(g):
        return tuple(np.split(g, boundaries, axis=axis))

    return Tensor.from_op(out, tensors, backward, "concatenate")


def stack(tensors, axis: int = 0) -> Tensor:
    """Join same-shaped tensors along a new axis (inserted at position `axis` of the output).

    Backward: input i receives the slice i of the gradient along that axis.
    """
    tensors = lift(*tensors)
    if not tensors:
        raise ValueError("stack: needs at least one tensor")
    if len({t.shape for t in tensors}) > 1:
        raise ValueError(f"stack: all tensors must have the same shape, got {_shapes_text(tensors)}")
    axis = _single_axis(axis, tensors[0].ndim + 1, "stack")  # the output has one more axis
    out = np.stack([t.data for t in tensors], axis=axis)

    def backward(g):
        return tuple(g[(slice(None),) * axis + (i,)] for i in range(len(tensors)))

    return Tensor.from_op(out, tensors, backward, "stack")
