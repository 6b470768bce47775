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


# ------------------------------------------------------------------------------------------------------
# Numba versions (registered beside the references in tinymoe/kernels/__init__.py)
#
# Each row is handled in one go, in parallel over rows: max, exp and sum, then the division, while the
# row sits in L1 cache (the reference makes a full-array temporary per step). exp is `vecmath.exp`,
# which vectorizes for float32. Rows run along the last axis; another `axis` is moved there first.
# ------------------------------------------------------------------------------------------------------

import types  # noqa: E402

from numba import njit, prange  # noqa: E402

from tinymoe.kernels.vecmath import exp, sum_f64  # noqa: E402


@njit(cache=True, fastmath=False, nogil=True)
def _softmax_row(x, out):
    """out = softmax(x) for one row; out may be x itself (in place)."""
    m = x[0]
    for j in range(1, x.shape[0]):
        m = max(m, x[j])
    for j in range(x.shape[0]):  # a loop of its own, so the compiler vectorizes exp
        out[j] = exp(x[j] - m)
    total = sum_f64(out)  # float64: the one accumulation in the row
    inv = x.dtype.type(1.0 / total)
    for j in range(x.shape[0]):
        out[j] *= inv


@njit(cache=True, fastmath=False, nogil=True)
def _log_softmax_row(x, out):
    """out = log_softmax(x) = x - m - log(sum(exp(x - m))) for one row."""
    m = x[0]
    for j in range(1, x.shape[0]):
        m = max(m, x[j])
    for j in range(x.shape[0]):  # out holds exp(x - m) for a moment; a loop of its own vectorizes
        out[j] = exp(x[j] - m)
    total = sum_f64(out)
    shift = m + x.dtype.type(np.log(total))
    for j in range(x.shape[0]):
        out[j] = x[j] - shift


def _softmax_rows(x, out):
    for r in prange(x.shape[0]):
        _softmax_row(x[r], out[r])


def _softmax_backward_rows(probs, grad_out, dx):
    for r in prange(probs.shape[0]):
        dot = 0.0
        for j in range(probs.shape[1]):
            dot += grad_out[r, j] * probs[r, j]
        d = probs.dtype.type(dot)
        for j in range(probs.shape[1]):
            dx[r, j] = probs[r, j] * (grad_out[r, j] - d)  # p_j (g_j - sum_i g_i p_i)


def _log_softmax_rows(x, out):
    for r in prange(x.shape[0]):
        _log_softmax_row(x[r], out[r])


def _log_softmax_backward_rows(log_probs, grad_out, dx):
    for r in prange(log_probs.shape[0]):
        t = log_probs.dtype.type(sum_f64(grad_out[r]))
        for j in range(log_probs.shape[1]):
            dx[r, j] = grad_out[r, j] - exp(log_probs[r, j]) * t  # g_j - p_j sum_i g_i


# Cross-entropy runs on (batch, classes) logits, a few hundred kB: serial, because waking the thread
# pool costs more than the work (measured on (128, 200)).
@njit(cache=True, fastmath=False, nogil=True)
def _cross_entropy_labels_rows(logits, labels, keep, spread, loss, log_probs):
    """Integer labels: loss_b = -keep log p_{b,y_b} - spread sum_c log p_bc."""
    for r in range(logits.shape[0]):
        _log_softmax_row(logits[r], log_probs[r])
        row_sum = sum_f64(log_probs[r])
        loss[r] = -keep * log_probs[r, labels[r]] - spread * row_sum


@njit(cache=True, fastmath=False, nogil=True)
def _cross_entropy_labels_backward_rows(log_probs, labels, keep, spread, grad_loss, grad):
    """d loss_b / d logits = (p - spread - keep onehot(y_b)) * grad_loss_b."""
    s = log_probs.dtype.type(spread)
    k = log_probs.dtype.type(keep)
    for r in range(log_probs.shape[0]):
        gl = grad_loss[r]
        for j in range(log_probs.shape[1]):
            grad[r, j] = (exp(log_probs[r, j]) - s) * gl
        grad[r, labels[r]] -= k * gl


# Each row loop above is compiled twice: with parallel=True (prange splits the rows over the threads)
# and without (prange is then a plain range). Waking the thread pool costs tens of microseconds, more
# than a small input takes (a (128, 200) log-softmax: ~50 us), so inputs under PARALLEL_MIN_SIZE
# numbers run serially. Measured with bench/kernels.py.
PARALLEL_MIN_SIZE = 1 << 16


def _twins(fn):
    # Numba's on-disk cache is keyed by the function's name and signature, not by `parallel`, so the
    # serial twin is compiled from a copy of the function under another name.
    serial_fn = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + "_serial")
    serial_fn.__qualname__ = fn.__qualname__ + "_serial"
    serial = njit(cache=True, fastmath=False, nogil=True)(serial_fn)
    parallel = njit(cache=True, fastmath=False, nogil=True, parallel=True)(fn)
    return lambda *arrays: (parallel if arrays[0].size >= PARALLEL_MIN_SIZE else serial)(*arrays)


_softmax_rows = _twins(_softmax_rows)
_softmax_backward_rows = _twins(_softmax_backward_rows)
_log_softmax_rows = _twins(_log_softmax_rows)
_log_softmax_backward_rows = _twins(_log_softmax_backward_rows)


def _last_axis_rows(x: np.ndarray, axis: int):
    """x with `axis` moved last and made contiguous, as (rows, n); and how to undo it on a result."""
    axis = axis % x.ndim
    if axis == x.ndim - 1 and x.flags.c_contiguous:  # the common case: a view, nothing to undo but the shape
        return x.reshape(-1, x.shape[-1]), lambda result_rows: result_rows.reshape(x.shape)
    moved = np.ascontiguousarray(np.moveaxis(x, axis, -1))
    rows = moved.reshape(-1, moved.shape[-1]) if moved.ndim else moved.reshape(1, 1)

    def restore(result_rows: np.ndarray) -> np.ndarray:
        return np.moveaxis(result_rows.reshape(moved.shape), -1, axis)

    return rows, restore


def _jit_dtype(*arrays) -> bool:
    return all(a.dtype in (np.float32, np.float64) for a in arrays) and len({a.dtype for a in arrays}) == 1


def softmax_forward_numba(x: np.ndarray, axis: int = -1) -> np.ndarray:
    if not _jit_dtype(x) or x.ndim == 0:
        return softmax_forward(x, axis)
    rows, restore = _last_axis_rows(x, axis)
    out = np.empty_like(rows)
    _softmax_rows(rows, out)
    return restore(out)


def softmax_backward_numba(probs: np.ndarray, grad_out: np.ndarray, axis: int = -1) -> np.ndarray:
    if not _jit_dtype(probs, grad_out) or probs.ndim == 0:
        return softmax_backward(probs, grad_out, axis)
    p_rows, restore = _last_axis_rows(probs, axis)
    g_rows, _ = _last_axis_rows(np.broadcast_to(grad_out, probs.shape), axis)
    dx = np.empty_like(p_rows)
    _softmax_backward_rows(p_rows, g_rows, dx)
    return restore(dx)


def log_softmax_forward_numba(x: np.ndarray, axis: int = -1) -> np.ndarray:
    if not _jit_dtype(x) or x.ndim == 0:
        return log_softmax_forward(x, axis)
    rows, restore = _last_axis_rows(x, axis)
    out = np.empty_like(rows)
    _log_softmax_rows(rows, out)
    return restore(out)


def log_softmax_backward_numba(log_probs: np.ndarray, grad_out: np.ndarray, axis: int = -1) -> np.ndarray:
    if not _jit_dtype(log_probs, grad_out) or log_probs.ndim == 0:
        return log_softmax_backward(log_probs, grad_out, axis)
    lp_rows, restore = _last_axis_rows(log_probs, axis)
    g_rows, _ = _last_axis_rows(np.broadcast_to(grad_out, log_probs.shape), axis)
    dx = np.empty_like(lp_rows)
    _log_softmax_backward_rows(lp_rows, g_rows, dx)
    return restore(dx)


def cross_entropy_forward_numba(logits: np.ndarray, target: np.ndarray, label_smoothing: float = 0.0):
    """Same as `cross_entropy_forward`; integer labels run fused in one pass, soft targets use the reference
    formula on the Numba log-softmax (they need the whole (B, C) target array anyway)."""
    if not _jit_dtype(logits):
        return cross_entropy_forward(logits, target, label_smoothing)
    batch, num_classes = logits.shape
    is_labels, keep, spread = _target_distribution_parts(target, num_classes, label_smoothing)
    if not is_labels:
        log_probs = log_softmax_forward_numba(logits, axis=-1)
        q = keep * target.astype(logits.dtype, copy=False) + spread  # (B, C)
        return (-np.sum(q * log_probs, axis=-1)).astype(logits.dtype, copy=False), log_probs
    logits = np.ascontiguousarray(logits)
    loss = np.empty(batch, logits.dtype)
    log_probs = np.empty_like(logits)
    _cross_entropy_labels_rows(logits, np.ascontiguousarray(target, dtype=np.int64), keep, spread, loss, log_probs)
    return loss, log_probs


def cross_entropy_backward_numba(
    log_probs: np.ndarray, target: np.ndarray, label_smoothing: float, grad_loss: np.ndarray
) -> np.ndarray:
    batch, num_classes = log_probs.shape
    is_labels, keep, spread = _target_distribution_parts(target, num_classes, label_smoothing)
    if not is_labels or not _jit_dtype(log_probs, grad_loss):
        return cross_entropy_backward(log_probs, target, label_smoothing, grad_loss)
    grad = np.empty_like(log_probs, order="C")
    _cross_entropy_labels_backward_rows(
        np.ascontiguousarray(log_probs), np.ascontiguousarray(target, dtype=np.int64), keep, spread,
        np.ascontiguousarray(np.broadcast_to(grad_loss, (batch,))), grad,
    )
    return grad
