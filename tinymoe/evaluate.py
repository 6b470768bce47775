"""`python -m tinymoe.evaluate CHECKPOINT --data PATH [--split val] [--json]`: score a saved model.

Prints top-1 and top-5 accuracy (and, for a Mobile V-MoE, how often the router picks the image's
superclass and how many images each expert gets) on any dataset `python -m tinymoe.train` reads.

Without `--data`, the data is rebuilt exactly as the checkpoint records it was loaded for training
(`python -m tinymoe.train` stores its `load_splits` arguments in every checkpoint, so e.g. a synthetic set
comes back with its seed). `--data` names other data; if it names the recorded one, the recorded
arguments are used with it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tinymoe.train import report_errors, setup_process


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tinymoe.evaluate", description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", type=Path, help="a model checkpoint (.npz) written by tinymoe")
    p.add_argument("--data", default=None,
                   help="as for python -m tinymoe.train (default: the data the checkpoint records it was trained on)")
    p.add_argument("--split", choices=("val", "train"), default="val")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("-b", "--batch-size", type=int, default=256)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--oracle", action="store_true",
                   help="Mobile V-MoE: also evaluate with every image routed to its true superclass's expert")
    p.add_argument("--threads", type=int, default=None, help="cores to use (default: all): each batch is split over this many threads")
    p.add_argument("--debug", action="store_true", help="on an error, show the Python traceback")
    return p


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

    expected = (CheckpointError, ConfigError, DatasetFormatError, DatasetNotFoundError, ImageDecodeError,
                UnsafePickleError, ValueError)
    return report_errors(expected, args.debug, lambda: _evaluate(args, shards))


def _evaluate(args, shards) -> None:
    """Score the checkpoint and print the result (errors propagate to report_errors)."""
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
    recorded = load_checkpoint(args.checkpoint).metadata.get("data")
    splits = load_splits(**data_arguments(recorded, args.data, c.experts), cache_dir=args.cache_dir)
    if splits.num_classes != c.num_classes or splits.image_size != c.image_size:
        raise DatasetFormatError(
            f"{args.checkpoint} is a model of {c.num_classes} classes on {c.image_size} px images, but "
            f"{splits.name} has {splits.num_classes} classes of {splits.image_size} px"
        )
    images, labels = (
        (splits.val_images, splits.val_labels) if args.split == "val" else (splits.train_images, splits.train_labels)
    )
    result = evaluate(model, images, labels, batch_size=args.batch_size, shards=shards, oracle=args.oracle).as_dict()
    cost = count(c)
    result.update(checkpoint=str(args.checkpoint), dataset=splits.name, split=args.split, model=c.describe(),
                  flops=cost.flops, params=cost.params, active_params=cost.active_params)
    if args.json:
        print(json.dumps(result))
        return
    print(f"{c.describe()}\n{splits.name} {args.split}: {result['images']} images")
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
