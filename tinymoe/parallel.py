"""Data parallelism on threads: one batch split into shards, each shard's forward and backward on a thread.

How a 2-core machine is best used. Multi-threading each op (BLAS threads, `prange` in the kernels) pays a
fork/join per op, and the ops of a 6×64 ViT are small (a (128·65, 64) × (64, 192) matmul takes about
a millisecond), so that overhead eats most of the second core: the 6×64 MoE trained at 1.25× its
one-thread speed that way (bench/results/throughput_moe_6x64.json). Splitting the *batch* instead
gives each core half the images and no synchronisation until the gradients are added, once per step.

Why threads, not processes: threads share the parameters (no copies, nothing to send back and forth),
and the heavy work releases Python's GIL: NumPy's ufunc loops and reductions, OpenBLAS matrix
products and tinymoe's Numba kernels (compiled with `nogil=True`). What keeps the GIL is the Python of
the autograd itself (recording the graph, the topological sort), a few percent of a step at these
sizes. Each shard thread runs BLAS and the Numba kernels single-threaded, so the threads never
oversubscribe the cores.

Exactness. The loss of a batch is a mean over its n images, L = (1/n) Σ_i ℓ_i. A shard s of n_s images
computes its own mean L_s, so

    L = Σ_s (n_s / n) · L_s        and        ∇L = Σ_s (n_s / n) · ∇L_s.

Each shard's backward is seeded with n_s / n instead of 1, on a *replica* of the model that shares the
parameter arrays but has its own `.grad`, and the replicas' gradients are added in shard order once all
threads are done. Every term of the loss is a mean over images (classification, the router's superclass
cross-entropy) and per-image routing decides image by image, so the sharded gradient equals the
unsharded one up to float rounding (tests/test_parallel.py checks it in float64). Token routing is the
exception: its balance losses are functions of whole-batch statistics (the squared coefficient of
variation of the experts' importance), which do not split into a sum over shards, so sharding a
token-routed model is refused rather than silently computing a different loss.

Determinism. Shards are contiguous slices of the batch, gradients are added in a fixed order, and each
shard draws its random masks (stochastic depth, expert dropout) from its own generator: the same seed
and the same number of shards give the same numbers, whatever order the threads finish in.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence

import numpy as np

from tinymoe.models.moe import router_class


def shard_bounds(batch: int, shards: int) -> list[tuple[int, int]]:
    """Contiguous [start, stop) slices of a batch, as equal as possible (sizes differ by at most one).

    Never more shards than images: a 3-image batch on 4 shards gives 3 slices."""
    if shards < 1:
        raise ValueError(f"shard_bounds: shards must be >= 1, got {shards}")
    shards = max(1, min(shards, batch))
    edges = np.linspace(0, batch, shards + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


def require_threadsafe_numba() -> None:
    """Make sure Numba's parallel kernels may be called from several threads at once.

    Numba's default threading layer picks OpenMP or TBB when present, either of which is thread-safe;
    its fallback, "workqueue", aborts the whole process when two threads enter parallel kernels at the
    same time. So: if no parallel kernel has run yet, ask for a thread-safe layer; if one has and the
    layer is workqueue, or none can be loaded, stop here with an explanation instead of crashing later.
    """
    try:
        import numba
        from numba.np.ufunc import parallel as numba_parallel
    except ImportError:  # no Numba: the NumPy references release the GIL and need no threading layer
        return
    if numba.config.DISABLE_JIT:  # plain Python functions: no threading layer involved
        return
    advice = ("use --threads 1 (or shards=1), or install a thread-safe layer: pip install tbb, or the OpenMP "
              "runtime (libgomp, e.g. apt install libgomp1)")
    if not numba_parallel._is_initialized:
        if numba.config.THREADING_LAYER == "workqueue":
            raise RuntimeError("parallel shards need a thread-safe Numba threading layer, but NUMBA_THREADING_LAYER="
                               f"workqueue was requested; unset it, or {advice}")
        numba.config.THREADING_LAYER = "threadsafe"
        try:
            _touch_parallel_layer()
        except ValueError as error:  # "No threading layer could be loaded"
            raise RuntimeError(f"parallel shards need a thread-safe Numba threading layer (OpenMP or TBB): {error}; "
                               f"{advice}") from error
    layer = numba.threading_layer()
    if layer == "workqueue":
        raise RuntimeError("parallel shards need a thread-safe Numba threading layer, but Numba already loaded "
                           f"'workqueue', which aborts when two threads call parallel kernels; {advice}")


def _touch_parallel_layer() -> None:
    from numba import njit, prange

    @njit(parallel=True)
    def total(a):
        s = 0.0
        for i in prange(a.size):
            s += a[i]
        return s

    total(np.ones(4))


def _single_threaded_numba() -> None:
    """Run in each shard thread once: its Numba kernels use one thread (the setting is per thread)."""
    try:
        import numba
    except ImportError:
        return
    numba.set_num_threads(1)


class ShardPool:
    """A pool of `shards` threads that runs one function on each shard of a batch.

    `bounds(batch)` gives the shards' [start, stop) slices of a batch; `run(fn, bounds)` calls
    fn(shard_index, start, stop) for every slice on its own thread and returns the results in shard order;
    an exception in any shard is raised in the caller (after all shards have finished, so none is left
    running). The two are separate so a caller that needs the shard count first (one random generator
    per shard) computes the slices once."""

    def __init__(self, shards: int):
        if not isinstance(shards, int) or shards < 1:
            raise ValueError(f"ShardPool: shards must be an integer >= 1, got {shards!r}")
        self.shards = shards
        self._executor = None
        if shards > 1:
            require_threadsafe_numba()
            self._executor = ThreadPoolExecutor(max_workers=shards, thread_name_prefix="tinymoe-shard",
                                                initializer=_single_threaded_numba)

    def bounds(self, batch: int) -> list[tuple[int, int]]:
        return shard_bounds(batch, self.shards)

    def run(self, fn: Callable[[int, int, int], Any], bounds: list[tuple[int, int]]) -> list:
        if self._executor is None or len(bounds) == 1:
            return [fn(i, a, b) for i, (a, b) in enumerate(bounds)]
        futures = [self._executor.submit(fn, i, a, b) for i, (a, b) in enumerate(bounds)]
        errors = [f.exception() for f in futures]  # waits for every shard
        for error in errors:
            if error is not None:
                raise error
        return [f.result() for f in futures]

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown: nothing left to clean up
            pass


def replicate(model, count: int) -> list:
    """`count` replicas of `model` sharing its parameter arrays (not copies), each with its own grads.

    A replica is a freshly built model of the same config whose parameters are then pointed at the
    original's arrays, so an optimizer step on the original is seen by every replica at once."""
    replicas = []
    for _ in range(count):
        replica = type(model)(model.config, rng=0, dtype=model.dtype)
        replicas.append(replica)
    sync_replicas(model, replicas)
    return replicas


def sync_replicas(model, replicas: Sequence) -> None:
    """Point each replica at the model's current parameter arrays, mode and routing targets (cheap:
    ~100 attribute assignments). Called before every step, so a load_state_dict that replaced arrays,
    or a switch between train and eval, can never leave a replica behind."""
    source = list(model.parameters())
    for replica in replicas:
        for mine, theirs in zip(replica.parameters(), source):
            mine.data = theirs.data
            mine.grad = None
        replica.train(model.training)
        for name, buffer in model.named_buffers():  # e.g. the class -> group map: shared, not copied
            _set_buffer(replica, name, buffer)


def _set_buffer(module, name: str, buffer) -> None:
    """Register `buffer` under the dotted `name` ("class_to_group", "blocks.3.x") of `module`."""
    *path, leaf = name.split(".")
    for part in path:
        module = getattr(module, part)
    module.register_buffer(leaf, buffer)


def add_gradients(model, replicas: Sequence) -> None:
    """model's grads += each replica's, in replica order; the replicas' grads are then released."""
    params = list(model.parameters())
    for replica in replicas:
        for p, q in zip(params, replica.parameters()):
            if q.grad is None:  # e.g. an expert no image of this shard was routed to
                continue
            if p.grad is None:
                p.grad = q.grad.copy()
            else:
                p.grad += q.grad
            q.grad = None


def check_shardable(config, shards: int) -> None:
    """Refuse sharding where it would change the loss (see the module docstring)."""
    if shards > 1 and config.is_moe and router_class(config).per_token:
        raise ValueError(
            f"{shards} shards: token routing's balance losses are computed from the whole batch and do not "
            "split over shards, so a token-routed model trains on one shard (shards=1, --threads 1 ... or let the "
            "command line choose: it uses BLAS/Numba threads instead for token routing)"
        )


__all__ = ["ShardPool", "add_gradients", "check_shardable", "replicate", "require_threadsafe_numba", "shard_bounds",
           "sync_replicas"]
