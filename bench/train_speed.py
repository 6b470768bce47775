"""How long `python -m tinymoe.train` takes: steady-state training steps on real batches, extrapolated.

    python bench/train_speed.py --data ../shared/data/tiny-imagenet-200.zip --patch-size 16 --threads 2

Times `Trainer.train_step` on the real pipeline (Tiny ImageNet from its cache, random crop + flip,
prefetching loader, the default TrainConfig: batch 256, AdamW, clipping, label smoothing) for the dense
model and the MoE of one size, after a warm-up, and reports the median step, images/s, and the
projected wall time of one model's training (steps per epoch × epochs × median step; evaluation and
data loading before the first step are not included) and of the whole default protocol (dense + MoE).
Writes bench/results/train_speed_<L>x<D>_p<patch>_threads<N>.json with the machine description.
The thread settings are applied before NumPy loads, exactly as the training command applies them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="tiny-imagenet")
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--patch-size", type=int, default=16)
    p.add_argument("--epochs", type=int, default=15, help="for the projection only")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--steps", type=int, default=30, help="timed steps per model (after --warmup)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--no-save", action="store_true")
    args = p.parse_args(argv)

    from tinymoe.runtime import setup_process

    shards = setup_process(args.threads)  # before NumPy loads, as python -m tinymoe.train does
    import numpy as np

    sys.path.insert(0, str(HERE))
    from machine import describe
    from tinymoe import kernels
    from tinymoe.data.batches import holdout_split
    from tinymoe.models import ModelConfig, build_model
    from tinymoe.pipeline import load_splits
    from tinymoe.training import Trainer, TrainConfig, TrainingData

    splits = load_splits(args.data, seed=0)
    train_idx, _ = holdout_split(splits.train_labels, 0.1, seed=0)
    cfg = TrainConfig(epochs=args.epochs, shards=shards)
    result = {"data": splits.name, "layers": args.layers, "dim": args.dim, "patch_size": args.patch_size,
              "threads": args.threads, "shards": shards, "batch_size": cfg.batch_size, "epochs": args.epochs,
              "kernels": kernels.active_backend()}
    for kind in ("dense", "moe"):
        config = ModelConfig(layers=args.layers, dim=args.dim, patch_size=args.patch_size, image_size=splits.image_size,
                             num_classes=splits.num_classes, moe_layers=0 if kind == "dense" else 2)
        model = build_model(config, seed=0)
        if kind == "moe":
            model.set_class_to_group(np.arange(splits.num_classes) % config.experts)  # any fixed map: speed only
        data = TrainingData(splits.train_images, splits.train_labels, train_indices=train_idx)
        trainer = Trainer(model, cfg, data, f"/tmp/tinymoe-train-speed-{kind}", log=lambda *_: None, progress=False)
        times = []
        batches = trainer.loader.epoch(0)
        for i, (x, y) in enumerate(batches):
            start = time.perf_counter()
            trainer.train_step(x, y, cfg.lr)
            if i >= args.warmup:
                times.append(time.perf_counter() - start)
            if len(times) == args.steps:
                break
        batches.close()
        step = float(np.median(times))
        result[kind] = {"median_step_s": round(step, 4), "img_s": round(cfg.batch_size / step, 1),
                        "steps_per_epoch": len(trainer.loader),
                        "projected_training_minutes": round(step * len(trainer.loader) * args.epochs / 60, 1),
                        "step_s": [round(t, 4) for t in times]}
    result["projected_protocol_minutes"] = round(result["dense"]["projected_training_minutes"]
                                                 + result["moe"]["projected_training_minutes"], 1)
    result["machine"] = describe()
    result["command"] = "python bench/train_speed.py " + " ".join(sys.argv[1:] if argv is None else argv)
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}))
    if not args.no_save:
        out = HERE / "results" / f"train_speed_{args.layers}x{args.dim}_p{args.patch_size}_threads{args.threads}.json"
        out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
