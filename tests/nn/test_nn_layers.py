"""Linear and LayerNorm: initialisation, dtypes, forward, and the truncated-normal initialiser."""

import math

import numpy as np
import pytest

from tinymoe import Tensor
from tinymoe.nn import LayerNorm, Linear, truncated_normal


def test_truncated_normal_is_reproducible_bounded_and_has_the_truncated_std():
    a = truncated_normal(np.random.default_rng(7), (256, 256), std=0.02)
    b = truncated_normal(np.random.default_rng(7), (256, 256), std=0.02)
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.float32
    assert np.abs(a).max() <= 0.04 + 1e-9  # cut at 2 std
    assert np.abs(a).max() > 0.039  # and the tails up to the cut are reached
    # A standard normal cut at +-2 has variance 1 - 2 * 2 phi(2) / (Phi(2) - Phi(-2)).
    phi2 = math.exp(-2.0) / math.sqrt(2 * math.pi)
    mass = math.erf(2 / math.sqrt(2))
    expected_std = 0.02 * math.sqrt(1 - 4 * phi2 / mass)  # ~= 0.0176
    assert a.std() == pytest.approx(expected_std, rel=0.01)
    assert abs(a.mean()) < 3 * expected_std / 256  # within 3 standard errors of 0


def test_linear_init_shapes_and_dtype():
    layer = Linear(8, 5, rng=np.random.default_rng(0))
    assert layer.weight.shape == (8, 5) and layer.bias.shape == (5,)
    assert layer.weight.dtype == np.float32 and layer.bias.dtype == np.float32
    np.testing.assert_array_equal(layer.bias.data, 0.0)
    assert 0 < np.abs(layer.weight.data).max() <= 0.04
    same = Linear(8, 5, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(layer.weight.data, same.weight.data)
    assert Linear(8, 5, dtype=np.float64).weight.dtype == np.float64
    assert Linear(8, 5, bias=False).bias is None


def test_linear_forward_is_x_times_w_plus_b():
    layer = Linear(3, 2, rng=np.random.default_rng(0))
    layer.bias.data[:] = [0.5, -1.0]
    x = np.arange(12, dtype=np.float32).reshape(2, 2, 3)
    out = layer(Tensor(x))
    assert out.shape == (2, 2, 2) and out.dtype == np.float32
    np.testing.assert_allclose(out.data, x @ layer.weight.data + layer.bias.data, rtol=1e-6)


def test_layer_norm_init_and_forward():
    norm = LayerNorm(4)
    np.testing.assert_array_equal(norm.weight.data, 1.0)
    np.testing.assert_array_equal(norm.bias.data, 0.0)
    assert norm.eps == 1e-6
    x = np.array([[1.0, 2.0, 3.0, 6.0]], dtype=np.float32)
    out = norm(Tensor(x)).data
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, (x - 3.0) / math.sqrt(3.5 + 1e-6), rtol=1e-6)  # mean 3, variance 3.5


def test_layer_sizes_are_checked():
    with pytest.raises(ValueError, match="Linear: in_features and out_features must be >= 1"):
        Linear(0, 3)
    with pytest.raises(ValueError, match="LayerNorm: dim must be >= 1"):
        LayerNorm(0)
