"""Parity with PyTorch: tinymoe's models against the shipped PyTorch mirror, `tinymoe.torch_model` (timm's
layout: Conv2d patch embedding, (out, in) Linear weights; per-image routing by gathering each image's k
experts' weights, token routing with fixed-capacity dispatch/combine tensors), loaded with a tinymoe
model's weights through the exported names and layouts of `tinymoe.export`. Logits, the routing
decisions, the loss and the gradient of every parameter must agree, for dense, superclass-routed MoE
(k = 1, 2), and token routing (with dropped tokens, with and without router noise).

Needs the `torch` extra (pip install -e ".[torch]", a CPU build of torch); skipped without it.
"""

import numpy as np
import pytest

torch = pytest.importorskip(
    "torch", reason="PyTorch is not installed: the parity tests need the torch extra, pip install -e '.[torch]'"
)

from tinymoe import torch_model  # noqa: E402
from tinymoe.export import export_params  # noqa: E402
from tinymoe.models import ModelConfig, VisionTransformer  # noqa: E402
from tinymoe.torch_model import split_experts  # noqa: E402


# ---------------------------------------------------------------------------------------------------
# the PyTorch side: the shipped mirror, tinymoe.torch_model, under the exported names and layouts
# (tinymoe.export.export_params, the table in tinymoe/export.py)
# ---------------------------------------------------------------------------------------------------
def to_torch_layout(name: str, value: np.ndarray, c: ModelConfig) -> dict[str, np.ndarray]:
    """One tinymoe parameter (or its gradient) -> the PyTorch parameter(s) it becomes."""
    return export_params({name: value}, c)


def load_into_torch(model: VisionTransformer, ref: torch_model.VisionTransformer):
    converted = {}
    for name, p in model.named_parameters():
        converted.update(to_torch_layout(name, p.data, model.config))
    own = split_experts(dict(ref.named_parameters()))  # stacked experts seen under their per-expert names
    assert set(converted) == set(own), (set(converted) ^ set(own))
    for name, value in converted.items():
        assert own[name].shape == value.shape, name
    ref.load_state_dict({n: torch.from_numpy(v) for n, v in converted.items()}, strict=True)
    for name, value in converted.items():  # the state-dict hooks put every value where its name says
        assert np.array_equal(own[name].detach().numpy(), value), name


# ---------------------------------------------------------------------------------------------------
# the comparisons
# ---------------------------------------------------------------------------------------------------
CASES = {
    "dense": dict(moe_layers=0),
    "superclass_k1": dict(k=1),
    "superclass_k2": dict(k=2),
    "superclass_k2_mean_tokens": dict(k=2, router_input="mean_tokens"),
    "token_k2_noise_off": dict(routing="token", k=2, router_noise=0.0, capacity_factor=0.6),
    "token_k1_noisy": dict(routing="token", k=1, capacity_factor=1.0),
}


def build(case, dtype):
    config = ModelConfig(layers=3, dim=16, heads=2, image_size=8, patch_size=4, num_classes=6, moe_layers=2,
                         experts=4).replace(**CASES[case])
    model = VisionTransformer(config, rng=0, dtype=dtype)
    rng = np.random.default_rng(1)
    for p in model.parameters():  # beyond the init scale, so that routing and every path matter
        p.data[...] = (0.4 * rng.standard_normal(p.shape)).astype(dtype)
    groups = np.array([0, 1, 2, 3, 1, 2])
    if config.is_moe and config.routing == "superclass":
        model.set_class_to_group(groups)
    ref = torch_model.VisionTransformer(config).to(torch.float64 if dtype == np.float64 else torch.float32)
    load_into_torch(model, ref)
    if config.is_moe and config.routing == "superclass":
        ref.set_class_to_group(groups)
    images = rng.standard_normal((6, 8, 8, 3)).astype(dtype)
    labels = np.array([0, 1, 2, 3, 4, 5])
    return config, model, ref, images, labels, groups


@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_loss_and_every_gradient_match_pytorch(case):
    torch.set_num_threads(1)
    config, model, ref, images, labels, groups = build(case, np.float64)
    out = model(images, rng=np.random.default_rng(5))
    terms = model.loss(out, labels)
    terms.total.backward()

    noises = [torch.from_numpy(r.noise) for r in out.token_routing] if config.router_noise > 0 else None
    if config.routing == "token":
        assert any(r.dropped_fraction > 0 for r in out.token_routing)  # the capacity path is exercised
    ref_out = ref(torch.from_numpy(images), noises)
    logits, router_logits = ref_out.logits, ref_out.router_logits
    loss = ref.loss(ref_out, torch.from_numpy(labels))
    loss.backward()
    if config.routing == "token":  # the same experts per token, and the same (token, choice) pairs dropped
        for ours, theirs in zip(out.token_routing, ref_out.token_routing, strict=True):
            np.testing.assert_array_equal(ours.experts, theirs.experts.numpy())
            np.testing.assert_array_equal(ours.kept, theirs.kept.numpy())
    elif config.is_moe:
        np.testing.assert_array_equal(out.routing.experts, ref_out.experts.numpy())

    np.testing.assert_allclose(out.logits.data, logits.detach().numpy(), rtol=1e-10, atol=1e-12)
    if router_logits is not None:
        np.testing.assert_allclose(out.routing.router_logits.data, router_logits.detach().numpy(), rtol=1e-10)
    assert terms.total.item() == pytest.approx(loss.item(), rel=1e-10)
    torch_grads = split_experts({n: p.grad for n, p in ref.named_parameters()})
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} has no gradient"
        for torch_name, ours in to_torch_layout(name, p.grad, config).items():
            theirs = torch_grads[torch_name]
            theirs = np.zeros_like(ours) if theirs is None else theirs.numpy()
            np.testing.assert_allclose(ours, theirs, rtol=1e-8, atol=1e-11, err_msg=f"gradient of {name} ({torch_name})")


@pytest.mark.parametrize("case", ["dense", "superclass_k2", "token_k2_noise_off"])
def test_float32_logits_match_pytorch(case):
    torch.set_num_threads(1)
    config, model, ref, images, labels, groups = build(case, np.float32)
    model.eval(), ref.eval()
    logits = ref(torch.from_numpy(images)).logits
    np.testing.assert_allclose(model(images).logits.data, logits.detach().numpy(), rtol=1e-4, atol=1e-5)
