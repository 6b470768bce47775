"""tinymoe.export: safetensors under timm's names, the exact reverse import, and the command line.

Needs the `export` extra (safetensors; part of the `parity` extra CI installs); skipped without it.
"""

import json

import numpy as np
import pytest

pytest.importorskip("safetensors", reason="safetensors is not installed: pip install -e '.[export]'")
from safetensors import safe_open  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402

from tinymoe.checkpoint import save_checkpoint  # noqa: E402
from tinymoe.export import (  # noqa: E402
    ExportError, export_params, import_params, load_safetensors, main, save_safetensors,
)
from tinymoe.models import ModelConfig, build_model  # noqa: E402

TINY = dict(layers=3, dim=16, heads=2, image_size=8, patch_size=4, num_classes=6, experts=4)
VARIANTS = {
    "dense": dict(moe_layers=0),
    "superclass_k2": dict(k=2),
    "token": dict(routing="token"),
    "random": dict(routing="random"),
    "learned_mean_tokens": dict(routing="learned", router_input="mean_tokens"),
}


def tiny(variant, dtype=np.float32):
    model = build_model(ModelConfig(**TINY, **VARIANTS[variant]), seed=1, dtype=dtype)
    if model.config.is_moe and model.config.routing == "superclass":
        model.set_class_to_group(np.array([0, 1, 2, 3, 1, 2]))
    return model


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_safetensors_round_trip_is_bit_identical(tmp_path, variant, dtype):
    model = tiny(variant, dtype)
    path = save_safetensors(model, tmp_path / "m.safetensors")
    back = load_safetensors(path)
    assert back.config == model.config
    ours, theirs = model.state_dict(), back.state_dict()
    assert set(ours) == set(theirs)
    for name in ours:
        assert theirs[name].dtype == ours[name].dtype, name
        assert np.array_equal(theirs[name], ours[name]), name
    if model.class_to_group is None:
        assert back.class_to_group is None
    else:
        np.testing.assert_array_equal(back.class_to_group, model.class_to_group)
    images = np.random.default_rng(0).standard_normal((2, 8, 8, 3)).astype(dtype)
    model.eval(), back.eval()
    assert np.array_equal(model(images).logits.data, back(images).logits.data)


def test_metadata_holds_the_config_and_the_superclass_map(tmp_path):
    model = tiny("superclass_k2")
    path = save_safetensors(model, tmp_path / "m.safetensors")
    with safe_open(str(path), framework="numpy") as f:
        meta = f.metadata()
    assert meta["format"] == "tinymoe-safetensors" and meta["version"] == "1"
    assert json.loads(meta["config"]) == model.config.to_dict()
    assert json.loads(meta["class_to_group"]) == [0, 1, 2, 3, 1, 2]


def test_exported_names_and_shapes_are_timms():
    """The table in tinymoe/export.py: timm's vit_* names and PyTorch (out, in) layouts; experts per expert."""
    model = tiny("superclass_k2")
    c = model.config
    d, h, e, p = c.dim, c.hidden_dim, c.experts, c.patch_size
    out = export_params(model.state_dict(), c)
    expected = {
        "patch_embed.proj.weight": (d, 3, p, p), "patch_embed.proj.bias": (d,),
        "cls_token": (1, 1, d), "pos_embed": (1, c.num_tokens, d),
        "norm.weight": (d,), "norm.bias": (d,), "head.weight": (6, d), "head.bias": (6,),
        "router.weight": (e, d),
    }
    for i in range(c.layers):
        b = f"blocks.{i}"
        expected.update({f"{b}.norm1.weight": (d,), f"{b}.norm1.bias": (d,), f"{b}.norm2.weight": (d,),
                         f"{b}.norm2.bias": (d,), f"{b}.attn.qkv.weight": (3 * d, d), f"{b}.attn.qkv.bias": (3 * d,),
                         f"{b}.attn.proj.weight": (d, d), f"{b}.attn.proj.bias": (d,)})
        mlps = [f"{b}.mlp"] if not c.is_moe_block(i) else [f"{b}.experts.{j}" for j in range(e)]
        for m in mlps:
            expected.update({f"{m}.fc1.weight": (h, d), f"{m}.fc1.bias": (h,), f"{m}.fc2.weight": (d, h),
                             f"{m}.fc2.bias": (d,)})
    assert {n: v.shape for n, v in out.items()} == expected
    sd = {name: p.data for name, p in model.named_parameters()}  # (the class map, a buffer, is metadata)
    assert set(model.state_dict()) - set(sd) <= {"class_to_group"}
    # the layouts, spot-checked against the tinymoe arrays they come from
    np.testing.assert_array_equal(out["blocks.2.experts.3.fc1.weight"], sd["blocks.2.experts.fc1_weight"][3].T)
    np.testing.assert_array_equal(out["blocks.0.attn.qkv.weight"], sd["blocks.0.attn.qkv.weight"].T)
    conv = out["patch_embed.proj.weight"]  # (D, c, py, px): weight of pixel (py, px), channel ch
    np.testing.assert_array_equal(conv[:, 2, 1, 3], sd["patch_embed.weight"][(1 * p + 3) * 3 + 2])
    assert all(v.flags["C_CONTIGUOUS"] for v in out.values())
    back = import_params(out, c)
    assert all(np.array_equal(back[n], sd[n]) for n in sd) and set(back) == set(sd)


def test_a_file_that_is_not_an_export_is_refused(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"x": np.zeros(3, np.float32)}, str(path))
    with pytest.raises(ExportError, match="not an exported tinymoe model"):
        load_safetensors(path)


def test_missing_expert_is_named(tmp_path):
    model = tiny("superclass_k2")
    tensors = export_params(model.state_dict(), model.config)
    del tensors["blocks.1.experts.2.fc1.weight"]
    with pytest.raises(ExportError, match=r"blocks.1.experts.fc1_weight: expected experts 0..3"):
        import_params(tensors, model.config)


def test_cli_exports_a_checkpoint_to_safetensors(tmp_path, capsys):
    model = tiny("token")
    ckpt = save_checkpoint(tmp_path / "m.npz", model)
    out = tmp_path / "out" / "m.safetensors"
    assert main([str(ckpt), "--to", "safetensors", "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    back = load_safetensors(out)
    assert all(np.array_equal(back.state_dict()[n], v) for n, v in model.state_dict().items())
    assert main([str(tmp_path / "missing.npz"), "--to", "safetensors", "--out", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err
