"""softmax, log_softmax and cross_entropy: the fused ops of a classifier's output.

Each saves what its backward needs (the softmax saves its output p, the log-softmax its output log p,
the cross-entropy the log-probabilities) and calls the kernels in `tinymoe.kernels.softmax`, where the
Jacobians are written out.
"""

from __future__ import annotations

import numpy as np

from tinymoe import kernels
from tinymoe.ops.validate import float_operands, single_axis
from tinymoe.tensor import Tensor

REDUCTIONS = ("mean", "sum", "none")


def softmax(x, axis: int = -1) -> Tensor:
    """exp(x) / sum(exp(x)) along `axis` (computed stably, after subtracting the max)."""
    (x,) = float_operands("softmax", ("x",), (x,))
    axis = single_axis("softmax", axis, x.shape)
    out = kernels.softmax_forward(x.data, axis=axis)
    return Tensor.from_op(out, (x,), lambda g: (kernels.softmax_backward(out, g, axis=axis),), "softmax")


def log_softmax(x, axis: int = -1) -> Tensor:
    """x - logsumexp(x) along `axis`: log-probabilities, finite even where the probability underflows."""
    (x,) = float_operands("log_softmax", ("x",), (x,))
    axis = single_axis("log_softmax", axis, x.shape)
    out = kernels.log_softmax_forward(x.data, axis=axis)
    return Tensor.from_op(out, (x,), lambda g: (kernels.log_softmax_backward(out, g, axis=axis),), "log_softmax")


def _check_target(target, logits: Tensor) -> np.ndarray:
    """The target as an array the kernels accept: int labels (B,) in range, or float probabilities (B, C)."""
    if isinstance(target, Tensor):
        if target.requires_grad:
            raise ValueError(
                "cross_entropy: target requires grad, but cross_entropy treats targets as constants; "
                "pass target.detach()"
            )
        target = target.data
    target = np.asarray(target)
    batch, num_classes = logits.shape
    if target.dtype.kind in "iu":
        if target.shape != (batch,):
            raise ValueError(
                f"cross_entropy: integer labels must have shape (batch,) = ({batch},) for logits of shape "
                f"{logits.shape}, got {target.shape}"
            )
        if batch and (target.min() < 0 or target.max() >= num_classes):
            bad = np.flatnonzero((target < 0) | (target >= num_classes))
            raise ValueError(
                f"cross_entropy: labels must be in [0, {num_classes}) for {num_classes} classes, got "
                f"{target[bad[0]]} at position {bad[0]} ({bad.size} label(s) out of range)"
            )
        return target
    if target.dtype.kind == "f":
        if target.shape != logits.shape:
            hint = (
                "; if these are class labels, convert them with labels.astype(np.int64)"
                if target.shape == (batch,)
                else ""
            )
            raise ValueError(
                f"cross_entropy: a float target holds class probabilities and must have the logits' shape "
                f"{logits.shape}, got {target.shape}{hint}"
            )
        if not np.all(np.isfinite(target)):
            raise ValueError("cross_entropy: target probabilities contain NaN or inf")
        if np.any(target < 0):
            raise ValueError("cross_entropy: target probabilities must be >= 0, found negative values")
        return target.astype(logits.dtype, copy=False)  # a constant: casting it to the logits' dtype is safe
    raise TypeError(
        f"cross_entropy: target must be integer class labels (batch,) or float probabilities (batch, classes), "
        f"got dtype {target.dtype}"
    )


def cross_entropy(logits, target, label_smoothing: float = 0.0, reduction: str = "mean") -> Tensor:
    """Cross-entropy between softmax(logits) and the target distribution, per row, then reduced.

    Args:
        logits: (B, C) scores.
        target: (B,) integer labels in [0, C), or (B, C) float class probabilities (soft targets,
            e.g. from mixup). Targets are constants: no gradient flows to them.
        label_smoothing: s in [0, 1]: the target distribution becomes (1 - s) target + s / C,
            as in torch.nn.functional.cross_entropy.
        reduction: "mean" (over the batch; a scalar), "sum" (a scalar) or "none" (the (B,) losses).
    """
    (logits,) = float_operands("cross_entropy", ("logits",), (logits,))
    if logits.ndim != 2:
        raise ValueError(
            f"cross_entropy: logits must have shape (batch, classes), got {logits.shape}; "
            "flatten extra axes first, e.g. logits.reshape((-1, classes))"
        )
    if logits.shape[0] == 0 or logits.shape[1] == 0:
        raise ValueError(f"cross_entropy: logits of shape {logits.shape} are empty")
    finite = np.isfinite(logits.data)
    if not finite.all():
        n_nan = int(np.isnan(logits.data).sum())
        n_inf = int(logits.data.size - finite.sum()) - n_nan
        raise ValueError(
            f"cross_entropy: logits contain NaN ({n_nan} values) or inf ({n_inf} values); the model's "
            "output diverged before the loss (try a lower learning rate, gradient clipping, or check the inputs)"
        )
    if reduction not in REDUCTIONS:
        raise ValueError(f"cross_entropy: reduction must be one of {REDUCTIONS}, got {reduction!r}")
    label_smoothing = float(label_smoothing)
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"cross_entropy: label_smoothing must be in [0, 1], got {label_smoothing}")
    target = _check_target(target, logits)
    batch = logits.shape[0]

    losses, log_probs = kernels.cross_entropy_forward(logits.data, target, label_smoothing)  # (B,), (B, C)
    if reduction == "mean":
        out = losses.mean()
    elif reduction == "sum":
        out = losses.sum()
    else:
        out = losses
    out = np.asarray(out, dtype=logits.dtype)

    def backward(g):
        # dL/d(loss_b) for each row: the mean spreads g evenly (weight 1/B), the sum gives each row g.
        if reduction == "mean":
            grad_rows = np.full(batch, g / batch, dtype=g.dtype)
        elif reduction == "sum":
            grad_rows = np.full(batch, g, dtype=g.dtype)
        else:
            grad_rows = g
        return (kernels.cross_entropy_backward(log_probs, target, label_smoothing, grad_rows),)

    return Tensor.from_op(out, (logits,), backward, "cross_entropy")
