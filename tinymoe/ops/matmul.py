"""Matrix multiplication with NumPy's `@` semantics, and its backward.

For C = A B with A (n, k) and B (k, m), C_ij = sum_p A_ip B_pj, so for an upstream gradient G = dL/dC:

    dL/dA = G Bᵀ      (n, m) @ (m, k) -> (n, k)
    dL/dB = Aᵀ G      (k, n) @ (n, m) -> (k, m)

Everything else is bookkeeping, as in NumPy:

- Batched: (..., n, k) @ (..., k, m) multiplies the last two axes and broadcasts the leading ("batch")
  axes. The backward formulas hold per batch entry; their results come out in the broadcast batch shape
  and the engine sums away the batch axes an input was broadcast along.
- 1-D operands: a vector a (k,) on the left acts as a row (1, k), a vector b (k,) on the right as a
  column (k, 1); the added axis is then dropped from the result. The backward puts it back on G, applies
  the matrix formulas, and drops it again from the gradient.
"""

from __future__ import annotations

import numpy as np

from tinymoe.ops.elementwise import lift
from tinymoe.tensor import Tensor


def _check_shapes(a_shape: tuple[int, ...], b_shape: tuple[int, ...]) -> None:
    both = f"shapes {a_shape} and {b_shape}"
    if len(a_shape) == 0 or len(b_shape) == 0:
        raise ValueError(f"matmul: {both}: a 0-d operand has no axis to multiply over; use mul for scalars")
    k_a = a_shape[-1]
    k_b = b_shape[0] if len(b_shape) == 1 else b_shape[-2]
    if k_a != k_b:
        raise ValueError(
            f"matmul: {both} are not aligned: the last axis of the first ({k_a}) must equal the "
            f"{'only' if len(b_shape) == 1 else 'second-to-last'} axis of the second ({k_b})"
        )
    try:
        np.broadcast_shapes(a_shape[:-2], b_shape[:-2])
    except ValueError:
        raise ValueError(
            f"matmul: {both}: batch dimensions {a_shape[:-2]} and {b_shape[:-2]} do not broadcast"
        ) from None


def matmul(a, b) -> Tensor:
    """a @ b for 1-D, 2-D or batched operands (broadcasting batch axes), like NumPy's `@`."""
    a, b = lift(a, b)
    _check_shapes(a.shape, b.shape)
    out = np.matmul(a.data, b.data)
    a_is_vector, b_is_vector = a.ndim == 1, b.ndim == 1
    # Operands as matrices: a vector on the left is a row, a vector on the right is a column.
    a2 = a.data[None, :] if a_is_vector else a.data  # (..., n, k)
    b2 = b.data[:, None] if b_is_vector else b.data  # (..., k, m)

    def backward(g):
        # Give g the (..., n, m) shape it would have had without the vector promotions.
        if b_is_vector:
            g = g[..., None]  # (..., n) -> (..., n, 1)
        if a_is_vector:
            g = g[..., None, :]  # (..., m) -> (..., 1, m)

        grad_a = g @ np.swapaxes(b2, -1, -2)  # dL/dA = G Bᵀ: (..., n, m) @ (..., m, k) -> (..., n, k)
        if b2.ndim == 2 and g.ndim > 2:
            # B is one matrix shared by every batch entry (x @ W in a linear layer). Its gradient is the
            # sum over the batch of A_bᵀ G_b, which is one product once the batch is folded into the
            # rows: (k, batch·n) @ (batch·n, m). This avoids materialising a (batch, k, m) stack.
            a_rows = a2.reshape(-1, a2.shape[-1])  # (batch·n, k); the batch here is a's own
            grad_b = a_rows.T @ g.reshape(-1, g.shape[-1])  # (k, m)
        else:
            grad_b = np.swapaxes(a2, -1, -2) @ g  # dL/dB = Aᵀ G: (..., k, n) @ (..., n, m) -> (..., k, m)

        # Drop the promoted axes again; batch axes that were broadcast are summed by the engine.
        if a_is_vector:
            grad_a = grad_a[..., 0, :]  # (..., 1, k) -> (..., k)
        if b_is_vector:
            grad_b = grad_b[..., 0]  # (..., k, 1) -> (..., k)
        return grad_a, grad_b

    return Tensor.from_op(np.asarray(out), (a, b), backward, "matmul")
