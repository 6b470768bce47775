"""The pieces of sparse routing that are not in `tinymoe.ops`: choosing experts, planning the dispatch,
expert capacity, and two differentiable ops (a grouped linear map and the normal CDF).

How a sparse MoE layer runs here (per-image and per-token routing alike):

    1. a router scores each *row* (an image, or a token) against the E experts: probs = softmax(W r);
    2. `top_k` picks each row's k best experts (`experts`, (R, k)) and their gate values;
    3. `plan_dispatch` lists the (row, choice) pairs sorted by expert, so that each expert's rows are one
       contiguous block: `source[i]` is the row read by dispatched row i, `group_sizes[e]` how many
       rows expert e gets. Rows dropped by a capacity limit are simply not listed;
    4. ops.take(x, source) gathers the rows (copies of an image for each of its k experts), the experts
       run as two `expert_linear` calls (one matrix product per expert, never E masked ones), each
       result is scaled by its gate, and ops.scatter_add(y, source) sums each row's k outputs back.

Every step costs O(rows · k), so an image routed to one of ten experts costs what a dense MLP costs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tinymoe.ops.validate import float_operands
from tinymoe.tensor import Tensor


# --------------------------------------------------------------------------------------------------
# Choosing experts (not differentiable: the choice is discrete; gradients reach the router through
# the gate values, which are read from the softmax with ops.getitem)
# --------------------------------------------------------------------------------------------------
def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest entries along the last axis, largest first; ties go to the lower index.

    (..., E) -> (..., k) int64. A stable sort of -scores keeps equal scores in index order, so the
    choice is deterministic, which the tests of permutation equivariance rely on.
    """
    if not 1 <= k <= scores.shape[-1]:
        raise ValueError(f"top_k: k={k} must be between 1 and the number of experts {scores.shape[-1]}")
    return np.argsort(-scores, axis=-1, kind="stable")[..., :k].astype(np.int64)


@dataclass(frozen=True)
class Dispatch:
    """Which rows each expert processes, listed expert by expert.

    Attributes:
        source: (M,) the input row each dispatched row reads (an image index, or a flat token index).
        choice: (M,) the position of that (row, choice) pair in the flattened (R, k) gate array, so
            gates.reshape(-1)[choice] lines the gate values up with the dispatched rows.
        group_sizes: (E,) rows per expert; dispatched rows [sum(group_sizes[:e]), ... + group_sizes[e])
            belong to expert e.
        num_rows: R, the number of input rows (the size scatter_add restores).
    """

    source: np.ndarray
    choice: np.ndarray
    group_sizes: np.ndarray
    num_rows: int


def plan_dispatch(experts: np.ndarray, num_experts: int, keep: np.ndarray | None = None) -> Dispatch:
    """Sort the (row, choice) pairs of `experts` (R, k) by expert; drop pairs where `keep` is False."""
    num_rows, k = experts.shape
    flat_expert = experts.reshape(-1)  # (R*k,), row-major: row r's choices are r*k ... r*k + k-1
    choice = np.arange(num_rows * k)
    if keep is not None:
        choice = choice[keep.reshape(-1)]
    # A stable sort keeps the rows of one expert in their original order.
    order = np.argsort(flat_expert[choice], kind="stable")
    choice = choice[order]
    return Dispatch(
        source=choice // k,
        choice=choice,
        group_sizes=np.bincount(flat_expert[choice], minlength=num_experts),
        num_rows=num_rows,
    )


def expert_capacity(tokens_per_group: int, k: int, experts: int, capacity_factor: float) -> int:
    """Most (token, choice) pairs one expert accepts from one group (here: one image).

        capacity = ceil(capacity_factor · k · tokens_per_group / experts)

    With capacity_factor = 1 and perfectly balanced routing, every expert is exactly full. V-MoE
    rounds; we round up, so capacity >= 1 and a factor >= experts / k never drops anything.
    """
    return max(1, math.ceil(capacity_factor * k * tokens_per_group / experts))


def capacity_keep_mask(experts: np.ndarray, num_experts: int, capacity: int) -> np.ndarray:
    """Which (token, choice) pairs fit into their expert's buffer, for `experts` of shape (B, N, k).

    Each image is a group with its own buffers of `capacity` slots per expert. Slots are filled in
    priority order: all tokens' first choices (j = 0) before any second choice, and within one choice
    level, tokens in position order (class token first). This is V-MoE's order without Batch
    Prioritized Routing. Returns a (B, N, k) bool array; False = dropped.
    """
    batch, tokens, k = experts.shape
    b, n, j = np.meshgrid(np.arange(batch), np.arange(tokens), np.arange(k), indexing="ij")
    b, n, j, e = b.ravel(), n.ravel(), j.ravel(), experts.ravel()
    # Sort by image, then expert, then choice level, then token position (np.lexsort: last key first).
    order = np.lexsort((n, j, e, b))
    bucket = b[order] * num_experts + e[order]  # one bucket per (image, expert)
    starts = np.r_[True, bucket[1:] != bucket[:-1]]
    first_of_bucket = np.maximum.accumulate(np.where(starts, np.arange(order.size), 0))
    slot = np.empty(order.size, dtype=np.int64)
    slot[order] = np.arange(order.size) - first_of_bucket  # 0, 1, 2, ... within each bucket
    return (slot < capacity).reshape(batch, tokens, k)


# --------------------------------------------------------------------------------------------------
# Differentiable ops
# --------------------------------------------------------------------------------------------------
def _group_bounds(group_sizes, rows: int, experts: int, op: str) -> np.ndarray:
    sizes = np.asarray(group_sizes)
    if sizes.shape != (experts,) or sizes.dtype.kind not in "iu" or (sizes < 0).any():
        raise ValueError(f"{op}: group_sizes must be {experts} non-negative integers (one per expert), got {sizes!r}")
    if sizes.sum() != rows:
        raise ValueError(f"{op}: group_sizes sum to {sizes.sum()} but x has {rows} rows; they must be equal")
    return np.concatenate([[0], np.cumsum(sizes)])


def expert_linear(x, weight, bias, group_sizes) -> Tensor:
    """A different linear map for each block of rows: rows of expert e get  x_rows @ weight[e] + bias[e].

    Args:
        x: (M, ..., in), rows grouped by expert (as `plan_dispatch` lists them).
        weight: (E, in, out). bias: (E, out), or None.
        group_sizes: (E,) rows per expert, summing to M.
    Returns (M, ..., out).

    Forward, per expert e with rows s:t (the inner axes flattened into rows, so one GEMM per expert):
        out[s:t] = x[s:t] @ W_e + b_e
    Backward, per expert:
        dx[s:t] = g[s:t] @ W_eᵀ,   dW_e = x[s:t]ᵀ @ g[s:t],   db_e = sum of g[s:t] over rows
    An expert with no rows gets zero gradients.
    """
    x, weight, bias = float_operands("expert_linear", ("x", "weight", "bias"), (x, weight, bias))
    if weight.ndim != 3:
        raise ValueError(f"expert_linear: weight must be (experts, in, out), got shape {weight.shape}")
    n_exp, d_in, d_out = weight.shape
    if x.ndim < 2 or x.shape[-1] != d_in:
        raise ValueError(
            f"expert_linear: x of shape {x.shape} does not fit weight of shape {weight.shape}: "
            f"x must be (rows, ..., {d_in})"
        )
    if bias is not None and bias.shape != (n_exp, d_out):
        raise ValueError(f"expert_linear: bias must have shape {(n_exp, d_out)}, got {bias.shape}")
    bounds = _group_bounds(group_sizes, x.shape[0], n_exp, "expert_linear")
    inner = x.shape[1:-1]
    out = np.empty(x.shape[:-1] + (d_out,), dtype=x.dtype)
    for e in range(n_exp):
        s, t = bounds[e], bounds[e + 1]
        if s == t:
            continue
        rows = x.data[s:t].reshape(-1, d_in)  # ((t-s)·inner, in)
        y = rows @ weight.data[e]
        if bias is not None:
            y += bias.data[e]
        out[s:t] = y.reshape((t - s,) + inner + (d_out,))

    def backward(g):
        dx = np.empty_like(x.data)
        dw = np.zeros_like(weight.data)
        db = None if bias is None else np.zeros_like(bias.data)
        for e in range(n_exp):
            s, t = bounds[e], bounds[e + 1]
            if s == t:
                continue
            g_rows = g[s:t].reshape(-1, d_out)
            x_rows = x.data[s:t].reshape(-1, d_in)
            dx[s:t] = (g_rows @ weight.data[e].T).reshape(x.data[s:t].shape)
            dw[e] = x_rows.T @ g_rows
            if db is not None:
                db[e] = g_rows.sum(axis=0)
        return (dx, dw) if bias is None else (dx, dw, db)

    parents = (x, weight) if bias is None else (x, weight, bias)
    return Tensor.from_op(out, parents, backward, "expert_linear")


_erf = np.frompyfunc(math.erf, 1, 1)  # NumPy has no erf; math.erf is exact to double precision


def normal_cdf(x) -> Tensor:
    """Φ(x) = P(Z <= x) for a standard normal Z = ½ (1 + erf(x / √2)); dΦ/dx = φ(x) = e^{-x²/2} / √(2π).

    Computed in float64 and returned in x's dtype. Used by the load-balancing loss of token routing.
    """
    (x,) = float_operands("normal_cdf", ("x",), (x,))
    z = x.data.astype(np.float64)
    out = (0.5 * (1.0 + np.asarray(_erf(z / math.sqrt(2.0)), dtype=np.float64))).astype(x.dtype)

    def backward(g):
        return (g * (np.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)).astype(x.dtype),)

    return Tensor.from_op(out, (x,), backward, "normal_cdf")


__all__ = [
    "Dispatch",
    "top_k",
    "plan_dispatch",
    "expert_capacity",
    "capacity_keep_mask",
    "expert_linear",
    "normal_cdf",
]
