"""expert_mlp: the expert MLPs of an MoE block as one fused op (gather, two linear maps with GELU, gate,
scatter back), for experts grouped by expert as `tinymoe.models.moe.plan_dispatch` lists them.

Built from primitives, the same computation is take, expert_linear, gelu, expert_linear, take of the
gates, a broadcast multiply and scatter_add: seven graph nodes, each holding its output for the
backward, and np.add.at in two backward passes. Fused, the op keeps the pre-activation h, the GELU
output a and the expert outputs y (what the backward needs), and its kernels do the bookkeeping in
single passes (see `tinymoe.kernels.expert` for the math).
"""

from __future__ import annotations

import numpy as np

from tinymoe import kernels
from tinymoe.ops.validate import float_operands
from tinymoe.tensor import Tensor


def expert_mlp(x, gates, source, group_sizes, fc1_weight, fc1_bias, fc2_weight, fc2_bias, hidden_mask=None) -> Tensor:
    """sum over dispatched rows i with source[i] = r of  gates[i] · MLP_{e(i)}(x[r]),  for each input row r.

    Args:
        x: (R, ..., D) input rows (images (B, N, D), or tokens (B·N, D)).
        gates: (M,) the gate value of each dispatched row (e.g. gates_flat[dispatch.choice]).
        source: (M,) int, the input row each dispatched row reads; rows listed expert by expert.
        group_sizes: (E,) int, rows per expert, summing to M.
        fc1_weight (E, D, H), fc1_bias (E, H), fc2_weight (E, H, D), fc2_bias (E, D): the experts.
        hidden_mask: optional (M, ..., H) constant multiplying the GELU activations (expert dropout: the
            keep mask already scaled by 1 / (1 - p)); gradients flow only through the kept activations.
    Returns (R, ..., D); a row no expert received (dropped by capacity) is zero.
    """
    names = ("x", "gates", "fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias")
    x, gates, w1, b1, w2, b2 = float_operands("expert_mlp", names, (x, gates, fc1_weight, fc1_bias, fc2_weight, fc2_bias))
    if w1.ndim != 3 or w2.ndim != 3:
        raise ValueError(
            f"expert_mlp: fc1_weight must be (experts, dim, hidden) and fc2_weight (experts, hidden, dim), "
            f"got {w1.shape} and {w2.shape}"
        )
    experts, dim, hidden = w1.shape
    if w2.shape != (experts, hidden, dim) or b1.shape != (experts, hidden) or b2.shape != (experts, dim):
        raise ValueError(
            f"expert_mlp: weights do not fit together: fc1_weight {w1.shape}, fc1_bias {b1.shape}, "
            f"fc2_weight {w2.shape}, fc2_bias {b2.shape}; expected (E, D, H), (E, H), (E, H, D), (E, D)"
        )
    if x.ndim < 2 or x.shape[-1] != dim:
        raise ValueError(f"expert_mlp: x of shape {x.shape} must be (rows, ..., {dim}) to fit fc1_weight {w1.shape}")
    source = np.asarray(source)
    if source.ndim != 1 or source.dtype.kind not in "iu":
        raise ValueError(f"expert_mlp: source must be a 1-D integer array, got shape {source.shape}, dtype {source.dtype}")
    if source.size and (source.min() < 0 or source.max() >= x.shape[0]):
        raise ValueError(f"expert_mlp: source indices must lie in [0, {x.shape[0]}) (rows of x), got {source.min()}..{source.max()}")
    if gates.shape != source.shape:
        raise ValueError(f"expert_mlp: gates must have shape {source.shape} (one per dispatched row), got {gates.shape}")
    sizes = np.asarray(group_sizes)
    if sizes.shape != (experts,) or sizes.dtype.kind not in "iu" or (sizes < 0).any() or sizes.sum() != source.size:
        raise ValueError(
            f"expert_mlp: group_sizes must be {experts} non-negative integers summing to len(source) = {source.size}, "
            f"got {sizes!r}"
        )

    if hidden_mask is not None:
        hidden_mask = np.asarray(hidden_mask)
        if hidden_mask.shape != (source.size,) + x.shape[1:-1] + (hidden,) or hidden_mask.dtype != x.dtype:
            raise ValueError(f"expert_mlp: hidden_mask must be {x.dtype} of shape "
                             f"{(source.size,) + x.shape[1:-1] + (hidden,)} (dispatched rows, ..., hidden), "
                             f"got {hidden_mask.dtype} {hidden_mask.shape}")
    out, saved = kernels.expert_mlp_forward(x.data, gates.data, source, sizes, w1.data, b1.data, w2.data, b2.data,
                                            hidden_mask)

    def backward(g):
        return kernels.expert_mlp_backward(g, x.data, gates.data, source, sizes, w1.data, w2.data, saved, hidden_mask)

    return Tensor.from_op(out, (x, gates, w1, b1, w2, b2), backward, "expert_mlp")


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
