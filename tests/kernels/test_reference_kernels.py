"""The kernels as plain functions, without autograd: every forward against an independent NumPy formula
(loops or a different expression), every backward against central finite differences of its forward,
and dtypes preserved.

Each test runs on every implementation a kernel has: today the NumPy references; a Numba version
registered with `kernels.register(name, numba=...)` is picked up and held to the same checks.
"""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinymoe import kernels
from tinymoe.kernels import backend
from tinymoe.testing import strategies as st_


def implementations(*names):
    """pytest params: one per (kernel family, implementation); a family is its forward and backward."""
    params = []
    for impl in backend.BACKENDS:
        fns = [backend.get(n).implementation(impl) for n in names]
        if impl == "reference" or any(f is not backend.get(n).reference for f, n in zip(fns, names)):
            params.append(pytest.param(fns, id=impl))
    return params


def numeric_vjp(f, inputs, index, upstream, eps=1e-6):
    """d/d inputs[index] of sum(upstream * f(*inputs)), by central differences (float64)."""
    x = inputs[index]
    grad = np.zeros_like(x)
    for pos in np.ndindex(x.shape):
        saved = x[pos]
        x[pos] = saved + eps
        plus = np.sum(upstream * f(*inputs))
        x[pos] = saved - eps
        minus = np.sum(upstream * f(*inputs))
        x[pos] = saved
        grad[pos] = (plus - minus) / (2 * eps)
    return grad


def assert_grad_close(analytic, numeric):
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-7)


def rng_from(seed):
    return np.random.default_rng(seed)


seeds = st.integers(0, 2**32 - 1)


# --------------------------------------------------------------------------------------------------
# gelu
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fns", implementations("gelu_forward", "gelu_backward"))
@given(x=st_.maybe_noncontiguous(st_.arrays(st_.shapes(max_dims=2), low=-5, high=5)), seed=seeds)
def test_gelu(fns, x, seed):
    forward, backward_ = fns
    u = math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)
    np.testing.assert_allclose(forward(x), x / (1 + np.exp(-2 * u)), rtol=1e-12, atol=1e-14)  # = x sigmoid(2u)
    g = rng_from(seed).standard_normal(x.shape)
    assert_grad_close(backward_(x.copy(), g), numeric_vjp(forward, [x.copy()], 0, g))


# --------------------------------------------------------------------------------------------------
# linear
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fns", implementations("linear_forward", "linear_backward"))
@given(data=st.data())
def test_linear(fns, data):
    forward, backward_ = fns
    lead = data.draw(st_.shapes(max_dims=2, max_side=3))
    n_in, n_out = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 4))
    x = data.draw(st_.maybe_noncontiguous(st_.arrays(lead + (n_in,))))
    w = data.draw(st_.maybe_noncontiguous(st_.arrays((n_in, n_out))))
    b = data.draw(st_.arrays((n_out,)))
    expected = np.zeros(lead + (n_out,))
    for idx in np.ndindex(lead):  # y[..., o] = sum_i x[..., i] w[i, o] + b[o], written as loops
        for o in range(n_out):
            expected[idx + (o,)] = sum(x[idx + (i,)] * w[i, o] for i in range(n_in)) + b[o]
    np.testing.assert_allclose(forward(x, w, b), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(forward(x, w, None), expected - b, rtol=1e-12, atol=1e-12)

    g = rng_from(data.draw(seeds)).standard_normal(lead + (n_out,))
    dx, dw, db = backward_(g, x, w, has_bias=True)
    inputs = [x.copy(), w.copy(), b.copy()]
    for i, analytic in enumerate((dx, dw, db)):
        assert_grad_close(analytic, numeric_vjp(forward, inputs, i, g))
    dx_none, dw_only, db_none = backward_(g, x, w, has_bias=False, need_dx=False)
    assert dx_none is None and db_none is None
    np.testing.assert_allclose(dw_only, dw, rtol=1e-12)


# --------------------------------------------------------------------------------------------------
# layer norm
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fns", implementations("layer_norm_forward", "layer_norm_backward"))
@given(x=st_.maybe_noncontiguous(st_.distinct_arrays(st_.shapes(min_dims=1, max_dims=3))), seed=seeds)
def test_layer_norm(fns, x, seed):
    forward, backward_ = fns
    rng = rng_from(seed)
    dim, eps = x.shape[-1], 1e-5
    w, b = rng.standard_normal(dim), rng.standard_normal(dim)
    y, mean, rstd = forward(x, w, b, eps)
    np.testing.assert_allclose(mean[..., 0], np.mean(x, axis=-1), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(rstd[..., 0], 1 / np.sqrt(np.var(x, axis=-1) + eps), rtol=1e-10)
    for idx in np.ndindex(x.shape[:-1]):  # row by row from the definition
        row = [float(v) for v in x[idx]]
        mu = sum(row) / dim
        sd = math.sqrt(sum((v - mu) ** 2 for v in row) / dim + eps)
        expected = [(v - mu) / sd * w[j] + b[j] for j, v in enumerate(row)]
        np.testing.assert_allclose(y[idx], expected, rtol=1e-10, atol=1e-12)

    g = rng.standard_normal(x.shape)
    dx, dw, db = backward_(g, x, w, mean, rstd, has_bias=True)
    inputs = [x.copy(), w, b]
    y_only = lambda x_, w_, b_: forward(x_, w_, b_, eps)[0]  # noqa: E731
    for i, analytic in enumerate((dx, dw, db)):
        assert_grad_close(analytic, numeric_vjp(y_only, inputs, i, g))
    dx_plain, dw_none, db_none = backward_(g, x, None, *forward(x, None, None, eps)[1:], has_bias=False)
    assert dw_none is None and db_none is None
    assert_grad_close(dx_plain, numeric_vjp(lambda x_: forward(x_, None, None, eps)[0], [x.copy()], 0, g))


# --------------------------------------------------------------------------------------------------
# softmax, log-softmax
# --------------------------------------------------------------------------------------------------
@st.composite
def array_and_axis(draw):
    x = draw(st_.maybe_noncontiguous(st_.arrays(st_.shapes(min_dims=1, max_dims=3), low=-3, high=3)))
    return x, draw(st.integers(-x.ndim, x.ndim - 1))


@pytest.mark.parametrize("fns", implementations("softmax_forward", "softmax_backward"))
@given(x_axis=array_and_axis(), seed=seeds)
def test_softmax(fns, x_axis, seed):
    forward, backward_ = fns
    x, axis = x_axis
    p = forward(x, axis=axis)
    np.testing.assert_allclose(p, np.exp(x) / np.exp(x).sum(axis=axis, keepdims=True), rtol=1e-12)
    g = rng_from(seed).standard_normal(x.shape)
    assert_grad_close(backward_(p, g, axis=axis), numeric_vjp(lambda a: forward(a, axis=axis), [x.copy()], 0, g))


@pytest.mark.parametrize("fns", implementations("log_softmax_forward", "log_softmax_backward"))
@given(x_axis=array_and_axis(), seed=seeds)
def test_log_softmax(fns, x_axis, seed):
    forward, backward_ = fns
    x, axis = x_axis
    log_p = forward(x, axis=axis)
    np.testing.assert_allclose(log_p, x - np.log(np.exp(x).sum(axis=axis, keepdims=True)), rtol=1e-12, atol=1e-12)
    g = rng_from(seed).standard_normal(x.shape)
    assert_grad_close(backward_(log_p, g, axis=axis), numeric_vjp(lambda a: forward(a, axis=axis), [x.copy()], 0, g))


# --------------------------------------------------------------------------------------------------
# cross-entropy
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fns", implementations("cross_entropy_forward", "cross_entropy_backward"))
@given(data=st.data(), smoothing=st.sampled_from([0.0, 0.2, 1.0]), soft=st.booleans())
def test_cross_entropy(fns, data, smoothing, soft):
    forward, backward_ = fns
    batch, classes = data.draw(st.integers(1, 5)), data.draw(st.integers(1, 6))
    logits = data.draw(st_.maybe_noncontiguous(st_.arrays((batch, classes), low=-3, high=3)))
    if soft:
        target = data.draw(st_.soft_targets(batch, classes, normalized=data.draw(st.booleans())))
        q = (1 - smoothing) * target + smoothing / classes
    else:
        target = data.draw(st_.labels(classes, batch))
        q = (1 - smoothing) * np.eye(classes)[target] + smoothing / classes
    loss, log_probs = forward(logits, target, smoothing)
    for i in range(batch):  # loss_i = logsumexp(z_i) sum_c q_ic - sum_c q_ic z_ic
        lse = math.log(sum(math.exp(z) for z in logits[i]))
        assert loss[i] == pytest.approx(lse * q[i].sum() - np.dot(q[i], logits[i]), rel=1e-12, abs=1e-12)
    np.testing.assert_allclose(np.exp(log_probs).sum(axis=1), 1.0, rtol=1e-12)

    g = rng_from(data.draw(seeds)).standard_normal(batch)
    numeric = numeric_vjp(lambda z: forward(z, target, smoothing)[0], [logits.copy()], 0, g)
    assert_grad_close(backward_(log_probs, target, smoothing, g), numeric)


# --------------------------------------------------------------------------------------------------
# attention
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fns", implementations("attention_forward", "attention_backward"))
@given(data=st.data())
def test_attention(fns, data):
    forward, backward_ = fns
    q_shape, k_shape, v_shape = data.draw(st_.attention_shapes())
    q = data.draw(st_.maybe_noncontiguous(st_.arrays(q_shape)))
    k = data.draw(st_.maybe_noncontiguous(st_.arrays(k_shape)))
    v = data.draw(st_.maybe_noncontiguous(st_.arrays(v_shape)))
    scale = data.draw(st.sampled_from([1 / math.sqrt(q.shape[-1]), 0.7]))
    out, probs = forward(q, k, v, scale)
    for idx in np.ndindex(q.shape[:-1]):  # idx = (b, h, i): one query
        scores = [scale * float(np.dot(q[idx], k[idx[:-1] + (j,)])) for j in range(k.shape[-2])]
        top = max(scores)
        weights = [math.exp(s - top) for s in scores]
        weights = [w_ / sum(weights) for w_ in weights]
        np.testing.assert_allclose(probs[idx], weights, rtol=1e-12)
        expected = sum(wj * v[idx[:-1] + (j,)] for j, wj in enumerate(weights))
        np.testing.assert_allclose(out[idx], expected, rtol=1e-10, atol=1e-12)

    g = rng_from(data.draw(seeds)).standard_normal(out.shape)
    grads = backward_(g, q, k, v, probs, scale)
    inputs = [q.copy(), k.copy(), v.copy()]
    for i, analytic in enumerate(grads):
        assert_grad_close(analytic, numeric_vjp(lambda *a: forward(*a, scale)[0], inputs, i, g))


# --------------------------------------------------------------------------------------------------
# dtypes: float32 in, float32 out, for every array every kernel returns
# --------------------------------------------------------------------------------------------------
def _float32_calls(rng):
    """One float32 call per kernel (a new kernel adds its case here)."""
    f = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    x, w, b, g = f(2, 3, 4), f(4, 5), f(5), f(2, 3, 5)
    q, k, v = f(2, 2, 3, 4), f(2, 2, 5, 4), f(2, 2, 5, 3)
    logits, labels, soft = f(3, 4), np.array([0, 3, 1]), rng.random((3, 4)).astype(np.float32)
    _, mean, rstd = kernels.norm.layer_norm_forward(x, w[:, 0], b[:4], 1e-6)
    _, probs = kernels.attention.attention_forward(q, k, v, 0.5)
    log_probs = kernels.softmax.log_softmax_forward(logits)
    return {
        "gelu_forward": (x,),
        "gelu_backward": (x, x),
        "linear_forward": (x, w, b),
        "linear_backward": (g, x, w),
        "layer_norm_forward": (x, w[:, 0], b[:4], 1e-6),
        "layer_norm_backward": (x, x, w[:, 0], mean, rstd),
        "softmax_forward": (x, 1),
        "softmax_backward": (x, x, 1),
        "log_softmax_forward": (x, 0),
        "log_softmax_backward": (x, x, 0),
        "cross_entropy_forward": (logits, labels, 0.1),
        "cross_entropy_backward": (log_probs, soft, 0.1, logits[:, 0]),
        "attention_forward": (q, k, v, 0.5),
        "attention_backward": (f(2, 2, 3, 3), q, k, v, probs, 0.5),
    }


@pytest.mark.parametrize(
    "name, fn",
    [
        pytest.param(name, fn, id=f"{name}-{impl}")
        for name in sorted(_float32_calls(rng_from(0)))
        for impl, fn in (("reference", backend.get(name).reference), ("numba", backend.get(name).numba))
        if fn is not None
    ],
)
def test_kernels_keep_float32(name, fn):
    args = _float32_calls(rng_from(0))[name]
    result = fn(*args)
    outputs = result if isinstance(result, tuple) else (result,)
    for out in outputs:
        assert out.dtype == np.float32, f"{name} ({fn}) returned {out.dtype}"


def test_kernels_do_not_modify_their_inputs():
    for name, args in _float32_calls(rng_from(0)).items():
        kernel = backend.get(name)
        for fn in (kernel.reference, kernel.numba):
            if fn is None:
                continue
            copies = [np.array(a, copy=True) if isinstance(a, np.ndarray) else a for a in args]
            fn(*args)
            for a, c in zip(args, copies):
                if isinstance(a, np.ndarray):
                    np.testing.assert_array_equal(a, c, err_msg=f"{name} ({fn}) modified an input")
