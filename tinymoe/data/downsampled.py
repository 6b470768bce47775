"""Downsampled ImageNet (Chrabaszcz, Loshchilov & Hutter 2017): Imagenet16, Imagenet32, Imagenet64.

All 1,281,167 ImageNet-1k training images and the 50,000 validation images, resized to S x S
(S = 16, 32 or 64), published by image-net.org (Downloads, "Downsampled ImageNet"; an account is
needed, so there is no automatic download) in two equivalent formats:

    train_data_batch_1 .. train_data_batch_10    (pickles)   or  the same names + ".npz"
    val_data                                     (pickle)    or  val_data.npz

Each holds `data`: uint8 (N, 3*S*S), each row the R plane, then G, then B (channel-first, row-major),
and `labels`: 1..1000 (1-based). We return images channel-last uint8 (N, S, S, 3) and labels 0..999.
Two versions of the val set circulate (49,999 and 50,000 images); both load.

The npz files are read with `np.load(allow_pickle=False)`. The pickles are read with
`RestrictedUnpickler`, which can only build dicts, lists, numbers, strings and NumPy arrays: a pickle
that asks for anything else (which is how malicious pickles run code) is refused with
`UnsafePickleError` before anything runs. Batches may sit directly in `root` or in sub-folders of it
(the downloads unpack to folders such as `Imagenet32_train/`); npz wins when both formats are there.

If a `map_clsloc.txt` (ImageNet devkit: `<wnid> <1-based label> <name>` per line) is found next to the
batches, class names come from it; otherwise classes are named by their original 1-based label.
"""

from __future__ import annotations

import importlib
import math
import os
import pickle
import re
import zipfile
from pathlib import Path

import numpy as np

from tinymoe.data import cache as cache_mod
from tinymoe.data.dataset import ArrayDataset
from tinymoe.data.errors import DatasetFormatError, DatasetNotFoundError, UnsafePickleError
from tinymoe.data.progress import progress_bar

NUM_CLASSES = 1000
TRAIN_BATCHES = 10
_BATCH_NAME = re.compile(r"^(?:train_data_batch_(\d+)|val_data)(\.npz)?$")


def _numpy_attr(private: str, public: str, attr: str):
    """`attr` from numpy's private module path (NumPy 2) or its public one (NumPy 1)."""
    try:
        return getattr(importlib.import_module(private), attr)
    except (ImportError, AttributeError):
        return getattr(importlib.import_module(public), attr)


def _allowed_globals() -> dict[tuple[str, str], object]:
    """The only callables a batch pickle may name: what NumPy and Python need to rebuild arrays and bytes.

    Pickles written by NumPy 1.x (and Python 2) name `numpy.core.*`, NumPy 2 names `numpy._core.*`;
    both map to the running NumPy's objects, and no module is imported because a pickle named it.
    """
    import _codecs

    reconstruct = _numpy_attr("numpy._core.multiarray", "numpy.core.multiarray", "_reconstruct")
    scalar = _numpy_attr("numpy._core.multiarray", "numpy.core.multiarray", "scalar")
    frombuffer = _numpy_attr("numpy._core.numeric", "numpy.core.numeric", "_frombuffer")
    allowed = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _codecs.encode,  # how Python 3 writes bytes in protocol-2 pickles
    }
    for module in ("numpy.core", "numpy._core"):
        allowed[(f"{module}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{module}.multiarray", "scalar")] = scalar
        allowed[(f"{module}.numeric", "_frombuffer")] = frombuffer
    return allowed


class RestrictedUnpickler(pickle.Unpickler):
    """An Unpickler that resolves only the globals needed for NumPy arrays and refuses all others.

    Everything a pickle can execute goes through `find_class` (the GLOBAL/STACK_GLOBAL opcodes), so
    refusing there means `os.system`, `subprocess.Popen`, `builtins.eval`, ... never even get looked up.
    `encoding="latin1"` reads NumPy arrays pickled by Python 2 (the original release) correctly.
    """

    _ALLOWED = None

    def __init__(self, file, *, source: str = "<pickle>"):
        super().__init__(file, encoding="latin1")
        self.source = source
        if RestrictedUnpickler._ALLOWED is None:
            RestrictedUnpickler._ALLOWED = _allowed_globals()

    def find_class(self, module: str, name: str):
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"{self.source} asks to load {module}.{name}, which a Downsampled ImageNet batch never needs "
                f"(only dicts, lists and NumPy arrays are allowed). Refusing to unpickle it: it may be "
                f"malicious or not a dataset file. Use the .npz version of the batches if you have it."
            ) from None


# A batch is a dict of arrays and lists of numbers: two levels deep. The limits leave room for odd but
# honest files and make the check's work bounded whatever the pickle holds.
_MAX_DEPTH = 8
_MAX_OBJECTS = 20_000_000


def _check_plain(value, source: str) -> None:
    """Refuse anything in an unpickled batch other than containers, numbers, strings and non-object arrays.

    The walk visits each container once (a pickle can reference one list from many places: walking
    every path would take 2**n steps for n small lines of pickle), iteratively (no RecursionError), and
    refuses nesting deeper than _MAX_DEPTH or more than _MAX_OBJECTS objects in all."""
    seen: set[int] = set()
    todo = [(value, "batch", 0)]
    visited = 0
    while todo:
        value, where, depth = todo.pop()
        visited += 1
        if depth > _MAX_DEPTH or visited > _MAX_OBJECTS:
            raise UnsafePickleError(
                f"{source}: nested deeper than {_MAX_DEPTH} levels or more than {_MAX_OBJECTS} objects; a Downsampled "
                "ImageNet batch is a dict of arrays, so this is not one. Refusing it"
            )
        if isinstance(value, (dict, list, tuple)):
            if id(value) in seen:
                continue
            seen.add(id(value))
            if isinstance(value, dict):
                todo += [(k, where, depth + 1) for k in value]
                todo += [(v, f"{where}[{k!r}]" if depth == 0 else where, depth + 1) for k, v in value.items()]
            else:
                todo += [(item, where, depth + 1) for item in value]
        elif isinstance(value, np.ndarray):
            if value.dtype.hasobject:
                raise UnsafePickleError(f"{source}: {where} is an array of Python objects; refusing it")
        elif not isinstance(value, (str, bytes, int, float, bool, np.generic, type(None))):
            raise UnsafePickleError(f"{source}: {where} is a {type(value).__name__}; refusing it")


def load_pickle_batch(path: str | os.PathLike) -> dict:
    """Read one pickled batch with `RestrictedUnpickler` and check it holds only plain data."""
    path = Path(path)
    with open(path, "rb") as f:
        try:
            batch = RestrictedUnpickler(f, source=str(path)).load()
        except UnsafePickleError:
            raise
        except Exception as exc:  # a damaged pickle can fail in many ways; name the file
            raise DatasetFormatError(f"cannot read pickled batch {path}: {type(exc).__name__}: {exc}") from None
    _check_plain(batch, str(path))
    if not isinstance(batch, dict):
        raise DatasetFormatError(f"{path} holds a {type(batch).__name__}, expected a dict with 'data' and 'labels'")
    return batch


def read_batch(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """`(data uint8 (N, 3*S*S), labels int64 (N,) as stored, 1-based)` of one npz or pickled batch."""
    path = Path(path)
    if path.suffix == ".npz":
        if not zipfile.is_zipfile(path):  # else np.load would suggest unpickling it
            raise DatasetFormatError(f"cannot read {path}: it is not an .npz (zip) archive (truncated or corrupt file?)")
        try:
            with np.load(path, allow_pickle=False) as z:
                batch = {key: z[key] for key in ("data", "labels") if key in z.files}
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
            raise DatasetFormatError(f"cannot read {path}: {exc}") from None
    else:
        batch = load_pickle_batch(path)
    missing = [key for key in ("data", "labels") if key not in batch]
    if missing:
        raise DatasetFormatError(f"{path} has no {missing} (keys: {sorted(batch)}); expected 'data' and 'labels'")
    data, labels = np.asarray(batch["data"]), np.asarray(batch["labels"])
    if data.dtype != np.uint8 or data.ndim != 2:
        raise DatasetFormatError(f"{path}: 'data' is {data.dtype} {data.shape}, expected uint8 (N, 3*S*S)")
    if labels.shape != (data.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise DatasetFormatError(
            f"{path}: 'labels' is {labels.dtype} {labels.shape}, expected {data.shape[0]} integers (one per row of 'data')"
        )
    return data, labels.astype(np.int64)


def _side(data_width: int, path: Path) -> int:
    side = math.isqrt(data_width // 3)
    if 3 * side * side != data_width:
        raise DatasetFormatError(f"{path}: rows of 'data' have {data_width} values, not 3*S*S for any image size S")
    return side


def _count_and_side(path: Path) -> tuple[int, int]:
    """(number of images, image side) of a batch, reading as little as possible.

    For npz only the labels and the `data` array's header are read; a pickle has to be read whole.
    """
    if path.suffix == ".npz":
        try:
            with zipfile.ZipFile(path) as zf, zf.open("data.npy") as f:
                version = np.lib.format.read_magic(f)
                read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, _, dtype = read_header(f)
            with np.load(path, allow_pickle=False) as z:
                labels = z["labels"]
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            raise DatasetFormatError(f"cannot read {path} (expected an npz with 'data' and 'labels'): {exc}") from None
        if dtype != np.uint8 or len(shape) != 2 or labels.shape != (shape[0],):
            raise DatasetFormatError(
                f"{path}: 'data' is {dtype} {shape} and 'labels' {labels.shape}; expected uint8 (N, 3*S*S) and (N,)"
            )
        return shape[0], _side(shape[1], path)
    data, labels = read_batch(path)
    return len(labels), _side(data.shape[1], path)


def find_batches(root: str | os.PathLike, split: str) -> list[Path]:
    """The batch files of `split` under `root` (itself and two levels of sub-folders), in order."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    root = Path(root).expanduser()
    how = (
        "Downsampled ImageNet (Imagenet16/32/64) comes from image-net.org (Downloads, 'Downsampled ImageNet'; "
        "an account is needed, so tinymoe cannot download it). Unpack the train and val archives (npz or pickle "
        f"format) into {root}"
    )
    if not root.is_dir():
        raise DatasetNotFoundError(f"{root} is not a folder. {how}.")
    found: dict[int, dict[bool, list[Path]]] = {}
    for depth_glob in ("*", "*/*", "*/*/*"):
        for path in root.glob(depth_glob):
            match = _BATCH_NAME.match(path.name)
            if not match or not path.is_file():
                continue
            number = int(match.group(1)) if match.group(1) else 0  # 0 stands for val_data
            found.setdefault(number, {True: [], False: []})[bool(match.group(2))].append(path)
    wanted = list(range(1, TRAIN_BATCHES + 1)) if split == "train" else [0]
    files = []
    for number in wanted:
        options = found.get(number, {True: [], False: []})
        paths = options[True] or options[False]  # npz first: it needs no unpickling at all
        if len(paths) > 1:
            raise DatasetFormatError(f"ambiguous: several copies of the same batch under {root}: {[str(p) for p in paths]}")
        files.extend(paths)
    if split == "train" and len(files) != TRAIN_BATCHES:
        have = sorted(n for n in found if n > 0)
        if not have:
            raise DatasetNotFoundError(f"no train_data_batch_<1..10>[.npz] files under {root}. {how}.")
        missing = [n for n in wanted if n not in found]
        raise DatasetFormatError(
            f"train batches {missing} are missing under {root} (found {have}); the train split has 10 batches "
            f"(Imagenet64 is distributed in two parts: unpack both)"
        )
    if split == "val" and not files:
        raise DatasetNotFoundError(f"no val_data[.npz] file under {root}. {how}.")
    return files


def _class_names(files: list[Path]) -> list[str]:
    for folder in dict.fromkeys(p.parent for p in files):
        for candidate in (folder / "map_clsloc.txt", folder.parent / "map_clsloc.txt"):
            if candidate.is_file():
                names = {}
                for line in candidate.read_text().splitlines():
                    parts = line.split()
                    if len(parts) >= 3 and parts[1].isdigit():
                        names[int(parts[1])] = parts[2].replace("_", " ")
                if sorted(names) == list(range(1, NUM_CLASSES + 1)):
                    return [names[i] for i in range(1, NUM_CLASSES + 1)]
    return [f"label {i}" for i in range(1, NUM_CLASSES + 1)]


def _to_zero_based(labels: np.ndarray, path: Path) -> np.ndarray:
    if labels.size and (labels.min() < 1 or labels.max() > NUM_CLASSES):
        raise DatasetFormatError(
            f"{path}: labels run {labels.min()}..{labels.max()}, expected 1..{NUM_CLASSES} (1-based, as published); "
            f"a file with 0-based labels has been converted by someone else and is not supported"
        )
    return labels - 1


class DownsampledImageNet(ArrayDataset):
    """Downsampled ImageNet as arrays: `images` uint8 (N, S, S, 3), `labels` int64 0..999.

    Args:
        root: folder holding the batches (directly or in sub-folders).
        split: "train" (10 batches, 1,281,167 images) or "val" (49,999 or 50,000 images).
        size: the expected image side S (16, 32 or 64); None accepts whatever the files hold.
        cache_dir, cache: the decoded channel-last arrays are cached like Tiny ImageNet's
            (see `tinymoe.data.cache`); cache=False converts in memory.
        classes: None for all 1000, an int k for labels 0..k-1, or a list of 0-based labels (renumbered
            in that order); limit: at most this many images per class. Subsets are taken from the
            full (cached) split.
        progress: progress bar over batches (None: only on a terminal).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        *,
        size: int | None = None,
        cache_dir: str | os.PathLike | None = None,
        cache: bool = True,
        classes=None,
        limit: int | None = None,
        progress: bool | None = None,
    ):
        self.root, self.split = root, split
        files = find_batches(root, split)
        self.files = files
        directory = cache_mod.entry_dir(cache_dir, "downsampled-imagenet", Path(root))
        fingerprint = {"dataset": "downsampled-imagenet", "split": split,
                       "files": [cache_mod.file_fingerprint(p) for p in files]}
        arrays = cache_mod.load_cached(directory, split, fingerprint) if cache else None
        self.cache_path = directory if cache else None
        self.loaded_from_cache = arrays is not None
        if arrays is None:
            counts, sides = zip(*(_count_and_side(path) for path in files))
            if len(set(sides)) != 1:
                raise DatasetFormatError(f"batches under {root} mix image sizes {sorted(set(sides))}")
            side, n = sides[0], sum(counts)
            if size is not None and side != size:
                raise DatasetFormatError(f"batches under {root} hold {side}x{side} images, but size={size} was asked for")

            def fill(arrays):
                offset = 0
                with progress_bar(total=len(files), desc=f"converting Imagenet{side} {split}", unit="batch",
                                  enabled=progress) as bar:
                    for path in files:
                        data, labels = read_batch(path)
                        k = len(labels)
                        # rows are [R plane | G plane | B plane]: (k, 3*S*S) -> (k, 3, S, S) -> (k, S, S, 3)
                        arrays["images"][offset : offset + k] = data.reshape(k, 3, side, side).transpose(0, 2, 3, 1)
                        arrays["labels"][offset : offset + k] = _to_zero_based(labels, path)
                        offset += k
                        bar.update(1)

            specs = {"images": ((n, side, side, 3), np.uint8), "labels": ((n,), np.int64)}
            if cache:
                arrays = cache_mod.build_cached(directory, split, fingerprint, specs, fill)
            else:
                arrays = cache_mod.in_memory(specs, fill)
        self.size = arrays["images"].shape[1]
        if size is not None and self.size != size:
            raise DatasetFormatError(f"batches under {root} hold {self.size}x{self.size} images, but size={size} was asked for")
        images, labels = arrays["images"], arrays["labels"]
        names = _class_names(files)
        if classes is not None or limit is not None:
            images, labels, names = _subset(images, labels, names, classes, limit)
        super().__init__(images, labels, names)


def _subset(images, labels, names, classes, limit):
    """Rows of the selected classes (renumbered in the given order), at most `limit` per class, in file order."""
    if classes is None:
        chosen = list(range(len(names)))
    elif isinstance(classes, (int, np.integer)):
        if not 1 <= classes <= len(names):
            raise ValueError(f"classes={classes}: choose between 1 and {len(names)} classes")
        chosen = list(range(int(classes)))
    else:
        chosen = [int(c) for c in classes]
        if any(not 0 <= c < len(names) for c in chosen) or len(set(chosen)) != len(chosen):
            raise ValueError(f"classes must be distinct 0-based labels in 0..{len(names) - 1}, got {list(classes)[:10]}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of images per class, got {limit}")
    new_label = np.full(len(names), -1, dtype=np.int64)
    new_label[chosen] = np.arange(len(chosen))
    relabelled = new_label[np.asarray(labels)]
    keep = relabelled >= 0
    if limit is not None:
        # rank of each row within its class, in file order: keep the first `limit`
        order = np.argsort(relabelled, kind="stable")
        sorted_labels = relabelled[order]
        first = np.searchsorted(sorted_labels, sorted_labels, side="left")
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order)) - first
        keep &= rank < limit
    rows = np.flatnonzero(keep)
    return np.asarray(images[rows]), relabelled[rows], [names[c] for c in chosen]


def load_downsampled_imagenet(
    root: str | os.PathLike, split: str = "train", cache_dir: str | os.PathLike | None = None, **kwargs
) -> tuple[np.ndarray, np.ndarray]:
    """`(images uint8 (N, S, S, 3), labels int64 0..999)`; keyword arguments as for `DownsampledImageNet`."""
    dataset = DownsampledImageNet(root, split, cache_dir=cache_dir, **kwargs)
    return dataset.images, dataset.labels
