"""The backend switch: registration, dispatch, the explicit per-kernel fallback, and the env variable."""

import os
import subprocess
import sys

import numpy as np
import pytest

from tinymoe import kernels, ops, Tensor
from tinymoe.kernels import backend


def make_registry():
    """A private registry, so these tests never touch the kernels the ops use."""
    registry = backend.Registry()
    registry.register("double", reference=lambda x: 2 * x)
    registry.register("square", reference=lambda x: x * x)
    return registry


def test_dispatch_follows_the_active_backend():
    registry = make_registry()
    double = registry.register("double", numba=lambda x: ("numba", 2 * x))
    with backend.using("reference"):
        assert double(3) == 6
    with backend.using("numba"):
        assert double(3) == ("numba", 6)
        assert registry.get("square")(3) == 9  # no Numba version: its reference runs...
        assert registry.report() == {"double": "numba", "square": "reference (no Numba version)"}  # ...and says so
    assert registry.report("reference") == {"double": "reference", "square": "reference"}


def test_using_restores_the_previous_backend_even_after_an_error():
    before = backend.active_backend()
    with pytest.raises(RuntimeError):
        with backend.using("numba"):
            assert backend.active_backend() == "numba"
            raise RuntimeError("boom")
    assert backend.active_backend() == before
    previous = backend.use_backend("numba")
    try:
        assert previous == before and backend.active_backend() == "numba"
    finally:
        backend.use_backend(previous)


def test_require_numba_refuses_to_fall_back():
    registry = make_registry()
    with pytest.raises(NotImplementedError, match="'square' has no Numba implementation"):
        registry.require_numba("square")
    fast = lambda x: x + x  # noqa: E731
    registry.register("double", numba=fast)
    assert registry.require_numba("double") is fast


def test_registration_errors():
    registry = make_registry()
    with pytest.raises(KeyError, match="register the NumPy reference first"):
        registry.register("cube", numba=lambda x: x**3)
    with pytest.raises(ValueError, match="a different reference implementation is already registered"):
        registry.register("double", reference=lambda x: x + x)
    registry.register("double", numba=np.add)
    with pytest.raises(ValueError, match="a different Numba implementation is already registered"):
        registry.register("double", numba=np.multiply)
    with pytest.raises(KeyError, match="no kernel named 'cube'; known kernels: \\['double', 'square'\\]"):
        registry.get("cube")
    with pytest.raises(ValueError, match="unknown kernel backend 'cuda'; choose one of reference, numba"):
        backend.use_backend("cuda")


FUSED_KERNELS = sorted(
    f"{family}_{direction}"
    for family in ("gelu", "linear", "layer_norm", "softmax", "log_softmax", "cross_entropy", "attention")
    for direction in ("forward", "backward")
)


def test_every_fused_op_dispatches_through_the_registry(monkeypatch):
    """Swapping a kernel's reference changes what the op computes: the ops really call the registry."""
    calls = []
    for name in FUSED_KERNELS:
        kernel = backend.get(name)
        original = kernel.reference

        def spy(*args, _name=name, _original=original, **kwargs):
            calls.append(_name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(kernel, "reference", spy)
    rng = np.random.default_rng(0)
    x = Tensor(rng.standard_normal((2, 3, 4)), requires_grad=True)
    w = Tensor(rng.standard_normal((4, 4)), requires_grad=True)
    with backend.using("reference"):
        h = ops.layer_norm(ops.gelu(ops.linear(x, w, np.zeros(4))), np.ones(4), np.zeros(4))
        a = ops.attention(h[None], h[None], h[None])[0]
        loss = ops.cross_entropy(a.reshape((6, 4)), np.arange(6) % 4)
        loss = loss + ops.softmax(a).sum() + ops.log_softmax(a).sum()
        loss.backward()
    assert sorted(set(calls)) == FUSED_KERNELS


def test_the_shared_registry_lists_every_fused_kernel():
    assert set(FUSED_KERNELS) <= set(backend.names())
    assert set(kernels.report("reference").values()) == {"reference"}
    assert sorted(kernels.report("reference")) == backend.names()


def _import_with_env(value):
    env = dict(os.environ, TINYMOE_KERNELS=value)
    code = "from tinymoe import kernels; print(kernels.active_backend())"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def test_environment_variable_selects_the_backend():
    assert _import_with_env("numba").stdout.strip() == "numba"
    assert _import_with_env("reference").stdout.strip() == "reference"
    bad = _import_with_env("fast")
    assert bad.returncode != 0
    assert "environment variable TINYMOE_KERNELS: unknown kernel backend 'fast'" in bad.stderr
