"""Every Numba kernel computes what its NumPy reference computes.

- kernel == reference, per output tensor, on hypothesis-drawn shapes (odd sizes, size-1 axes, 0-d where
  the kernel allows it) and layouts (C, Fortran, strided views), in float32 and float64. Tolerances are
  per tensor: relative to the largest magnitude in that reference tensor, tight in float64 and a few
  float32 roundings in float32 (the kernels sum in a different order and use `vecmath.exp`).
- inputs are not modified, outputs keep the input dtype.
- `vecmath.exp` against float64 exp over float32's whole range, including 0, subnormals, inf and NaN.
- the switch: under the "numba" backend the ops run the Numba kernels, under "reference" the NumPy ones
  (function and environment variable), and NUMBA_DISABLE_JIT=1 runs every Numba kernel as Python.
- the fused ops pass finite-difference gradient checks with the Numba backend on (the checks of
  tests/ops run on the active backend; here they run on "numba" explicitly).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinymoe import Tensor, kernels, ops
from tinymoe.gradcheck import gradcheck
from tinymoe.kernels import backend, vecmath
from tinymoe.ops.expert import expert_mlp
from tinymoe.testing import strategies as st_
from tinymoe.testing.kernel_cases import dispatch_plan, flatten_outputs, kernel_cases

DTYPES = [np.float32, np.float64]
# (rtol, atol as a fraction of the reference tensor's largest magnitude)
TOLERANCE = {np.float32: (2e-5, 2e-5), np.float64: (1e-11, 1e-12)}


def _magnitude(arrays) -> float:
    return max([float(np.max(np.abs(a))) for a in arrays if isinstance(a, np.ndarray) and a.size and a.dtype.kind == "f"] + [0.0])


def assert_same(name, numba_result, reference_result, dtype, inputs=(), condition=1.0):
    """Equal up to rtol, and up to atol times the magnitudes involved: the largest entry of this reference
    output or of the inputs. (Where the exact result is far below its inputs, e.g. gelu(-6) ≈ -8e-11,
    the float32 reference itself rounds to 0 while the kernel keeps the digits; both are within a few
    roundings of the inputs' scale.) `condition` multiplies atol for kernels that amplify the rounding
    of their inputs (layer norm: by up to |x| / std, see test_layer_norm)."""
    rtol, atol = TOLERANCE[dtype]
    atol *= condition
    input_scale = _magnitude(inputs)
    got, want = flatten_outputs(numba_result), flatten_outputs(reference_result)
    assert len(got) == len(want), f"{name}: {len(got)} outputs vs the reference's {len(want)}"
    for i, (g, w) in enumerate(zip(got, want)):
        if w is None:
            assert g is None, f"{name}: output {i} should be None"
            continue
        assert g.shape == w.shape, f"{name}: output {i} has shape {g.shape}, the reference {w.shape}"
        assert g.dtype == w.dtype == dtype, f"{name}: output {i} has dtype {g.dtype}, the reference {w.dtype}"
        scale = max(_magnitude([w]), input_scale)
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol * max(scale, 1e-30), err_msg=f"{name} output {i}")


def run_both(name, *args, dtype, condition=1.0):
    """Run kernel `name` as Numba and as reference on the same inputs; check equal and inputs untouched."""
    kernel = backend.get(name)
    copies = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
    got = backend.require_numba(name)(*args)
    for a, c in zip(args, copies):
        if isinstance(a, np.ndarray):
            np.testing.assert_array_equal(a, c, err_msg=f"{name} modified its input")
    want = kernel.reference(*args)
    assert_same(name, got, want, dtype, inputs=args, condition=condition)
    return want


def array(data, shape, dtype, scale=1.0):
    """A drawn array of `shape` with values in [-2 scale, 2 scale], in dtype, maybe in a non-contiguous layout."""
    values = st_.arrays(shape, -2.0 * scale, 2.0 * scale).map(lambda a: a.astype(dtype))
    return data.draw(st_.maybe_noncontiguous(values))


odd_shapes = st_.shapes(min_dims=1, max_dims=3, max_side=9)


# ----------------------------------------------------------------------------------------------------
# kernel == reference
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@given(data=st.data())
def test_gelu(dtype, data):
    shape = data.draw(st_.shapes(min_dims=0, max_dims=3, max_side=9))
    x = array(data, shape, dtype, scale=data.draw(st.sampled_from([1.0, 6.0])))
    g = array(data, shape, dtype)
    run_both("gelu_forward", x, dtype=dtype)
    run_both("gelu_backward", x, g, dtype=dtype)


def norm_rstd(x, eps) -> float:
    """The largest 1 / sqrt(var + eps) over the rows of x (float64)."""
    return float(np.max(1.0 / np.sqrt(np.var(x, axis=-1) + eps)))


@pytest.mark.parametrize("dtype", DTYPES)
@given(data=st.data())
def test_layer_norm(dtype, data):
    shape = data.draw(odd_shapes)
    x = array(data, shape, dtype, scale=3.0)
    x += dtype(data.draw(st.sampled_from([0.0, 5.0])))  # in place, keeping the layout: a mean far from 0
    g = array(data, shape, dtype)
    dim = shape[-1]
    weight = data.draw(st.sampled_from([None, "array"]))
    bias = data.draw(st.sampled_from([None, "array"]))
    w = None if weight is None else array(data, (dim,), dtype)
    b = None if bias is None else array(data, (dim,), dtype)
    eps = data.draw(st.sampled_from([1e-6, 1e-2]))
    # Normalising divides x - mean by the row's std, so a rounding of x (or of the mean) of size u|x| becomes
    # u|x|/std in y, and again times 1/std in dx: a row of nearly equal values is ill-conditioned for the
    # reference and the kernel alike. The tolerance scales with that factor (1 for well-spread rows).
    rstd64 = norm_rstd(x.astype(np.float64), eps)
    condition = max(1.0, float(np.max(np.abs(x))) * rstd64) if x.size else 1.0
    _, mean, rstd = run_both("layer_norm_forward", x, w, b, eps, dtype=dtype, condition=condition)
    run_both("layer_norm_backward", g, x, w, mean, rstd, b is not None, dtype=dtype, condition=condition**2)


@pytest.mark.parametrize("dtype", DTYPES)
@given(data=st.data())
def test_softmax_and_log_softmax(dtype, data):
    shape = data.draw(odd_shapes)
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    x = array(data, shape, dtype, scale=data.draw(st.sampled_from([1.0, 40.0])))  # 40: exp far from 1
    g = array(data, shape, dtype)
    probs = run_both("softmax_forward", x, axis, dtype=dtype)
    run_both("softmax_backward", probs, g, axis, dtype=dtype)
    log_probs = run_both("log_softmax_forward", x, axis, dtype=dtype)
    run_both("log_softmax_backward", log_probs, g, axis, dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@given(data=st.data())
def test_cross_entropy(dtype, data):
    batch, classes = data.draw(st.integers(1, 9)), data.draw(st.integers(1, 11))
    logits = array(data, (batch, classes), dtype, scale=data.draw(st.sampled_from([1.0, 30.0])))
    smoothing = data.draw(st.sampled_from([0.0, 0.1]))
    if data.draw(st.booleans()):
        target = data.draw(st_.labels(classes, batch))
    else:
        target = data.draw(st_.soft_targets(batch, classes, dtype=dtype))
    grad_loss = array(data, (batch,), dtype)
    _, log_probs = run_both("cross_entropy_forward", logits, target, smoothing, dtype=dtype)
    run_both("cross_entropy_backward", log_probs, target, smoothing, grad_loss, dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@given(data=st.data())
def test_attention(dtype, data):
    q_shape, k_shape, v_shape = data.draw(st_.attention_shapes(max_tokens=9, max_width=7))
    q, k, v = (array(data, s, dtype, scale=2.0) for s in (q_shape, k_shape, v_shape))
    scale = data.draw(st.sampled_from([1 / math.sqrt(q_shape[-1]), 0.7]))
    out, probs = run_both("attention_forward", q, k, v, scale, dtype=dtype)
    g = array(data, out.shape, dtype)
    run_both("attention_backward", g, q, k, v, probs, scale, dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@given(data=st.data())
def test_expert_mlp(dtype, data):
    rows, experts = data.draw(st.integers(1, 7)), data.draw(st.integers(1, 5))
    k = data.draw(st.integers(1, experts))
    inner = data.draw(st.sampled_from([(), (3,), (2, 3)]))  # tokens per row: a token, or an image's tokens
    dim, hidden = data.draw(st.integers(1, 6)), data.draw(st.integers(1, 9))
    seed = data.draw(st.integers(0, 2**32 - 1))
    keep = data.draw(st.sampled_from([1.0, 0.6]))  # 0.6: some (row, choice) pairs dropped, as by capacity
    rng = np.random.default_rng(seed)
    source, _, sizes = dispatch_plan(rng, rows, experts, k, keep_fraction=keep)
    x = array(data, (rows, *inner, dim), dtype)
    gates = rng.random(len(source)).astype(dtype)
    w1, b1 = array(data, (experts, dim, hidden), dtype), array(data, (experts, hidden), dtype)
    w2, b2 = array(data, (experts, hidden, dim), dtype), array(data, (experts, dim), dtype)
    mask = None  # expert dropout: a fixed mask on the GELU activations (kept entries scaled by 1 / (1 - p))
    if data.draw(st.booleans()):
        mask = ((rng.random((len(source), *inner, hidden)) >= 0.4) / 0.6).astype(dtype)
    out, saved = run_both("expert_mlp_forward", x, gates, source, sizes, w1, b1, w2, b2, mask, dtype=dtype)
    g = array(data, out.shape, dtype)
    run_both("expert_mlp_backward", g, x, gates, source, sizes, w1, w2, saved, mask, dtype=dtype)


def test_every_numba_kernel_is_covered_by_the_cases():
    """kernel_cases (used by the DISABLE_JIT check below) lists every kernel with a Numba version."""
    with_numba = {name for name in backend.names() if backend.get(name).numba is not None}
    assert with_numba == set(kernel_cases(np.random.default_rng(0)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_model_sized_float32_cases_agree(dtype):
    """The model's own shapes (128 images x 65 tokens x 64 wide, 2 heads), where the jitted loops run many
    vector iterations and several threads; hypothesis draws only small arrays."""
    rng = np.random.default_rng(1)
    x = (3 * rng.standard_normal((128, 65, 64))).astype(dtype)
    g = rng.standard_normal((128, 65, 64)).astype(dtype)
    run_both("gelu_forward", x, dtype=dtype)
    run_both("gelu_backward", x, g, dtype=dtype)
    w, b = rng.standard_normal(64).astype(dtype), rng.standard_normal(64).astype(dtype)
    _, mean, rstd = run_both("layer_norm_forward", x, w, b, 1e-6, dtype=dtype)
    run_both("layer_norm_backward", g, x, w, mean, rstd, True, dtype=dtype)
    qkv = (rng.standard_normal((128, 65, 3, 2, 32))).astype(dtype).transpose(2, 0, 3, 1, 4)  # as the model slices it
    out, probs = run_both("attention_forward", qkv[0], qkv[1], qkv[2], 32**-0.5, dtype=dtype)
    run_both("attention_backward", rng.standard_normal(out.shape).astype(dtype), qkv[0], qkv[1], qkv[2], probs, 32**-0.5, dtype=dtype)


# ----------------------------------------------------------------------------------------------------
# vecmath.exp
# ----------------------------------------------------------------------------------------------------
def test_vectorized_exp_matches_float64_exp_over_the_float32_range():
    from numba import njit

    @njit
    def exp_all(v, out):
        for i in range(v.size):
            out[i] = vecmath.exp(v[i])

    v = np.concatenate([np.linspace(-110, 90, 400_001), [0.0, -0.0, np.inf, -np.inf, np.nan, 88.72, -87.5, -103.9]])
    v = v.astype(np.float32)
    got = np.empty_like(v)
    exp_all(v, got)
    assert got.dtype == np.float32
    with np.errstate(over="ignore"):
        want = np.exp(v.astype(np.float64)).astype(np.float32)  # correctly rounded float32 (up to one rounding)
    normal = np.isfinite(want) & (want >= np.finfo(np.float32).tiny)
    assert np.max(np.abs(got[normal] - want[normal]) / want[normal]) < 2.5e-7  # ~2 float32 roundings
    sub = want < np.finfo(np.float32).tiny
    assert np.max(np.abs(got[sub] - want[sub])) <= 2 * np.finfo(np.float32).smallest_subnormal
    np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
    np.testing.assert_array_equal(np.isnan(got), np.isnan(v))
    assert set(got[v == 0].tolist()) == {1.0}


# ----------------------------------------------------------------------------------------------------
# The switch
# ----------------------------------------------------------------------------------------------------
def test_backend_switch_selects_the_implementation_the_ops_run(monkeypatch):
    calls = []
    kernel = backend.get("gelu_forward")
    for impl in ("reference", "numba"):
        original = getattr(kernel, impl)
        monkeypatch.setattr(kernel, impl, lambda x, _impl=impl, _f=original: calls.append(_impl) or _f(x))
    x = Tensor(np.linspace(-2, 2, 5))
    with kernels.using("numba"):
        ops.gelu(x)
    with kernels.using("reference"):
        ops.gelu(x)
    assert calls == ["numba", "reference"]
    assert kernels.report("numba")["gelu_forward"] == "numba"
    assert kernels.report("numba")["linear_forward"] == "reference (no Numba version)"


def _run_python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], env=dict(os.environ, **env), capture_output=True, text=True, timeout=300
    )


def test_environment_variable_runs_the_ops_on_the_chosen_backend():
    code = (
        "import numpy as np; from tinymoe import kernels, ops, Tensor\n"
        "k = kernels.gelu_forward\n"
        "print(kernels.active_backend(), k.implementation().__name__)"
    )
    assert _run_python(code, TINYMOE_KERNELS="reference").stdout.split() == ["reference", "gelu_forward"]
    assert _run_python(code, TINYMOE_KERNELS="numba").stdout.split() == ["numba", "gelu_forward_numba"]


def test_numba_disable_jit_runs_every_numba_kernel_as_python():
    """With NUMBA_DISABLE_JIT=1 the jitted loops are plain Python functions, and still agree with the references."""
    code = """
import json, numba, numpy as np
from tinymoe.kernels import activation, backend
from tinymoe.testing.kernel_cases import flatten_outputs, kernel_cases
jitted = isinstance(activation._gelu_forward_flat, numba.core.registry.CPUDispatcher)
errors = {}
for dtype in (np.float64, np.float32):
    for name, args in kernel_cases(np.random.default_rng(0), dtype).items():
        kernel = backend.get(name)
        got, want = flatten_outputs(kernel.numba(*args)), flatten_outputs(kernel.reference(*args))
        errors[f"{name}/{np.dtype(dtype).name}"] = max(
            float(np.max(np.abs(g - w)) / max(float(np.max(np.abs(w))), 1e-30)) if w.size else 0.0
            for g, w in zip(got, want) if w is not None
        )
print(json.dumps({"jitted": jitted, "errors": errors}))
"""
    proc = _run_python(code, NUMBA_DISABLE_JIT="1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["jitted"] is False
    assert len(result["errors"]) == 2 * len(kernel_cases(np.random.default_rng(0)))
    for case, err in result["errors"].items():
        assert err < (1e-5 if case.endswith("float32") else 1e-12), (case, err)


# ----------------------------------------------------------------------------------------------------
# The fused ops' gradients, finite differences, on the Numba backend (and the reference, for symmetry)
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend_name", ["numba", "reference"])
@given(data=st.data())
def test_fused_op_gradients(backend_name, data):
    shape = data.draw(st_.shapes(min_dims=1, max_dims=3, max_side=4))
    x = data.draw(st_.arrays(shape))
    dim = shape[-1]
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    with kernels.using(backend_name):
        gradcheck(ops.gelu, [x])
        gradcheck(lambda a, w, b: ops.layer_norm(a, w, b), [x + 0.1 * np.arange(dim), data.draw(st_.arrays((dim,))), data.draw(st_.arrays((dim,)))])
        gradcheck(lambda a: ops.softmax(a, axis=axis), [x])
        gradcheck(lambda a: ops.log_softmax(a, axis=axis), [x])
        batch, classes = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 5))
        labels = data.draw(st_.labels(classes, batch))
        gradcheck(lambda lg: ops.cross_entropy(lg, labels, label_smoothing=0.1), [data.draw(st_.arrays((batch, classes)))])
        q_shape, k_shape, v_shape = data.draw(st_.attention_shapes())
        gradcheck(ops.attention, [data.draw(st_.arrays(s)) for s in (q_shape, k_shape, v_shape)])


@pytest.mark.parametrize("backend_name", ["numba", "reference"])
@given(data=st.data())
def test_expert_mlp_op_gradients(backend_name, data):
    rows, experts = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 3))
    k = data.draw(st.integers(1, experts))
    dim, hidden = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 4))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    source, _, sizes = dispatch_plan(rng, rows, experts, k, keep_fraction=data.draw(st.sampled_from([1.0, 0.7])))
    inputs = [
        data.draw(st_.arrays((rows, 2, dim))),
        rng.uniform(0.1, 1.0, len(source)),
        data.draw(st_.arrays((experts, dim, hidden))),
        data.draw(st_.arrays((experts, hidden))),
        data.draw(st_.arrays((experts, hidden, dim))),
        data.draw(st_.arrays((experts, dim))),
    ]
    with kernels.using(backend_name):
        gradcheck(lambda x, g, w1, b1, w2, b2: expert_mlp(x, g, source, sizes, w1, b1, w2, b2), inputs)


@pytest.mark.parametrize("backend_name", ["reference", "numba"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_finds_the_max_at_the_last_position_with_overflowing_logits(backend_name, dtype):
    """exp(100) overflows float32: a running max that skipped any element (here the last, where the max
    is) would give inf/inf = NaN. Every row has its max at the last position, and one also at the first."""
    from tinymoe.kernels import softmax as k

    suffix = "_numba" if backend_name == "numba" else ""
    x = np.zeros((3, 7), dtype=dtype)
    x[:, -1] = 100.0
    x[1, 0] = 100.0  # two equal maxima: first and last
    x[2, :-1] = -100.0
    probs = getattr(k, "softmax_forward" + suffix)(x)
    log_probs = getattr(k, "log_softmax_forward" + suffix)(x)
    expected = np.exp(x.astype(np.float64) - 100.0)
    expected /= expected.sum(axis=1, keepdims=True)
    assert np.all(np.isfinite(probs)) and np.all(np.isfinite(log_probs))
    np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-30)
    np.testing.assert_allclose(log_probs, np.log(expected), rtol=1e-5, atol=1e-5)
    loss, _ = getattr(k, "cross_entropy_forward" + suffix)(x, np.array([6, 0, 6]))
    assert np.all(np.isfinite(loss))
    np.testing.assert_allclose(loss, -np.log(expected[[0, 1, 2], [6, 0, 6]]), rtol=1e-5, atol=1e-6)
