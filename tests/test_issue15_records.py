"""The recorded runs of issue 15 (bench/results/data-scale, long, mechanism): every run's per-image val
predictions reproduce the numbers its record reports, every run routed with base seed 0's superclasses,
and the shipped checkpoints (the 100%-data pairs, the long run's pairs) load into today's tinymoe as the
recorded models and, where the Tiny ImageNet zip is at hand, reproduce those predictions image by image."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from tinymoe.checkpoint import LEGACY_FIELDS, load_model
from tinymoe.evaluation import predict
from tinymoe.lab import paired_difference

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
GRIDS = ("data-scale", "long", "mechanism")
RECORDS = sorted(p for grid in GRIDS for p in (RESULTS / grid).glob("*.json"))
SHIPPED = sorted({(grid, p.name.rsplit("-", 1)[0]) for grid in GRIDS for p in (RESULTS / grid / "models").glob("*.npz")})
SUPERCLASSES = RESULTS / "study" / "superclasses-base-seed0.json"
ZIP = Path(os.environ.get("TINYMOE_TEST_ZIP", ROOT.parent / "shared" / "data" / "tiny-imagenet-200.zip"))


def predictions(record: dict) -> dict:
    with np.load(ROOT / record["predictions"], allow_pickle=False) as p:
        return {k: p[k] for k in p.files}


@pytest.mark.parametrize("path", RECORDS, ids=[f"{p.parent.name}/{p.stem}" for p in RECORDS])
def test_the_predictions_reproduce_the_record(path):
    record = json.loads(path.read_text())
    p = predictions(record)
    labels = p["labels"]
    assert labels.shape == (record["moe"]["images"],) == (5000,)
    assert 100 * np.mean(p["dense"] == labels) == pytest.approx(record["dense"]["top1"], abs=1e-9)
    assert 100 * np.mean(p["moe"] == labels) == pytest.approx(record["moe"]["top1"], abs=1e-9)
    experts = p["moe_experts"][:, 0]
    assert 100 * np.mean(p["class_to_group"][labels] == experts) == pytest.approx(record["moe"]["router_accuracy"], abs=1e-9)
    assert np.bincount(experts, minlength=10).tolist() == record["moe"]["expert_counts"]
    paired = paired_difference(p["dense"] == labels, p["moe"] == labels).as_dict()
    assert paired.keys() == record["paired"].keys()
    for key, value in paired.items():
        assert np.asarray(value) == pytest.approx(np.asarray(record["paired"][key]), abs=1e-9), key
    if record["grid"] != "data-scale":
        return
    # The run trained on its fraction of the images, for the same number of steps as every other run.
    assert abs(record["train_images"] - 90_000 * record["train_fraction"]) <= 200  # per class, rounded
    steps = record["train_config"]["epochs"] * (record["train_images"] // record["train_config"]["batch_size"])
    assert steps in (5265, 5250, 5280, 5160)  # 100%, 50%, 25%, 12.5% (tests/test_data_scale.py)


def test_every_run_routed_with_base_seed_0s_superclasses():
    classes = json.loads(SUPERCLASSES.read_text())["classes"]
    expected = [c["superclass"] for c in sorted(classes, key=lambda c: c["index"])]
    for path in RECORDS:
        assert predictions(json.loads(path.read_text()))["class_to_group"].tolist() == expected, path.name


@pytest.mark.parametrize("grid, name", SHIPPED, ids=[f"{g}/{n}" for g, n in SHIPPED])
def test_the_shipped_checkpoints_are_the_recorded_models(grid, name, tmp_path):
    record = json.loads((RESULTS / grid / f"{name}.json").read_text())
    dense, moe = (load_model(RESULTS / grid / "models" / f"{name}-{m}.npz") for m in ("dense", "moe"))
    for model, key in ((dense, "dense"), (moe, "moe")):  # (the long run's record predates a field's removal)
        recorded = {k: v for k, v in record[key]["config"].items() if k not in LEGACY_FIELDS}
        assert model.config.to_dict() == recorded, key
    p = predictions(record)
    np.testing.assert_array_equal(moe.class_to_group, p["class_to_group"])
    if not ZIP.is_file():
        pytest.skip(f"Tiny ImageNet is not at {ZIP} (set TINYMOE_TEST_ZIP); the checkpoints' configs are checked above")
    from tinymoe.data import TinyImageNet

    val = TinyImageNet(ZIP, "val", cache_dir=tmp_path, progress=False)
    np.testing.assert_array_equal(val.labels, p["labels"])
    np.testing.assert_array_equal(np.argmax(predict(dense, val.images).logits, axis=1), p["dense"])
    out = predict(moe, val.images)
    np.testing.assert_array_equal(np.argmax(out.logits, axis=1), p["moe"])
    np.testing.assert_array_equal(out.experts, p["moe_experts"])
