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
