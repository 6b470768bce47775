"""Batches: normalization, crop+flip against a per-image reference, seeded epochs, prefetch, held-out split."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import tinymoe.data as data


def _indexed_images(n, h=6, w=5):
    """Images whose every pixel stores the image's index (mod 256) in channel 0: batches can be traced back."""
    images = np.zeros((n, h, w, 3), np.uint8)
    images[..., 0] = (np.arange(n) % 256)[:, None, None]
    images[..., 1] = np.arange(w)[None, None, :]  # column index, to see flips
    images[..., 2] = 7
    return images


def test_normalize_matches_the_formula():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, 3, 2, 3), dtype=np.uint8)
    mean, std = (0.1, 0.5, 0.9), (0.2, 0.3, 0.4)
    out = data.normalize(images, mean, std)
    assert out.dtype == np.float32 and out.shape == images.shape
    want = (images / 255.0 - np.array(mean)) / np.array(std)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="std > 0"):
        data.normalize(images, mean, (0.2, 0.0, 0.1))


def test_channel_stats_match_numpy_over_chunks():
    images = np.random.default_rng(1).integers(0, 256, (37, 4, 5, 3), dtype=np.uint8)
    mean, std = data.channel_stats(images, chunk=8)
    pixels = images.reshape(-1, 3) / 255.0
    np.testing.assert_allclose(mean, pixels.mean(0), rtol=1e-12)
    np.testing.assert_allclose(std, pixels.std(0), rtol=1e-9)


def _crop_flip_loop(images, oy, ox, flipped, padding):
    """Reference: one image at a time with plain slicing."""
    out = np.empty_like(images)
    h, w = images.shape[1:3]
    for b in range(images.shape[0]):
        padded = np.pad(images[b], ((padding, padding), (padding, padding), (0, 0)))
        window = padded[oy[b] : oy[b] + h, ox[b] : ox[b] + w]
        out[b] = window[:, ::-1] if flipped[b] else window
    return out


@given(
    images=hnp.arrays(np.uint8, st.tuples(st.integers(1, 5), st.integers(1, 7), st.integers(1, 7), st.just(3))),
    padding=st.integers(0, 4),
    seed=st.integers(0, 2**32 - 1),
)
def test_crop_flip_matches_a_per_image_loop(images, padding, seed):
    rng = np.random.default_rng(seed)
    b = images.shape[0]
    oy = rng.integers(0, 2 * padding + 1, size=b)
    ox = rng.integers(0, 2 * padding + 1, size=b)
    flipped = rng.random(b) < 0.5
    original = images.copy()
    out = data.crop_flip(images, oy, ox, flipped, padding)
    np.testing.assert_array_equal(out, _crop_flip_loop(images, oy, ox, flipped, padding))
    np.testing.assert_array_equal(images, original)  # input not mutated


def test_random_crop_flip_statistics_and_identity():
    images = _indexed_images(2000, 6, 5)
    out = data.random_crop_flip(images, np.random.default_rng(0), padding=0, flip=False)
    np.testing.assert_array_equal(out, images)
    out = data.random_crop_flip(images, np.random.default_rng(0), padding=0, flip=True)
    flipped = out[:, 0, 0, 1] == 4  # column index 4 now at the left edge
    assert 0.45 < flipped.mean() < 0.55
    np.testing.assert_array_equal(out[flipped], images[flipped][:, :, ::-1])
    shifted = data.random_crop_flip(images, np.random.default_rng(1), padding=2, flip=False)
    # a shift by dy rows leaves |dy| zero rows at the top or bottom; all 5 offsets must occur
    zero_top = (shifted[:, :, :, 2] == 0).all(axis=2)[:, :3].sum(axis=1)
    zero_bottom = (shifted[:, :, :, 2] == 0).all(axis=2)[:, 3:].sum(axis=1)
    assert set(zero_top.tolist()) == {0, 1, 2} and set(zero_bottom.tolist()) == {0, 1, 2}
    with pytest.raises(ValueError, match="padding must be >= 0"):
        data.random_crop_flip(images, np.random.default_rng(0), padding=-1)


def _collect(loader, epoch):
    xs, ys = zip(*loader.epoch(epoch))
    return list(xs), list(ys)


@pytest.mark.parametrize("prefetch", [0, 2])
def test_every_example_once_per_epoch_in_a_seeded_order(prefetch):
    images = _indexed_images(23)
    labels = np.arange(23) % 4
    loader = data.BatchLoader(images, labels, 5, seed=3, prefetch=prefetch, mean=(0, 0, 0), std=(1, 1, 1))
    assert len(loader) == 5
    xs, ys = _collect(loader, 0)
    assert [x.shape for x in xs] == [(5, 6, 5, 3)] * 4 + [(3, 6, 5, 3)]
    assert all(x.dtype == np.float32 for x in xs) and all(y.dtype == np.int64 for y in ys)
    served = np.concatenate([np.rint(x[:, 0, 0, 0] * 255).astype(int) for x in xs])
    assert sorted(served.tolist()) == list(range(23))  # each example exactly once
    np.testing.assert_array_equal(served, loader.order(0))
    np.testing.assert_array_equal(np.concatenate(ys), labels[served])  # labels stay with their images
    assert not np.array_equal(loader.order(0), np.arange(23))


def test_same_seed_and_epoch_give_identical_batches_with_or_without_prefetch():
    images = np.random.default_rng(0).integers(0, 256, (40, 8, 8, 3), dtype=np.uint8)
    labels = np.arange(40)
    plain = data.BatchLoader(images, labels, 8, seed=5, augment=True, padding=2)
    ahead = data.BatchLoader(images, labels, 8, seed=5, augment=True, padding=2, prefetch=3)
    for epoch in (0, 4):
        xs_a, ys_a = _collect(plain, epoch)
        xs_b, ys_b = _collect(ahead, epoch)
        for a, b in zip(xs_a + ys_a, xs_b + ys_b):
            np.testing.assert_array_equal(a, b)
    # ... and a later epoch does not depend on the earlier ones having been drawn
    fresh = data.BatchLoader(images, labels, 8, seed=5, augment=True, padding=2)
    np.testing.assert_array_equal(_collect(fresh, 4)[0][0], _collect(plain, 4)[0][0])
    assert not np.array_equal(plain.order(0), plain.order(1))
    other_seed = data.BatchLoader(images, labels, 8, seed=6)
    assert not np.array_equal(other_seed.order(0), plain.order(0))


def test_drop_last_no_shuffle_indices_and_memmap(tmp_path):
    images = _indexed_images(10)
    path = tmp_path / "images.npy"
    np.save(path, images)
    mapped = np.load(path, mmap_mode="r")
    loader = data.BatchLoader(mapped, np.arange(10), 4, shuffle=False, drop_last=True, indices=np.array([9, 1, 2, 3, 4, 5, 6]))
    assert len(loader) == 1
    (x, y), = list(loader)
    np.testing.assert_array_equal(y, [9, 1, 2, 3])
    np.testing.assert_allclose(x[:, 0, 0, 0], (np.array([9, 1, 2, 3]) / 255 - 0.485) / 0.229, rtol=1e-5)
    with pytest.raises(ValueError, match="indices must lie in"):
        data.BatchLoader(images, np.arange(10), 4, indices=np.array([10]))
    with pytest.raises(ValueError, match="labels shape"):
        data.BatchLoader(images, np.arange(9), 4)
    with pytest.raises(ValueError, match="uint8"):
        data.BatchLoader(images.astype(np.float32), np.arange(10), 4)


def test_augmentation_keeps_labels_and_changes_pixels():
    images = _indexed_images(64, 8, 8)
    loader = data.BatchLoader(images, np.arange(64), 16, seed=0, augment=True, padding=2, mean=(0, 0, 0), std=(1, 1, 1))
    changed = 0
    for x, y in loader.epoch(0):
        # the image index survives in channel 0 at the centre pixel, whatever the shift or flip
        np.testing.assert_array_equal(np.rint(x[:, 4, 4, 0] * 255).astype(int), y)
        changed += int(np.sum(np.any(np.rint(x * 255).astype(np.uint8) != images[y], axis=(1, 2, 3))))
    assert changed > 32


def test_prefetch_thread_stops_when_the_consumer_stops_early():
    images = _indexed_images(100)
    loader = data.BatchLoader(images, np.arange(100), 2, prefetch=2)
    before = threading.active_count()
    for i, _ in enumerate(loader.epoch(0)):
        if i == 3:
            break
    assert threading.active_count() == before


def test_prefetch_reraises_producer_errors():
    class Exploding(np.ndarray):
        def __getitem__(self, index):
            raise OSError("disk gone")

    images = _indexed_images(10).view(Exploding)
    loader = data.BatchLoader(images, np.arange(10), 2, prefetch=2)
    with pytest.raises(OSError, match="disk gone"):
        list(loader.epoch(0))


def test_holdout_split_is_stratified_disjoint_and_seeded():
    labels = np.repeat(np.arange(5), [10, 20, 3, 1, 40])
    train, held = data.holdout_split(labels, fraction=0.2, seed=0)
    assert np.intersect1d(train, held).size == 0
    np.testing.assert_array_equal(np.union1d(train, held), np.arange(labels.size))
    np.testing.assert_array_equal(np.bincount(labels[held], minlength=5), [2, 4, 1, 0, 8])
    again_train, again_held = data.holdout_split(labels, fraction=0.2, seed=0)
    np.testing.assert_array_equal(again_held, held)
    _, other = data.holdout_split(labels, fraction=0.2, seed=1)
    assert not np.array_equal(other, held)
    _, flat = data.holdout_split(labels, fraction=0.2, seed=0, stratify=False)
    assert flat.size == round(0.2 * labels.size)
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        data.holdout_split(labels, fraction=1.0)


def test_reflect_padding_mirrors_the_border_instead_of_adding_black():
    from tinymoe.data.batches import crop_flip

    images = np.random.default_rng(0).integers(1, 256, size=(3, 6, 6, 3), dtype=np.uint8)  # no zero pixel
    corner = np.zeros(3, dtype=np.int64)  # the window at the top-left corner of the padded image
    out = crop_flip(images, corner, corner, np.zeros(3, bool), padding=2, pad_mode="reflect")
    # np.pad's "reflect" (as torchvision's) mirrors without repeating the edge: padded row 0 = image row 2.
    np.testing.assert_array_equal(out[:, 0, 0], images[:, 2, 2])
    np.testing.assert_array_equal(out[:, 2:, 2:], images[:, :4, :4])
    assert out.min() > 0
    zero = crop_flip(images, corner, corner, np.zeros(3, bool), padding=2, pad_mode="zero")
    assert (zero[:, :2] == 0).all()


def test_unknown_pad_mode_is_refused():
    from tinymoe.data.batches import crop_flip

    images = np.zeros((1, 4, 4, 3), np.uint8)
    with pytest.raises(ValueError, match="pad_mode"):
        crop_flip(images, np.zeros(1, np.int64), np.zeros(1, np.int64), np.zeros(1, bool), 1, pad_mode="wrap")
