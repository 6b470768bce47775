"""Real-shaped parity of the exported model: the logits of tinymoe, the shipped PyTorch model
(`tinymoe.torch_model`, loaded from the safetensors file), onnxruntime (the ONNX export, run at batch 1
and batch 32) and, for a dense model, timm's VisionTransformer agree to float32 rounding.

Shapes: 64 px images, patch 16 (17 tokens), 6 blocks of width 64, E = 10, 200 classes; the initial
weights plus noise on every parameter (biases and norms too), with the router and head weights 30x larger
so that routing decisions are not near-ties and the logits are not all near 0.

Needs the `parity` extra (torch, safetensors, onnx, onnxscript, onnxruntime); timm needs torchvision
too, which has no build for this machine's CPU torch 2.13.0, so its test skips here, saying so.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed: pip install -e '.[torch]'")
pytest.importorskip("safetensors", reason="safetensors is not installed: pip install -e '.[export]'")

from tinymoe import torch_model  # noqa: E402
from tinymoe.export import export, save_safetensors  # noqa: E402
from tinymoe.models import ModelConfig, build_model  # noqa: E402

CASES = {
    "dense": dict(moe_layers=0),
    "superclass_k1": dict(k=1),
    "superclass_k2": dict(k=2),
    "token_k2": dict(routing="token", k=2),  # eval capacity factor 2.0: ceil(2·2·17/10) = 7 slots per expert
}
BATCH = 32


def real_shaped(case):
    config = ModelConfig(layers=6, dim=64, image_size=64, patch_size=16, num_classes=200, **CASES[case])
    model = build_model(config, seed=0)
    rng = np.random.default_rng(3)
    for name, p in model.named_parameters():  # biases and norms off their 0/1 init; routers and head decisive
        scale = 30.0 if name.endswith("router.weight") or name == "head.weight" else 1.0
        p.data[...] = p.data * scale + (0.02 * rng.standard_normal(p.shape)).astype(np.float32)
    if config.is_moe and config.routing == "superclass":
        model.set_class_to_group(np.arange(200) % 10)
    model.eval()
    images = rng.standard_normal((BATCH, 64, 64, 3)).astype(np.float32)
    return model, images


def assert_float32_close(theirs, ours, what):
    """Agreement to float32 rounding: |diff| <= 2e-5 · (1 + the largest |logit|), and the same top-1."""
    scale = 1.0 + np.abs(ours).max()
    np.testing.assert_allclose(theirs, ours, rtol=0, atol=2e-5 * scale, err_msg=what)
    np.testing.assert_array_equal(theirs.argmax(1), ours.argmax(1), err_msg=what)


@pytest.mark.parametrize("case", sorted(CASES))
def test_tinymoe_torch_and_onnxruntime_logits_agree(case, tmp_path):
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed: pip install -e '.[export]'")
    pytest.importorskip("onnxscript", reason="onnxscript (the ONNX exporter's) is not installed: pip install -e '.[export]'")
    torch.set_num_threads(1)
    model, images = real_shaped(case)
    out = model(images)
    ours = out.logits.data

    tmodel = torch_model.from_safetensors(save_safetensors(model, tmp_path / "m.safetensors")).eval()
    with torch.no_grad():
        t_out = tmodel(torch.from_numpy(images))
    assert_float32_close(t_out.logits.numpy(), ours, f"{case}: torch_model vs tinymoe")
    if out.routing is not None:  # the same experts chosen for every image
        np.testing.assert_array_equal(t_out.experts.numpy(), out.routing.experts)
        assert len(np.unique(out.routing.experts[:, 0])) > 1  # more than one expert is exercised
    for ours_r, theirs_r in zip(out.token_routing, t_out.token_routing, strict=True):
        np.testing.assert_array_equal(theirs_r.experts.numpy(), ours_r.experts)
        np.testing.assert_array_equal(theirs_r.kept.numpy(), ours_r.kept)

    onnx_path = torch_model.export_onnx(tmodel, tmp_path / "m.onnx")
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    for batch in (1, BATCH):
        (logits,) = session.run(["logits"], {"images": images[:batch]})
        assert logits.shape == (batch, 200)
        assert_float32_close(logits, ours[:batch], f"{case}: onnxruntime at batch {batch} vs tinymoe")


def test_exported_torch_file_and_onnx_metadata(tmp_path):
    """--to torch writes a file torch_model.load reads back exactly; the ONNX file carries the config."""
    onnx = pytest.importorskip("onnx", reason="onnx is not installed: pip install -e '.[export]'")
    pytest.importorskip("onnxscript", reason="onnxscript is not installed: pip install -e '.[export]'")
    model = build_model(ModelConfig(layers=2, dim=16, heads=2, image_size=8, patch_size=4, num_classes=6,
                                    moe_layers=1, experts=3, k=2), seed=0)
    model.set_class_to_group(np.array([0, 1, 2, 0, 1, 2]))
    pt = export(model, "torch", tmp_path / "m.pt")
    loaded = torch_model.load(pt)
    assert loaded.config == model.config
    np.testing.assert_array_equal(loaded.class_to_group.numpy(), model.class_to_group)
    twin = torch_model.from_tinymoe(model)
    for name, value in twin.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    path = export(model, "onnx", tmp_path / "m.onnx")
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert props["format"] == "tinymoe-safetensors" and '"experts": 3' in props["config"]


def _import_timm():
    try:
        import timm  # noqa: F401
    except Exception as e:  # ImportError, or torchvision failing to load beside this torch build
        pytest.skip(f"timm cannot be imported here ({type(e).__name__}: {e}); it needs torchvision, which has "
                    "no build for the CPU torch 2.13.0 of this machine. Runs where timm and torchvision are "
                    "installed (e.g. torch 2.14.1 + torchvision 0.29.1)")


def test_dense_checkpoint_loads_into_timm_with_equal_logits(tmp_path):
    _import_timm()
    torch.set_num_threads(1)
    model, images = real_shaped("dense")
    tmodel = torch_model.from_safetensors(save_safetensors(model, tmp_path / "m.safetensors"))
    vit = torch_model.timm_vit(model.config).eval()
    vit.load_state_dict(tmodel.state_dict(), strict=True)  # timm's names, nothing missing or left over
    with torch.no_grad():
        logits = vit(torch.from_numpy(images).permute(0, 3, 1, 2)).numpy()  # timm takes NCHW
    assert_float32_close(logits, model(images).logits.data, "timm vs tinymoe")
