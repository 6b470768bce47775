"""Elementwise ops: forward equals the NumPy formula, backward equals finite differences (float64)."""

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from tinymoe import Tensor, ops
from tinymoe.gradcheck import gradcheck
from tinymoe.testing import strategies as st_

BINARY = {
    "add": (ops.add, np.add),
    "sub": (ops.sub, np.subtract),
    "mul": (ops.mul, np.multiply),
    "div": (ops.div, np.divide),
    "maximum": (ops.maximum, np.maximum),
}


@st.composite
def binary_operands(draw, name):
    shape_a, shape_b = draw(st_.broadcastable_shapes(2))
    a = draw(st_.maybe_noncontiguous(st_.arrays(shape_a)))
    if name == "div":  # keep away from the pole at b = 0
        b = draw(st_.arrays(shape_b, away_from_zero=0.3))
    elif name == "maximum":  # keep a and b apart so the kink is never inside the finite-difference step
        b = draw(st_.arrays(shape_b))
        assume(bool(np.all(np.abs(np.subtract(a, b)) > 1e-3)))
    else:
        b = draw(st_.arrays(shape_b))
    return a, b


@pytest.mark.parametrize("name", sorted(BINARY))
@given(data=st.data())
def test_binary_forward_and_gradient(name, data):
    op, reference = BINARY[name]
    a, b = data.draw(binary_operands(name))
    a0, b0 = a.copy(), b.copy()
    np.testing.assert_allclose(op(Tensor(a), Tensor(b)).data, reference(a, b), rtol=1e-12)
    gradcheck(op, [a, b])
    np.testing.assert_array_equal(a, a0)  # inputs are never mutated
    np.testing.assert_array_equal(b, b0)


UNARY = {
    "neg": (ops.neg, np.negative, st_.arrays),
    "exp": (ops.exp, np.exp, st_.arrays),
    "log": (ops.log, np.log, st_.positive_arrays),
    "tanh": (ops.tanh, np.tanh, st_.arrays),
    "relu": (ops.relu, lambda x: np.maximum(x, 0), lambda s: st_.arrays(s, away_from_zero=1e-3)),
    "pow3": (lambda x: ops.pow(x, 3), lambda x: x**3, st_.arrays),
    "pow-1.5": (lambda x: ops.pow(x, -1.5), lambda x: x**-1.5, st_.positive_arrays),
}


@pytest.mark.parametrize("name", sorted(UNARY))
@given(data=st.data())
def test_unary_forward_and_gradient(name, data):
    op, reference, values = UNARY[name]
    x = data.draw(st_.maybe_noncontiguous(values(st_.shapes())))
    np.testing.assert_allclose(op(Tensor(x)).data, reference(x), rtol=1e-12)
    gradcheck(op, [x])


@pytest.mark.parametrize("name", ["add", "mul", "div"])
@given(x=st_.arrays(st_.shapes(min_dims=1), away_from_zero=0.3))
def test_float32_forward_matches_float64(name, x):
    op = BINARY[name][0]
    y = x[::-1].copy()
    out64 = op(Tensor(x), Tensor(y)).data
    out32 = op(Tensor(x.astype(np.float32)), Tensor(y.astype(np.float32))).data
    assert out32.dtype == np.float32  # no silent upcast
    np.testing.assert_allclose(out32, out64, rtol=1e-5, atol=1e-6)


def test_python_scalars_keep_the_tensor_dtype():
    x = Tensor(np.ones(3, dtype=np.float32), requires_grad=True)
    y = 2.0 * x - 1 + x / 3.0
    assert y.dtype == np.float32
    y.sum().backward()
    assert x.grad.dtype == np.float32
    np.testing.assert_allclose(x.grad, np.full(3, 2 + 1 / 3), rtol=1e-6)


def test_maximum_splits_the_gradient_at_a_tie():
    a = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    b = Tensor(np.array([1.0, 0.0]), requires_grad=True)
    ops.maximum(a, b).sum().backward()
    np.testing.assert_array_equal(a.grad, [0.5, 1.0])
    np.testing.assert_array_equal(b.grad, [0.5, 0.0])


def test_a_wrong_backward_is_caught():
    """The whole suite rests on gradcheck failing for a wrong derivative; show that it does."""

    def bad_tanh(x):
        out = np.tanh(x.data)
        return Tensor.from_op(out, (x,), lambda g: (g * (1 - out),), "bad_tanh")  # forgot the square

    from tinymoe.gradcheck import GradcheckError

    with pytest.raises(GradcheckError, match="FAIL input 0"):
        gradcheck(bad_tanh, [np.array([0.3, -1.2, 0.7])])


@pytest.mark.parametrize("name", sorted(BINARY))
def test_shapes_that_do_not_broadcast_name_the_op_and_both_shapes(name):
    op = BINARY[name][0]
    with pytest.raises(ValueError, match=rf"^{name}: shapes \(2, 3\) and \(4,\) do not broadcast"):
        op(Tensor(np.ones((2, 3))), Tensor(np.ones(4)))
    with pytest.raises(ValueError, match=rf"^{name}: shapes \(3,\) and \(2, 2\) do not broadcast"):
        op(np.ones(3), Tensor(np.ones((2, 2))))  # the order of the operands is kept in the message
