"""Mobile V-MoE routing: gradient checks of MoE blocks and router losses, and the routing properties
(all tokens of an image share its experts, permutation equivariance, gates from the router softmax,
k = E with equal experts = a dense MLP, token-routing capacity and dropped tokens)."""

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from model_helpers import composed_expert_mlps, module_gradcheck, routing_margin

from tinymoe import Tensor, no_grad, ops
from tinymoe.gradcheck import gradcheck
from tinymoe.evaluation import router_accuracy
from tinymoe.models import ModelConfig, VisionTransformer, random_class_groups
from tinymoe.models.moe import ExpertMlps, ImageRouter, cv_squared, importance_loss, load_loss, plan_dispatch
from tinymoe.models.vit import MoEBlock, TokenMoEBlock
from tinymoe.testing import strategies as st_


def gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def layer_norm(x, w, b, eps=1e-6):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def expert_reference(experts, e, h):
    """Expert e's MLP on h (..., D), in plain NumPy."""
    hidden = gelu_tanh(h @ experts.fc1_weight.data[e] + experts.fc1_bias.data[e])
    return hidden @ experts.fc2_weight.data[e] + experts.fc2_bias.data[e]


def randomize(module, rng, scale=0.5):
    for p in module.parameters():
        p.data[...] = scale * rng.standard_normal(p.shape)


# ---------------------------------------------------------------------------------------------------
# gradient checks: MoE blocks (per-image routing, k = 1 and 2; token routing) and router losses
# ---------------------------------------------------------------------------------------------------
@settings(max_examples=8)
@pytest.mark.parametrize("k", [1, 2])
@given(data=st.data())
def test_moe_block_gradcheck_per_image_routing(k, data):
    """A whole MoE block with its router: d/d(tokens, router, attention, norms, every expert)."""
    dim, heads = data.draw(st.sampled_from([(4, 1), (4, 2), (6, 3)]))
    experts = data.draw(st.integers(k, 3))
    batch, tokens = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    block = MoEBlock(dim, heads, 2 * dim, experts, 1e-6, rng=rng, dtype=np.float64)
    router = ImageRouter(dim, experts, k, "class_token", rng=rng, dtype=np.float64)
    randomize(block, rng)
    randomize(router, rng, scale=1.0)
    x = rng.standard_normal((batch, tokens, dim))  # (constant rows would make LayerNorm ill-conditioned)
    assume(routing_margin(x[:, 0] @ router.weight.data, k) > 1e-4)

    def run(x, w):
        router.weight, saved = w, router.weight
        try:
            return block(x, router(x))[0]
        finally:
            router.weight = saved

    module_gradcheck(block, run, [x, router.weight.data])


@settings(max_examples=8)
@given(data=st.data())
def test_moe_block_gradcheck_token_routing(data):
    """Token routing with noise and a capacity that drops tokens; the block's own router included."""
    dim, heads = data.draw(st.sampled_from([(4, 1), (4, 2)]))
    experts = data.draw(st.integers(2, 3))
    k = data.draw(st.integers(1, experts))
    batch, tokens = data.draw(st.integers(1, 2)), data.draw(st.integers(2, 4))
    capacity_factor = data.draw(st.sampled_from([0.3, 1.0, 5.0]))
    noise_std = data.draw(st.sampled_from([0.0, 0.5]))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    block = TokenMoEBlock(dim, heads, 2 * dim, experts, 1e-6, rng=rng, dtype=np.float64, k=k,
                          capacity_factor=capacity_factor, router_noise=noise_std * experts)  # std = noise / E
    randomize(block, rng)
    x = rng.standard_normal((batch, tokens, dim))  # (constant rows would make LayerNorm ill-conditioned)

    def run(x):
        y, _ = block(x, None, np.random.default_rng(3))
        return y

    with no_grad():
        _, r = block(Tensor(x), None, np.random.default_rng(3))
    assume(routing_margin(r.router_logits.data + r.noise, k) > 1e-4)
    module_gradcheck(block, run, [x])


@given(st.integers(1, 3), st.integers(2, 4), st.data())
def test_router_loss_gradcheck(batch, experts, data):
    """router_weight · CE(router(class token), superclass[label]), back to the tokens and the router."""
    dim = 4
    x = data.draw(st_.arrays((batch, 3, dim)))
    w = data.draw(st_.arrays((dim, experts)))
    targets = data.draw(st_.labels(experts, batch))
    router = ImageRouter(dim, experts, 1, "class_token", rng=np.random.default_rng(0), dtype=np.float64)

    def loss(x, w):
        router.weight, saved = w, router.weight
        try:
            return 0.3 * ops.cross_entropy(router(x).router_logits, targets)
        finally:
            router.weight = saved

    gradcheck(loss, [x, w])


@given(st.integers(1, 2), st.integers(1, 4), st.integers(2, 4), st.data())
def test_importance_and_load_losses_gradcheck_and_formula(batch, tokens, experts, data):
    logits = data.draw(st_.arrays((batch, tokens, experts)))
    noise = data.draw(st_.arrays((batch, tokens, experts), low=-0.5, high=0.5))
    k = data.draw(st.integers(1, experts))
    sigma = 0.5
    noisy = logits + noise
    assume(routing_margin(noisy, k) > 1e-4)
    chosen = np.argsort(-noisy, axis=-1, kind="stable")[..., :k]

    probs = np.exp(noisy) / np.exp(noisy).sum(-1, keepdims=True)
    imp = probs.sum(1)  # (B, E)
    expected_imp = np.mean(imp.var(-1) / imp.mean(-1) ** 2)
    np.testing.assert_allclose(importance_loss(Tensor(probs)).data, expected_imp, rtol=1e-10, atol=1e-15)

    from math import erf, sqrt

    threshold = np.sort(noisy, axis=-1)[..., -k][..., None]
    p = np.vectorize(lambda z: 0.5 * (1 + erf(z / sqrt(2))))((logits - threshold) / sigma)
    load = p.mean(1)
    expected_load = np.mean(load.var(-1) / load.mean(-1) ** 2)
    got = load_loss(Tensor(logits), Tensor(noisy), chosen, sigma).data
    np.testing.assert_allclose(got, expected_load, rtol=1e-9, atol=1e-14)

    gradcheck(lambda lg, nz: load_loss(lg, lg + nz, chosen, sigma), [logits, noise])
    gradcheck(lambda lg: importance_loss(ops.softmax(lg, axis=-1)), [logits])


def test_cv_squared_extremes():
    assert cv_squared(Tensor(np.full(4, 2.5))).item() == 0.0
    assert cv_squared(Tensor(np.array([0.0, 0.0, 0.0, 1.0]))).item() == pytest.approx(3.0)  # E - 1


# ---------------------------------------------------------------------------------------------------
# routing properties (per-image routing)
# ---------------------------------------------------------------------------------------------------
def moe_model(seed=0, **changes):
    config = ModelConfig(layers=3, dim=16, heads=2, image_size=8, patch_size=4, num_classes=6, moe_layers=2,
                         experts=4, k=1).replace(**changes)
    model = VisionTransformer(config, rng=seed, dtype=np.float64)
    randomize(model, np.random.default_rng(seed + 100), scale=0.3)
    return model


def images(config, batch, seed=1):
    return np.random.default_rng(seed).standard_normal((batch, config.image_size, config.image_size, config.channels))


@given(st.integers(1, 4), st.integers(1, 3), st.sampled_from(["class_token", "mean_tokens"]), st.integers(0, 99))
def test_gates_come_from_the_router_softmax_of_the_image_representation(k, moe_layers, router_input, seed):
    model = moe_model(seed, k=k, moe_layers=moe_layers, router_input=router_input)
    x = images(model.config, 5, seed)
    out = model(x)
    # The representation after the last dense block, computed by hand.
    tokens = model.embed(x)
    for block in list(model.blocks)[: model.config.dense_layers]:
        tokens = block(tokens)
    r = tokens.data[:, 0] if router_input == "class_token" else tokens.data[:, 1:].mean(1)
    logits = r @ model.router.weight.data
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    np.testing.assert_allclose(out.routing.router_logits.data, logits, rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(out.routing.experts, np.argsort(-probs, axis=1, kind="stable")[:, :k])
    np.testing.assert_allclose(out.routing.gates.data, np.take_along_axis(probs, out.routing.experts, 1), rtol=1e-10)
    np.testing.assert_array_equal(out.routing.counts, np.bincount(out.routing.experts.ravel(), minlength=4))


@given(st.integers(1, 3), st.integers(1, 4), st.integers(0, 99))
def test_all_tokens_of_an_image_go_through_its_experts(k, batch, seed):
    """The MoE block output, token by token, equals the gate-weighted sum of the image's k experts."""
    model = moe_model(seed, k=k)
    x = images(model.config, batch, seed)
    out = model(x)
    tokens = model.embed(x)
    tokens = model.blocks[0](tokens)
    block = model.blocks[1]
    after_attn = tokens + block.attn(block.norm1(tokens))
    h = layer_norm(after_attn.data, block.norm2.weight.data, block.norm2.bias.data)
    moe_out = block(tokens, out.routing)[0].data
    for b in range(batch):
        expected = after_attn.data[b].copy()
        for j, e in enumerate(out.routing.experts[b]):
            expected += out.routing.gates.data[b, j] * expert_reference(block.experts, e, h[b])  # all N tokens
        np.testing.assert_allclose(moe_out[b], expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("routing", ["superclass", "learned", "random", "token"])
@given(perm_seed=st.integers(0, 999), k=st.integers(1, 2))
def test_permuting_the_images_permutes_the_outputs(routing, perm_seed, k):
    model = moe_model(3, k=k, routing=routing)
    model.eval()  # token routing: no noise; capacity groups are per image, so order does not matter
    x = images(model.config, 6, 4)
    perm = np.random.default_rng(perm_seed).permutation(6)
    out, out_p = model(x), model(x[perm])
    np.testing.assert_allclose(out_p.logits.data, out.logits.data[perm], rtol=1e-10, atol=1e-12)
    if routing == "token":
        for r, r_p in zip(out.token_routing, out_p.token_routing):
            np.testing.assert_array_equal(r_p.experts, r.experts[perm])
            np.testing.assert_array_equal(r_p.kept, r.kept[perm])
    else:
        np.testing.assert_array_equal(out_p.routing.experts, out.routing.experts[perm])
        np.testing.assert_allclose(out_p.routing.gates.data, out.routing.gates.data[perm], rtol=1e-12)


@given(st.integers(2, 5), st.sampled_from(["class_token", "mean_tokens"]), st.integers(0, 99))
def test_k_equals_E_with_equal_experts_is_the_dense_model(experts, router_input, seed):
    """Gates over all E experts sum to 1 (no renormalisation needed), so E copies of one MLP = that MLP."""
    config = ModelConfig(layers=3, dim=16, heads=2, image_size=8, patch_size=4, num_classes=6, moe_layers=2,
                         experts=experts, k=experts, router_input=router_input)
    dense = VisionTransformer(config.dense(), rng=seed, dtype=np.float64)
    randomize(dense, np.random.default_rng(seed), scale=0.3)
    moe = VisionTransformer(config, rng=seed + 1, dtype=np.float64)
    dense_state, moe_state = dense.state_dict(), moe.state_dict()
    for name in moe_state:
        if name in dense_state:
            moe_state[name] = dense_state[name]
    for i in (1, 2):
        for part in ("fc1", "fc2"):
            for kind in ("weight", "bias"):
                one = dense_state[f"blocks.{i}.mlp.{part}.{kind}"]
                moe_state[f"blocks.{i}.experts.{part}_{kind}"] = np.stack([one] * experts)
    moe.load_state_dict(moe_state)
    x = images(config, 4, seed)
    out = moe(x)
    np.testing.assert_allclose(out.routing.gates.data.sum(1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(out.logits.data, dense(x).logits.data, rtol=1e-9, atol=1e-11)


# ---------------------------------------------------------------------------------------------------
# token routing: capacity and dropped tokens
# ---------------------------------------------------------------------------------------------------
@given(st.sampled_from([0.1, 0.5, 1.0, 2.0]), st.integers(1, 2), st.integers(0, 99), st.booleans())
def test_token_routing_capacity_and_dropped_tokens(capacity_factor, k, seed, training):
    """Each expert takes at most `capacity` (token, choice) pairs per image; a token's MoE output is the
    gated sum over its kept pairs, so a token with none kept leaves the block with the residual alone."""
    rng = np.random.default_rng(seed)
    dim, experts, tokens = 8, 3, 7
    block = TokenMoEBlock(dim, 2, 16, experts, 1e-6, rng=rng, dtype=np.float64, k=k, capacity_factor=capacity_factor,
                          eval_capacity_factor=capacity_factor, router_noise=0.3 * experts)  # noise std 0.3
    randomize(block, rng)
    block.train(training)  # eval mode: no noise
    x = Tensor(rng.standard_normal((2, tokens, dim)))
    y, r = block(x, None, np.random.default_rng(seed))
    assert r.capacity == max(1, int(np.ceil(capacity_factor * k * tokens / experts)))
    for b in range(2):
        for e in range(experts):
            assert (r.kept[b] & (r.experts[b] == e)).sum() <= r.capacity
    np.testing.assert_array_equal(r.counts, np.bincount(r.experts[r.kept], minlength=experts))
    if training:
        assert np.any(r.noise != 0) and r.load_loss is not None
    else:
        assert np.all(r.noise == 0) and r.load_loss is None

    after_attn = (x + block.attn(block.norm1(x))).data
    h = layer_norm(after_attn, block.norm2.weight.data, block.norm2.bias.data)
    for b in range(2):
        for n in range(tokens):
            expected = after_attn[b, n].copy()
            for j in range(k):
                if r.kept[b, n, j]:
                    expected += r.gates.data[b, n, j] * expert_reference(block.experts, r.experts[b, n, j], h[b, n])
            np.testing.assert_allclose(y.data[b, n], expected, rtol=1e-10, atol=1e-12)
            if not r.kept[b, n].any():
                np.testing.assert_array_equal(y.data[b, n], after_attn[b, n])  # residual only
    assert r.dropped_tokens == pytest.approx(np.mean(~r.kept.any(-1)))


def test_token_routing_uses_separate_train_and_eval_capacity_and_no_noise_in_eval():
    model = moe_model(0, routing="token", k=1, capacity_factor=0.5, eval_capacity_factor=4.0)
    x = images(model.config, 3)
    tokens = model.config.num_tokens
    train_out = model(x)
    assert all(r.capacity == int(np.ceil(0.5 * tokens / 4)) for r in train_out.token_routing)
    assert any(r.dropped_fraction > 0 for r in train_out.token_routing)
    model.eval()
    eval_out = model(x)
    assert all(r.capacity == tokens for r in eval_out.token_routing)  # ceil(4 * 5 / 4) = 5 = N
    assert all(r.dropped_fraction == 0 for r in eval_out.token_routing)
    np.testing.assert_array_equal(model(x).logits.data, eval_out.logits.data)  # deterministic in eval


def test_token_routing_noise_follows_the_generator():
    model = moe_model(0, routing="token", k=2)
    x = images(model.config, 2)
    a = model(x, rng=np.random.default_rng(1)).logits.data
    b = model(x, rng=np.random.default_rng(1)).logits.data
    c = model(x, rng=np.random.default_rng(2)).logits.data
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    noise = model(x, rng=np.random.default_rng(1)).token_routing[0].noise
    assert abs(noise.std() - model.config.router_noise / model.config.experts) < 0.1  # sigma = 1/E


# ---------------------------------------------------------------------------------------------------
# losses of the routing variants
# ---------------------------------------------------------------------------------------------------
def test_loss_terms_per_routing_variant():
    labels = np.array([0, 3, 5, 1])
    groups = np.array([0, 1, 2, 3, 0, 1])
    for routing in ("superclass", "learned", "random", "token"):
        model = moe_model(0, routing=routing)
        if routing == "superclass":
            model.set_class_to_group(groups)
        out = model(images(model.config, 4))
        terms = model.loss(out, labels)
        ce = ops.cross_entropy(out.logits, labels).item()
        assert terms.classification == pytest.approx(ce)
        if routing in ("superclass", "random"):
            targets = model.class_to_group[labels]
            router_ce = ops.cross_entropy(out.routing.router_logits, targets).item()
            assert terms.router == pytest.approx(router_ce)
            assert terms.total.item() == pytest.approx(ce + 0.3 * router_ce)
            assert router_accuracy(out.routing.experts, labels, model.class_to_group) == np.mean(out.routing.experts[:, 0] == targets)
        elif routing == "learned":
            assert terms.router is None and terms.total.item() == pytest.approx(ce)
        else:
            aux = sum(0.5 * (r.importance_loss.item() + r.load_loss.item()) for r in out.token_routing)
            assert terms.total.item() == pytest.approx(ce + 0.01 * aux)
            assert terms.balance == pytest.approx(0.01 * aux) and terms.load is not None
        assert set(terms.as_dict()) >= {"loss", "loss_classification"}


def test_superclass_routing_without_a_map_says_what_to_do():
    model = moe_model(0)
    out = model(images(model.config, 2))
    with pytest.raises(ValueError, match="set_class_to_group"):
        model.loss(out, np.array([0, 1]))
    with pytest.raises(ValueError, match=r"must be 6 integers"):
        model.set_class_to_group(np.arange(5))
    with pytest.raises(ValueError, match=r"values must lie in \[0, 4\)"):
        model.set_class_to_group(np.arange(6))
    with pytest.raises(ValueError, match="labels must lie in"):
        model.set_class_to_group(np.zeros(6, dtype=int))
        model.loss(out, np.array([0, 6]))


@given(st.integers(1, 300), st.integers(1, 12), st.integers(0, 99))
def test_random_groups_are_balanced_and_seeded(num_classes, groups, seed):
    g = random_class_groups(num_classes, groups, seed)
    sizes = np.bincount(g, minlength=groups)
    assert sizes.max() - sizes.min() <= 1 and g.min() >= 0 and g.max() < groups
    np.testing.assert_array_equal(g, random_class_groups(num_classes, groups, seed))


def test_random_routing_uses_the_seeded_map():
    a = moe_model(0, routing="random", random_groups_seed=3)
    b = moe_model(1, routing="random", random_groups_seed=3)
    np.testing.assert_array_equal(a.class_to_group, b.class_to_group)
    np.testing.assert_array_equal(a.class_to_group, random_class_groups(6, 4, 3))


def test_learned_router_gets_gradient_only_through_the_gates():
    model = moe_model(0, routing="learned", k=1)
    x, labels = images(model.config, 4), np.array([0, 1, 2, 3])
    out = model(x)
    model.loss(out, labels).total.backward()
    assert np.abs(model.router.weight.grad).max() > 0  # the gate multiplies the expert output


@settings(max_examples=10)
@given(st.data())
def test_fused_expert_op_equals_the_composition_of_primitives(data):
    """ExpertMlps.forward (one fused op) and its composition from primitives (take, expert_linear, gelu,
    gate, scatter_add) agree in value and in every gradient, including experts with no rows, dropped
    (row, choice) pairs and an expert-dropout mask (same generator state on both sides)."""
    experts, dim = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 5))
    k = data.draw(st.integers(1, experts))
    rows, inner = data.draw(st.integers(1, 4)), data.draw(st.sampled_from([(), (3,)]))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    module = ExpertMlps(experts, dim, 2 * dim, rng=rng, dtype=np.float64)
    randomize(module, rng)
    chosen = np.stack([rng.permutation(experts)[:k] for _ in range(rows)])
    keep = rng.random((rows, k)) < 0.7
    dispatch = plan_dispatch(chosen, experts, keep)
    x = rng.standard_normal((rows,) + inner + (dim,))
    gates = rng.random(rows * k)
    dropout, seed = data.draw(st.sampled_from([0.0, 0.4])), data.draw(st.integers(0, 99))
    mask = None
    if dropout:  # the mask ExpertMlps draws from np.random.default_rng(seed)
        keep = np.random.default_rng(seed).random((dispatch.source.size,) + inner + (2 * dim,), dtype=np.float32)
        mask = (keep >= dropout) * (1.0 / (1.0 - dropout))

    def fused(xt, gt):
        return module(xt, dispatch, gt, dropout=dropout, rng=np.random.default_rng(seed))

    results = []
    for forward in (fused, lambda xt, gt: composed_expert_mlps(module, xt, dispatch, gt, hidden_mask=mask)):
        module.zero_grad()
        xt, gt = Tensor(x, requires_grad=True), Tensor(gates, requires_grad=True)
        out = forward(xt, gt)
        upstream = np.random.default_rng(0).standard_normal(out.shape)
        out.backward(upstream)
        results.append([out.data, xt.grad, gt.grad] + [p.grad for p in module.parameters()])
    for fused, composed in zip(*results):
        np.testing.assert_allclose(fused, composed, rtol=1e-10, atol=1e-12)
