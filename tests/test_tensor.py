"""The autograd engine itself: graph shapes (reuse, diamonds, deep chains), accumulation, freeing,
no_grad, dtypes, the broadcast reduction `unbroadcast`, and the README's example."""

import doctest
import pathlib
import re

import numpy as np
import pytest

from tinymoe import Tensor, is_grad_enabled, no_grad, ops
from tinymoe.tensor import unbroadcast

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


# ------------------------------------------------------------------------------------------------
# Graph shapes
# ------------------------------------------------------------------------------------------------
def test_a_tensor_used_twice_gets_both_contributions():
    x = Tensor(np.array([1.0, -2.0, 3.0]), requires_grad=True)
    y = x * x + x  # dy/dx = 2x + 1: one contribution from each factor of x*x, one from + x
    y.sum().backward()
    np.testing.assert_array_equal(x.grad, 2 * x.data + 1)


def test_diamond_graph():
    # a feeds b and c, which meet again in d = b * c = (2a)(3a) = 6a^2, so dd/da = 12a. A node may only
    # pass its gradient on once both branches have delivered theirs: the topological order ensures it.
    a = Tensor(np.array([0.5, -1.0]), requires_grad=True)
    b = a * 2.0
    c = a * 3.0
    d = b * c
    d.sum().backward()
    np.testing.assert_allclose(a.grad, 12 * a.data, rtol=1e-15)


def test_each_backward_closure_runs_once_in_a_diamond():
    calls = []

    def counted_identity(x):
        def backward(g):
            calls.append(1)
            return (g,)

        return Tensor.from_op(x.data.copy(), (x,), backward, "counted_identity")

    a = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    m = counted_identity(a)
    (m * 2.0 + m * 3.0).sum().backward()
    assert len(calls) == 1  # m's gradient was complete (2 + 3) before its backward ran
    np.testing.assert_array_equal(a.grad, [5.0, 5.0])


def test_a_chain_of_100000_ops_does_not_hit_the_recursion_limit():
    x = Tensor(np.array(1.5), requires_grad=True)
    y = x
    for _ in range(100_000):
        y = -y  # an even number of negations: y = x, dy/dx = 1
    y.backward()
    assert y.item() == 1.5
    assert x.grad == 1.0


# ------------------------------------------------------------------------------------------------
# Accumulation, freeing, errors
# ------------------------------------------------------------------------------------------------
def test_backward_twice_with_retain_graph_accumulates():
    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    y = (x * x).sum()
    y.backward(retain_graph=True)
    np.testing.assert_array_equal(x.grad, [2.0, 4.0])
    y.backward()
    np.testing.assert_array_equal(x.grad, [4.0, 8.0])  # added, not overwritten


def test_backward_through_a_freed_graph_is_a_clear_error():
    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    y = (x * x).sum()
    y.backward()
    with pytest.raises(RuntimeError, match="already freed.*retain_graph=True"):
        y.backward()


def test_backward_through_a_freed_intermediate_is_an_error():
    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    y = x * x
    y.sum().backward()  # frees y's link to x
    with pytest.raises(RuntimeError, match="freed"):
        (y * 2.0).sum().backward()


def test_backward_on_a_non_scalar_needs_a_gradient():
    x = Tensor(np.ones((2, 3)), requires_grad=True)
    y = x * 2.0
    with pytest.raises(RuntimeError, match=r"shape \(2, 3\); pass grad=an array of that shape"):
        y.backward()
    y.backward(np.full((2, 3), 0.5))  # with an explicit dL/dy it works
    np.testing.assert_array_equal(x.grad, np.ones((2, 3)))


def test_backward_with_a_gradient_of_the_wrong_shape():
    y = Tensor(np.ones(3), requires_grad=True) * 2.0
    with pytest.raises(ValueError, match=r"grad of shape \(2,\) for a tensor of shape \(3,\)"):
        y.backward(np.ones(2))


def test_backward_on_a_constant_is_a_clear_error():
    with pytest.raises(RuntimeError, match="does not require grad"):
        (Tensor(np.ones(2)) * 2.0).sum().backward()


def test_requires_grad_on_an_integer_tensor_is_a_type_error():
    with pytest.raises(TypeError, match="only floating-point tensors can require gradients, got dtype int64"):
        Tensor(np.arange(3, dtype=np.int64), requires_grad=True)


# ------------------------------------------------------------------------------------------------
# no_grad, zero_grad, retain_grad, dtypes
# ------------------------------------------------------------------------------------------------
def test_no_grad_builds_no_graph():
    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    with no_grad():
        assert not is_grad_enabled()
        y = ops.exp(x * 2.0).sum()
    assert is_grad_enabled()  # restored on exit
    assert not y.requires_grad and y._parents == () and y._backward is None
    z = (x * 2.0).sum()  # outside the block the graph is recorded again
    assert z.requires_grad and z._parents


def test_no_grad_restores_the_previous_state_after_an_exception():
    with pytest.raises(KeyError):
        with no_grad():
            raise KeyError("boom")
    assert is_grad_enabled()


def test_zero_grad():
    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    (x * 3.0).sum().backward()
    x.zero_grad()
    assert x.grad is None
    (x * 5.0).sum().backward()  # starts from nothing, not from the old 3s
    np.testing.assert_array_equal(x.grad, [5.0, 5.0])


def test_retain_grad_keeps_an_intermediate_gradient():
    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    h = (x * 3.0).retain_grad()
    kept_nothing = x * 4.0
    (h * h + kept_nothing).sum().backward()
    np.testing.assert_array_equal(h.grad, 2 * h.data)  # d(h^2)/dh
    np.testing.assert_array_equal(x.grad, 2 * h.data * 3.0 + 4.0)
    assert kept_nothing.grad is None  # intermediates keep no gradient unless asked


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_gradient_dtype_follows_the_parameter_dtype(dtype):
    w = Tensor(np.array([1.0, 2.0], dtype=dtype), requires_grad=True)
    # A float64 Tensor constant promotes the product to float64; w's gradient is still w's dtype.
    y = w * Tensor(np.array([3.0, 4.0]))
    y.sum().backward()
    assert w.grad.dtype == dtype
    np.testing.assert_array_equal(w.grad, np.array([3.0, 4.0], dtype=dtype))


def test_float32_stays_float32_through_a_small_network():
    rng = np.random.default_rng(0)
    x = Tensor(rng.standard_normal((4, 3)).astype(np.float32))
    w = Tensor(rng.standard_normal((3, 2)).astype(np.float32), requires_grad=True)
    loss = ops.mean(ops.tanh(x @ w) ** 2 + 0.1)
    assert loss.dtype == np.float32
    loss.backward()
    assert w.grad.dtype == np.float32


# ------------------------------------------------------------------------------------------------
# unbroadcast
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "grad_shape, shape",
    [
        ((4, 3), (3,)),  # a prepended axis: summed away
        ((4, 3), (1, 3)),  # a stretched size-1 axis: summed, kept as size 1
        ((2, 3, 4), (3, 1)),  # both at once
        ((2, 3), ()),  # a scalar was broadcast to everything
        ((2, 1), (2, 1)),  # nothing to undo
    ],
)
def test_unbroadcast_sums_what_broadcasting_stretched(grad_shape, shape):
    g = np.arange(np.prod(grad_shape), dtype=np.float64).reshape(grad_shape)
    reduced = unbroadcast(g, shape)
    assert reduced.shape == shape
    # Reference: broadcasting a tensor of `shape` to grad_shape and back is the adjoint pair, so
    # <unbroadcast(g), v> == <g, broadcast(v)> for every v.
    v = np.random.default_rng(0).standard_normal(shape)
    np.testing.assert_allclose(np.sum(reduced * v), np.sum(g * np.broadcast_to(v, grad_shape)), rtol=1e-12)


def test_unbroadcast_by_hand_and_identity():
    g = np.array([[1.0, 2.0, 3.0], [10.0, 20.0, 30.0]])
    np.testing.assert_array_equal(unbroadcast(g, (3,)), [11.0, 22.0, 33.0])
    np.testing.assert_array_equal(unbroadcast(g, (2, 1)), [[6.0], [60.0]])
    assert unbroadcast(g, (2, 3)) is g  # same shape: no work, no copy


@pytest.mark.parametrize("grad_shape, shape", [((3,), (4,)), ((3,), (2, 3)), ((2, 3), (2, 2))])
def test_unbroadcast_rejects_shapes_that_were_not_broadcast(grad_shape, shape):
    with pytest.raises(ValueError, match="cannot be reduced to shape"):
        unbroadcast(np.ones(grad_shape), shape)


def test_the_engine_unbroadcasts_gradients_of_broadcast_operands():
    a = Tensor(np.ones((2, 3)), requires_grad=True)
    b = Tensor(np.array([1.0, 2.0, 3.0]), requires_grad=True)
    c = Tensor(np.array(2.0), requires_grad=True)
    ((a * b) * c).sum().backward()
    assert b.grad.shape == (3,) and c.grad.shape == ()
    np.testing.assert_array_equal(b.grad, [4.0, 4.0, 4.0])  # each b_j used twice, times c = 2
    assert c.grad == 12.0  # sum of a * b


# ------------------------------------------------------------------------------------------------
# The README example
# ------------------------------------------------------------------------------------------------
def test_readme_example_numbers_by_hand():
    """The README's example, with its printed numbers derived by hand rather than copied."""
    x = Tensor(np.array([1.0, 2.0, 3.0]), requires_grad=True)
    W = Tensor(np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), requires_grad=True)
    y = x @ W  # [1 + 3, 2 + 3] = [4, 5]
    loss = (y * y).sum()  # 4^2 + 5^2
    loss.backward()
    assert loss.item() == 41.0
    np.testing.assert_array_equal(x.grad, W.data @ (2 * y.data))  # dL/dx_i = sum_j W_ij 2 y_j
    np.testing.assert_array_equal(x.grad, [8.0, 10.0, 18.0])
    np.testing.assert_array_equal(W.grad, np.outer(x.data, 2 * y.data))  # dL/dW_ij = x_i 2 y_j


def _readme_section(title: str) -> str | None:
    text = README.read_text(encoding="utf-8")
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, flags=re.M | re.S)
    return match.group(1) if match else None


def test_readme_autograd_section_runs_as_shown():
    """Every `>>>` line in the README's autograd section runs and prints exactly what the README shows."""
    section = _readme_section("Autograd in a few lines")
    if section is None:
        pytest.skip("README.md has no 'Autograd in a few lines' section yet")
    code = "\n\n".join(re.findall(r"^```python\n(.*?)^```", section, flags=re.M | re.S))
    test = doctest.DocTestParser().get_doctest(code, {}, "README autograd section", str(README), 0)
    assert test.examples, "the README autograd section shows no >>> examples"
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    runner.run(test)
    assert runner.failures == 0, "the README autograd section prints something else than it shows (see above)"
