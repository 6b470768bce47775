"""Downsampled ImageNet: npz and pickled batches, channel order, 1-based labels, the restricted unpickler."""

from __future__ import annotations

import os
import pickle
import struct
import subprocess

import numpy as np
import pytest

import tinymoe.data as data
from tinymoe.data.downsampled import RestrictedUnpickler, find_batches, load_pickle_batch

SIDE = 8


def _images(rng, n, side=SIDE):
    return rng.integers(0, 256, size=(n, side, side, 3), dtype=np.uint8)


def _planar(images):
    """Channel-last images -> the published layout: each row is the R plane, then G, then B."""
    n = images.shape[0]
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2)).reshape(n, -1)


def _write(path, images, labels, fmt, protocol=2):
    batch = {"data": _planar(images), "labels": list(int(x) for x in labels), "mean": np.zeros(3 * SIDE * SIDE)}
    if fmt == "npz":
        np.savez(str(path) + ".npz", data=batch["data"], labels=np.asarray(labels), mean=batch["mean"])
    else:
        with open(path, "wb") as f:
            pickle.dump(batch, f, protocol=protocol)


def write_downsampled(root, fmt="npz", per_batch=5, val=7, seed=0, train_folder=".", val_folder=".", protocol=2):
    """Write train_data_batch_1..10 and val_data; return the channel-last images and 0-based labels."""
    rng = np.random.default_rng(seed)
    out = {}
    for split, folder, count in (("train", train_folder, 10), ("val", val_folder, 1)):
        (root / folder).mkdir(parents=True, exist_ok=True)
        all_images, all_labels = [], []
        for b in range(1, count + 1):
            n = per_batch if split == "train" else val
            images = _images(rng, n)
            labels = rng.integers(1, 1001, size=n)  # 1-based, as published
            labels[:2] = (1000, 1)  # make sure both ends of the range occur in every batch
            name = f"train_data_batch_{b}" if split == "train" else "val_data"
            _write(root / folder / name, images, labels, fmt, protocol)
            all_images.append(images)
            all_labels.append(labels - 1)
        out[split] = (np.concatenate(all_images), np.concatenate(all_labels).astype(np.int64))
    return out


@pytest.mark.parametrize("fmt,protocol", [("npz", None), ("pickle", 2), ("pickle", 5)])
def test_batches_load_channel_last_with_zero_based_labels(tmp_path, fmt, protocol):
    expected = write_downsampled(tmp_path / "ds", fmt, protocol=protocol or 2)
    for split in ("train", "val"):
        images, labels = data.load_downsampled_imagenet(tmp_path / "ds", split, cache_dir=tmp_path / "cache")
        want_images, want_labels = expected[split]
        assert images.dtype == np.uint8 and images.shape == want_images.shape
        np.testing.assert_array_equal(images, want_images)
        np.testing.assert_array_equal(labels, want_labels)
        assert labels.dtype == np.int64 and labels.min() == 0 and labels.max() == 999


def test_channel_planes_are_not_mixed_up(tmp_path):
    # One pure red image: its R plane is 255, G and B are 0. A wrong reshape would smear red across channels.
    images = np.zeros((1, SIDE, SIDE, 3), np.uint8)
    images[..., 0] = 255
    root = tmp_path / "ds"
    root.mkdir()
    _write(root / "val_data", images, [3], "npz")
    ds = data.DownsampledImageNet(root, "val", cache=False)
    assert ds.size == SIDE and ds[0][1] == 2
    assert np.all(ds.images[0, ..., 0] == 255) and np.all(ds.images[0, ..., 1:] == 0)


def test_batches_in_sub_folders_and_npz_preferred(tmp_path):
    expected = write_downsampled(tmp_path / "ds", "npz", train_folder="Imagenet8_train", val_folder="Imagenet8_val")
    # A malicious pickle with the same name as an npz batch is never opened: npz wins.
    with open(tmp_path / "ds" / "Imagenet8_val" / "val_data", "wb") as f:
        f.write(pickle.dumps(_Evil(str(tmp_path / "pwned"))))
    images, labels = data.load_downsampled_imagenet(tmp_path / "ds", "val", cache=False)
    np.testing.assert_array_equal(images, expected["val"][0])
    assert not (tmp_path / "pwned").exists()
    files = find_batches(tmp_path / "ds", "train")
    assert [f.name for f in files] == [f"train_data_batch_{b}.npz" for b in range(1, 11)]


@pytest.mark.parametrize("n_val", [49_999, 50_000])
def test_both_val_set_versions_load(tmp_path, n_val):
    rng = np.random.default_rng(1)
    root = tmp_path / "ds"
    root.mkdir()
    labels = np.tile(np.arange(1, 1001), 50)[:n_val]
    np.savez(root / "val_data.npz", data=rng.integers(0, 256, (n_val, 3 * 4 * 4), dtype=np.uint8), labels=labels)
    ds = data.DownsampledImageNet(root, "val", size=4, cache_dir=tmp_path / "cache")
    assert len(ds) == n_val and ds.images.shape == (n_val, 4, 4, 3) and ds.num_classes == 1000
    np.testing.assert_array_equal(ds.labels, labels - 1)


class _Evil:
    """Unpickling this runs a shell command: what a malicious 'dataset' file does."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _EvilPopen:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return subprocess.Popen, (["touch", self.marker],)


@pytest.mark.parametrize("make", [_Evil, _EvilPopen])
def test_malicious_pickle_is_refused_without_running(tmp_path, make):
    marker = tmp_path / "pwned"
    root = tmp_path / "ds"
    root.mkdir()
    batch = {"data": np.zeros((2, 3 * SIDE * SIDE), np.uint8), "labels": [1, 2], "payload": make(str(marker))}
    (root / "val_data").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(data.UnsafePickleError, match="refusing|Refusing") as info:
        data.load_downsampled_imagenet(root, "val", cache=False)
    assert "val_data" in str(info.value)
    assert not marker.exists()


def test_unpickler_refuses_builtins_eval_directly(tmp_path):
    # A hand-written pickle: GLOBAL builtins.eval, then call it with a string. Refused at lookup.
    payload = b"cbuiltins\neval\n(V__import__('os').system('touch " + str(tmp_path / "x").encode() + b"')\ntR."
    (tmp_path / "val_data").write_bytes(payload)
    with pytest.raises(data.UnsafePickleError, match="builtins.eval"):
        load_pickle_batch(tmp_path / "val_data")
    assert not (tmp_path / "x").exists()
    assert issubclass(RestrictedUnpickler, pickle.Unpickler)


def test_object_arrays_and_foreign_types_are_refused(tmp_path):
    root = tmp_path / "ds"
    root.mkdir()
    batch = {"data": np.zeros((1, 3 * SIDE * SIDE), np.uint8), "labels": np.array([1, "x"], dtype=object)}
    (root / "val_data").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(data.UnsafePickleError, match="array of Python objects"):
        data.load_downsampled_imagenet(root, "val", cache=False)
    (root / "val_data").write_bytes(pickle.dumps({"data": {1, 2}, "labels": [1]}, protocol=2))
    with pytest.raises(data.UnsafePickleError, match="set"):
        load_pickle_batch(root / "val_data")


def test_non_dict_and_damaged_pickles_are_format_errors(tmp_path):
    (tmp_path / "val_data").write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(data.DatasetFormatError, match="expected a dict"):
        load_pickle_batch(tmp_path / "val_data")
    (tmp_path / "val_data").write_bytes(pickle.dumps({"data": np.zeros(5, np.uint8)})[:-7])
    with pytest.raises(data.DatasetFormatError, match="cannot read pickled batch .*val_data"):
        load_pickle_batch(tmp_path / "val_data")


def test_zero_based_labels_are_refused(tmp_path):
    root = tmp_path / "ds"
    root.mkdir()
    _write(root / "val_data", _images(np.random.default_rng(0), 3), [0, 5, 999], "npz")
    with pytest.raises(data.DatasetFormatError, match="expected 1..1000"):
        data.load_downsampled_imagenet(root, "val", cache=False)


def test_missing_batches_and_sizes_are_reported(tmp_path):
    write_downsampled(tmp_path / "ds", "npz")
    os.remove(tmp_path / "ds" / "train_data_batch_7.npz")
    with pytest.raises(data.DatasetFormatError, match=r"train batches \[7\] are missing"):
        data.load_downsampled_imagenet(tmp_path / "ds", "train", cache=False)
    with pytest.raises(data.DatasetFormatError, match="but size=32 was asked for"):
        data.load_downsampled_imagenet(tmp_path / "ds", "val", size=32, cache=False)
    with pytest.raises(data.DatasetNotFoundError, match="image-net.org"):
        data.load_downsampled_imagenet(tmp_path / "empty-dir-that-does-not-exist", "val")
    (tmp_path / "other").mkdir()
    with pytest.raises(data.DatasetNotFoundError, match="no val_data"):
        data.load_downsampled_imagenet(tmp_path / "other", "val")


def test_bad_data_width_is_reported(tmp_path):
    np.savez(tmp_path / "val_data.npz", data=np.zeros((2, 100), np.uint8), labels=np.array([1, 2]))
    with pytest.raises(data.DatasetFormatError, match="not 3\\*S\\*S"):
        data.load_downsampled_imagenet(tmp_path, "val", cache=False)


def test_cache_reuse_and_subsets(tmp_path):
    expected = write_downsampled(tmp_path / "ds", "pickle")
    cache_dir = tmp_path / "cache"
    first = data.DownsampledImageNet(tmp_path / "ds", "train", cache_dir=cache_dir)
    assert not first.loaded_from_cache
    second = data.DownsampledImageNet(tmp_path / "ds", "train", cache_dir=cache_dir)
    assert second.loaded_from_cache and isinstance(second.images, np.memmap)
    np.testing.assert_array_equal(second.images, expected["train"][0])
    images, labels = expected["train"]
    chosen = [int(labels[3]), int(labels[0])]
    sub = data.DownsampledImageNet(tmp_path / "ds", "train", cache_dir=cache_dir, classes=chosen, limit=1)
    assert sub.loaded_from_cache and sub.num_classes == 2
    for new_label, old_label in enumerate(chosen):
        first_row = np.flatnonzero(labels == old_label)[0]
        np.testing.assert_array_equal(sub.images[sub.labels == new_label], images[first_row : first_row + 1])
    assert sub.classes == [f"label {c + 1}" for c in chosen]


def test_class_names_from_map_clsloc(tmp_path):
    write_downsampled(tmp_path / "ds", "npz")
    lines = [f"n{i:08d} {i} name_{i}" for i in range(1000, 0, -1)]  # any line order
    (tmp_path / "ds" / "map_clsloc.txt").write_text("\n".join(lines) + "\n")
    ds = data.DownsampledImageNet(tmp_path / "ds", "val", cache=False)
    assert ds.classes[0] == "name 1" and ds.classes[999] == "name 1000"


def _py2_str(raw: bytes) -> bytes:
    """A Python 2 `str` in a pickle (SHORT_BINSTRING or BINSTRING opcode)."""
    return (b"U" + bytes([len(raw)]) if len(raw) < 256 else b"T" + struct.pack("<i", len(raw))) + raw


def _py2_int(i: int) -> bytes:
    return b"K" + bytes([i])  # BININT1


def _py2_uint8_array(a: np.ndarray) -> bytes:
    """The opcodes NumPy under Python 2 wrote for a uint8 array: numpy.core names, raw data as a str."""
    dtype = (b"cnumpy\ndtype\n" + _py2_str(b"u1") + _py2_int(0) + _py2_int(1) + b"\x87R"
             + b"(" + _py2_int(3) + _py2_str(b"|") + b"NNN" + b"J\xff\xff\xff\xffJ\xff\xff\xff\xff" + _py2_int(0) + b"tb")
    shape = b"(" + b"".join(_py2_int(d) for d in a.shape) + b"t"
    return (b"cnumpy.core.multiarray\n_reconstruct\n" + b"cnumpy\nndarray\n" + _py2_int(0) + b"\x85" + _py2_str(b"b")
            + b"\x87R" + b"(" + _py2_int(1) + shape + dtype + b"\x89" + _py2_str(a.tobytes()) + b"tb")


def test_python2_pickles_load(tmp_path):
    images = np.random.default_rng(3).integers(128, 256, (2, 4, 4, 3), dtype=np.uint8)  # bytes > 127: not ASCII
    blob = (b"\x80\x02}(" + _py2_str(b"data") + _py2_uint8_array(_planar(images))
            + _py2_str(b"labels") + b"](" + _py2_int(5) + _py2_int(9) + b"eu.")
    with pytest.raises(UnicodeDecodeError):
        pickle.loads(blob)  # Python 3's default decoding cannot read it: the latin1 path is what makes it work
    root = tmp_path / "ds"
    root.mkdir()
    (root / "val_data").write_bytes(blob)
    loaded, labels = data.load_downsampled_imagenet(root, "val", cache=False)
    np.testing.assert_array_equal(loaded, images)
    np.testing.assert_array_equal(labels, [4, 8])
