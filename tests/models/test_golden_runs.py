"""Refactors keep behaviour: a short seeded training run of every model variant, on both kernel
backends, must end at exactly the parameters recorded before the core was reshaped (issue 17).

The record (`golden_runs.json` beside this file) holds a SHA-256 of every final parameter's bytes, per
variant and backend, and the run's losses. It was written by the code before the refactor
(`python tests/models/test_golden_runs.py --record`) and must only ever be re-recorded for a change
that is meant to change results, saying so in the commit. The recipe is the CLI's (PyTorch init,
no clipping, reflect padding, label smoothing 0.1, AdamW 2e-3, wd 0.05, warm-up), spelled out here so
a change of library defaults does not move it; the model is tiny so the whole file takes seconds.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from tinymoe import kernels
from tinymoe.data import make_synthetic
from tinymoe.lab import teacher_forced_forward
from tinymoe.models import ModelConfig, build_model
from tinymoe.training import Trainer, TrainConfig, TrainingData

RECORD = Path(__file__).with_name("golden_runs.json")
BACKENDS = ("reference", "numba")

BASE = dict(layers=3, dim=32, heads=2, image_size=32, patch_size=8, num_classes=12, experts=4, moe_layers=2,
            init="pytorch")
VARIANTS = {
    "dense": dict(moe_layers=0),
    "superclass": dict(),
    "superclass-k2-regularised": dict(k=2, drop_path=0.1, expert_dropout=0.2),
    "superclass-mean-tokens": dict(router_input="mean_tokens"),
    "learned": dict(routing="learned"),
    "random": dict(routing="random"),
    "token": dict(routing="token", k=2),
    "teacher-forcing": dict(),  # + the lab's teacher-forced training step (below)
}
RECIPE = dict(epochs=2, batch_size=24, lr=2e-3, min_lr=1e-5, weight_decay=0.05, warmup_epochs=0.5, label_smoothing=0.1,
              clip_grad=None, augment=True, padding=4, pad_mode="reflect", seed=0, eval_every=1, log_every=1,
              prefetch=0, shards=1)


def _synthetic():
    return make_synthetic(n_groups=4, classes_per_group=3, images_per_class=24, size=32, seed=0)


def train_variant(name: str, backend: str, out: Path) -> dict:
    """Train one variant on one backend; return {"params": {name: sha256}, "losses": [...]}."""
    data = _synthetic()
    config = ModelConfig(**(BASE | VARIANTS[name]))
    model = build_model(config, seed=3)
    if config.is_moe and config.routing == "superclass":
        model.set_class_to_group(data.class_to_group)
    training = TrainingData(data.images, data.labels, eval_images=data.images[:24], eval_labels=data.labels[:24])
    losses = []
    with kernels.using(backend):
        forward = teacher_forced_forward if name == "teacher-forcing" else None
        Trainer(model, TrainConfig(**RECIPE), training, out, log=lambda *_: None, progress=False,
                forward=forward).run()
    for line in (out / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "loss" in row and "step" in row:
            losses.append(row["loss"])
    params = {key: hashlib.sha256(np.ascontiguousarray(p.data).tobytes()).hexdigest()[:16]
              for key, p in sorted(model.named_parameters())}  # the trained arrays (buffers are not trained)
    return {"params": params, "losses": losses}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_seeded_run_reproduces_the_recorded_parameters(variant, backend, tmp_path):
    record = json.loads(RECORD.read_text())[variant][backend]
    got = train_variant(variant, backend, tmp_path)
    assert got["losses"] == pytest.approx(record["losses"], rel=0, abs=0), "the loss trajectory changed"
    changed = sorted(k for k in record["params"] if got["params"].get(k) != record["params"][k])
    assert set(got["params"]) == set(record["params"]), "the parameter names changed"
    assert not changed, f"parameters no longer bit-identical to the record: {changed}"


if __name__ == "__main__":
    if sys.argv[1:] != ["--record"]:
        sys.exit("usage: python tests/models/test_golden_runs.py --record   (only for a change meant to change results)")
    import tempfile

    result = {}
    for variant in sorted(VARIANTS):
        result[variant] = {}
        for backend in BACKENDS:
            with tempfile.TemporaryDirectory() as tmp:
                result[variant][backend] = train_variant(variant, backend, Path(tmp))
            print(variant, backend, result[variant][backend]["losses"][-1])
    RECORD.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
