"""`python -m tinymoe.flops`: inference FLOPs and parameters of a dense ViT and its Mobile V-MoE.

    python -m tinymoe.flops --layers 6 --dim 64 --image-size 224 --patch-size 32 --classes 1000
    python -m tinymoe.flops --layers 12 --dim 192 --experts 10 --k 2 --moe-layers 4 --breakdown

Prints one row for the dense ViT and one for the MoE with the given experts / k / MoE layers (defaults
E=10, k=1, 2 MoE layers, as in the paper). FLOPs are 2 x multiply-adds of one image's forward pass; what
is and is not counted is stated in `tinymoe.models.flops`. The counting lives there; this is only the CLI.
"""

from __future__ import annotations

import argparse
import json
import sys

from tinymoe.models.config import ROUTING_VARIANTS, ConfigError, ModelConfig
from tinymoe.models.flops import count, format_table


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tinymoe.flops",
        description="Inference FLOPs (2 x multiply-adds) and parameters (total and active per image) "
        "of a dense ViT and its Mobile V-MoE.",
    )
    p.add_argument("--layers", type=int, required=True, help="transformer blocks")
    p.add_argument("--dim", type=int, required=True, help="token width")
    p.add_argument("--heads", type=int, default=None, help="attention heads (default: from the width)")
    p.add_argument("--mlp-ratio", type=int, default=4)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--patch-size", type=int, default=32)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--experts", type=int, default=10, help="experts per MoE block (E)")
    p.add_argument("--k", type=int, default=1, help="experts per image (per token for --routing token)")
    p.add_argument("--moe-layers", type=int, default=2, help="MoE blocks at the end of the network")
    p.add_argument("--routing", choices=ROUTING_VARIANTS, default="superclass")
    p.add_argument("--breakdown", action="store_true", help="also print FLOPs per component")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        moe = ModelConfig(
            layers=args.layers,
            dim=args.dim,
            heads=args.heads,
            mlp_ratio=args.mlp_ratio,
            image_size=args.image_size,
            patch_size=args.patch_size,
            channels=args.channels,
            num_classes=args.classes,
            experts=args.experts,
            k=args.k,
            moe_layers=args.moe_layers,
            routing=args.routing,
        )
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    dense = moe.dense()
    rows = [("dense", count(dense))]
    if moe.is_moe:
        rows.append((f"MoE E={moe.experts} k={moe.k} L={moe.moe_layers} ({moe.routing})", count(moe)))

    if args.json:
        out = {
            name.split(" ")[0].lower(): {
                "flops": cost.flops,
                "macs": cost.total_macs,
                "params": cost.params,
                "active_params": cost.active_params,
                "macs_by_component": cost.macs,
                "config": cost.config.to_dict(),
            }
            for name, cost in rows
        }
        print(json.dumps(out, indent=2))
        return 0
    print(dense.describe().replace("dense ViT", "ViT") + "  (FLOPs = 2 x multiply-adds, per image)")
    print(format_table(rows, breakdown=args.breakdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
