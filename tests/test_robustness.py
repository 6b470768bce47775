"""Robustness of the command-line tools, driven as a user drives them: real `python -m tinymoe.train` /
`tinymoe.evaluate` processes on tiny synthetic runs, broken on purpose (issue 16).

What every test asserts, besides its own point: the exit code (0 done, 2 refused with a reason, 130
stopped by Ctrl-C with its state saved), a one-line message on stderr (no traceback), no checkpoint
holding NaN or inf, and nothing lost that had been saved before.

The full disk is a real tiny tmpfs where the platform allows mounting one (a private mount namespace via
`unshare`); otherwise that test is skipped and the in-process ENOSPC tests below (monkeypatching
os.posix_fallocate, the layer under the cache's memory maps, and np.savez, the checkpoint's writer)
still run. Longer randomised fuzzing: bench/robustness.py.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
TINY = ["--layers", "2", "--dim", "16", "--heads", "2", "--experts", "3", "--moe-layers", "1", "--patch-size", "8",
        "--data", "synthetic", "--threads", "1", "--eval-every", "0"]


def _env(**extra):
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONWARNINGS="ignore", PYTHONPATH=str(REPO), **extra)
    env.update(NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    return env


def train(out, *flags, timeout=120):
    cmd = [sys.executable, "-m", "tinymoe.train", *TINY, "--out", str(out), *flags]
    return subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=REPO, timeout=timeout)


def start_train(out, *flags):
    cmd = [sys.executable, "-m", "tinymoe.train", *TINY, "--out", str(out), *flags]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=REPO)


def tool(module, *args, timeout=120):
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=_env(), cwd=REPO,
                          timeout=timeout)


def refused(done, *words):
    """Exit code 2 and a one-line message (no traceback) holding `words`."""
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "Traceback" not in done.stderr, done.stderr[-2000:]
    for word in words:
        assert word in last, last
    return last


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and not p.name.startswith(".lock")}


def assert_all_finite(root: Path):
    for path in root.rglob("*.npz"):
        with np.load(path, allow_pickle=False) as z:
            for key in z.files:
                if z[key].dtype.kind == "f":
                    assert np.all(np.isfinite(z[key])), f"{path}: {key} is not finite"


def no_temporaries(root: Path):
    return [p for p in root.rglob("*") if p.name.endswith(".tmp") or ".tmp" in p.name]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One finished two-stage run (seed 3) that several tests try to misuse."""
    out = tmp_path_factory.mktemp("robust") / "run"
    done = train(out, "--epochs", "1", "-b", "64", "--seed", "3")
    assert done.returncode == 0, done.stderr
    return out


# --------------------------------------------------------------------------------------------------
def test_a_diverging_run_saves_nothing_non_finite_and_stops_non_zero(tmp_path):
    # -b 900: one step per epoch, so the weights turn NaN in an epoch's last (only) update
    done = train(tmp_path, "--model", "dense", "--epochs", "4", "--lr", "1e6", "-b", "900")
    last = refused(done, "training diverged", "last good checkpoint", "--lr")
    assert not (tmp_path / "dense" / "model.npz").exists()
    assert_all_finite(tmp_path)
    assert (tmp_path / "dense" / "last.npz").exists()  # named in the message and loadable: resume diverges again
    again = train(tmp_path, "--model", "dense", "--epochs", "4", "--lr", "1e6", "-b", "900", "--resume")
    refused(again, "training diverged")
    assert_all_finite(tmp_path)
    assert "last.npz" in last


def test_a_stage_is_reused_only_with_the_same_settings(finished):
    before = snapshot(finished)
    refused(train(finished, "--epochs", "1", "-b", "64", "--seed", "3", "--lr", "1e-3", "--layers", "3"),
            "differs in", "model.layers", "train.lr", "--force", "--out")
    refused(train(finished, "--epochs", "1", "-b", "64", "--seed", "3", "--resume", "--holdout-fraction", "0.3"),
            "holdout_fraction")
    refused(train(finished, "--epochs", "1", "-b", "64", "--seed", "4"), "data.seed", "model_seed")
    assert snapshot(finished) == before  # a refused run overwrote nothing (train_config.json included)
    same = train(finished, "--epochs", "1", "-b", "64", "--seed", "3")
    assert same.returncode == 0 and "reusing" in same.stdout, same.stderr


def test_a_refused_resume_leaves_the_interrupted_run_as_it_was(tmp_path):
    assert train(tmp_path, "--model", "dense", "--epochs", "2", "-b", "64", "--max-steps", "3").returncode == 0
    before = snapshot(tmp_path)
    refused(train(tmp_path, "--model", "dense", "--epochs", "2", "-b", "64", "--resume", "--lr", "1e-3"), "train.lr")
    assert snapshot(tmp_path) == before
    forced = train(tmp_path, "--model", "dense", "--epochs", "1", "-b", "64", "--force")
    assert forced.returncode == 0 and (tmp_path / "dense" / "model.npz").exists(), forced.stderr


def test_evaluate_rebuilds_the_data_the_checkpoint_was_trained_on(finished):
    recorded = json.loads((finished / "results.json").read_text())["dense"]["top1"]
    done = tool("tinymoe.evaluate", str(finished / "dense" / "model.npz"), "--json", "--threads", "1")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["top1"] == pytest.approx(recorded)


def test_results_are_written_with_the_users_permissions(finished):
    umask = os.umask(0o022)
    os.umask(umask)
    for path in (finished / "results.json", finished / "dense" / "model.npz", finished / "dense" / "summary.csv"):
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path


def test_ctrl_c_at_a_stage_boundary_stops_the_run(tmp_path):
    proc = start_train(tmp_path, "--epochs", "1", "-b", "64")
    for line in proc.stdout:  # the dense stage's last epoch is done: its final save and the next stage follow
        if line.startswith("epoch 1 "):
            proc.send_signal(signal.SIGINT)
            break
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "--resume" in err and "Traceback" not in err
    assert (tmp_path / "dense" / "model.npz").exists()  # the stage it was in is saved...
    assert not (tmp_path / "moe-superclass" / "model.npz").exists()  # ...and no further stage was trained
    done = train(tmp_path, "--epochs", "1", "-b", "64", "--resume")
    assert done.returncode == 0 and (tmp_path / "results.json").exists(), done.stderr
    assert_all_finite(tmp_path)


def test_kill_9_during_training_then_resume_loses_nothing_saved(tmp_path):
    epochs, after = 10, random.choice([1, 2, 3])  # kill in a random epoch among the first few...
    proc = start_train(tmp_path, "--model", "dense", "--epochs", str(epochs), "-b", "64")
    for line in proc.stdout:
        if line.startswith(f"epoch {after} "):
            break
    time.sleep(random.uniform(0.0, 0.03))  # ...at a random point in it, maybe inside a checkpoint write
    proc.kill()  # (epochs enough that a fast machine cannot finish the run in between)
    proc.wait()
    assert not (tmp_path / "dense" / "model.npz").exists(), "the run finished before the kill: nothing was tested"
    saved = tmp_path / "dense" / "last.npz"
    with np.load(saved, allow_pickle=False) as z:  # an atomic write: the old file or the new one, whole
        assert "__metadata__" in z.files
    from tinymoe.checkpoint import load_checkpoint

    step = load_checkpoint(saved).state["step"]
    assert step >= 15 * after  # the epochs logged (15 steps of 64 on 972 images each) were saved
    done = train(tmp_path, "--model", "dense", "--epochs", str(epochs), "-b", "64", "--resume")
    assert done.returncode == 0, done.stderr
    assert "resuming from" in done.stdout
    history = load_checkpoint(tmp_path / "dense" / "model.npz").metadata["history"]
    assert [row["epoch"] for row in history] == list(range(1, epochs + 1))
    assert not no_temporaries(tmp_path)


def test_an_epoch_is_saved_before_its_line_is_printed(tmp_path):
    """What makes the kill test above hold at any instant: when "epoch N ..." reaches the log, last.npz
    already holds epoch N (a kill just after the line loses nothing the user saw reported). Deterministic,
    in process: the log callback reads the checkpoint at the moment each epoch line is written."""
    from tinymoe.checkpoint import load_checkpoint
    from tinymoe.data import make_synthetic
    from tinymoe.models import ModelConfig
    from tinymoe.testing.trainers import tiny_trainer

    synthetic = make_synthetic(n_groups=2, classes_per_group=2, images_per_class=8, size=16, seed=1)
    config = ModelConfig(layers=2, dim=16, heads=2, image_size=16, patch_size=8, num_classes=4, moe_layers=0)
    trainer = tiny_trainer(tmp_path, synthetic, config, epochs=3)
    seen = []

    def log(line, *_):
        if str(line).startswith("epoch "):
            epoch = int(str(line).split()[1])
            state = load_checkpoint(trainer.last_path).state
            seen.append((epoch, state["epoch"], state["step"]))

    trainer.log = log
    trainer.run()
    steps = trainer.steps_per_epoch
    assert seen == [(n, n, n * steps) for n in (1, 2, 3)], seen
    assert_all_finite(tmp_path)


def test_kill_9_inside_a_checkpoint_write_leaves_the_old_file_and_the_temporary_is_removed(tmp_path):
    out = tmp_path / "run"
    assert train(out, "--model", "dense", "--epochs", "1", "-b", "64", "--max-steps", "2").returncode == 0
    last = out / "dense" / "last.npz"
    before = last.read_bytes()
    writer = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom tinymoe.atomic import atomic_write\n"
         "with atomic_write(sys.argv[1], 'wb') as f:\n    f.write(b'half a checkpoint'); f.flush()\n"
         "    print('writing', flush=True); time.sleep(60)\n", str(last)],
        stdout=subprocess.PIPE, text=True, env=_env(), cwd=REPO)
    assert writer.stdout.readline().strip() == "writing"
    writer.kill()
    writer.wait()
    assert last.read_bytes() == before  # the kill did not touch the checkpoint
    assert len(no_temporaries(out)) == 1  # but left its temporary
    done = train(out, "--model", "dense", "--epochs", "1", "-b", "64", "--resume")
    assert done.returncode == 0, done.stderr
    assert "removed" in done.stdout and not no_temporaries(out)


def test_a_second_run_into_the_same_out_is_refused_at_once(tmp_path):
    first = start_train(tmp_path, "--model", "dense", "--epochs", "3", "-b", "64")
    for line in first.stdout:
        if line.startswith("[dense] training"):
            break
    first.send_signal(signal.SIGSTOP)  # hold it mid-run, lock taken, however fast the machine
    try:
        started = time.perf_counter()
        refused(train(tmp_path, "--model", "dense", "--epochs", "3", "-b", "64"), "in use by process", "--out")
        assert time.perf_counter() - started < 30
    finally:
        first.send_signal(signal.SIGCONT)
    first.communicate(timeout=120)
    assert first.returncode == 0
    assert (tmp_path / "dense" / "model.npz").exists()


def test_dense_and_moe_of_one_folder_train_side_by_side_given_superclasses(tmp_path):
    """The lock is per stage folder: `--model dense` and `--model moe --superclasses FILE` into one --out
    run at the same time (how issue 15's pairs train on two cores), while a second dense run is refused."""
    groups = tmp_path / "groups.json"
    done = train(tmp_path / "first", "--epochs", "1", "-b", "64")  # a run that writes superclasses.json
    assert done.returncode == 0, done.stderr
    shutil.copy(tmp_path / "first" / "superclasses.json", groups)
    out = tmp_path / "pair"
    dense = start_train(out, "--model", "dense", "--epochs", "2", "-b", "64")
    for line in dense.stdout:
        if line.startswith("[dense] training"):
            break
    dense.send_signal(signal.SIGSTOP)  # hold it mid-run, its lock taken
    try:
        refused(train(out, "--model", "dense", "--epochs", "2", "-b", "64"), "dense is in use by process", "--out")
        moe = train(out, "--model", "moe", "--superclasses", str(groups), "--epochs", "2", "-b", "64")
        assert moe.returncode == 0, moe.stderr  # trained while the dense stage's run held its own lock
    finally:
        dense.send_signal(signal.SIGCONT)
    dense.communicate(timeout=120)
    assert dense.returncode == 0
    assert (out / "dense" / "model.npz").exists() and (out / "moe-superclass" / "model.npz").exists()
    both = train(out, "--epochs", "2", "-b", "64", "--superclasses", str(groups), "--resume")  # reuses both
    assert both.returncode == 0, both.stderr
    results = json.loads((out / "results.json").read_text())
    assert "delta_top1" in results
    assert_all_finite(out)


def test_hostile_and_corrupt_inputs_get_one_line_errors(tmp_path):
    # A downsampled-ImageNet folder whose batch pickle references one list from everywhere (2**60 paths)...
    folder = tmp_path / "imagenet32"
    folder.mkdir()
    shared = []
    for _ in range(60):
        shared = [shared, shared]
    for name in [f"train_data_batch_{i}" for i in range(1, 11)] + ["val_data"]:
        (folder / name).write_bytes(pickle.dumps({"data": shared, "labels": [1]}, protocol=2))
    started = time.perf_counter()
    refused(tool("tinymoe.train", "--data", str(folder), "--out", str(tmp_path / "r"), "--threads", "1"), "Refusing")
    assert time.perf_counter() - started < 30
    # ...or nests lists 100,000 deep (opcodes by hand: pickle.dumps itself would recurse)
    for name in [f"train_data_batch_{i}" for i in range(1, 11)] + ["val_data"]:
        (folder / name).write_bytes(b"\x80\x02" + b"]" * 100_000 + b"a" * 99_999 + b".")
    refused(tool("tinymoe.train", "--data", str(folder), "--out", str(tmp_path / "r"), "--threads", "1"), "Refusing")
    # A checkpoint that is a pickle, or a zip whose array is a pickled object array: no pickle advice, no load
    fake = tmp_path / "model.npz"
    fake.write_bytes(pickle.dumps({"weights": [1, 2]}))
    last = refused(tool("tinymoe.evaluate", str(fake), "--threads", "1"), "not a readable tinymoe checkpoint")
    assert "pickle" not in last
    with zipfile.ZipFile(fake, "w") as z:
        with z.open("__metadata__.npy", "w") as f:
            np.lib.format.write_array(f, np.array([object()], dtype=object), allow_pickle=True)
    refused(tool("tinymoe.evaluate", str(fake), "--threads", "1"), str(fake))
    debug = tool("tinymoe.evaluate", str(fake), "--threads", "1", "--debug")  # the traceback, on request
    assert debug.returncode != 0 and "Traceback" in debug.stderr
    # Bad flags
    refused(train(tmp_path / "f", "--threads", "0"), "--threads")
    refused(train(tmp_path / "f", "--holdout-fraction", "2"))
    refused(train(tmp_path / "f", "--epochs", "0"), "epochs")


def _can_mount_tmpfs() -> bool:
    if shutil.which("unshare") is None or not sys.platform.startswith("linux"):
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                           capture_output=True, timeout=30)
    return probe.returncode == 0


@pytest.mark.skipif(not _can_mount_tmpfs(), reason="cannot mount a private tmpfs here (see the ENOSPC tests below)")
def test_a_full_disk_is_a_one_line_error_and_keeps_what_was_saved(tmp_path, finished):
    size = (finished / "dense" / "last.npz").stat().st_size
    disk = tmp_path / "disk"
    disk.mkdir()
    # Room for one last.npz beside the 1 MiB margin of the free-space check, not for the next one's temporary.
    kib = (2**20 + int(1.5 * size)) // 1024
    check = f"from tinymoe.checkpoint import load_checkpoint as l; print('step', l('{disk}/run/dense/last.npz').state['step'])"
    script = (f"mount -t tmpfs -o size={kib}k tmpfs {disk} && {sys.executable} -m tinymoe.train {' '.join(TINY)} "
              f"--model dense --epochs 3 -b 64 --out {disk}/run; echo rc=$?; {sys.executable} -c \"{check}\"; "
              f"ls -a {disk}/run/dense")
    done = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, env=_env(),
                          cwd=REPO, timeout=120)
    assert "rc=2" in done.stdout, (done.stdout, done.stderr)
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: not enough free space to write") and "Traceback" not in done.stderr
    assert "step 15" in done.stdout  # epoch 1's last.npz (15 steps) is still there and readable
    assert ".tmp" not in done.stdout


@pytest.mark.skipif(not _can_mount_tmpfs(), reason="cannot mount a private tmpfs here (see the ENOSPC tests below)")
def test_a_cache_larger_than_the_disk_is_a_write_error_not_sigbus(tmp_path):
    """Writing through a memory map whose pages have no disk blocks kills the process with SIGBUS (rc 135):
    the blocks are reserved first. The free-space check is switched off here to test that second guard."""
    disk = tmp_path / "disk"
    disk.mkdir()
    code = ("import numpy as np\nfrom tinymoe.data import cache\ncache.check_free_space = lambda *a, **k: None\n"
            "try:\n    cache.build_cached(cache.Path(%r), 'train', {}, {'x': ((4 * 2**20,), np.dtype(np.uint8))}, "
            "lambda a: a['x'].fill(1))\nexcept OSError as e:\n    print('error:', e)\n" % str(disk))
    script = f"mount -t tmpfs -o size=1m tmpfs {disk} && {sys.executable} -c \"{code}\"; echo rc=$?; ls -a {disk}"
    done = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, env=_env(),
                          cwd=REPO, timeout=60)
    assert "rc=0" in done.stdout and "No space left" in done.stdout and "--cache-dir" in done.stdout, done
    assert ".tmp" not in done.stdout  # its temporary is removed


# ----- ENOSPC simulated in process, at the layer that sees it -------------------------------------
def test_cache_build_on_a_full_disk_is_a_write_error_not_sigbus(tmp_path, monkeypatch):
    from tinymoe.atomic import WriteError
    from tinymoe.data import cache

    def no_space(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", no_space, raising=False)
    specs = {"images": ((64, 8, 8, 3), np.dtype(np.uint8))}
    filled = []
    with pytest.raises(WriteError, match="No space left.*--cache-dir"):
        cache.build_cached(tmp_path, "train", {"k": 1}, specs, lambda arrays: filled.append(1))
    assert not filled  # the memory map was never written into
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no temporary left behind


def test_cache_build_refuses_when_the_free_space_is_too_small(tmp_path, monkeypatch):
    from tinymoe.atomic import WriteError
    from tinymoe.data import cache

    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 10, 10))
    with pytest.raises(WriteError, match="not enough free space"):
        cache.build_cached(tmp_path, "train", {"k": 1}, {"x": ((10,), np.dtype(np.uint8))}, lambda arrays: None)


def test_stale_cache_temporaries_of_dead_builds_are_removed(tmp_path):
    from tinymoe.data import cache

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f"train_images.tmp{int(dead.stdout)}-1.npy"
    mine = tmp_path / f"train_images.tmp{os.getpid()}-1.npy"
    stale.write_bytes(b"x")
    mine.write_bytes(b"x")
    with pytest.warns(UserWarning, match="killed"):
        cache.build_cached(tmp_path, "train", {"k": 1}, {"x": ((4,), np.dtype(np.uint8))}, lambda arrays: None)
    assert not stale.exists() and mine.exists()


def test_checkpoint_write_on_a_full_disk_is_one_write_error(tmp_path, monkeypatch):
    from tinymoe.atomic import WriteError
    from tinymoe.checkpoint import save_checkpoint
    from tinymoe.models import ModelConfig, build_model

    model = build_model(ModelConfig(layers=1, dim=16, heads=2, image_size=8, patch_size=4, num_classes=3,
                                    moe_layers=0), seed=0)

    def no_space(f, **arrays):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", no_space)
    with pytest.raises(WriteError, match=r"could not write .*m\.npz: .*No space left"):
        save_checkpoint(tmp_path / "m.npz", model)
    assert list(tmp_path.iterdir()) == []


# ----- a stop request at each point of a stage, in process (deterministic) ------------------------
@pytest.fixture(scope="module")
def tiny():
    from tinymoe.data import make_synthetic
    from tinymoe.models import ModelConfig

    synthetic = make_synthetic(n_groups=3, classes_per_group=2, images_per_class=16, size=16, seed=1)
    return synthetic, ModelConfig(layers=2, dim=16, heads=2, image_size=16, patch_size=8, num_classes=6, moe_layers=0)


@pytest.mark.parametrize("when", ["last step", "final evaluation"])
def test_a_stop_during_a_stages_last_step_or_evaluation_is_honoured(tmp_path, tiny, when):
    from tinymoe.checkpoint import load_checkpoint
    from tinymoe.testing.trainers import tiny_trainer
    from tinymoe.training import TrainingInterrupted

    trainer = tiny_trainer(tmp_path, tiny[0], tiny[1], epochs=2)
    last_step = trainer.total_steps
    if when == "last step":
        step = trainer.train_step

        def stop_in_last_step(*args):
            if trainer.step == last_step - 1:
                trainer.request_stop()  # what the Ctrl-C handler does, here in the middle of the step
            return step(*args)

        trainer.train_step = stop_in_last_step
    else:
        evaluate = trainer._evaluate

        def stop_in_evaluation():
            if trainer.step == last_step:
                trainer.request_stop()
            return evaluate()

        trainer._evaluate = stop_in_evaluation
    with pytest.raises(TrainingInterrupted, match="--resume"):
        trainer.run()
    assert load_checkpoint(tmp_path / "model.npz").metadata["history"][-1]["epoch"] == 2  # finished and saved


def test_a_stop_between_stages_trains_no_further_stage(tmp_path, tiny):
    import tinymoe.pipeline as pipeline
    from tinymoe.pipeline import PipelineOptions, load_splits, run_pipeline
    from tinymoe.training import TrainConfig, TrainingInterrupted

    splits = load_splits("synthetic", experts=3, synthetic_size=16, synthetic_per_class=16)
    config = tiny[1].replace(moe_layers=1, experts=3, num_classes=splits.num_classes)
    superclasses_stage = pipeline.superclasses_stage
    stops = []

    def stop_during_superclasses(*args, **kwargs):
        groups = superclasses_stage(*args, **kwargs)
        stops.append(1)
        os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C, caught by the run's StopRequest
        return groups

    opts = PipelineOptions(out=tmp_path, model=config, train=TrainConfig(epochs=1, batch_size=16, prefetch=0))
    pipeline.superclasses_stage = stop_during_superclasses
    try:
        with pytest.raises(TrainingInterrupted, match="after the superclasses stage"):
            run_pipeline(splits, opts, log=lambda *_: None)
    finally:
        pipeline.superclasses_stage = superclasses_stage
    assert stops and (tmp_path / "superclasses.json").exists()
    assert not (tmp_path / "moe-superclass").exists()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is put back
