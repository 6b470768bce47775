"""gradcheck itself: it passes correct ops, and it catches (and locates) wrong ones.

Every op test in the suite rests on gradcheck failing for a wrong derivative, so here it is shown to
fail on several kinds of mistakes, each with a report that names the input and the position.
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinymoe import Tensor, ops
from tinymoe.gradcheck import GradcheckError, gradcheck
from tinymoe.testing import strategies as st_


@st.composite
def broadcast_pair(draw):
    shape_a, shape_b = draw(st_.broadcastable_shapes(2))
    return draw(st_.maybe_noncontiguous(st_.arrays(shape_a))), draw(st_.arrays(shape_b))


@given(broadcast_pair())
def test_passes_on_a_correct_composite(ab):
    result = gradcheck(lambda x, y: ops.tanh(x * y + x).sum() / (1.0 + ops.exp(y).mean()), list(ab))
    assert result.ok and [r.index for r in result.inputs] == [0, 1]
    assert all(r.max_abs_error < 1e-7 for r in result.inputs)


def test_report_of_a_passing_check():
    result = gradcheck(ops.mul, [np.array([1.0, 2.0]), np.array([3.0, -1.0])])
    lines = result.report().splitlines()
    assert len(lines) == 2 and lines[0].startswith("ok   input 0") and lines[1].startswith("ok   input 1")


# ------------------------------------------------------------------------------------------------
# Deliberately wrong backwards
# ------------------------------------------------------------------------------------------------
def sum_that_drops_one_position(x):
    """sum(x) whose backward forgets the entry at (1, 2)."""

    def backward(g):
        grad = np.broadcast_to(g, x.shape).copy()
        grad[1, 2] = 0.0
        return (grad,)

    return Tensor.from_op(np.asarray(x.data.sum()), (x,), backward, "bad_sum")


def test_wrong_sum_is_caught_at_the_wrong_position():
    with pytest.raises(GradcheckError) as info:
        gradcheck(sum_that_drops_one_position, [np.arange(6.0).reshape(2, 3)])
    report = str(info.value)
    assert "FAIL input 0" in report and "worst at (1, 2)" in report
    assert "analytic 0 vs numeric" in report


def mul_with_swapped_gradients(a, b):
    """a * b whose backward hands each input the other's derivative: right for a == b only."""
    return Tensor.from_op(a.data * b.data, (a, b), lambda g: (g * a.data, g * b.data), "bad_mul")


def test_wrong_mul_names_both_inputs():
    a, b = np.array([1.0, 2.0, 3.0]), np.array([1.0, -1.0, 0.5])
    result = gradcheck(mul_with_swapped_gradients, [a, b], raise_on_failure=False)
    assert not result.ok
    report = result.report()
    assert "FAIL input 0" in report and "FAIL input 1" in report
    # Position 0 has a == b, where the swap does no harm; the worst positions lie elsewhere.
    assert all(r.worst_position != (0,) for r in result.inputs)


def take_that_overwrites_repeats(x, indices):
    """take(x, indices) whose backward assigns instead of accumulating: repeated indices lose gradient."""

    def backward(g):
        grad = np.zeros_like(x.data)
        grad[indices] = g  # the bug np.add.at exists to avoid
        return (grad,)

    return Tensor.from_op(x.data[indices], (x,), backward, "bad_take")


def test_wrong_take_is_caught_at_the_repeated_index():
    indices = np.array([2, 0, 2, 1])
    x = np.array([0.5, -1.0, 2.0])
    gradcheck(lambda t: ops.take(t, indices), [x])  # the real take passes
    with pytest.raises(GradcheckError, match=r"FAIL input 0: .* worst at \(2,\)"):
        gradcheck(lambda t: take_that_overwrites_repeats(t, indices), [x])


def matmul_with_untransposed_b(a, b):
    """a @ b for square matrices whose backward forgets to transpose b: dA = G B instead of G Bᵀ."""
    return Tensor.from_op(a.data @ b.data, (a, b), lambda g: (g @ b.data, a.data.T @ g), "bad_matmul")


def test_wrong_matmul_is_caught_only_in_the_wrong_input():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((3, 3)), rng.standard_normal((3, 3))
    result = gradcheck(matmul_with_untransposed_b, [a, b], raise_on_failure=False)
    assert [r.ok for r in result.inputs] == [False, True]


def test_a_random_upstream_gradient_catches_what_summing_the_output_would_miss():
    """The backward below is right for the column sums of the Jacobian (an upstream of all ones) but
    wrong entry by entry: it gives every input the *total* output gradient spread evenly."""

    def smeared_scale(x):
        scale = np.array([1.0, 2.0, 3.0])
        return Tensor.from_op(x.data * scale, (x,), lambda g: (np.full(3, (g * scale).sum() / 3),), "smeared")

    x = np.array([0.1, 0.2, 0.3])
    # With the all-ones upstream used when the output is summed, the totals agree (6 = 2 + 2 + 2)...
    t = Tensor(x, requires_grad=True)
    smeared_scale(t).sum().backward()
    assert t.grad.sum() == pytest.approx(6.0)
    # ... but gradcheck's random upstream gradient exposes it.
    with pytest.raises(GradcheckError, match="FAIL input 0"):
        gradcheck(smeared_scale, [x])


# ------------------------------------------------------------------------------------------------
# Mutation, wrt, bad arguments
# ------------------------------------------------------------------------------------------------
def test_detects_an_op_that_mutates_its_input_in_the_forward():
    def scale_in_place(x):
        x.data *= 2.0  # the bug: changes the caller's array
        return Tensor.from_op(x.data.copy(), (x,), lambda g: (2.0 * g,), "scale_in_place")

    with pytest.raises(GradcheckError, match="fn modified input 0 in place"):
        gradcheck(scale_in_place, [np.array([1.0, 2.0])])


def test_detects_a_backward_that_mutates_a_saved_input():
    def square_clobbering_its_input(x):
        def backward(g):
            x.data[...] = 2 * x.data  # reuses the input's buffer for the derivative: a bug
            return (g * x.data,)

        return Tensor.from_op(x.data**2, (x,), backward, "square")

    with pytest.raises(GradcheckError, match="modified input 0 in place"):
        gradcheck(square_clobbering_its_input, [np.array([1.0, 2.0])])


def test_caller_arrays_are_never_modified():
    a = np.array([1.0, 2.0, 3.0])
    a0 = a.copy()
    gradcheck(ops.exp, [a])
    np.testing.assert_array_equal(a, a0)


def test_wrt_checks_only_the_named_inputs():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((3, 3)), rng.standard_normal((3, 3))
    # Input 0's backward is wrong; checking only input 1 passes, and reports input 1 only.
    result = gradcheck(matmul_with_untransposed_b, [a, b], wrt=[1])
    assert result.ok and [r.index for r in result.inputs] == [1]
    with pytest.raises(GradcheckError, match="FAIL input 0"):
        gradcheck(matmul_with_untransposed_b, [a, b], wrt=[0])


def test_an_input_the_output_ignores_has_zero_gradient():
    result = gradcheck(lambda a, b: ops.exp(a), [np.array([0.1, 0.2]), np.array([5.0])])
    assert result.ok and result.inputs[1].max_abs_error == 0.0


def test_rejects_non_finite_inputs_and_non_tensor_outputs():
    with pytest.raises(ValueError, match="input 0 contains NaN or inf"):
        gradcheck(ops.exp, [np.array([1.0, np.nan])])
    with pytest.raises(TypeError, match="fn must return a Tensor"):
        gradcheck(lambda x: x.data, [np.array([1.0])])
