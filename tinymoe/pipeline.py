"""The Mobile V-MoE protocol end to end, as a library function (`python -m tinymoe.train` is its CLI).

    (a) train the dense baseline on train minus a held-out split        -> OUT/dense/model.npz
    (b) its confusion matrix on the held-out split -> E superclasses     -> OUT/superclasses.json
    (c) train the MoE (router trained to predict the superclass)         -> OUT/moe-<routing>/model.npz
    (d) evaluate both on the validation split, print the comparison      -> OUT/results.json

Every stage writes its artefact to the output directory and is skipped when the artefact is already
there, so a long run can stop (Ctrl-C, a closed laptop) and continue where it was: a stage that was
interrupted part-way continues from its last checkpoint when `resume=True`.

A stage is reused only if it was made with the same settings: each stage's artefacts carry a
*fingerprint* (`stage_fingerprint`: model and train config, data identity, held-out split, superclasses,
seed, upcycling source); if an existing artefact's fingerprint differs from this run's, the run refuses
with the differing fields (`force=True` retrains that stage instead, replacing its files). While it runs,
the pipeline holds an exclusive lock on each stage folder it trains (and on the output directory if it
computes superclasses): a second run that would write the same is refused at once, while the dense and
the MoE of one run folder can train side by side given a superclasses file. A Ctrl-C anywhere stops it at the next point where everything done is saved
(TrainingInterrupted).

The held-out split (a seeded, per-class 10% of train) is never trained on by either model: the dense
model's confusions must be measured on unseen images, and the validation split is kept for the final
comparison only. The MoE trains on the same images as the dense model, so the two differ only in
their architecture.

With `upcycle=True` the MoE does not start from random weights but from the trained dense model
(`tinymoe.lab.upcycle`: every shared weight copied, every expert a copy of its block's dense MLP,
the router fresh); it then trains for the same number of epochs, so it has seen twice the training
of the dense model it is compared with (reported as `upcycled` in results.json).
"""

from __future__ import annotations

import json
import os
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from tinymoe import superclasses as sc
from tinymoe.atomic import atomic_write_text, lock_directory, remove_stale_temporaries
from tinymoe.checkpoint import load_checkpoint, load_model, read_metadata
from tinymoe.data import (
    DatasetNotFoundError,
    DownsampledImageNet,
    ImageFolder,
    TinyImageNet,
    find_tiny_imagenet,
    holdout_split,
    make_synthetic,
    train_split,
)
from tinymoe.data.downsampled import find_batches
from tinymoe.evaluation import evaluate, predict, supports_oracle
from tinymoe.lab import teacher_forced_forward, upcycle
from tinymoe.models import ConfigError, ModelConfig, build_model, count, router_class
from tinymoe.models.moe import SuperclassRouter
from tinymoe.routing_analysis import analyse_model, routing_summary
from tinymoe.training import (
    DOES_NOT_CHANGE_RESULTS,
    StopRequest,
    Trainer,
    TrainConfig,
    TrainingData,
    TrainingInterrupted,
)

DEFAULT_DATA_ROOT = "data"  # where `--data tiny-imagenet` looks (and downloads to), unless TINYMOE_DATA is set


@dataclass
class Splits:
    """A dataset ready for the protocol: uint8 (N, H, W, 3) images, int64 labels, class names."""

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    val_images: np.ndarray
    val_labels: np.ndarray
    classes: list[str]  # human-readable names, in label order
    wnids: list[str]  # identifiers (WordNet ids for ImageNet data), in label order
    true_groups: np.ndarray | None = None  # the planted class -> group map (synthetic data only)
    load_args: dict = field(default_factory=dict)  # load_splits(**load_args) loads the same data again

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_size(self) -> int:
        return int(self.train_images.shape[1])


def load_splits(
    data: str,
    *,
    experts: int = 10,
    download: bool = False,
    cache_dir=None,
    synthetic_size: int = 32,
    synthetic_per_class: int = 120,
    synthetic_classes_per_group: int = 3,
    seed: int = 0,
) -> Splits:
    """Resolve `data` — "synthetic", "tiny-imagenet", or a path — and decode its train and val splits.

    A path may be Tiny ImageNet (the official zip, the unpacked folder, or a folder holding either),
    a downsampled ImageNet folder (train_data_batch_*.npz or pickles + val_data), or a folder with
    `train/` and `val/` image folders (one sub-folder per class in each).
    """
    load_args = dict(data=str(data), experts=experts, synthetic_size=synthetic_size,
                     synthetic_per_class=synthetic_per_class,
                     synthetic_classes_per_group=synthetic_classes_per_group, seed=seed)
    splits = _load(data, experts, download, cache_dir, synthetic_size, synthetic_per_class,
                   synthetic_classes_per_group, seed)
    splits.load_args = load_args
    return splits


def _load(data, experts, download, cache_dir, synthetic_size, synthetic_per_class, synthetic_classes_per_group,
          seed) -> Splits:
    if data == "synthetic":
        kwargs = dict(n_groups=experts, classes_per_group=synthetic_classes_per_group, size=synthetic_size, seed=seed)
        train = make_synthetic(images_per_class=synthetic_per_class, split="train", **kwargs)
        val = make_synthetic(images_per_class=max(synthetic_per_class // 4, 1), split="val", **kwargs)
        return Splits("synthetic", train.images, train.labels, val.images, val.labels, list(train.classes),
                      list(train.classes), true_groups=np.asarray(train.class_to_group))
    root = Path(os.environ.get("TINYMOE_DATA", DEFAULT_DATA_ROOT)) if data == "tiny-imagenet" else Path(data).expanduser()
    if data == "tiny-imagenet" or _looks_like_tiny_imagenet(root):
        train = TinyImageNet(root, "train", download=download, cache_dir=cache_dir)
        val = TinyImageNet(root, "val", cache_dir=cache_dir)
        return Splits("tiny-imagenet", train.images, train.labels, val.images, val.labels, list(train.classes),
                      list(train.wnids))
    if not root.exists():
        raise DatasetNotFoundError(
            f"--data {data}: no such file or folder. Pass the Tiny ImageNet zip (tiny-imagenet-200.zip) or its "
            "folder, a downsampled ImageNet folder, a folder with train/ and val/ image folders, or 'synthetic'"
        )
    if _looks_like_downsampled(root):
        train = DownsampledImageNet(root, "train", cache_dir=cache_dir)
        val = DownsampledImageNet(root, "val", cache_dir=cache_dir)
        names = list(train.classes)
        return Splits("downsampled-imagenet", train.images, train.labels, val.images, val.labels, names, names)
    if (root / "train").is_dir() and (root / "val").is_dir():
        train = ImageFolder(root / "train", cache_dir=cache_dir)
        val = ImageFolder(root / "val", cache_dir=cache_dir)
        if list(val.classes) != list(train.classes):
            raise ValueError(f"{root}: train/ and val/ must hold the same class folders")
        names = list(train.classes)
        return Splits("image-folder", train.images, train.labels, val.images, val.labels, names, names)
    raise DatasetNotFoundError(
        f"--data {data}: {root} is not a dataset tinymoe knows: expected Tiny ImageNet (tiny-imagenet-200.zip or "
        "its folder with wnids.txt), downsampled ImageNet (train_data_batch_1.npz ... and val_data.npz), or "
        "train/ and val/ folders with one sub-folder per class"
    )


def _looks_like_downsampled(root: Path) -> bool:
    try:
        return bool(find_batches(root, "train"))
    except (DatasetNotFoundError, OSError):
        return False


def _looks_like_tiny_imagenet(root: Path) -> bool:
    try:
        find_tiny_imagenet(root)
        return True
    except (DatasetNotFoundError, OSError):
        return False


@dataclass
class PipelineOptions:
    """Everything the protocol needs besides the data. Defaults: the paper's 6×64 Mobile V-MoE."""

    out: Path
    model: ModelConfig  # the MoE config; its dense twin is `model.dense()`
    train: TrainConfig = field(default_factory=TrainConfig)
    stages: tuple[str, ...] = ("dense", "superclasses", "moe")  # a subset runs only those stages
    holdout_fraction: float = 0.1  # of train, per class, for the confusion matrix
    train_fraction: float = 1.0  # of the rest, per class, nested across fractions (tinymoe.data.train_fraction_split)
    superclasses_file: Path | None = None  # use these superclasses instead of computing them
    model_seed: int = 0  # initial weights
    resume: bool = False  # continue interrupted stages from their last.npz
    upcycle: bool = False  # initialise the MoE from the trained dense model (experts = copies of its MLPs)
    teacher_forcing: bool = False  # train the MoE routing each image by its true superclass (tinymoe.lab.routing)
    force: bool = False  # retrain a stage whose artefacts were made with other settings (else: refuse)


class StageMismatch(RuntimeError):
    """An existing stage artefact was made with other settings than this run's."""


# ModelConfig fields a dense model (moe_layers=0) never uses: not part of a dense stage's fingerprint, so
# dense runs that differ only in MoE settings share one dense stage (a field missing here is only stricter).
_MOE_ONLY = {"experts", "k", "routing", "router_weight", "router_input", "random_groups_seed", "capacity_factor",
             "eval_capacity_factor", "router_noise", "balance_weight", "expert_dropout"}


# TrainConfig fields that do not decide the trained model: how it logs or stops (DOES_NOT_CHANGE_RESULTS),
# and the shard count (--threads), which changes only the order of float sums. A finished stage is reused
# across thread counts; *resuming* one mid-way still needs the same count (Trainer checks it: bit-exact).
_NOT_IN_FINGERPRINT = DOES_NOT_CHANGE_RESULTS | {"shards"}


def _data_identity(load_args: dict) -> dict:
    """The load_splits arguments that decide the images: the synthetic generator's only for synthetic data."""
    if load_args.get("data") == "synthetic":
        return dict(load_args)
    return {k: v for k, v in load_args.items() if not (k.startswith("synthetic_") or k in ("experts", "seed"))}


def stage_fingerprint(config: ModelConfig, splits: Splits, opts: PipelineOptions, groups=None,
                      upcycled_from: dict | None = None) -> dict:
    """Everything that determines what a model stage trains: equal fingerprints, interchangeable models."""
    model = config.to_dict()
    if config.moe_layers == 0:
        model = {k: v for k, v in model.items() if k not in _MOE_ONLY}
    return {
        "model": model,
        "train": {k: v for k, v in asdict(opts.train).items() if k not in _NOT_IN_FINGERPRINT},
        "data": _data_identity(splits.load_args),
        "holdout_fraction": opts.holdout_fraction,
        "holdout_seed": opts.train.seed,
        "train_fraction": opts.train_fraction,
        "teacher_forcing": bool(opts.teacher_forcing and config.is_moe),
        "model_seed": opts.model_seed,
        "superclasses": None if groups is None else [int(g) for g in np.asarray(groups)],
        "upcycled_from": upcycled_from,
    }


def fingerprint_differences(saved: dict | None, current: dict) -> list[str]:
    """The fields (one level deep: 'train.lr', 'model.layers') in which two fingerprints differ."""
    if not isinstance(saved, dict):
        return ["(no fingerprint recorded: made by an older tinymoe)"]
    out = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += [f"{key}.{k}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        elif a != b:
            out.append(key)
    return out


def _check_stage(what: str, saved: dict | None, current: dict, files: list[Path], opts: PipelineOptions, log) -> None:
    """Refuse (or, with opts.force, delete `files` to redo) an artefact whose fingerprint differs."""
    differing = fingerprint_differences(saved, current)
    if not differing:
        return
    shown = ", ".join(differing[:8]) + (f" and {len(differing) - 8} more" if len(differing) > 8 else "")
    if not opts.force:
        raise StageMismatch(
            f"{what} in {opts.out} was made with other settings than this run (differs in {shown}); pass --force "
            "to retrain it (its files are replaced), or pass a new --out"
        )
    log(f"[{what}] --force: made with other settings ({shown}); retraining it")
    for path in files:
        path.unlink(missing_ok=True)


def _check_model_stage(stage: str, opts: PipelineOptions, fingerprint: dict, log) -> None:
    out_dir = _stage_dir(opts, stage)
    for name in ("model.npz", "last.npz"):  # the finished model if there is one, else the interrupted run
        if (out_dir / name).exists():
            saved = read_metadata(out_dir / name)["metadata"].get("fingerprint")
            files = [out_dir / f for f in ("model.npz", "last.npz", "metrics.jsonl", "summary.csv", "train_config.json")]
            _check_stage(f"the {stage} stage", saved, fingerprint, files, opts, log)
            return


def _stage_dir(opts: PipelineOptions, stage: str) -> Path:
    return opts.out / ("dense" if stage == "dense" else f"moe-{opts.model.routing}")


def _train_stage(stage: str, config: ModelConfig, data: TrainingData, opts: PipelineOptions, groups, log,
                 metadata: dict, stop: StopRequest, init_from=None):
    """Train (or reuse) one stage's model; `init_from` = a dense model to upcycle the MoE from."""
    out_dir = _stage_dir(opts, stage)
    final = out_dir / "model.npz"
    _check_model_stage(stage, opts, metadata["fingerprint"], log)
    if final.exists():
        log(f"[{stage}] reusing {final}")
        return load_model(final)
    log(f"[{stage}] training {config.describe()} for {opts.train.epochs} epochs -> {out_dir}")
    if init_from is not None:
        log(f"[{stage}] upcycled: every expert starts as a copy of the trained dense model's MLP")
        model = upcycle(init_from, config, seed=opts.model_seed)
    else:
        model = build_model(config, seed=opts.model_seed)
    if groups is not None:
        model.set_class_to_group(groups)
    forward = teacher_forced_forward if (opts.teacher_forcing and config.is_moe) else None
    summary = Trainer(model, opts.train, data, out_dir, log=log, metadata=metadata, stop=stop,
                      forward=forward).run(resume=opts.resume)
    if not summary.completed:
        return None  # stopped early (max_steps): later stages need the finished model
    return model


# ----------------------------------------------------------------------------------------------------
# The superclasses step: held-out predictions -> superclasses file (python -m tinymoe.superclasses)
# ----------------------------------------------------------------------------------------------------


def write_superclasses(
    out,
    labels,
    predictions,
    wnids: Sequence[str],
    names: Sequence[str],
    n_groups: int,
    seed: int = 0,
    per_group: int = 5,
) -> str:
    """Held-out predictions -> superclasses JSON at `out`; returns a printable report (accuracy,
    isolated classes, balance, and the Table-1-style table)."""
    num_classes = len(wnids)
    if len(names) != num_classes:
        raise ValueError(
            f"write_superclasses: {len(names)} names for {num_classes} wnids; give one name per class"
        )
    confusion = sc.confusion_matrix(labels, predictions, num_classes)
    assignment = sc.cluster(confusion, n_groups, seed=seed)
    balance = sc.group_balance(assignment, n_groups)
    images = int(confusion.sum())
    accuracy = float(np.trace(confusion)) / images if images else float("nan")
    isolated = sc.isolated_classes(confusion)
    meta = {
        "seed": int(seed),
        "held_out_images": images,
        "held_out_accuracy": None if images == 0 else accuracy,
        "isolated_classes": [wnids[c] for c in isolated],
        "balance": balance.as_dict(),
    }
    sc.save_superclasses(out, assignment, wnids, names, meta=meta)
    lines = [
        f"held-out split: {images} images of {num_classes} classes, dense-model accuracy {accuracy:.2%}",
        f"{isolated.size} classes never confused with another (placed by the balance rule)",
        str(balance),
        "",
        sc.superclass_table(assignment, names, per_group=per_group),
        "",
        f"wrote {os.fspath(out)}",
    ]
    return "\n".join(lines)


def predict_held_out(
    checkpoint, data: str | None = None, batch_size: int = 256, *, holdout_fraction: float | None = None,
    holdout_seed: int | None = None, cache_dir=None,
):
    """Run a trained dense model over the held-out split: returns (labels, predictions, wnids, names).

    The held-out split must be the one the dense model did *not* train on. `python -m tinymoe.train`
    records its fraction and seed, and how it loaded the data, in the checkpoint's metadata; they are
    read from there. `data`, `holdout_fraction` and `holdout_seed` override them (needed only for a
    checkpoint trained some other way).
    """
    recorded = load_checkpoint(checkpoint).metadata
    fraction = recorded.get("holdout_fraction") if holdout_fraction is None else holdout_fraction
    seed = recorded.get("holdout_seed") if holdout_seed is None else holdout_seed
    if fraction is None or seed is None:
        raise ValueError(
            f"{checkpoint} does not record which held-out split its training excluded (it was not written by "
            "python -m tinymoe.train); pass --holdout-fraction and --holdout-seed with the values its training used"
        )
    load_args = dict(recorded.get("data") or {})
    if data is not None:
        load_args = {"data": data} if data != load_args.get("data") else load_args
    if "data" not in load_args:
        raise ValueError(f"{checkpoint} does not record its dataset; pass --data")
    model = load_model(checkpoint)
    splits = load_splits(**load_args, cache_dir=cache_dir)
    if splits.num_classes != model.config.num_classes:
        raise ValueError(
            f"{checkpoint} classifies {model.config.num_classes} classes but {splits.name} has {splits.num_classes}"
        )
    _, held_out = holdout_split(splits.train_labels, fraction, seed=seed)
    logits = predict(model, splits.train_images[held_out], batch_size).logits
    return splits.train_labels[held_out], np.argmax(logits, axis=1), splits.wnids, splits.classes



def _superclasses_fingerprint(dense_fingerprint: dict, opts: PipelineOptions) -> dict:
    return {"dense": dense_fingerprint, "experts": opts.model.experts, "seed": opts.model_seed}


def _check_superclasses(opts: PipelineOptions, fingerprint: dict, log) -> None:
    """OUT/superclasses.json is used only if OUT/superclasses.fingerprint.json (written before it) matches."""
    path, record = opts.out / "superclasses.json", opts.out / "superclasses.fingerprint.json"
    if path.exists():
        saved = json.loads(record.read_text()) if record.exists() else None
        _check_stage("the superclasses stage", saved, fingerprint, [path, record], opts, log)


def superclasses_stage(dense, splits: Splits, holdout: np.ndarray, opts: PipelineOptions, log,
                       fingerprint: dict | None = None) -> np.ndarray:
    """Cluster the dense model's held-out confusions into E groups; write OUT/superclasses.json."""
    path = opts.out / "superclasses.json"
    if fingerprint is not None:
        _check_superclasses(opts, fingerprint, log)
    if path.exists():
        log(f"[superclasses] reusing {path}")
        return sc.load_superclasses(path).assignment
    if fingerprint is not None:  # first, so a superclasses.json is never next to another run's fingerprint
        atomic_write_text(opts.out / "superclasses.fingerprint.json", json.dumps(fingerprint) + "\n")
    images, labels = splits.train_images[holdout], splits.train_labels[holdout]
    predictions = np.argmax(predict(dense, images).logits, axis=1)
    report = write_superclasses(path, labels, predictions, splits.wnids, splits.classes, opts.model.experts,
                                   seed=opts.model_seed)
    log(f"[superclasses] dense top-1 on the {holdout.size} held-out images: "
        f"{np.mean(predictions == labels) * 100:.2f}%; wrote {path}")
    log(report)
    groups = sc.load_superclasses(path).assignment
    return groups


def run_pipeline(splits: Splits, opts: PipelineOptions, log=print) -> dict:
    """Run the stages in `opts.stages`; return (and write to OUT/results.json) the comparison.

    Holds the locks of what it writes throughout (DirectoryLocked if another run has one) and stops with
    TrainingInterrupted at the next safe point after a Ctrl-C (see the module docstring)."""
    with ExitStack() as held:
        for part in _parts_written(opts):
            held.enter_context(lock_directory(opts.out, part))
        stop = held.enter_context(StopRequest(log).installed())
        for directory in (opts.out, _stage_dir(opts, "dense"), _stage_dir(opts, "moe")):
            for stale in remove_stale_temporaries(directory):  # (only a dead process's)
                log(f"removed {stale}, a temporary file left by a run that was killed while writing")
        return _run_stages(splits, opts, log, stop)


def _parts_written(opts: PipelineOptions) -> list[str | None]:
    """What a run writes, each locked while it runs (OUT/.lock-PART): the folder of every stage it trains
    and, if it computes superclasses.json, the run folder itself (None: OUT/.lock). So two runs of one
    folder that write different stages may train side by side (`--model dense` beside `--model moe
    --superclasses FILE`); two that write the same are not."""
    computes_superclasses = "superclasses" in opts.stages and opts.superclasses_file is None
    written = [None] if computes_superclasses else []
    if "dense" in opts.stages or computes_superclasses:
        written.append(_stage_dir(opts, "dense").name)
    if "moe" in opts.stages:
        written.append(_stage_dir(opts, "moe").name)
    return written


def _stop_point(stop: StopRequest, opts: PipelineOptions, after: str) -> None:
    if stop.requested:
        raise TrainingInterrupted(
            f"interrupted after {after}; everything finished is saved in {opts.out}; run the same command with "
            "--resume to continue", None,
        )


def _run_stages(splits: Splits, opts: PipelineOptions, log, stop: StopRequest) -> dict:
    moe_config = opts.model.replace(num_classes=splits.num_classes, image_size=splits.image_size)
    dense_config = moe_config.dense()
    if opts.teacher_forcing and not issubclass(router_class(moe_config), SuperclassRouter):
        raise ConfigError(f"teacher forcing routes each image by its superclass, which routing={moe_config.routing!r} "
                          "does not have; use routing='superclass' (or 'random'), or leave teacher forcing off")
    train_idx, holdout = train_split(splits.train_labels, opts.holdout_fraction, opts.train_fraction,
                                     seed=opts.train.seed)
    data = TrainingData(splits.train_images, splits.train_labels, train_indices=train_idx,
                        eval_images=splits.val_images, eval_labels=splits.val_labels, eval_name="val")
    # Stored in both models' checkpoints: how to load the same data again, and which part of train was
    # held out (so `python -m tinymoe.superclasses --checkpoint` evaluates on exactly that part) and which
    # fraction of the rest was trained on (so `python -m tinymoe.evaluate --split train` rebuilds it).
    metadata = {"data": splits.load_args, "holdout_fraction": opts.holdout_fraction, "holdout_seed": opts.train.seed,
                "train_fraction": opts.train_fraction, "train_images": int(train_idx.size)}
    dense_fingerprint = stage_fingerprint(dense_config, splits, opts)
    results: dict = {"dataset": splits.name, "out": str(opts.out), "train_config": asdict(opts.train),
                     "holdout_images": int(holdout.size), "train_images": int(train_idx.size),
                     "train_fraction": opts.train_fraction}

    dense = None
    if "dense" in opts.stages or ("superclasses" in opts.stages and opts.superclasses_file is None):
        dense = _train_stage("dense", dense_config, data, opts, None, log,
                             {**metadata, "fingerprint": dense_fingerprint}, stop)
        if dense is None:
            return results
        _stop_point(stop, opts, "the dense stage")

    groups = None
    needs_groups = router_class(moe_config).needs_superclasses
    if opts.superclasses_file is not None:
        groups = sc.load_superclasses(opts.superclasses_file).assignment
        if groups.shape != (splits.num_classes,):
            raise ValueError(f"{opts.superclasses_file} maps {groups.size} classes, the data has {splits.num_classes}")
    elif "superclasses" in opts.stages and needs_groups:
        groups = superclasses_stage(dense, splits, holdout, opts, log,
                                    _superclasses_fingerprint(dense_fingerprint, opts))
        _stop_point(stop, opts, "the superclasses stage")
    elif "moe" in opts.stages and needs_groups:
        path = opts.out / "superclasses.json"
        _check_superclasses(opts, _superclasses_fingerprint(dense_fingerprint, opts), log)
        if not path.exists():
            raise FileNotFoundError(
                f"routing='superclass' needs superclasses: {path} does not exist. Run the dense and superclass "
                "stages first (the default), or pass --superclasses FILE"
            )
        groups = sc.load_superclasses(path).assignment

    moe = None
    if "moe" in opts.stages:
        init_from = None
        if opts.upcycle:
            if dense is None:
                dense_path = _stage_dir(opts, "dense") / "model.npz"
                _check_model_stage("dense", opts, dense_fingerprint, log)
                if not dense_path.exists():
                    raise FileNotFoundError(
                        f"upcycling the MoE needs the trained dense model: {dense_path} does not exist. Run the "
                        "dense stage first (the default --model both does)"
                    )
                dense = load_model(dense_path)
            init_from = dense
            metadata = {**metadata, "upcycled_from": str(_stage_dir(opts, "dense") / "model.npz")}
        fingerprint = stage_fingerprint(moe_config, splits, opts, groups,
                                        upcycled_from=dense_fingerprint if opts.upcycle else None)
        moe = _train_stage("moe", moe_config, data, opts, groups, log, {**metadata, "fingerprint": fingerprint},
                           stop, init_from=init_from)
        if moe is None:
            return results
        _stop_point(stop, opts, "the moe stage")

    for name, model in (("dense", dense), ("moe", moe)):
        if model is None:
            continue
        cost = count(model.config)
        # For a Mobile V-MoE also the oracle (every image to its true superclass's expert): the router's cost.
        result = evaluate(model, splits.val_images, splits.val_labels, oracle=supports_oracle(model))
        entry = {"config": model.config.to_dict(), "flops": cost.flops, "params": cost.params,
                 "active_params": cost.active_params, **result.as_dict()}
        if name == "moe":
            entry["upcycled"] = bool(opts.upcycle)
            entry["teacher_forcing"] = bool(opts.teacher_forcing)
        if name == "moe" and supports_oracle(model):  # what the router does: tinymoe.routing_analysis
            entry["routing"] = analyse_model(model, splits.val_images, splits.val_labels).as_dict()
        if name == "moe" and splits.true_groups is not None and groups is not None:
            entry["superclasses_match_planted_groups"] = bool(_same_partition(groups, splits.true_groups))
        results[name] = entry
    if dense is not None and moe is not None:
        results["delta_top1"] = results["moe"]["top1"] - results["dense"]["top1"]
    atomic_write_text(opts.out / "results.json", json.dumps(results, indent=2) + "\n")
    log(format_results(results))
    _stop_point(stop, opts, "the final evaluation (results.json is written)")
    return results


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two class -> group maps split the classes the same way (group ids may differ)."""
    pairs = set(zip(np.asarray(a).tolist(), np.asarray(b).tolist()))
    return len(pairs) == len(set(np.asarray(a).tolist())) == len(set(np.asarray(b).tolist()))


def format_results(results: dict) -> str:
    """The comparison table printed at the end of a run."""
    rows = [("model", "params", "active", "MFLOPs", "top-1", "top-5", "router acc")]
    for name in ("dense", "moe"):
        r = results.get(name)
        if r is None:
            continue
        router = "-" if r.get("router_accuracy") is None else f"{r['router_accuracy']:.1f}%"
        c = r["config"]
        label = f"{name} {c['layers']}x{c['dim']}" + (f" E={c['experts']} k={c['k']}" if name == "moe" else "")
        rows.append((label, f"{r['params'] / 1e6:.2f}M", f"{r['active_params'] / 1e6:.2f}M",
                     f"{r['flops'] / 1e6:.1f}", f"{r['top1']:.2f}%", f"{r['top5']:.2f}%", router))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if "delta_top1" in results:
        lines.append(f"MoE - dense top-1: {results['delta_top1']:+.2f} points (on {results['moe']['images']} val images)")
    moe = results.get("moe", {})
    if moe.get("expert_counts"):
        lines.append(f"MoE images per expert on val: {moe['expert_counts']}")
    lines += [f"MoE: {line}" for line in routing_summary(moe)]
    return "\n".join(lines)


__all__ = [
    "PipelineOptions", "Splits", "StageMismatch", "fingerprint_differences", "format_results", "load_splits",
    "predict_held_out", "run_pipeline", "stage_fingerprint", "superclasses_stage", "write_superclasses",
]
