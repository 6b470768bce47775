"""Export a tinymoe checkpoint to safetensors (timm's names), PyTorch or ONNX, and import it back.

    python -m tinymoe.export run/moe.npz --to safetensors --out moe.safetensors   # NumPy only (+ safetensors)
    python -m tinymoe.export run/moe.npz --to torch --out moe.pt                  # + torch
    python -m tinymoe.export run/moe.npz --to onnx --out moe.onnx                 # + torch, onnx, onnxscript

    from tinymoe.export import save_safetensors, load_safetensors
    save_safetensors(model, "moe.safetensors")
    model = load_safetensors("moe.safetensors")     # a tinymoe VisionTransformer, bit-identical weights

The safetensors file is the neutral format: written from NumPy (`safetensors.numpy`), every tensor
float32 (or the model's dtype) in PyTorch's layout and under timm's `vit_*` names, so a dense
checkpoint loads straight into timm's VisionTransformer (act_layer="gelu_tanh": tinymoe's GELU is the
tanh approximation; timm takes NCHW images, tinymoe NHWC) and the MoE one into
`tinymoe.torch_model.VisionTransformer`. Its string metadata holds:

    format         "tinymoe-safetensors"        version  "1"
    config         the ModelConfig as JSON (every field; `ModelConfig.from_dict` reads it back)
    class_to_group JSON list, the class -> superclass (expert group) map, when the model has one

Name and layout table (tinymoe name -> exported name; D = dim, H = mlp_ratio·D, E = experts,
C = classes, N = patches + 1, p = patch_size, c = channels; every Linear weight is transposed from
tinymoe's (in, out) to PyTorch's (out, in)):

  tinymoe                         shape        exported (timm) name                  shape
  patch_embed.weight              (p·p·c, D)   patch_embed.proj.weight               (D, c, p, p)  Conv2d, NCHW
  patch_embed.bias                (D,)         patch_embed.proj.bias                 (D,)
  cls_token                       (1, 1, D)    cls_token                             (1, 1, D)
  pos_embed                       (1, N, D)    pos_embed                             (1, N, D)
  blocks.{i}.norm1.weight/.bias   (D,)         blocks.{i}.norm1.weight/.bias         (D,)
  blocks.{i}.attn.qkv.weight      (D, 3D)      blocks.{i}.attn.qkv.weight            (3D, D)   rows (q|k|v) x head x Dh
  blocks.{i}.attn.qkv.bias        (3D,)        blocks.{i}.attn.qkv.bias              (3D,)
  blocks.{i}.attn.proj.weight     (D, D)       blocks.{i}.attn.proj.weight           (D, D)
  blocks.{i}.attn.proj.bias       (D,)         blocks.{i}.attn.proj.bias             (D,)
  blocks.{i}.norm2.weight/.bias   (D,)         blocks.{i}.norm2.weight/.bias         (D,)
  blocks.{i}.mlp.fc1.weight       (D, H)       blocks.{i}.mlp.fc1.weight             (H, D)    dense blocks
  blocks.{i}.mlp.fc1.bias         (H,)         blocks.{i}.mlp.fc1.bias               (H,)
  blocks.{i}.mlp.fc2.weight       (H, D)       blocks.{i}.mlp.fc2.weight             (D, H)
  blocks.{i}.mlp.fc2.bias         (D,)         blocks.{i}.mlp.fc2.bias               (D,)
  blocks.{i}.experts.fc1_weight   (E, D, H)    blocks.{i}.experts.{e}.fc1.weight     (H, D)    MoE blocks, one
  blocks.{i}.experts.fc1_bias     (E, H)       blocks.{i}.experts.{e}.fc1.bias       (H,)      set per expert
  blocks.{i}.experts.fc2_weight   (E, H, D)    blocks.{i}.experts.{e}.fc2.weight     (D, H)    e = 0 .. E-1
  blocks.{i}.experts.fc2_bias     (E, D)       blocks.{i}.experts.{e}.fc2.bias       (D,)
  router.weight                   (D, E)       router.weight                         (E, D)    per-image router, no bias
  blocks.{i}.router.weight        (D, E)       blocks.{i}.router.weight              (E, D)    token routing, no bias
  norm.weight/.bias               (D,)         norm.weight/.bias                     (D,)
  head.weight                     (D, C)       head.weight                           (C, D)
  head.bias                       (C,)         head.bias                             (C,)

Only copies, transposes and reshapes: `import_params(export_params(p, c), c)` gives back p bit for bit.
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import sys
from pathlib import Path

import numpy as np

from tinymoe.models.config import ModelConfig

FORMAT = "tinymoe-safetensors"
VERSION = "1"
TARGETS = ("safetensors", "torch", "onnx")

_EXPERT = re.compile(r"^(blocks\.\d+\.experts)\.(fc[12])_(weight|bias)$")  # tinymoe's stacked experts
_EXPORTED_EXPERT = re.compile(r"^(blocks\.\d+\.experts)\.(\d+)\.(fc[12])\.(weight|bias)$")
_LINEAR_WEIGHTS = re.compile(r"(\.qkv\.weight|\.proj\.weight|\.fc[12]\.weight|^head\.weight|router\.weight)$")


class ExportError(ValueError):
    """A file that is not an exported tinymoe model, or parameters that do not fit its config."""


def _needs(package: str, extra: str):
    try:
        return importlib.import_module(package)
    except ImportError as e:
        raise ImportError(
            f"this needs the '{package}' package ({e}); install it with pip install -e '.[{extra}]'"
        ) from e


# --------------------------------------------------------------------------------------------------
# Names and layouts (the table above)
# --------------------------------------------------------------------------------------------------
def export_params(params: dict[str, np.ndarray], config: ModelConfig) -> dict[str, np.ndarray]:
    """tinymoe's `state_dict()` -> {exported (timm) name: contiguous array in PyTorch's layout}."""
    out: dict[str, np.ndarray] = {}
    p, c, d = config.patch_size, config.channels, config.dim
    for name, value in params.items():
        value = np.asarray(value)
        if name == "patch_embed.weight":  # rows (py, px, channel) -> Conv2d (D, c, py, px)
            out["patch_embed.proj.weight"] = value.reshape(p, p, c, d).transpose(3, 2, 0, 1)
        elif name == "patch_embed.bias":
            out["patch_embed.proj.bias"] = value
        elif m := _EXPERT.match(name):
            prefix, fc, kind = m.groups()
            for e in range(value.shape[0]):
                out[f"{prefix}.{e}.{fc}.{kind}"] = value[e].T if kind == "weight" else value[e]
        elif _LINEAR_WEIGHTS.search(name):
            out[name] = value.T
        else:
            out[name] = value
    return {name: np.ascontiguousarray(value) for name, value in out.items()}


def import_params(tensors: dict[str, np.ndarray], config: ModelConfig) -> dict[str, np.ndarray]:
    """The inverse of `export_params`: exported names and layouts -> tinymoe's `state_dict()`."""
    out: dict[str, np.ndarray] = {}
    experts: dict[str, dict[int, np.ndarray]] = {}
    p, c, d = config.patch_size, config.channels, config.dim
    for name, value in tensors.items():
        value = np.asarray(value)
        if name == "patch_embed.proj.weight":
            if value.shape != (d, c, p, p):
                raise ExportError(f"patch_embed.proj.weight has shape {value.shape}, the config needs {(d, c, p, p)}")
            out["patch_embed.weight"] = value.transpose(2, 3, 1, 0).reshape(p * p * c, d)
        elif name == "patch_embed.proj.bias":
            out["patch_embed.bias"] = value
        elif m := _EXPORTED_EXPERT.match(name):
            prefix, e, fc, kind = m.groups()
            experts.setdefault(f"{prefix}.{fc}_{kind}", {})[int(e)] = value.T if kind == "weight" else value
        elif _LINEAR_WEIGHTS.search(name):
            out[name] = value.T
        else:
            out[name] = value
    for name, by_expert in experts.items():
        if sorted(by_expert) != list(range(config.experts)):
            raise ExportError(f"{name}: expected experts 0..{config.experts - 1}, found {sorted(by_expert)}")
        out[name] = np.stack([by_expert[e] for e in range(config.experts)])
    return {name: np.ascontiguousarray(value) for name, value in out.items()}


# --------------------------------------------------------------------------------------------------
# safetensors
# --------------------------------------------------------------------------------------------------
def _as_model(model_or_checkpoint):
    if isinstance(model_or_checkpoint, (str, Path)):
        from tinymoe.checkpoint import load_model

        return load_model(model_or_checkpoint)
    return model_or_checkpoint


def file_metadata(config: ModelConfig, class_to_group=None) -> dict[str, str]:
    """The string metadata of an exported file (safetensors metadata; also stored in .pt and .onnx)."""
    meta = {"format": FORMAT, "version": VERSION, "config": json.dumps(config.to_dict())}
    if class_to_group is not None:
        meta["class_to_group"] = json.dumps(np.asarray(class_to_group).astype(int).tolist())
    return meta


def parse_metadata(meta: dict[str, str] | None, where: str) -> tuple[ModelConfig, np.ndarray | None]:
    """(config, class_to_group or None) from the metadata written by `file_metadata`."""
    if not meta or meta.get("format") != FORMAT:
        raise ExportError(f"{where}: not an exported tinymoe model (metadata format is {(meta or {}).get('format')!r})")
    if meta.get("version") != VERSION:
        raise ExportError(f"{where}: export format version {meta.get('version')!r}; this tinymoe reads {VERSION!r}")
    config = ModelConfig.from_dict(json.loads(meta["config"]))
    groups = meta.get("class_to_group")
    return config, (None if groups is None else np.asarray(json.loads(groups), dtype=np.int64))


def save_safetensors(model_or_checkpoint, out) -> Path:
    """Write a model (or the model of a checkpoint path) as safetensors with timm's names (see the table)."""
    numpy_io = _needs("safetensors.numpy", "export")
    model = _as_model(model_or_checkpoint)
    tensors = export_params(model.state_dict(), model.config)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    numpy_io.save_file(tensors, str(out), metadata=file_metadata(model.config, getattr(model, "class_to_group", None)))
    return out


def read_safetensors(path) -> tuple[ModelConfig, dict[str, np.ndarray], np.ndarray | None]:
    """(config, exported tensors by name, class_to_group or None) of an exported file, as NumPy arrays."""
    _needs("safetensors", "export")
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        meta = f.metadata()
        tensors = {name: f.get_tensor(name) for name in f.keys()}
    config, groups = parse_metadata(meta, str(path))
    return config, tensors, groups


def load_safetensors(path, dtype=None):
    """The tinymoe VisionTransformer stored in an exported safetensors file (weights bit-identical)."""
    from tinymoe.models.vit import VisionTransformer

    config, tensors, groups = read_safetensors(path)
    params = import_params(tensors, config)
    dtype = dtype or next(iter(params.values())).dtype
    model = VisionTransformer(config, rng=0, dtype=dtype)
    try:
        model.load_state_dict(params, strict=True)
    except (KeyError, ValueError) as e:
        raise ExportError(f"{path} does not fit the model its config describes: {e}") from e
    if groups is not None:
        model.set_class_to_group(groups)
    return model


# --------------------------------------------------------------------------------------------------
# One entry point for the three targets, and the command line
# --------------------------------------------------------------------------------------------------
def export(checkpoint, to: str, out, *, opset: int | None = None) -> Path:
    """Export a tinymoe checkpoint (.npz path) or model to `to` in TARGETS; returns the path written.

    torch: a `torch.save` dict {"config", "class_to_group", "state_dict"} (exported names, torch tensors),
    loaded by `tinymoe.torch_model.load`. onnx: the eval-mode PyTorch model traced with a dynamic batch axis:
    input "images" float32 (batch, H, W, c) channel-last, output "logits" (batch, classes).
    """
    if to not in TARGETS:
        raise ValueError(f"--to must be one of {TARGETS}, got {to!r}")
    model = _as_model(checkpoint)
    if to == "safetensors":
        return save_safetensors(model, out)
    _needs("torch", "torch")
    from tinymoe import torch_model

    tmodel = torch_model.from_tinymoe(model)
    if to == "torch":
        return torch_model.save(tmodel, out)
    return torch_model.export_onnx(tmodel, out, opset=opset)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tinymoe.export",
        description="Export a tinymoe checkpoint (.npz) to safetensors (timm names), PyTorch (.pt) or ONNX.",
    )
    parser.add_argument("checkpoint", help="a tinymoe checkpoint written by tinymoe.train / save_checkpoint")
    parser.add_argument("--to", required=True, choices=TARGETS)
    parser.add_argument("--out", required=True, help="the file to write")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    args = parser.parse_args(argv)
    try:
        path = export(args.checkpoint, args.to, args.out, opset=args.opset)
    except (ImportError, ValueError) as e:
        print(f"tinymoe.export: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

__all__ = [
    "ExportError",
    "export",
    "export_params",
    "import_params",
    "file_metadata",
    "parse_metadata",
    "save_safetensors",
    "read_safetensors",
    "load_safetensors",
    "main",
]
