"""Input checks shared by the fused ops: turn what the caller passed into Tensors, or say what is wrong.

Fused ops take several float inputs that must agree in dtype: float32 with float64 would make NumPy
silently upcast the result (and the optimizer's float32 parameters would then get float64
gradients), so the fused ops refuse mixed dtypes instead and say how to fix it.
"""

from __future__ import annotations

import numpy as np

from tinymoe.ops.elementwise import lift
from tinymoe.tensor import Tensor

FLOAT_KINDS = "f"


def float_operands(op: str, names: tuple[str, ...], values: tuple) -> tuple[Tensor | None, ...]:
    """The values as Tensors of one floating-point dtype (None passes through as None).

    Non-Tensor values (NumPy arrays, Python numbers) become constants of the first Tensor's dtype,
    as in every op (see `ops.lift`). Raises TypeError naming `op` and the offending argument for a
    non-float dtype or for two Tensors of different dtypes.
    """
    present = [v for v in values if v is not None]
    lifted = iter(lift(*present))
    tensors = tuple(None if v is None else next(lifted) for v in values)
    first_name, first_dtype = None, None
    for name, t in zip(names, tensors):
        if t is None:
            continue
        if t.data.dtype.kind not in FLOAT_KINDS:
            raise TypeError(
                f"{op}: {name} has dtype {t.data.dtype}, but {op} needs floating-point inputs; "
                f"convert it with {name}.astype(np.float32) (training) or np.float64 (gradient checks)"
            )
        if first_dtype is None:
            first_name, first_dtype = name, t.data.dtype
        elif t.data.dtype != first_dtype:
            raise TypeError(
                f"{op}: {name} has dtype {t.data.dtype} but {first_name} has dtype {first_dtype}; "
                f"cast them to one dtype (float32 for training, float64 for gradient checks)"
            )
    return tensors


def single_axis(op: str, axis, shape: tuple[int, ...]) -> int:
    """`axis` as a non-negative int for an array of `shape`, or a clear error naming `op`."""
    if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, (int, np.integer)):
        raise TypeError(f"{op}: axis must be a single int, got {axis!r}")
    ndim = len(shape)
    if ndim == 0:
        raise ValueError(f"{op}: needs a tensor with at least one axis, got a 0-d tensor")
    if not -ndim <= axis < ndim:
        raise ValueError(f"{op}: axis {axis} is out of range for a tensor of shape {shape}")
    return int(axis) % ndim
