"""Ship a trained dense / Mobile V-MoE pair for teaching: the two checkpoints and a per-image table of
what they do on the val split, so routing on real data can be shown without the dataset or training.

    python bench/ship_models.py --dense runs/study/base-seed0/dense/model.npz \
        --moe runs/study/base-seed0/moe-superclass/model.npz --name 6x64-calibrated-seed0
    python bench/ship_models.py --name 6x64-calibrated-seed0 --figures      # router confusion, curves, images

writes bench/results/models/NAME-dense.npz, NAME-moe.npz (the checkpoints, copied as trained) and
NAME-val.json: both models' val top-1 / top-5, and per val image its label, its superclass, the MoE's
expert, router entropy, and whether each model classified it correctly (tinymoe.routing_analysis,
`RoutingAnalysis.from_dict(table["moe"]["routing"])` rebuilds the analysis). The data is rebuilt from
what the checkpoints record. Weights and per-image predictions only: no image or decoded array.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "models"


def ship(dense_path: Path, moe_path: Path, name: str, out_dir: Path = OUT, note: str = "") -> Path:
    import numpy as np

    from tinymoe.atomic import atomic_write_text
    from tinymoe.checkpoint import load_checkpoint, load_model
    from tinymoe.evaluation import accuracy_from_logits, predict
    from tinymoe.pipeline import load_splits
    from tinymoe.routing_analysis import analyse_model

    dense, moe = load_model(dense_path), load_model(moe_path)
    recorded = [load_checkpoint(p).metadata.get("data") for p in (dense_path, moe_path)]
    if recorded[0] != recorded[1] or recorded[0] is None:
        raise SystemExit(f"the two checkpoints record different (or no) data: {recorded}; ship a pair trained together")
    splits = load_splits(**recorded[0])
    images, labels = splits.val_images, splits.val_labels
    dense_logits = predict(dense, images).logits
    analysis = analyse_model(moe, images, labels)
    table = {
        "name": name,
        "note": note,
        "dataset": splits.name,
        "split": "val",
        "images": int(labels.size),
        "classes": list(splits.classes),
        "labels": labels.tolist(),
        "dense": {"checkpoint": f"{name}-dense.npz", "config": dense.config.to_dict(),
                  "top1": accuracy_from_logits(dense_logits, labels)[0],
                  "top5": accuracy_from_logits(dense_logits, labels)[1],
                  "correct": (np.argmax(dense_logits, axis=1) == labels).astype(int).tolist()},
        "moe": {"checkpoint": f"{name}-moe.npz", "config": moe.config.to_dict(),
                "top1": float(100 * analysis.correct.mean()),
                "class_to_group": moe.class_to_group.tolist(),
                "routing": analysis.as_dict(per_image=True)},
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy2(dense_path, out_dir / f"{name}-dense.npz")
    shutil.copy2(moe_path, out_dir / f"{name}-moe.npz")
    path = out_dir / f"{name}-val.json"
    atomic_write_text(path, json.dumps(table, separators=(",", ":")) + "\n")
    return path


def figures(name: str, out_dir: Path = OUT) -> list[Path]:
    """The shipped pair's figures, drawn with tinymoe.report from the shipped files: the router confusion
    (true superclass x chosen expert, load in the margins) from the val table, both models' train/val
    curves from the checkpoints' histories, and a row of real val images per expert (the dataset is
    rebuilt from the checkpoint's metadata; images appear only inside this figure)."""
    from tinymoe.checkpoint import load_checkpoint
    from tinymoe.report import draw_curves, draw_expert_images, draw_router_confusion

    table = json.loads((out_dir / f"{name}-val.json").read_text())
    paths = [out_dir / f"{name}-router_confusion.png", out_dir / f"{name}-curves.png",
             out_dir / f"{name}-expert_images.png"]
    draw_router_confusion(table["moe"]["routing"], paths[0], title=f"{name}: Tiny ImageNet val")
    histories = {model: load_checkpoint(out_dir / f"{name}-{model}.npz").metadata.get("history", [])
                 for model in ("dense", "moe")}
    draw_curves(histories, paths[1])
    drawn = draw_expert_images(out_dir / f"{name}-moe.npz", paths[2])
    if drawn["load"] != table["moe"]["routing"]["load"]:
        raise SystemExit(f"the expert-image grid routed {drawn['load']}, the table says {table['moe']['routing']['load']}")
    return paths


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dense", type=Path, help="the dense checkpoint to ship (with --moe)")
    p.add_argument("--moe", type=Path, help="the MoE checkpoint to ship (with --dense)")
    p.add_argument("--figures", action="store_true", help="draw the shipped pair's figures (after shipping it)")
    p.add_argument("--name", required=True, help="file name stem, e.g. 6x64-calibrated-seed0")
    p.add_argument("--out-dir", type=Path, default=OUT)
    p.add_argument("--note", default="", help="provenance: the command that trained them, and how")
    args = p.parse_args(argv)
    if args.dense or args.moe:
        if not (args.dense and args.moe):
            p.error("--dense and --moe go together (a pair trained together)")
        print(ship(args.dense, args.moe, args.name, args.out_dir, args.note))
    if args.figures:
        for path in figures(args.name, args.out_dir):
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
