"""The expert MLPs of an MoE block, grouped by expert: gather, two matrix products with bias + GELU,
gate, scatter back. Reference kernels (plain NumPy) and Numba versions, forward and backward.

Layout (what `tinymoe.models.moe.plan_dispatch` produces):

    x            (R, ..., D)     R input rows: images (R = B, inner axes = tokens) or single tokens
    source       (M,)            dispatched row i reads input row source[i]; rows are listed expert by
                                 expert, so expert e owns the contiguous block bounds[e]:bounds[e+1]
    group_sizes  (E,)            rows per expert (bounds = cumulative sums)
    gates        (M,)            the gate value each dispatched row's output is multiplied by
    w1 (E, D, H), b1 (E, H), w2 (E, H, D), b2 (E, D)    the experts' weights, stacked

Forward, with T = prod(inner axes) tokens per row and every dispatched row flattened to T tokens:

    xs = x[source]                                   (M·T, D)   gather, expert by expert
    h  = xs[rows of e] @ w1[e] + b1[e]               (M·T, H)   one matrix product per expert
    a  = gelu(h)
    y  = a[rows of e] @ w2[e] + b2[e]                (M·T, D)
    out[source[i]] += gates[i] · y[i]                (R, ..., D) a row chosen by k experts sums k outputs

Each expert multiplies exactly its own rows: an image routed to one of E experts costs what a dense MLP
costs, never E masked products. Backward (g = dL/d out):

    dgates[i] = sum(g[source[i]] · y[i])             the gate multiplies y[i]
    dy[i]     = gates[i] · g[source[i]]
    dw2[e] = a_eᵀ dy_e,  db2[e] = Σ dy_e,  da_e = dy_e w2[e]ᵀ
    dh = da · gelu'(h)
    dw1[e] = xs_eᵀ dh_e, db1[e] = Σ dh_e,  dxs_e = dh_e w1[e]ᵀ
    dx[source[i]] += dxs[i]                          the adjoint of the gather

Expert dropout: an optional `mask` (M, ..., H) multiplies the GELU output, a = gelu(h) · mask (the caller
scales the kept entries by 1 / (1 - p)); the backward then uses that a for dw2 and multiplies da by the
same mask before gelu'. Without a mask nothing changes.

The forward returns what the backward needs: (h, y). Neither xs nor a is kept between forward and
backward: the backward gathers xs again from x (a copy of M·T·D numbers) and recomputes a = gelu(h)
(one elementwise pass), which frees the largest activation of the block (M·T·H numbers) early.

The matrix products are BLAS calls through NumPy in both versions. The Numba version fuses what lies
between them: the gather, bias + GELU (one pass instead of three), gate + scatter, and in the backward
the gather + gate + gate gradient (one pass) and GELU' (one pass), and it replaces np.add.at (which
handles repeated indices one element at a time) by a row-wise scatter loop.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from tinymoe.kernels.activation import CUBIC_COEFF, SQRT_2_OVER_PI, _gelu_forward_flat, gelu_backward, gelu_forward
from tinymoe.kernels.vecmath import exp


def _bounds(group_sizes: np.ndarray, tokens: int) -> np.ndarray:
    """(E + 1,) token-row offsets of each expert's block in the flattened (M·T, ...) arrays."""
    return np.concatenate([[0], np.cumsum(group_sizes)]).astype(np.int64) * tokens


def _tokens_per_row(x: np.ndarray) -> int:
    return int(np.prod(x.shape[1:-1], dtype=np.int64))


# ------------------------------------------------------------------------------------------------------
# Reference (plain NumPy)
# ------------------------------------------------------------------------------------------------------
def _flat_mask(mask, hidden: int):
    """The (M·T, H) view of an expert-dropout mask (M, ..., H), or None."""
    return None if mask is None else np.ascontiguousarray(mask).reshape(-1, hidden)


def expert_mlp_forward(x, gates, source, group_sizes, w1, b1, w2, b2, mask=None):
    """out (R, ..., D) and the saved (h, y); see the module docstring."""
    dim, hidden = w1.shape[1], w1.shape[2]
    tokens = _tokens_per_row(x)
    bounds = _bounds(group_sizes, tokens)
    xs = np.take(x, source, axis=0).reshape(-1, dim)  # (M·T, D)
    mask = _flat_mask(mask, hidden)
    h = np.empty((xs.shape[0], hidden), dtype=x.dtype)
    a = np.empty_like(h)
    y = np.empty((xs.shape[0], dim), dtype=x.dtype)
    for e in range(w1.shape[0]):
        s, t = bounds[e], bounds[e + 1]
        if s == t:
            continue
        h[s:t] = xs[s:t] @ w1[e] + b1[e]
        a[s:t] = gelu_forward(h[s:t]) if mask is None else gelu_forward(h[s:t]) * mask[s:t]
        y[s:t] = a[s:t] @ w2[e] + b2[e]
    gated = gates.reshape((-1,) + (1,) * (x.ndim - 1)) * y.reshape((len(source),) + x.shape[1:])  # (M, ..., D)
    out = np.zeros_like(x)
    np.add.at(out, source, gated)  # repeated sources (k > 1) add up
    return out, (h, y)


def expert_mlp_backward(grad_out, x, gates, source, group_sizes, w1, w2, saved, mask=None):
    """(dx, dgates, dw1, db1, dw2, db2) from dL/d out; see the module docstring."""
    h, y = saved
    dim = w1.shape[1]
    mask = _flat_mask(mask, w1.shape[2])
    tokens = _tokens_per_row(x)
    bounds = _bounds(group_sizes, tokens)
    m = len(source)
    g_rows = np.take(grad_out, source, axis=0).reshape(m, tokens * dim)  # (M, T·D): the gradient each row's output got
    dgates = np.sum(g_rows * y.reshape(m, tokens * dim), axis=1)  # (M,)
    dy = (gates[:, None] * g_rows).reshape(-1, dim)  # (M·T, D)
    xs = np.take(x, source, axis=0).reshape(-1, dim)
    dxs = np.empty_like(xs)
    dw1, db1 = np.zeros_like(w1), np.zeros((w1.shape[0], w1.shape[2]), dtype=w1.dtype)
    dw2, db2 = np.zeros_like(w2), np.zeros((w2.shape[0], w2.shape[2]), dtype=w2.dtype)
    for e in range(w1.shape[0]):
        s, t = bounds[e], bounds[e + 1]
        if s == t:
            continue  # an expert without rows gets zero gradients
        a = gelu_forward(h[s:t]) if mask is None else gelu_forward(h[s:t]) * mask[s:t]  # a recomputed
        dw2[e] = a.T @ dy[s:t]
        db2[e] = dy[s:t].sum(axis=0)
        da = dy[s:t] @ w2[e].T if mask is None else (dy[s:t] @ w2[e].T) * mask[s:t]
        dh = gelu_backward(h[s:t], da)
        dw1[e] = xs[s:t].T @ dh
        db1[e] = dh.sum(axis=0)
        dxs[s:t] = dh @ w1[e].T
    dx = np.zeros_like(x)
    np.add.at(dx, source, dxs.reshape((m,) + x.shape[1:]))
    return dx, dgates, dw1, db1, dw2, db2


# ------------------------------------------------------------------------------------------------------
# Numba versions
# ------------------------------------------------------------------------------------------------------
@njit(cache=True, fastmath=False, nogil=True, parallel=True)
def _gather_rows(x, source, out):
    """out[i] = x[source[i]] for rows of x (R, C), out (M, C)."""
    for i in prange(source.shape[0]):
        out[i] = x[source[i]]


@njit(cache=True, fastmath=False, nogil=True, parallel=True)
def _bias_gelu_(h, bias, a):
    """In place h <- h + bias (the pre-activation, kept for the backward), and a <- gelu(h)."""
    c = h.dtype.type(SQRT_2_OVER_PI)
    cubic = h.dtype.type(CUBIC_COEFF)
    one = h.dtype.type(1.0)
    two = h.dtype.type(2.0)
    for r in prange(h.shape[0]):
        for j in range(h.shape[1]):
            v = h[r, j] + bias[j]
            h[r, j] = v
            a[r, j] = v / (one + exp(-two * c * (v + cubic * v * v * v)))  # v sigmoid(2u) = gelu(v)


@njit(cache=True, fastmath=False, nogil=True, parallel=True)
def _gelu_backward_(h, da):
    """In place da <- da · gelu'(h) (see tinymoe.kernels.activation for the derivative)."""
    c = h.dtype.type(SQRT_2_OVER_PI)
    cubic = h.dtype.type(CUBIC_COEFF)
    three_cubic = h.dtype.type(3.0 * CUBIC_COEFF)
    one = h.dtype.type(1.0)
    two = h.dtype.type(2.0)
    for r in prange(h.shape[0]):
        for j in range(h.shape[1]):
            v = h[r, j]
            v2 = v * v
            e = exp(-two * c * (v + cubic * v2 * v))
            s = one / (one + e)
            s_minus = one / (one + one / e)  # 1 - s, finite when e overflows to inf
            da[r, j] = da[r, j] * (s + two * v * s * s_minus * c * (one + three_cubic * v2))


@njit(cache=True, fastmath=False, nogil=True)
def _scatter_gated_rows(y, gates, source, out):
    """out[source[i]] += gates[i] · y[i]; serial because two i may share a source row (k > 1).
    The inner loop over a row's T·D numbers is what vectorizes; rows are 16 kB at the model's size."""
    for i in range(source.shape[0]):
        row = out[source[i]]
        g = gates[i]
        for j in range(y.shape[1]):
            row[j] += g * y[i, j]


@njit(cache=True, fastmath=False, nogil=True)
def _scatter_rows(src, source, out):
    """out[source[i]] += src[i] (the adjoint of `_gather_rows`)."""
    for i in range(source.shape[0]):
        row = out[source[i]]
        for j in range(src.shape[1]):
            row[j] += src[i, j]


@njit(cache=True, fastmath=False, nogil=True, parallel=True)
def _gather_gate_rows(grad_out, y, gates, source, dy, dgates):
    """dy[i] = gates[i] · g[source[i]] and dgates[i] = sum(g[source[i]] · y[i]), one pass over each row."""
    for i in prange(source.shape[0]):
        g = grad_out[source[i]]
        total = 0.0
        for j in range(g.shape[0]):
            total += g[j] * y[i, j]
            dy[i, j] = gates[i] * g[j]
        dgates[i] = total


def _jit_ok(*arrays) -> bool:
    return all(a.dtype in (np.float32, np.float64) for a in arrays) and len({a.dtype for a in arrays}) == 1


def expert_mlp_forward_numba(x, gates, source, group_sizes, w1, b1, w2, b2, mask=None):
    """Same as `expert_mlp_forward`."""
    if not _jit_ok(x, gates, w1, b1, w2, b2, *(() if mask is None else (mask,))):
        return expert_mlp_forward(x, gates, source, group_sizes, w1, b1, w2, b2, mask)
    mask = _flat_mask(mask, w1.shape[2])
    dim, hidden = w1.shape[1], w1.shape[2]
    tokens = _tokens_per_row(x)
    bounds = _bounds(group_sizes, tokens)
    m = len(source)
    source = np.ascontiguousarray(source, dtype=np.int64)
    x_rows = np.ascontiguousarray(x).reshape(x.shape[0], tokens * dim)  # (R, T·D)
    xs = np.empty((m, tokens * dim), dtype=x.dtype)
    _gather_rows(x_rows, source, xs)
    xs = xs.reshape(-1, dim)  # (M·T, D)
    h = np.empty((m * tokens, hidden), dtype=x.dtype)
    a = np.empty_like(h)
    y = np.empty((m * tokens, dim), dtype=x.dtype)
    for e in range(w1.shape[0]):
        s, t = bounds[e], bounds[e + 1]
        if s == t:
            continue
        np.matmul(xs[s:t], w1[e], out=h[s:t])
        _bias_gelu_(h[s:t], np.ascontiguousarray(b1[e]), a[s:t])
        if mask is not None:
            a[s:t] *= mask[s:t]
        np.matmul(a[s:t], w2[e], out=y[s:t])
        y[s:t] += b2[e]
    del a  # recomputed by the backward
    out = np.zeros((x.shape[0], tokens * dim), dtype=x.dtype)
    _scatter_gated_rows(y.reshape(m, tokens * dim), np.ascontiguousarray(gates), source, out)
    return out.reshape(x.shape), (h, y)


def expert_mlp_backward_numba(grad_out, x, gates, source, group_sizes, w1, w2, saved, mask=None):
    """Same as `expert_mlp_backward`."""
    h, y = saved
    if not _jit_ok(grad_out, x, gates, w1, w2, h, *(() if mask is None else (mask,))):
        return expert_mlp_backward(grad_out, x, gates, source, group_sizes, w1, w2, saved, mask)
    mask = _flat_mask(mask, w1.shape[2])
    dim = w1.shape[1]
    tokens = _tokens_per_row(x)
    bounds = _bounds(group_sizes, tokens)
    m = len(source)
    source = np.ascontiguousarray(source, dtype=np.int64)
    g_rows = np.ascontiguousarray(grad_out).reshape(x.shape[0], tokens * dim)  # (R, T·D)
    dy = np.empty((m, tokens * dim), dtype=x.dtype)
    dgates = np.empty(m, dtype=x.dtype)
    _gather_gate_rows(g_rows, y.reshape(m, tokens * dim), np.ascontiguousarray(gates), source, dy, dgates)
    dy = dy.reshape(-1, dim)  # (M·T, D)
    xs = np.empty((m, tokens * dim), dtype=x.dtype)
    _gather_rows(np.ascontiguousarray(x).reshape(x.shape[0], tokens * dim), source, xs)
    xs = xs.reshape(-1, dim)
    dxs = np.empty_like(xs)
    dw1, db1 = np.zeros_like(w1), np.zeros((w1.shape[0], w1.shape[2]), dtype=w1.dtype)
    dw2, db2 = np.zeros_like(w2), np.zeros((w2.shape[0], w2.shape[2]), dtype=w2.dtype)
    a = np.empty_like(h)
    _gelu_forward_flat(h.reshape(-1), a.reshape(-1))  # a = gelu(h), recomputed (h is C-contiguous)
    if mask is not None:
        a *= mask
    for e in range(w1.shape[0]):
        s, t = bounds[e], bounds[e + 1]
        if s == t:
            continue
        np.matmul(a[s:t].T, dy[s:t], out=dw2[e])
        db2[e] = dy[s:t].sum(axis=0)
        dh = dy[s:t] @ w2[e].T  # (rows, H): da, turned into dh in place
        if mask is not None:
            dh *= mask[s:t]
        _gelu_backward_(h[s:t], dh)
        np.matmul(xs[s:t].T, dh, out=dw1[e])
        db1[e] = dh.sum(axis=0)
        np.matmul(dh, w1[e].T, out=dxs[s:t])
    dx = np.zeros((x.shape[0], tokens * dim), dtype=x.dtype)
    _scatter_rows(dxs.reshape(m, tokens * dim), source, dx)
    return dx.reshape(x.shape), dgates, dw1, db1, dw2, db2
