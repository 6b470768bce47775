"""Calibration: train the dense baseline in PyTorch on tinymoe's exact data pipeline and recipe.

Issue 7 asks why tinymoe's dense 6x64 (patch 16, 15 epochs) lands ~2 points below an independent
PyTorch implementation of the same recipe. The parity tests already show one forward/backward and one
AdamW step agree to float64 rounding, so the question is whether something over a *whole run* differs.
This script isolates the two halves of a run:

  * the data pipeline, schedule and optimizer settings: taken from tinymoe itself (load_splits,
    holdout_split, BatchLoader with the same augmentation, warmup_cosine_lr, the same no-decay groups,
    label smoothing, optional clipping) -- identical batches in identical order;
  * the model, its arithmetic and its initial weights: PyTorch (bench/torch_models.ViT), either started
    from *exactly* tinymoe's initial weights (`--init tinymoe`) or from PyTorch's own default
    initialisation (`--init torch`: nn.Linear's Kaiming-uniform weights and uniform biases, position
    embedding N(0, 0.02), class token 0), which is what an independent implementation would most
    likely have used.

Reading the result: if `--init tinymoe` lands where tinymoe does, tinymoe's training computes what
PyTorch computes over a whole run and the gap lies elsewhere (initialisation, data, evaluation images);
if `--init torch` then lands near the reference, the initialisation explains it.

Usage (one core, ~15 minutes on the 2-core workplace machine):
    python bench/calibration_torch.py --data ../shared/data/tiny-imagenet-200.zip --init tinymoe \
        --pad-mode reflect --clip-grad 0 --json bench/results/calibration/torch-dense-init-tinymoe.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="tiny-imagenet")
    parser.add_argument("--init", choices=("tinymoe", "torch"), required=True)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--patch-size", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("-b", "--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--min-lr", type=float, default=1e-5)
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--label-smoothing", type=float, default=0.1)
    parser.add_argument("--clip-grad", type=float, default=0.0, help="0 = no clipping")
    parser.add_argument("--pad-mode", choices=("zero", "reflect"), default="reflect")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, help="write the result here")
    args = parser.parse_args(argv)

    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    import torch
    import torch.nn.functional as F

    from machine import describe as describe_machine
    from tinymoe.data.batches import BatchLoader, holdout_split, normalize
    from tinymoe.export import export_params
    from tinymoe.models import ModelConfig, VisionTransformer
    from tinymoe.optim import warmup_cosine_lr
    from tinymoe.pipeline import load_splits
    from tinymoe.training import no_decay
    from torch_models import ViT

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    splits = load_splits(args.data, seed=args.seed)
    train_idx, holdout = holdout_split(splits.train_labels, 0.1, seed=args.seed)
    config = ModelConfig(layers=args.layers, dim=args.dim, patch_size=args.patch_size, moe_layers=0,
                         image_size=splits.image_size, num_classes=splits.num_classes)
    model = ViT(layers=args.layers, dim=args.dim, heads=config.heads, image_size=splits.image_size,
                patch_size=args.patch_size, num_classes=splits.num_classes, experts=0)
    if args.init == "tinymoe":
        # The exact initial weights of `python -m tinymoe.train --seed S` (the pipeline builds its models
        # with rng=seed); tinymoe stores Linear weights (in, out), PyTorch (out, in).
        ours = VisionTransformer(config, rng=args.seed)
        model.load_state_dict({name: torch.from_numpy(value) for name, value in
                               export_params(ours.state_dict(), config).items()}, strict=True)
        # The copy is only a calibration if both models compute the same function from those weights.
        probe = normalize(splits.val_images[:64])
        with torch.no_grad():
            theirs = model(torch.from_numpy(probe))[0].numpy()
        mine = ours(probe).logits.data
        if not np.allclose(theirs, mine, rtol=1e-4, atol=1e-4):
            raise SystemExit(f"weight copy failed: logits differ by {np.abs(theirs - mine).max():.2e}")
    else:  # PyTorch's defaults: what a model written with plain nn.Linear / nn.Conv2d layers starts from
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, (torch.nn.Linear, torch.nn.LayerNorm, torch.nn.Conv2d)):
                    module.reset_parameters()
            model.cls_token.zero_()
            model.pos_embed.normal_(0.0, 0.02)

    decay = [p for n, p in model.named_parameters() if not no_decay(n, p)]
    plain = [p for n, p in model.named_parameters() if no_decay(n, p)]
    optimizer = torch.optim.AdamW([{"params": decay}, {"params": plain, "weight_decay": 0.0}], lr=args.lr,
                                  weight_decay=args.weight_decay, betas=(0.9, 0.999), eps=1e-8)
    loader = BatchLoader(splits.train_images, splits.train_labels, args.batch_size, shuffle=True, drop_last=True,
                         seed=args.seed, augment=True, padding=4, pad_mode=args.pad_mode, indices=train_idx,
                         prefetch=2)
    steps_per_epoch = len(loader)
    total = args.epochs * steps_per_epoch
    warmup = int(round(args.warmup * steps_per_epoch))
    val_x = torch.from_numpy(normalize(splits.val_images))
    val_y = torch.from_numpy(splits.val_labels.astype(np.int64))

    def evaluate():
        model.eval()
        correct, loss = 0, 0.0
        with torch.no_grad():
            for i in range(0, len(val_y), 500):
                logits, _ = model(val_x[i : i + 500])
                loss += float(F.cross_entropy(logits, val_y[i : i + 500], reduction="sum"))
                correct += int((logits.argmax(1) == val_y[i : i + 500]).sum())
        model.train()
        return 100.0 * correct / len(val_y), loss / len(val_y)

    history, step, start = [], 0, time.perf_counter()
    for epoch in range(args.epochs):
        running, count = 0.0, 0
        for x, y in loader.epoch(epoch):
            lr = warmup_cosine_lr(step, total, warmup, args.lr, args.min_lr)
            for group in optimizer.param_groups:
                group["lr"] = lr
            logits, _ = model(torch.from_numpy(x))
            loss = F.cross_entropy(logits, torch.from_numpy(y.astype(np.int64)), label_smoothing=args.label_smoothing)
            optimizer.zero_grad()
            loss.backward()
            if args.clip_grad > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad)
            optimizer.step()
            step += 1
            running, count = running + loss.item(), count + 1
        top1, val_loss = evaluate()
        history.append({"epoch": epoch + 1, "train_loss": running / count, "eval_top1": top1, "eval_loss": val_loss})
        print(json.dumps(history[-1]), flush=True)
    result = {
        "name": f"torch-dense-{args.layers}x{args.dim}-p{args.patch_size}-init-{args.init}-seed{args.seed}",
        "command": "python bench/calibration_torch.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": describe_machine(),
        "torch": torch.__version__,
        "train_images": int(train_idx.size),
        "val_images": int(len(val_y)),
        "top1": history[-1]["eval_top1"],
        "wall_seconds": time.perf_counter() - start,
        "history": history,
    }
    print(json.dumps({k: result[k] for k in ("name", "top1", "wall_seconds")}))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
