"""Elementwise primitive ops: each computes its output with NumPy and states its local derivative.

Each op follows the same recipe (see `tinymoe.tensor` for the engine):

    def op(x):
        out = <NumPy forward>
        def backward(g):             # g = dL/d(out), same shape as out
            return (g * <d out / d x>,)  # one gradient per parent, in order
        return Tensor.from_op(out, (x,), backward, "op")

Binary ops broadcast like NumPy. Their backward returns gradients in the *broadcast* shape; the engine
sums them back to each input's shape (`tinymoe.tensor.unbroadcast`), so no op repeats that logic.
Python numbers and arrays mixed with Tensors become constants of the Tensor's dtype, so `x * 0.5`
stays float32 when x is float32.
"""

from __future__ import annotations

import numpy as np

from tinymoe.tensor import Tensor


def lift(*values) -> tuple[Tensor, ...]:
    """Turn every non-Tensor operand into a constant Tensor with the dtype of the first Tensor operand."""
    dtype = next((v.data.dtype for v in values if isinstance(v, Tensor)), None)
    return tuple(v if isinstance(v, Tensor) else Tensor(np.asarray(v, dtype=dtype)) for v in values)


def lift_pair(a, b, op: str) -> tuple[Tensor, Tensor]:
    """`lift` two operands of a binary op, and check that their shapes broadcast, naming the op and
    both shapes if not (NumPy's own message names neither the op nor which operand came first)."""
    a, b = lift(a, b)
    if a.shape != b.shape:
        try:
            np.broadcast_shapes(a.shape, b.shape)
        except ValueError:
            raise ValueError(
                f"{op}: shapes {a.shape} and {b.shape} do not broadcast (trailing axes must be equal or 1)"
            ) from None
    return a, b


def add(a, b) -> Tensor:
    a, b = lift_pair(a, b, "add")

    def backward(g):  # d(a+b)/da = d(a+b)/db = 1
        return g, g

    return Tensor.from_op(a.data + b.data, (a, b), backward, "add")


def sub(a, b) -> Tensor:
    a, b = lift_pair(a, b, "sub")

    def backward(g):
        return g, -g

    return Tensor.from_op(a.data - b.data, (a, b), backward, "sub")


def mul(a, b) -> Tensor:
    a, b = lift_pair(a, b, "mul")

    def backward(g):  # d(ab)/da = b, d(ab)/db = a
        return g * b.data, g * a.data

    return Tensor.from_op(a.data * b.data, (a, b), backward, "mul")


def div(a, b) -> Tensor:
    a, b = lift_pair(a, b, "div")

    def backward(g):  # d(a/b)/da = 1/b, d(a/b)/db = -a/b^2
        return g / b.data, -g * a.data / (b.data * b.data)

    return Tensor.from_op(a.data / b.data, (a, b), backward, "div")


def neg(a) -> Tensor:
    (a,) = lift(a)
    return Tensor.from_op(-a.data, (a,), lambda g: (-g,), "neg")


def pow(a, exponent) -> Tensor:
    """a ** exponent for a constant (non-Tensor) exponent: d(a^p)/da = p a^(p-1)."""
    if isinstance(exponent, Tensor):
        raise TypeError("pow: the exponent must be a Python number, not a Tensor; use exp(b * log(a)) instead")
    (a,) = lift(a)
    p = np.asarray(exponent, dtype=a.data.dtype)

    def backward(g):
        return (g * p * a.data ** (p - 1),)

    return Tensor.from_op(a.data**p, (a,), backward, "pow")


def exp(a) -> Tensor:
    (a,) = lift(a)
    out = np.exp(a.data)
    return Tensor.from_op(out, (a,), lambda g: (g * out,), "exp")  # d e^a / da = e^a


def log(a) -> Tensor:
    (a,) = lift(a)
    return Tensor.from_op(np.log(a.data), (a,), lambda g: (g / a.data,), "log")  # d log a / da = 1/a


def tanh(a) -> Tensor:
    (a,) = lift(a)
    out = np.tanh(a.data)
    return Tensor.from_op(out, (a,), lambda g: (g * (1 - out * out),), "tanh")  # 1 - tanh^2


def maximum(a, b) -> Tensor:
    """Elementwise max. The gradient goes to the larger input; at a tie it is split evenly, so the
    result is the average of the two one-sided derivatives (the function is not differentiable there)."""
    a, b = lift_pair(a, b, "maximum")
    out = np.maximum(a.data, b.data)

    def backward(g):
        a_wins = (a.data > b.data).astype(g.dtype) + 0.5 * (a.data == b.data)
        return g * a_wins, g * (1 - a_wins)

    return Tensor.from_op(out, (a, b), backward, "maximum")


def relu(a) -> Tensor:
    """max(a, 0); the derivative at exactly 0 is taken as 0, as in every deep-learning library."""
    (a,) = lift(a)
    out = np.maximum(a.data, 0)
    return Tensor.from_op(out, (a,), lambda g: (g * (a.data > 0),), "relu")
