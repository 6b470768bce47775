"""The training loop: exact resume, Ctrl-C, NaN detection, corrupt checkpoints, and the whole protocol
on synthetic data."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tinymoe.checkpoint import CheckpointError, load_checkpoint
from tinymoe.data import make_synthetic
from tinymoe.models import ModelConfig, build_model
from tinymoe.pipeline import PipelineOptions, load_splits, run_pipeline
from tinymoe.training import TrainConfig, TrainingData, TrainingDiverged, TrainingInterrupted
from tinymoe.testing.trainers import tiny_trainer

TINY = ModelConfig(layers=2, dim=16, heads=2, image_size=16, patch_size=8, num_classes=6, moe_layers=1, experts=3)


@pytest.fixture(scope="module")
def data():
    train = make_synthetic(n_groups=3, classes_per_group=2, images_per_class=24, size=16, seed=1)
    val = make_synthetic(n_groups=3, classes_per_group=2, images_per_class=6, size=16, seed=1, split="val")
    return train, TrainingData(train.images, train.labels, eval_images=val.images, eval_labels=val.labels)


def _trainer(tmp, data, config=TINY, **cfg):
    train, training_data = data
    return tiny_trainer(tmp, train, config, training_data, **cfg)


def _params(model):
    return {k: v.copy() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("routing", ["superclass", "token"])
def test_stopping_and_resuming_gives_the_same_parameters(tmp_path, data, routing):
    """Interrupt mid-epoch (max_steps), resume in a fresh Trainer: bit-identical to one long run."""
    config = TINY.replace(routing=routing)
    straight = _trainer(tmp_path / "a", data, config)
    straight.run()

    first = _trainer(tmp_path / "b", data, config, max_steps=13)  # inside epoch 2 of 3 (9 steps per epoch)
    summary = first.run()
    assert not summary.completed and summary.steps == 13
    assert not (tmp_path / "b" / "model.npz").exists()
    second = _trainer(tmp_path / "b", data, config)  # a new process would start exactly like this
    assert second.run(resume=True).completed

    a, b = _params(straight.model), _params(second.model)
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    untimed = [[{k: v for k, v in row.items() if k != "seconds"} for row in t.history] for t in (straight, second)]
    assert untimed[0] == untimed[1]


def test_same_seed_same_numbers_and_another_seed_differs(tmp_path, data):
    one, two, other = (_trainer(tmp_path / n, data, epochs=1, seed=s) for n, s in (("1", 0), ("2", 0), ("3", 1)))
    for t in (one, two, other):
        t.run()
    p1, p2, p3 = _params(one.model), _params(two.model), _params(other.model)
    assert all(np.array_equal(p1[k], p2[k]) for k in p1)
    assert not all(np.array_equal(p1[k], p3[k]) for k in p1)


def test_request_stop_saves_the_position_and_raises(tmp_path, data):
    trainer = _trainer(tmp_path, data)
    step = trainer.train_step

    def step_then_stop(*args):
        result = step(*args)
        if trainer.step == 2:
            trainer.request_stop()  # what the Ctrl-C handler does
        return result

    trainer.train_step = step_then_stop
    with pytest.raises(TrainingInterrupted, match="--resume") as stop:
        trainer.run()
    state = load_checkpoint(stop.value.checkpoint).state
    assert (state["step"], state["epoch"], state["position"]) == (2, 0, 2)


def test_an_existing_run_is_not_overwritten_without_resume(tmp_path, data):
    _trainer(tmp_path, data, max_steps=1).run()
    with pytest.raises(FileExistsError, match="resume"):
        _trainer(tmp_path, data).run()


def test_resuming_with_another_recipe_is_refused(tmp_path, data):
    _trainer(tmp_path, data, max_steps=1).run()
    with pytest.raises(CheckpointError, match=r"differs in \['lr'\]"):
        _trainer(tmp_path, data, lr=1e-3).run(resume=True)


def test_nan_loss_stops_with_the_step_and_the_last_checkpoint(tmp_path, data):
    trainer = _trainer(tmp_path, data, epochs=2)
    step = trainer.train_step

    def poison_after_first_epoch(x, y, lr):
        if trainer.step == 9:  # epoch 1 (9 steps) is done and checkpointed
            x = x.copy()
            x[0, 0, 0, 0] = np.nan
        return step(x, y, lr)

    trainer.train_step = poison_after_first_epoch
    with pytest.raises(TrainingDiverged, match=r"at step 10: .*last good checkpoint is .*last\.npz"):
        trainer.run()
    assert load_checkpoint(tmp_path / "last.npz").state["step"] == 9  # the good checkpoint is untouched


def test_a_corrupt_checkpoint_is_a_clear_error(tmp_path, data):
    _trainer(tmp_path, data, max_steps=2).run()
    path = tmp_path / "last.npz"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # truncated, as by a full disk
    with pytest.raises(CheckpointError, match="last.npz"):
        _trainer(tmp_path, data).run(resume=True)


def test_metrics_files(tmp_path, data):
    _trainer(tmp_path, data, epochs=2).run()
    rows = (tmp_path / "summary.csv").read_text().splitlines()
    assert rows[0] == "epoch,train_loss,eval_loss,eval_top1,eval_top5,lr" and len(rows) == 3
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert {"loss", "loss_classification", "loss_router", "lr", "step"} <= set(records[0])
    assert any("top1" in r for r in records)
    assert json.loads((tmp_path / "train_config.json").read_text())["epochs"] == 2


def test_the_protocol_on_synthetic_data_recovers_the_planted_superclasses(tmp_path):
    """The full pipeline (dense -> superclasses -> MoE -> table) in well under a minute.

    Stated accuracy: the synthetic classes of one superclass differ only in stripe orientation, which
    a 3-epoch model barely starts to learn, while superclasses differ in colour. So we require top-1
    well above chance (1/12 = 8.3%): at least 30%, i.e. the superclass is right; the clustering must
    find the planted superclasses exactly, and the router must send images to their superclass's
    expert (>= 90%).
    """
    start = time.perf_counter()
    splits = load_splits("synthetic", experts=4, synthetic_per_class=120, seed=0)
    config = ModelConfig(layers=3, dim=32, heads=2, patch_size=8, moe_layers=1, experts=4)
    opts = PipelineOptions(out=tmp_path, model=config, train=TrainConfig(epochs=3, batch_size=32, prefetch=0))
    results = run_pipeline(splits, opts, log=lambda *_: None)
    assert time.perf_counter() - start < 60
    assert results["moe"]["superclasses_match_planted_groups"]
    assert results["moe"]["router_accuracy"] >= 90
    assert results["dense"]["top1"] >= 30 and results["moe"]["top1"] >= 30
    assert (tmp_path / "results.json").exists() and (tmp_path / "superclasses.json").exists()
    routing = results["moe"]["routing"]  # tinymoe.routing_analysis, saved by the pipeline
    assert sum(routing["load"]) == results["moe"]["images"] == len(routing["per_image"]["expert"])
    assert routing["load"] == results["moe"]["expert_counts"]
    assert routing["router_accuracy"] == results["moe"]["router_accuracy"]

    logged = []
    run_pipeline(splits, opts, log=logged.append)  # every artefact exists: nothing is trained again
    assert any("reusing" in line and "dense" in line for line in logged)
    assert any("reusing" in line and "moe-superclass" in line for line in logged)


def test_cli_ctrl_c_then_resume(tmp_path):
    """A real SIGINT to `python -m tinymoe.train`: exit code 130, a message, and --resume finishes."""
    cmd = [sys.executable, "-m", "tinymoe.train", "--data", "synthetic", "--layers", "2", "--dim", "16",
           "--heads", "2", "--experts", "3", "--moe-layers", "1", "--epochs", "40", "-b", "16",
           "--model", "dense", "--out", str(tmp_path), "--threads", "1"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    for line in proc.stdout:  # wait until training is under way
        if line.startswith("epoch 1 "):
            break
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "--resume" in err and "last.npz" in err
    step = load_checkpoint(tmp_path / "dense" / "last.npz").state["step"]
    assert step > 0

    done = subprocess.run(cmd + ["--resume", "--max-steps", str(step + 3)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "resuming from" in done.stdout
    assert load_checkpoint(tmp_path / "dense" / "last.npz").state["step"] == step + 3


def test_cli_reports_a_missing_dataset_clearly(tmp_path):
    done = subprocess.run([sys.executable, "-m", "tinymoe.train", "--data", str(tmp_path / "nowhere")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and "Traceback" not in done.stderr


def test_evaluate_cli_scores_a_checkpoint(tmp_path):
    train = [sys.executable, "-m", "tinymoe.train", "--data", "synthetic", "--layers", "2", "--dim", "16", "--heads",
             "2", "--experts", "3", "--moe-layers", "1", "--epochs", "1", "-b", "32", "--out", str(tmp_path),
             "--threads", "1"]
    assert subprocess.run(train, capture_output=True, timeout=300).returncode == 0
    for stage, router in (("dense", False), ("moe-superclass", True)):
        done = subprocess.run([sys.executable, "-m", "tinymoe.evaluate", str(tmp_path / stage / "model.npz"),
                               "--data", "synthetic", "--json", "--threads", "1"] + (["--oracle"] if router else []),
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
        assert result["images"] == 270 and 0 <= result["top1"] <= result["top5"] <= 100
        assert (result["router_accuracy"] is not None) == router
        assert (result["oracle_top1"] is not None) == router
        if router:
            assert sum(result["expert_counts"]) == 270
    # A dense model has no router to replace: --oracle is refused, with the reason.
    done = subprocess.run([sys.executable, "-m", "tinymoe.evaluate", str(tmp_path / "dense" / "model.npz"),
                           "--data", "synthetic", "--oracle", "--threads", "1"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.startswith("error: --oracle") and "Traceback" not in done.stderr


def test_evaluate_cli_reports_a_corrupt_checkpoint(tmp_path):
    bad = tmp_path / "model.npz"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    done = subprocess.run([sys.executable, "-m", "tinymoe.evaluate", str(bad), "--data", "synthetic"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stderr.startswith("error: ") and "model.npz" in done.stderr


def test_a_checkpoint_from_before_a_setting_existed_resumes_with_its_default(tmp_path, data, monkeypatch):
    """Older checkpoints lack newer TrainConfig fields; they were trained with the default behaviour."""
    import tinymoe.training as training

    save = training.save_checkpoint

    def save_without_pad_mode(path, model, *, state=None, metadata=None):
        metadata = dict(metadata or {})
        metadata["train_config"] = {k: v for k, v in metadata["train_config"].items() if k != "pad_mode"}
        return save(path, model, state=state, metadata=metadata)

    monkeypatch.setattr(training, "save_checkpoint", save_without_pad_mode)
    _trainer(tmp_path / "old", data, max_steps=2, pad_mode="zero").run()  # zero padding: all there was then
    monkeypatch.setattr(training, "save_checkpoint", save)
    with pytest.raises(CheckpointError, match=r"differs in \['pad_mode'\]"):  # not the new default, reflect
        _trainer(tmp_path / "old", data).run(resume=True)
    assert _trainer(tmp_path / "old", data, pad_mode="zero").run(resume=True).completed

    _trainer(tmp_path / "new", data, max_steps=1).run()
    with pytest.raises(CheckpointError, match=r"differs in \['pad_mode'\]"):
        _trainer(tmp_path / "new", data, pad_mode="zero").run(resume=True)


def test_superclasses_cli_from_a_dense_checkpoint_reproduces_the_pipeline(tmp_path):
    """`python -m tinymoe.superclasses --checkpoint` finds the data and held-out split in the checkpoint
    and computes the same superclasses as the pipeline's own superclass stage."""
    splits = load_splits("synthetic", experts=3, synthetic_per_class=60, seed=0)
    config = ModelConfig(layers=2, dim=16, heads=2, patch_size=8, moe_layers=1, experts=3)
    opts = PipelineOptions(out=tmp_path, model=config, train=TrainConfig(epochs=2, batch_size=32, prefetch=0),
                           stages=("dense", "superclasses"))
    run_pipeline(splits, opts, log=lambda *_: None)
    out = tmp_path / "cli.json"
    done = subprocess.run([sys.executable, "-m", "tinymoe.superclasses", "--checkpoint",
                           str(tmp_path / "dense" / "model.npz"), "--experts", "3", "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    from tinymoe.superclasses import load_superclasses

    ours, pipeline = load_superclasses(out), load_superclasses(tmp_path / "superclasses.json")
    np.testing.assert_array_equal(ours.assignment, pipeline.assignment)
    assert ours.wnids == pipeline.wnids


def test_superclasses_cli_needs_the_held_out_split_of_a_foreign_checkpoint(tmp_path):
    from tinymoe.checkpoint import save_checkpoint

    path = tmp_path / "dense.npz"
    save_checkpoint(path, build_model(TINY.dense(), seed=0))  # no record of how it was trained
    done = subprocess.run([sys.executable, "-m", "tinymoe.superclasses", "--checkpoint", str(path), "--experts", "3",
                           "--data", "synthetic"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "--holdout-fraction" in done.stderr and "Traceback" not in done.stderr


def test_the_command_line_tools_default_to_the_numba_kernels(monkeypatch):
    from tinymoe.train import apply_threads

    monkeypatch.delenv("TINYMOE_KERNELS", raising=False)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        monkeypatch.setenv(var, os.environ.get(var, "1"))  # restored after the test
    apply_threads(1)
    assert os.environ["TINYMOE_KERNELS"] == "numba" and os.environ["NUMBA_NUM_THREADS"] == "1"
    monkeypatch.setenv("TINYMOE_KERNELS", "reference")
    apply_threads(1)
    assert os.environ["TINYMOE_KERNELS"] == "reference"  # an explicit choice wins


def test_uneven_expert_load_is_reported_but_a_single_expert_is_not(tmp_path, data):
    trainer = _trainer(tmp_path, data)
    lines = []
    trainer.log = lines.append
    for counts in ([3, 3, 4], [10]):  # balanced; one expert (dense continued training) has nothing to balance
        trainer._warn_on_collapse(0, np.array(counts))
    assert lines == []
    trainer._warn_on_collapse(0, np.array([5, 0, 3]))
    trainer._warn_on_collapse(2, np.array([9, 1, 0]))
    assert "epoch 1: 1 of 3 experts got no images; the busiest expert got 62%" in lines[0]
    assert "epoch 3: 1 of 3 experts got no images; the busiest expert got 90%" in lines[1] and "Expert collapse" in lines[1]


def test_the_cli_knows_which_routing_variants_route_per_token():
    """train.py decides its thread layout before NumPy loads, from a list of names; it must match the routers."""
    from tinymoe.models import ROUTERS
    from tinymoe.train import PER_TOKEN_ROUTING

    assert set(PER_TOKEN_ROUTING) == {name for name, router in ROUTERS.items() if router.per_token}


# --------------------------------------------------------------------------------------------------
# Weight decay and gradient clipping, tested directly (not only through a run's accuracy)
def test_weight_decay_skips_biases_norms_class_token_and_position_embedding():
    from tinymoe.models import ModelConfig, build_model
    from tinymoe.training import make_optimizer

    model = build_model(ModelConfig(layers=2, dim=16, heads=2, image_size=8, patch_size=4, num_classes=6,
                                    experts=3, moe_layers=1), seed=0)
    optimizer = make_optimizer(model, TrainConfig(weight_decay=0.5, lr=0.1))
    for p in model.parameters():
        p.data[...] = 1.0  # biases start at zero, where decay would not show
        p.grad = np.zeros_like(p.data)  # no gradient: only the decay can move a parameter
    before = {name: p.data.copy() for name, p in model.named_parameters()}
    optimizer.step()
    names = list(before)
    exempt = [n for n in names if n.endswith(("bias", "cls_token", "pos_embed")) or ".norm" in n or n.startswith("norm")]
    assert any(n.endswith("cls_token") for n in exempt) and any(n.endswith("pos_embed") for n in exempt)
    assert any(n.endswith("bias") for n in exempt) and any("norm" in n and n.endswith("weight") for n in exempt)
    for name, p in model.named_parameters():
        if name in exempt:
            np.testing.assert_array_equal(p.data, before[name], err_msg=f"{name} was decayed")
        else:  # every matrix shrinks by exactly lr * wd
            np.testing.assert_allclose(p.data, before[name] * (1 - 0.1 * 0.5), rtol=1e-6, err_msg=name)


def test_clip_grad_norm_scales_to_the_limit_and_keeps_the_direction():
    from tinymoe.nn import Parameter
    from tinymoe.training import clip_grad_norm

    a, b = Parameter(np.zeros(2)), Parameter(np.zeros(1))
    a.grad, b.grad = np.array([6.0, 0.0]), np.array([8.0])  # global norm 10
    assert clip_grad_norm([a, b], 1.0) == pytest.approx(10.0)
    np.testing.assert_allclose(np.sqrt(np.sum(a.grad**2) + np.sum(b.grad**2)), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.concatenate([a.grad, b.grad]), [0.6, 0.0, 0.8], rtol=1e-5)  # same direction
    a.grad, b.grad = np.array([0.3, 0.0]), np.array([0.4])  # norm 0.5, below the limit: untouched
    assert clip_grad_norm([a, b], 1.0) == pytest.approx(0.5)
    np.testing.assert_array_equal(np.concatenate([a.grad, b.grad]), [0.3, 0.0, 0.4])
