"""Fused ops (linear, gelu, softmax, log_softmax, cross_entropy, layer_norm, attention): forward equals a
plain NumPy formula written independently of the kernels, backward equals finite differences
(float64), inputs are not mutated, float32 stays float32 and agrees with float64, bad input says what
is wrong.

Run the suite with TINYMOE_KERNELS=numba to check the same properties on the Numba kernels.
"""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinymoe import Tensor, kernels, ops
from tinymoe.gradcheck import GradcheckError, gradcheck
from tinymoe.testing import strategies as st_


def assert_unchanged(arrays, copies):
    for a, c in zip(arrays, copies):
        np.testing.assert_array_equal(a, c)


# --------------------------------------------------------------------------------------------------
# Independent NumPy formulas (loops and textbook expressions, not the kernels' code)
# --------------------------------------------------------------------------------------------------
def naive_linear(x, w, b):
    out = np.einsum("...i,io->...o", x, w)
    return out if b is None else out + b


def naive_gelu(x):
    # 0.5 (1 + tanh(u)) = sigmoid(2u): the same function through another formula.
    u = math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)
    return x / (1 + np.exp(-2 * u))


def naive_softmax(x, axis):
    e = np.exp(x)  # no max subtraction: fine for the moderate values drawn here
    return e / e.sum(axis=axis, keepdims=True)


def naive_cross_entropy_rows(logits, target, smoothing):
    """Row by row, from the definition -sum_c q_c log softmax(z)_c."""
    batch, classes = logits.shape
    losses = []
    for i in range(batch):
        z = [float(v) for v in logits[i]]
        lse = math.log(sum(math.exp(v) for v in z))
        if np.ndim(target) == 1:
            t = [1.0 if c == target[i] else 0.0 for c in range(classes)]
        else:
            t = [float(v) for v in target[i]]
        q = [(1 - smoothing) * tc + smoothing / classes for tc in t]
        losses.append(-sum(qc * (zc - lse) for qc, zc in zip(q, z)))
    return np.array(losses)


def naive_layer_norm(x, w, b, eps):
    y = (x - x.mean(axis=-1, keepdims=True)) / np.sqrt(x.var(axis=-1, keepdims=True) + eps)
    if w is not None:
        y = y * w
    return y if b is None else y + b


def naive_attention(q, k, v):
    """Loops over batch, head and query; softmax written out."""
    out = np.zeros(q.shape[:-1] + (v.shape[-1],))
    scale = 1 / math.sqrt(q.shape[-1])
    for idx in np.ndindex(q.shape[:-2]):
        for i in range(q.shape[-2]):
            scores = np.array([np.dot(q[idx][i], k[idx][j]) * scale for j in range(k.shape[-2])])
            weights = np.exp(scores) / np.exp(scores).sum()
            out[idx][i] = sum(weights[j] * v[idx][j] for j in range(k.shape[-2]))
    return out


# --------------------------------------------------------------------------------------------------
# linear
# --------------------------------------------------------------------------------------------------
@st.composite
def linear_inputs(draw):
    lead = draw(st_.shapes(min_dims=0, max_dims=2, max_side=3))
    n_in, n_out = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    x = draw(st_.maybe_noncontiguous(st_.arrays(lead + (n_in,))))
    w = draw(st_.maybe_noncontiguous(st_.arrays((n_in, n_out))))
    b = draw(st.one_of(st.none(), st_.arrays((n_out,))))
    return x, w, b


@given(linear_inputs())
def test_linear_forward_and_gradient(inputs):
    x, w, b = inputs
    copies = [a.copy() for a in inputs if a is not None]
    np.testing.assert_allclose(ops.linear(Tensor(x), Tensor(w), None if b is None else Tensor(b)).data,
                               naive_linear(x, w, b), rtol=1e-12, atol=1e-12)
    if b is None:
        gradcheck(lambda x_, w_: ops.linear(x_, w_), [x, w])
    else:
        gradcheck(ops.linear, [x, w, b])
    assert_unchanged([a for a in inputs if a is not None], copies)


def test_linear_skips_gradients_nobody_needs():
    x = Tensor(np.ones((2, 3)))  # an input, not a parameter: no gradient wanted
    w = Tensor(np.ones((3, 2)), requires_grad=True)
    ops.linear(x, w, np.zeros(2)).sum().backward()
    assert x.grad is None
    np.testing.assert_array_equal(w.grad, np.full((3, 2), 2.0))  # each weight sees both rows of ones


# --------------------------------------------------------------------------------------------------
# gelu
# --------------------------------------------------------------------------------------------------
@given(st_.maybe_noncontiguous(st_.arrays(st_.shapes(), low=-4, high=4)))
def test_gelu_forward_and_gradient(x):
    x0 = x.copy()
    np.testing.assert_allclose(ops.gelu(Tensor(x)).data, naive_gelu(x), rtol=1e-12, atol=1e-14)
    gradcheck(ops.gelu, [x])
    np.testing.assert_array_equal(x, x0)


def test_gelu_is_close_to_the_exact_erf_gelu():
    """The tanh form approximates x * Phi(x) to within 5e-4 (a property of the approximation)."""
    x = np.linspace(-6, 6, 241)
    exact = np.array([v * 0.5 * (1 + math.erf(v / math.sqrt(2))) for v in x])
    approx = ops.gelu(Tensor(x)).data
    assert np.max(np.abs(approx - exact)) < 5e-4
    assert np.max(np.abs(approx - exact)) > 1e-5  # and it is an approximation, not erf itself


# --------------------------------------------------------------------------------------------------
# softmax and log_softmax
# --------------------------------------------------------------------------------------------------
@st.composite
def array_and_axis(draw):
    x = draw(st_.maybe_noncontiguous(st_.arrays(st_.shapes(min_dims=1, max_dims=3), low=-3, high=3)))
    axis = draw(st.integers(-x.ndim, x.ndim - 1))
    return x, axis


@given(array_and_axis())
def test_softmax_forward_and_gradient(x_axis):
    x, axis = x_axis
    x0 = x.copy()
    np.testing.assert_allclose(ops.softmax(Tensor(x), axis=axis).data, naive_softmax(x, axis), rtol=1e-12)
    gradcheck(lambda t: ops.softmax(t, axis=axis), [x])
    np.testing.assert_array_equal(x, x0)


@given(array_and_axis())
def test_log_softmax_forward_and_gradient(x_axis):
    x, axis = x_axis
    np.testing.assert_allclose(
        ops.log_softmax(Tensor(x), axis=axis).data, np.log(naive_softmax(x, axis)), rtol=1e-12, atol=1e-12
    )
    gradcheck(lambda t: ops.log_softmax(t, axis=axis), [x])


def test_softmax_and_log_softmax_survive_huge_logits():
    """Without subtracting the max, exp(1000) overflows to inf and the result is NaN."""
    x = np.array([[1000.0, 999.0, -1000.0]], dtype=np.float32)
    shifted = x - 1000.0  # softmax is shift-invariant: the same answer from small numbers
    np.testing.assert_allclose(ops.softmax(Tensor(x)).data, naive_softmax(shifted, -1), rtol=1e-6)
    log_p = ops.log_softmax(Tensor(x)).data
    assert np.all(np.isfinite(log_p))  # log p of the tiny entry is about -2000, not log(0) = -inf
    np.testing.assert_allclose(log_p[0, 2], -2000.0 - math.log1p(math.exp(-1.0)), rtol=1e-6)


# --------------------------------------------------------------------------------------------------
# cross_entropy
# --------------------------------------------------------------------------------------------------
smoothings = st.sampled_from([0.0, 0.1, 0.35, 1.0])
reductions = st.sampled_from(["mean", "sum", "none"])


@st.composite
def logits_and_labels(draw):
    batch, classes = draw(st.integers(1, 5)), draw(st.integers(1, 6))
    logits = draw(st_.maybe_noncontiguous(st_.arrays((batch, classes), low=-3, high=3)))
    return logits, draw(st_.labels(classes, batch))


def reduce(losses, reduction):
    return {"mean": np.mean, "sum": np.sum, "none": lambda a: a}[reduction](losses)


@given(logits_and_labels(), smoothings, reductions)
def test_cross_entropy_with_int_labels(logits_labels, smoothing, reduction):
    logits, labels = logits_labels
    copies = [logits.copy(), labels.copy()]
    out = ops.cross_entropy(Tensor(logits), labels, label_smoothing=smoothing, reduction=reduction)
    expected = reduce(naive_cross_entropy_rows(logits, labels, smoothing), reduction)
    assert out.shape == np.shape(expected)
    np.testing.assert_allclose(out.data, expected, rtol=1e-12, atol=1e-12)
    gradcheck(lambda z: ops.cross_entropy(z, labels, label_smoothing=smoothing, reduction=reduction), [logits])
    assert_unchanged([logits, labels], copies)


@given(st.data(), smoothings, reductions, st.booleans())
def test_cross_entropy_with_soft_targets(data, smoothing, reduction, normalized):
    batch, classes = data.draw(st.integers(1, 5)), data.draw(st.integers(1, 6))
    logits = data.draw(st_.arrays((batch, classes), low=-3, high=3))
    target = data.draw(st_.soft_targets(batch, classes, normalized=normalized))
    out = ops.cross_entropy(Tensor(logits), target, label_smoothing=smoothing, reduction=reduction)
    expected = reduce(naive_cross_entropy_rows(logits, target, smoothing), reduction)
    np.testing.assert_allclose(out.data, expected, rtol=1e-12, atol=1e-12)
    gradcheck(lambda z: ops.cross_entropy(z, target, label_smoothing=smoothing, reduction=reduction), [logits])


@given(logits_and_labels())
def test_one_hot_soft_targets_equal_int_labels(logits_labels):
    logits, labels = logits_labels
    one_hot = np.eye(logits.shape[1])[labels]
    np.testing.assert_allclose(ops.cross_entropy(Tensor(logits), one_hot, label_smoothing=0.1).data,
                               ops.cross_entropy(Tensor(logits), labels, label_smoothing=0.1).data, rtol=1e-12)


def test_cross_entropy_of_a_known_case():
    """Two classes, logits (0, log 3): p = (1/4, 3/4), so the loss of label 1 is -log(3/4)."""
    out = ops.cross_entropy(Tensor(np.array([[0.0, math.log(3.0)]])), np.array([1]))
    assert out.shape == ()
    assert out.item() == pytest.approx(-math.log(0.75), rel=1e-12)


# --------------------------------------------------------------------------------------------------
# layer_norm
# --------------------------------------------------------------------------------------------------
@st.composite
def layer_norm_inputs(draw):
    # Distinct values: every row has a spread, so 1/std stays moderate and finite differences accurate.
    x = draw(st_.maybe_noncontiguous(st_.distinct_arrays(st_.shapes(min_dims=1, max_dims=3, max_side=4))))
    dim = x.shape[-1]
    w = draw(st.one_of(st.none(), st_.arrays((dim,))))
    b = draw(st.one_of(st.none(), st_.arrays((dim,))))
    return x, w, b


@given(layer_norm_inputs(), st.sampled_from([1e-6, 1e-5, 0.1]))
def test_layer_norm_forward_and_gradient(inputs, eps):
    x, w, b = inputs
    copies = [a.copy() for a in inputs if a is not None]
    as_t = lambda a: None if a is None else Tensor(a)  # noqa: E731
    np.testing.assert_allclose(ops.layer_norm(Tensor(x), as_t(w), as_t(b), eps=eps).data,
                               naive_layer_norm(x, w, b, eps), rtol=1e-10, atol=1e-10)
    present = [a for a in (x, w, b) if a is not None]

    def fn(*tensors):
        it = iter(tensors)
        return ops.layer_norm(next(it), next(it) if w is not None else None, next(it) if b is not None else None,
                              eps=eps)

    gradcheck(fn, present)
    assert_unchanged(present, copies)


def test_layer_norm_float32_is_accurate_for_rows_with_a_large_mean():
    """The two-pass variance: float32 rows with mean 1000 and std 1 normalise as well as in float64
    (the one-pass E[x^2] - E[x]^2 loses about three digits here)."""
    rng = np.random.default_rng(0)
    x = (1000.0 + rng.standard_normal((8, 64))).astype(np.float32)
    y32 = ops.layer_norm(Tensor(x)).data
    y64 = naive_layer_norm(x.astype(np.float64), None, None, 1e-6)
    assert y32.dtype == np.float32
    np.testing.assert_allclose(y32, y64, atol=2e-3)


# --------------------------------------------------------------------------------------------------
# attention
# --------------------------------------------------------------------------------------------------
@given(st.data())
def test_attention_forward_and_gradient(data):
    q_shape, k_shape, v_shape = data.draw(st_.attention_shapes())
    q = data.draw(st_.maybe_noncontiguous(st_.arrays(q_shape)))
    k = data.draw(st_.maybe_noncontiguous(st_.arrays(k_shape)))
    v = data.draw(st_.arrays(v_shape))
    copies = [q.copy(), k.copy(), v.copy()]
    np.testing.assert_allclose(ops.attention(Tensor(q), Tensor(k), Tensor(v)).data, naive_attention(q, k, v),
                               rtol=1e-10, atol=1e-12)
    gradcheck(ops.attention, [q, k, v])
    assert_unchanged([q, k, v], copies)


def test_attention_with_an_explicit_scale_matches_softmax_of_scores():
    rng = np.random.default_rng(1)
    q, k, v = rng.standard_normal((3, 1, 2, 3, 5))
    out = ops.attention(Tensor(q), Tensor(k), Tensor(v), scale=0.5).data
    scores = np.einsum("bhid,bhjd->bhij", q, k) * 0.5
    np.testing.assert_allclose(out, naive_softmax(scores, -1) @ v, rtol=1e-12)


# --------------------------------------------------------------------------------------------------
# float32: stays float32 (values and gradients) and agrees with float64
# --------------------------------------------------------------------------------------------------
def _fused_cases(rng):
    x = rng.standard_normal((3, 4, 5))
    w, b = rng.standard_normal((5, 6)), rng.standard_normal(6)
    q, k, v = rng.standard_normal((3, 2, 2, 4, 3))
    labels = np.array([0, 3, 1])
    soft = rng.random((3, 5))
    return {
        "linear": (ops.linear, [x, w, b]),
        "gelu": (ops.gelu, [x]),
        "softmax": (lambda t: ops.softmax(t, axis=1), [x]),
        "log_softmax": (ops.log_softmax, [x]),
        "cross_entropy_labels": (lambda z: ops.cross_entropy(z, labels, label_smoothing=0.1), [x[0, :3]]),
        "cross_entropy_soft": (lambda z: ops.cross_entropy(z, soft.astype(z.dtype), reduction="sum"), [x[:, 0]]),
        "layer_norm": (ops.layer_norm, [x, w[:, 0], b[:5]]),
        "attention": (ops.attention, [q, k, v]),
    }


@pytest.mark.parametrize("name", sorted(_fused_cases(np.random.default_rng(0))))
def test_float32_forward_and_backward_match_float64(name):
    fn, inputs = _fused_cases(np.random.default_rng(0))[name]
    results = {}
    for dtype in (np.float64, np.float32):
        tensors = [Tensor(a.astype(dtype), requires_grad=True) for a in inputs]
        out = fn(*tensors)
        out.backward(np.ones(out.shape, dtype=dtype))
        assert out.dtype == dtype, f"{name} changed the dtype to {out.dtype}"
        for t in tensors:
            assert t.grad.dtype == dtype
        results[dtype] = (out.data, [t.grad for t in tensors])
    np.testing.assert_allclose(results[np.float32][0], results[np.float64][0], rtol=1e-5, atol=1e-5)
    for g32, g64 in zip(results[np.float32][1], results[np.float64][1]):
        np.testing.assert_allclose(g32, g64, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------------------------------
# The gradient checks can fail: a wrong backward kernel is caught through the op
# --------------------------------------------------------------------------------------------------
def test_a_wrong_backward_kernel_is_caught(monkeypatch):
    def wrong_gelu_backward(x, grad_out):  # forgot the derivative of tanh: 0.5 (1 + t) only
        return grad_out * 0.5 * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))

    monkeypatch.setattr(kernels.gelu_backward, "reference", wrong_gelu_backward)
    with kernels.using("reference"):
        with pytest.raises(GradcheckError, match="FAIL input 0"):
            gradcheck(ops.gelu, [np.array([0.3, -1.2, 0.7])])


# --------------------------------------------------------------------------------------------------
# Bad input: clear errors naming the op, the shapes, and what to do
# --------------------------------------------------------------------------------------------------
def test_linear_errors():
    x, w = Tensor(np.ones((2, 5))), Tensor(np.ones((4, 3)))
    with pytest.raises(ValueError, match=r"linear: x has shape \(2, 5\) and weight has shape \(4, 3\)"):
        ops.linear(x, w)
    with pytest.raises(ValueError, match=r"linear: weight must be 2-D.*got shape \(4,\)"):
        ops.linear(x, Tensor(np.ones(4)))
    with pytest.raises(ValueError, match=r"linear: bias must have shape.*\(3,\).*got \(4,\)"):
        ops.linear(Tensor(np.ones((2, 4))), w, Tensor(np.ones(4)))
    with pytest.raises(TypeError, match="linear: weight has dtype float32 but x has dtype float64"):
        ops.linear(Tensor(np.ones((2, 4))), Tensor(np.ones((4, 3), dtype=np.float32)))
    with pytest.raises(TypeError, match="linear: x has dtype int64"):
        ops.linear(Tensor(np.ones((2, 4), dtype=np.int64)), w)


def test_softmax_layer_norm_and_attention_errors():
    with pytest.raises(ValueError, match=r"softmax: axis 2 is out of range for a tensor of shape \(2, 3\)"):
        ops.softmax(Tensor(np.ones((2, 3))), axis=2)
    with pytest.raises(TypeError, match="log_softmax: axis must be a single int"):
        ops.log_softmax(Tensor(np.ones((2, 3))), axis=(0, 1))
    with pytest.raises(ValueError, match=r"layer_norm: weight must have shape \(3,\).*got \(4,\)"):
        ops.layer_norm(Tensor(np.ones((2, 3))), Tensor(np.ones(4)), None)
    q = Tensor(np.ones((1, 2, 3, 4)))
    with pytest.raises(ValueError, match=r"attention: q and k must have the same width.*k \(1, 2, 3, 5\)"):
        ops.attention(q, Tensor(np.ones((1, 2, 3, 5))), Tensor(np.ones((1, 2, 3, 4))))
    with pytest.raises(ValueError, match="attention: k and v must have the same number of tokens"):
        ops.attention(q, q, Tensor(np.ones((1, 2, 2, 4))))
    with pytest.raises(ValueError, match="attention: q, k and v must have equal leading"):
        ops.attention(q, Tensor(np.ones((1, 1, 3, 4))), Tensor(np.ones((1, 1, 3, 4))))


ONES, LABELS = np.ones((2, 3)), np.array([0, 1])
WITH_NAN = np.array([[0.0, np.nan, 1.0], [0, 0, 0]])
WITH_INF = np.array([[0.0, np.inf, 1.0], [0, 0, 0]])


@pytest.mark.parametrize(
    "logits, target, kwargs, error, message",
    [
        (np.ones((2, 3)), np.array([0, 3]), {}, ValueError, r"labels must be in \[0, 3\).*got 3 at position 1"),
        (np.ones((2, 3)), np.array([-1, 0]), {}, ValueError, r"labels must be in \[0, 3\).*got -1 at position 0"),
        (np.ones((2, 3)), np.array([[0], [1]]), {}, ValueError, r"labels must have shape \(batch,\) = \(2,\)"),
        (np.ones((2, 3)), np.array([0.0, 1.0]), {}, ValueError, r"labels.astype\(np.int64\)"),
        (np.ones((2, 3)), np.array([True, False]), {}, TypeError, "target must be integer class labels"),
        (np.ones((2, 3)), -np.ones((2, 3)), {}, ValueError, "target probabilities must be >= 0"),
        (np.ones((2, 3, 4)), np.array([0, 1]), {}, ValueError, r"logits must have shape \(batch, classes\)"),
        (np.ones((2, 3), dtype=np.int64), np.array([0, 1]), {}, TypeError, "logits has dtype int64"),
        (WITH_NAN, LABELS, {}, ValueError, r"logits contain NaN \(1 values\)"),
        (WITH_INF, LABELS, {}, ValueError, r"NaN \(0 values\) or inf \(1 values\)"),
        (ONES, LABELS, {"reduction": "avg"}, ValueError, "reduction must be one of"),
        (ONES, LABELS, {"label_smoothing": 1.5}, ValueError, r"label_smoothing must be in \[0, 1\]"),
    ],
)
def test_cross_entropy_errors(logits, target, kwargs, error, message):
    with pytest.raises(error, match="cross_entropy: .*" + message):
        ops.cross_entropy(Tensor(logits), target, **kwargs)


def test_cross_entropy_refuses_targets_that_require_grad():
    target = Tensor(np.full((1, 2), 0.5), requires_grad=True)
    with pytest.raises(ValueError, match=r"target.detach\(\)"):
        ops.cross_entropy(Tensor(np.zeros((1, 2))), target)
