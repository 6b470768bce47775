"""`python -m tinymoe.evaluate CHECKPOINT [--data PATH] [--split val] [--json]`: score a saved model.

Prints top-1 and top-5 accuracy (and, for a Mobile V-MoE, how often the router picks the image's
superclass and how many images each expert gets) on any dataset `python -m tinymoe.train` reads.

Without `--data`, the data is rebuilt exactly as the checkpoint records it was loaded for training
(`python -m tinymoe.train` stores its `load_splits` arguments in every checkpoint, so e.g. a synthetic set
comes back with its seed). `--data` names other data; if it names the recorded one, the recorded
arguments are used with it.

Splits: `val`; `train`, the training images the model was actually trained on, un-augmented (train
minus the held-out split, then the --train-fraction subset, rebuilt from the checkpoint's metadata:
the clean training accuracy, for train-val gaps); `train-all`, every image of the train split.
`--max-images N` scores a seeded random subset of N of the split's images (`--sample-seed`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tinymoe.runtime import report_errors, setup_process  # standard library only: safe before NumPy loads


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tinymoe.evaluate", description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", type=Path, help="a model checkpoint (.npz) written by tinymoe")
    p.add_argument("--data", default=None,
                   help="as for python -m tinymoe.train (default: the data the checkpoint records it was trained on)")
    p.add_argument("--split", choices=("val", "train", "train-all"), default="val",
                   help="val; train: the images the model trained on (held-out split and --train-fraction "
                        "rebuilt from the checkpoint), without augmentation; train-all: all of the train split")
    p.add_argument("--max-images", type=int, default=None, metavar="N",
                   help="score a seeded random subset of N images of the split (default: all)")
    p.add_argument("--sample-seed", type=int, default=0, help="seed of the --max-images subset")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("-b", "--batch-size", type=int, default=256)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--oracle", action="store_true",
                   help="Mobile V-MoE: also evaluate with every image routed to its true superclass's expert")
    p.add_argument("--threads", type=int, default=None, help="cores to use (default: all): each batch is split over this many threads")
    p.add_argument("--debug", action="store_true", help="on an error, show the Python traceback")
    return p


def training_indices(metadata: dict, train_labels, where: str = "the checkpoint"):
    """The rows of the train split a model was trained on, from its checkpoint metadata (written by
    tinymoe.pipeline): train minus the held-out split, then the --train-fraction subset (1.0 if the
    metadata predates the option, which is what such runs used)."""
    from tinymoe.checkpoint import CheckpointError
    from tinymoe.data import train_split

    if metadata.get("holdout_fraction") is None or metadata.get("holdout_seed") is None:
        raise CheckpointError(
            f"{where} does not record which training images it was trained on (no holdout_fraction / "
            "holdout_seed in its metadata: not written by python -m tinymoe.train); use --split train-all"
        )
    train, _ = train_split(train_labels, metadata["holdout_fraction"], metadata.get("train_fraction", 1.0),
                           seed=metadata["holdout_seed"])
    return train


def subsample(indices, max_images: int | None, seed: int = 0):
    """A seeded random subset of `max_images` of `indices` (sorted), or all of them."""
    import numpy as np

    indices = np.asarray(indices, dtype=np.int64)
    if max_images is None or max_images >= indices.size:
        return indices
    if max_images < 1:
        raise ValueError(f"max_images must be >= 1, got {max_images}")
    return np.sort(np.random.default_rng([seed, 0x5A3B]).choice(indices, size=max_images, replace=False))


def data_arguments(recorded: dict | None, data: str | None, experts: int) -> dict:
    """The load_splits arguments for evaluating a checkpoint whose metadata records `recorded` (or None)."""
    if recorded and (data is None or data == recorded.get("data")):
        return dict(recorded)  # exactly the data the model was trained and evaluated on
    if data is None:
        raise ValueError("the checkpoint does not record which data it was trained on; pass --data")
    return {"data": data, "experts": experts}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        shards = setup_process(args.threads)
    except SystemExit as err:
        print(err, file=sys.stderr)
        return 2

    from tinymoe.checkpoint import CheckpointError
    from tinymoe.data import DatasetFormatError, DatasetNotFoundError, ImageDecodeError, UnsafePickleError
    from tinymoe.models import ConfigError
    from tinymoe.training import TrainingInterrupted

    expected = (CheckpointError, ConfigError, DatasetFormatError, DatasetNotFoundError, ImageDecodeError,
                UnsafePickleError, ValueError)
    return report_errors(expected, args.debug, lambda: _evaluate(args, shards), stopped=(TrainingInterrupted,))


def _evaluate(args, shards) -> None:
    """Score the checkpoint and print the result (errors propagate to report_errors)."""
    import numpy as np

    from tinymoe.checkpoint import load_checkpoint, load_model
    from tinymoe.data import DatasetFormatError
    from tinymoe.evaluation import evaluate, supports_oracle
    from tinymoe.models import count
    from tinymoe.pipeline import load_splits

    model = load_model(args.checkpoint)
    c = model.config
    if args.oracle and not supports_oracle(model):
        raise ValueError(f"--oracle routes each image to its superclass's expert; {args.checkpoint} is "
                         f"{c.describe()} without per-image superclasses. Leave --oracle out for this model")
    metadata = load_checkpoint(args.checkpoint).metadata
    splits = load_splits(**data_arguments(metadata.get("data"), args.data, c.experts), cache_dir=args.cache_dir)
    if splits.num_classes != c.num_classes or splits.image_size != c.image_size:
        raise DatasetFormatError(
            f"{args.checkpoint} is a model of {c.num_classes} classes on {c.image_size} px images, but "
            f"{splits.name} has {splits.num_classes} classes of {splits.image_size} px"
        )
    if args.split == "val":
        images, labels = splits.val_images, splits.val_labels
        rows = np.arange(labels.size)
    else:
        images, labels = splits.train_images, splits.train_labels
        rows = (training_indices(metadata, labels, str(args.checkpoint)) if args.split == "train"
                else np.arange(labels.size))
    pool = int(rows.size)
    rows = subsample(rows, args.max_images, args.sample_seed)
    if rows.size < labels.size:
        images, labels = images[rows], labels[rows]
    result = evaluate(model, images, labels, batch_size=args.batch_size, shards=shards, oracle=args.oracle).as_dict()
    cost = count(c)
    result.update(checkpoint=str(args.checkpoint), dataset=splits.name, split=args.split, model=c.describe(),
                  flops=cost.flops, params=cost.params, active_params=cost.active_params,
                  split_images=pool, sample_seed=args.sample_seed if int(rows.size) < pool else None)
    if args.split == "train":
        result["train_fraction"] = metadata.get("train_fraction", 1.0)
    if args.json:
        print(json.dumps(result))
        return
    sampled = f" (a random {result['images']} of {pool}, --sample-seed {args.sample_seed})" if rows.size < pool else ""
    print(f"{c.describe()}\n{splits.name} {args.split}: {result['images']} images{sampled}")
    print(f"top-1 {result['top1']:.2f}%   top-5 {result['top5']:.2f}%   loss {result['loss']:.4f}")
    if result["router_accuracy"] is not None:
        print(f"router picks the image's superclass: {result['router_accuracy']:.2f}%")
        right, wrong = result["top1_routed_right"], result["top1_routed_wrong"]
        print("top-1 on the images routed to their superclass: " + ("-" if right is None else f"{right:.2f}%")
              + ", on the others: " + ("-" if wrong is None else f"{wrong:.2f}%"))
    if result["oracle_top1"] is not None:
        print(f"top-1 with every image routed to its true superclass (oracle): {result['oracle_top1']:.2f}%")
    if result["expert_counts"] is not None:
        print(f"images per expert: {result['expert_counts']}")


if __name__ == "__main__":
    sys.exit(main())
