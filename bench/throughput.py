"""End-to-end throughput: tinymoe vs PyTorch (CPU) training and inference on the same machine, same run.

    python bench/throughput.py --layers 6 --dim 64 --model moe --json

prints one JSON object (and writes bench/results/throughput_<model>_<L>x<D>.json) with, at least:

    tinymoe_train_img_s, torch_train_img_s, train_ratio      (training images/s, AdamW, batch 128)
    tinymoe_infer_img_s, torch_infer_img_s, infer_ratio      (inference images/s, no graph / inference_mode)

plus FLOP/s achieved and its fraction of this machine's measured NumPy GEMM peak, the peak resident
memory of training for each framework, every timed step, the machine and the command.

How it measures (so the numbers can be trusted):
- Each framework runs in its own subprocess (the PyTorch process never imports tinymoe, the tinymoe
  process never imports torch), so one's threads, allocator and peak memory cannot pollute the other.
  The two alternate for `--rounds` rounds (tinymoe, torch, tinymoe, torch, ...) so a change in machine
  load hits both; each round warms up (`--warmup` steps, which include Numba compilation on a cold
  cache), then times `--steps` steps. Reported rates are batch / median step time over all rounds.
- The same architecture (bench/torch_models.py mirrors tinymoe.models), the same batch of random
  64×64 images with random labels, and the same optimizer (AdamW, lr 1e-3, weight decay 0.05).
- How each uses the cores: PyTorch multi-threads every op (torch.set_num_threads(--threads)); tinymoe,
  by default, splits the batch into `--shards` (= --threads) slices run on as many threads through
  its Trainer's own step (tinymoe.parallel), each with single-threaded BLAS and Numba; `--shards 1`
  measures multi-threaded ops instead. Otherwise the environment is the same for both workers
  (`tinymoe.runtime.recommended_environment`): idle BLAS threads sleep at once instead of spinning
  (OPENBLAS_THREAD_TIMEOUT=1), and glibc's malloc keeps freed blocks for reuse (MALLOC_*_ variables)
  instead of page-faulting fresh memory for every activation. See tinymoe/runtime.py.
- Peak memory: ru_maxrss of the subprocess after training, minus its resident size just before the
  model was built (imports and interpreter excluded: "model + activations + optimizer").
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def _rss_mb() -> float:
    """Current resident set size of this process, in MB (from /proc; Linux)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # ru_maxrss is in kB on Linux


def _batch(args):
    import numpy as np

    rng = np.random.default_rng(0)
    images = rng.standard_normal((args.batch, args.image_size, args.image_size, 3), dtype=np.float32)
    labels = rng.integers(0, args.classes, args.batch)
    return images, labels


# ----------------------------------------------------------------------------------------------------
# The two workers (each runs in its own subprocess)
# ----------------------------------------------------------------------------------------------------
def use_fused_ops() -> None:
    """--variant fused: run the model's attention and dense MLPs through the fused ops
    (bench/fused: packed_attention and mlp) instead of the primitive compositions the model
    modules are written with (the expert MLPs already use the fused expert_mlp op). Same math
    (tests/test_bench_fused.py checks each fused op equals the composition,
    gradients included); this measures what adopting them would gain."""
    from tinymoe.models import vit as layers  # Attention and Mlp live in the model file
    from fused.mlp import mlp  # bench/ is on sys.path: this script's own folder
    from fused.packed_attention import packed_attention

    def attention_forward(self, x):
        return self.proj(packed_attention(self.qkv(x), self.heads))

    def mlp_forward(self, x):
        return mlp(x, self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias)

    layers.Attention.forward = attention_forward
    layers.Mlp.forward = mlp_forward


def worker_tinymoe(args) -> dict:
    from machine import timed_calls  # bench/machine.py (this script's folder is on sys.path)

    import numpy as np

    from tinymoe import kernels
    from tinymoe.models import ModelConfig, VisionTransformer
    from tinymoe.parallel import ShardPool
    from tinymoe.tensor import no_grad
    from tinymoe.training import TrainConfig, Trainer, TrainingData

    kernels.use_backend(args.backend)
    if args.variant == "fused":
        use_fused_ops()
    images, labels = _batch(args)
    config = ModelConfig(
        layers=args.layers, dim=args.dim, image_size=args.image_size, patch_size=args.patch_size,
        num_classes=args.classes, moe_layers=args.moe_layers if args.model == "moe" else 0,
        experts=args.experts, k=args.k,
    )
    rss_before = _rss_mb()
    model = VisionTransformer(config, rng=0)
    if config.is_moe:
        model.set_class_to_group(np.arange(args.classes) % args.experts)
    # The training step is the Trainer's own (tinymoe.training.Trainer.train_step: sharded over
    # `shards` threads when > 1), with the PyTorch side's settings: AdamW lr 1e-3, weight decay 0.05,
    # no label smoothing, no clipping.
    cfg = TrainConfig(epochs=1, batch_size=args.batch, lr=1e-3, weight_decay=0.05, label_smoothing=0.0,
                      clip_grad=None, augment=False, prefetch=0, shards=args.shards)
    holder = TrainingData(np.zeros((args.batch, args.image_size, args.image_size, 3), np.uint8), labels)
    trainer = Trainer(model, cfg, holder, tempfile.mkdtemp(prefix="tinymoe-bench-"), log=lambda *_: None,
                      progress=False)
    model.train()

    def train_step():
        trainer.train_step(images, labels, 1e-3)

    train_times = timed_calls(train_step, args.warmup, args.steps)
    peak = _peak_rss_mb()
    model.eval()
    pool = ShardPool(args.shards)

    def infer_shard(_index, start, stop):
        with no_grad():  # per thread
            model(images[start:stop])

    def infer_step():
        pool.run(infer_shard, pool.bounds(args.batch))

    infer_times = timed_calls(infer_step, args.warmup, args.steps)
    pool.close()
    return {
        "train_step_s": train_times,
        "infer_step_s": infer_times,
        "train_peak_rss_mb": peak,
        "rss_before_model_mb": rss_before,
        "kernel_report": kernels.report(),
    }


def worker_torch(args) -> dict:
    from machine import timed_calls  # bench/machine.py (this script's folder is on sys.path)

    import numpy as np
    import torch

    sys.path.insert(0, str(HERE))
    from torch_models import ViT, init_like_tinymoe, loss_fn

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    images, labels = _batch(args)
    x = torch.from_numpy(images)
    y = torch.from_numpy(labels)
    superclass = torch.from_numpy(labels % args.experts)
    rss_before = _rss_mb()
    model = ViT(
        layers=args.layers, dim=args.dim, image_size=args.image_size, patch_size=args.patch_size,
        num_classes=args.classes, experts=args.experts if args.model == "moe" else 0, k=args.k,
        moe_layers=args.moe_layers,
    )
    init_like_tinymoe(model)
    # foreach=True: the multi-tensor AdamW, PyTorch's fastest eager optimizer (the default picks it on GPU only).
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05, foreach=True)
    model.train()

    def train_step():
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(x), y, superclass).backward()
        optimizer.step()

    train_times = timed_calls(train_step, args.warmup, args.steps)
    peak = _peak_rss_mb()
    model.eval()

    def infer_step():
        with torch.inference_mode():
            model(x)

    infer_times = timed_calls(infer_step, args.warmup, args.steps)
    return {
        "train_step_s": train_times,
        "infer_step_s": infer_times,
        "train_peak_rss_mb": peak,
        "rss_before_model_mb": rss_before,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }


# ----------------------------------------------------------------------------------------------------
# The driver
# ----------------------------------------------------------------------------------------------------
def thread_env(threads: int, shards: int = 1) -> dict[str, str]:
    """Environment for both workers (the same for tinymoe and PyTorch): every thread pool sized to
    `threads`, idle BLAS threads not spinning, and glibc's malloc keeping freed blocks for reuse (see
    tinymoe/runtime.py: without it a tinymoe step spends ~30% of its time in page faults; PyTorch gains
    a little too)."""
    from tinymoe.runtime import recommended_environment

    env = dict(os.environ)
    env.update(recommended_environment(threads, shards))
    return env


def _run_worker(which: str, argv: list[str], threads: int, shards: int) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", which, *argv]
    # tinymoe with shards: BLAS on 1 thread per shard thread; PyTorch sizes its own pool (set_num_threads).
    env = thread_env(threads, shards if which == "tinymoe" else 1)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{which} worker failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _median(values):
    values = sorted(values)
    n = len(values)
    return values[n // 2] if n % 2 else 0.5 * (values[n // 2 - 1] + values[n // 2])


def _gemm_peak(threads: int) -> dict:
    code = (
        "import json, sys; sys.path.insert(0, %r); import machine; r = machine.gemm_rates(5); "
        "print(json.dumps({'rates': r, 'peak': max(r.values())}))" % str(HERE)
    )
    proc = subprocess.run([sys.executable, "-c", code], env=thread_env(threads), capture_output=True, text=True, check=True)
    return json.loads(proc.stdout)


def run(args, argv: list[str]) -> dict:
    sys.path.insert(0, str(HERE))
    import machine

    from tinymoe.models import ModelConfig, count

    config = ModelConfig(
        layers=args.layers, dim=args.dim, image_size=args.image_size, patch_size=args.patch_size,
        num_classes=args.classes, moe_layers=args.moe_layers if args.model == "moe" else 0,
        experts=args.experts, k=args.k,
    )
    flops_per_image = count(config).flops  # inference FLOPs (2 × multiply-adds), active experts only
    runs: dict[str, list[dict]] = {"tinymoe": [], "torch": []}
    for _ in range(args.rounds):
        for which in ("tinymoe", "torch"):
            runs[which].append(_run_worker(which, argv, args.threads, args.shards))
    gemm = _gemm_peak(args.threads)

    result: dict = {}
    for which, rounds in runs.items():
        train = [t for r in rounds for t in r["train_step_s"]]
        infer = [t for r in rounds for t in r["infer_step_s"]]
        train_img_s = args.batch / _median(train)
        infer_img_s = args.batch / _median(infer)
        # Training = forward + backward ≈ 3 × the forward's FLOPs (the backward does two products per one).
        train_gflops = 3 * flops_per_image * train_img_s / 1e9
        infer_gflops = flops_per_image * infer_img_s / 1e9
        result.update({
            f"{which}_train_img_s": round(train_img_s, 2),
            f"{which}_infer_img_s": round(infer_img_s, 2),
            f"{which}_train_gflop_s": round(train_gflops, 2),
            f"{which}_infer_gflop_s": round(infer_gflops, 2),
            f"{which}_train_fraction_of_gemm_peak": round(train_gflops / gemm["peak"], 3),
            f"{which}_infer_fraction_of_gemm_peak": round(infer_gflops / gemm["peak"], 3),
            f"{which}_train_peak_rss_mb": round(max(r["train_peak_rss_mb"] for r in rounds), 1),
            f"{which}_train_memory_mb": round(max(r["train_peak_rss_mb"] - r["rss_before_model_mb"] for r in rounds), 1),
            f"{which}_train_step_s": [round(t, 5) for t in train],
            f"{which}_infer_step_s": [round(t, 5) for t in infer],
        })
    result["train_ratio"] = round(result["tinymoe_train_img_s"] / result["torch_train_img_s"], 3)
    result["infer_ratio"] = round(result["tinymoe_infer_img_s"] / result["torch_infer_img_s"], 3)
    result.update({
        "model": args.model, "layers": args.layers, "dim": args.dim, "batch": args.batch,
        "image_size": args.image_size, "patch_size": args.patch_size, "classes": args.classes,
        "experts": args.experts if args.model == "moe" else 0, "k": args.k,
        "moe_layers": args.moe_layers if args.model == "moe" else 0,
        "inference_flops_per_image": flops_per_image,
        "gemm_peak_gflop_s": round(gemm["peak"], 1),
        "gemm_gflop_s": {k: round(v, 1) for k, v in gemm["rates"].items()},
        "rounds": args.rounds, "steps_per_round": args.steps, "warmup_steps": args.warmup,
        "threads": args.threads, "tinymoe_shards": args.shards, "backend": args.backend, "variant": args.variant,
        "tinymoe_kernels": runs["tinymoe"][0]["kernel_report"],
        "torch_version": runs["torch"][0]["torch"],
        "machine": machine.describe(),
        "worker_env": {which: {k: v for k, v in thread_env(args.threads, args.shards if which == "tinymoe" else 1).items()
                               if k in machine.THREAD_VARS or k.startswith("MALLOC_")} for which in ("tinymoe", "torch")},
        "command": "python bench/throughput.py " + " ".join(argv),
    })
    return result


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--model", choices=("dense", "moe"), default="moe")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--patch-size", type=int, default=8)
    p.add_argument("--classes", type=int, default=200)
    p.add_argument("--experts", type=int, default=10)
    p.add_argument("--k", type=int, default=1)
    p.add_argument("--moe-layers", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3, help="alternating tinymoe/torch subprocess rounds")
    p.add_argument("--steps", type=int, default=5, help="timed steps per round (after warm-up)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--shards", type=int, default=None,
                   help="tinymoe: split each batch over this many threads (default: --threads; 1 = multi-threaded ops)")
    p.add_argument("--backend", choices=("numba", "reference"), default="numba", help="tinymoe kernel backend")
    p.add_argument(
        "--variant", choices=("model", "fused"), default="model",
        help="model: tinymoe.models as written; fused: its attention and MLPs through the fused ops (see use_fused_ops)",
    )
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.add_argument("--no-save", action="store_true", help="do not write bench/results/throughput_*.json")
    p.add_argument("--worker", choices=("tinymoe", "torch"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.shards is None:
        args.shards = args.threads
    return args


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.worker:
        work = worker_tinymoe if args.worker == "tinymoe" else worker_torch
        print(json.dumps(work(args)))
        return
    worker_argv = [a for a in argv if a not in ("--json", "--no-save")]
    result = run(args, worker_argv)
    result["command"] = "python bench/throughput.py " + " ".join(argv)
    if not args.no_save:
        RESULTS.mkdir(parents=True, exist_ok=True)
        suffix = "" if args.variant == "model" and args.backend == "numba" else f"_{args.variant}_{args.backend}"
        suffix += "" if args.threads == (os.cpu_count() or 1) else f"_threads{args.threads}"
        suffix += "" if args.shards == args.threads else f"_shards{args.shards}"
        path = RESULTS / f"throughput_{args.model}_{args.layers}x{args.dim}{suffix}.json"
        path.write_text(json.dumps(result, indent=2) + "\n")
    if args.json:
        print(json.dumps(result))
    else:
        for key in ("train", "infer"):
            print(
                f"{key:5s}: tinymoe {result[f'tinymoe_{key}_img_s']:8.1f} img/s   torch {result[f'torch_{key}_img_s']:8.1f} img/s"
                f"   ratio {result[f'{key}_ratio']:.2f}"
            )
        print(f"train memory: tinymoe {result['tinymoe_train_memory_mb']} MB, torch {result['torch_train_memory_mb']} MB")


if __name__ == "__main__":
    main()
