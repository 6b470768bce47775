"""`python -m tinymoe.superclasses`: a dense model's held-out confusions -> superclasses JSON and a table.

    python -m tinymoe.superclasses --checkpoint DENSE.npz --data DIR --experts 10 --out superclasses.json
    python -m tinymoe.superclasses --predictions heldout.npz --experts 10 --out superclasses.json

Turns flags into calls: `tinymoe.pipeline.predict_held_out` (with --checkpoint) or
`tinymoe.superclasses.load_predictions` (with --predictions), then `tinymoe.pipeline.write_superclasses`.
Exit status 0 on success, 1 on unusable input (the message says why), 2 on bad flags.
"""

from __future__ import annotations

import argparse
from typing import Sequence

from tinymoe.checkpoint import CheckpointError
from tinymoe.data import DatasetFormatError, DatasetNotFoundError
from tinymoe.pipeline import predict_held_out, write_superclasses
from tinymoe.superclasses.files import load_predictions

__all__ = ["main"]


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tinymoe.superclasses",
        description=(
            "Group classes into superclasses (one per expert) by clustering a dense model's confusion "
            "graph on the held-out split, write them as JSON and print a table of them."
        ),
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="trained dense model (.npz) to evaluate on the held-out split")
    source.add_argument(
        "--predictions",
        help="held-out predictions made elsewhere: .npz with labels, predictions, wnids (and optionally names)",
    )
    parser.add_argument(
        "--data", "--data-dir", dest="data", default=None,
        help="with --checkpoint: the dataset, as for python -m tinymoe.train (default: the one it was trained on)",
    )
    parser.add_argument("--holdout-fraction", type=float, default=None,
                        help="with --checkpoint: override the held-out fraction recorded in it")
    parser.add_argument("--holdout-seed", type=int, default=None,
                        help="with --checkpoint: override the held-out seed recorded in it")
    parser.add_argument("--cache-dir", default=None, help="where decoded images are cached")
    parser.add_argument(
        "--experts", "-E", type=int, required=True, help="number of superclasses = number of experts"
    )
    parser.add_argument("--out", "--output", dest="out", default="superclasses.json", help="JSON file to write")
    parser.add_argument("--seed", type=int, default=0, help="seed of the k-means restarts (default 0)")
    parser.add_argument("--per-group", type=int, default=5, help="class names shown per superclass in the table")
    parser.add_argument("--batch-size", "-b", type=int, default=256, help="evaluation batch size")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.checkpoint is not None:
        try:
            labels, predictions, wnids, names = predict_held_out(
                args.checkpoint, data=args.data, batch_size=args.batch_size, holdout_fraction=args.holdout_fraction,
                holdout_seed=args.holdout_seed, cache_dir=args.cache_dir,
            )
        except (CheckpointError, DatasetFormatError, DatasetNotFoundError, ValueError) as error:
            parser.exit(1, f"{parser.prog}: error: {error}\n")
    else:
        try:
            labels, predictions, wnids, names = load_predictions(args.predictions)
        except (OSError, ValueError) as error:
            parser.exit(1, f"{parser.prog}: error: {error}\n")
    try:
        report = write_superclasses(
            args.out, labels, predictions, wnids, names, args.experts, seed=args.seed, per_group=args.per_group
        )
    except (OSError, TypeError, ValueError) as error:
        parser.exit(1, f"{parser.prog}: error: {error}\n")
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
