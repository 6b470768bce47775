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

The name and layout table, the metadata and reading a file: `tinymoe.exported` (PyTorch-free, shared
with `tinymoe.torch_model`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tinymoe.exported import (  # noqa: F401  (re-exported: the format's functions)
    FORMAT,
    METADATA_BUFFERS,
    VERSION,
    ExportError,
    _needs,
    export_params,
    file_metadata,
    import_params,
    parse_metadata,
    read_safetensors,
)

TARGETS = ("safetensors", "torch", "onnx")

# --------------------------------------------------------------------------------------------------
# safetensors
# --------------------------------------------------------------------------------------------------
def _as_model(model_or_checkpoint):
    if isinstance(model_or_checkpoint, (str, Path)):
        from tinymoe.checkpoint import load_model

        return load_model(model_or_checkpoint)
    return model_or_checkpoint


def save_safetensors(model_or_checkpoint, out) -> Path:
    """Write a model (or the model of a checkpoint path) as safetensors with timm's names (see the table)."""
    numpy_io = _needs("safetensors.numpy", "export")
    model = _as_model(model_or_checkpoint)
    tensors = export_params(model.state_dict(), model.config)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    numpy_io.save_file(tensors, str(out), metadata=file_metadata(model.config, getattr(model, "class_to_group", None)))
    return out


def load_safetensors(path, dtype=None):
    """The tinymoe VisionTransformer stored in an exported safetensors file (weights bit-identical)."""
    from tinymoe.models.vit import VisionTransformer

    config, tensors, groups = read_safetensors(path)
    params = import_params(tensors, config)
    dtype = dtype or next(iter(params.values())).dtype
    model = VisionTransformer(config, rng=0, dtype=dtype)
    if groups is not None:  # a buffer: set before the strict load, which then checks it with the rest
        model.set_class_to_group(groups)
        params["class_to_group"] = groups
    elif model.class_to_group is not None:  # routing="random" draws its map from the config; none was stored
        params["class_to_group"] = model.class_to_group
    try:
        model.load_state_dict(params, strict=True)
    except (KeyError, ValueError) as e:
        raise ExportError(f"{path} does not fit the model its config describes: {e}") from e
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
