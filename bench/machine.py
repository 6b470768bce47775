"""What machine a benchmark ran on, and how fast its BLAS multiplies matrices (the "GEMM peak").

    python bench/machine.py            # prints the description and the GEMM peak as JSON

The GEMM peak is the best float32 matrix-product rate NumPy reaches on this machine, measured on the
shapes of the 6×64 model (8320 tokens = 128 images × 65 tokens) and on a 2048² square product, with the
BLAS thread count of this process. Benchmarks report FLOP/s as a fraction of it: it says how much of the
machine a training step uses, independently of how fast the machine is.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time

import numpy as np

# (m, k, n) shapes multiplied as (m, k) @ (k, n): the model's linear layers at batch 128 (M = 128 × 65)
# for widths 64 and 192, and a large square product that any BLAS runs near its best.
GEMM_SHAPES = [(8320, 64, 256), (8320, 256, 64), (8320, 64, 192), (8320, 192, 768), (2048, 2048, 2048)]
THREAD_VARS = (
    "OPENBLAS_NUM_THREADS",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "NUMBA_NUM_THREADS",
    "NUMBA_THREADING_LAYER",
    "OPENBLAS_THREAD_TIMEOUT",
    "TINYMOE_KERNELS",
)


def timed_calls(fn, warmup: int, runs: int) -> list[float]:
    """Wall times (s) of `runs` calls of `fn()`, one by one, after `warmup` calls that are not timed."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def median_seconds(fn, repeats: int = 7, warmup: int = 2) -> float:
    """Median wall time of `fn()` over `repeats` calls, after `warmup` calls that are not timed."""
    return float(np.median(timed_calls(fn, warmup, repeats)))


def gemm_rates(repeats: int = 7) -> dict[str, float]:
    """GFLOP/s of NumPy's float32 matmul for each shape in GEMM_SHAPES (2 m k n FLOPs per product)."""
    rng = np.random.default_rng(0)
    rates = {}
    for m, k, n in GEMM_SHAPES:
        a = rng.standard_normal((m, k), dtype=np.float32)
        b = rng.standard_normal((k, n), dtype=np.float32)
        seconds = median_seconds(lambda: a @ b, repeats=repeats)
        rates[f"{m}x{k}@{k}x{n}"] = 2.0 * m * k * n / seconds / 1e9
    return rates


def gemm_peak_gflops(repeats: int = 7) -> float:
    """The best of `gemm_rates`: this machine's measured float32 GEMM peak, in GFLOP/s."""
    return max(gemm_rates(repeats).values())


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _blas_name() -> str:
    try:
        config = np.show_config(mode="dicts")
        blas = config["Build Dependencies"]["blas"]
        return f"{blas.get('name')} {blas.get('version')}"
    except Exception:  # show_config's layout is not a stable API; the name is only informative
        return "unknown"


def describe() -> dict:
    """The machine and software a benchmark ran on, for its JSON output."""
    info = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "blas": _blas_name(),
        "load_average_1min": os.getloadavg()[0],
        "thread_env": {name: os.environ.get(name) for name in THREAD_VARS},
    }
    try:
        import numba

        info["numba"] = numba.__version__
        info["numba_threads"] = numba.get_num_threads()
    except ImportError:
        info["numba"] = None
    return info


if __name__ == "__main__":
    rates = gemm_rates()
    print(json.dumps({"machine": describe(), "gemm_gflops": rates, "gemm_peak_gflops": max(rates.values())}, indent=2))
