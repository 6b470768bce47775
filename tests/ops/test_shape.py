"""Shape ops (reshape, transpose, getitem, take, scatter_add, concatenate, stack): forward equals NumPy,
backward equals finite differences (float64), and bad arguments give clear errors."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinymoe import Tensor, ops
from tinymoe.gradcheck import gradcheck
from tinymoe.testing import strategies as st_


def small_arrays(min_dims=0, max_dims=3):
    """Arrays of at most 4**3 = 64 entries, sometimes in a non-contiguous layout."""
    return st_.maybe_noncontiguous(st_.arrays(st_.shapes(min_dims=min_dims, max_dims=max_dims)))


def check(op, inputs, expected):
    """The shared property: forward equals `expected`, the gradient passes gradcheck, inputs untouched."""
    copies = [x.copy() for x in inputs]
    out = op(*[Tensor(x) for x in inputs])
    assert out.shape == np.shape(expected)
    np.testing.assert_array_equal(out.data, expected)  # pure data movement: exact
    gradcheck(op, inputs)
    for x, x0 in zip(inputs, copies):
        np.testing.assert_array_equal(x, x0)


def check_float32(op, inputs):
    """In float32 the op moves the same values (exactly), keeps float32, and so does its gradient."""
    tensors = [Tensor(x.astype(np.float32), requires_grad=True) for x in inputs]
    out32 = op(*tensors)
    assert out32.dtype == np.float32
    np.testing.assert_array_equal(out32.data, op(*[Tensor(x) for x in inputs]).data.astype(np.float32))
    out32.backward(np.ones(out32.shape, dtype=np.float32))
    assert all(t.grad.dtype == np.float32 and t.grad.shape == t.shape for t in tensors)


# ------------------------------------------------------------------------------------------------
# reshape, transpose
# ------------------------------------------------------------------------------------------------
@given(data=st.data())
def test_reshape(data):
    x = data.draw(small_arrays())
    target = data.draw(st_.reshape_targets(x.shape))
    op = lambda t: ops.reshape(t, target)  # noqa: E731
    check(op, [x], x.reshape(target))
    check_float32(op, [x])


def test_reshape_method_and_error():
    t = Tensor(np.arange(6.0))
    assert t.reshape(2, 3).shape == (2, 3) and t.reshape((3, -1)).shape == (3, 2)
    message = r"reshape: cannot reshape a tensor of shape \(6,\) \(6 entries\) into shape \(4,\)"
    with pytest.raises(ValueError, match=message):
        ops.reshape(t, (4,))


@given(data=st.data())
def test_transpose(data):
    x = data.draw(small_arrays())
    axes = data.draw(st.none() | st.permutations(range(x.ndim)).map(tuple))
    if axes is not None and data.draw(st.booleans()):
        axes = tuple(a - x.ndim for a in axes)  # the same permutation written with negative axes
    op = lambda t: ops.transpose(t, axes)  # noqa: E731
    check(op, [x], np.transpose(x, axes))
    check_float32(op, [x])


def test_transpose_methods_and_errors():
    x = np.arange(24.0).reshape(2, 3, 4)
    t = Tensor(x)
    assert t.T.shape == (4, 3, 2)
    assert t.transpose(1, 0, 2).shape == (3, 2, 4) and t.permute((2, 0, 1)).shape == (4, 2, 3)
    message = r"transpose: axes \(0, 0, 1\) are not a permutation of the axes of a tensor of shape \(2, 3, 4\)"
    with pytest.raises(ValueError, match=message):
        ops.transpose(t, (0, 0, 1))
    with pytest.raises(ValueError, match=r"transpose: axes \(1, 0\) do not list the 3 axes"):
        ops.transpose(t, (1, 0))


# ------------------------------------------------------------------------------------------------
# getitem
# ------------------------------------------------------------------------------------------------
@given(data=st.data())
def test_getitem(data):
    x = data.draw(small_arrays())
    index = data.draw(st_.getitem_indices(x.shape))
    op = lambda t: ops.getitem(t, index)  # noqa: E731
    check(op, [x], x[index])
    check_float32(op, [x])


def test_getitem_accumulates_repeated_indices():
    x = Tensor(np.array([10.0, 20.0, 30.0]), requires_grad=True)
    out = x[np.array([0, 2, 0, 0])]
    np.testing.assert_array_equal(out.data, [10.0, 30.0, 10.0, 10.0])
    out.backward(np.array([1.0, 2.0, 3.0, 4.0]))
    np.testing.assert_array_equal(x.grad, [1 + 3 + 4, 0, 2])  # position 0 was read three times


def test_getitem_with_a_mask_a_tensor_index_and_a_basic_index():
    x = Tensor(np.array([[1.0, -2.0], [-3.0, 4.0]]), requires_grad=True)
    x[x.data > 0].sum().backward()
    np.testing.assert_array_equal(x.grad, [[1, 0], [0, 1]])
    x.zero_grad()
    x[Tensor(np.array([1, 1])), 0].sum().backward()  # index arrays may come as Tensors
    np.testing.assert_array_equal(x.grad, [[0, 0], [2, 0]])
    x.zero_grad()
    x[:, ::-1][0].backward(np.array([5.0, 7.0]))
    np.testing.assert_array_equal(x.grad, [[7, 5], [0, 0]])


def test_getitem_out_of_bounds_names_the_op():
    message = r"getitem: index 5 is out of bounds for axis 0 with size 3 \(indexing a tensor of shape \(3,\)"
    with pytest.raises(IndexError, match=message):
        Tensor(np.ones(3))[5]
    with pytest.raises(IndexError, match=r"getitem: .*tensor of shape \(3, 2\)"):
        ops.getitem(Tensor(np.ones((3, 2))), (slice(None), np.array([0, 2])))


# ------------------------------------------------------------------------------------------------
# take and scatter_add
# ------------------------------------------------------------------------------------------------
@st.composite
def take_case(draw):
    x = draw(small_arrays(min_dims=1))
    axis = draw(st.integers(-x.ndim, x.ndim - 1))
    index_shape = st_.shapes(min_dims=0, max_dims=2, max_side=3)
    indices = draw(st_.index_arrays(x.shape[axis], index_shape))
    return x, indices, axis


@given(take_case())
def test_take(case):
    x, indices, axis = case
    indices0 = indices.copy()
    op = lambda t: ops.take(t, indices, axis=axis)  # noqa: E731
    check(op, [x], np.take(x, indices, axis=axis))
    check_float32(op, [x])
    np.testing.assert_array_equal(indices, indices0)


def scatter_add_reference(src, indices, size, axis):
    """out[..., indices[j], ...] += src[..., j, ...], one index position j at a time (a plain loop)."""
    out_shape = src.shape[:axis] + (size,) + src.shape[axis + indices.ndim :]
    out = np.zeros(out_shape)
    pre = (slice(None),) * axis
    for j in np.ndindex(indices.shape):
        out[pre + (indices[j],)] += src[pre + j]
    return out


@st.composite
def scatter_case(draw):
    out_shape = draw(st_.shapes(min_dims=1, max_dims=3))
    axis = draw(st.integers(0, len(out_shape) - 1))
    size = out_shape[axis]
    indices = draw(st_.index_arrays(size, st_.shapes(min_dims=0, max_dims=2, max_side=3)))
    src_shape = out_shape[:axis] + indices.shape + out_shape[axis + 1 :]
    src = draw(st_.maybe_noncontiguous(st_.arrays(src_shape)))
    negative_axis = draw(st.booleans())
    return src, indices, size, axis - len(out_shape) if negative_axis else axis, axis


@given(scatter_case())
def test_scatter_add(case):
    src, indices, size, axis, positive_axis = case
    op = lambda t: ops.scatter_add(t, indices, size, axis=axis)  # noqa: E731
    expected = scatter_add_reference(src, indices, size, positive_axis)
    copies = src.copy()
    out = op(Tensor(src))
    assert out.shape == expected.shape
    np.testing.assert_allclose(out.data, expected, rtol=1e-12, atol=1e-14)  # sums: order may differ
    gradcheck(op, [src])
    np.testing.assert_array_equal(src, copies)
    out32 = op(Tensor(src.astype(np.float32)))
    assert out32.dtype == np.float32
    np.testing.assert_allclose(out32.data, expected, rtol=1e-5, atol=1e-5)


@given(scatter_case(), st.integers(0, 2**32 - 1))
def test_scatter_add_is_the_adjoint_of_take(case, seed):
    """<take(x, idx), y> == <x, scatter_add(y, idx)> for all x, y: the defining property of an adjoint."""
    y, indices, size, axis, _ = case
    x = np.random.default_rng(seed).standard_normal(ops.scatter_add(Tensor(y), indices, size, axis).shape)
    lhs = np.sum(ops.take(Tensor(x), indices, axis=axis).data * y)
    rhs = np.sum(x * ops.scatter_add(Tensor(y), indices, size, axis=axis).data)
    np.testing.assert_allclose(lhs, rhs, rtol=1e-10, atol=1e-12)


def test_take_and_scatter_add_by_hand():
    # Three tokens routed to two experts; token 0 goes to both: the MoE dispatch / combine pattern.
    tokens = Tensor(np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]), requires_grad=True)
    token_of_slot = np.array([0, 2, 0, 1])  # slots hold tokens 0, 2 (expert 0) and 0, 1 (expert 1)
    dispatched = ops.take(tokens, token_of_slot)  # (4, 2)
    np.testing.assert_array_equal(dispatched.data, [[1, 2], [5, 6], [1, 2], [3, 4]])
    combined = ops.scatter_add(dispatched * 10.0, token_of_slot, size=3)  # back to (3, 2), summed per token
    np.testing.assert_array_equal(combined.data, [[20, 40], [30, 40], [50, 60]])
    combined.backward(np.ones((3, 2)))
    np.testing.assert_array_equal(tokens.grad, [[20, 20], [10, 10], [10, 10]])  # token 0 was used twice


@pytest.mark.parametrize("bad", [3, -1])
def test_take_index_out_of_range(bad):
    message = rf"take: index {bad} is out of range for axis 1 of size 3; valid indices are 0..2"
    with pytest.raises(IndexError, match=message):
        ops.take(Tensor(np.ones((2, 3))), np.array([0, bad]), axis=1)


def test_take_and_scatter_add_argument_errors():
    x = Tensor(np.ones((2, 3)))
    with pytest.raises(TypeError, match="take: indices must be integers, got dtype float64"):
        ops.take(x, np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="take: axis 2 is out of range"):
        ops.take(x, np.array([0]), axis=2)
    message = r"scatter_add: index 4 is out of range for axis 0 of size 4; valid indices are 0..3"
    with pytest.raises(IndexError, match=message):
        ops.scatter_add(x, np.array([1, 4]), size=4)
    message = r"scatter_add: src of shape \(2, 3\) does not match indices of shape \(3,\) at axis 0"
    with pytest.raises(ValueError, match=message):
        ops.scatter_add(x, np.array([0, 1, 1]), size=4)
    with pytest.raises(ValueError, match="scatter_add: size must be >= 0"):
        ops.scatter_add(x, np.array([0, 1]), size=-1)


# ------------------------------------------------------------------------------------------------
# concatenate, stack
# ------------------------------------------------------------------------------------------------
@st.composite
def concatenate_case(draw):
    shape = draw(st_.shapes(min_dims=1, max_dims=3))
    axis = draw(st.integers(-len(shape), len(shape) - 1))
    count = draw(st.integers(1, 3))
    arrays = []
    for _ in range(count):
        piece = list(shape)
        piece[axis] = draw(st.integers(1, 3))  # only the joined axis may differ
        arrays.append(draw(st_.maybe_noncontiguous(st_.arrays(tuple(piece)))))
    return arrays, axis


@given(concatenate_case())
def test_concatenate(case):
    arrays, axis = case
    op = lambda *ts: ops.concatenate(ts, axis=axis)  # noqa: E731
    check(op, arrays, np.concatenate(arrays, axis=axis))
    check_float32(op, arrays)


@st.composite
def stack_case(draw):
    shape = draw(st_.shapes(max_dims=2))
    arrays = [draw(st_.maybe_noncontiguous(st_.arrays(shape))) for _ in range(draw(st.integers(1, 3)))]
    return arrays, draw(st.integers(-len(shape) - 1, len(shape)))


@given(stack_case())
def test_stack(case):
    arrays, axis = case
    op = lambda *ts: ops.stack(ts, axis=axis)  # noqa: E731
    check(op, arrays, np.stack(arrays, axis=axis))
    check_float32(op, arrays)


def test_concatenate_and_stack_errors_name_the_shapes():
    a, b = Tensor(np.ones((2, 3))), Tensor(np.ones((2, 2)))
    message = r"concatenate: shapes must match except along axis 0, got \(2, 3\), \(2, 2\)"
    with pytest.raises(ValueError, match=message):
        ops.concatenate([a, b], axis=0)
    np.testing.assert_array_equal(ops.concatenate([a, b], axis=1).shape, (2, 5))
    message = r"concatenate: all tensors need the same number of axes.*\(2, 3\), \(3,\)"
    with pytest.raises(ValueError, match=message):
        ops.concatenate([a, np.ones(3)])
    with pytest.raises(ValueError, match=r"stack: all tensors must have the same shape, got \(2, 3\), \(2, 2\)"):
        ops.stack([a, b])
    with pytest.raises(ValueError, match="concatenate: needs at least one tensor"):
        ops.concatenate([])
