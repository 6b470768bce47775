"""Batch-1 latency: dense ViT vs Mobile V-MoE (k = 1, 2) vs V-MoE token routing, on tinymoe (NumPy reference
and Numba kernels), PyTorch eager and onnxruntime, with one thread and with two.

    python bench/latency.py                      # the full grid -> bench/results/latency.json (a few minutes)
    python bench/latency.py --table              # the README table from the saved JSON
    python bench/latency.py --plot               # bench/results/latency.png from the saved JSON (matplotlib)
    python bench/latency.py --sizes tiny --runs 3 --no-save --json    # smoke run

The paper's claim is that a per-image MoE costs at inference what its dense twin costs (one router, then
k experts' MLPs instead of one MLP), which FLOP counts alone do not prove. At batch 1 what matters is
(a) fixed per-op overhead and (b) the bytes of weights read: a per-image MoE reads the weights of k
experts per MoE block; per-token routing reads every expert some token of the image chose.

Method: one image (fixed random pixels), the model in eval mode (tinymoe under no_grad, torch under
inference_mode, onnxruntime with the exported ONNX file). `--warmup` untimed calls, then `--runs` timed
calls one by one (perf_counter); p50 / p90 / mean / min in milliseconds. Each (size, image, threads)
runs in its own process with every thread pool sized to `threads` (OpenBLAS, OpenMP, Numba, torch,
onnxruntime intra-op). Weights are random (tinymoe's init, seed 0); token routing's "bytes touched"
therefore reflects an untrained router (tokens spread over many experts).

  weight_bytes_total    every parameter of the model, float32
  weight_bytes_touched  what one image reads: all but the experts it does not use; per-image MoE: k of E
                        experts per MoE block; token routing: the distinct experts its kept tokens chose
  peak_rss_delta_mb     peak resident memory while building the model and running it, above the resident
                        memory just before (the peak is reset through /proc/self/clear_refs first)

Timings from a loaded machine are noisy: the JSON records the 1-minute load average before and after
each worker and of the whole run, so a reader can judge. On a machine whose cores are busy with other
jobs, the 2-thread rows measure contention (thread pools waiting for a core), not parallel speed-up.
The peak-memory column of a worker's first model and backend also holds one-time costs (imports,
Numba's compiled kernels, thread pools), so compare it between variants of one backend, not across rows.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "latency.json"

SIZES = {"6x64": dict(layers=6, dim=64), "12x192": dict(layers=12, dim=192), "tiny": dict(layers=2, dim=16, heads=2)}
IMAGES = {"64/16": dict(image_size=64, patch_size=16), "224/32": dict(image_size=224, patch_size=32),
          "16/8": dict(image_size=16, patch_size=8)}
VARIANTS = {
    "dense": dict(moe_layers=0),
    "moe_k1": dict(k=1),
    "moe_k2": dict(k=2),
    "token_k1": dict(routing="token", k=1),
    "token_k2": dict(routing="token", k=2),
}
BACKENDS = ("numpy", "numba", "torch", "onnxruntime")


# ----------------------------------------------------------------------------------------------------
# The worker: one (size, image, threads), every variant and backend
# ----------------------------------------------------------------------------------------------------
def _kb(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _reset_peak():
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current resident size (Linux >= 4.0)
    except OSError:
        pass
    return _kb("VmRSS")


def _percentiles(times):
    import numpy as np

    ms = np.asarray(times) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)),
            "mean_ms": float(ms.mean()), "min_ms": float(ms.min()), "runs": len(times)}


def weight_bytes(model, image) -> tuple[int, int]:
    """(every parameter's bytes, the bytes one image reads), from a tinymoe forward of that image."""
    import numpy as np

    from tinymoe.tensor import no_grad

    c = model.config
    total = sum(p.data.nbytes for p in model.parameters())
    if not c.is_moe:
        return total, total
    per_expert = sum(p.data.nbytes for n, p in model.named_parameters() if f"blocks.{c.layers - 1}.experts." in n)
    per_expert //= c.experts
    with no_grad():
        out = model(image)
    if out.routing is not None:  # per image: k experts in each MoE block
        unused = c.moe_layers * (c.experts - c.k)
    else:  # per token: the experts some kept (token, choice) pair chose, block by block
        unused = sum(c.experts - len(np.unique(r.experts[r.kept])) for r in out.token_routing)
    return total, total - unused * per_expert


def worker(args) -> list[dict]:
    from machine import timed_calls  # bench/machine.py (this script's folder is on sys.path)

    import numpy as np

    threads = args.threads
    rows = []
    from tinymoe.kernels import backend as kernels
    from tinymoe.models import ModelConfig, build_model
    from tinymoe.tensor import no_grad

    image = np.random.default_rng(0).standard_normal(
        (1, IMAGES[args.image]["image_size"], IMAGES[args.image]["image_size"], 3)).astype(np.float32)
    for variant in args.variants:
        config = ModelConfig(**SIZES[args.size], **IMAGES[args.image], num_classes=200, experts=10,
                             **VARIANTS[variant])
        base = build_model(config, seed=0)
        base.eval()
        total, touched = weight_bytes(base, image)
        common = {"size": args.size, "image": args.image, "variant": variant, "threads": threads,
                  "weight_bytes_total": total, "weight_bytes_touched": touched, "tokens": config.num_tokens}
        for backend in args.backends:
            load_before = os.getloadavg()[0]
            rss0 = _reset_peak()
            if backend in ("numpy", "numba"):
                import numba

                numba.set_num_threads(threads)
                kernels.use_backend("reference" if backend == "numpy" else "numba")
                model = build_model(config, seed=0)
                model.eval()

                def call():
                    with no_grad():
                        model(image)
            elif backend == "torch":
                import torch

                from tinymoe import torch_model

                torch.set_num_threads(threads)
                model = torch_model.from_tinymoe(base).eval()
                x = torch.from_numpy(image)

                def call():
                    with torch.inference_mode():
                        model(x)
            else:
                import onnxruntime as ort
                import torch

                from tinymoe import torch_model

                onnx_path = Path(args.onnx_dir) / f"{args.size}-{args.image.replace('/', '_')}-{variant}.onnx"
                if not onnx_path.exists():
                    torch_model.export_onnx(torch_model.from_tinymoe(base), onnx_path)
                    rss0 = _reset_peak()  # the exporter's memory is not the runtime's
                options = ort.SessionOptions()
                options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
                model = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])

                def call():
                    model.run(["logits"], {"images": image})

            times = timed_calls(call, args.warmup, args.runs)
            peak = _kb("VmHWM")
            rows.append({**common, "backend": backend, **_percentiles(times),
                         "peak_rss_delta_mb": round((peak - rss0) / 1024, 1),
                         "load_1min_before": load_before, "load_1min_after": os.getloadavg()[0]})
            del model, call
        kernels.use_backend("reference")
    return rows


# ----------------------------------------------------------------------------------------------------
# The driver
# ----------------------------------------------------------------------------------------------------
def thread_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        env[var] = str(threads)
    return env


def run_grid(args) -> dict:
    sys.path.insert(0, str(HERE))
    from machine import describe

    rows = []
    load_before = os.getloadavg()
    start = time.time()
    with tempfile.TemporaryDirectory() as onnx_dir:
        for size in args.sizes:
            for image in args.images:
                for threads in args.thread_counts:
                    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--size", size, "--image", image,
                           "--threads", str(threads), "--runs", str(args.runs), "--warmup", str(args.warmup),
                           "--onnx-dir", onnx_dir, "--variants", *args.variants, "--backends", *args.backends]
                    proc = subprocess.run(cmd, env=thread_env(threads), capture_output=True, text=True)
                    if proc.returncode:
                        raise RuntimeError(f"worker {size} {image} threads={threads} failed:\n{proc.stderr[-4000:]}")
                    got = json.loads(proc.stdout.strip().splitlines()[-1])
                    rows.extend(got)
                    if not args.json:
                        print(f"{size} {image} threads={threads}: {len(got)} rows", file=sys.stderr, flush=True)
    return {
        "benchmark": "batch-1 latency (bench/latency.py)",
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "machine": describe(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "conditions": args.conditions,
        "wall_seconds": round(time.time() - start, 1),
        "warmup": args.warmup,
        "rows": rows,
    }


def table(result: dict, threads=None) -> str:
    """Markdown: one row per (size, image, variant), p50 ms per backend and thread count, weights read."""
    rows = [r for r in result["rows"] if threads is None or r["threads"] in threads]
    backends = [b for b in BACKENDS if any(r["backend"] == b for r in rows)]
    threads = sorted({r["threads"] for r in rows})
    cols = [(b, t) for t in threads for b in backends]
    head = ["model", "image/patch", "routing", "weights read / total (MB)"] + [f"{b} {t}T" for b, t in cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    keys = []
    for r in rows:
        key = (r["size"], r["image"], r["variant"])
        if key not in keys:
            keys.append(key)
    for size, image, variant in keys:
        mine = [r for r in rows if (r["size"], r["image"], r["variant"]) == (size, image, variant)]
        cells = [size, image, variant,
                 f"{mine[0]['weight_bytes_touched'] / 1e6:.2f} / {mine[0]['weight_bytes_total'] / 1e6:.2f}"]
        for b, t in cols:
            hit = [r for r in mine if r["backend"] == b and r["threads"] == t]
            cells.append(f"{hit[0]['p50_ms']:.2f}" if hit else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(result: dict, out: Path, threads: int = 1) -> Path:
    """One panel per (size, image): p50 latency (bar) and p90 (whisker) of every variant on every backend,
    at `threads` threads, with the weight bytes one image reads under each variant's name."""
    try:
        import matplotlib
    except ImportError as e:
        raise ImportError(f"--plot draws with matplotlib ({e}); install it with pip install -e '.[plots]'") from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if r["threads"] == threads]
    panels = sorted({(r["size"], r["image"]) for r in rows}, key=lambda p: (p[0] != "6x64", p[1] != "64/16"))
    backends = [b for b in BACKENDS if any(r["backend"] == b for r in rows)]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, (size, image) in zip(axes[0], panels):
        cell = {(r["variant"], r["backend"]): r for r in rows if (r["size"], r["image"]) == (size, image)}
        variants = [v for v in VARIANTS if any(key[0] == v for key in cell)]
        width = 0.8 / len(backends)
        for j, backend in enumerate(backends):
            xs = [i + (j - (len(backends) - 1) / 2) * width for i in range(len(variants))]
            p50 = [cell[(v, backend)]["p50_ms"] if (v, backend) in cell else float("nan") for v in variants]
            p90 = [cell[(v, backend)]["p90_ms"] if (v, backend) in cell else float("nan") for v in variants]
            ax.bar(xs, p50, width, label=backend)
            ax.plot(xs, p90, linestyle="none", marker="_", color="black", markersize=7)
        mb = {v: next(r["weight_bytes_touched"] for key, r in cell.items() if key[0] == v) / 1e6 for v in variants}
        ax.set_xticks(range(len(variants)), [f"{v}\n{mb[v]:.2f} MB" for v in variants], fontsize=7)
        ax.set_title(f"{size}, {image} px/patch", fontsize=9)
        ax.set_ylabel("ms per image (p50; p90 marked)", fontsize=8)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"batch-1 latency, {threads} thread(s); weights read per image under each variant", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description="batch-1 latency of dense, per-image MoE and token-routed MoE")
    parser.add_argument("--sizes", nargs="+", default=["6x64", "12x192"], choices=sorted(SIZES))
    parser.add_argument("--images", nargs="+", default=["64/16", "224/32"], choices=sorted(IMAGES))
    parser.add_argument("--variants", nargs="+", default=["dense", "moe_k1", "moe_k2", "token_k1", "token_k2"],
                        choices=sorted(VARIANTS))
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    parser.add_argument("--thread-counts", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--no-save", action="store_true")
    parser.add_argument("--conditions", default="not stated",
                        help="what else the machine was doing (recorded in the JSON beside the load averages)")
    parser.add_argument("--json", action="store_true", help="print the result JSON")
    parser.add_argument("--table", action="store_true", help="print the markdown table of the saved JSON")
    parser.add_argument("--table-threads", nargs="+", type=int, default=None, help="only these thread counts")
    parser.add_argument("--plot", action="store_true", help="draw bench/results/latency.png from the saved JSON")
    # worker-only
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--size", help=argparse.SUPPRESS)
    parser.add_argument("--image", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--onnx-dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    if args.table:
        print(table(json.loads(Path(args.out).read_text()), args.table_threads))
        return 0
    if args.plot:
        print(plot(json.loads(Path(args.out).read_text()), Path(args.out).with_suffix(".png")))
        return 0
    result = run_grid(args)
    if not args.no_save:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    if args.json:
        print(json.dumps(result))
    else:
        print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
