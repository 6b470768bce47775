"""Decode once, then memory-map: the on-disk cache of decoded datasets.

Decoding Tiny ImageNet's 100,000 JPEGs takes seconds to tens of seconds; loading the decoded
uint8 array (1.2 GB) back as a memory map takes milliseconds and costs no RAM until pages are touched.
So every loader decodes a split once into `.npy` files and reuses them afterwards.

Layout (one directory per dataset source, one group of files per split):

    <cache dir>/<dataset>/<source name>-<hash of its absolute path>/
        train_images.npy  train_labels.npy  train.json
        val_images.npy    val_labels.npy    val.json

`<split>.json` records the *fingerprint* of the source (for a file: its absolute path, size and
modification time; for a folder: a digest of every file's relative path, size and mtime) and the
arrays' shapes. An entry is used only if the recorded fingerprint equals the current one and the
arrays are intact; otherwise it is stale and rebuilt in place. Files are written under temporary
names and renamed when complete, and the JSON is written last, so an interrupted build never leaves
an entry that looks valid. Before a build, the free space is checked and the files' disk blocks are
reserved (posix_fallocate), so a full disk is a one-line `WriteError`, never a SIGBUS from writing into
a memory map whose pages have nowhere to go; temporaries left by killed builds are deleted.

The cache directory is, in order: the `cache_dir` argument, the `TINYMOE_CACHE` environment variable,
`$XDG_CACHE_HOME/tinymoe`, `~/.cache/tinymoe` (on Windows `%LOCALAPPDATA%/tinymoe/cache`). Deleting it is
always safe. Moving a dataset file makes a new entry (the path is part of the key); old entries can be
deleted by hand.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from tinymoe.atomic import WriteError, check_free_space, process_alive

CACHE_ENV = "TINYMOE_CACHE"
# Bump when the decoded arrays' meaning changes (layout, dtype, label order): old entries become stale.
CACHE_FORMAT_VERSION = 1

ArraySpecs = dict[str, tuple[tuple[int, ...], np.dtype]]


def default_cache_dir() -> Path:
    """The cache directory used when no `cache_dir` is passed (see the module docstring for the order)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "tinymoe"
    if sys.platform == "win32" and os.environ.get("LOCALAPPDATA"):
        return Path(os.environ["LOCALAPPDATA"]) / "tinymoe" / "cache"
    return Path.home() / ".cache" / "tinymoe"


def resolve_cache_dir(cache_dir: str | os.PathLike | None) -> Path:
    return default_cache_dir() if cache_dir is None else Path(cache_dir).expanduser()


def file_fingerprint(path: str | os.PathLike) -> dict:
    """A file's identity for cache keys: absolute path, size in bytes, modification time in ns."""
    path = Path(path).resolve()
    st = path.stat()
    return {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def files_fingerprint(root: str | os.PathLike, relpaths: Iterable[str]) -> dict:
    """A folder's identity: a digest of (relative path, size, mtime) of each listed file, and their count.

    Any file added, removed, replaced or touched changes the digest, so the cache entry goes stale.
    """
    root = Path(root).resolve()
    digest = hashlib.sha256()
    count = 0
    for rel in relpaths:
        st = os.stat(root / rel)
        digest.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        count += 1
    return {"path": str(root), "files": count, "digest": digest.hexdigest()}


def entry_dir(cache_dir: str | os.PathLike | None, dataset: str, source: str | os.PathLike) -> Path:
    """The directory holding the cached splits of one dataset source (a zip, a folder, ...)."""
    source = Path(source).resolve()
    key = hashlib.sha256(str(source).encode()).hexdigest()[:12]
    return resolve_cache_dir(cache_dir) / dataset / f"{source.name}-{key}"


def _meta_path(directory: Path, name: str) -> Path:
    return directory / f"{name}.json"


def _array_path(directory: Path, name: str, array: str) -> Path:
    return directory / f"{name}_{array}.npy"


def load_cached(directory: Path, name: str, fingerprint: dict) -> dict[str, np.ndarray] | None:
    """The cached arrays of `name` as read-only memory maps, or None if absent or stale.

    Stale means: no JSON, a different fingerprint or format version, or an array file that is missing,
    truncated or of a different shape/dtype than recorded (the last case is reported as a warning,
    because it means someone or something damaged the cache).
    """
    meta_path = _meta_path(directory, name)
    try:
        meta = json.loads(meta_path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if meta.get("format") != CACHE_FORMAT_VERSION or meta.get("fingerprint") != fingerprint:
        return None
    arrays = {}
    for array, spec in meta["arrays"].items():
        path = _array_path(directory, name, array)
        try:
            loaded = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            warnings.warn(f"cache file {path} is damaged ({exc}); rebuilding it", stacklevel=3)
            return None
        if list(loaded.shape) != spec["shape"] or loaded.dtype.str != spec["dtype"]:
            warnings.warn(
                f"cache file {path} holds {loaded.dtype} {loaded.shape}, its {meta_path.name} says "
                f"{spec['dtype']} {tuple(spec['shape'])}; rebuilding it",
                stacklevel=3,
            )
            return None
        arrays[array] = loaded
    return arrays


def read_extra(directory: Path, name: str) -> dict:
    """The `extra` information stored with a cache entry by `build_cached` ({} if none)."""
    try:
        return json.loads(_meta_path(directory, name).read_text()).get("extra", {})
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


_TEMPORARY = re.compile(r"\.tmp(\d+)-\d+\.(npy|json)$")  # as build_cached names them: <...>.tmp<pid>-<thread>.npy


def remove_stale_temporaries(directory: Path) -> list[Path]:
    """Delete the temporary files of builds whose process no longer runs (killed mid-build); return them."""
    removed = []
    for entry in directory.iterdir() if directory.is_dir() else ():
        match = _TEMPORARY.search(entry.name)
        if match and int(match.group(1)) != os.getpid() and not process_alive(int(match.group(1))):
            entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def _allocate(path: Path, specs_item) -> np.memmap:
    """A writable .npy memory map whose disk blocks are reserved now: writing into it cannot hit a full disk."""
    shape, dtype = specs_item
    array = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
    if hasattr(os, "posix_fallocate"):  # without it (macOS, Windows) the free-space check is the guard
        with open(path, "r+b") as f:
            os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
    return array


def build_cached(
    directory: Path,
    name: str,
    fingerprint: dict,
    specs: ArraySpecs,
    fill: Callable[[dict[str, np.ndarray]], None],
    extra: dict | None = None,
) -> dict[str, np.ndarray]:
    """Allocate `specs` ({array: (shape, dtype)}) as writable memory maps, let `fill` write them, commit.

    `extra` is JSON-able information stored beside the arrays (e.g. class names), returned by
    `read_extra`, so a later load need not open the source at all. Returns the committed arrays
    re-opened read-only. If `fill` raises, the temporary files are removed and nothing is committed.
    """
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OSError(
            f"cannot create the cache directory {directory} ({exc}). Pass cache_dir=<a writable folder>, "
            f"set {CACHE_ENV}=<folder>, or pass cache=False to decode into memory without caching"
        ) from None
    for stale in remove_stale_temporaries(directory):
        warnings.warn(f"removed {stale}, left by a cache build that was killed", stacklevel=2)
    _meta_path(directory, name).unlink(missing_ok=True)  # the old entry stops being valid right now
    tag = f"tmp{os.getpid()}-{threading.get_ident()}"
    tmp_paths = {array: directory / f"{name}_{array}.{tag}.npy" for array in specs}
    start = time.perf_counter()
    need = sum(int(np.prod(shape)) * np.dtype(dtype).itemsize for shape, dtype in specs.values())
    fix = f"free some space, or pass --cache-dir / set {CACHE_ENV} to a folder with room"
    try:
        check_free_space(directory, need, f"the {name} cache", fix)
        writable = {array: _allocate(tmp_paths[array], spec) for array, spec in specs.items()}
        fill(writable)
        for array in writable.values():
            array.flush()
        del writable  # close the maps before renaming (needed on Windows)
        for array, tmp in tmp_paths.items():
            os.replace(tmp, _array_path(directory, name, array))
    except BaseException as exc:
        for tmp in tmp_paths.values():
            tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, WriteError):  # ENOSPC from fallocate, EACCES, ...
            raise WriteError(f"could not write the {name} cache in {directory}: {exc}; {fix}") from None
        raise
    meta = {
        "format": CACHE_FORMAT_VERSION,
        "fingerprint": fingerprint,
        "arrays": {a: {"shape": list(shape), "dtype": np.dtype(dtype).str} for a, (shape, dtype) in specs.items()},
        "extra": extra or {},
        "build_seconds": round(time.perf_counter() - start, 3),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    tmp_meta = directory / f"{name}.{tag}.json"
    tmp_meta.write_text(json.dumps(meta, indent=1))
    os.replace(tmp_meta, _meta_path(directory, name))
    loaded = load_cached(directory, name, fingerprint)
    if loaded is None:  # only possible if another process rebuilt it concurrently from a different source
        raise RuntimeError(f"cache entry {directory / name} changed while it was being written; run again")
    return loaded


def in_memory(specs: ArraySpecs, fill: Callable[[dict[str, np.ndarray]], None]) -> dict[str, np.ndarray]:
    """Allocate `specs` as ordinary arrays and let `fill` write them (the `cache=False` path)."""
    arrays = {array: np.empty(shape, dtype=dtype) for array, (shape, dtype) in specs.items()}
    fill(arrays)
    return arrays
