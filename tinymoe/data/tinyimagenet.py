"""Tiny ImageNet (Stanford CS231n): 200 ImageNet classes at 64x64, read straight from the official zip.

Official layout (inside `tiny-imagenet-200.zip`, or an unpacked `tiny-imagenet-200/` folder):

    wnids.txt                      the 200 WordNet ids, one a line: THE class order (label i = line i)
    words.txt                      wnid <TAB> human-readable names, for all of WordNet
    train/<wnid>/images/<wnid>_<n>.JPEG     500 per class
    val/images/val_<n>.JPEG        not in class folders ...
    val/val_annotations.txt        ... their labels are here: file <TAB> wnid <TAB> bounding box
    test/images/...                unlabelled, unused

The zip stores its JPEGs uncompressed, so reading members without unpacking costs nothing extra; we
never unpack. Images are ordered by class (wnids.txt order) and then by the number in the file name
(`_2` before `_10`); val images by their number. Grayscale images (1,821 in train) become RGB by
repeating the channel.

    >>> images, labels = load_tiny_imagenet("data/tiny-imagenet-200.zip", split="val")  # doctest: +SKIP
    >>> images.shape, images.dtype, labels.dtype                                         # doctest: +SKIP
    ((10000, 64, 64, 3), dtype('uint8'), dtype('int64'))

The first call decodes the split (with a progress bar) into the cache (`tinymoe.data.cache`); later
calls memory-map the cached arrays.
"""

from __future__ import annotations

import collections
import os
import re
import threading
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tinymoe.data import cache as cache_mod
from tinymoe.data.dataset import ArrayDataset
from tinymoe.data.download import download_url, file_md5
from tinymoe.data.errors import DatasetFormatError, DatasetNotFoundError
from tinymoe.data.images import IMAGE_EXTENSIONS, decode_many

# The public file. The shared copy in this project's data folder differs on purpose (no test/, half of
# val), so the checksum is checked on downloads only; `verify_tiny_imagenet` reports it on request.
TINY_IMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
TINY_IMAGENET_MD5 = "90528d7ca1a48142e341f4ef8d21d0de"
TINY_IMAGENET_SIZE = 248_100_043
ZIP_NAME = "tiny-imagenet-200.zip"
FOLDER_NAME = "tiny-imagenet-200"
IMAGE_SIZE = 64
SPLITS = ("train", "val")


_DIGITS = re.compile(r"(\d+)")


def _natural_key(name: str) -> tuple:
    """Sort key that orders numbers by value: 'n01_2.JPEG' < 'n01_10.JPEG'."""
    parts = _DIGITS.split(name)  # text, number, text, number, ..., text
    parts[1::2] = map(int, parts[1::2])
    return tuple(parts)


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


class _ZipSource:
    """Files of the dataset inside a zip. Names are zip member names; `read` is thread-safe."""

    kind = "zip"

    def __init__(self, path: Path):
        self.path = path
        try:
            self.zip = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise DatasetFormatError(
                f"{path} is not a readable zip file ({exc}); it may be truncated or still downloading. "
                f"Re-download it ({TINY_IMAGENET_URL}, {TINY_IMAGENET_SIZE:,} bytes)."
            ) from None
        names = [n for n in self.zip.namelist() if not n.endswith("/")]
        wnids = sorted((n for n in names if n.rsplit("/", 1)[-1] == "wnids.txt"), key=len)
        if not wnids:
            raise DatasetFormatError(f"{path} has no wnids.txt: it is not the Tiny ImageNet zip")
        self.prefix = wnids[0][: -len("wnids.txt")]  # usually "tiny-imagenet-200/"
        self.relpaths = [n[len(self.prefix) :] for n in names if n.startswith(self.prefix)]
        self._lock = threading.Lock()

    def name(self, rel: str) -> str:
        return self.prefix + rel

    def read(self, name: str) -> bytes:
        with self._lock:  # one reader at a time on the shared file handle; decoding runs outside the lock
            return self.zip.read(name)

    def read_rel(self, rel: str) -> bytes | None:
        try:
            return self.read(self.name(rel))
        except KeyError:
            return None

    def fingerprint(self, names: Sequence[str]) -> dict:
        return cache_mod.file_fingerprint(self.path)

    def __str__(self) -> str:
        return str(self.path)


class _FolderSource:
    """Files of an unpacked dataset folder. Names are '/'-separated paths relative to the folder."""

    kind = "folder"

    def __init__(self, path: Path):
        self.path = path
        self.relpaths = []
        for sub in ("train", "val"):
            for dirpath, dirnames, filenames in os.walk(path / sub):
                dirnames.sort()
                rel_dir = Path(dirpath).relative_to(path).as_posix()
                self.relpaths.extend(f"{rel_dir}/{f}" for f in filenames)

    def name(self, rel: str) -> str:
        return rel

    def read(self, name: str) -> bytes:
        return (self.path / name).read_bytes()

    def read_rel(self, rel: str) -> bytes | None:
        try:
            return self.read(rel)
        except FileNotFoundError:
            return None

    def fingerprint(self, names: Sequence[str]) -> dict:
        return cache_mod.files_fingerprint(self.path, names)

    def __str__(self) -> str:
        return str(self.path)


def _not_found_message(root: Path) -> str:
    return (
        f"Tiny ImageNet not found at {root} (looked for a zip at that path, {root / ZIP_NAME}, and an unpacked "
        f"{root / FOLDER_NAME}/wnids.txt).\n"
        f"Get it from {TINY_IMAGENET_URL} ({TINY_IMAGENET_SIZE:,} bytes, md5 {TINY_IMAGENET_MD5}), then either put "
        f"the zip at {root / ZIP_NAME if root.suffix != '.zip' else root} (no need to unpack it) or pass the zip's "
        f"path (command line: --data /path/to/{ZIP_NAME}); or pass download=True to fetch it there."
    )


def find_tiny_imagenet(root: str | os.PathLike) -> Path:
    """The zip or unpacked folder that `root` designates, or DatasetNotFoundError explaining how to get it.

    `root` may be the zip itself, the unpacked `tiny-imagenet-200` folder, or a folder containing either
    (`tiny-imagenet-200.zip` is preferred when both are there: it is one file, so it is cheap to fingerprint).
    """
    root = Path(root).expanduser()
    if root.is_file():
        return root
    if root.is_dir():
        for candidate in (root / ZIP_NAME, root / FOLDER_NAME):
            if candidate.is_file() or (candidate / "wnids.txt").is_file():
                return candidate
        if (root / "wnids.txt").is_file():
            return root
    raise DatasetNotFoundError(_not_found_message(root))


def download_tiny_imagenet(
    root: str | os.PathLike,
    *,
    url: str | None = None,
    md5: str | None = None,
    size: int | None = None,
    progress: bool | None = None,
) -> Path:
    """Download the public zip into folder `root` (or to `root` itself if it ends in .zip); return its path.

    `url`, `md5`, `size` default to the public file's (module constants TINY_IMAGENET_URL, _MD5, _SIZE);
    tests point them at a local server. Resumes a partial download; see `tinymoe.data.download`.
    """
    root = Path(root).expanduser()
    dest = root if root.suffix == ".zip" else root / ZIP_NAME
    url = TINY_IMAGENET_URL if url is None else url
    md5 = TINY_IMAGENET_MD5 if md5 is None else md5
    size = TINY_IMAGENET_SIZE if size is None else size
    return download_url(url, dest, md5=md5, size=size, progress=progress)


def _open_source(path: Path) -> _ZipSource | _FolderSource:
    if path.is_file():
        if not zipfile.is_zipfile(path):
            raise DatasetFormatError(
                f"{path} is a file but not a zip; pass the Tiny ImageNet zip ({ZIP_NAME}) or the folder holding it"
            )
        return _ZipSource(path)
    return _FolderSource(path)


def _read_text(source, rel: str, purpose: str) -> str:
    data = source.read_rel(rel)
    if data is None:
        raise DatasetFormatError(
            f"{rel} is missing from {source}; {purpose}. The dataset is incomplete: re-download or re-unpack "
            f"the official zip ({TINY_IMAGENET_URL})."
        )
    return data.decode("utf-8")


class TinyImageNetIndex:
    """Which files make up a split and their labels, found without decoding any image.

    Attributes: `names` (zip member names or relative paths, in dataset order), `labels` int64,
    `wnids` and `class_names` of the selected classes (label i is wnids[i]), `source`.
    """

    def __init__(self, source, split: str, names: list[str], labels: np.ndarray, wnids: list[str], class_names: list[str]):
        self.source, self.split, self.names, self.labels = source, split, names, labels
        self.wnids, self.class_names = wnids, class_names

    def __len__(self) -> int:
        return len(self.names)


def _select_classes(wnids: list[str], classes) -> list[str]:
    if classes is None:
        return wnids
    if isinstance(classes, (int, np.integer)):
        if not 1 <= classes <= len(wnids):
            raise ValueError(f"classes={classes}: choose between 1 and {len(wnids)} classes (the first k of wnids.txt)")
        return wnids[: int(classes)]
    chosen = list(classes)
    unknown = [w for w in chosen if w not in set(wnids)]
    if unknown:
        raise ValueError(f"classes: {unknown[:5]} are not in wnids.txt (expected WordNet ids such as {wnids[0]!r})")
    if len(set(chosen)) != len(chosen):
        raise ValueError("classes: the list repeats a wnid")
    return chosen


def index_tiny_imagenet(
    root: str | os.PathLike, split: str = "train", *, classes=None, limit: int | None = None
) -> TinyImageNetIndex:
    """List a split's images and labels without decoding them (fast: for counts and checks).

    Args:
        root: see `find_tiny_imagenet`.
        split: "train" or "val".
        classes: None for all 200; an int k for the first k wnids; or a list of wnids. Labels are
            renumbered 0..len(classes)-1 in that order.
        limit: keep at most this many images per class (the first ones in file order), for smoke runs.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r} (test/ is unlabelled and not supported)")
    source = _open_source(find_tiny_imagenet(root))
    return _index(source, split, classes, limit)


def _index(source, split: str, classes, limit: int | None) -> TinyImageNetIndex:
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of images per class, got {limit}")
    all_wnids = _read_text(source, "wnids.txt", "it defines the class order").split()
    if len(set(all_wnids)) != len(all_wnids) or not all_wnids:
        raise DatasetFormatError(f"wnids.txt in {source} is empty or repeats a wnid")
    words_data = source.read_rel("words.txt")
    words = {}
    if words_data is not None:
        for line in words_data.decode("utf-8").splitlines():
            wnid, _, text = line.partition("\t")
            words[wnid] = text.strip()
    wnids = _select_classes(all_wnids, classes)
    class_names = [words.get(w, w) for w in wnids]  # a class missing from words.txt is named by its wnid

    per_class: dict[str, list[str]] = collections.defaultdict(list)
    if split == "train":
        for rel in source.relpaths:
            parts = rel.split("/")
            if len(parts) == 4 and parts[0] == "train" and parts[2] == "images" and _is_image(parts[3]):
                per_class[parts[1]].append(rel)
        unknown = sorted(set(per_class) - set(all_wnids))
        if unknown:
            raise DatasetFormatError(f"train/ in {source} has class folders not in wnids.txt: {unknown[:5]}")
        empty = [w for w in wnids if not per_class.get(w)]
        if empty:
            raise DatasetFormatError(
                f"train/<wnid>/images/ in {source} has no images for {len(empty)} classes of wnids.txt, e.g. {empty[:3]}"
            )
    else:
        annotations = _read_text(
            source,
            "val/val_annotations.txt",
            "it holds the val labels (val images are not in class folders)",
        )
        present = {rel.split("/")[-1]: rel for rel in source.relpaths if rel.startswith("val/images/") and _is_image(rel)}
        wnid_set, annotated = set(all_wnids), set()
        for number, line in enumerate(annotations.splitlines(), 1):
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) < 2 or fields[1] not in wnid_set:
                raise DatasetFormatError(
                    f"val/val_annotations.txt line {number} in {source} is {line!r}; expected "
                    f"'<file>\\t<wnid from wnids.txt>\\t<box>'"
                )
            file, wnid = fields[0], fields[1]
            if file not in present:
                raise DatasetFormatError(f"val/val_annotations.txt line {number} names {file}, not in val/images/ of {source}")
            annotated.add(file)
            per_class[wnid].append(present[file])
        unlabelled = sorted(set(present) - annotated, key=_natural_key)
        if unlabelled:
            raise DatasetFormatError(
                f"{len(unlabelled)} images in val/images/ of {source} have no line in val/val_annotations.txt, "
                f"e.g. {unlabelled[:3]}"
            )

    chosen = []  # (name, label) of the selected classes; train is grouped by class, val keeps file order
    for label, wnid in enumerate(wnids):
        files = sorted(per_class.get(wnid, []), key=_natural_key)
        chosen.extend((source.name(rel), label, rel) for rel in files[:limit])
    if split == "val":
        chosen.sort(key=lambda item: _natural_key(item[2]))
    names = [name for name, _, _ in chosen]
    labels = np.array([label for _, label, _ in chosen], dtype=np.int64)
    return TinyImageNetIndex(source, split, names, labels, wnids, class_names)


class TinyImageNet(ArrayDataset):
    """Tiny ImageNet as arrays: `images` uint8 (N, 64, 64, 3) and `labels` int64, in wnids.txt order.

    Args:
        root: the zip, the unpacked `tiny-imagenet-200` folder, or a folder containing either.
        split: "train" (100,000 images in the public file) or "val" (10,000; 5,000 in the shared copy).
        download: if the dataset is not found, download the public zip into `root` first.
        cache_dir: where decoded arrays are cached (default: see `tinymoe.data.cache`).
        cache: False decodes into memory and writes nothing.
        classes, limit: subset options for smoke runs (see `index_tiny_imagenet`). A subset is sliced
            from the cached full split when there is one, else decoded on its own (and not cached).
        workers: decode threads (default 2).
        progress: show a progress bar while decoding (None: only on a terminal).

    Attributes (torchvision-like): `root`, `split`, `download`, `wnids`, `classes` (words.txt names, e.g.
    "goldfish, Carassius auratus"), `class_to_idx` (name -> label), `wnid_to_idx`, `images`, `labels`,
    `source` (the zip or folder used), `cache_path` (cache entry directory or None), `loaded_from_cache`.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        download: bool = False,
        *,
        cache_dir: str | os.PathLike | None = None,
        cache: bool = True,
        classes=None,
        limit: int | None = None,
        workers: int | None = None,
        progress: bool | None = None,
    ):
        self.root, self.split, self.download = root, split, download
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r} (test/ is unlabelled and not supported)")
        try:
            path = find_tiny_imagenet(root)
        except DatasetNotFoundError:
            if not download:
                raise
            path = download_tiny_imagenet(root, progress=progress)
        self.source = path
        self.cache_path = cache_mod.entry_dir(cache_dir, FOLDER_NAME, path) if cache else None
        self.loaded_from_cache = False
        self.decode_seconds = 0.0  # time spent decoding JPEGs in this call (0 when loaded from the cache)
        subset = classes is not None or limit is not None

        # Fast path: a zip's fingerprint is one stat() call, and the class names are stored with the
        # cached arrays, so a cached zip split loads without even opening the zip.
        if cache and not subset and path.is_file():
            fingerprint = _fingerprint(path, split, None)
            arrays = cache_mod.load_cached(self.cache_path, split, fingerprint)
            extra = cache_mod.read_extra(self.cache_path, split)
            if arrays is not None and {"wnids", "classes"} <= set(extra):
                self.loaded_from_cache = True
                self._finish(arrays["images"], arrays["labels"], extra["wnids"], extra["classes"])
                return

        source = _open_source(path)
        index = _index(source, split, classes, limit)
        if not index.names:
            raise DatasetFormatError(f"the {split} split selected from {path} is empty")
        images = self._decode_or_load(index, subset, cache, workers, progress)
        self._finish(images, index.labels, index.wnids, index.class_names)

    def _finish(self, images, labels, wnids, class_names) -> None:
        self.wnids = list(wnids)
        self.wnid_to_idx = {w: i for i, w in enumerate(self.wnids)}
        super().__init__(images, np.asarray(labels), class_names)

    def _decode_or_load(self, index: TinyImageNetIndex, subset: bool, cache: bool, workers, progress) -> np.ndarray:
        source, n = index.source, len(index.names)
        image_spec = ((n, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)

        def fill(arrays):
            start = time.perf_counter()
            decode_many(index.names, source.read, arrays["images"], source=str(source), workers=workers,
                        progress=progress, desc=f"decoding Tiny ImageNet {index.split}")
            self.decode_seconds = time.perf_counter() - start
            if "labels" in arrays:
                arrays["labels"][:] = index.labels

        if not cache:
            return cache_mod.in_memory({"images": image_spec}, fill)["images"]
        if subset:
            full = _index(source, index.split, None, None)
            cached = cache_mod.load_cached(self.cache_path, index.split, _fingerprint(source.path, index.split, full))
            if cached is None:  # decode just the subset; caching every subset would litter the cache
                return cache_mod.in_memory({"images": image_spec}, fill)["images"]
            self.loaded_from_cache = True
            row_of = {name: row for row, name in enumerate(full.names)}
            return np.asarray(cached["images"][[row_of[name] for name in index.names]])
        fingerprint = _fingerprint(source.path, index.split, index)
        specs = {"images": image_spec, "labels": ((n,), np.int64)}
        extra = {"wnids": index.wnids, "classes": index.class_names}
        cached = cache_mod.load_cached(self.cache_path, index.split, fingerprint)
        if cached is None:
            cached = cache_mod.build_cached(self.cache_path, index.split, fingerprint, specs, fill, extra)
        else:
            self.loaded_from_cache = True
        if not np.array_equal(cached["labels"], index.labels):  # the cache and the index must agree exactly
            raise RuntimeError(f"cache entry {self.cache_path} disagrees with the dataset's labels; delete it and run again")
        return cached["images"]


def _fingerprint(path: Path, split: str, index: TinyImageNetIndex | None) -> dict:
    """Cache key of a split: the zip's path, size and mtime; for a folder, every file the split reads."""
    if path.is_file():
        source = cache_mod.file_fingerprint(path)
    else:
        meta = ["wnids.txt", "words.txt"] + (["val/val_annotations.txt"] if split == "val" else [])
        source = cache_mod.files_fingerprint(path, [n for n in meta if (path / n).is_file()] + index.names)
    return {"dataset": FOLDER_NAME, "split": split, "source": source}


def load_tiny_imagenet(
    root: str | os.PathLike,
    split: str = "train",
    cache_dir: str | os.PathLike | None = None,
    *,
    cache: bool = True,
    classes=None,
    limit: int | None = None,
    download: bool = False,
    workers: int | None = None,
    progress: bool | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The decoded split as `(images uint8 (N, 64, 64, 3), labels int64 (N,))`, labels in wnids.txt order.

    Same arguments as `TinyImageNet`; use the class when you also need class names.
    """
    dataset = TinyImageNet(root, split, download, cache_dir=cache_dir, cache=cache, classes=classes, limit=limit,
                           workers=workers, progress=progress)
    return dataset.images, dataset.labels


def verify_tiny_imagenet(root: str | os.PathLike, *, md5: bool = False) -> dict:
    """Check a copy of Tiny ImageNet without decoding it; return a report (a dict) and raise on real damage.

    Checks: the layout (wnids.txt, every class's train images, val labels for every val image), for a
    zip the CRC of every member (catches bit rot and truncation), and with `md5=True` the zip's MD5
    against the public file's. A different MD5 is reported, not raised: trimmed copies (like this project's
    shared one, without test/ and with half of val) are legitimate.
    """
    path = find_tiny_imagenet(root)
    source = _open_source(path)
    train = _index(source, "train", None, None)
    val = _index(source, "val", None, None)
    counts = np.bincount(train.labels, minlength=len(train.wnids))
    report = {
        "path": str(path),
        "kind": source.kind,
        "classes": len(train.wnids),
        "train_images": len(train),
        "train_per_class": [int(counts.min()), int(counts.max())],
        "val_images": len(val),
    }
    if source.kind == "zip":
        bad = source.zip.testzip()
        if bad is not None:
            raise DatasetFormatError(f"{path}: member {bad} fails its CRC check; the zip is damaged, re-download it")
        report["crc"] = "ok"
        if md5:
            actual = file_md5(path)
            report["md5"] = actual
            report["md5_matches_public_file"] = actual == TINY_IMAGENET_MD5
    return report
