"""The dense ViT: shapes and input checks, initialisation, the documented parameter table, gradient
checks of a dense block and of whole models, and the FLOP counter against the multiply-adds that a
forward pass actually performs."""

import re

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from model_helpers import module_gradcheck, routing_margin, tiny_config, tiny_configs

from tinymoe import Tensor, no_grad
from tinymoe.models import ModelConfig, VisionTransformer, count
from tinymoe import exported as table_module  # the one table of parameter names, shapes and layouts
from tinymoe.models.vit import Block


def images_for(config, batch, seed=0, dtype=np.float32):
    shape = (batch, config.image_size, config.image_size, config.channels)
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


# ---------------------------------------------------------------------------------------------------
# shapes, inputs, initialisation
# ---------------------------------------------------------------------------------------------------
def test_forward_shapes_and_dtype():
    c = ModelConfig(layers=2, dim=64, image_size=32, patch_size=8, num_classes=7, moe_layers=0)
    model = VisionTransformer(c, rng=0)
    out = model(images_for(c, 3))
    assert out.logits.shape == (3, 7) and out.logits.dtype == np.float32
    assert out.routing is None and out.token_routing == [] and out.expert_counts() is None


def test_channel_first_and_integer_images_are_refused_with_a_hint():
    c = tiny_config(moe_layers=0)
    model = VisionTransformer(c, rng=0)
    with pytest.raises(ValueError, match=r"channel-first.*transpose\(0, 2, 3, 1\)"):
        model(np.zeros((2, 3, 4, 4), dtype=np.float32))
    with pytest.raises(ValueError, match=r"expects channel-last images of shape \(batch, 4, 4, 3\), got shape \(2, 8, 8, 3\)"):
        model(np.zeros((2, 8, 8, 3), dtype=np.float32))
    with pytest.raises(TypeError, match="must be floating point"):
        model(np.zeros((2, 4, 4, 3), dtype=np.uint8))


def test_patch_embedding_is_a_stride_p_convolution():
    """Token t of the patch embedding = sum over the pixels of patch t of pixel · kernel (a conv)."""
    c = ModelConfig(layers=1, dim=8, heads=2, image_size=6, patch_size=3, channels=2, moe_layers=0, num_classes=2)
    model = VisionTransformer(c, rng=1).to_dtype(np.float64)
    x = images_for(c, 2, dtype=np.float64)
    tokens = model.embed(x).data  # (B, 1 + 4, D)
    w = model.patch_embed.weight.data.reshape(3, 3, 2, 8)  # (py, px, channel, D)
    for gy in range(2):
        for gx in range(2):
            patch = x[:, 3 * gy : 3 * gy + 3, 3 * gx : 3 * gx + 3, :]  # (B, py, px, c)
            conv = np.einsum("byxc,yxcd->bd", patch, w) + model.patch_embed.bias.data
            expected = conv + model.pos_embed.data[0, 1 + 2 * gy + gx]
            np.testing.assert_allclose(tokens[:, 1 + 2 * gy + gx], expected, rtol=1e-12)
    np.testing.assert_allclose(tokens[:, 0], np.broadcast_to(model.cls_token.data[0, 0] + model.pos_embed.data[0, 0], (2, 8)))


def test_same_seed_same_model_and_timm_like_initialisation():
    c = ModelConfig(layers=2, dim=64, moe_layers=1, patch_size=8, init="timm")  # timm's scheme (default: PyTorch's)
    a, b, other = VisionTransformer(c, rng=5), VisionTransformer(c, rng=5), VisionTransformer(c, rng=6)
    sa, sb, so = a.state_dict(), b.state_dict(), other.state_dict()
    assert all(np.array_equal(sa[n], sb[n]) for n in sa)
    assert not np.array_equal(sa["blocks.0.attn.qkv.weight"], so["blocks.0.attn.qkv.weight"])
    # Truncated normal 0.02 cut at 2 std: |w| <= 0.04, std about 0.88 * 0.02.
    w = sa["blocks.0.attn.qkv.weight"]
    assert np.abs(w).max() <= 0.04 and 0.016 < w.std() < 0.019
    assert np.abs(sa["cls_token"]).max() < 1e-5
    bound = 1 / np.sqrt(c.patch_dim)
    assert np.abs(sa["patch_embed.weight"]).max() <= bound and sa["patch_embed.weight"].std() > 0.5 * bound
    assert np.all(sa["blocks.0.norm1.weight"] == 1) and np.all(sa["head.bias"] == 0)
    assert not np.array_equal(sa["blocks.1.experts.fc1_weight"][0], sa["blocks.1.experts.fc1_weight"][1])


@pytest.mark.parametrize("routing", ["superclass", "token"])
def test_pytorch_initialisation_is_uniform_in_one_over_sqrt_fan_in(routing):
    """init="pytorch": every linear map (experts and routers too) weight and bias in ±1/sqrt(fan_in),
    spread like a uniform (std = bound / sqrt 3); class token 0; position embedding N(0, 0.02); norms
    untouched. A weight left at timm's 0.02 would fail the spread check for fan-in 64."""
    c = ModelConfig(layers=2, dim=64, moe_layers=1, routing=routing, init="pytorch", patch_size=8)
    state = VisionTransformer(c, rng=5).state_dict()
    fan_in = {"patch_embed": c.patch_dim, "qkv": 64, "proj": 64, "fc1": 64, "fc2": 256, "head": 64, "router": 64}
    checked = 0
    for name, value in state.items():
        key = next((k for k in fan_in if k in name), None)
        if key is None:
            continue
        bound = 1 / np.sqrt(fan_in[key])
        assert np.abs(value).max() <= bound, name
        if value.size >= 64:
            assert 0.9 < value.std() / (bound / np.sqrt(3)) < 1.1, name
        checked += 1
    assert checked == len([n for n in state if any(k in n for k in fan_in)]) >= 14
    assert np.all(state["cls_token"] == 0) and 0.015 < state["pos_embed"].std() < 0.025
    assert np.all(state["blocks.0.norm1.weight"] == 1) and np.all(state["norm.bias"] == 0)
    same = VisionTransformer(c, rng=5).state_dict()  # still a pure function of the seed
    assert all(np.array_equal(state[n], same[n]) for n in state)


def test_an_unknown_initialisation_is_a_config_error():
    with pytest.raises(ValueError, match="init='xavier' is not one of"):
        ModelConfig(init="xavier")


def _documented_names() -> set[str]:
    names = set()
    for line in table_module.__doc__.splitlines():
        m = re.match(r"\s+([a-z_{}.0-9]+(?:\.weight|\.bias|_weight|_bias|_token|_embed))( ?/ ?\.bias)?\s+\(", line)
        if m:
            names.add(m.group(1))
            if m.group(2):
                names.add(m.group(1).rsplit(".", 1)[0] + ".bias")
    return names


@pytest.mark.parametrize("routing", ["superclass", "token"])
def test_every_parameter_is_in_the_documented_table_with_its_shape(routing):
    documented = _documented_names()
    c = ModelConfig(layers=3, dim=64, moe_layers=1, routing=routing, experts=4, num_classes=10)
    model = VisionTransformer(c, rng=0)
    symbols = {"D": c.dim, "H": c.hidden_dim, "E": c.experts, "C": c.num_classes, "N": c.num_tokens,
               "p·p·c": c.patch_dim, "3D": 3 * c.dim}
    rows = {}
    for line in table_module.__doc__.splitlines():
        m = re.match(r"\s+([a-z_{}.0-9]+)(?: ?/ ?\.bias)?\s+\(([^)]*)\)", line)
        if m:
            rows[m.group(1)] = tuple(symbols.get(s.strip(), None) if not s.strip().isdigit() else int(s)
                                     for s in m.group(2).split(",") if s.strip())
    for name, p in model.named_parameters():
        pattern = re.sub(r"blocks\.\d+\.", "blocks.{i}.", name)
        assert pattern in documented, f"{name} is missing from the parameter table in tinymoe/exported.py"
        key = pattern if pattern in rows else pattern.rsplit(".", 1)[0] + ".weight"
        assert rows[key] == p.shape, f"{name}: table says {rows[key]}, model has {p.shape}"


@given(tiny_configs(), st.sampled_from(["superclass", "token", "dense"]))
def test_parameter_count_matches_the_counter(config, routing):
    config = config.dense() if routing == "dense" else config.replace(routing=routing)
    model = VisionTransformer(config, rng=0)
    assert model.num_parameters() == count(config).params


# ---------------------------------------------------------------------------------------------------
# gradient checks
# ---------------------------------------------------------------------------------------------------
@settings(max_examples=8)
@given(st.data())
def test_dense_block_gradcheck(data):
    dim, heads = data.draw(st.sampled_from([(4, 1), (4, 2), (6, 3), (8, 2)]))
    batch, tokens = data.draw(st.integers(1, 2)), data.draw(st.integers(1, 4))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    block = Block(dim, heads, hidden=2 * dim, eps=1e-6, rng=rng, dtype=np.float64)
    for p in block.parameters():  # move away from the initial values (LayerNorm 1/0, zero biases)
        p.data[...] += 0.3 * rng.standard_normal(p.shape)
    # Seeded normal values rather than hypothesis arrays: hypothesis likes constant rows, where LayerNorm
    # divides by sqrt(0 + eps) and finite differences lose all accuracy.
    x = rng.standard_normal((batch, tokens, dim))
    module_gradcheck(block, lambda x: block(x), [x])


def _model_and_inputs(config, data, batch):
    seed = data.draw(st.integers(0, 2**32 - 1))
    model = VisionTransformer(config, rng=seed, dtype=np.float64)
    rng = np.random.default_rng(seed)
    for _, p in model.named_parameters():  # larger weights than the init, so every path carries signal
        p.data[...] = 0.5 * rng.standard_normal(p.shape)
    images = images_for(config, batch, seed=seed + 1, dtype=np.float64)
    labels = rng.integers(0, config.num_classes, batch)
    if config.is_moe and config.routing == "superclass":
        model.set_class_to_group(rng.integers(0, config.experts, config.num_classes))
    return model, images, labels


@settings(max_examples=4)
@given(tiny_configs(max_dim=6, channels=1, num_classes=3), st.data())
def test_whole_model_gradcheck_superclass_routing(config, data):
    """d(loss)/d(every parameter and pixel) of a full Mobile V-MoE: classification + router loss, through
    the gates into the router, for k = 1..E."""
    model, images, labels = _model_and_inputs(config, data, batch=2)
    with no_grad():
        margin = routing_margin(model(images).routing.router_logits.data, config.k)
    assume(margin > 1e-4)  # the finite-difference step must not change an expert choice
    module_gradcheck(model, lambda x: model.loss(model(x), labels).total, [images])


@settings(max_examples=3)
@given(tiny_configs(max_dim=6, channels=1, num_classes=3, routing="token"), st.data())
def test_whole_model_gradcheck_token_routing(config, data):
    """Token routing in training mode: noisy top-k (noise redrawn identically each call), capacity
    drops, importance and load losses."""
    config = config.replace(capacity_factor=0.5)  # small enough that some tokens are dropped
    model, images, labels = _model_and_inputs(config, data, batch=2)

    def loss(x):
        return model.loss(model(x, rng=np.random.default_rng(7)), labels).total

    with no_grad():
        out = model(images, rng=np.random.default_rng(7))
    for r in out.token_routing:
        noisy = r.router_logits.data + r.noise
        assume(routing_margin(noisy, config.k) > 1e-4)
    module_gradcheck(model, loss, [images])


@settings(max_examples=3)
@given(tiny_configs(max_dim=6, channels=1, num_classes=3), st.data())
def test_whole_dense_model_gradcheck(config, data):
    model, images, labels = _model_and_inputs(config.dense(), data, batch=2)
    module_gradcheck(model, lambda x: model.loss(model(x), labels, label_smoothing=0.1).total, [images])


# ---------------------------------------------------------------------------------------------------
# FLOPs: the analytic count equals the multiply-adds of the ops a forward pass records
# ---------------------------------------------------------------------------------------------------
def recorded_macs(output: Tensor) -> int:
    """Multiply-adds of every matrix-product op in the graph that produced `output`.

    Walks the recorded graph (each node knows its op and its inputs), so it counts what the forward
    pass really computed, including the attention products and only the experts that ran."""
    seen, stack, total = set(), [output], 0
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        shapes = [p.shape for p in node._parents]
        if node._op in ("linear", "expert_linear"):  # x (..., in) @ W (in, out) or (E, in, out)
            x, w = shapes[0], shapes[1]
            total += int(np.prod(x[:-1])) * w[-2] * w[-1]
        elif node._op == "expert_mlp":  # parents x (R, ..., D), gates (M,), fc1 (E, D, H), ...: M rows, two maps
            x, gates, w1 = shapes[0], shapes[1], shapes[2]
            total += gates[0] * int(np.prod(x[1:-1])) * 2 * w1[1] * w1[2]
        elif node._op == "attention":  # q (..., Nq, d), k (..., Nk, d), v (..., Nk, dv)
            q, k, v = shapes
            total += int(np.prod(q[:-2])) * q[-2] * k[-2] * (q[-1] + v[-1])
        elif node._op == "matmul":
            a, b = shapes
            total += int(np.prod(np.broadcast_shapes(a[:-2], b[:-2]))) * a[-2] * a[-1] * b[-1]
        stack.extend(node._parents)
    return total


@pytest.mark.parametrize(
    "changes",
    [
        dict(moe_layers=0),
        dict(moe_layers=2, k=1),
        dict(moe_layers=2, k=2),
        dict(moe_layers=3, k=2, router_input="mean_tokens"),
        dict(moe_layers=2, k=2, routing="token", eval_capacity_factor=10.0),
    ],
)
def test_counted_flops_equal_the_multiply_adds_performed(changes):
    config = ModelConfig(layers=3, dim=32, image_size=16, patch_size=4, num_classes=10, experts=4).replace(**changes)
    model = VisionTransformer(config, rng=0)
    model.eval()  # token routing: no noise, eval capacity (large enough that nothing is dropped)
    batch = 3
    out = model(images_for(config, batch))
    if config.routing == "token":
        assert all(r.dropped_fraction == 0 for r in out.token_routing)
    assert recorded_macs(out.logits) == batch * count(config).total_macs
    assert 2 * count(config).total_macs == count(config).flops


def test_moe_compute_is_sparse():
    """Images routed to 1 of 8 experts cost what the dense MLP costs: the experts see B·k rows, not B·E."""
    config = ModelConfig(layers=2, dim=32, image_size=16, patch_size=4, num_classes=10, experts=8, k=1, moe_layers=1)
    moe, dense = VisionTransformer(config, rng=0), VisionTransformer(config.dense(), rng=0)
    x = images_for(config, 4)
    router_macs = 4 * config.dim * config.experts
    assert recorded_macs(moe(x).logits) == recorded_macs(dense(x).logits) + router_macs


@pytest.mark.parametrize("routing", ["dense", "superclass", "token"])
def test_float32_model_matches_float64_and_keeps_its_dtype(routing):
    config = ModelConfig(layers=3, dim=32, image_size=16, patch_size=4, num_classes=10, experts=4, k=2)
    config = config.dense() if routing == "dense" else config.replace(routing=routing)
    m32 = VisionTransformer(config, rng=0)
    m64 = VisionTransformer(config, rng=0).to_dtype(np.float64)
    m32.eval(), m64.eval()
    x = images_for(config, 4)
    out32, out64 = m32(x), m64(x.astype(np.float64))
    assert out32.logits.dtype == np.float32 and out64.logits.dtype == np.float64
    np.testing.assert_allclose(out32.logits.data, out64.logits.data, rtol=1e-4, atol=1e-5)
    labels = np.arange(4)
    if routing == "superclass":
        m32.set_class_to_group(np.arange(10) % 4)
    m32.train()
    m32.loss(m32(x), labels).total.backward()
    assert all(p.grad.dtype == np.float32 for p in m32.parameters() if p.grad is not None)


def test_no_graph_is_recorded_under_no_grad():
    config = ModelConfig(layers=2, dim=32, image_size=16, patch_size=4, num_classes=10, experts=4)
    model = VisionTransformer(config, rng=0)
    with no_grad():
        out = model(images_for(config, 2))
    assert not out.logits.requires_grad and out.logits._parents == ()
