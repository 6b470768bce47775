"""`python -m tinymoe.train`: the Mobile V-MoE protocol from the command line.

    python -m tinymoe.train --layers 6 --dim 64                       # dense, superclasses, MoE, table
    python -m tinymoe.train --layers 6 --dim 64 --data synthetic --epochs 3   # a one-minute demo
    python -m tinymoe.train --layers 6 --dim 64 --model dense         # one stage only
    python -m tinymoe.train ... --resume                              # continue an interrupted run
    python -m tinymoe.train ... --randaugment 2 --mixup 0.8 --cutmix 1.0 --reprob 0.25 --drop-path 0.1
                                                                      # the DeiT regularisation recipe

See `tinymoe.pipeline` for what each stage does and writes. This module only turns flags into a
PipelineOptions; the logic lives in the library.

The defaults are the calibrated recipe of the reproduction (bench/RESULTS.md, Reproduction): 15 epochs, patch 16,
AdamW lr 2e-3, batch 256, weight decay 0.05, 1 warm-up epoch + cosine, label smoothing 0.1, random crop
with 4-pixel reflect padding + flip, no gradient clipping, PyTorch's default initialisation. They are the
library's own defaults too (TrainConfig(), ModelConfig()): the parser cannot read them before NumPy loads,
so it repeats them, and a test (tests/test_regularisation.py) holds the two equal.

Only the standard library (and `tinymoe.runtime`, itself standard library only) is imported at the top:
NumPy's BLAS and Numba read their thread counts when they load, so `--threads` must be applied
(`tinymoe.runtime.setup_process`) before anything imports them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tinymoe.runtime import apply_threads, report_errors, setup_process  # standard library only: safe before NumPy loads

# The routing variants whose routers route each token (tinymoe.models.moe.ROUTERS[name].per_token): the
# command line must know before NumPy loads, to pick its thread layout; a test holds the two equal.
PER_TOKEN_ROUTING = ("token",)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tinymoe.train",
        description="Train a dense ViT and a Mobile V-MoE the paper's way and compare them.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("data")
    g.add_argument("--data", "--data-dir", dest="data", default="tiny-imagenet",
                   help="'tiny-imagenet' (looked up in $TINYMOE_DATA or ./data), 'synthetic', or a path to the "
                        "Tiny ImageNet zip/folder, a downsampled ImageNet folder, or train/ + val/ image folders")
    g.add_argument("--download", action="store_true", help="download Tiny ImageNet if it is not found")
    g.add_argument("--cache-dir", default=None, help="where decoded images are cached (default: see README)")
    g.add_argument("--holdout-fraction", type=float, default=0.1,
                   help="fraction of train (per class) held out for the superclass confusion matrix")
    g.add_argument("--train-fraction", type=train_fraction, default=1.0, metavar="F",
                   help="train on this fraction (0 < F <= 1) of each class's training images (after the held-out "
                        "split, which stays the same), chosen by --seed and nested: a smaller F's images are "
                        "inside a larger F's")

    g = p.add_argument_group("model")
    g.add_argument("--layers", type=int, default=6, help="transformer blocks in total")
    g.add_argument("--dim", type=int, default=64, help="token width")
    g.add_argument("--heads", type=int, default=None, help="attention heads (default: from the width, as the paper)")
    g.add_argument("--patch-size", type=int, default=16,
                   help="patch side in pixels: 16 gives a 4x4 token grid on 64 px images (about 11 minutes of "
                        "training per 6x64 model on 2 cores); 8 gives 8x8, closer to the paper's 7x7, at ~3.5x the "
                        "cost (bench/results/train_speed_*.json)")
    g.add_argument("--image-size", type=int, default=None, help="input side in pixels (default: the dataset's)")
    g.add_argument("--model", choices=("both", "dense", "moe"), default="both",
                   help="'both' runs the whole protocol; 'dense' or 'moe' one stage only")
    g.add_argument("--experts", type=int, default=10, help="E, experts per MoE block")
    g.add_argument("--k", type=int, default=1, help="experts per image")
    g.add_argument("--moe-layers", type=int, default=2, help="L, the last L blocks are MoE blocks")
    g.add_argument("--routing", choices=("superclass", "learned", "random", "token"), default="superclass")
    g.add_argument("--router-weight", type=float, default=0.3, help="weight of the router's superclass loss")
    g.add_argument("--router-input", choices=("class_token", "mean_tokens"), default="class_token")
    g.add_argument("--init", choices=("timm", "pytorch"), default="pytorch",
                   help="initial weights: PyTorch's nn.Linear default (uniform in ±1/sqrt(fan_in); the calibrated "
                        "recipe, 3.4 points better at 15 epochs) or timm's ViT scheme (truncated normal, std 0.02); "
                        "see bench/RESULTS.md, Calibration")
    g.add_argument("--superclasses", type=Path, default=None, help="use this superclasses JSON instead of computing it")
    g.add_argument("--upcycle", action="store_true",
                   help="initialise the MoE from the trained dense model: every expert a copy of its block's MLP")
    g.add_argument("--teacher-forcing", action="store_true",
                   help="in training, route each image to its TRUE superclass's expert (gate: the router's "
                        "probability of it); the router decides in evaluation")

    g = p.add_argument_group("regularisation (all off by default; DeiT's values in brackets)")
    g.add_argument("--randaugment", type=int, default=0, metavar="N", help="RandAugment ops per image [2]")
    g.add_argument("--randaugment-magnitude", type=float, default=9.0, metavar="M",
                   help="RandAugment magnitude 0..10 [9]")
    g.add_argument("--reprob", "--random-erase", dest="random_erase", type=float, default=0.0,
                   help="random-erasing probability per image [0.25]")
    g.add_argument("--mixup", type=float, default=0.0, metavar="ALPHA", help="mixup Beta(alpha, alpha) [0.8]")
    g.add_argument("--cutmix", type=float, default=0.0, metavar="ALPHA", help="cutmix Beta(alpha, alpha) [1.0]")
    g.add_argument("--mixup-prob", type=float, default=1.0, help="probability that a batch is mixed [1.0]")
    g.add_argument("--mixup-switch-prob", type=float, default=0.5,
                   help="probability of cutmix instead of mixup when both are on [0.5]")
    g.add_argument("--drop-path", type=float, default=0.0, metavar="RATE",
                   help="stochastic depth of the last block (rates grow linearly from 0 over depth) [0.1]")
    g.add_argument("--expert-dropout", type=float, default=0.0, metavar="P",
                   help="dropout on the hidden activations of the expert MLPs [not in DeiT]")

    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int, default=15)
    g.add_argument("-b", "--batch-size", type=int, default=256)
    g.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (AdamW)")
    g.add_argument("--min-lr", type=float, default=1e-5, help="end of the cosine decay")
    g.add_argument("--weight-decay", type=float, default=0.05)
    g.add_argument("--warmup", "--warmup-epochs", dest="warmup", type=float, default=1.0, help="warmup epochs")
    g.add_argument("--label-smoothing", "--smoothing", dest="label_smoothing", type=float, default=0.1)
    g.add_argument("--clip-grad", type=float, default=0.0,
                   help="max global gradient norm (0 = off, the calibrated recipe's choice)")
    g.add_argument("--no-augment", action="store_true", help="no random crop / flip")
    g.add_argument("--pad-mode", choices=("zero", "reflect"), default="reflect",
                   help="what the random crop's 4-pixel padding holds")
    g.add_argument("--seed", type=int, default=0, help="data order, augmentation, held-out split, initial weights")
    g.add_argument("--eval-every", type=int, default=1, help="evaluate on val every n epochs (0 = at the end)")
    g.add_argument("--log-every", "--log-interval", dest="log_every", type=int, default=50)
    g.add_argument("--max-steps", type=int, default=None, help="stop each stage after this many steps (smoke runs)")

    g = p.add_argument_group("run")
    g.add_argument("--out", "--output", dest="out", type=Path, default=None,
                   help="output directory (default: runs/<layers>x<dim>-<data>)")
    g.add_argument("--resume", action="store_true", help="continue interrupted stages from their last checkpoint")
    g.add_argument("--force", action="store_true",
                   help="retrain a stage whose files in --out were made with other settings (default: refuse)")
    g.add_argument("--debug", action="store_true", help="on an error, show the Python traceback")
    g.add_argument("--threads", type=int, default=None,
                   help="cores to use (default: all): each batch is split over this many threads (data "
                        "parallelism, see tinymoe.parallel); token routing uses multi-threaded BLAS/Numba instead")
    return p


def train_fraction(text: str) -> float:
    """argparse type of --train-fraction: a number in (0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}") from None
    if not 0.0 < value <= 1.0:  # (also refuses NaN)
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def train_config(args, shards: int = 1):
    """The TrainConfig the flags describe (`shards`: from setup_process)."""
    from tinymoe.training import TrainConfig

    return TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, min_lr=args.min_lr,
        weight_decay=args.weight_decay, warmup_epochs=args.warmup, label_smoothing=args.label_smoothing,
        clip_grad=args.clip_grad or None, augment=not args.no_augment, pad_mode=args.pad_mode, seed=args.seed,
        eval_every=args.eval_every, log_every=args.log_every, max_steps=args.max_steps,
        randaugment_ops=args.randaugment, randaugment_magnitude=args.randaugment_magnitude,
        random_erase=args.random_erase, mixup_alpha=args.mixup, cutmix_alpha=args.cutmix,
        mix_prob=args.mixup_prob, mix_switch_prob=args.mixup_switch_prob, shards=shards,
    )


def model_config(args, num_classes: int, image_size: int):
    """The (MoE) ModelConfig the flags describe, for data with `num_classes` classes of `image_size` px."""
    from tinymoe.models import ModelConfig

    return ModelConfig(
        layers=args.layers, dim=args.dim, heads=args.heads, image_size=image_size, patch_size=args.patch_size,
        num_classes=num_classes, moe_layers=args.moe_layers, experts=args.experts, k=args.k,
        routing=args.routing, router_weight=args.router_weight, router_input=args.router_input,
        drop_path=args.drop_path, expert_dropout=args.expert_dropout, init=args.init,
    )


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        shards = setup_process(args.threads, shard=args.routing not in PER_TOKEN_ROUTING)
    except SystemExit as err:
        print(err, file=sys.stderr)
        return 2

    # Heavy imports only now (see the module docstring).
    from tinymoe.checkpoint import CheckpointError
    from tinymoe.data import DatasetFormatError, DatasetNotFoundError, DownloadError, ImageDecodeError, UnsafePickleError
    from tinymoe.models import ConfigError
    from tinymoe.atomic import DirectoryLocked
    from tinymoe.pipeline import PipelineOptions, StageMismatch, load_splits, run_pipeline
    from tinymoe.superclasses import SuperclassFileError
    from tinymoe.training import TrainingDiverged, TrainingInterrupted

    expected = (CheckpointError, ConfigError, DatasetFormatError, DatasetNotFoundError, DownloadError,
                ImageDecodeError, SuperclassFileError, TrainingDiverged, StageMismatch, DirectoryLocked, UnsafePickleError,
                ValueError)

    def work():
        try:
            train = train_config(args, shards)
        except ValueError as err:  # a flag out of range: say which, without a traceback
            raise ConfigError(str(err)) from None
        splits = load_splits(args.data, experts=args.experts, download=args.download, cache_dir=args.cache_dir,
                             seed=args.seed)
        image_size = args.image_size or splits.image_size
        if image_size != splits.image_size:
            raise ConfigError(
                f"--image-size {image_size}: the {splits.name} images are {splits.image_size} px; tinymoe does not "
                "resize, so leave --image-size out or pass the dataset's size"
            )
        model = model_config(args, splits.num_classes, image_size)
        stages = {"both": ("dense", "superclasses", "moe"), "dense": ("dense",), "moe": ("moe",)}[args.model]
        out = args.out or Path("runs") / f"{args.layers}x{args.dim}-{splits.name}"
        opts = PipelineOptions(out=out, model=model, train=train, stages=stages,
                               holdout_fraction=args.holdout_fraction, train_fraction=args.train_fraction,
                               superclasses_file=args.superclasses, model_seed=args.seed, resume=args.resume,
                               upcycle=args.upcycle, teacher_forcing=args.teacher_forcing, force=args.force)
        print(f"tinymoe: {splits.name}, {splits.train_images.shape[0]} train / {splits.val_images.shape[0]} val "
              f"images, {splits.num_classes} classes -> {out}", flush=True)
        run_pipeline(splits, opts)

    return report_errors(expected, args.debug, work, stopped=(TrainingInterrupted,))


if __name__ == "__main__":
    sys.exit(main())
