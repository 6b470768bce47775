"""One small, valid call per kernel: arguments for `kernel(*args)`, for tests that run every kernel
(Numba versions against their references, the NUMBA_DISABLE_JIT=1 check, the float32-in/float32-out check).

    >>> from tinymoe import kernels
    >>> from tinymoe.testing.kernel_cases import kernel_cases
    >>> for name, args in kernel_cases(np.random.default_rng(0), np.float32).items():
    ...     kernels.get(name).reference(*args)

Backward kernels get the outputs of their forward's reference, computed here, so the cases are
consistent (a layer-norm backward gets the mean and rstd of its own x).
"""

from __future__ import annotations

import numpy as np

from tinymoe.kernels import activation, attention, expert, norm, softmax


def dispatch_plan(rng: np.random.Generator, rows: int, experts: int, k: int, keep_fraction: float = 1.0):
    """A random routing of `rows` rows to k distinct experts each, as (source, choice, group_sizes).

    Pairs (row, choice) are listed expert by expert (stable within an expert); with keep_fraction < 1 a
    random subset is dropped, as an expert capacity would.
    """
    chosen = np.stack([rng.permutation(experts)[:k] for _ in range(rows)]) if rows else np.zeros((0, k), np.int64)
    flat = chosen.reshape(-1)
    choice = np.arange(flat.size)
    if keep_fraction < 1.0:
        choice = choice[rng.random(flat.size) < keep_fraction]
    choice = choice[np.argsort(flat[choice], kind="stable")]
    return choice // k, choice, np.bincount(flat[choice], minlength=experts).astype(np.int64)


def kernel_cases(rng: np.random.Generator, dtype=np.float64) -> dict[str, tuple]:
    """name -> args for every kernel that has a Numba version (small odd-sized shapes)."""

    def f(*shape, scale=1.0):
        return (scale * rng.standard_normal(shape)).astype(dtype)

    x, g = f(3, 5, 7, scale=2.0), f(3, 5, 7)
    w, b = f(7), f(7)
    y, mean, rstd = norm.layer_norm_forward(x, w, b, 1e-6)
    probs = softmax.softmax_forward(x, axis=1)
    log_probs = softmax.log_softmax_forward(x, axis=-1)
    logits, labels, grad_loss = f(4, 9, scale=3.0), rng.integers(0, 9, 4), f(4)
    _, ce_log_probs = softmax.cross_entropy_forward(logits, labels, 0.1)
    q, k_, v, go = f(2, 3, 5, 4), f(2, 3, 6, 4), f(2, 3, 6, 3), f(2, 3, 5, 3)
    _, attn_probs = attention.attention_forward(q, k_, v, 0.5)
    ex, e_w1, e_b1, e_w2, e_b2 = f(5, 3, 4), f(3, 4, 6), f(3, 6), f(3, 6, 4), f(3, 4)
    source, _, sizes = dispatch_plan(rng, 5, 3, 2)
    gates = rng.random(len(source)).astype(dtype)
    _, saved = expert.expert_mlp_forward(ex, gates, source, sizes, e_w1, e_b1, e_w2, e_b2)
    return {
        "gelu_forward": (x,),
        "gelu_backward": (x, g),
        "layer_norm_forward": (x, w, b, 1e-6),
        "layer_norm_backward": (g, x, w, mean, rstd, True),
        "softmax_forward": (x, 1),
        "softmax_backward": (probs, g, 1),
        "log_softmax_forward": (x, -1),
        "log_softmax_backward": (log_probs, g, -1),
        "cross_entropy_forward": (logits, labels, 0.1),
        "cross_entropy_backward": (ce_log_probs, labels, 0.1, grad_loss),
        "attention_forward": (q, k_, v, 0.5),
        "attention_backward": (go, q, k_, v, attn_probs, 0.5),
        "expert_mlp_forward": (ex, gates, source, sizes, e_w1, e_b1, e_w2, e_b2),
        "expert_mlp_backward": (f(5, 3, 4), ex, gates, source, sizes, e_w1, e_w2, saved),
    }


def flatten_outputs(result) -> list[np.ndarray | None]:
    """A kernel's result as a flat list of arrays (tuples, and the nested saved tuple, unpacked)."""
    if result is None:
        return [result]
    if isinstance(result, (np.ndarray, np.generic)):  # a 0-d input may give a NumPy scalar
        return [np.asarray(result)]
    out = []
    for item in result:
        out.extend(flatten_outputs(item))
    return out
