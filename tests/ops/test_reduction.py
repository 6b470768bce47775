"""Reductions: forward equals NumPy, backward equals finite differences (float64), over any axes."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinymoe import Tensor, ops
from tinymoe.gradcheck import gradcheck
from tinymoe.testing import strategies as st_

REDUCTIONS = {
    "sum": (ops.sum, np.sum, st_.arrays),
    "mean": (ops.mean, np.mean, st_.arrays),
    # Distinct values: no ties, so the max is differentiable and finite differences are meaningful.
    "max": (ops.max, np.max, st_.distinct_arrays),
}


@st.composite
def reduction_case(draw, values):
    shape = draw(st_.shapes(max_dims=3, max_side=4))  # at most 64 entries
    x = draw(st_.maybe_noncontiguous(values(shape)))
    return x, draw(st_.reduction_axes(len(shape))), draw(st.booleans())


@pytest.mark.parametrize("name", sorted(REDUCTIONS))
@given(data=st.data())
def test_forward_and_gradient(name, data):
    op, reference, values = REDUCTIONS[name]
    x, axis, keepdims = data.draw(reduction_case(values))
    x0 = x.copy()
    out = op(Tensor(x), axis=axis, keepdims=keepdims)
    expected = np.asarray(reference(x, axis=axis, keepdims=keepdims))
    assert out.shape == expected.shape
    np.testing.assert_allclose(out.data, expected, rtol=1e-12, atol=1e-14)
    gradcheck(lambda t: op(t, axis=axis, keepdims=keepdims), [x])
    np.testing.assert_array_equal(x, x0)  # inputs are never mutated


@pytest.mark.parametrize("name", sorted(REDUCTIONS))
@given(data=st.data())
def test_float32_matches_float64(name, data):
    op, _, values = REDUCTIONS[name]
    x, axis, keepdims = data.draw(reduction_case(values))
    x32 = Tensor(x.astype(np.float32), requires_grad=True)
    out32 = op(x32, axis=axis, keepdims=keepdims)
    assert out32.dtype == np.float32  # no silent upcast
    np.testing.assert_allclose(out32.data, op(Tensor(x), axis=axis, keepdims=keepdims).data, rtol=1e-5, atol=1e-5)
    out32.backward(np.ones(out32.shape, dtype=np.float32))
    assert x32.grad.dtype == np.float32


def test_gradients_by_hand():
    x = Tensor(np.arange(6.0).reshape(2, 3), requires_grad=True)
    ops.sum(x, axis=1).backward(np.array([1.0, 10.0]))  # every entry of row i receives g_i
    np.testing.assert_array_equal(x.grad, [[1, 1, 1], [10, 10, 10]])
    x.zero_grad()
    ops.mean(x, axis=0, keepdims=True).backward(np.array([[3.0, 6.0, 9.0]]))  # g_j / 2 to both rows
    np.testing.assert_array_equal(x.grad, [[1.5, 3, 4.5], [1.5, 3, 4.5]])
    x.zero_grad()
    ops.max(x, axis=-1).backward(np.array([2.0, 5.0]))  # only the last column holds the maxima
    np.testing.assert_array_equal(x.grad, [[0, 0, 2], [0, 0, 5]])


def test_max_splits_the_gradient_evenly_among_ties():
    x = Tensor(np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0], [0.0, 4.0, -1.0]]), requires_grad=True)
    ops.max(x, axis=1).backward(np.array([1.0, 6.0, 5.0]))
    np.testing.assert_allclose(x.grad, [[0, 0.5, 0.5], [2, 2, 2], [0, 5, 0]], rtol=1e-15)

    y = Tensor(np.array([[5.0, 1.0], [5.0, 5.0]]), requires_grad=True)
    ops.max(y).backward()  # three entries tie for the overall max: 1/3 each, the total stays 1
    np.testing.assert_allclose(y.grad, [[1 / 3, 0], [1 / 3, 1 / 3]], rtol=1e-15)


def test_tensor_methods_forward_to_the_ops():
    x = np.arange(24.0).reshape(2, 3, 4)
    t = Tensor(x)
    np.testing.assert_array_equal(t.sum(axis=(0, -1)).data, x.sum(axis=(0, 2)))
    np.testing.assert_array_equal(t.mean(axis=1, keepdims=True).data, x.mean(axis=1, keepdims=True))
    np.testing.assert_array_equal(t.max().data, 23.0)


def test_axes_in_any_order_and_sign_are_the_same_reduction():
    x = np.random.default_rng(0).standard_normal((2, 3, 4))
    a = ops.sum(Tensor(x), axis=(2, 0)).data
    b = ops.sum(Tensor(x), axis=(-3, -1)).data
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", sorted(REDUCTIONS))
def test_bad_axes_are_clear_errors(name):
    op = REDUCTIONS[name][0]
    x = Tensor(np.ones((2, 3)))
    message = rf"{name}: axis 2 is out of range for a tensor with 2 dims; valid axes: -2..1"
    with pytest.raises(ValueError, match=message):
        op(x, axis=2)
    with pytest.raises(ValueError, match=rf"{name}: axis \(1, -1\) names the same axis more than once"):
        op(x, axis=(1, -1))
    with pytest.raises(TypeError, match=rf"{name}: axis must be an int or a tuple of ints"):
        op(x, axis=0.5)


@pytest.mark.parametrize("name", ["mean", "max"])
def test_reducing_an_empty_axis_is_a_clear_error(name):
    with pytest.raises(ValueError, match=rf"{name}: cannot .* over an empty axis"):
        REDUCTIONS[name][0](Tensor(np.ones((2, 0))), axis=1)


def test_sum_over_an_empty_axis_is_zero():
    x = Tensor(np.ones((2, 0)), requires_grad=True)
    out = ops.sum(x, axis=1)
    np.testing.assert_array_equal(out.data, [0.0, 0.0])
    out.backward(np.ones(2))
    assert x.grad.shape == (2, 0)
