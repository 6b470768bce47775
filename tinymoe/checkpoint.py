"""Checkpoints: one `.npz` file (NumPy's zip of arrays, loaded with allow_pickle=False) holding a model's
config, its parameters, and any extra training state, plus a JSON metadata document stored inside it.

Layout of the file (every entry is a plain array; nothing is pickled):

    __metadata__           a 0-d unicode array: the JSON document below
    param/<name>           one entry per name of model.state_dict(): every parameter (see the table in
                           tinymoe/exported.py for names, shapes and layouts) and buffer, e.g.
                           param/class_to_group, (num_classes,) int64, the class -> expert-group map
                           when the model has one (files written before it was a buffer hold it as
                           `class_to_group`; they load the same)
    state/<n>              the arrays found inside `state=` (optimizer moments, ...), numbered

    JSON metadata: {"format": "tinymoe-checkpoint", "version": 1, "tinymoe_version": ..., "config": {...},
                    "parameters": {name: {"shape": [...], "dtype": "float32"}}, "metadata": {...your dict...},
                    "state": <your state with each array replaced by {"__array__": "state/<n>"}>}

`state` may be any nesting of dicts, lists, tuples, numbers, strings, None and NumPy arrays/scalars; it
comes back with the same structure and dtypes (tuples stay tuples, int keys stay ints). That is enough for
an optimizer's state_dict and for `np.random.Generator.bit_generator.state`.

Writes are atomic: the file is written under a temporary name in the same directory, flushed to disk,
then renamed over the target with os.replace, so a crash leaves either the old checkpoint or the new
one, never half of one. Reading checks everything it can (zip CRCs, the metadata, every parameter's
shape) and raises `CheckpointError` with the path and the reason, never a traceback from inside NumPy.
"""

from __future__ import annotations

import json
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tinymoe import __version__
from tinymoe.atomic import atomic_write
from tinymoe.models.config import ConfigError, ModelConfig
from tinymoe.models.vit import VisionTransformer

FORMAT = "tinymoe-checkpoint"
VERSION = 1
_METADATA_KEY = "__metadata__"
_CLASS_TO_GROUP_KEY = "class_to_group"
LEGACY_FIELDS = ("teacher_forcing",)  # ModelConfig fields of older checkpoints, dropped on load


class CheckpointError(ValueError):
    """A checkpoint that cannot be written or read, or does not fit the model it is loaded into."""


class NonFiniteError(CheckpointError):
    """Refused to write a checkpoint whose parameters or state hold NaN or inf (a diverged model)."""


@dataclass
class Checkpoint:
    """What `load_checkpoint` returns."""

    path: Path
    config: ModelConfig
    params: dict[str, np.ndarray]  # parameter name -> array, as model.state_dict()
    class_to_group: np.ndarray | None = None
    state: Any = None  # the `state=` given to save_checkpoint, rebuilt
    metadata: dict = field(default_factory=dict)  # the `metadata=` given to save_checkpoint
    info: dict = field(default_factory=dict)  # the whole JSON document (format, versions, shapes, ...)


# --------------------------------------------------------------------------------------------------
# Encoding nested state as JSON + arrays
# --------------------------------------------------------------------------------------------------
_MARKERS = ("__array__", "__tuple__", "__items__")


def _encode(obj, arrays: dict[str, np.ndarray], where: str):
    """Replace arrays by references into `arrays`; make tuples and non-string dict keys survive JSON."""
    if isinstance(obj, (np.ndarray, np.generic)):
        arr = np.asarray(obj)
        if arr.dtype.hasobject:
            raise CheckpointError(f"state{where} is an object array; only numeric/bool/str arrays can be saved")
        key = f"state/{len(arrays)}"
        arrays[key] = arr
        return {"__array__": key}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, arrays, f"{where}[{i}]") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, arrays, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj) and not any(k in _MARKERS for k in obj):
            return {k: _encode(v, arrays, f"{where}[{k!r}]") for k, v in obj.items()}
        # Non-string keys (e.g. a parameter index) would become strings in JSON; keep them as pairs.
        for k in obj:
            if not (k is None or isinstance(k, (bool, int, float, str))):
                raise CheckpointError(f"state{where} has a dict key of type {type(k).__name__}; use str or int")
        return {"__items__": [[k, _encode(v, arrays, f"{where}[{k!r}]")] for k, v in obj.items()]}
    raise CheckpointError(
        f"state{where} has a value of type {type(obj).__name__}, which a checkpoint cannot hold; use dicts, "
        "lists, tuples, numbers, strings, None and NumPy arrays"
    )


def _decode(obj, arrays: dict[str, np.ndarray]):
    if isinstance(obj, list):
        return [_decode(v, arrays) for v in obj]
    if isinstance(obj, dict):
        if set(obj) == {"__array__"}:
            arr = arrays[obj["__array__"]]
            return arr[()] if arr.ndim == 0 else arr  # NumPy scalars come back as NumPy scalars
        if set(obj) == {"__tuple__"}:
            return tuple(_decode(v, arrays) for v in obj["__tuple__"])
        if set(obj) == {"__items__"}:
            return {k: _decode(v, arrays) for k, v in obj["__items__"]}
        return {k: _decode(v, arrays) for k, v in obj.items()}
    return obj


# --------------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------------
def save_checkpoint(path, model, *, state=None, metadata: dict | None = None) -> Path:
    """Write `model` (its config, parameters and class->group map) plus optional `state` and `metadata`.

    Args:
        path: the file to write (conventionally ending in .npz; the name is used as given).
        model: a tinymoe model (anything with `.config` and `.state_dict()`).
        state: extra training state, e.g. {"optimizer": opt.state_dict(), "rng": rng.bit_generator.state,
            "step": 1200}; see the module docstring for what it may contain.
        metadata: a JSON-serialisable dict (epoch, metrics, command line, ...), returned as
            `Checkpoint.metadata`.
    Returns the path written.
    """
    path = Path(path)
    arrays: dict[str, np.ndarray] = {}
    params = model.state_dict()  # parameters and buffers (the class -> group map, when set)
    for name, value in params.items():
        arrays[f"param/{name}"] = np.asarray(value)

    state_arrays: dict[str, np.ndarray] = {}
    encoded_state = _encode(state, state_arrays, "")
    arrays.update(state_arrays)
    document = {
        "format": FORMAT,
        "version": VERSION,
        "tinymoe_version": _tinymoe_version(),
        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": model.config.to_dict(),
        "parameters": {n: {"shape": list(np.shape(v)), "dtype": str(np.asarray(v).dtype)} for n, v in params.items()},
        "metadata": metadata or {},
        "state": encoded_state,
    }
    try:
        text = json.dumps(document)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint metadata is not JSON-serialisable: {e}") from e
    arrays[_METADATA_KEY] = np.array(text)
    _check_finite(path, arrays)
    _atomic_savez(path, arrays)
    return path


def _check_finite(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """No checkpoint holds NaN or inf: a diverged model is never saved, so every checkpoint on disk is
    one a run can continue from (and `model.npz` is never a poisoned result)."""
    bad = [k for k, a in arrays.items() if a.dtype.kind in "fc" and not np.all(np.isfinite(a))]
    if bad:
        names = [k.split("/", 1)[1] for k in bad if k.startswith("param/")]
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more parameters" if len(names) > 3 else "")
        if len(names) < len(bad):
            shown += (" and " if names else "") + "the training state (optimizer moments)"
        raise NonFiniteError(f"refusing to write {path}: {shown} hold NaN or inf (the model diverged)")


def _atomic_savez(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez into a temporary file beside `path`, then renamed over it (see tinymoe.atomic); the free
    space is checked first and an OS error (disk full, ...) becomes a one-line tinymoe.atomic.WriteError."""
    with atomic_write(path, "wb", reserve=sum(a.nbytes for a in arrays.values())) as f:
        np.savez(f, **arrays)  # a file object, so NumPy does not append ".npz" to the name


def _tinymoe_version() -> str:
    return __version__


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------
def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}: the file does not exist")
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory, not a checkpoint file")
    try:
        # Only an .npz (a zip archive) is handed to np.load: anything else would get NumPy's advice to
        # unpickle it, which is exactly what a checkpoint from an unknown source must never get.
        if not zipfile.is_zipfile(path):
            with open(path, "rb") as f:
                head = f.read(8)
            raise CheckpointError(
                f"{path} is not a readable tinymoe checkpoint (truncated or corrupt file?): a checkpoint is an .npz "
                f"(zip) archive, this file starts with {head!r}"
            )
        with np.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}  # reading each member checks its zip CRC
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as e:
        raise CheckpointError(
            f"{path} is not a readable tinymoe checkpoint (truncated or corrupt file?): {type(e).__name__}: {e}"
        ) from e


def _parse_document(path: Path, arrays: dict[str, np.ndarray]) -> dict:
    if _METADATA_KEY not in arrays:
        raise CheckpointError(f"{path} is an .npz file but not a tinymoe checkpoint (it has no {_METADATA_KEY})")
    try:
        document = json.loads(str(arrays[_METADATA_KEY]))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: the checkpoint's JSON metadata is corrupt: {e}") from e
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a tinymoe checkpoint (format is {document.get('format')!r})")
    if document.get("version") != VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {document.get('version')} is not supported by this tinymoe "
            f"(it reads version {VERSION}); use the tinymoe version that wrote it "
            f"({document.get('tinymoe_version')})"
        )
    return document


def read_metadata(path) -> dict:
    """The JSON document of a checkpoint (config, parameter shapes, your metadata), without building a model."""
    path = Path(path)
    return _parse_document(path, _read_arrays(path))


def load_checkpoint(path, model=None, *, check_config: bool = True) -> Checkpoint:
    """Read a checkpoint; if `model` is given, also load the parameters (and class->group map) into it.

    With `model`, the model's config must equal the saved config (`check_config=False` skips that and
    only requires parameter names and shapes to match, e.g. to fine-tune with another router weight).
    """
    path = Path(path)
    arrays = _read_arrays(path)
    document = _parse_document(path, arrays)
    try:
        # Checkpoints written before the study's training-only routing option moved to tinymoe.lab carry it
        # as a model field; it never changed the weights' meaning or the eval-mode forward pass.
        config = ModelConfig.from_dict({k: v for k, v in document["config"].items() if k not in LEGACY_FIELDS})
    except (ConfigError, TypeError, KeyError) as e:
        raise CheckpointError(f"{path}: the saved config is invalid: {e}") from e

    params: dict[str, np.ndarray] = {}
    for name, spec in document.get("parameters", {}).items():
        key = f"param/{name}"
        if key not in arrays:
            raise CheckpointError(f"{path}: parameter {name!r} is listed in the metadata but missing from the file")
        if list(arrays[key].shape) != spec["shape"]:
            raise CheckpointError(
                f"{path}: parameter {name!r} has shape {arrays[key].shape}, metadata says {tuple(spec['shape'])}"
            )
        params[name] = arrays[key]
    unlisted = sorted(k[len("param/"):] for k in arrays if k.startswith("param/") and k[len("param/"):] not in params)
    if unlisted:
        raise CheckpointError(f"{path}: arrays {unlisted} are in the file but not in its metadata")

    try:
        state = _decode(document.get("state"), arrays)
    except KeyError as e:
        raise CheckpointError(f"{path}: the saved state refers to a missing array {e}") from e
    ckpt = Checkpoint(
        path=path,
        config=config,
        params=params,
        class_to_group=params.get(_CLASS_TO_GROUP_KEY, arrays.get(_CLASS_TO_GROUP_KEY)),
        state=state,
        metadata=document.get("metadata", {}),
        info=document,
    )
    if model is not None:
        load_into(ckpt, model, check_config=check_config)
    return ckpt


def load_into(ckpt: Checkpoint, model, *, check_config: bool = True) -> None:
    """Copy a loaded checkpoint's parameters and class->group map into `model` (see load_checkpoint)."""
    if check_config:
        diff = ckpt.config.differences(model.config)
        if diff:
            listed = ", ".join(f"{name}: checkpoint {a!r} vs model {b!r}" for name, (a, b) in diff.items())
            raise CheckpointError(
                f"{ckpt.path} was saved from a different model config ({listed}). The checkpoint holds a "
                f"{ckpt.config.describe()}; the model is a {model.config.describe()}. Build the model from the "
                "checkpoint with tinymoe.checkpoint.load_model(path), or pass check_config=False if only "
                "settings that do not change parameter shapes differ."
            )
    params = dict(ckpt.params)
    if ckpt.class_to_group is not None:  # a buffer the model gets once it is set: set it, then load everything
        model.set_class_to_group(ckpt.class_to_group)
        params[_CLASS_TO_GROUP_KEY] = ckpt.class_to_group  # (older files: a key of its own, not a param/)
    try:
        model.load_state_dict(params, strict=True)
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{ckpt.path} does not fit this model: {e}") from e


def load_model(path, *, dtype=np.float32):
    """Build the model described by a checkpoint and load its parameters: `model = load_model("run/moe.npz")`."""
    ckpt = load_checkpoint(path)
    model = VisionTransformer(ckpt.config, rng=np.random.default_rng(0), dtype=dtype)
    load_into(ckpt, model)
    return model


__all__ = [
    "Checkpoint",
    "CheckpointError",
    "NonFiniteError",
    "save_checkpoint",
    "load_checkpoint",
    "load_into",
    "load_model",
    "read_metadata",
]
