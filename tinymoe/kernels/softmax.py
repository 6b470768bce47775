"""Softmax, log-softmax and cross-entropy: the reference kernels (plain NumPy, arrays in, arrays out).

Every function keeps its input's dtype. Numerical care: exp() of a large logit overflows (float32
overflows at exp(88.7)), so both softmaxes first subtract the maximum along the axis. That changes
nothing mathematically, softmax(x) = softmax(x - m) for any constant m, and makes the largest
exponent exp(0) = 1.
"""

from __future__ import annotations

import numpy as np


def softmax_forward(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """p = exp(x - m) / sum(exp(x - m)) along `axis`, with m = max(x) along `axis`."""
    shifted = x - x.max(axis=axis, keepdims=True)  # every entry <= 0: no overflow
    e = np.exp(shifted)
    return e / e.sum(axis=axis, keepdims=True)


def softmax_backward(probs: np.ndarray, grad_out: np.ndarray, axis: int = -1) -> np.ndarray:
    """dL/dx from dL/dp, given the forward's output p.

    The Jacobian of softmax is dp_i/dx_j = p_i (delta_ij - p_j), so the vector-Jacobian product is

        dL/dx_j = sum_i g_i p_i (delta_ij - p_j) = p_j (g_j - sum_i g_i p_i).
    """
    dot = np.sum(grad_out * probs, axis=axis, keepdims=True)  # sum_i g_i p_i
    return probs * (grad_out - dot)


def log_softmax_forward(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """log p = (x - m) - log(sum(exp(x - m))) along `axis`.

    Computed directly rather than as log(softmax(x)): a probability that underflows to 0 would give
    log(0) = -inf, while x - m - logsumexp stays finite.
    """
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def log_softmax_backward(log_probs: np.ndarray, grad_out: np.ndarray, axis: int = -1) -> np.ndarray:
    """dL/dx from dL/d(log p), given the forward's output log p.

    d log p_i / dx_j = delta_ij - p_j, so   dL/dx_j = g_j - p_j sum_i g_i,   with p_j = exp(log p_j).
    """
    return grad_out - np.exp(log_probs) * grad_out.sum(axis=axis, keepdims=True)


def _target_distribution_parts(target: np.ndarray, num_classes: int, label_smoothing: float):
    """Whether `target` holds integer labels, and the smoothing weights (keep, spread).

    With label smoothing s the target distribution of a row is  q = (1 - s) t + s / C,  where t is the
    one-hot vector of the label (integer labels) or the given probabilities (soft targets): a share s
    of the probability mass is spread evenly over all C classes, as in torch.nn.functional.cross_entropy.
    """
    is_labels = target.dtype.kind in "iu"
    return is_labels, 1.0 - label_smoothing, label_smoothing / num_classes


def cross_entropy_forward(logits: np.ndarray, target: np.ndarray, label_smoothing: float = 0.0):
    """Per-row cross-entropy  loss_b = -sum_c q_bc log p_bc,  with p = softmax(logits) over classes.

    Args:
        logits: (B, C) float array.
        target: (B,) integer labels in [0, C), or (B, C) float target probabilities (soft targets).
        label_smoothing: s in [0, 1]; the target distribution becomes q = (1 - s) t + s / C.

    Returns:
        (loss, log_probs): loss is (B,) in the logits' dtype; log_probs (B, C) is what the backward needs.
    """
    batch, num_classes = logits.shape
    log_probs = log_softmax_forward(logits, axis=-1)  # (B, C)
    is_labels, keep, spread = _target_distribution_parts(target, num_classes, label_smoothing)
    if is_labels:
        # With q = keep * onehot(y) + spread, the sum splits into the label's term and a row sum:
        # loss = -keep log p_y - spread sum_c log p_c. No (B, C) one-hot array is needed.
        picked = log_probs[np.arange(batch), target]  # (B,) log p of each row's label
        loss = -keep * picked - spread * log_probs.sum(axis=-1)
    else:
        q = keep * target.astype(logits.dtype, copy=False) + spread  # (B, C)
        loss = -np.sum(q * log_probs, axis=-1)
    return loss.astype(logits.dtype, copy=False), log_probs


def cross_entropy_backward(
    log_probs: np.ndarray, target: np.ndarray, label_smoothing: float, grad_loss: np.ndarray
) -> np.ndarray:
    """dL/d(logits) (B, C) from dL/d(loss_b) = grad_loss (B,), given the forward's log_probs.

    From loss_b = -sum_c q_c log p_c and d log p_c / dx_j = delta_cj - p_j:

        d loss_b / dx_j = -q_j + p_j sum_c q_c

    which is the familiar p - q when q sums to 1 (integer labels, or normalised soft targets).
    Soft targets that do not sum to 1 get the general formula, so the gradient stays exact.
    """
    batch, num_classes = log_probs.shape
    probs = np.exp(log_probs)  # (B, C)
    is_labels, keep, spread = _target_distribution_parts(target, num_classes, label_smoothing)
    if is_labels:
        grad = probs - spread  # q sums to 1, so the gradient is p - q = p - spread - keep * onehot
        grad[np.arange(batch), target] -= keep
    else:
        q = keep * target.astype(log_probs.dtype, copy=False) + spread  # (B, C)
        grad = probs * q.sum(axis=-1, keepdims=True) - q
    return grad * grad_loss[:, None]
