"""bench/fused: the fused ops the model does not use (packed_attention, mlp) and their kernels, kept with
their measurements (bench/throughput.py --variant fused, bench/kernels.py). Forward against plain NumPy
written independently (loops over heads) and against the primitive ops, backward by finite differences
(float64, both kernel backends), Numba kernels against their references, float32 in float32 out, errors.
"""

import math
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinymoe import Tensor, kernels, ops
from tinymoe.gradcheck import gradcheck
from tinymoe.testing import strategies as st_

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from fused import mlp as mlp_kernels  # noqa: E402
from fused.mlp import mlp  # noqa: E402
from fused.packed_attention import packed_attention  # noqa: E402

DTYPES = [np.float32, np.float64]
TOL = {np.float32: 2e-4, np.float64: 1e-10}


def array(data, shape, dtype):
    return data.draw(st_.arrays(shape, -2.0, 2.0)).astype(dtype)


def gelu(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def naive_packed_attention(qkv, heads):
    b, n, three_d = qkv.shape
    d = three_d // 3
    dh = d // heads
    out = np.zeros((b, n, d))
    for i in range(b):
        for h in range(heads):
            q, k, v = (qkv[i, :, s * d + h * dh : s * d + (h + 1) * dh] for s in range(3))
            scores = q @ k.T / math.sqrt(dh)
            p = np.exp(scores - scores.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            out[i, :, h * dh : (h + 1) * dh] = p @ v
    return out


# ----------------------------------------------------------------------------------------------------
# packed_attention
# ----------------------------------------------------------------------------------------------------
@st.composite
def packed_qkv(draw, max_batch=3, max_tokens=4, max_heads=3, max_head_dim=3):
    heads, head_dim = draw(st.integers(1, max_heads)), draw(st.integers(1, max_head_dim))
    shape = (draw(st.integers(1, max_batch)), draw(st.integers(1, max_tokens)), 3 * heads * head_dim)
    return draw(st_.maybe_noncontiguous(st_.arrays(shape))), heads


@pytest.mark.parametrize("backend_name", ["reference", "numba"])
@given(problem=packed_qkv())
def test_packed_attention_matches_per_head_loops(backend_name, problem):
    qkv, heads = problem
    copy = qkv.copy()
    with kernels.using(backend_name):
        out = packed_attention(qkv, heads)
    np.testing.assert_allclose(out.data, naive_packed_attention(qkv, heads), rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(qkv, copy)


@pytest.mark.parametrize("backend_name", ["reference", "numba"])
@given(problem=packed_qkv(max_batch=2, max_tokens=3, max_heads=2, max_head_dim=2))
def test_packed_attention_gradients(backend_name, problem):
    qkv, heads = problem
    with kernels.using(backend_name):
        gradcheck(lambda a: packed_attention(a, heads), [qkv])


def test_packed_attention_float32():
    rng = np.random.default_rng(0)
    qkv64 = rng.standard_normal((2, 5, 12))
    qkv = Tensor(qkv64.astype(np.float32), requires_grad=True)
    out = packed_attention(qkv, 2)
    out.sum().backward()
    assert out.dtype == np.float32 and qkv.grad.dtype == np.float32
    np.testing.assert_allclose(out.data, packed_attention(qkv64, 2).data, rtol=1e-5, atol=1e-5)


def test_packed_attention_errors():
    with pytest.raises(ValueError, match=r"qkv must be \(batch, tokens, 3 \* dim\), got shape \(2, 5, 7\)"):
        packed_attention(np.ones((2, 5, 7)), 1)
    with pytest.raises(ValueError, match="heads=4 must be a positive divisor of dim=6"):
        packed_attention(np.ones((2, 5, 18)), 4)


# ----------------------------------------------------------------------------------------------------
# mlp
# ----------------------------------------------------------------------------------------------------
@st.composite
def mlp_problems(draw, max_side=3):
    lead = draw(st_.shapes(min_dims=1, max_dims=2, max_side=max_side))
    dim, hidden, out_dim = (draw(st.integers(1, max_side)) for _ in range(3))
    shapes = [(*lead, dim), (dim, hidden), (hidden,), (hidden, out_dim), (out_dim,)]
    return [draw(st_.maybe_noncontiguous(st_.arrays(s))) for s in shapes]


@pytest.mark.parametrize("backend_name", ["reference", "numba"])
@given(arrays=mlp_problems())
def test_mlp_equals_the_three_ops_and_a_plain_formula(backend_name, arrays):
    x, w1, b1, w2, b2 = arrays
    copies = [a.copy() for a in arrays]
    with kernels.using(backend_name):
        fused = mlp(*arrays)
        composed = ops.linear(ops.gelu(ops.linear(x, w1, b1)), w2, b2)
    np.testing.assert_allclose(fused.data, gelu(x @ w1 + b1) @ w2 + b2, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(fused.data, composed.data, rtol=1e-12, atol=1e-13)
    for a, c in zip(arrays, copies):
        np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize("backend_name", ["reference", "numba"])
@given(arrays=mlp_problems())
def test_mlp_gradients(backend_name, arrays):
    with kernels.using(backend_name):
        gradcheck(mlp, arrays)


def test_mlp_float32_and_errors():
    rng = np.random.default_rng(0)
    arrays64 = [rng.standard_normal(s) for s in ((2, 5, 4), (4, 6), (6,), (6, 3), (3,))]
    params = [Tensor(a.astype(np.float32), requires_grad=True) for a in arrays64]
    out = mlp(*params)
    out.sum().backward()
    assert out.dtype == np.float32 and all(p.grad.dtype == np.float32 for p in params)
    np.testing.assert_allclose(out.data, mlp(*arrays64).data, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match=r"mlp: weights do not fit together"):
        mlp(arrays64[0], arrays64[1], np.ones(5), arrays64[3], arrays64[4])
    with pytest.raises(ValueError, match=r"mlp: x has shape \(2, 5, 3\)"):
        mlp(np.ones((2, 5, 3)), *arrays64[1:])


@pytest.mark.parametrize("dtype", DTYPES)
@given(data=st.data())
def test_mlp_numba_kernels_match_their_reference(dtype, data):
    lead = data.draw(st_.shapes(min_dims=1, max_dims=2, max_side=7))
    dim, hidden, out_dim = (data.draw(st.integers(1, 9)) for _ in range(3))
    x = array(data, (*lead, dim), dtype)
    w1, b1 = array(data, (dim, hidden), dtype), array(data, (hidden,), dtype)
    w2, b2 = array(data, (hidden, out_dim), dtype), array(data, (out_dim,), dtype)
    y, h = mlp_kernels.mlp_forward(x, w1, b1, w2, b2)
    for got, want in zip(mlp_kernels.mlp_forward_numba(x, w1, b1, w2, b2), (y, h)):
        np.testing.assert_allclose(got, want, rtol=TOL[dtype], atol=TOL[dtype])
    g = array(data, y.shape, dtype)
    for got, want in zip(mlp_kernels.mlp_backward_numba(g, x, w1, w2, h), mlp_kernels.mlp_backward(g, x, w1, w2, h)):
        np.testing.assert_allclose(got, want, rtol=TOL[dtype], atol=TOL[dtype])
