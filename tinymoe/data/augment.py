"""Regularising augmentations, vectorised over the batch: RandAugment, random erasing, mixup and cutmix.

These are the data half of the DeiT recipe (Touvron et al. 2021) that Mobile V-MoE was trained with.
Each one is a plain function of (images, explicit random parameters) plus a `random_...` wrapper that
draws the parameters from a np.random.Generator, so the tests can check the arithmetic by hand and
the loader can reproduce any batch from its seed:

    pixels  uint8 (B, H, W, 3)  --rand_augment-->  uint8    (geometric and colour ops, before normalising)
    x       float32 normalised  --random_erase-->  float32  (a rectangle of noise per image)
    x, y    float32, labels     --mix_batch----->  x, soft targets (B, C)  (mixup or cutmix per batch)

`Augmentation` bundles the settings; `BatchLoader(augmentation=...)` applies them in that order, after
the random crop and flip (as timm does: PIL ops, then ToTensor + normalise, then erasing, then the
batch-level mix). Every setting defaults to off.

Determinism: the loader gives each augmentation its own generator seeded by (seed, epoch, which
augmentation, batch index), so a batch's augmentation is a pure function of those four numbers and
switching one augmentation on or off does not change the random draws of the others.

RandAugment (Cubuk et al. 2020), as in timm: each image gets `num_ops` ops, each picked uniformly from
RANDAUGMENT_OPS and applied with probability `prob`, all at one global `magnitude` m in [0, 10]:

    op            parameter at magnitude m (s = a random sign per image)       identity at
    rotate        s · 30° · m/10, about the image centre                        0°
    shear_x/y     s · 0.3 · m/10 (source x += shear · y, resp. y += shear · x)  0
    translate_x/y s · 0.45 · m/10 of the image side                             0
    brightness    factor 1 + s · 0.9 · m/10, blend with black                   factor 1
    contrast      factor 1 + s · 0.9 · m/10, blend with the image's mean grey   factor 1
    saturation    factor 1 + s · 0.9 · m/10, blend with the image's greyscale   factor 1
    solarize      invert pixels >= 256 - 256 · m/10                             threshold 256
    posterize     keep the top 8 - int(4 · m/10) bits of every value            8 bits

so at magnitude 0 every op is the identity. Geometric ops sample the source bilinearly and fill what
comes from outside the image with `fill` (the dataset's mean colour, which normalises to zero).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

MAX_MAGNITUDE = 10.0  # RandAugment's magnitude scale: 0 (identity) .. 10 (strongest)

# Strength of each op at the maximum magnitude (timm's RandAugment values).
MAX_ROTATE_DEGREES = 30.0
MAX_SHEAR = 0.3
MAX_TRANSLATE = 0.45  # fraction of the image side
MAX_ENHANCE = 0.9  # brightness / contrast / saturation factors range over 1 ± 0.9
MAX_POSTERIZE_BITS_REMOVED = 4

RANDAUGMENT_OPS = (
    "rotate",
    "shear_x",
    "shear_y",
    "translate_x",
    "translate_y",
    "brightness",
    "contrast",
    "saturation",
    "solarize",
    "posterize",
)

# ITU-R 601-2 luma, the weights PIL's convert("L") uses.
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _check_images(images: np.ndarray, op: str) -> None:
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"{op}: images must be uint8 (B, H, W, 3), got {images.dtype} {images.shape}")


def _per_image(values, batch: int, name: str, op: str) -> np.ndarray:
    """A scalar or a (B,) array -> float64 (B,) (one parameter per image)."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 0:
        values = np.full(batch, float(values))
    if values.shape != (batch,):
        raise ValueError(f"{op}: {name} must be a number or one value per image ({batch},), got shape {values.shape}")
    return values


def _to_uint8(values: np.ndarray) -> np.ndarray:
    """Round to the nearest integer and clip to 0..255 (what PIL does when an enhancement overshoots)."""
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------------
# Geometric ops: one affine warp
# --------------------------------------------------------------------------------------------------
def affine(images: np.ndarray, matrices: np.ndarray, fill=(0, 0, 0)) -> np.ndarray:
    """Warp each image by its own affine map, sampling bilinearly (inverse mapping, as PIL's transform).

    With coordinates measured from the image centre (cx, cy) = ((W-1)/2, (H-1)/2), output pixel
    (row i, column j) reads the source at

        [sx]   [a  b] [j - cx]   [cx + c]          matrices[n] = [[a, b, c],
        [sy] = [d  e] [i - cy] + [cy + f]                         [d, e, f]]   (B, 2, 3)

    and interpolates the four pixels around (sx, sy); a neighbour outside the image counts as `fill`.
    The identity matrix [[1, 0, 0], [0, 1, 0]] gives back the image exactly (all fractions are 0).

    All images at once: B·H·W source positions, four gathers from the flattened batch, no Python loop.
    Outside pixels cost no masks: the batch gets a one-pixel frame of `fill`, and neighbour indices are
    clipped onto that frame, so anything from outside the image reads `fill`.
    """
    _check_images(images, "affine")
    batch, h, w, _ = images.shape
    matrices = np.asarray(matrices, dtype=np.float64)
    if matrices.shape != (batch, 2, 3):
        raise ValueError(f"affine: matrices must be (B, 2, 3) = ({batch}, 2, 3), got {matrices.shape}")
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    v, u = np.meshgrid(np.arange(h) - cy, np.arange(w) - cx, indexing="ij")  # (H, W) centred row, column
    a, b, c = (matrices[:, 0, k, None, None] for k in range(3))  # each (B, 1, 1)
    d, e, f = (matrices[:, 1, k, None, None] for k in range(3))
    sx = a * u + b * v + (cx + c)  # (B, H, W) source column
    sy = d * u + e * v + (cy + f)  # (B, H, W) source row
    x0, y0 = np.floor(sx), np.floor(sy)
    fx = (sx - x0).astype(np.float32)[..., None]  # (B, H, W, 1) fractions, shared by the 3 channels
    fy = (sy - y0).astype(np.float32)[..., None]

    framed = np.empty((batch, h + 2, w + 2, 3), dtype=np.uint8)  # (B, H+2, W+2, 3)
    framed[...] = np.asarray(fill, dtype=np.uint8)
    framed[:, 1:-1, 1:-1] = images
    flat = framed.reshape(-1, 3)  # rows of one pixel, so one gather fetches all 3 channels
    # Framed index of source column x is x + 1; anything left of 0 or right of W-1 lands on the frame.
    left, right = (np.clip(x0 + dx, -1, w).astype(np.int64) + 1 for dx in (0, 1))  # (B, H, W)
    upper, lower = (np.clip(y0 + dy, -1, h).astype(np.int64) + 1 for dy in (0, 1))
    base = (np.arange(batch) * ((h + 2) * (w + 2)))[:, None, None]  # (B, 1, 1) first pixel of each image
    top_row, bottom_row = base + upper * (w + 2), base + lower * (w + 2)
    p00, p01 = flat[top_row + left].astype(np.float32), flat[top_row + right].astype(np.float32)
    p10, p11 = flat[bottom_row + left].astype(np.float32), flat[bottom_row + right].astype(np.float32)
    top = p00 + fx * (p01 - p00)  # interpolate along x in the upper and the lower row ...
    bottom = p10 + fx * (p11 - p10)
    return _to_uint8(top + fy * (bottom - top))  # ... then along y


def _identity_matrices(batch: int) -> np.ndarray:
    m = np.zeros((batch, 2, 3))
    m[:, 0, 0] = m[:, 1, 1] = 1.0
    return m


def rotate(images: np.ndarray, degrees, fill=(0, 0, 0)) -> np.ndarray:
    """Rotate each image by degrees[n] about its centre (positive = counter-clockwise on screen)."""
    _check_images(images, "rotate")
    theta = np.deg2rad(_per_image(degrees, images.shape[0], "degrees", "rotate"))
    cos, sin = np.cos(theta), np.sin(theta)
    m = _identity_matrices(images.shape[0])
    # Rows grow downwards, so a counter-clockwise turn on screen reads the source rotated clockwise.
    m[:, 0, 0], m[:, 0, 1] = cos, -sin
    m[:, 1, 0], m[:, 1, 1] = sin, cos
    return affine(images, m, fill)


def shear_x(images: np.ndarray, shear, fill=(0, 0, 0)) -> np.ndarray:
    """Horizontal shear: output (i, j) reads source column j + shear · (i - cy)."""
    _check_images(images, "shear_x")
    m = _identity_matrices(images.shape[0])
    m[:, 0, 1] = _per_image(shear, images.shape[0], "shear", "shear_x")
    return affine(images, m, fill)


def shear_y(images: np.ndarray, shear, fill=(0, 0, 0)) -> np.ndarray:
    """Vertical shear: output (i, j) reads source row i + shear · (j - cx)."""
    _check_images(images, "shear_y")
    m = _identity_matrices(images.shape[0])
    m[:, 1, 0] = _per_image(shear, images.shape[0], "shear", "shear_y")
    return affine(images, m, fill)


def translate_x(images: np.ndarray, fraction, fill=(0, 0, 0)) -> np.ndarray:
    """Shift right by fraction · W pixels (negative: left); what enters is `fill`."""
    _check_images(images, "translate_x")
    m = _identity_matrices(images.shape[0])
    m[:, 0, 2] = -_per_image(fraction, images.shape[0], "fraction", "translate_x") * images.shape[2]
    return affine(images, m, fill)


def translate_y(images: np.ndarray, fraction, fill=(0, 0, 0)) -> np.ndarray:
    """Shift down by fraction · H pixels (negative: up); what enters is `fill`."""
    _check_images(images, "translate_y")
    m = _identity_matrices(images.shape[0])
    m[:, 1, 2] = -_per_image(fraction, images.shape[0], "fraction", "translate_y") * images.shape[1]
    return affine(images, m, fill)


# --------------------------------------------------------------------------------------------------
# Colour ops (PIL's ImageEnhance and ImageOps, vectorised)
# --------------------------------------------------------------------------------------------------
def _blend(images: np.ndarray, degenerate: np.ndarray, factor: np.ndarray) -> np.ndarray:
    """degenerate + factor · (image - degenerate): factor 1 = the image, 0 = the degenerate image,
    above 1 = pushed further away from it. This is how all of PIL's ImageEnhance classes work."""
    f = factor.astype(np.float32)[:, None, None, None]  # (B, 1, 1, 1)
    x = images.astype(np.float32)
    return _to_uint8(degenerate + f * (x - degenerate))


def brightness(images: np.ndarray, factor) -> np.ndarray:
    """Scale every value by factor (the degenerate image is black)."""
    _check_images(images, "brightness")
    return _blend(images, np.float32(0.0), _per_image(factor, images.shape[0], "factor", "brightness"))


def contrast(images: np.ndarray, factor) -> np.ndarray:
    """Blend with a uniform grey at the image's mean greyscale value (as PIL: the mean of the rounded
    per-pixel greys, rounded half up)."""
    _check_images(images, "contrast")
    grey = np.floor(np.rint(images.astype(np.float32) @ LUMA).mean(axis=(1, 2)) + 0.5)  # (B,)
    return _blend(images, grey[:, None, None, None], _per_image(factor, images.shape[0], "factor", "contrast"))


def saturation(images: np.ndarray, factor) -> np.ndarray:
    """Blend with the image's own greyscale version (PIL's ImageEnhance.Color): 0 = grey, 1 = the image."""
    _check_images(images, "saturation")
    grey = np.rint(images.astype(np.float32) @ LUMA)[..., None]  # (B, H, W, 1)
    return _blend(images, grey, _per_image(factor, images.shape[0], "factor", "saturation"))


def solarize(images: np.ndarray, threshold) -> np.ndarray:
    """Invert (255 - v) every value v >= threshold; threshold 256 changes nothing."""
    _check_images(images, "solarize")
    t = _per_image(threshold, images.shape[0], "threshold", "solarize")[:, None, None, None]
    return np.where(images >= t, 255 - images, images)


def posterize(images: np.ndarray, bits) -> np.ndarray:
    """Keep the top `bits` bits of every value (bits in 1..8; 8 changes nothing)."""
    _check_images(images, "posterize")
    bits = _per_image(bits, images.shape[0], "bits", "posterize")
    if np.any((bits < 1) | (bits > 8) | (bits != np.round(bits))):
        raise ValueError(f"posterize: bits must be whole numbers in 1..8, got {bits}")
    mask = (0xFF << (8 - bits.astype(np.int64))) & 0xFF  # e.g. 4 bits -> 0b11110000
    return images & mask.astype(np.uint8)[:, None, None, None]


# --------------------------------------------------------------------------------------------------
# RandAugment
# --------------------------------------------------------------------------------------------------
def op_parameter(op: str, magnitude: float, sign: np.ndarray):
    """The parameter of `op` at `magnitude` (see the module table); `sign` (B,) is +1 or -1 per image."""
    level = float(magnitude) / MAX_MAGNITUDE
    if op == "rotate":
        return sign * MAX_ROTATE_DEGREES * level
    if op in ("shear_x", "shear_y"):
        return sign * MAX_SHEAR * level
    if op in ("translate_x", "translate_y"):
        return sign * MAX_TRANSLATE * level
    if op in ("brightness", "contrast", "saturation"):
        return 1.0 + sign * MAX_ENHANCE * level
    if op == "solarize":
        return np.full(sign.shape, 256.0 - 256.0 * level)
    if op == "posterize":
        return np.full(sign.shape, 8 - int(MAX_POSTERIZE_BITS_REMOVED * level))
    raise ValueError(f"unknown RandAugment op {op!r}; known ops are {RANDAUGMENT_OPS}")


def apply_op(op: str, images: np.ndarray, parameter, fill=(0, 0, 0)) -> np.ndarray:
    """Run one RandAugment op by name with its parameter (one value per image)."""
    if op in ("rotate", "shear_x", "shear_y", "translate_x", "translate_y"):
        return globals()[op](images, parameter, fill)
    if op in ("brightness", "contrast", "saturation", "solarize", "posterize"):
        return globals()[op](images, parameter)
    raise ValueError(f"unknown RandAugment op {op!r}; known ops are {RANDAUGMENT_OPS}")


def rand_augment(
    images: np.ndarray,
    rng: np.random.Generator,
    num_ops: int = 2,
    magnitude: float = 9.0,
    prob: float = 0.5,
    fill=(0, 0, 0),
    ops=RANDAUGMENT_OPS,
) -> np.ndarray:
    """RandAugment on a uint8 batch: `num_ops` rounds; in each, every image draws one op uniformly from
    `ops`, applies it with probability `prob` at `magnitude` with a random sign. Returns a new array.

    Vectorised by op, not by image: in each round the images that drew op j are gathered and
    transformed together, so a round costs about one pass over the batch whatever B is.
    """
    _check_images(images, "rand_augment")
    if not isinstance(num_ops, (int, np.integer)) or num_ops < 0:
        raise ValueError(f"rand_augment: num_ops must be a whole number >= 0, got {num_ops!r}")
    if not 0.0 <= magnitude <= MAX_MAGNITUDE:
        raise ValueError(f"rand_augment: magnitude must be in [0, {MAX_MAGNITUDE:g}], got {magnitude}")
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"rand_augment: prob must be in [0, 1], got {prob}")
    unknown = [op for op in ops if op not in RANDAUGMENT_OPS]
    if unknown or not ops:
        raise ValueError(f"rand_augment: ops must be a non-empty subset of {RANDAUGMENT_OPS}, got {ops}")
    out = images.copy()
    batch = images.shape[0]
    for _ in range(num_ops):
        # Draw everything for the round first (same number of draws whatever is picked).
        choice = rng.integers(0, len(ops), size=batch)
        applied = rng.random(batch) < prob
        sign = np.where(rng.random(batch) < 0.5, -1.0, 1.0)
        for j, op in enumerate(ops):
            rows = np.flatnonzero(applied & (choice == j))
            if rows.size:
                out[rows] = apply_op(op, out[rows], op_parameter(op, magnitude, sign[rows]), fill)
    return out


# --------------------------------------------------------------------------------------------------
# Random erasing (Zhong et al. 2020), on normalised float images
# --------------------------------------------------------------------------------------------------
def erase(x: np.ndarray, boxes: np.ndarray, noise_rng: np.random.Generator | None = None) -> np.ndarray:
    """Replace box (top, left, height, width) of each image by fresh N(0, 1) noise (timm's "pixel" mode:
    in normalised units that is noise with the data's own per-channel spread). A box of height or width 0
    leaves its image unchanged. With noise_rng=None the boxes are filled with zeros (the mean colour).

    x: float (B, H, W, C) normalised images; boxes: int (B, 4). Returns a new array.
    """
    if x.ndim != 4 or x.dtype.kind != "f":
        raise ValueError(f"erase: x must be float (B, H, W, C), got {x.dtype} {x.shape}")
    batch, h, w, c = x.shape
    boxes = np.asarray(boxes)
    if boxes.shape != (batch, 4) or boxes.dtype.kind not in "iu":
        raise ValueError(
            f"erase: boxes must be integers (B, 4) = ({batch}, 4) (top, left, height, width), got {boxes.shape}"
        )
    top, left, bh, bw = boxes.T
    if np.any((top < 0) | (left < 0) | (bh < 0) | (bw < 0) | (top + bh > h) | (left + bw > w)):
        raise ValueError(f"erase: every box must lie inside the {h}x{w} image")
    rows, cols = np.arange(h), np.arange(w)
    inside = (
        (rows[None, :, None] >= top[:, None, None]) & (rows[None, :, None] < (top + bh)[:, None, None])
        & (cols[None, None, :] >= left[:, None, None]) & (cols[None, None, :] < (left + bw)[:, None, None])
    )  # (B, H, W)
    out = x.copy()
    count = int(inside.sum())
    if noise_rng is None:
        out[inside] = 0
    else:
        out[inside] = noise_rng.standard_normal((count, c), dtype=np.float32).astype(x.dtype, copy=False)
    return out


def erase_boxes(
    rng: np.random.Generator, batch: int, height: int, width: int, prob: float,
    area=(0.02, 1 / 3), aspect=(0.3, 1 / 0.3), attempts: int = 10,
) -> np.ndarray:
    """Draw random-erasing boxes (top, left, height, width), (B, 4) int64, as timm's RandomErasing:

    with probability `prob` an image gets a box of area uniform in area·H·W and aspect ratio
    (height / width) log-uniform in `aspect`: h = round(sqrt(area · ratio)), w = round(sqrt(area / ratio)),
    placed uniformly. Up to `attempts` draws are tried until one fits inside the image; if none does,
    the image is left alone (box of size 0).
    """
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"erase_boxes: prob must be in [0, 1], got {prob}")
    chosen = rng.random(batch) < prob
    target = rng.uniform(area[0], area[1], size=(batch, attempts)) * height * width
    ratio = np.exp(rng.uniform(math.log(aspect[0]), math.log(aspect[1]), size=(batch, attempts)))
    bh = np.rint(np.sqrt(target * ratio)).astype(np.int64)
    bw = np.rint(np.sqrt(target / ratio)).astype(np.int64)
    fits = (bh >= 1) & (bw >= 1) & (bh < height) & (bw < width)
    first = np.argmax(fits, axis=1)  # the first attempt that fits (0 when none does: masked below)
    take = chosen & fits.any(axis=1)
    rows = np.arange(batch)
    bh, bw = np.where(take, bh[rows, first], 0), np.where(take, bw[rows, first], 0)
    # Positions: uniform over the valid offsets (drawn for every image, so the stream does not
    # depend on which images were erased).
    top = np.floor(rng.random(batch) * (height - bh + 1)).astype(np.int64)
    left = np.floor(rng.random(batch) * (width - bw + 1)).astype(np.int64)
    return np.stack([top, left, bh, bw], axis=1)


def random_erase(x: np.ndarray, rng: np.random.Generator, prob: float = 0.25) -> np.ndarray:
    """Random erasing with probability `prob` per image (see `erase_boxes` and `erase`)."""
    batch, h, w, _ = x.shape
    return erase(x, erase_boxes(rng, batch, h, w, prob), noise_rng=rng)


# --------------------------------------------------------------------------------------------------
# Mixup (Zhang et al. 2018) and cutmix (Yun et al. 2019), batch level
# --------------------------------------------------------------------------------------------------
def one_hot(labels: np.ndarray, num_classes: int, dtype=np.float32) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise ValueError(f"one_hot: labels must be 1-D integers, got {labels.dtype} {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"one_hot: labels must lie in [0, {num_classes}), got {labels.min()}..{labels.max()}")
    out = np.zeros((labels.size, num_classes), dtype=dtype)
    out[np.arange(labels.size), labels] = 1
    return out


def mix_targets(labels: np.ndarray, partner: np.ndarray, lam: float, num_classes: int) -> np.ndarray:
    """Soft targets lam · onehot(labels) + (1 - lam) · onehot(labels[partner]): each row sums to 1."""
    targets = one_hot(labels, num_classes)
    return (np.float32(lam) * targets + np.float32(1.0 - lam) * targets[partner]).astype(np.float32)


def mixup(x: np.ndarray, labels: np.ndarray, lam: float, partner: np.ndarray, num_classes: int):
    """x' = lam · x + (1 - lam) · x[partner], targets mixed with the same lam. Returns (x', targets)."""
    mixed = (x * x.dtype.type(lam) + x[partner] * x.dtype.type(1.0 - lam)).astype(x.dtype, copy=False)
    return mixed, mix_targets(labels, partner, lam, num_classes)


def cutmix_box(height: int, width: int, lam: float, cy: int, cx: int) -> tuple[int, int, int, int]:
    """The cutmix rectangle (y0, y1, x0, x1) for a target ratio lam and centre (cy, cx), as in the paper:
    sides sqrt(1 - lam) · (H, W) (so the box covers 1 - lam of the image), clipped to the image."""
    cut = math.sqrt(1.0 - lam)
    ch, cw = int(height * cut), int(width * cut)
    y0, y1 = min(max(cy - ch // 2, 0), height), min(max(cy + ch // 2, 0), height)
    x0, x1 = min(max(cx - cw // 2, 0), width), min(max(cx + cw // 2, 0), width)
    return y0, y1, x0, x1


def cutmix(x: np.ndarray, labels: np.ndarray, box, partner: np.ndarray, num_classes: int):
    """Paste box (y0, y1, x0, x1) of image partner[b] into image b, for all b. The targets are mixed by
    the area actually kept: lam = 1 - box area / (H · W) (after clipping, not the lam that was drawn).
    Returns (x', targets, lam)."""
    _, h, w, _ = x.shape
    y0, y1, x0, x1 = box
    if not (0 <= y0 <= y1 <= h and 0 <= x0 <= x1 <= w):
        raise ValueError(f"cutmix: box {box} must lie inside the {h}x{w} image with y0 <= y1, x0 <= x1")
    out = x.copy()
    out[:, y0:y1, x0:x1] = x[partner, y0:y1, x0:x1]
    lam = 1.0 - (y1 - y0) * (x1 - x0) / (h * w)
    return out, mix_targets(labels, partner, lam, num_classes), lam


def mix_batch(
    x: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    num_classes: int,
    mixup_alpha: float = 0.0,
    cutmix_alpha: float = 0.0,
    prob: float = 1.0,
    switch_prob: float = 0.5,
):
    """timm's batch-mode Mixup: with probability `prob` the batch is mixed; by cutmix with probability
    `switch_prob` when both are enabled (else by whichever is), with lam ~ Beta(alpha, alpha) and the
    partner of image b a random permutation of the batch. Returns (x', soft targets (B, C), lam);
    an unmixed batch returns (x, one-hot targets, 1.0).
    """
    if mixup_alpha < 0 or cutmix_alpha < 0:
        raise ValueError(f"mix_batch: alphas must be >= 0, got mixup {mixup_alpha}, cutmix {cutmix_alpha}")
    if not (0.0 <= prob <= 1.0 and 0.0 <= switch_prob <= 1.0):
        raise ValueError(f"mix_batch: prob and switch_prob must be in [0, 1], got {prob}, {switch_prob}")
    batch, h, w, _ = x.shape
    # The same draws in every case, so the stream is easy to reason about.
    mixed = rng.random() < prob
    use_cutmix = rng.random() < switch_prob
    partner = rng.permutation(batch)
    centre = rng.integers(0, h), rng.integers(0, w)
    if mixup_alpha > 0 and cutmix_alpha > 0:
        alpha = cutmix_alpha if use_cutmix else mixup_alpha
    elif mixup_alpha > 0 or cutmix_alpha > 0:
        use_cutmix = cutmix_alpha > 0
        alpha = cutmix_alpha if use_cutmix else mixup_alpha
    else:
        mixed, alpha = False, 1.0
    lam = float(rng.beta(alpha, alpha))
    if not mixed:
        return x, one_hot(labels, num_classes), 1.0
    if use_cutmix:
        return cutmix(x, labels, cutmix_box(h, w, lam, *centre), partner, num_classes)
    out, targets = mixup(x, labels, lam, partner, num_classes)
    return out, targets, lam


# --------------------------------------------------------------------------------------------------
# The settings, as BatchLoader takes them
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Augmentation:
    """Which regularising augmentations a BatchLoader applies (all off by default).

    randaugment_ops: ops per image (0 = no RandAugment); randaugment_magnitude: 0..10;
    randaugment_prob: probability that each drawn op is applied (timm: 0.5).
    erase_prob: random erasing probability per image (DeiT: 0.25).
    mixup_alpha, cutmix_alpha: Beta parameters (DeiT: 0.8 and 1.0; 0 = off); mix_prob: probability a
    batch is mixed; switch_prob: probability of cutmix rather than mixup when both are on.
    num_classes: needed for the soft targets when mixing.
    """

    randaugment_ops: int = 0
    randaugment_magnitude: float = 9.0
    randaugment_prob: float = 0.5
    erase_prob: float = 0.0
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    mix_prob: float = 1.0
    switch_prob: float = 0.5
    num_classes: int | None = None

    def __post_init__(self):
        if not isinstance(self.randaugment_ops, int) or self.randaugment_ops < 0:
            raise ValueError(f"Augmentation: randaugment_ops must be a whole number >= 0, got {self.randaugment_ops!r}")
        if not 0.0 <= self.randaugment_magnitude <= MAX_MAGNITUDE:
            raise ValueError(
                f"Augmentation: randaugment_magnitude must be in [0, 10], got {self.randaugment_magnitude}"
            )
        for name in ("randaugment_prob", "erase_prob", "mix_prob", "switch_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"Augmentation: {name} must be in [0, 1], got {getattr(self, name)}")
        if self.mixup_alpha < 0 or self.cutmix_alpha < 0:
            raise ValueError(f"Augmentation: mixup_alpha and cutmix_alpha must be >= 0 (0 = off), got "
                             f"{self.mixup_alpha} and {self.cutmix_alpha}")
        if self.mixes and (self.num_classes is None or self.num_classes < 1):
            raise ValueError(
                "Augmentation: mixup/cutmix make soft targets and need num_classes (the number of classes)"
            )

    @property
    def mixes(self) -> bool:
        """Whether batches are served with soft targets (B, C) instead of integer labels."""
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0

    @property
    def active(self) -> bool:
        return self.randaugment_ops > 0 or self.erase_prob > 0 or self.mixes

    def pixels(self, images: np.ndarray, rng: np.random.Generator, fill=(0, 0, 0)) -> np.ndarray:
        """The uint8 stage (RandAugment)."""
        if self.randaugment_ops == 0:
            return images
        return rand_augment(images, rng, self.randaugment_ops, self.randaugment_magnitude,
                            self.randaugment_prob, fill)

    def normalized(self, x: np.ndarray, labels: np.ndarray, erase_rng: np.random.Generator,
                   mix_rng: np.random.Generator):
        """The float stage: random erasing, then mixup/cutmix. Returns (x, labels or soft targets)."""
        if self.erase_prob > 0:
            x = random_erase(x, erase_rng, self.erase_prob)
        if self.mixes:
            x, labels, _ = mix_batch(x, labels, mix_rng, self.num_classes, self.mixup_alpha, self.cutmix_alpha,
                                     self.mix_prob, self.switch_prob)
        return x, labels


def dominant_labels(targets: np.ndarray) -> np.ndarray:
    """The class with the largest weight in each row of soft targets (ties: the lower class index);
    integer labels pass through. Used for training accuracy and teacher forcing under mixing."""
    targets = np.asarray(targets)
    if targets.dtype.kind in "iu":
        return targets
    return np.argmax(targets, axis=1)


__all__ = [
    "Augmentation",
    "RANDAUGMENT_OPS",
    "affine",
    "apply_op",
    "brightness",
    "contrast",
    "cutmix",
    "cutmix_box",
    "dominant_labels",
    "erase",
    "erase_boxes",
    "mix_batch",
    "mix_targets",
    "mixup",
    "one_hot",
    "op_parameter",
    "posterize",
    "rand_augment",
    "random_erase",
    "rotate",
    "saturation",
    "shear_x",
    "shear_y",
    "solarize",
    "translate_x",
    "translate_y",
]
