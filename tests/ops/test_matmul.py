"""matmul: NumPy's `@` for vectors, matrices and broadcast batches, with a finite-difference-checked backward."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinymoe import Tensor, ops
from tinymoe.gradcheck import gradcheck
from tinymoe.testing import strategies as st_


@st.composite
def operands(draw):
    a_shape, b_shape = draw(st_.matmul_shapes())
    a = draw(st_.maybe_noncontiguous(st_.arrays(a_shape)))
    b = draw(st_.maybe_noncontiguous(st_.arrays(b_shape)))
    return a, b


@given(operands())
def test_forward_and_gradient(ab):
    a, b = ab
    a0, b0 = a.copy(), b.copy()
    out = ops.matmul(Tensor(a), Tensor(b))
    expected = np.matmul(a, b)
    assert out.shape == expected.shape
    np.testing.assert_allclose(out.data, expected, rtol=1e-12, atol=1e-14)
    gradcheck(ops.matmul, [a, b])
    np.testing.assert_array_equal(a, a0)  # inputs are never mutated
    np.testing.assert_array_equal(b, b0)


# Every combination of operand kinds, so each branch of the backward (vector promotion on either side,
# the shared-matrix shortcut, broadcast batch axes on either side) runs on every test run, whatever
# hypothesis happens to draw.
KIND_CASES = [
    ((3,), (3,)),  # vector · vector -> scalar
    ((3,), (3, 2)),  # vector · matrix
    ((2, 3), (3,)),  # matrix · vector
    ((2, 3), (3, 4)),  # matrix · matrix
    ((2, 2, 3), (3, 4)),  # batch · shared matrix (a linear layer)
    ((2, 3, 2, 3), (3, 2)),  # two batch axes · shared matrix (the batch is folded into rows)
    ((2, 2, 3), (3,)),  # batch · shared vector
    ((3,), (2, 3, 2)),  # vector · batch
    ((2, 3), (2, 3, 1)),  # shared matrix · batch
    ((2, 1, 2, 3), (3, 3, 2)),  # batch axes broadcast on both sides: (2, 1) with (3,) -> (2, 3)
]


@pytest.mark.parametrize("a_shape, b_shape", KIND_CASES)
def test_every_kind_of_operand(a_shape, b_shape):
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(a_shape), rng.standard_normal(b_shape)
    np.testing.assert_allclose(ops.matmul(Tensor(a), Tensor(b)).data, a @ b, rtol=1e-12)
    gradcheck(ops.matmul, [a, b])


def test_gradients_by_hand():
    a = Tensor(np.array([[1.0, 2.0], [3.0, 4.0]]), requires_grad=True)
    b = Tensor(np.array([[0.5], [-1.0]]), requires_grad=True)
    g = np.array([[1.0], [2.0]])
    ops.matmul(a, b).backward(g)
    np.testing.assert_array_equal(a.grad, g @ b.data.T)  # dL/dA = G Bᵀ = [[0.5, -1], [1, -2]]
    np.testing.assert_array_equal(a.grad, [[0.5, -1.0], [1.0, -2.0]])
    np.testing.assert_array_equal(b.grad, [[7.0], [10.0]])  # dL/dB = Aᵀ G


@given(operands())
def test_float32_matches_float64(ab):
    a, b = ab
    a32 = Tensor(a.astype(np.float32), requires_grad=True)
    b32 = Tensor(b.astype(np.float32), requires_grad=True)
    out32 = ops.matmul(a32, b32)
    assert out32.dtype == np.float32  # no silent upcast
    np.testing.assert_allclose(out32.data, a @ b, rtol=1e-5, atol=1e-5)
    out32.backward(np.ones(out32.shape, dtype=np.float32))
    assert a32.grad.dtype == np.float32 and b32.grad.dtype == np.float32
    assert a32.grad.shape == a.shape and b32.grad.shape == b.shape


def test_the_at_operator_works_with_arrays_on_either_side():
    a = np.arange(6.0).reshape(2, 3)
    w = Tensor(np.ones((3, 2)), requires_grad=True)
    np.testing.assert_array_equal((Tensor(a) @ w).data, a @ np.ones((3, 2)))
    np.testing.assert_array_equal((a @ w).data, a @ np.ones((3, 2)))  # ndarray @ Tensor -> __rmatmul__
    (a @ w).sum().backward()
    np.testing.assert_array_equal(w.grad, np.repeat(a.sum(axis=0)[:, None], 2, axis=1))


@pytest.mark.parametrize(
    "a_shape, b_shape, message",
    [
        ((2, 3), (4, 5), "the last axis of the first (3) must equal the second-to-last axis of the second (4)"),
        ((3,), (4,), "the last axis of the first (3) must equal the only axis of the second (4)"),
        ((2, 2, 3), (3, 3, 2), "batch dimensions (2,) and (3,) do not broadcast"),
        ((), (3,), "a 0-d operand has no axis to multiply over"),
    ],
)
def test_shape_errors_name_both_shapes(a_shape, b_shape, message):
    with pytest.raises(ValueError) as info:
        ops.matmul(Tensor(np.ones(a_shape)), Tensor(np.ones(b_shape)))
    text = str(info.value)
    assert text.startswith(f"matmul: shapes {a_shape} and {b_shape}")
    assert message in text
