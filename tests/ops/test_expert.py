"""The fused expert op of the MoE block: expert_mlp (grouped expert MLPs). Forward against plain NumPy written
independently (loops over rows), backward by finite differences (float64, both kernel
backends), inputs not mutated, float32 in float32 out and close to float64, clear errors.
(tests/kernels/test_numba_kernels.py checks the expert kernels against their reference as well.)
"""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinymoe import Tensor, kernels, ops
from tinymoe.gradcheck import gradcheck
from tinymoe.ops.expert import expert_mlp
from tinymoe.testing import strategies as st_
from tinymoe.testing.kernel_cases import dispatch_plan


def gelu(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def naive_expert_mlp(x, gates, source, sizes, w1, b1, w2, b2):
    """Row by row: find each dispatched row's expert from the group sizes, run its MLP, add gate·output."""
    out = np.zeros_like(x)
    expert_of = np.repeat(np.arange(len(sizes)), sizes)
    for i, (row, e) in enumerate(zip(source, expert_of)):
        out[row] += gates[i] * (gelu(x[row] @ w1[e] + b1[e]) @ w2[e] + b2[e])
    return out


@st.composite
def expert_problems(draw, max_rows=5, max_experts=4, max_dim=4, max_hidden=5):
    rows, experts = draw(st.integers(1, max_rows)), draw(st.integers(1, max_experts))
    k = draw(st.integers(1, experts))
    dim, hidden = draw(st.integers(1, max_dim)), draw(st.integers(1, max_hidden))
    inner = draw(st.sampled_from([(), (2,)]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    source, _, sizes = dispatch_plan(rng, rows, experts, k, keep_fraction=draw(st.sampled_from([1.0, 0.6])))
    arrays = [
        draw(st_.maybe_noncontiguous(st_.arrays((rows, *inner, dim)))),
        rng.uniform(0.05, 1.0, len(source)),
        draw(st_.arrays((experts, dim, hidden))),
        draw(st_.arrays((experts, hidden))),
        draw(st_.arrays((experts, hidden, dim))),
        draw(st_.arrays((experts, dim))),
    ]
    return arrays, source, sizes


@pytest.mark.parametrize("backend_name", ["reference", "numba"])
@given(problem=expert_problems())
def test_expert_mlp_forward_matches_a_row_by_row_formula(backend_name, problem):
    (x, gates, w1, b1, w2, b2), source, sizes = problem
    copies = [a.copy() for a in (x, gates, w1, b1, w2, b2)]
    with kernels.using(backend_name):
        out = expert_mlp(x, gates, source, sizes, w1, b1, w2, b2)
    np.testing.assert_allclose(out.data, naive_expert_mlp(x, gates, source, sizes, w1, b1, w2, b2), rtol=1e-10, atol=1e-12)
    for a, c in zip((x, gates, w1, b1, w2, b2), copies):
        np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize("backend_name", ["reference", "numba"])
@given(problem=expert_problems(max_rows=4, max_experts=3, max_dim=3, max_hidden=3))
def test_expert_mlp_gradients(backend_name, problem):
    inputs, source, sizes = problem
    with kernels.using(backend_name):
        gradcheck(lambda x, g, w1, b1, w2, b2: expert_mlp(x, g, source, sizes, w1, b1, w2, b2), inputs)


@pytest.mark.parametrize("backend_name", ["reference", "numba"])
def test_expert_mlp_float32_stays_float32_and_agrees_with_float64(backend_name):
    rng = np.random.default_rng(0)
    source, _, sizes = dispatch_plan(rng, 6, 3, 2)
    arrays64 = [rng.standard_normal(s) for s in ((6, 4, 5), (3, 5, 7), (3, 7), (3, 7, 5), (3, 5))]
    gates64 = rng.random(len(source))
    with kernels.using(backend_name):
        x, w1, b1, w2, b2 = (Tensor(a.astype(np.float32), requires_grad=True) for a in arrays64)
        g = Tensor(gates64.astype(np.float32), requires_grad=True)
        out32 = expert_mlp(x, g, source, sizes, w1, b1, w2, b2)
        out32.sum().backward()
        out64 = expert_mlp(arrays64[0], gates64, source, sizes, *arrays64[1:])
    assert out32.dtype == np.float32 and all(t.grad.dtype == np.float32 for t in (x, g, w1, b1, w2, b2))
    np.testing.assert_allclose(out32.data, out64.data, rtol=1e-4, atol=1e-4)


def test_an_expert_without_rows_gets_zero_gradients_and_a_dropped_row_zero_output():
    rng = np.random.default_rng(1)
    x = Tensor(rng.standard_normal((3, 2, 4)), requires_grad=True)
    w1, b1 = Tensor(rng.standard_normal((2, 4, 5)), requires_grad=True), Tensor(rng.standard_normal((2, 5)), requires_grad=True)
    w2, b2 = Tensor(rng.standard_normal((2, 5, 4)), requires_grad=True), Tensor(rng.standard_normal((2, 4)), requires_grad=True)
    source, sizes = np.array([0, 2]), np.array([2, 0])  # row 1 dropped; expert 1 gets nothing
    for backend_name in ("reference", "numba"):
        with kernels.using(backend_name):
            for t in (x, w1, b1, w2, b2):
                t.grad = None
            out = expert_mlp(x, np.array([0.5, 0.25]), source, sizes, w1, b1, w2, b2)
            out.sum().backward()
        assert np.all(out.data[1] == 0) and np.all(x.grad[1] == 0)
        assert np.all(w1.grad[1] == 0) and np.all(b2.grad[1] == 0)


def test_expert_mlp_errors():
    x, w1, b1 = np.ones((2, 3)), np.ones((2, 3, 4)), np.ones((2, 4))
    w2, b2 = np.ones((2, 4, 3)), np.ones((2, 3))
    ok = dict(gates=np.ones(2), source=np.array([0, 1]), group_sizes=np.array([1, 1]))
    with pytest.raises(ValueError, match=r"expert_mlp: x of shape \(2, 5\)"):
        expert_mlp(np.ones((2, 5)), ok["gates"], ok["source"], ok["group_sizes"], w1, b1, w2, b2)
    with pytest.raises(ValueError, match="weights do not fit together"):
        expert_mlp(x, ok["gates"], ok["source"], ok["group_sizes"], w1, b1, np.ones((2, 5, 3)), b2)
    with pytest.raises(ValueError, match="group_sizes must be 2 non-negative integers summing to len"):
        expert_mlp(x, ok["gates"], ok["source"], np.array([2, 1]), w1, b1, w2, b2)
    with pytest.raises(ValueError, match=r"source indices must lie in \[0, 2\)"):
        expert_mlp(x, ok["gates"], np.array([0, 2]), ok["group_sizes"], w1, b1, w2, b2)
    with pytest.raises(ValueError, match=r"gates must have shape \(2,\)"):
        expert_mlp(x, np.ones(3), ok["source"], ok["group_sizes"], w1, b1, w2, b2)
    with pytest.raises(TypeError, match="expert_mlp"):
        expert_mlp(Tensor(x.astype(np.float32)), ok["gates"], ok["source"], ok["group_sizes"], Tensor(w1), b1, w2, b2)
