"""Tiny ImageNet loader: official zip and unpacked folder, class order, val labels, errors, cache."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

import tinymoe.data as data
from tinymoe.data import tinyimagenet

SHARED_ZIP = Path(__file__).resolve().parents[3] / "shared" / "data" / "tiny-imagenet-200.zip"


@pytest.mark.parametrize("split", ["train", "val"])
def test_zip_and_folder_load_the_expected_arrays(tiny_zip, tiny_folder, tmp_path, split):
    zip_path, expected = tiny_zip
    folder, _ = tiny_folder
    want_images, want_labels = expected[split]
    for root in (zip_path, folder):
        images, labels = data.load_tiny_imagenet(root, split, cache_dir=tmp_path / "cache")
        assert images.dtype == np.uint8 and images.shape == want_images.shape and images.shape[1:] == (64, 64, 3)
        assert labels.dtype == np.int64
        np.testing.assert_array_equal(labels, want_labels)
        np.testing.assert_array_equal(images, want_images)


def test_class_order_and_names_follow_wnids_and_words(tiny_zip, build, tmp_path):
    zip_path, _ = tiny_zip
    ds = data.TinyImageNet(zip_path, "train", cache_dir=tmp_path)
    assert ds.wnids == build.WNIDS  # not sorted: wnids.txt order
    assert ds.classes == build.NAMES
    assert ds.class_to_idx == {name: i for i, name in enumerate(build.NAMES)}
    assert ds.wnid_to_idx == {w: i for i, w in enumerate(build.WNIDS)}
    assert (ds.split, ds.download, ds.root) == ("train", False, zip_path)
    image, label = ds[13]
    assert image.shape == (64, 64, 3) and label == 1
    assert len(ds) == 36


def test_train_images_sorted_by_number_not_text(tiny_zip):
    zip_path, _ = tiny_zip
    index = data.index_tiny_imagenet(zip_path, "train")
    first_class = [name.rsplit("/", 1)[-1] for name in index.names[:12]]
    assert first_class == [f"n09999999_{k}.JPEG" for k in range(12)]
    assert index.names[0].startswith("tiny-imagenet-200/train/")  # zip member names


def test_grayscale_images_become_rgb(tiny_folder, tmp_path):
    folder, _ = tiny_folder
    images, labels = data.load_tiny_imagenet(folder, "train", cache=False)
    gray = images[12 + 5]  # class 1, image 5 was saved as mode "L"
    assert np.array_equal(gray[..., 0], gray[..., 1]) and np.array_equal(gray[..., 1], gray[..., 2])
    colour = images[12 + 4]
    assert not np.array_equal(colour[..., 0], colour[..., 1])
    val_images, _ = data.load_tiny_imagenet(folder, "val", cache=False)
    assert np.array_equal(val_images[4][..., 0], val_images[4][..., 2])


@pytest.mark.parametrize("form", ["zip", "folder-with-zip", "unpacked", "folder-with-unpacked"])
def test_every_root_form_is_found(tiny_zip, tiny_folder, form):
    zip_path, _ = tiny_zip
    folder, _ = tiny_folder
    root = {"zip": zip_path, "folder-with-zip": zip_path.parent, "unpacked": folder,
            "folder-with-unpacked": folder.parent}[form]
    found = data.find_tiny_imagenet(root)
    assert found == (zip_path if "zip" in form else folder)
    assert len(data.index_tiny_imagenet(root, "val")) == 9


def test_missing_dataset_says_where_to_get_it(tmp_path):
    with pytest.raises(data.DatasetNotFoundError) as info:
        data.load_tiny_imagenet(tmp_path / "nowhere", "train")
    message = str(info.value)
    for needed in ("http://cs231n.stanford.edu/tiny-imagenet-200.zip", "248,100,043", "90528d7ca1a48142e341f4ef8d21d0de",
                   str(tmp_path / "nowhere" / "tiny-imagenet-200.zip"), "--data", "download=True"):
        assert needed in message
    assert isinstance(info.value, FileNotFoundError)


def test_not_a_zip_is_refused_clearly(tmp_path):
    fake = tmp_path / "tiny-imagenet-200.zip"
    fake.write_bytes(b"this is not a zip archive at all")
    with pytest.raises(data.DatasetFormatError, match="not a zip"):
        data.index_tiny_imagenet(fake, "train")


def test_missing_val_annotations_is_an_error_naming_the_file(tmp_path, build):
    folder = tmp_path / "tiny-imagenet-200"
    build.write_tiny_imagenet(folder, annotations=False, train_per_class=2, val_per_class=1)
    zip_path = build.zip_folder(folder, tmp_path / "t.zip")
    for root in (folder, zip_path):
        with pytest.raises(data.DatasetFormatError, match="val/val_annotations.txt is missing"):
            data.load_tiny_imagenet(root, "val", cache_dir=tmp_path / "c")
        images, _ = data.load_tiny_imagenet(root, "train", cache_dir=tmp_path / "c")  # train does not need it
        assert images.shape[0] == 6


def test_val_image_without_annotation_is_an_error(tmp_path, build):
    folder = tmp_path / "tiny-imagenet-200"
    build.write_tiny_imagenet(folder, train_per_class=1, val_per_class=1)
    lines = (folder / "val" / "val_annotations.txt").read_text().splitlines()
    (folder / "val" / "val_annotations.txt").write_text("\n".join(lines[1:]) + "\n")
    with pytest.raises(data.DatasetFormatError, match="no line in val/val_annotations.txt"):
        data.index_tiny_imagenet(folder, "val")


def test_truncated_jpeg_in_zip_names_the_member(tmp_path, build):
    folder = tmp_path / "tiny-imagenet-200"
    build.write_tiny_imagenet(folder, train_per_class=3, val_per_class=1)
    victim = folder / "train" / "n01000001" / "images" / "n01000001_2.JPEG"
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    zip_path = build.zip_folder(folder, tmp_path / "t.zip")
    cache_dir = tmp_path / "cache"
    with pytest.raises(data.ImageDecodeError) as info:
        data.load_tiny_imagenet(zip_path, "train", cache_dir=cache_dir, workers=2)
    assert info.value.name == "tiny-imagenet-200/train/n01000001/images/n01000001_2.JPEG"
    assert info.value.name in str(info.value) and str(zip_path) in str(info.value)
    assert "truncated" in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__  # no Pillow traceback attached
    # Nothing half-built is left that a later call could take for a valid cache entry.
    leftovers = [p.name for p in cache_dir.rglob("*") if p.is_file()]
    assert leftovers == []
    with pytest.raises(data.ImageDecodeError, match="n01000001_2.JPEG"):  # the folder too, by relative path
        data.load_tiny_imagenet(folder, "train", cache=False, workers=1)


def test_cache_is_reused_without_opening_the_zip(tiny_zip, tmp_path, monkeypatch):
    zip_path, expected = tiny_zip
    cache_dir = tmp_path / "cache"
    first = data.TinyImageNet(zip_path, "train", cache_dir=cache_dir)
    assert not first.loaded_from_cache and first.cache_path.parent.parent == cache_dir
    assert sorted(p.name for p in first.cache_path.iterdir()) == ["train.json", "train_images.npy", "train_labels.npy"]

    def no_zip(path):
        raise AssertionError("a valid cache entry must not need the zip opened")

    monkeypatch.setattr(tinyimagenet, "_open_source", no_zip)
    second = data.TinyImageNet(zip_path, "train", cache_dir=cache_dir)
    assert second.loaded_from_cache and isinstance(second.images, np.memmap)
    assert not second.images.flags.writeable
    np.testing.assert_array_equal(second.images, expected["train"][0])
    assert second.classes == first.classes and second.wnids == first.wnids


def test_changed_zip_makes_the_cache_stale(tmp_path, build):
    folder = tmp_path / "tiny-imagenet-200"
    build.write_tiny_imagenet(folder, train_per_class=2, val_per_class=1)
    zip_path = build.zip_folder(folder, tmp_path / "t.zip")
    cache_dir = tmp_path / "cache"
    old = np.array(data.load_tiny_imagenet(zip_path, "train", cache_dir=cache_dir)[0])
    # Replace one image and re-zip: size and/or mtime change, so the entry must be rebuilt.
    build.save(np.zeros((64, 64, 3), np.uint8), folder / "train" / "n09999999" / "images" / "n09999999_0.JPEG")
    build.zip_folder(folder, zip_path)
    os.utime(zip_path, ns=(zip_path.stat().st_atime_ns, zip_path.stat().st_mtime_ns + 10**9))
    ds = data.TinyImageNet(zip_path, "train", cache_dir=cache_dir)
    assert not ds.loaded_from_cache
    assert ds.images[0].max() < 10 < old[0].max()
    assert data.TinyImageNet(zip_path, "train", cache_dir=cache_dir).loaded_from_cache


def test_changed_folder_makes_the_cache_stale(tiny_folder, tmp_path, build):
    folder, _ = tiny_folder
    cache_dir = tmp_path / "cache"
    assert not data.TinyImageNet(folder, "val", cache_dir=cache_dir).loaded_from_cache
    assert data.TinyImageNet(folder, "val", cache_dir=cache_dir).loaded_from_cache
    path = folder / "val" / "images" / "val_3.JPEG"
    build.save(np.full((64, 64, 3), 7, np.uint8), path)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    ds = data.TinyImageNet(folder, "val", cache_dir=cache_dir)
    assert not ds.loaded_from_cache and ds.images[3].max() < 20


def test_damaged_cache_file_is_rebuilt_with_a_warning(tiny_zip, tmp_path):
    zip_path, expected = tiny_zip
    cache_dir = tmp_path / "cache"
    ds = data.TinyImageNet(zip_path, "val", cache_dir=cache_dir)
    images_file = ds.cache_path / "val_images.npy"
    del ds
    images_file.write_bytes(images_file.read_bytes()[:500])  # truncated by a crash or a full disk
    with pytest.warns(UserWarning, match="damaged"):
        again = data.TinyImageNet(zip_path, "val", cache_dir=cache_dir)
    assert not again.loaded_from_cache
    np.testing.assert_array_equal(again.images, expected["val"][0])


def test_subset_options(tiny_zip, tmp_path, build):
    zip_path, expected = tiny_zip
    images, labels = data.load_tiny_imagenet(zip_path, "train", classes=2, limit=3, cache=False)
    np.testing.assert_array_equal(labels, [0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(images, expected["train"][0][[0, 1, 2, 12, 13, 14]])
    ds = data.TinyImageNet(zip_path, "val", classes=["n05555555", "n09999999"], cache=False)
    assert ds.wnids == ["n05555555", "n09999999"] and ds.classes == [build.NAMES[2], build.NAMES[0]]
    full_images, full_labels = expected["val"]
    keep = np.isin(full_labels, [2, 0])
    np.testing.assert_array_equal(ds.images, full_images[keep])
    np.testing.assert_array_equal(ds.labels, np.where(full_labels[keep] == 2, 0, 1))
    # Once the full split is cached, a subset is sliced from it and must be identical.
    data.TinyImageNet(zip_path, "val", cache_dir=tmp_path / "cache")
    sliced = data.TinyImageNet(zip_path, "val", classes=["n05555555", "n09999999"], cache_dir=tmp_path / "cache")
    assert sliced.loaded_from_cache
    np.testing.assert_array_equal(sliced.images, ds.images)
    np.testing.assert_array_equal(sliced.labels, ds.labels)
    with pytest.raises(ValueError, match="not in wnids.txt"):
        data.index_tiny_imagenet(zip_path, "train", classes=["n00000000"])
    with pytest.raises(ValueError, match="between 1 and 3"):
        data.index_tiny_imagenet(zip_path, "train", classes=4)
    with pytest.raises(ValueError, match="split must be one of"):
        data.load_tiny_imagenet(zip_path, "test")
    with pytest.raises(ValueError, match="limit must be a positive number"):
        data.load_tiny_imagenet(zip_path, "train", limit=0)


def test_cache_false_writes_nothing(tiny_zip, tmp_path):
    zip_path, _ = tiny_zip
    data.load_tiny_imagenet(zip_path, "train", cache=False)
    assert not (tmp_path / "default-cache").exists()


def test_default_cache_dir_comes_from_the_environment(tiny_zip, tmp_path, monkeypatch):
    zip_path, _ = tiny_zip
    ds = data.TinyImageNet(zip_path, "val")
    assert ds.cache_path.is_relative_to(tmp_path / "default-cache")  # TINYMOE_CACHE set by the autouse fixture
    monkeypatch.delenv("TINYMOE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data.default_cache_dir() == tmp_path / "xdg" / "tinymoe"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data.default_cache_dir() == tmp_path / "home" / ".cache" / "tinymoe"


def test_one_and_two_decode_workers_agree(tiny_zip):
    zip_path, _ = tiny_zip
    one, _ = data.load_tiny_imagenet(zip_path, "train", cache=False, workers=1)
    two, _ = data.load_tiny_imagenet(zip_path, "train", cache=False, workers=2)
    np.testing.assert_array_equal(one, two)


def test_deflated_zip_and_other_prefix_load_too(tiny_folder, tmp_path):
    folder, expected = tiny_folder
    zip_path = tmp_path / "other.zip"
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, "some/where/" + path.relative_to(folder).as_posix())
    images, labels = data.load_tiny_imagenet(zip_path, "val", cache=False)
    np.testing.assert_array_equal(images, expected["val"][0])


def test_verify_reports_counts_and_catches_a_damaged_member(tiny_zip, tmp_path):
    zip_path, _ = tiny_zip
    report = data.verify_tiny_imagenet(zip_path, md5=True)
    assert report["classes"] == 3 and report["train_images"] == 36 and report["val_images"] == 9
    assert report["train_per_class"] == [12, 12] and report["crc"] == "ok"
    assert report["md5"] == data.file_md5(zip_path) and report["md5_matches_public_file"] is False
    damaged = tmp_path / "damaged.zip"
    raw = bytearray(zip_path.read_bytes())
    with zipfile.ZipFile(zip_path) as zf:
        info = zf.getinfo("tiny-imagenet-200/train/n01000001/images/n01000001_3.JPEG")
    raw[info.header_offset + 30 + len(info.filename) + 100] ^= 0xFF  # flip a byte inside the stored JPEG
    damaged.write_bytes(bytes(raw))
    with pytest.raises(data.DatasetFormatError, match="n01000001_3.JPEG fails its CRC"):
        data.verify_tiny_imagenet(damaged)


def test_command_line_prepare_and_verify(tiny_zip, tmp_path, capsys):
    from tinymoe.data.__main__ import main

    zip_path, _ = tiny_zip
    assert main(["prepare", str(zip_path), "--cache-dir", str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out
    assert "train: 36 images, 3 classes, decoded" in out and "val: 9 images" in out
    assert main(["prepare", str(zip_path), "--cache-dir", str(tmp_path / "c")]) == 0
    assert "from cache" in capsys.readouterr().out
    assert main(["verify", str(zip_path)]) == 0
    assert json.loads(capsys.readouterr().out)["train_images"] == 36
    assert main(["prepare", str(tmp_path / "absent")]) == 1
    assert "cs231n.stanford.edu" in capsys.readouterr().err


# --- the real dataset ------------------------------------------------------------------------------

needs_shared_zip = pytest.mark.skipif(
    not SHARED_ZIP.is_file(), reason=f"the shared Tiny ImageNet zip is not on this machine ({SHARED_ZIP})"
)


@needs_shared_zip
def test_shared_zip_counts_without_decoding():
    train = data.index_tiny_imagenet(SHARED_ZIP, "train")
    assert len(train.wnids) == 200 and len(set(train.wnids)) == 200
    assert len(train) == 100_000
    np.testing.assert_array_equal(np.bincount(train.labels, minlength=200), np.full(200, 500))
    assert np.all(np.diff(train.labels) >= 0)  # grouped by class in wnids.txt order
    val = data.index_tiny_imagenet(SHARED_ZIP, "val")
    assert len(val) == 5_000  # the shared copy keeps the first half of the 10,000 official val images
    counts = np.bincount(val.labels, minlength=200)
    assert counts.min() >= 1 and counts.sum() == 5_000
    assert val.names[0].endswith("val/images/val_0.JPEG") and val.names[-1].endswith("val_4999.JPEG")
    assert all(name != "" for name in train.class_names)


@needs_shared_zip
def test_shared_zip_decodes_a_subset():
    ds = data.TinyImageNet(SHARED_ZIP, "train", classes=2, limit=8, cache=False)
    assert ds.images.shape == (16, 64, 64, 3) and ds.images.dtype == np.uint8
    np.testing.assert_array_equal(ds.labels, np.repeat([0, 1], 8))
    assert ds.images.std() > 10  # real pictures, not blank
    val = data.TinyImageNet(SHARED_ZIP, "val", limit=1, cache=False)
    assert val.images.shape == (200, 64, 64, 3)
