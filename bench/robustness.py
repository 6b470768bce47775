"""Randomised crash fuzzing of `python -m tinymoe.train`: the longer version of tests/test_robustness.py.

    python bench/robustness.py --rounds 20 --seed 0

Each round starts a tiny synthetic dense run, interrupts it at a random moment (kill -9 or Ctrl-C,
chosen at random; a random delay lands anywhere: in a step, an evaluation, a checkpoint write, start-up),
checks what is on disk, then resumes it to the end and checks again. Asserted every time: Ctrl-C exits
130 with a one-line message; every checkpoint on disk loads and holds only finite numbers; the resumed
run exits 0 with every epoch in its history; no temporary file survives the resumed run. Prints one
line per round and exits non-zero on the first violation.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY = ["--layers", "2", "--dim", "16", "--heads", "2", "--experts", "3", "--moe-layers", "1", "--patch-size", "8",
        "--data", "synthetic", "--threads", "1", "--model", "dense", "--epochs", "4", "-b", "64"]


def _env():
    return dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1", PYTHONWARNINGS="ignore",
                NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")


def _check_disk(out: Path) -> None:
    import numpy as np

    from tinymoe.checkpoint import load_checkpoint

    for path in out.rglob("*.npz"):
        ckpt = load_checkpoint(path)  # raises CheckpointError on a half-written file
        for name, value in ckpt.params.items():
            assert np.all(np.isfinite(value)), f"{path}: {name} is not finite"


def one_round(rng: random.Random, out: Path) -> str:
    cmd = [sys.executable, "-m", "tinymoe.train", *TINY, "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env(), cwd=REPO)
    delay, how = rng.uniform(0.5, 6.0), rng.choice(["kill", "sigint"])
    time.sleep(delay)
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL if how == "kill" else signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    if how == "sigint" and proc.returncode not in (0, 130):
        raise AssertionError(f"Ctrl-C gave exit code {proc.returncode}: {err[-500:]}")
    if proc.returncode == 130 and ("Traceback" in err or len(err.strip().splitlines()[-1]) == 0):
        raise AssertionError(f"Ctrl-C message is not one line: {err[-500:]}")
    _check_disk(out)
    done = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, env=_env(), cwd=REPO, timeout=300)
    if done.returncode != 0:
        raise AssertionError(f"resume failed ({done.returncode}): {done.stderr[-500:]}")
    _check_disk(out)
    from tinymoe.checkpoint import load_checkpoint

    epochs = [row["epoch"] for row in load_checkpoint(out / "dense" / "model.npz").metadata["history"]]
    assert epochs == [1, 2, 3, 4], epochs
    leftovers = [p for p in out.rglob("*") if ".tmp" in p.name]
    assert not leftovers, leftovers
    return f"{how} after {delay:.2f}s (exit {proc.returncode}): resumed to the end"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    sys.path.insert(0, str(REPO))
    rng = random.Random(args.seed)
    for i in range(args.rounds):
        with tempfile.TemporaryDirectory() as tmp:
            try:
                print(f"round {i + 1}: {one_round(rng, Path(tmp) / 'run')}", flush=True)
            except AssertionError as err:
                print(f"round {i + 1}: FAILED: {err}", flush=True)
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
