"""Fixtures for the data tests: small datasets written at test time in every supported format.

Nothing here touches the network or the user's real cache: an autouse fixture points TINYMOE_CACHE
at the test's tmp_path, so even a loader called without `cache_dir` writes there.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# Deliberately not in sorted order: labels must follow wnids.txt, not the alphabet.
WNIDS = ["n09999999", "n01000001", "n05555555"]
NAMES = ["zebra fish, test fish", "apple", "kite, flying toy"]
COLOURS = [(220, 40, 40), (40, 200, 60), (50, 60, 210)]


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Any cache write that forgets cache_dir lands in tmp_path, never in ~/.cache."""
    monkeypatch.setenv("TINYMOE_CACHE", str(tmp_path / "default-cache"))


def _picture(colour, k: int, size: int = 64) -> np.ndarray:
    """A 64x64 RGB test picture: the class colour with a stripe whose position encodes k."""
    image = np.empty((size, size, 3), dtype=np.uint8)
    image[:] = colour
    row = (7 * k) % (size - 4)
    image[row : row + 4] = 255 - np.asarray(colour, dtype=np.uint8)
    return image


def _save(array: np.ndarray, path: Path, gray: bool = False, fmt: str = "JPEG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array)
    if gray:
        image = image.convert("L")
    image.save(path, format=fmt, quality=95)


def decoded(path: Path) -> np.ndarray:
    """What a correct loader must return for this file: Pillow's RGB decoding of it."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def write_tiny_imagenet(
    root: Path,
    *,
    train_per_class: int = 12,
    val_per_class: int = 3,
    gray_train: tuple = ((1, 5),),
    gray_val: tuple = (4,),
    annotations: bool = True,
) -> dict:
    """Write a Tiny ImageNet folder in the official layout; return what loading it must give.

    12 images per class make names _0 .. _11, so a lexicographic sort ('_10' < '_2') would be caught.
    Val images are interleaved across classes and their annotation lines are written in a scrambled
    order, so val order must come from the file numbers. Grayscale images are saved as mode "L".
    """
    root.mkdir(parents=True, exist_ok=True)
    (root / "wnids.txt").write_text("\n".join(WNIDS) + "\n")
    words = ["n00000001\tentity"] + [f"{w}\t{n}" for w, n in zip(WNIDS, NAMES)] + ["n99999999\tsomething else"]
    (root / "words.txt").write_text("\n".join(words) + "\n")
    train_images, train_labels = [], []
    for c, wnid in enumerate(WNIDS):
        (root / "train" / wnid).mkdir(parents=True, exist_ok=True)
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text(f"{wnid}_0.JPEG\t0\t0\t63\t63\n")
        for k in range(train_per_class):
            path = root / "train" / wnid / "images" / f"{wnid}_{k}.JPEG"
            _save(_picture(COLOURS[c], k), path, gray=(c, k) in gray_train)
            train_images.append(decoded(path))
            train_labels.append(c)
    val_images, val_labels, lines = [], [], []
    for i in range(val_per_class * len(WNIDS)):
        c = (i * 2) % len(WNIDS)
        path = root / "val" / "images" / f"val_{i}.JPEG"
        _save(_picture(COLOURS[c], 100 + i), path, gray=i in gray_val)
        val_images.append(decoded(path))
        val_labels.append(c)
        lines.append(f"val_{i}.JPEG\t{WNIDS[c]}\t0\t0\t63\t63")
    if annotations:
        order = np.random.default_rng(0).permutation(len(lines))
        (root / "val" / "val_annotations.txt").write_text("\n".join(lines[j] for j in order) + "\n")
    return {
        "train": (np.stack(train_images), np.array(train_labels, dtype=np.int64)),
        "val": (np.stack(val_images), np.array(val_labels, dtype=np.int64)),
    }


def zip_folder(folder: Path, zip_path: Path, prefix: str = "tiny-imagenet-200/", compression=zipfile.ZIP_STORED) -> Path:
    """Zip `folder` with every member under `prefix`, as the official zip does (JPEGs stored)."""
    with zipfile.ZipFile(zip_path, "w", compression=compression) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, prefix + path.relative_to(folder).as_posix())
    return zip_path


@pytest.fixture
def tiny_folder(tmp_path):
    """(unpacked tiny-imagenet-200 folder, expected arrays per split)."""
    root = tmp_path / "unpacked" / "tiny-imagenet-200"
    return root, write_tiny_imagenet(root)


@pytest.fixture
def tiny_zip(tmp_path, tiny_folder):
    """(tiny-imagenet-200.zip in the official layout, expected arrays per split)."""
    folder, expected = tiny_folder
    (tmp_path / "zipped").mkdir()
    return zip_folder(folder, tmp_path / "zipped" / "tiny-imagenet-200.zip"), expected


class Builders:
    """The fixture writers, for tests that need variants (a test module cannot import this conftest)."""

    write_tiny_imagenet = staticmethod(write_tiny_imagenet)
    zip_folder = staticmethod(zip_folder)
    decoded = staticmethod(decoded)
    picture = staticmethod(_picture)
    save = staticmethod(_save)
    WNIDS, NAMES, COLOURS = WNIDS, NAMES, COLOURS


@pytest.fixture
def build():
    return Builders
