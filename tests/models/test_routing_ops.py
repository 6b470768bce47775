"""The routing building blocks: top-k, dispatch plans, capacity, and the two differentiable routing ops
(expert_linear and normal_cdf), each against a plain NumPy formula and finite differences."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinymoe import Tensor
from tinymoe.gradcheck import gradcheck
from tinymoe.models.moe import capacity_keep_mask, expert_capacity, plan_dispatch, top_k
from tinymoe.ops import expert_linear, normal_cdf
from tinymoe.testing import strategies as st_


@st.composite
def grouped_rows(draw, max_experts=4, max_rows=6):
    """x (M, [inner,] in), weight (E, in, out), bias (E, out) and group sizes (some experts empty)."""
    experts = draw(st.integers(1, max_experts))
    sizes = np.array(draw(st.lists(st.integers(0, 3), min_size=experts, max_size=experts)), dtype=np.int64)
    rows = int(sizes.sum())
    d_in, d_out = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    inner = draw(st.sampled_from([(), (2,)]))
    x_values = st_.arrays((rows,) + inner + (d_in,))
    # (maybe_noncontiguous asserts on empty arrays, whose strided views are still contiguous)
    x = draw(st_.maybe_noncontiguous(x_values) if rows else x_values)
    w = draw(st_.arrays((experts, d_in, d_out)))
    b = draw(st_.arrays((experts, d_out)))
    return x, w, b, sizes


def expert_linear_reference(x, w, b, sizes):
    owner = np.repeat(np.arange(len(sizes)), sizes)  # expert of each row
    out = np.stack([x[i] @ w[owner[i]] + b[owner[i]] for i in range(len(owner))]) if len(owner) else None
    return out


@given(grouped_rows())
def test_expert_linear_forward_and_gradient(case):
    x, w, b, sizes = case
    x0 = x.copy()
    out = expert_linear(Tensor(x), Tensor(w), Tensor(b), sizes)
    assert out.shape == x.shape[:-1] + (w.shape[2],)
    if x.shape[0]:
        np.testing.assert_allclose(out.data, expert_linear_reference(x, w, b, sizes), rtol=1e-12, atol=1e-12)
    gradcheck(lambda x, w, b: expert_linear(x, w, b, sizes), [x, w, b])
    gradcheck(lambda x, w: expert_linear(x, w, None, sizes), [x, w])
    np.testing.assert_array_equal(x, x0)


@given(grouped_rows())
def test_expert_linear_float32_matches_float64(case):
    x, w, b, sizes = case
    out64 = expert_linear(Tensor(x), Tensor(w), Tensor(b), sizes).data
    out32 = expert_linear(Tensor(x.astype(np.float32)), Tensor(w.astype(np.float32)), Tensor(b.astype(np.float32)), sizes)
    assert out32.dtype == np.float32
    np.testing.assert_allclose(out32.data, out64, rtol=1e-5, atol=1e-5)


def test_expert_linear_errors_name_the_shapes():
    x, w = Tensor(np.zeros((3, 4))), Tensor(np.zeros((2, 5, 6)))
    with pytest.raises(ValueError, match=r"x of shape \(3, 4\) does not fit weight of shape \(2, 5, 6\)"):
        expert_linear(x, w, None, [1, 2])
    with pytest.raises(ValueError, match="group_sizes sum to 2 but x has 3 rows"):
        expert_linear(x, Tensor(np.zeros((2, 4, 6))), None, np.array([1, 1]))
    with pytest.raises(TypeError, match="dtype"):
        expert_linear(x, Tensor(np.zeros((2, 4, 6), dtype=np.float32)), None, np.array([1, 2]))


@given(st_.arrays(st_.shapes(max_dims=2), low=-4, high=4))
def test_normal_cdf_forward_and_gradient(x):
    expected = np.vectorize(lambda v: 0.5 * math.erfc(-v / math.sqrt(2)))(x)
    np.testing.assert_allclose(normal_cdf(Tensor(x)).data, expected, rtol=1e-12, atol=1e-15)
    gradcheck(normal_cdf, [x])
    assert normal_cdf(Tensor(x.astype(np.float32))).dtype == np.float32


# ---------------------------------------------------------------------------------------------------
# discrete routing decisions
# ---------------------------------------------------------------------------------------------------
@given(st_.distinct_arrays(st.tuples(st.integers(1, 5), st.integers(1, 6))), st.data())
def test_top_k_returns_the_largest_first(scores, data):
    k = data.draw(st.integers(1, scores.shape[1]))
    idx = top_k(scores, k)
    chosen = np.take_along_axis(scores, idx, axis=1)
    assert np.all(np.diff(chosen, axis=1) < 0)  # best first
    kth = np.sort(scores, axis=1)[:, -k][:, None]
    assert np.all(chosen >= kth)  # nothing outside the top k


def test_top_k_breaks_ties_towards_the_lower_index():
    np.testing.assert_array_equal(top_k(np.array([[1.0, 3.0, 3.0, 0.0]]), 2), [[1, 2]])


@given(st.data())
def test_plan_dispatch_groups_rows_by_expert(data):
    rows, experts = data.draw(st.integers(1, 8)), data.draw(st.integers(1, 5))
    k = data.draw(st.integers(1, experts))
    chosen = np.stack([np.random.default_rng(r).permutation(experts)[:k] for r in range(rows)])
    keep = np.array(data.draw(st.lists(st.booleans(), min_size=rows * k, max_size=rows * k))).reshape(rows, k)
    plan = plan_dispatch(chosen, experts, keep)
    flat = chosen.reshape(-1)
    assert plan.group_sizes.sum() == keep.sum() == len(plan.source)
    # Sorted by expert, each listed pair is a kept (row, choice) pair and each appears once.
    np.testing.assert_array_equal(flat[plan.choice], np.repeat(np.arange(experts), plan.group_sizes))
    assert set(plan.choice.tolist()) == set(np.flatnonzero(keep.reshape(-1)).tolist())
    np.testing.assert_array_equal(plan.source, plan.choice // k)


def test_expert_capacity_rounds_up():
    assert expert_capacity(tokens_per_group=65, k=1, experts=10, capacity_factor=1.0) == 7
    assert expert_capacity(tokens_per_group=65, k=2, experts=10, capacity_factor=1.25) == 17
    assert expert_capacity(tokens_per_group=4, k=1, experts=10, capacity_factor=1.0) == 1
    assert expert_capacity(tokens_per_group=65, k=1, experts=10, capacity_factor=10 / 1) == 65  # E/k: no drops


def test_capacity_fills_first_choices_before_second_choices_in_token_order():
    # One image, 4 tokens, k=2, capacity 2. First choices: t0, t1, t2 -> expert 0, t3 -> expert 1.
    experts = np.array([[[0, 1], [0, 2], [0, 1], [1, 0]]])
    keep = capacity_keep_mask(experts, num_experts=3, capacity=2)
    # Expert 0 takes t0, t1 (first choices); t2's first choice and t3's second choice find it full.
    # Expert 1 takes t3 (first choice) then t0 (second choice); t2's second choice finds it full.
    np.testing.assert_array_equal(keep[0], [[True, True], [True, True], [False, False], [True, False]])


@given(st.data())
def test_capacity_is_never_exceeded_and_images_are_independent(data):
    batch, tokens, experts = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 9)), data.draw(st.integers(1, 4))
    k = data.draw(st.integers(1, experts))
    capacity = data.draw(st.integers(1, tokens))
    seed = data.draw(st.integers(0, 1000))
    rng = np.random.default_rng(seed)
    chosen = np.stack([[rng.permutation(experts)[:k] for _ in range(tokens)] for _ in range(batch)])
    keep = capacity_keep_mask(chosen, experts, capacity)
    for b in range(batch):
        for e in range(experts):
            on_e = chosen[b] == e
            assert keep[b][on_e].sum() == min(capacity, on_e.sum())  # filled up to capacity, never beyond
        np.testing.assert_array_equal(keep[b], capacity_keep_mask(chosen[b : b + 1], experts, capacity)[0])
