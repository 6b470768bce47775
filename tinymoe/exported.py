"""The exported format of a tinymoe model: timm's names and PyTorch's layouts, the file's metadata, and
reading a safetensors file. NumPy only (+ safetensors to read a file); `tinymoe.export` writes files,
`tinymoe.torch_model` loads them into PyTorch.

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

import importlib
import json
import re

import numpy as np

from tinymoe.models.config import ModelConfig

FORMAT = "tinymoe-safetensors"
VERSION = "1"

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
# Buffers of tinymoe's state_dict that travel as metadata (file_metadata), not as tensors.
METADATA_BUFFERS = ("class_to_group",)


def export_params(params: dict[str, np.ndarray], config: ModelConfig) -> dict[str, np.ndarray]:
    """tinymoe's `state_dict()` -> {exported (timm) name: contiguous array in PyTorch's layout}."""
    out: dict[str, np.ndarray] = {}
    p, c, d = config.patch_size, config.channels, config.dim
    for name, value in params.items():
        value = np.asarray(value)
        if name in METADATA_BUFFERS:  # the class -> superclass map: in the file's metadata
            continue
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


def read_safetensors(path) -> tuple[ModelConfig, dict[str, np.ndarray], np.ndarray | None]:
    """(config, exported tensors by name, class_to_group or None) of an exported file, as NumPy arrays."""
    _needs("safetensors", "export")
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        meta = f.metadata()
        tensors = {name: f.get_tensor(name) for name in f.keys()}
    config, groups = parse_metadata(meta, str(path))
    return config, tensors, groups
