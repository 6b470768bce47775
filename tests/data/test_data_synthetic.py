"""The synthetic hierarchy: shapes, determinism, and that its planted groups are really there."""

from __future__ import annotations

import time

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import tinymoe.data as data


@given(
    n_groups=st.integers(1, 6),
    classes_per_group=st.integers(1, 4),
    images_per_class=st.integers(1, 5),
    size=st.integers(8, 20),
    seed=st.integers(0, 2**32 - 1),
)
def test_shapes_labels_and_group_map(n_groups, classes_per_group, images_per_class, size, seed):
    d = data.make_synthetic(n_groups, classes_per_group, images_per_class, size, seed=seed)
    n_classes = n_groups * classes_per_group
    assert d.images.shape == (n_classes * images_per_class, size, size, 3) and d.images.dtype == np.uint8
    assert d.labels.dtype == np.int64
    np.testing.assert_array_equal(np.bincount(d.labels, minlength=n_classes), np.full(n_classes, images_per_class))
    assert d.class_to_group.shape == (n_classes,) and d.class_to_group.dtype == np.int64
    # every group has exactly classes_per_group classes
    np.testing.assert_array_equal(np.bincount(d.class_to_group, minlength=n_groups), np.full(n_groups, classes_per_group))
    np.testing.assert_array_equal(d.image_groups, d.class_to_group[d.labels])
    assert len(d.classes) == n_classes == d.num_classes and len(d.groups) == n_groups


def test_same_seed_same_data_and_splits_share_the_hierarchy():
    a = data.make_synthetic(4, 3, 10, 16, seed=7)
    b = data.make_synthetic(4, 3, 10, 16, seed=7)
    np.testing.assert_array_equal(a.images, b.images)
    val = data.make_synthetic(4, 3, 10, 16, seed=7, split="val")
    np.testing.assert_array_equal(val.class_to_group, a.class_to_group)
    assert val.classes == a.classes
    assert not np.array_equal(val.images, a.images)
    other = data.make_synthetic(4, 3, 10, 16, seed=8)
    assert not np.array_equal(other.images, a.images)


def test_group_map_is_shuffled_not_contiguous():
    # Grouping neighbouring class indices must not be enough to recover the groups.
    contiguous = np.repeat(np.arange(5), 4)
    maps = [data.make_synthetic(5, 4, 1, 8, seed=s).class_to_group for s in range(5)]
    assert all(not np.array_equal(m, contiguous) for m in maps)


def _colour(d):
    return d.images.reshape(len(d), -1, 3).mean(axis=1)  # (N, 3)


def _spectrum(d):
    gray = d.images.astype(np.float32).mean(axis=-1)
    gray -= gray.mean(axis=(1, 2), keepdims=True)
    power = np.abs(np.fft.rfft2(gray)).reshape(len(d), -1)  # orientation and frequency, phase-free
    return power / np.linalg.norm(power, axis=1, keepdims=True)


@pytest.mark.parametrize("n_groups,classes_per_group", [(4, 3), (8, 2), (3, 5)])
def test_groups_separate_and_confusions_stay_inside_groups(n_groups, classes_per_group):
    train = data.make_synthetic(n_groups, classes_per_group, 60, 32, seed=3)
    val = data.make_synthetic(n_groups, classes_per_group, 40, 32, seed=3, split="val")
    # Groups: nearest centroid on the mean colour alone is (almost) perfect.
    centroids = np.stack([_colour(train)[train.image_groups == g].mean(0) for g in range(n_groups)])
    guess = np.argmin(((_colour(val)[:, None] - centroids[None]) ** 2).sum(-1), axis=1)
    assert (guess == val.image_groups).mean() > 0.98
    # Classes: a nearest-centroid classifier on colour + stripe spectrum is good but not perfect, and its
    # confusions fall inside groups: the block structure the superclass step must find.
    features = lambda d: np.concatenate([_colour(d) / 255 * 3, _spectrum(d)], axis=1)  # noqa: E731
    f_train, f_val = features(train), features(val)
    centroids = np.stack([f_train[train.labels == c].mean(0) for c in range(train.num_classes)])
    predicted = np.argmin(((f_val[:, None] - centroids[None]) ** 2).sum(-1), axis=1)
    confusion = np.zeros((train.num_classes,) * 2)
    np.add.at(confusion, (val.labels, predicted), 1)
    same_group = train.class_to_group[:, None] == train.class_to_group[None, :]
    off_diagonal = ~np.eye(train.num_classes, dtype=bool)
    within, across = confusion[same_group & off_diagonal].sum(), confusion[~same_group].sum()
    accuracy = np.trace(confusion) / len(val)
    assert 0.6 < accuracy < 0.97
    assert within > 0.03 * len(val) and across <= 0.1 * within


def test_overlap_zero_makes_classes_crisp():
    train = data.make_synthetic(3, 3, 40, 32, seed=1, overlap=0.0, noise=0.02)
    val = data.make_synthetic(3, 3, 30, 32, seed=1, overlap=0.0, noise=0.02, split="val")
    f_train, f_val = _spectrum(train), _spectrum(val)
    centroids = np.stack([f_train[train.labels == c].mean(0) for c in range(train.num_classes)])
    # within each group, the spectrum alone must identify the class
    same = train.class_to_group[val.labels][:, None] == train.class_to_group[None, :]
    score = np.where(same, f_val @ centroids.T, -np.inf)
    assert (np.argmax(score, 1) == val.labels).mean() > 0.97


def test_generation_is_vectorised_and_fast():
    start = time.perf_counter()
    d = data.make_synthetic(10, 4, 250, 32, seed=0)  # 10,000 images
    elapsed = time.perf_counter() - start
    assert len(d) == 10_000
    assert elapsed < 10.0, f"10,000 synthetic 32x32 images took {elapsed:.1f} s (expected well under 1 s on a quiet machine)"


def test_bad_arguments_are_explained():
    with pytest.raises(ValueError, match="must be >= 1"):
        data.make_synthetic(0, 3)
    with pytest.raises(ValueError, match="size must be >= 8"):
        data.make_synthetic(2, 2, size=4)
    with pytest.raises(ValueError, match="split must be one of"):
        data.make_synthetic(2, 2, split="validation")
    with pytest.raises(ValueError, match="overlap must be in"):
        data.make_synthetic(2, 2, overlap=2.0)
