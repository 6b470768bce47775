"""Optimizers against hand-computed steps, written out from the published update rules with Python
floats (not by calling the implementation), plus state dicts, skipping, errors, and the schedule."""

import math

import numpy as np
import pytest

from tinymoe import Tensor
from tinymoe.nn import Parameter
from tinymoe.optim import SGD, AdamW, warmup_cosine_lr


def param(values, dtype=np.float64):
    return Parameter(np.array(values, dtype=dtype))


# --------------------------------------------------------------------------------------------------
# SGD with momentum and weight decay (torch.optim.SGD):
#   d = g + wd * p;   buf = momentum * buf + d (buf = d on the first step);   p = p - lr * buf
# --------------------------------------------------------------------------------------------------
def test_sgd_momentum_two_hand_computed_steps():
    p = param([1.0, -2.0])
    opt = SGD([p], lr=0.1, momentum=0.9, weight_decay=0.01)

    p.grad = np.array([0.5, 0.25])
    opt.step()
    # step 1: d = (0.5 + 0.01*1, 0.25 + 0.01*(-2)) = (0.51, 0.23); buf = d; p = p - 0.1 * buf
    d1 = [0.5 + 0.01 * 1.0, 0.25 + 0.01 * -2.0]
    p1 = [1.0 - 0.1 * d1[0], -2.0 - 0.1 * d1[1]]
    np.testing.assert_allclose(p.data, p1, rtol=1e-15)
    np.testing.assert_allclose(p.data, [0.949, -2.023], rtol=1e-15)  # the same numbers, by hand

    p.grad = np.array([-0.5, 1.0])
    opt.step()
    # step 2: d = g + 0.01 p1; buf = 0.9 * d1 + d; p = p1 - 0.1 * buf
    d2 = [-0.5 + 0.01 * p1[0], 1.0 + 0.01 * p1[1]]
    buf2 = [0.9 * d1[0] + d2[0], 0.9 * d1[1] + d2[1]]
    p2 = [p1[0] - 0.1 * buf2[0], p1[1] - 0.1 * buf2[1]]
    np.testing.assert_allclose(p.data, p2, rtol=1e-14)
    np.testing.assert_allclose(p.data, [0.952151, -2.141677], rtol=1e-12)  # by hand: buf2 = (-0.03151, 1.18677)


def test_plain_sgd_is_p_minus_lr_g():
    p = param([3.0])
    p.grad = np.array([2.0])
    SGD([p], lr=0.25).step()
    assert p.data[0] == 3.0 - 0.25 * 2.0


# --------------------------------------------------------------------------------------------------
# AdamW (Loshchilov & Hutter; torch.optim.AdamW):
#   p = p (1 - lr wd);  m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;
#   p = p - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
# --------------------------------------------------------------------------------------------------
def test_adamw_two_hand_computed_steps():
    lr, b1, b2, eps, wd = 0.1, 0.9, 0.999, 1e-8, 0.1
    p = param([1.0, -0.5])
    opt = AdamW([p], lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd)

    expected, m, v = [1.0, -0.5], [0.0, 0.0], [0.0, 0.0]
    for t, grad in ((1, [0.5, -0.2]), (2, [-0.25, 0.4])):
        p.grad = np.array(grad)
        opt.step()
        for i in range(2):
            expected[i] *= 1 - lr * wd  # decoupled decay first, from the current weight
            m[i] = b1 * m[i] + (1 - b1) * grad[i]
            v[i] = b2 * v[i] + (1 - b2) * grad[i] ** 2
            m_hat = m[i] / (1 - b1**t)
            v_hat = v[i] / (1 - b2**t)
            expected[i] -= lr * m_hat / (math.sqrt(v_hat) + eps)
        np.testing.assert_allclose(p.data, expected, rtol=1e-12)
        if t == 1:
            # By hand: m_hat = g and v_hat = g^2 on the first step, so the step is lr * sign(g):
            # 1.0 * 0.99 - 0.1 = 0.89,  -0.5 * 0.99 + 0.1 = -0.395  (up to eps)
            np.testing.assert_allclose(p.data, [0.89, -0.395], rtol=1e-7)


def test_adamw_weight_decay_is_decoupled_from_the_gradient():
    """With a zero gradient Adam's step is 0, so only the decay acts: p -> p (1 - lr wd)."""
    p = param([2.0])
    p.grad = np.array([0.0])
    AdamW([p], lr=0.5, weight_decay=0.2).step()
    assert p.data[0] == pytest.approx(2.0 * (1 - 0.5 * 0.2), rel=1e-15)


# --------------------------------------------------------------------------------------------------
# Shared behaviour
# --------------------------------------------------------------------------------------------------
BOTH = [lambda ps: SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.1), lambda ps: AdamW(ps, lr=0.1)]

@pytest.mark.parametrize("make", BOTH, ids=["SGD", "AdamW"])
def test_float32_stays_float32_in_place(make):
    p = param([1.0, 2.0], dtype=np.float32)
    array = p.data
    opt = make([p])
    p.grad = np.array([0.5, -0.5], dtype=np.float32)
    opt.step()
    opt.step()
    assert p.data is array and p.data.dtype == np.float32
    assert all(a.dtype == np.float32 for s in opt.state for a in s.values() if isinstance(a, np.ndarray))


@pytest.mark.parametrize("make", BOTH, ids=["SGD", "AdamW"])
def test_parameters_without_a_gradient_are_skipped(make):
    used, unused = param([1.0]), param([1.0])
    opt = make([used, unused])
    used.grad = np.array([1.0])
    opt.step()
    assert unused.data[0] == 1.0  # not even weight decay touched it
    assert opt.state[1] == {}
    assert used.data[0] != 1.0


def test_a_gradient_of_the_wrong_shape_is_refused():
    p = param([[1.0, 2.0]])
    p.grad = np.ones(2)
    with pytest.raises(ValueError, match=r"AdamW.step: parameter 0 has shape \(1, 2\) but its grad has shape \(2,\)"):
        AdamW([p], lr=0.1).step()


def test_zero_grad_and_settable_lr():
    p = param([1.0])
    opt = SGD([p], lr=0.1)
    p.grad = np.array([1.0])
    opt.lr = 0.5
    opt.step()
    assert p.data[0] == 0.5
    opt.zero_grad()
    assert p.grad is None


def test_parameter_groups_set_their_own_weight_decay():
    decayed, exempt = param([1.0]), param([1.0])
    opt = AdamW([{"params": [decayed]}, {"params": [exempt], "weight_decay": 0.0}], lr=0.1, weight_decay=0.5)
    decayed.grad, exempt.grad = np.array([0.0]), np.array([0.0])
    opt.step()
    assert decayed.data[0] == pytest.approx(1 - 0.1 * 0.5) and exempt.data[0] == 1.0


def test_constructor_errors():
    with pytest.raises(ValueError, match="empty list of parameters"):
        SGD([], lr=0.1)
    with pytest.raises(TypeError, match=r"pass a list of parameters \(e.g. model.parameters\(\)\)"):
        SGD(param([1.0]), lr=0.1)
    with pytest.raises(ValueError, match="does not require grad"):
        SGD([Tensor(np.ones(1))], lr=0.1)
    with pytest.raises(TypeError, match="parameters must be Tensors"):
        SGD([np.ones(1)], lr=0.1)
    p = param([1.0])
    with pytest.raises(ValueError, match="listed twice"):
        AdamW([p, p], lr=0.1)
    with pytest.raises(ValueError, match=r"betas must be in \[0, 1\)"):
        AdamW([p], lr=0.1, betas=(0.9, 1.0))


@pytest.mark.parametrize(
    "make",
    [lambda ps: SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.01), lambda ps: AdamW(ps, lr=0.05, weight_decay=0.1)],
)
def test_state_dict_resumes_exactly(make):
    """Train 3 steps, save, load into a fresh optimizer, train 2 more = train 5 steps uninterrupted."""
    grads = [np.random.default_rng(i).standard_normal((2, 3)) for i in range(5)]

    def run(params, opt, steps):
        for g in steps:
            params[0].grad, params[1].grad = g, g[0]
            opt.step()

    straight = [param(np.ones((2, 3))), param(np.zeros(3))]
    run(straight, make(straight), grads)

    first = [param(np.ones((2, 3))), param(np.zeros(3))]
    opt = make(first)
    run(first, opt, grads[:3])
    saved = opt.state_dict()
    assert all(isinstance(v, (int, float, str, np.ndarray)) for v in saved.values())  # JSON numbers + arrays

    resumed = [param(p.data) for p in first]
    opt2 = make(resumed)
    opt2.lr = 123.0  # restored by load_state_dict
    opt2.load_state_dict(saved)
    run(resumed, opt2, grads[3:])
    for a, b in zip(straight, resumed):
        np.testing.assert_allclose(a.data, b.data, rtol=1e-14)


def test_load_state_dict_errors():
    p = param([1.0, 2.0])
    opt = AdamW([p], lr=0.1)
    p.grad = np.ones(2)
    opt.step()
    state = opt.state_dict()
    with pytest.raises(ValueError, match="the state dict is from a 'AdamW' optimizer"):
        SGD([p], lr=0.1).load_state_dict(state)
    with pytest.raises(ValueError, match=r"param.0.exp_avg has shape \(2,\) but parameter 0 has shape \(3,\)"):
        AdamW([param([1.0, 2.0, 3.0])], lr=0.1).load_state_dict(state)
    with pytest.raises(KeyError, match="unexpected key 'param.0.momentum'"):
        AdamW([p], lr=0.1).load_state_dict({**state, "param.0.momentum": np.ones(2)})


# --------------------------------------------------------------------------------------------------
# Learning-rate schedule: linear warmup, then cosine to min_lr
# --------------------------------------------------------------------------------------------------
def test_warmup_cosine_lr_at_key_steps():
    kw = dict(total_steps=110, warmup_steps=10, base_lr=1.0, min_lr=0.1)
    assert warmup_cosine_lr(0, **kw) == pytest.approx(0.1)  # 1/10 of base on the first step
    assert warmup_cosine_lr(4, **kw) == pytest.approx(0.5)  # (4 + 1) / 10
    assert warmup_cosine_lr(9, **kw) == pytest.approx(1.0)  # last warmup step reaches base
    assert warmup_cosine_lr(10, **kw) == pytest.approx(1.0)  # cosine starts at base
    assert warmup_cosine_lr(60, **kw) == pytest.approx(0.55)  # halfway: (base + min) / 2
    assert warmup_cosine_lr(85, **kw) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.75)))
    assert warmup_cosine_lr(110, **kw) == pytest.approx(0.1)  # the end, and beyond: min_lr
    assert warmup_cosine_lr(500, **kw) == pytest.approx(0.1)
    lrs = [warmup_cosine_lr(s, **kw) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))  # monotone decay after warmup


def test_warmup_cosine_lr_without_warmup_and_errors():
    assert warmup_cosine_lr(0, total_steps=4, warmup_steps=0, base_lr=2.0) == 2.0
    assert warmup_cosine_lr(2, total_steps=4, warmup_steps=0, base_lr=2.0) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="warmup_steps must be in"):
        warmup_cosine_lr(0, total_steps=4, warmup_steps=5, base_lr=1.0)
    with pytest.raises(ValueError, match="step must be >= 0"):
        warmup_cosine_lr(-1, total_steps=4, warmup_steps=0, base_lr=1.0)
