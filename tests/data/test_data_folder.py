"""ImageFolder: one sub-folder per class, mixed formats and modes, resizing, errors, cache staleness."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

import tinymoe.data as data


def _write(path, array, mode=None, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array)
    if mode:
        image = image.convert(mode)
    image.save(path, format=fmt)


@pytest.fixture
def folder(tmp_path):
    """cat/ (png, a gray png, an RGBA png in a nested folder), dog/ (jpg, bmp), plus files to be ignored."""
    rng = np.random.default_rng(0)
    root = tmp_path / "pets"
    pictures = {name: rng.integers(0, 256, (10, 12, 3), dtype=np.uint8) for name in "abcde"}
    _write(root / "cat" / "a.png", pictures["a"])
    _write(root / "cat" / "b.png", pictures["b"], mode="L")
    _write(root / "cat" / "nested" / "c.PNG", pictures["c"], mode="RGBA")
    _write(root / "dog" / "d.jpg", pictures["d"])
    _write(root / "dog" / "e.bmp", pictures["e"])
    (root / "dog" / "notes.txt").write_text("not an image")
    _write(root / "dog" / ".hidden.png", pictures["a"])
    _write(root / ".trash" / "x.png", pictures["a"])
    return root, pictures


def test_classes_files_labels_and_pixels(folder, tmp_path):
    root, pictures = folder
    ds = data.ImageFolder(root, cache_dir=tmp_path / "cache")
    assert ds.classes == ["cat", "dog"] and ds.class_to_idx == {"cat": 0, "dog": 1}
    assert ds.files == ["cat/a.png", "cat/b.png", "cat/nested/c.PNG", "dog/d.jpg", "dog/e.bmp"]
    np.testing.assert_array_equal(ds.labels, [0, 0, 0, 1, 1])
    assert ds.images.shape == (5, 10, 12, 3) and ds.images.dtype == np.uint8
    np.testing.assert_array_equal(ds.images[0], pictures["a"])  # lossless formats are exact
    np.testing.assert_array_equal(ds.images[2], pictures["c"])  # RGBA -> RGB keeps the colour channels
    np.testing.assert_array_equal(ds.images[4], pictures["e"])
    gray = np.asarray(Image.fromarray(pictures["b"]).convert("L"))
    for c in range(3):
        np.testing.assert_array_equal(ds.images[1][..., c], gray)
    with Image.open(root / "dog" / "d.jpg") as im:
        np.testing.assert_array_equal(ds.images[3], np.asarray(im.convert("RGB")))


def test_mixed_sizes_need_size_and_size_resizes(tmp_path):
    root = tmp_path / "f"
    _write(root / "a" / "1.png", np.zeros((10, 10, 3), np.uint8))
    _write(root / "a" / "2.png", np.zeros((20, 30, 3), np.uint8))
    with pytest.raises(data.ImageDecodeError, match=r"a/2.png .* is 20x30 .* expected 10x10"):
        data.load_image_folder(root, cache=False)
    wide = np.zeros((20, 40, 3), np.uint8)
    wide[:, 10:30] = 200  # the central square is bright, the sides dark
    _write(root / "a" / "2.png", wide)
    images, labels = data.load_image_folder(root, size=8, cache=False)
    assert images.shape == (2, 8, 8, 3)
    assert images[1].min() > 150  # shorter side scaled to 8, then the central 8x8 cut: only the bright part


def test_truncated_image_in_folder_is_named(tmp_path):
    root = tmp_path / "f"
    _write(root / "a" / "ok.jpg", np.full((16, 16, 3), 128, np.uint8))
    _write(root / "a" / "bad.jpg", np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8))
    bad = root / "a" / "bad.jpg"
    bad.write_bytes(bad.read_bytes()[:200])
    with pytest.raises(data.ImageDecodeError) as info:
        data.load_image_folder(root, cache=False)
    assert info.value.name == "a/bad.jpg" and str(root) in str(info.value)


def test_empty_class_and_missing_root_are_errors(tmp_path):
    root = tmp_path / "f"
    _write(root / "a" / "1.png", np.zeros((4, 4, 3), np.uint8))
    (root / "b").mkdir()
    with pytest.raises(data.DatasetFormatError, match=r"\['b'\] .* hold no images"):
        data.load_image_folder(root, cache=False)
    with pytest.raises(data.DatasetNotFoundError):
        data.load_image_folder(tmp_path / "absent")
    (tmp_path / "flat").mkdir()
    _write(tmp_path / "flat" / "x.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(data.DatasetFormatError, match="no class sub-folders"):
        data.load_image_folder(tmp_path / "flat")


def test_cache_reused_then_rebuilt_when_an_image_is_added(folder, tmp_path):
    root, _ = folder
    cache_dir = tmp_path / "cache"
    assert not data.ImageFolder(root, cache_dir=cache_dir).loaded_from_cache
    again = data.ImageFolder(root, cache_dir=cache_dir)
    assert again.loaded_from_cache and len(again) == 5
    resized = data.ImageFolder(root, size=6, cache_dir=cache_dir)  # another size: its own entry
    assert not resized.loaded_from_cache and resized.images.shape == (5, 6, 6, 3)
    assert data.ImageFolder(root, cache_dir=cache_dir).loaded_from_cache  # the first entry was not evicted
    _write(root / "dog" / "f.png", np.zeros((10, 12, 3), np.uint8))
    grown = data.ImageFolder(root, cache_dir=cache_dir)
    assert not grown.loaded_from_cache and len(grown) == 6 and grown.files[-1] == "dog/f.png"
    path = root / "cat" / "a.png"
    _write(path, np.full((10, 12, 3), 9, np.uint8))
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    edited = data.ImageFolder(root, cache_dir=cache_dir)
    assert not edited.loaded_from_cache and edited.images[0].max() == 9
