"""The trained 6×64 pair shipped for teaching (bench/results/models, written by bench/ship_models.py):
the checkpoints load into today's tinymoe, the per-image val table is consistent with itself and with
the model's superclasses, and, where the Tiny ImageNet zip is at hand, the weights reproduce the table
image by image."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from tinymoe.checkpoint import load_model
from tinymoe.evaluation import predict
from tinymoe.routing_analysis import RoutingAnalysis
from tinymoe.superclasses import load_superclasses

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "bench" / "results" / "models"
NAME = "6x64-calibrated-seed0"
ZIP = Path(os.environ.get("TINYMOE_TEST_ZIP", ROOT.parent / "shared" / "data" / "tiny-imagenet-200.zip"))


@pytest.fixture(scope="module")
def table():
    return json.loads((MODELS / f"{NAME}-val.json").read_text())


@pytest.fixture(scope="module")
def models():
    return load_model(MODELS / f"{NAME}-dense.npz"), load_model(MODELS / f"{NAME}-moe.npz")


def test_the_checkpoints_are_the_calibrated_6x64_pair(models, table):
    dense, moe = models
    for model, entry in ((dense, table["dense"]), (moe, table["moe"])):
        c = model.config
        assert (c.layers, c.dim, c.patch_size, c.image_size, c.num_classes, c.init) == (6, 64, 16, 64, 200, "pytorch")
        assert c.to_dict() == entry["config"]
    assert dense.config.moe_layers == 0 and (moe.config.experts, moe.config.k, moe.config.routing) == (10, 1, "superclass")
    groups = load_superclasses(ROOT / "bench" / "results" / "study" / "superclasses-base-seed0.json").assignment
    np.testing.assert_array_equal(moe.class_to_group, groups)
    np.testing.assert_array_equal(moe.class_to_group, table["moe"]["class_to_group"])


def test_the_per_image_table_agrees_with_itself(table):
    labels = np.asarray(table["labels"])
    routing = RoutingAnalysis.from_dict(table["moe"]["routing"])
    groups = np.asarray(table["moe"]["class_to_group"])
    assert labels.size == table["images"] == routing.experts.size == 5000
    np.testing.assert_array_equal(routing.superclasses, groups[labels])
    assert table["moe"]["top1"] == pytest.approx(100 * routing.correct.mean())
    assert table["dense"]["top1"] == pytest.approx(100 * np.mean(table["dense"]["correct"]))
    assert table["moe"]["routing"]["router_accuracy"] == pytest.approx(routing.router_accuracy)
    assert table["moe"]["routing"]["load"] == routing.load.tolist() and routing.load.sum() == 5000
    assert np.asarray(table["moe"]["routing"]["confusion"]).sum() == 5000


def test_the_weights_reproduce_the_table_on_the_val_images(models, table, tmp_path):
    if not ZIP.is_file():
        pytest.skip(f"Tiny ImageNet is not at {ZIP} (set TINYMOE_TEST_ZIP); the table is checked without it above")
    from tinymoe.data import TinyImageNet

    val = TinyImageNet(ZIP, "val", cache_dir=tmp_path, progress=False)
    np.testing.assert_array_equal(val.labels, table["labels"])
    dense, moe = models
    dense_correct = np.argmax(predict(dense, val.images).logits, axis=1) == val.labels
    moe_pred = predict(moe, val.images)
    np.testing.assert_array_equal(dense_correct.astype(int), table["dense"]["correct"])
    np.testing.assert_array_equal(np.argmax(moe_pred.logits, axis=1) == val.labels,
                                  np.asarray(table["moe"]["routing"]["per_image"]["correct"], bool))
    np.testing.assert_array_equal(moe_pred.experts[:, 0], table["moe"]["routing"]["per_image"]["expert"])
