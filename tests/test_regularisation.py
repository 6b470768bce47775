"""Model-side regularisation and the study's training options: stochastic depth, expert dropout, soft
targets in the loss (mixup/cutmix), upcycling, teacher forcing; the exact-resume guarantee with all of
them on; and the command-line flags."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinymoe.checkpoint import load_checkpoint
from tinymoe.data import make_synthetic
from tinymoe.data.augment import mix_targets, one_hot
from tinymoe.lab import teacher_forced_forward, upcycle
from tinymoe.models import ConfigError, ModelConfig, VisionTransformer, build_model
from tinymoe.models.moe import ExpertMlps, plan_dispatch, top_k
from tinymoe.models.vit import Block, drop_path
from tinymoe import ops
from tinymoe.ops import expert_mlp
from tinymoe.tensor import Tensor
from tinymoe.training import TrainConfig, TrainingData
from tinymoe.testing.trainers import tiny_trainer

sys.path.insert(0, str(Path(__file__).resolve().parent / "models"))
from model_helpers import composed_expert_mlps, module_gradcheck  # noqa: E402


def _config(**changes) -> ModelConfig:
    values = dict(layers=3, dim=16, heads=2, image_size=8, patch_size=4, num_classes=6, moe_layers=2, experts=3, k=1)
    return ModelConfig(**(values | changes))


def _randomized(config: ModelConfig, seed: int = 0) -> VisionTransformer:
    model = VisionTransformer(config, rng=seed, dtype=np.float64)
    rng = np.random.default_rng(seed + 100)
    for p in model.parameters():  # away from the initial values, so every path carries signal
        p.data[...] = 0.3 * rng.standard_normal(p.shape)
    return model


def _images(config: ModelConfig, batch: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, config.image_size, config.image_size, 3))


GROUPS = np.array([0, 0, 1, 1, 2, 2])  # class -> superclass for the 6-class configs


# --------------------------------------------------------------------------------------------------
# Stochastic depth
# --------------------------------------------------------------------------------------------------
def test_drop_path_rates_grow_linearly_over_depth():
    config = _config(layers=5, drop_path=0.2)
    np.testing.assert_allclose(config.drop_path_rates(), [0.0, 0.05, 0.1, 0.15, 0.2])
    model = VisionTransformer(config, rng=0)
    assert [b.drop_rate for b in model.blocks] == config.drop_path_rates()
    assert _config(layers=1, moe_layers=1, drop_path=0.3).drop_path_rates() == [0.0]
    with pytest.raises(ConfigError, match="drop_path"):
        _config(drop_path=1.0)


def test_drop_path_keeps_or_zeroes_whole_images_with_the_right_expectation():
    rate = 0.25
    branch = Tensor(np.ones((40000, 2, 3), dtype=np.float32))
    out = drop_path(branch, rate, True, np.random.default_rng(0)).data
    assert out.dtype == np.float32
    per_image = out[:, 0, 0]
    assert np.all(out == per_image[:, None, None])  # one decision per image
    assert set(np.unique(per_image)) == {0.0, np.float32(1 / (1 - rate))}
    # E[scale] = 1; the std of the mean is sqrt(p / (1 - p) / N) = 0.0029: allow 5 of them.
    assert abs(per_image.mean() - 1.0) < 0.015
    assert abs((per_image == 0).mean() - rate) < 0.015


def test_drop_path_is_the_identity_in_eval_and_at_rate_zero_and_draws_nothing():
    branch = Tensor(np.random.default_rng(0).standard_normal((4, 3)))
    rng = np.random.default_rng(1)
    state = rng.bit_generator.state
    assert drop_path(branch, 0.5, False, rng) is branch
    assert drop_path(branch, 0.0, True, rng) is branch
    assert rng.bit_generator.state == state
    with pytest.raises(ValueError, match="rng"):
        drop_path(branch, 0.5, True, None)


def test_a_model_with_drop_path_and_expert_dropout_in_eval_equals_the_plain_model():
    plain = _randomized(_config())
    regularised = VisionTransformer(_config(drop_path=0.5, expert_dropout=0.5), rng=0, dtype=np.float64)
    regularised.load_state_dict(plain.state_dict())
    x = _images(plain.config, 4)
    plain.eval(), regularised.eval()
    np.testing.assert_array_equal(regularised(x, rng=np.random.default_rng(3)).logits.data, plain(x).logits.data)
    regularised.train(), plain.train()
    # In training the masks change the output, and a fixed generator fixes the masks.
    a = regularised(x, rng=np.random.default_rng(3)).logits.data
    b = regularised(x, rng=np.random.default_rng(3)).logits.data
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, plain(x).logits.data)


def _mixed_mask_seed(batch: int, rate: float, draws: int) -> int:
    """A seed whose first `draws` per-image keep decisions include both kept and dropped images."""
    for seed in range(1000):
        keep = np.random.default_rng(seed).random(batch * draws).reshape(draws, batch) >= rate
        if all(row.any() and not row.all() for row in keep):
            return seed
    raise AssertionError("no seed found")


@settings(max_examples=6)
@given(seed=st.integers(0, 2**32 - 1))
def test_block_with_drop_path_gradcheck_with_a_fixed_mask(seed):
    rng = np.random.default_rng(seed)
    block = Block(4, 2, hidden=8, eps=1e-6, rng=rng, dtype=np.float64, drop_rate=0.5)
    for p in block.parameters():
        p.data[...] += 0.3 * rng.standard_normal(p.shape)
    x = rng.standard_normal((3, 2, 4))
    mask_seed = _mixed_mask_seed(3, 0.5, draws=2)  # attention branch and MLP branch both partly dropped
    module_gradcheck(block, lambda x: block(x, rng=np.random.default_rng(mask_seed)), [x])


# --------------------------------------------------------------------------------------------------
# Expert dropout
# --------------------------------------------------------------------------------------------------
def _experts_and_dispatch(seed: int, tokens: int = 2):
    rng = np.random.default_rng(seed)
    experts = ExpertMlps(3, 4, 6, rng=rng, dtype=np.float64)
    for p in experts.parameters():
        p.data[...] = 0.4 * rng.standard_normal(p.shape)
    choice = np.array([[0, 2], [1, 0], [2, 1], [0, 1]])  # 4 rows, k = 2: every expert gets rows
    dispatch = plan_dispatch(choice, 3)
    x = rng.standard_normal((4, tokens, 4))
    gates = rng.uniform(0.1, 0.9, 8)
    return experts, dispatch, x, gates


def test_expert_dropout_draws_one_mask_for_the_hidden_activations_and_is_off_at_zero():
    experts, dispatch, x, gates = _experts_and_dispatch(0)
    plain = experts(Tensor(x), dispatch, Tensor(gates)).data
    dropped = experts(Tensor(x), dispatch, Tensor(gates), dropout=0.5, rng=np.random.default_rng(7)).data
    assert not np.allclose(dropped, plain)
    # The same mask by hand: keep = u >= p for u ~ U(0, 1) in float32, one per (dispatched row, token, hidden).
    keep = np.random.default_rng(7).random((dispatch.source.size, 2, 6), dtype=np.float32) >= 0.5
    by_hand = composed_expert_mlps(experts, Tensor(x), dispatch, Tensor(gates), hidden_mask=keep * 2.0).data
    np.testing.assert_allclose(dropped, by_hand, rtol=1e-12)
    # An all-ones mask is the fused op's output.
    ones = np.ones((dispatch.source.size, 2, 6))
    np.testing.assert_allclose(composed_expert_mlps(experts, Tensor(x), dispatch, Tensor(gates), hidden_mask=ones).data,
                               plain, rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="rng"):
        experts(Tensor(x), dispatch, Tensor(gates), dropout=0.5)


@settings(max_examples=6)
@given(seed=st.integers(0, 2**32 - 1))
def test_expert_dropout_gradcheck_with_a_fixed_mask(seed):
    experts, dispatch, x, gates = _experts_and_dispatch(seed)
    keep = np.random.default_rng(seed).random((dispatch.source.size, 2, 6)) >= 0.3
    mask = keep / 0.7
    def fused(x, g):  # the model's path: the fused op with the mask
        gathered = ops.take(g, dispatch.choice, axis=0)
        return expert_mlp(x, gathered, dispatch.source, dispatch.group_sizes, experts.fc1_weight, experts.fc1_bias,
                          experts.fc2_weight, experts.fc2_bias, hidden_mask=mask)

    module_gradcheck(experts, fused, [x, gates])
    module_gradcheck(experts, lambda x, g: composed_expert_mlps(experts, x, dispatch, g, hidden_mask=mask), [x, gates])


# --------------------------------------------------------------------------------------------------
# Soft targets in the loss (mixup / cutmix)
# --------------------------------------------------------------------------------------------------
def _log_softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def test_one_hot_soft_targets_give_the_integer_label_loss():
    model = _randomized(_config())
    model.set_class_to_group(GROUPS)
    x = _images(model.config, 5)
    labels = np.array([0, 3, 5, 1, 2])
    out = model(x)
    hard = model.loss(out, labels, label_smoothing=0.1).as_dict()
    soft = model.loss(out, one_hot(labels, 6, dtype=np.float64), label_smoothing=0.1).as_dict()
    assert hard.keys() == soft.keys()
    for name in hard:
        assert soft[name] == pytest.approx(hard[name], rel=1e-12), name


def test_mixed_targets_smooth_the_mixture_and_mix_the_superclasses():
    model = _randomized(_config())
    model.set_class_to_group(GROUPS)
    x = _images(model.config, 4)
    labels, partner = np.array([0, 2, 4, 1]), np.array([1, 2, 3, 0])
    targets = mix_targets(labels, partner, 0.7, 6).astype(np.float64)
    out = model(x)
    terms = model.loss(out, targets, label_smoothing=0.1)
    smoothed = 0.9 * targets + 0.1 / 6
    expected_cls = -(smoothed * _log_softmax(out.logits.data)).sum(axis=1).mean()
    # Image b mixes 0.7 of its class with 0.3 of image partner[b]'s class; superclasses = class // 2.
    # Image 0: 0.7 class 0 (superclass 0) + 0.3 class 2 (superclass 1).
    # Image 3: 0.7 class 1 + 0.3 class 0, both superclass 0 -> all of superclass 0.
    a, b = float(np.float32(0.7)), float(np.float32(0.3))  # mix_targets works in float32
    router_targets = np.array([[a, b, 0], [0, a, b], [b, 0, a], [a + b, 0, 0]])
    expected_router = -(router_targets * _log_softmax(out.routing.router_logits.data)).sum(axis=1).mean()
    assert terms.classification == pytest.approx(expected_cls, rel=1e-10)
    assert terms.router == pytest.approx(expected_router, rel=1e-10)
    assert terms.total.item() == pytest.approx(expected_cls + 0.3 * expected_router, rel=1e-10)


# --------------------------------------------------------------------------------------------------
# Upcycling
# --------------------------------------------------------------------------------------------------
def _dense(config: ModelConfig, seed: int = 0) -> VisionTransformer:
    return _randomized(config.dense(), seed)


@settings(max_examples=5)
@given(seed=st.integers(0, 99), router_input=st.sampled_from(["class_token", "mean_tokens"]))
def test_upcycled_moe_with_k_equal_to_E_computes_the_dense_function(seed, router_input):
    """All experts equal the dense MLP and the gates of all E experts sum to 1: same output."""
    config = _config(k=3, router_input=router_input)
    dense = _dense(config, seed)
    moe = upcycle(dense, config, seed=seed + 1)
    x = _images(config, 4, seed)
    out = moe(x)
    np.testing.assert_allclose(out.routing.gates.data.sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(out.logits.data, dense(x).logits.data, rtol=1e-9, atol=1e-11)


def test_upcycled_moe_with_k1_is_the_dense_model_with_gate_scaled_mlps():
    """With k = 1 the chosen expert's output is multiplied by its gate p < 1: each MoE block computes
    x + MLP_dense(LN(x)) · gate, which we rebuild from the dense model's own modules."""
    config = _config(k=1)
    dense = _dense(config, 3)
    moe = upcycle(dense, config, seed=4)
    x = _images(config, 5)
    out = moe(x)
    tokens = dense.embed(x)
    for block in list(dense.blocks)[: config.dense_layers]:
        tokens = block(tokens)
    gates = moe.router(tokens).gates.data[:, 0]  # the router reads the same tokens in both models
    assert np.all(gates < 1)
    for block in list(dense.blocks)[config.dense_layers :]:
        tokens = tokens + block.attn(block.norm1(tokens))
        tokens = tokens + block.mlp(block.norm2(tokens)) * gates[:, None, None]
    logits = dense.head(dense.norm(tokens[:, 0])).data
    np.testing.assert_allclose(out.logits.data, logits, rtol=1e-9, atol=1e-11)
    np.testing.assert_array_equal(out.routing.gates.data[:, 0], gates)


@settings(max_examples=5)
@given(seed=st.integers(0, 99))
def test_an_upcycled_one_expert_moe_trains_exactly_like_the_dense_model(seed):
    """E = k = 1: the gate is softmax over one expert = 1 and the router loss is -log 1 = 0, so the
    upcycled MoE has the dense model's loss and every shared weight gets the dense model's gradient; the
    lone expert gets its MLP's. The study uses this as "dense, trained on for as long as the upcycled MoE"."""
    config = _config(experts=1, k=1)
    dense = _dense(config, seed)
    moe = upcycle(dense, config, seed=seed + 1)
    moe.set_class_to_group(np.zeros(config.num_classes, dtype=np.int64))  # one superclass holding every class
    x, labels = _images(config, 4, seed), np.random.default_rng(seed).integers(0, config.num_classes, 4)
    terms = {}
    for name, model in (("dense", dense), ("moe", moe)):
        terms[name] = model.loss(model(x), labels, label_smoothing=0.1)
        terms[name].total.backward()
    assert terms["moe"].router == pytest.approx(0.0, abs=1e-12)
    assert terms["moe"].total.item() == pytest.approx(terms["dense"].total.item(), rel=1e-12)
    grads = {name: p.grad for name, p in moe.named_parameters()}
    for name, p in dense.named_parameters():
        if name in grads:
            np.testing.assert_allclose(grads[name], p.grad, rtol=1e-9, atol=1e-12, err_msg=name)
    for i in range(config.dense_layers, config.layers):
        np.testing.assert_allclose(grads[f"blocks.{i}.experts.fc1_weight"][0], dense.blocks[i].mlp.fc1.weight.grad,
                                   rtol=1e-9, atol=1e-12)


def test_upcycle_copies_shared_weights_and_experts_and_leaves_the_router_fresh():
    config = _config(experts=4)
    dense = _dense(config, 5)
    moe = upcycle(dense, config, seed=6)
    fresh = VisionTransformer(config, rng=6, dtype=np.float64)
    d, m, f = dense.state_dict(), moe.state_dict(), fresh.state_dict()
    for name, value in m.items():
        if name in d:
            np.testing.assert_array_equal(value, d[name], err_msg=name)
    for i in range(config.dense_layers, config.layers):
        for e in range(4):
            np.testing.assert_array_equal(m[f"blocks.{i}.experts.fc1_weight"][e], d[f"blocks.{i}.mlp.fc1.weight"])
            np.testing.assert_array_equal(m[f"blocks.{i}.experts.fc2_bias"][e], d[f"blocks.{i}.mlp.fc2.bias"])
    np.testing.assert_array_equal(m["router.weight"], f["router.weight"])
    token = upcycle(dense, config.replace(routing="token"), seed=0)  # token routing: per-block routers
    assert "blocks.2.router.weight" in token.state_dict()


def test_upcycle_refuses_a_different_backbone_or_a_dense_target():
    dense = build_model(_config().dense(), seed=0)
    with pytest.raises(ValueError, match=r"dim: dense 16 vs MoE 32"):
        upcycle(dense, _config(dim=32), seed=0)
    with pytest.raises(ValueError, match="moe_layers > 0"):
        upcycle(dense, _config().dense(), seed=0)
    with pytest.raises(ValueError, match="dense"):
        upcycle(build_model(_config(), seed=0), _config(), seed=0)


# --------------------------------------------------------------------------------------------------
# Teacher forcing
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 2])
def test_teacher_forcing_routes_every_training_image_to_its_superclass(k):
    model = _randomized(_config(k=k))
    model.set_class_to_group(GROUPS)
    x = _images(model.config, 12)
    labels = np.arange(12) % 6
    model.train()
    out = teacher_forced_forward(model, x, labels, model.rng)
    router_choice = top_k(out.routing.router_logits.data, 3)
    assert np.any(router_choice[:, 0] != GROUPS[labels])  # the router alone would route some elsewhere
    np.testing.assert_array_equal(out.routing.experts[:, 0], GROUPS[labels])
    probs = out.routing.probs.data
    np.testing.assert_array_equal(out.routing.gates.data, probs[np.arange(12)[:, None], out.routing.experts])
    if k == 2:  # the second choice: the router's best expert other than the forced one
        others = [[e for e in row if e != g][0] for row, g in zip(router_choice, GROUPS[labels])]
        np.testing.assert_array_equal(out.routing.experts[:, 1], others)
    np.testing.assert_array_equal(out.routing.counts, np.bincount(out.routing.experts.ravel(), minlength=3))
    model.eval()  # the router decides in evaluation, labels or not
    routed = teacher_forced_forward(model, x, labels, model.rng).routing
    np.testing.assert_array_equal(routed.experts, top_k(routed.router_logits.data, k))


def test_teacher_forcing_needs_a_map_and_superclass_routing(tmp_path):
    from tinymoe.pipeline import PipelineOptions, load_splits, run_pipeline

    model = _randomized(_config())
    x = _images(model.config, 2)
    model.train()
    with pytest.raises(ValueError, match="set_class_to_group"):
        teacher_forced_forward(model, x, np.array([0, 1]), model.rng)
    model.set_class_to_group(GROUPS)  # soft targets (mixup) route by their dominant label
    soft = teacher_forced_forward(model, x, one_hot(np.array([0, 1]), 6) * 0.6 + 0.4 / 6, model.rng).routing
    np.testing.assert_array_equal(soft.experts[:, 0], GROUPS[[0, 1]])
    token = _randomized(_config(routing="token"))
    token.train()
    with pytest.raises(ValueError, match="per-image routing"):
        teacher_forced_forward(token, x, np.array([0, 1]), token.rng)
    splits = load_splits("synthetic", experts=3, synthetic_per_class=4, synthetic_size=8)
    for routing in ("token", "learned"):
        opts = PipelineOptions(out=tmp_path, model=_config(routing=routing), teacher_forcing=True)
        with pytest.raises(ConfigError, match="teacher forcing routes each image by its superclass"):
            run_pipeline(splits, opts, log=lambda *_: None)
    dense = _config(expert_dropout=0.2, drop_path=0.1).dense()
    assert (dense.expert_dropout, dense.drop_path) == (0.0, 0.1)


# --------------------------------------------------------------------------------------------------
# Training: exact resume with everything on
# --------------------------------------------------------------------------------------------------
TINY = ModelConfig(layers=2, dim=16, heads=2, image_size=16, patch_size=8, num_classes=6, moe_layers=1, experts=3)
REGULARISED = dict(randaugment_ops=2, random_erase=0.25, mixup_alpha=0.8, cutmix_alpha=1.0)


@pytest.fixture(scope="module")
def data():
    train = make_synthetic(n_groups=3, classes_per_group=2, images_per_class=24, size=16, seed=1)
    val = make_synthetic(n_groups=3, classes_per_group=2, images_per_class=6, size=16, seed=1, split="val")
    return train, TrainingData(train.images, train.labels, eval_images=val.images, eval_labels=val.labels)


def _trainer(tmp, data, config, **cfg):
    train, training_data = data
    return tiny_trainer(tmp, train, config, training_data, **cfg)


@pytest.mark.parametrize("config, forward", [
    (TINY.replace(drop_path=0.2, expert_dropout=0.2), teacher_forced_forward),
    (TINY.replace(routing="token", drop_path=0.2, expert_dropout=0.2), None),
], ids=["superclass-teacher-forced", "token"])
def test_stopping_and_resuming_with_regularisation_gives_the_same_parameters(tmp_path, data, config, forward):
    straight = _trainer(tmp_path / "a", data, config, forward=forward, **REGULARISED)
    straight.run()
    first = _trainer(tmp_path / "b", data, config, forward=forward, max_steps=13, **REGULARISED)  # inside epoch 2
    assert not first.run().completed
    second = _trainer(tmp_path / "b", data, config, forward=forward, **REGULARISED)
    assert second.run(resume=True).completed
    a, b = straight.model.state_dict(), second.model.state_dict()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    # ... and the options did something: without them the same run ends elsewhere.
    plain = _trainer(tmp_path / "c", data, config.replace(drop_path=0.0, expert_dropout=0.0), max_steps=3)
    plain.run()
    regularised = _trainer(tmp_path / "d", data, config, max_steps=3, **REGULARISED)
    regularised.run()
    assert not np.array_equal(plain.model.state_dict()["head.weight"], regularised.model.state_dict()["head.weight"])


def test_resuming_with_another_augmentation_is_refused(tmp_path, data):
    from tinymoe.checkpoint import CheckpointError

    _trainer(tmp_path, data, TINY, max_steps=1).run()
    with pytest.raises(CheckpointError, match=r"differs in \['mixup_alpha'\]"):
        _trainer(tmp_path, data, TINY, mixup_alpha=0.8).run(resume=True)


# --------------------------------------------------------------------------------------------------
# The command line
# --------------------------------------------------------------------------------------------------
def test_cli_flags_reach_the_configs():
    from tinymoe.train import build_parser, model_config, train_config

    args = build_parser().parse_args([
        "--randaugment", "2", "--randaugment-magnitude", "7", "--reprob", "0.25", "--mixup", "0.8", "--cutmix", "1.0",
        "--mixup-prob", "0.9", "--mixup-switch-prob", "0.3", "--drop-path", "0.1", "--expert-dropout", "0.2",
        "--teacher-forcing", "--upcycle", "--k", "2", "--experts", "6", "--router-input", "mean_tokens",
    ])
    train, model = train_config(args), model_config(args, num_classes=200, image_size=64)
    assert (train.randaugment_ops, train.randaugment_magnitude, train.random_erase) == (2, 7.0, 0.25)
    assert (train.mixup_alpha, train.cutmix_alpha, train.mix_prob, train.mix_switch_prob) == (0.8, 1.0, 0.9, 0.3)
    assert (model.drop_path, model.expert_dropout, args.teacher_forcing) == (0.1, 0.2, True)
    assert (model.k, model.experts, model.router_input) == (2, 6, "mean_tokens")
    assert args.upcycle
    defaults = build_parser().parse_args([])
    # One set of defaults: the command line's recipe is the library's TrainConfig() and ModelConfig().
    assert train_config(defaults) == TrainConfig()
    plain = model_config(defaults, num_classes=200, image_size=64)
    assert plain == ModelConfig(num_classes=200, image_size=64)
    assert plain.init == "pytorch" and plain.patch_size == 16 and TrainConfig().clip_grad is None
    assert (plain.drop_path, plain.expert_dropout, defaults.teacher_forcing, defaults.upcycle) == (0.0, 0.0, False, False)
    assert build_parser().parse_args(["--random-erase", "0.1"]).random_erase == 0.1


def test_cli_runs_the_protocol_with_every_option_and_upcycles(tmp_path, monkeypatch, capsys):
    from tinymoe.train import main

    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        monkeypatch.setenv(var, "1")  # main() sets these; monkeypatch restores them afterwards
    code = main(["--data", "synthetic", "--layers", "2", "--dim", "16", "--heads", "2", "--experts", "3",
                 "--moe-layers", "1", "--epochs", "1", "-b", "32", "--out", str(tmp_path), "--threads", "1",
                 "--randaugment", "2", "--reprob", "0.25", "--mixup", "0.8", "--cutmix", "1.0", "--drop-path", "0.1",
                 "--expert-dropout", "0.1", "--teacher-forcing", "--upcycle"])
    assert code == 0, capsys.readouterr().err
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["moe"]["upcycled"] is True
    assert results["moe"]["teacher_forcing"] and results["moe"]["config"]["expert_dropout"] == 0.1
    assert results["dense"]["config"]["drop_path"] == 0.1 and results["dense"]["config"]["expert_dropout"] == 0.0
    assert results["train_config"]["mixup_alpha"] == 0.8 and results["train_config"]["randaugment_ops"] == 2
    moe = load_checkpoint(tmp_path / "moe-superclass" / "model.npz")
    assert moe.metadata["upcycled_from"].endswith("dense/model.npz")
    assert moe.metadata["train_config"]["random_erase"] == 0.25
    assert "upcycled" in capsys.readouterr().out

    assert main(["--data", "synthetic", "--mixup", "-1", "--threads", "1"]) == 2
    assert "mixup_alpha" in capsys.readouterr().err
    code = main(["--data", "synthetic", "--layers", "2", "--dim", "16", "--heads", "2", "--experts", "3",
                 "--moe-layers", "1", "--model", "moe", "--upcycle", "--superclasses",
                 str(tmp_path / "superclasses.json"), "--out", str(tmp_path / "nodense"), "--threads", "1"])
    assert code == 2 and "needs the trained dense model" in capsys.readouterr().err
