"""Process-wide settings that make a training step fast on a small CPU: memory allocation and threads.

Two findings from profiling a 6×64 training step on a 2-core machine (bench/throughput.py):

1. **Page faults.** A step allocates and frees hundreds of activation arrays of 1-25 MB. glibc's malloc
   serves large requests with fresh mmap()ed memory (or trims its heap after a free), so each new
   array is touched page by page for the first time: ~56,000 minor page faults per step, 165 ms of
   kernel time on top of ~420 ms of computing. Asking malloc to keep freed memory for reuse
   (M_MMAP_THRESHOLD = 32 MB, no trimming) removes almost all of them: ~5 faults per step.
   The price is that memory freed by NumPy stays in the process for the next step (the peak resident
   size is what it was; it is just not handed back between steps).

   `tune_malloc()` sets this with mallopt(3) for the running process (glibc only; elsewhere it returns
   False and changes nothing). The same can be had for any process, PyTorch's too, with the
   environment variables glibc reads at start-up:

       MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=17179869184 MALLOC_TOP_PAD_=67108864

2. **Threads.** NumPy's BLAS (OpenBLAS) and Numba's parallel kernels each keep a pool of threads. They
   never run at the same time in tinymoe (kernels are called one after the other), but OpenBLAS's
   idle threads spin for a while after each call and steal the cores from the Numba kernel that
   follows. Size both pools to the number of cores and let idle BLAS threads sleep at once:

       OPENBLAS_NUM_THREADS=2 NUMBA_NUM_THREADS=2 OPENBLAS_THREAD_TIMEOUT=1   (on 2 cores)

   These are read when the libraries load, so they must be set before Python starts (or at least
   before NumPy and Numba are imported). `recommended_environment()` returns them for this machine.

3. **Shards beat threaded ops.** Even so, multi-threading each op gained only 1.25x from the second
   core (the ops are small; every one pays a fork/join). Splitting each batch into one shard per core,
   each on its own thread with single-threaded BLAS and Numba (tinymoe.parallel), gains ~1.9x. That is
   what `python -m tinymoe.train --threads N` does (`recommended_environment(N, shards=N)` gives BLAS
   one thread); token routing, whose loss does not split into shards, keeps the threaded ops.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# mallopt(3) parameter numbers (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 32 * 2**20  # glibc's largest allowed value on 64-bit systems
TRIM_THRESHOLD = 16 * 2**30
TOP_PAD = 64 * 2**20


def tune_malloc() -> bool:
    """Keep freed large blocks in the heap for reuse instead of returning them to the OS (see module doc).

    Returns True if glibc accepted the settings, False if this is not glibc (nothing was changed).
    """
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    ok = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    ok &= mallopt(_M_TRIM_THRESHOLD, min(TRIM_THRESHOLD, 2**31 - 1)) == 1
    ok &= mallopt(_M_TOP_PAD, TOP_PAD) == 1
    return bool(ok)


def recommended_environment(threads: int | None = None, shards: int = 1) -> dict[str, str]:
    """Environment variables for a fast tinymoe process on this machine (set them before Python starts).

    `shards` > 1: the batch is split over that many threads (tinymoe.parallel), each running BLAS on one
    thread, so BLAS gets 1 thread; otherwise every pool gets `threads`."""
    threads = threads or os.cpu_count() or 1
    blas = 1 if shards > 1 else threads
    return {
        "OPENBLAS_NUM_THREADS": str(blas),
        "OMP_NUM_THREADS": str(blas),
        "MKL_NUM_THREADS": str(blas),
        "NUMBA_NUM_THREADS": str(threads),
        "OPENBLAS_THREAD_TIMEOUT": "1",
        "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD),
        "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD),
        "MALLOC_TOP_PAD_": str(TOP_PAD),
    }


def apply_threads(threads: int | None, shard: bool = True) -> tuple[int, int]:
    """Set the thread counts of BLAS and Numba through their environment variables (before they load),
    and pick the Numba kernels unless TINYMOE_KERNELS says otherwise: the command-line tools train and
    evaluate, where the measured-faster kernels are what a user wants (bench/results/throughput_*.json);
    the library itself defaults to the NumPy references (see tinymoe.kernels.backend).

    Returns (threads, shards). With `shard` (the default), the cores are used by data parallelism:
    every batch is split into `threads` shards run on as many Python threads (tinymoe.parallel), each
    with single-threaded BLAS and Numba, so BLAS gets 1 thread here and Numba a pool of `threads` (what
    the unsharded parts use). Without `shard` (token routing, whose loss does not split), each op is
    multi-threaded instead: BLAS and Numba both get `threads`. Either way no more threads run than cores.
    """
    os.environ.setdefault("TINYMOE_KERNELS", "numba")
    n = (os.cpu_count() or 1) if threads is None else threads  # --threads 0 is refused, not "all cores"
    if n < 1:
        raise SystemExit(f"error: --threads must be >= 1, got {n}")
    if "numpy" in sys.modules:
        print("warning: NumPy was already imported; --threads may not apply to its BLAS", file=sys.stderr)

    shards = n if shard else 1
    env = recommended_environment(n, shards)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[var] = env[var]
    return n, shards


def setup_process(threads: int | None, shard: bool = True) -> int:
    """What every command-line tool does first, before NumPy loads: `apply_threads`, then `tune_malloc`
    (reuse freed activation memory instead of page-faulting fresh memory every step; see above).
    Returns the number of shards."""
    _, shards = apply_threads(threads, shard)
    tune_malloc()
    return shards


def report_errors(expected: tuple, debug: bool, work, stopped: tuple = ()) -> int:
    """Run `work()` and turn what can go wrong into exit codes and one-line messages (tracebacks only with
    --debug): 0 done, 2 an error the message explains (`expected`), 130 stopped by Ctrl-C with its state
    saved (`stopped`, e.g. tinymoe.training.TrainingInterrupted), 1 a bug."""
    try:
        work()
    except stopped as stop:
        print(f"\n{stop}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:  # a second Ctrl-C: abort now; what was saved before stays valid
        print("\naborted by a second Ctrl-C; the last checkpoint written before it is intact", file=sys.stderr)
        return 130
    except (*expected, OSError, MemoryError) as err:
        if debug:
            raise
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    except Exception as err:  # a bug in tinymoe: still one line, the traceback on request
        if debug:
            raise
        print(f"internal error: {type(err).__name__}: {' '.join(str(err).split())} (run again with --debug for the "
              "traceback, and please report it)", file=sys.stderr)
        return 1
    return 0


