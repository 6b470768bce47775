"""Check a differentiable function's backward against central finite differences.

For a function f: inputs -> output and a random upstream gradient u (same shape as the output), the
backward pass computes the vector-Jacobian product  v_i = u · (d f / d x_i)  for every input element.
The same number is the derivative of the scalar  s(x) = sum(u * f(x))  with respect to x_i, which
central differences estimate to O(eps^2):

    v_i  ≈  ( s(x + eps e_i) - s(x - eps e_i) ) / (2 eps)

Checking against a *random* u (rather than summing the output) tests every entry of the Jacobian, not
just its column sums: a backward that mixes up two output positions fails. Run in float64: in float32
the rounding error of s, divided by 2·eps, swamps the comparison.

Use it on your own ops:

    >>> from tinymoe.gradcheck import gradcheck
    >>> gradcheck(lambda a, b: (a * b).sum(axis=0), [np.random.randn(3, 2), np.random.randn(2)])
    GradcheckResult(ok=True, ...)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from tinymoe.tensor import Tensor


class GradcheckError(AssertionError):
    """The analytic gradient of some input disagrees with the finite-difference estimate."""


@dataclass
class InputReport:
    """How the analytic and numeric gradients of one input compare."""

    index: int  # which input (position in `inputs`)
    max_abs_error: float  # max |analytic - numeric|
    max_rel_error: float  # max |analytic - numeric| / max(|numeric|, 1e-12)
    worst_position: tuple[int, ...]  # where the tolerance is exceeded most
    analytic: float  # the two values at that position
    numeric: float
    ok: bool


@dataclass
class GradcheckResult:
    ok: bool
    inputs: list[InputReport] = field(default_factory=list)

    def report(self) -> str:
        lines = []
        for r in self.inputs:
            status = "ok  " if r.ok else "FAIL"
            lines.append(
                f"{status} input {r.index}: max abs error {r.max_abs_error:.3e}, max rel error "
                f"{r.max_rel_error:.3e}; worst at {r.worst_position}: analytic {r.analytic:.10g} vs "
                f"numeric {r.numeric:.10g}"
            )
        return "\n".join(lines)


def _scalar(fn, arrays, upstream) -> float:
    out = fn(*[Tensor(a) for a in arrays])
    return float(np.sum(np.asarray(out.data, dtype=np.float64) * upstream))


def gradcheck(
    fn: Callable[..., Tensor],
    inputs: Sequence[np.ndarray],
    *,
    wrt: Sequence[int] | None = None,
    eps: float = 1e-6,
    rtol: float = 1e-6,
    atol: float = 1e-7,
    seed: int = 0,
    raise_on_failure: bool = True,
) -> GradcheckResult:
    """Compare `fn`'s backward with central differences, for every element of every input in `wrt`.

    Args:
        fn: takes one Tensor per input, returns a Tensor. Must be deterministic. Non-float arguments
            (labels, indices) are best bound with a closure or functools.partial.
        inputs: float64 arrays (they are not modified; a copy is perturbed).
        wrt: positions of the inputs to check (default: all).
        eps: finite-difference step.
        rtol, atol: an element passes if |analytic - numeric| <= atol + rtol * |numeric|.
        seed: seeds the random upstream gradient.
        raise_on_failure: raise GradcheckError with the report (default) or return the failed result.
    """
    arrays = [np.array(a, dtype=np.float64, copy=True) for a in inputs]
    for i, a in enumerate(arrays):
        if not np.all(np.isfinite(a)):
            raise ValueError(f"gradcheck: input {i} contains NaN or inf")
    originals = [a.copy() for a in arrays]
    wrt = list(range(len(arrays))) if wrt is None else list(wrt)

    # Analytic: one backward pass with a random upstream gradient.
    tensors = [Tensor(a, requires_grad=(i in wrt)) for i, a in enumerate(arrays)]
    out = fn(*tensors)
    if not isinstance(out, Tensor):
        raise TypeError(f"gradcheck: fn must return a Tensor, got {type(out).__name__}")
    upstream = np.random.default_rng(seed).standard_normal(out.shape)
    out.backward(upstream)
    for i, (a, orig) in enumerate(zip(arrays, originals)):
        if not np.array_equal(a, orig):
            raise GradcheckError(f"gradcheck: fn modified input {i} in place")

    result = GradcheckResult(ok=True)
    for i in wrt:
        analytic = tensors[i].grad
        if analytic is None:  # the output does not depend on this input at all
            analytic = np.zeros_like(arrays[i])
        numeric = np.zeros_like(arrays[i])
        x = arrays[i]
        for pos in np.ndindex(x.shape):
            saved = x[pos]
            x[pos] = saved + eps
            plus = _scalar(fn, arrays, upstream)
            x[pos] = saved - eps
            minus = _scalar(fn, arrays, upstream)
            x[pos] = saved
            numeric[pos] = (plus - minus) / (2 * eps)

        err = np.abs(analytic - numeric)
        excess = err - (atol + rtol * np.abs(numeric))
        worst = np.unravel_index(np.argmax(excess), x.shape) if x.size else ()
        rel = err / np.maximum(np.abs(numeric), 1e-12)
        ok = bool(np.all(excess <= 0))
        result.inputs.append(
            InputReport(
                index=i,
                max_abs_error=float(err.max(initial=0.0)),
                max_rel_error=float(rel.max(initial=0.0)),
                worst_position=tuple(int(w) for w in worst),
                analytic=float(analytic[worst]) if x.size else 0.0,
                numeric=float(numeric[worst]) if x.size else 0.0,
                ok=ok,
            )
        )
        result.ok &= ok

    if raise_on_failure and not result.ok:
        raise GradcheckError("gradient check failed:\n" + result.report())
    return result
