"""The backend switch: which implementation of each kernel runs, the NumPy reference or a Numba one.

Every kernel has a *name* (e.g. "gelu_forward") and a plain NumPy *reference* implementation; it may
also have a *numba* implementation that computes the same thing faster. The ops in `tinymoe.ops` call
kernels by name through a `Kernel` object, which forwards the call to the implementation of the
active backend. So a Numba kernel slots in by registering it, without touching any op:

    from tinymoe.kernels.backend import register
    register("gelu_forward", numba=gelu_forward_numba)   # next to the reference registered earlier

Choosing the backend:

    TINYMOE_KERNELS=reference python -m ...    # environment variable, read once at import
    kernels.use_backend("numba")                # a function (returns the previous backend)
    with kernels.using("reference"): ...        # a context manager, restores the previous backend

The library's default is "reference": the NumPy references are the readable ground truth, need no
compilation, and are what tests and tutorials compare against. The command-line tools
(`python -m tinymoe.train`, `tinymoe.evaluate`) default to "numba", which trains the 6×64 models about
2.2× faster on one core (bench/results/throughput_*.json); TINYMOE_KERNELS overrides both.

Fallback rule (explicit, never silent): under the "numba" backend, a kernel that has no Numba
implementation runs its reference. `report()` lists, for every kernel, which implementation the
current backend runs and says "(no Numba version)" where that is a fallback, so a benchmark or a
debugging session can print exactly what ran. Code that must not fall back (a benchmark of the
Numba kernels, their tests) asks for `kernel.numba` directly, or calls `require_numba(name)`,
which raises if the kernel has no Numba version.

`NUMBA_DISABLE_JIT=1` still works under the "numba" backend: Numba then runs the jitted
functions as plain Python, which is slow but debuggable.
"""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Callable, Iterator

BACKENDS = ("reference", "numba")
ENV_VAR = "TINYMOE_KERNELS"


def _validated(name: str, where: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"{where}: unknown kernel backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if name == "numba":
        try:
            import numba  # noqa: F401
        except ImportError as e:  # numba is a runtime dependency, so this means a broken install
            raise ImportError(
                f"{where}: the 'numba' kernel backend needs the numba package ({e}); "
                "install it with `python -m pip install numba` or use the 'reference' backend"
            ) from e
    return name


_active: str = _validated(
    os.environ.get(ENV_VAR, "").strip() or "reference", f"environment variable {ENV_VAR}"
)


def active_backend() -> str:
    """The name of the backend kernels currently run on: "reference" or "numba"."""
    return _active


def use_backend(name: str) -> str:
    """Make `name` ("reference" or "numba") the active backend for every kernel; returns the previous one."""
    global _active
    previous = _active
    _active = _validated(name, "use_backend")
    return previous


@contextlib.contextmanager
def using(name: str) -> Iterator[None]:
    """Run the `with` block on backend `name`, then restore the backend that was active before."""
    previous = use_backend(name)
    try:
        yield
    finally:
        use_backend(previous)


class Kernel:
    """One named kernel: its reference implementation, optionally a Numba one, and the dispatch.

    Calling the Kernel calls the implementation of the active backend. `kernel.reference` and
    `kernel.numba` are the implementations themselves (`numba` is None until one is registered);
    tests compare them directly.
    """

    def __init__(self, name: str, reference: Callable):
        self.name = name
        self.reference = reference
        self.numba: Callable | None = None
        functools.update_wrapper(self, reference)  # help(kernel) shows the reference's docstring

    def implementation(self, backend: str | None = None) -> Callable:
        """The function that runs under `backend` (default: the active one)."""
        backend = _active if backend is None else backend
        if backend == "numba" and self.numba is not None:
            return self.numba
        return self.reference

    def __call__(self, *args, **kwargs):
        return self.implementation()(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<Kernel {self.name}: reference{' + numba' if self.numba is not None else ''}>"


class Registry:
    """Name -> Kernel. The module-level functions below use one shared instance; tests may make their own."""

    def __init__(self) -> None:
        self._kernels: dict[str, Kernel] = {}

    def register(self, name: str, reference: Callable | None = None, numba: Callable | None = None) -> Kernel:
        """Register the reference of a new kernel, or add a Numba version to a registered one.

        A name is registered once with its reference (`register(name, reference=f)`); a Numba version
        is added later (`register(name, numba=g)`), possibly in the same call. Replacing an existing
        implementation with a different function is an error, so two modules cannot silently fight
        over one name.
        """
        kernel = self._kernels.get(name)
        if kernel is None:
            if reference is None:
                raise KeyError(
                    f"register({name!r}): no kernel of that name has a reference yet; register the NumPy "
                    f"reference first (register({name!r}, reference=...)). Known kernels: {sorted(self._kernels)}"
                )
            kernel = self._kernels[name] = Kernel(name, reference)
        elif reference is not None and reference is not kernel.reference:
            raise ValueError(f"register({name!r}): a different reference implementation is already registered")
        if numba is not None:
            if kernel.numba is not None and kernel.numba is not numba:
                raise ValueError(f"register({name!r}): a different Numba implementation is already registered")
            kernel.numba = numba
        return kernel

    def get(self, name: str) -> Kernel:
        try:
            return self._kernels[name]
        except KeyError:
            raise KeyError(f"no kernel named {name!r}; known kernels: {sorted(self._kernels)}") from None

    def names(self) -> list[str]:
        return sorted(self._kernels)

    def require_numba(self, name: str) -> Callable:
        """The Numba implementation of `name`, or a clear error if it has none (no fallback)."""
        kernel = self.get(name)
        if kernel.numba is None:
            raise NotImplementedError(f"kernel {name!r} has no Numba implementation (only the NumPy reference)")
        return kernel.numba

    def report(self, backend: str | None = None) -> dict[str, str]:
        """For every kernel, which implementation runs under `backend` (default: the active one).

        Values are "reference", "numba", or "reference (no Numba version)" for a kernel that falls back
        to its reference under the numba backend.
        """
        backend = _active if backend is None else _validated(backend, "report")
        rows = {}
        for name in sorted(self._kernels):
            kernel = self._kernels[name]
            if backend == "reference":
                rows[name] = "reference"
            else:
                rows[name] = "numba" if kernel.numba is not None else "reference (no Numba version)"
        return rows


REGISTRY = Registry()
register = REGISTRY.register
get = REGISTRY.get
names = REGISTRY.names
require_numba = REGISTRY.require_numba
report = REGISTRY.report
