"""Each Numba kernel against its NumPy reference on the model's shapes (batch 128, 64×64 images, patch 8:
65 tokens), for the 6×64 and 12×192 models.

    python bench/kernels.py [--repeats 15] [--threads 2]

Writes bench/results/kernels.json: per kernel and model size, the median wall time of each
implementation (after warm-up, which also compiles the Numba kernels), the speed-up, and whether the
Numba version is at least as fast (a kernel that is slower on the model's shapes must not be used).
Threads are set before NumPy and Numba load (see bench/throughput.py, thread_env).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _set_threads(threads: int) -> None:
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[name] = str(threads)
    os.environ["OPENBLAS_THREAD_TIMEOUT"] = "1"


def cases(dim: int, heads: int, rng):
    """name -> (kernel name or None, args): the calls one training step makes, at this width."""
    import numpy as np

    from fused import mlp  # bench/fused: kernels the model does not use, kept with this measurement
    from tinymoe.kernels import attention, expert, norm, softmax
    from tinymoe.testing.kernel_cases import dispatch_plan

    f32 = np.float32
    batch, tokens, hidden, experts = 128, 65, 4 * dim, 10
    x = rng.standard_normal((batch, tokens, dim)).astype(f32)
    g = rng.standard_normal((batch, tokens, dim)).astype(f32)
    h = rng.standard_normal((batch, tokens, hidden)).astype(f32)
    gh = rng.standard_normal((batch, tokens, hidden)).astype(f32)
    w, b = rng.standard_normal(dim).astype(f32), rng.standard_normal(dim).astype(f32)
    _, mean, rstd = norm.layer_norm_forward(x, w, b, 1e-6)
    # q, k, v as the model makes them: slices of one (B, N, 3, H, Dh) array, transposed (strided views)
    qkv = rng.standard_normal((batch, tokens, 3, heads, dim // heads)).astype(f32).transpose(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    scale = float((dim // heads) ** -0.5)
    _, probs = attention.attention_forward(q, k, v, scale)
    go = rng.standard_normal(q.shape).astype(f32)
    scores = rng.standard_normal((batch, heads, tokens, tokens)).astype(f32)
    sm = softmax.softmax_forward(scores)
    logits, labels = (3 * rng.standard_normal((batch, 200))).astype(f32), rng.integers(0, 200, batch)
    _, log_probs = softmax.cross_entropy_forward(logits, labels, 0.0)
    grad_loss = np.full(batch, 1.0 / batch, dtype=f32)
    source, _, sizes = dispatch_plan(rng, batch, experts, 1)
    gates = rng.random(len(source)).astype(f32)
    ew1 = (0.05 * rng.standard_normal((experts, dim, hidden))).astype(f32)
    eb1 = np.zeros((experts, hidden), f32)
    ew2 = (0.05 * rng.standard_normal((experts, hidden, dim))).astype(f32)
    eb2 = np.zeros((experts, dim), f32)
    _, saved = expert.expert_mlp_forward(x, gates, source, sizes, ew1, eb1, ew2, eb2)
    mw1, mb1 = (0.05 * rng.standard_normal((dim, hidden))).astype(f32), np.zeros(hidden, f32)
    mw2, mb2 = (0.05 * rng.standard_normal((hidden, dim))).astype(f32), np.zeros(dim, f32)
    _, mh = mlp.mlp_forward(x, mw1, mb1, mw2, mb2)
    qc = np.ascontiguousarray(q).reshape(-1, tokens, dim // heads)
    kt = np.ascontiguousarray(np.swapaxes(k, -1, -2)).reshape(-1, dim // heads, tokens)
    return {
        "gelu_forward": ((h,), f"x {h.shape}"),
        "gelu_backward": ((h, gh), f"x, grad {h.shape}"),
        "layer_norm_forward": ((x, w, b, 1e-6), f"x {x.shape}"),
        "layer_norm_backward": ((g, x, w, mean, rstd, True), f"x, grad {x.shape}"),
        "softmax_forward": ((scores, -1), f"x {scores.shape}"),
        "softmax_backward": ((sm, scores, -1), f"p, grad {scores.shape}"),
        "log_softmax_forward": ((logits, -1), f"x {logits.shape}"),
        "log_softmax_backward": ((log_probs, logits, -1), f"x {logits.shape}"),
        "cross_entropy_forward": ((logits, labels, 0.0), f"logits {logits.shape}, int labels"),
        "cross_entropy_backward": ((log_probs, labels, 0.0, grad_loss), f"logits {logits.shape}, int labels"),
        "attention_forward": ((q, k, v, scale), f"q, k, v {q.shape} (strided views of qkv)"),
        "attention_backward": ((go, q, k, v, probs, scale), f"q, k, v {q.shape}"),
        "expert_mlp_forward": ((x, gates, source, sizes, ew1, eb1, ew2, eb2), f"x {x.shape}, E={experts}, k=1, hidden {hidden}"),
        "expert_mlp_backward": ((g, x, gates, source, sizes, ew1, ew2, saved), f"x {x.shape}, E={experts}, k=1"),
        "mlp_forward": ((x, mw1, mb1, mw2, mb2), f"x {x.shape}, hidden {hidden}"),
        "mlp_backward": ((g, x, mw1, mw2, mh), f"x {x.shape}, hidden {hidden}"),
        "batched_matmul": ((qc, kt), f"{qc.shape} @ {kt.shape} (q kᵀ)"),
    }


def median_time(fn, args, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn(*args)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--out", default=str(HERE / "results" / "kernels.json"))
    args = p.parse_args(argv)
    _set_threads(args.threads)

    import numpy as np

    sys.path.insert(0, str(HERE))
    import machine

    from fused import matmul, mlp
    from tinymoe.kernels import backend

    rows = []
    for dim, heads in ((64, 2), (192, 3)):
        for name, (call_args, shape) in cases(dim, heads, np.random.default_rng(0)).items():
            unused = {"batched_matmul": (matmul.batched_matmul, matmul.batched_matmul_numba),
                      "mlp_forward": (mlp.mlp_forward, mlp.mlp_forward_numba),
                      "mlp_backward": (mlp.mlp_backward, mlp.mlp_backward_numba)}  # bench/fused: not in the model
            if name in unused:
                reference, fast = unused[name]
            else:
                reference, fast = backend.get(name).reference, backend.require_numba(name)
            t_ref = median_time(reference, call_args, args.repeats)
            t_numba = median_time(fast, call_args, args.repeats)
            registered = name not in unused
            rows.append({
                "kernel": name, "model": f"6x{dim}" if dim == 64 else f"12x{dim}", "shapes": shape,
                "reference_ms": round(t_ref * 1e3, 4), "numba_ms": round(t_numba * 1e3, 4),
                "speedup": round(t_ref / t_numba, 2),
                "numba_used": registered,  # registered with the backend = runs under TINYMOE_KERNELS=numba
                "numba_at_least_as_fast": bool(t_numba <= t_ref),
            })
            print(f"{rows[-1]['model']:7s} {name:24s} reference {t_ref * 1e3:9.3f} ms   numba {t_numba * 1e3:9.3f} ms"
                  f"   x{t_ref / t_numba:5.2f}{'' if registered else '   (not used by the model: bench/fused)'}")
    result = {
        "kernels": rows, "repeats": args.repeats, "threads": args.threads,
        "machine": machine.describe(),
        "command": "python bench/kernels.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
