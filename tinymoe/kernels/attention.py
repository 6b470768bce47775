"""Scaled dot-product attention: the reference kernels (plain NumPy, arrays in, arrays out).

For queries q (..., Nq, D), keys k (..., Nk, D) and values v (..., Nk, Dv), with the leading axes
(typically batch and heads) shared:

    S = q k^T * scale          # (..., Nq, Nk)  scores; scale = 1/sqrt(D) keeps their variance ~1
    P = softmax(S)             # over the keys (last axis); each query's weights sum to 1
    O = P v                    # (..., Nq, Dv)  each output is a weighted mean of the values

Fusing the three steps into one op means the backward needs only P (saved by the forward), not S.
"""

from __future__ import annotations

import numpy as np

from tinymoe.kernels.softmax import softmax_forward


def attention_forward(q: np.ndarray, k: np.ndarray, v: np.ndarray, scale: float):
    """Returns (out, probs): out (..., Nq, Dv) and the attention weights probs (..., Nq, Nk)."""
    scores = (q @ np.swapaxes(k, -1, -2)) * scale  # (..., Nq, Nk)
    probs = softmax_forward(scores, axis=-1)
    return probs @ v, probs


def attention_backward(
    grad_out: np.ndarray, q: np.ndarray, k: np.ndarray, v: np.ndarray, probs: np.ndarray, scale: float
):
    """(dq, dk, dv) from dL/dO, given the inputs and the forward's probs P.

    Backwards through the three steps, each a rule seen elsewhere:

        O = P v        ->  dP = dO v^T,        dv = P^T dO            (matmul)
        P = softmax(S) ->  dS = P * (dP - rowsum(dP * P))             (softmax, see kernels.softmax)
        S = q k^T s    ->  dq = dS k s,        dk = dS^T q s          (matmul, times the scale s)
    """
    dv = np.swapaxes(probs, -1, -2) @ grad_out  # (..., Nk, Dv)
    dprobs = grad_out @ np.swapaxes(v, -1, -2)  # (..., Nq, Nk)
    dscores = probs * (dprobs - np.sum(dprobs * probs, axis=-1, keepdims=True))  # (..., Nq, Nk)
    dq = (dscores @ k) * scale  # (..., Nq, D)
    dk = (np.swapaxes(dscores, -1, -2) @ q) * scale  # (..., Nk, D)
    return dq, dk, dv


# ------------------------------------------------------------------------------------------------------
# Numba versions (registered beside the references in tinymoe/kernels/__init__.py)
#
# The four matrix products stay with BLAS (through NumPy's batched matmul): on the model's shapes it
# multiplies at ~55 GFLOP/s per core, while a Numba triple loop reaches ~15-20 (it cannot use FMA or
# register blocking without fastmath; see bench/kernels.py, "batched_matmul"). What Numba fuses is
# everything between the products: the reference makes five passes over the (..., Nq, Nk) scores in the
# forward (scale, max, subtract, exp, divide) and four in the backward; here each is one pass, in place,
# in parallel over rows, with the vectorized float32 exp of `vecmath`. The scale is folded into the
# softmax input in the forward and into dS in the backward.
# ------------------------------------------------------------------------------------------------------

from numba import njit, prange  # noqa: E402

from tinymoe.kernels.vecmath import exp, sum_f64  # noqa: E402


@njit(cache=True, fastmath=False, nogil=True, parallel=True)
def _scaled_softmax_rows_(scores, scale):
    """In place, for each row s of scores (R, Nk): s <- softmax(scale * s)."""
    for r in prange(scores.shape[0]):
        s = scores[r]
        m = s[0]
        for j in range(1, s.shape[0]):
            m = max(m, s[j])
        m = m * scale  # the max of scale * s, since scale > 0
        for j in range(s.shape[0]):  # a loop of its own, so the compiler vectorizes exp
            s[j] = exp(s[j] * scale - m)
        total = sum_f64(s)  # float64, in 8 lanes
        inv = s.dtype.type(1.0 / total)
        for j in range(s.shape[0]):
            s[j] *= inv


@njit(cache=True, fastmath=False, nogil=True, parallel=True)
def _softmax_backward_scaled_rows_(probs, dprobs, scale):
    """In place on dprobs (R, Nk): dP <- scale * P * (dP - rowsum(dP * P)), i.e. dS of S = scale q k^T."""
    for r in prange(probs.shape[0]):
        dot = 0.0
        for j in range(probs.shape[1]):
            dot += dprobs[r, j] * probs[r, j]
        d = probs.dtype.type(dot)
        for j in range(probs.shape[1]):
            dprobs[r, j] = scale * probs[r, j] * (dprobs[r, j] - d)


def attention_forward_numba(q: np.ndarray, k: np.ndarray, v: np.ndarray, scale: float):
    """Same as `attention_forward`: (out, probs)."""
    if q.dtype not in (np.float32, np.float64) or not (q.dtype == k.dtype == v.dtype):
        return attention_forward(q, k, v, scale)
    # Written into a C-contiguous array (matmul may choose another order for strided inputs), so that
    # the reshape to rows below is a view and the softmax really happens in place.
    scores = np.empty(q.shape[:-1] + (k.shape[-2],), dtype=q.dtype)  # (..., Nq, Nk)
    np.matmul(q, np.swapaxes(k, -1, -2), out=scores)  # BLAS
    _scaled_softmax_rows_(scores.reshape(-1, scores.shape[-1]), q.dtype.type(scale))  # now the probs
    return scores @ v, scores


def attention_backward_numba(
    grad_out: np.ndarray, q: np.ndarray, k: np.ndarray, v: np.ndarray, probs: np.ndarray, scale: float
):
    """Same as `attention_backward`: (dq, dk, dv)."""
    if q.dtype not in (np.float32, np.float64) or not (q.dtype == k.dtype == v.dtype == probs.dtype == grad_out.dtype):
        return attention_backward(grad_out, q, k, v, probs, scale)
    dv = np.swapaxes(probs, -1, -2) @ grad_out  # (..., Nk, Dv)
    dscores = np.empty(probs.shape, dtype=probs.dtype)  # (..., Nq, Nk): dP, turned into dS in place below
    np.matmul(grad_out, np.swapaxes(v, -1, -2), out=dscores)
    p_rows = np.ascontiguousarray(probs).reshape(-1, probs.shape[-1])
    _softmax_backward_scaled_rows_(p_rows, dscores.reshape(-1, dscores.shape[-1]), q.dtype.type(scale))
    dq = dscores @ k  # (..., Nq, D), the scale is already in dS
    dk = np.swapaxes(dscores, -1, -2) @ q  # (..., Nk, D)
    return dq, dk, dv
