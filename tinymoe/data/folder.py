"""A generic image folder: one sub-folder per class, like torchvision's `ImageFolder`.

    root/
      cat/  a.jpg  b.png  more/c.jpg      (sub-folders of a class folder are searched too)
      dog/  ...

Classes are the sub-folder names in sorted order (label i = i-th name). Files are those whose
extension is in `IMAGE_EXTENSIONS` (case-insensitive), sorted by path within each class; hidden files
and folders (starting with ".") are skipped. Images are converted to RGB; with `size=S` each one is
scaled so its shorter side is S and center-cropped to S x S; without `size` they must all have the
same size. Decoded arrays are cached like Tiny ImageNet's; the cache key covers every file's path,
size and modification time, so adding, removing or editing any image rebuilds it.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image

from tinymoe.data import cache as cache_mod
from tinymoe.data.dataset import ArrayDataset
from tinymoe.data.errors import DatasetFormatError, DatasetNotFoundError, ImageDecodeError
from tinymoe.data.images import IMAGE_EXTENSIONS, decode_many


def list_image_folder(root: str | os.PathLike, extensions=IMAGE_EXTENSIONS) -> tuple[list[str], list[str], np.ndarray]:
    """`(classes, relative file paths, labels int64)` of an image folder, without decoding anything."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetNotFoundError(f"image folder {root} does not exist (expected root/<class>/<image files>)")
    classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir() and not entry.name.startswith("."))
    if not classes:
        raise DatasetFormatError(f"{root} has no class sub-folders (expected root/<class>/<image files>)")
    extensions = tuple(e.lower() for e in extensions)
    files, labels, empty = [], [], []
    for label, name in enumerate(classes):
        found = []
        for dirpath, dirnames, filenames in os.walk(root / name):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            rel_dir = Path(dirpath).relative_to(root).as_posix()
            found.extend(
                f"{rel_dir}/{f}" for f in filenames if not f.startswith(".") and f.lower().endswith(extensions)
            )
        if not found:
            empty.append(name)
        found.sort()
        files.extend(found)
        labels.extend([label] * len(found))
    if empty:
        raise DatasetFormatError(
            f"class folders {empty[:5]} in {root} hold no images with extensions {', '.join(extensions)}; "
            f"remove them or add images"
        )
    return classes, files, np.array(labels, dtype=np.int64)


def _first_size(root: Path, rel: str) -> tuple[int, int]:
    try:
        with Image.open(io.BytesIO((root / rel).read_bytes())) as im:
            width, height = im.size
    except OSError as exc:
        raise ImageDecodeError(f"cannot read image {rel} in {root}: {exc}", rel, str(root)) from None
    return height, width


class ImageFolder(ArrayDataset):
    """An image folder decoded to `images` uint8 (N, H, W, 3) and `labels` int64.

    Args:
        root: the folder holding one sub-folder per class.
        size: scale the shorter side to `size` and center-crop to size x size; None requires all images
            to share one size (the first image's), and reports the first one that does not.
        cache_dir, cache, workers, progress: as for `tinymoe.data.TinyImageNet`.

    Attributes: `root`, `classes` (folder names), `class_to_idx`, `files` (relative paths, in label order),
    `images`, `labels`, `cache_path`, `loaded_from_cache`.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        size: int | None = None,
        *,
        cache_dir: str | os.PathLike | None = None,
        cache: bool = True,
        workers: int | None = None,
        progress: bool | None = None,
        extensions=IMAGE_EXTENSIONS,
    ):
        self.root = Path(root).expanduser()
        classes, files, labels = list_image_folder(self.root, extensions)
        self.files = files
        if size is not None and size < 1:
            raise ValueError(f"size must be a positive number of pixels, got {size}")
        height, width = (size, size) if size is not None else _first_size(self.root, files[0])
        specs = {"images": ((len(files), height, width, 3), np.uint8), "labels": ((len(files),), np.int64)}

        def fill(arrays):
            decode_many(files, lambda rel: (self.root / rel).read_bytes(), arrays["images"], source=str(self.root),
                        resize=size, workers=workers, progress=progress, desc=f"decoding {self.root.name}")
            arrays["labels"][:] = labels

        self.loaded_from_cache = False
        if cache:
            self.cache_path = cache_mod.entry_dir(cache_dir, "image-folder", self.root)
            fingerprint = {"dataset": "image-folder", "size": size, "classes": classes,
                           "source": cache_mod.files_fingerprint(self.root, files)}
            name = "original" if size is None else f"size{size}"  # one entry per size, so sizes do not evict each other
            arrays = cache_mod.load_cached(self.cache_path, name, fingerprint)
            if arrays is None:
                arrays = cache_mod.build_cached(self.cache_path, name, fingerprint, specs, fill)
            else:
                self.loaded_from_cache = True
        else:
            self.cache_path = None
            arrays = cache_mod.in_memory(specs, fill)
        super().__init__(arrays["images"], arrays["labels"], classes)


def load_image_folder(root: str | os.PathLike, size: int | None = None, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    """`(images uint8 (N, H, W, 3), labels int64)` of an image folder; keyword arguments as for `ImageFolder`."""
    dataset = ImageFolder(root, size, **kwargs)
    return dataset.images, dataset.labels
