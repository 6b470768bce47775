"""Regularising augmentations (tinymoe.data.augment): every RandAugment op against a plain formula or
PIL, identity at magnitude 0 / probability 0, determinism, random erasing, mixup and cutmix by hand,
and their wiring into BatchLoader."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageEnhance, ImageOps

from tinymoe.data import BatchLoader
from tinymoe.data import augment as A


def _images(seed: int, batch: int = 6, h: int = 7, w: int = 5) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (batch, h, w, 3), dtype=np.uint8)


# --------------------------------------------------------------------------------------------------
# RandAugment ops
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("op", A.RANDAUGMENT_OPS)
def test_every_op_keeps_shape_dtype_input_and_is_the_identity_at_magnitude_zero(op):
    images = _images(0)
    before = images.copy()
    sign = np.where(np.arange(6) % 2 == 0, 1.0, -1.0)
    for magnitude in (0.0, 5.0, 10.0):
        out = A.apply_op(op, images, A.op_parameter(op, magnitude, sign), fill=(10, 20, 30))
        assert out.shape == images.shape and out.dtype == np.uint8
        np.testing.assert_array_equal(images, before)  # the input is never written to
        if magnitude == 0.0:
            np.testing.assert_array_equal(out, images, err_msg=op)
        else:
            assert not np.array_equal(out, images), f"{op} at magnitude {magnitude} changed nothing"


def _affine_loop(image: np.ndarray, m: np.ndarray, fill) -> np.ndarray:
    """Reference: bilinear inverse mapping pixel by pixel, in float64 (see `affine`'s docstring)."""
    h, w, _ = image.shape
    cy, cx = (h - 1) / 2, (w - 1) / 2
    out = np.zeros(image.shape)
    for i in range(h):
        for j in range(w):
            sx = m[0, 0] * (j - cx) + m[0, 1] * (i - cy) + cx + m[0, 2]
            sy = m[1, 0] * (j - cx) + m[1, 1] * (i - cy) + cy + m[1, 2]
            x0, y0 = math.floor(sx), math.floor(sy)
            fx, fy = sx - x0, sy - y0
            for yy, xx, weight in ((y0, x0, (1 - fy) * (1 - fx)), (y0, x0 + 1, (1 - fy) * fx),
                                   (y0 + 1, x0, fy * (1 - fx)), (y0 + 1, x0 + 1, fy * fx)):
                inside = 0 <= yy < h and 0 <= xx < w
                out[i, j] += weight * (image[yy, xx] if inside else np.asarray(fill, dtype=float))
    return np.clip(np.rint(out), 0, 255)


@settings(max_examples=15)
@given(seed=st.integers(0, 2**32 - 1), h=st.integers(1, 6), w=st.integers(1, 6))
def test_affine_matches_a_per_pixel_loop(seed, h, w):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (3, h, w, 3), dtype=np.uint8)
    matrices = np.zeros((3, 2, 3))
    matrices[:, :, :2] = np.eye(2) + 0.4 * rng.standard_normal((3, 2, 2))
    matrices[:, :, 2] = 2.0 * rng.standard_normal((3, 2))
    out = A.affine(images, matrices, fill=(7, 8, 9))
    for b in range(3):
        # float32 weights vs float64: a value exactly halfway between integers may round either way.
        diff = np.abs(out[b].astype(float) - _affine_loop(images[b], matrices[b], (7, 8, 9)))
        assert diff.max() <= 1


def test_rotate_by_quarter_turns_and_translate_by_whole_pixels_are_exact():
    images = _images(1, h=6, w=6)
    np.testing.assert_array_equal(A.rotate(images, 90.0), np.rot90(images, 1, axes=(1, 2)))
    np.testing.assert_array_equal(A.rotate(images, -90.0), np.rot90(images, -1, axes=(1, 2)))
    np.testing.assert_array_equal(A.rotate(images, 180.0), images[:, ::-1, ::-1])
    fill = (1, 2, 3)
    right = A.translate_x(images, 2 / 6, fill)  # 2 pixels right
    np.testing.assert_array_equal(right[:, :, 2:], images[:, :, :-2])
    assert np.all(right[:, :, :2] == np.array(fill, np.uint8))
    up = A.translate_y(images, -1 / 6, fill)  # 1 pixel up
    np.testing.assert_array_equal(up[:, :-1], images[:, 1:])
    assert np.all(up[:, -1] == np.array(fill, np.uint8))


def test_shear_moves_each_row_by_shear_times_its_distance_from_the_centre():
    images = _images(2, h=5, w=8)  # centre row 2
    out = A.shear_x(images, 1.0, fill=(0, 0, 0))  # row i reads columns j + (i - 2): whole-pixel shifts
    for i in range(5):
        shift = i - 2
        for j in range(8):
            expected = images[:, i, j + shift] if 0 <= j + shift < 8 else 0
            np.testing.assert_array_equal(out[:, i, j], expected)
    np.testing.assert_array_equal(A.shear_y(images.transpose(0, 2, 1, 3), 1.0), out.transpose(0, 2, 1, 3))


@pytest.mark.parametrize("name", ["brightness", "contrast", "saturation"])
def test_colour_enhancements_match_pil_within_one_level(name):
    """PIL rounds its greyscale and blends in fixed point; ours rounds in float: at most 1 apart."""
    images = _images(3, batch=8, h=9, w=7)
    enhancer = {"brightness": ImageEnhance.Brightness, "contrast": ImageEnhance.Contrast,
                "saturation": ImageEnhance.Color}[name]
    for factor in (0.1, 0.6, 1.0, 1.4, 1.9):
        ours = getattr(A, name)(images, factor)
        pil = np.stack([np.asarray(enhancer(Image.fromarray(im)).enhance(factor)) for im in images])
        assert np.abs(ours.astype(int) - pil.astype(int)).max() <= 1, factor
    np.testing.assert_array_equal(getattr(A, name)(images, 1.0), images)


def test_solarize_and_posterize_match_pil_exactly():
    images = _images(4, batch=5, h=6, w=6)
    for threshold in (0, 77, 128, 255, 256):
        pil = np.stack([np.asarray(ImageOps.solarize(Image.fromarray(im), threshold)) for im in images])
        np.testing.assert_array_equal(A.solarize(images, threshold), pil)
    for bits in (1, 3, 4, 8):
        pil = np.stack([np.asarray(ImageOps.posterize(Image.fromarray(im), bits)) for im in images])
        np.testing.assert_array_equal(A.posterize(images, bits), pil)
    with pytest.raises(ValueError, match="1..8"):
        A.posterize(images, 0)


def test_per_image_parameters_apply_to_their_own_image():
    images = _images(5, batch=3)
    out = A.brightness(images, np.array([1.0, 0.0, 1.0]))
    np.testing.assert_array_equal(out[[0, 2]], images[[0, 2]])
    assert np.all(out[1] == 0)
    with pytest.raises(ValueError, match=r"one value per image \(3,\)"):
        A.brightness(images, np.ones(2))


def test_rand_augment_is_seeded_identity_when_off_and_refuses_bad_settings():
    images = _images(6, batch=32, h=8, w=8)
    a = A.rand_augment(images, np.random.default_rng(0), num_ops=2, magnitude=9)
    b = A.rand_augment(images, np.random.default_rng(0), num_ops=2, magnitude=9)
    c = A.rand_augment(images, np.random.default_rng(1), num_ops=2, magnitude=9)
    assert a.dtype == np.uint8 and a.shape == images.shape
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    changed = np.any(a != images, axis=(1, 2, 3)).mean()
    assert 0.4 < changed < 1.0  # 1 - (1 - 0.5)^2 = 75% of the images get at least one op
    for off in (dict(num_ops=0), dict(magnitude=0.0), dict(prob=0.0)):
        settings_ = dict(num_ops=2, magnitude=9.0, prob=0.5) | off
        np.testing.assert_array_equal(A.rand_augment(images, np.random.default_rng(0), **settings_), images)
    for bad in (dict(magnitude=11), dict(num_ops=-1), dict(prob=1.5), dict(ops=("blur",))):
        with pytest.raises(ValueError, match="rand_augment"):
            A.rand_augment(images, np.random.default_rng(0), **bad)
    with pytest.raises(ValueError, match=r"uint8 \(B, H, W, 3\)"):
        A.rand_augment(images.astype(np.float32), np.random.default_rng(0))


# --------------------------------------------------------------------------------------------------
# Random erasing
# --------------------------------------------------------------------------------------------------
def test_erase_replaces_exactly_the_box():
    x = np.random.default_rng(0).standard_normal((2, 6, 5, 3)).astype(np.float32)
    boxes = np.array([[1, 2, 3, 2], [0, 0, 0, 0]])  # image 1: an empty box
    out = A.erase(x, boxes, noise_rng=np.random.default_rng(1))
    assert out.dtype == np.float32
    inside = np.zeros((6, 5), bool)
    inside[1:4, 2:4] = True
    np.testing.assert_array_equal(out[0][~inside], x[0][~inside])
    assert np.all(out[0][inside] != x[0][inside])
    np.testing.assert_array_equal(out[1], x[1])
    np.testing.assert_array_equal(A.erase(x, boxes)[0][inside], 0)  # no noise generator: the mean colour
    with pytest.raises(ValueError, match="inside"):
        A.erase(x, np.array([[4, 0, 3, 1], [0, 0, 0, 0]]))


@settings(max_examples=10)
@given(seed=st.integers(0, 2**32 - 1), h=st.integers(2, 40), w=st.integers(2, 40))
def test_erase_boxes_fit_the_image_and_cover_the_drawn_area(seed, h, w):
    boxes = A.erase_boxes(np.random.default_rng(seed), 64, h, w, prob=1.0)
    top, left, bh, bw = boxes.T
    assert np.all((top >= 0) & (left >= 0) & (top + bh <= h) & (left + bw <= w))
    erased = bh > 0
    assert np.all((bh[erased] < h) & (bw[erased] < w))
    if h * w >= 400:  # big enough for rounding not to matter: area fraction within [0.02, 1/3] up to rounding
        fraction = bh[erased] * bw[erased] / (h * w)
        assert erased.mean() > 0.9 and fraction.min() > 0.01 and fraction.max() < 0.45


def test_random_erase_is_seeded_and_off_at_probability_zero():
    x = np.random.default_rng(0).standard_normal((16, 12, 12, 3)).astype(np.float32)
    a = A.random_erase(x, np.random.default_rng(3), prob=0.5)
    np.testing.assert_array_equal(a, A.random_erase(x, np.random.default_rng(3), prob=0.5))
    changed = np.any(a != x, axis=(1, 2, 3))
    assert 0 < changed.sum() < 16
    np.testing.assert_array_equal(A.random_erase(x, np.random.default_rng(3), prob=0.0), x)


# --------------------------------------------------------------------------------------------------
# Mixup and cutmix
# --------------------------------------------------------------------------------------------------
def test_mixup_mixes_images_and_labels_with_the_same_lambda():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    labels = np.array([0, 1, 2, 1])
    partner = np.array([1, 0, 3, 2])
    out, targets = A.mixup(x, labels, 0.7, partner, num_classes=4)
    assert out.dtype == np.float32 and targets.dtype == np.float32
    np.testing.assert_allclose(out, 0.7 * x + 0.3 * x[partner], rtol=1e-6)
    np.testing.assert_allclose(targets.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(targets[0], [0.7, 0.3, 0, 0], rtol=1e-6)
    np.testing.assert_allclose(targets[2], [0, 0.3, 0.7, 0], rtol=1e-6)
    np.testing.assert_allclose(targets[1], [0.3, 0.7, 0, 0], rtol=1e-6)


def test_cutmix_box_and_lambda_by_hand():
    # 8x8, lam 0.75: sides sqrt(0.25) * 8 = 4, centred at (4, 4) -> rows and columns 2..6, area 16.
    assert A.cutmix_box(8, 8, 0.75, 4, 4) == (2, 6, 2, 6)
    # Centred in a corner the box is clipped to 2x2, so only 4/64 of the image is pasted.
    assert A.cutmix_box(8, 8, 0.75, 0, 0) == (0, 2, 0, 2)
    x = np.arange(2 * 8 * 8 * 1, dtype=np.float32).reshape(2, 8, 8, 1).repeat(3, axis=3)
    labels, partner = np.array([0, 1]), np.array([1, 0])
    out, targets, lam = A.cutmix(x, labels, (2, 6, 2, 6), partner, num_classes=2)
    assert lam == 1 - 16 / 64
    np.testing.assert_allclose(targets, [[0.75, 0.25], [0.25, 0.75]])
    np.testing.assert_array_equal(out[0, 2:6, 2:6], x[1, 2:6, 2:6])
    outside = np.ones((8, 8), bool)
    outside[2:6, 2:6] = False
    np.testing.assert_array_equal(out[0][outside], x[0][outside])
    _, clipped_targets, clipped_lam = A.cutmix(x, labels, (0, 2, 0, 2), partner, num_classes=2)
    assert clipped_lam == 1 - 4 / 64
    np.testing.assert_allclose(clipped_targets[0], [1 - 4 / 64, 4 / 64])


@settings(max_examples=15)
@given(seed=st.integers(0, 2**32 - 1), mixup=st.sampled_from([0.0, 0.8]), cutmix=st.sampled_from([0.0, 1.0]))
def test_mix_batch_targets_are_distributions_and_the_mix_is_seeded(seed, mixup, cutmix):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((8, 6, 6, 3)).astype(np.float32)
    labels = rng.integers(0, 5, 8)
    a = A.mix_batch(x, labels, np.random.default_rng(seed), 5, mixup, cutmix)
    b = A.mix_batch(x, labels, np.random.default_rng(seed), 5, mixup, cutmix)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    out, targets, lam = a
    assert out.shape == x.shape and out.dtype == np.float32 and targets.shape == (8, 5)
    assert np.all(targets >= 0)
    np.testing.assert_allclose(targets.sum(axis=1), 1.0, rtol=1e-6)
    assert 0.0 <= lam <= 1.0
    if mixup == 0.0 and cutmix == 0.0:  # nothing enabled: one-hot targets, images untouched
        np.testing.assert_array_equal(out, x)
        np.testing.assert_array_equal(targets, A.one_hot(labels, 5))
    # The dominant label carries at least half the weight.
    assert np.all(targets[np.arange(8), A.dominant_labels(targets)] >= 0.5 - 1e-6)


def test_mix_batch_with_probability_zero_is_one_hot():
    x = np.ones((4, 4, 4, 3), np.float32)
    labels = np.array([3, 0, 1, 2])
    out, targets, lam = A.mix_batch(x, labels, np.random.default_rng(0), 4, 0.8, 1.0, prob=0.0)
    assert lam == 1.0 and out is x
    np.testing.assert_array_equal(targets, np.eye(4, dtype=np.float32)[labels])


# --------------------------------------------------------------------------------------------------
# The loader
# --------------------------------------------------------------------------------------------------
def _loader(augmentation=None, **kw):
    images = np.random.default_rng(0).integers(0, 256, (40, 8, 8, 3), dtype=np.uint8)
    labels = np.arange(40) % 4
    settings_ = dict(shuffle=True, seed=7, augment=True, padding=1, augmentation=augmentation) | kw
    return BatchLoader(images, labels, 8, **settings_)


def _batches(loader, epoch=0):
    return [(x.copy(), y.copy()) for x, y in loader.epoch(epoch)]


def test_loader_with_every_augmentation_is_deterministic_and_serves_soft_targets():
    aug = A.Augmentation(randaugment_ops=2, erase_prob=0.5, mixup_alpha=0.8, cutmix_alpha=1.0, num_classes=4)
    first, again = _batches(_loader(aug)), _batches(_loader(aug, prefetch=2))
    for (x1, y1), (x2, y2) in zip(first, again):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    x, y = first[0]
    assert x.dtype == np.float32 and y.dtype == np.float32 and y.shape == (8, 4)
    np.testing.assert_allclose(y.sum(axis=1), 1.0, rtol=1e-6)
    other_epoch = _batches(_loader(aug), epoch=1)
    assert not np.array_equal(other_epoch[0][0], x)


def test_loader_with_augmentation_off_serves_exactly_the_old_batches():
    plain = _batches(_loader(None))
    for off in (A.Augmentation(), A.Augmentation(randaugment_ops=2, randaugment_magnitude=0.0)):
        for (x1, y1), (x2, y2) in zip(plain, _batches(_loader(off))):
            np.testing.assert_array_equal(x1, x2)
            np.testing.assert_array_equal(y1, y2)
            assert y2.dtype == np.int64


def test_one_augmentation_does_not_change_the_others_random_draws():
    """Erasing on: pixels outside the erased boxes are exactly the batches without it (same crops)."""
    plain = _batches(_loader(None))
    erased = _batches(_loader(A.Augmentation(erase_prob=0.5)))
    touched = 0
    for (x1, y1), (x2, y2) in zip(plain, erased):
        np.testing.assert_array_equal(y1, y2)
        differs = x1 != x2
        touched += differs.any(axis=(1, 2, 3)).sum()
        # What changed is one filled rectangle per image (the box), never a shifted or flipped image.
        for b in np.flatnonzero(differs.any(axis=(1, 2, 3))):
            mask = differs[b].any(axis=2)  # (H, W)
            rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
            assert mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].all()
            assert mask.sum() == (rows[-1] - rows[0] + 1) * (cols[-1] - cols[0] + 1) < mask.size
    assert touched > 0


def test_mixing_needs_the_number_of_classes_and_bad_settings_are_refused():
    with pytest.raises(ValueError, match="num_classes"):
        A.Augmentation(mixup_alpha=0.8)
    with pytest.raises(ValueError, match="randaugment_magnitude"):
        A.Augmentation(randaugment_ops=2, randaugment_magnitude=12)
    with pytest.raises(ValueError, match="erase_prob"):
        A.Augmentation(erase_prob=2.0)
    with pytest.raises(TypeError, match="Augmentation"):
        _loader({"mixup_alpha": 0.8})
