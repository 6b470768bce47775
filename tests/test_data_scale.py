"""Issue 15, the data-scale curve: --train-fraction (per class, seeded, nested, never the held-out
images, F=1 unchanged), equal optimizer steps across fractions, and the clean train accuracy."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from tinymoe.data import BatchLoader, holdout_split, train_fraction_split, train_split
from tinymoe.train import build_parser

FRACTIONS = (1.0, 0.5, 0.25, 0.125)


def _labels(classes=20, per_class=50, seed=0):
    """Uneven classes in a shuffled order, as a real training set might have."""
    rng = np.random.default_rng(seed)
    labels = np.concatenate([np.full(per_class + c % 7, c) for c in range(classes)])
    return labels[rng.permutation(labels.size)].astype(np.int64)


def test_per_class_counts_and_nested_subsets():
    labels = _labels()
    train, holdout = holdout_split(labels, 0.1, seed=3)
    subsets = {f: train_fraction_split(labels, train, f, seed=3) for f in FRACTIONS}
    for f, idx in subsets.items():
        assert idx.dtype == np.int64 and np.all(np.diff(idx) > 0)  # sorted, no repeats
        for c in np.unique(labels):
            n_c = np.count_nonzero(labels[train] == c)
            assert np.count_nonzero(labels[idx] == c) == max(1, math.floor(f * n_c + 0.5))
    for small, large in zip(FRACTIONS[1:], FRACTIONS[:-1]):
        assert np.all(np.isin(subsets[small], subsets[large])), (small, large)


def test_never_the_held_out_images_and_the_same_holdout_for_every_fraction():
    labels = _labels()
    first_holdout = holdout_split(labels, 0.1, seed=1)[1]
    for f in FRACTIONS:
        train, holdout = train_split(labels, 0.1, f, seed=1)
        np.testing.assert_array_equal(holdout, first_holdout)
        assert not np.intersect1d(train, holdout).size


def test_fraction_one_is_exactly_todays_training_set():
    labels = _labels()
    train, holdout = holdout_split(labels, 0.1, seed=0)
    np.testing.assert_array_equal(train_split(labels, 0.1, 1.0, seed=0)[0], train)
    np.testing.assert_array_equal(train_fraction_split(labels, train, 1.0, seed=0), train)


def test_deterministic_per_seed():
    labels = _labels()
    train = holdout_split(labels, 0.1, seed=0)[0]
    a = train_fraction_split(labels, train, 0.25, seed=0)
    np.testing.assert_array_equal(a, train_fraction_split(labels, train, 0.25, seed=0))
    assert not np.array_equal(a, train_fraction_split(labels, train, 0.25, seed=1))


@pytest.mark.parametrize("bad", [0.0, -0.5, 1.01, float("nan")])
def test_bad_fractions_are_refused_by_the_library(bad):
    labels = _labels()
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        train_fraction_split(labels, np.arange(labels.size), bad)


@pytest.mark.parametrize("bad", ["0", "1.5", "nan", "-1", "half"])
def test_bad_fractions_are_a_one_line_command_line_error(bad, capsys):
    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args(["--train-fraction", bad])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("python -m tinymoe.train: error: argument --train-fraction")
    assert "Traceback" not in "\n".join(err)
    assert build_parser().parse_args(["--train-fraction", "0.125"]).train_fraction == 0.125
    assert build_parser().parse_args([]).train_fraction == 1.0


def test_equal_optimizer_steps_across_fractions_on_tiny_imagenet_sized_labels():
    """Tiny ImageNet: 200 classes x 500 training images; 10% held out leaves 90,000. At fraction F the
    data-scale grid trains 15/F epochs with 1/F warm-up epochs at batch 256, and the Trainer takes
    epochs * (images // batch) steps (full batches only) and round(warmup * steps per epoch) warm-up
    steps. These are the counts the grid's README entry reports."""
    labels = np.repeat(np.arange(200), 500)
    expected = {1.0: (90000, 5265, 351), 0.5: (45000, 5250, 350), 0.25: (22600, 5280, 352),
                0.125: (11200, 5160, 344)}
    images = np.zeros((labels.size, 1, 1, 3), np.uint8)
    for f, (n, total, warmup) in expected.items():
        train, _ = train_split(labels, 0.1, f, seed=0)
        per_epoch = len(BatchLoader(images, labels, 256, shuffle=True, drop_last=True, indices=train))
        epochs, warmup_epochs = round(15 / f), 1 / f
        assert epochs == 15 / f  # whole epochs: no fractional --epochs needed
        assert (train.size, epochs * per_epoch, int(round(warmup_epochs * per_epoch))) == (n, total, warmup)
        assert abs(total - 5265) / 5265 < 0.02 and abs(warmup - 351) / 351 < 0.02


def _evaluate(*args):
    done = subprocess.run([sys.executable, "-m", "tinymoe.evaluate", *map(str, args), "--json", "--threads", "1"],
                          capture_output=True, text=True, timeout=180)
    return done


def test_a_fraction_run_records_its_images_and_evaluate_split_train_rebuilds_them(tmp_path):
    """`python -m tinymoe.train --train-fraction 0.5` on synthetic data: results.json and the checkpoint
    say the fraction and the image count; `evaluate --split train` scores exactly those images (not the
    held-out ones, not augmented), `--max-images` a seeded subset of them, `--split train-all` all of train."""
    from tinymoe.checkpoint import load_checkpoint, load_model
    from tinymoe.evaluation import evaluate
    from tinymoe.pipeline import load_splits

    train = [sys.executable, "-m", "tinymoe.train", "--data", "synthetic", "--layers", "2", "--dim", "16", "--heads",
             "2", "--experts", "3", "--moe-layers", "1", "--epochs", "1", "-b", "16", "--model", "dense",
             "--train-fraction", "0.5", "--seed", "2", "--out", str(tmp_path), "--threads", "1"]
    done = subprocess.run(train, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    splits = load_splits("synthetic", experts=3, seed=2)
    expected, holdout = train_split(splits.train_labels, 0.1, 0.5, seed=2)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["train_fraction"] == 0.5 and results["train_images"] == expected.size
    assert results["holdout_images"] == holdout.size
    checkpoint = tmp_path / "dense" / "model.npz"
    metadata = load_checkpoint(checkpoint).metadata
    assert metadata["train_fraction"] == 0.5 and metadata["train_images"] == expected.size

    done = _evaluate(checkpoint, "--split", "train")  # the data comes from the checkpoint's metadata
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["images"] == result["split_images"] == expected.size and result["train_fraction"] == 0.5
    model = load_model(checkpoint)
    clean = evaluate(model, splits.train_images[expected], splits.train_labels[expected]).as_dict()
    assert result["top1"] == pytest.approx(clean["top1"])

    done = _evaluate(checkpoint, "--split", "train", "--max-images", 50, "--sample-seed", 4)
    result = json.loads(done.stdout)
    assert result["images"] == 50 and result["split_images"] == expected.size and result["sample_seed"] == 4
    done = _evaluate(checkpoint, "--split", "train-all")
    assert json.loads(done.stdout)["images"] == splits.train_labels.size


def test_split_train_needs_a_checkpoint_that_records_its_training_images():
    from tinymoe.checkpoint import CheckpointError
    from tinymoe.evaluate import subsample, training_indices

    labels = _labels()
    with pytest.raises(CheckpointError, match="--split train-all"):
        training_indices({"data": {}}, labels)
    old = {"holdout_fraction": 0.1, "holdout_seed": 5}  # before --train-fraction existed: all of the rest
    np.testing.assert_array_equal(training_indices(old, labels), holdout_split(labels, 0.1, seed=5)[0])
    rows = np.arange(100, 400)
    a = subsample(rows, 30, seed=1)
    assert a.size == 30 and np.all(np.isin(a, rows)) and np.all(np.diff(a) > 0)
    np.testing.assert_array_equal(a, subsample(rows, 30, seed=1))
    assert subsample(rows, None).size == 300 and subsample(rows, 1000).size == 300


def test_resuming_with_another_train_fraction_is_refused(tmp_path):
    from tinymoe.checkpoint import CheckpointError
    from tinymoe.data import make_synthetic
    from tinymoe.models import ModelConfig
    from tinymoe.testing.trainers import tiny_trainer

    synthetic = make_synthetic(n_groups=3, classes_per_group=2, images_per_class=24, size=16, seed=1)
    config = ModelConfig(layers=2, dim=16, heads=2, image_size=16, patch_size=8, num_classes=6)
    first = tiny_trainer(tmp_path, synthetic, config, max_steps=1)
    first.metadata["train_fraction"] = 0.5
    first.run()
    again = tiny_trainer(tmp_path, synthetic, config)
    again.metadata["train_fraction"] = 1.0
    with pytest.raises(CheckpointError, match="train fraction 0.5"):
        again.run(resume=True)
    same = tiny_trainer(tmp_path, synthetic, config, max_steps=2)
    same.metadata["train_fraction"] = 0.5
    assert same.run(resume=True).epochs == 0  # (stopped inside the first epoch again, one step further)
