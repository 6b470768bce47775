"""Mini-batches for training and evaluation: shuffling, augmentation, normalization, prefetch.

    loader = BatchLoader(images, labels, batch_size=128, shuffle=True, augment=True, seed=0)
    for epoch in range(epochs):
        for x, y in loader.epoch(epoch):    # x float32 (B, H, W, 3) normalized, y int64 (B,)
            ...

Determinism: the order and the augmentation of epoch e depend only on (seed, e), never on how many
batches were drawn before or on prefetching, so a resumed run sees exactly the batches it would have
seen. Images stay uint8 until the last step (crop and flip move bytes, not floats), then are
normalized per channel: x = (pixel / 255 - mean[c]) / std[c].

Augmentation (`augment=True`), the standard recipe for small images:
* random crop with padding: pad each image by `padding` pixels on every side (zeros, or with
  `pad_mode="reflect"` the image mirrored at its border, so no black frame appears), then cut an
  H x W window at a random offset (0..2*padding in each direction), i.e. shift by up to `padding` pixels;
* horizontal flip with probability 1/2.
Both are done for the whole batch with a few NumPy copies (no loop over images or pixels; see
`crop_flip`).

Regularising augmentations (`augmentation=Augmentation(...)`, all off by default; see
`tinymoe.data.augment`): RandAugment on the uint8 batch after the crop and flip, then, after
normalizing, random erasing and mixup/cutmix. With mixup or cutmix on, the loader serves soft targets
float32 (B, num_classes) instead of integer labels. Each of them draws from its own generator seeded by
(seed, epoch, which augmentation, batch index), so their randomness is a pure function of the batch's
position and the crop/flip stream is the same with or without them.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from tinymoe.data.augment import Augmentation

# Per-channel statistics of ImageNet in [0, 1] units: the usual normalization for ImageNet-derived data.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def channel_stats(images: np.ndarray, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation of uint8 (N, H, W, 3) images in [0, 1] units, float64 (3,).

    Accumulates sums and sums of squares over chunks, so it works on a memory-mapped split without
    loading it whole: var = E[x^2] - E[x]^2, computed in float64 where this cancellation is harmless.
    """
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"channel_stats: expected images (N, H, W, 3), got {images.shape}")
    total = np.zeros(3)
    total_sq = np.zeros(3)
    for start in range(0, images.shape[0], chunk):
        block = np.asarray(images[start : start + chunk], dtype=np.float64).reshape(-1, 3) / 255.0  # (b*H*W, 3)
        total += block.sum(axis=0)
        total_sq += np.square(block).sum(axis=0)
    count = images.shape[0] * images.shape[1] * images.shape[2]
    if count == 0:
        raise ValueError("channel_stats: no pixels (empty images array)")
    mean = total / count
    return mean, np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))


def normalize(images: np.ndarray, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """uint8 (..., 3) -> float32 (..., 3): (pixel / 255 - mean[c]) / std[c] per channel c."""
    mean = np.asarray(mean, dtype=np.float32)
    std = np.asarray(std, dtype=np.float32)
    if mean.shape != (3,) or std.shape != (3,) or np.any(std <= 0):
        raise ValueError(f"normalize: mean and std must be 3 numbers (std > 0), got {mean} and {std}")
    # x * scale + shift with scale = 1 / (255 std), shift = -mean / std: two passes over the output
    # (the multiply converts uint8 to float32 as it writes), no float64 and no temporary.
    scale = np.float32(1.0 / 255.0) / std
    shift = -mean / std
    out = np.empty(images.shape, dtype=np.float32)
    np.multiply(images, scale, out=out)
    out += shift
    return out


PAD_MODES = {"zero": "constant", "reflect": "reflect"}  # our name -> np.pad's mode

# Stream ids of the regularising augmentations' generators (0 is the order, 1 the crop/flip stream).
_RANDAUGMENT, _ERASE, _MIX = 2, 3, 4


def crop_flip(
    images: np.ndarray, oy: np.ndarray, ox: np.ndarray, flipped: np.ndarray, padding: int, pad_mode: str = "zero"
) -> np.ndarray:
    """Shift-crop and optionally flip each image of a batch (B, H, W, C), given the offsets and flips.

    Output pixel (i, j) of image b is padded[b, oy[b] + i, ox[b] + j], or padded[b, oy[b] + i,
    ox[b] + W - 1 - j] when flipped[b], where `padded` is the batch with `padding` pixels added on
    every side (zeros for pad_mode="zero", the mirrored image for "reflect") and oy, ox lie in 0..2*padding.

    No loop over images or pixels: `sliding_window_view` exposes every H x W window of the padded batch
    as a view (no copy), one fancy index picks window (oy[b], ox[b]) of each image b in a single copy,
    and the flipped images are reversed along W with one more slice assignment. (Indexing every pixel
    with three broadcast index arrays gives the same result but is ~2.5x slower: NumPy then handles
    each pixel separately instead of copying whole rows.)
    """
    b, h, w, c = images.shape
    if padding < 0:
        raise ValueError(f"crop_flip: padding must be >= 0, got {padding}")
    if pad_mode not in PAD_MODES:
        raise ValueError(f"crop_flip: pad_mode must be one of {sorted(PAD_MODES)}, got {pad_mode!r}")
    if pad_mode == "reflect" and padding >= min(h, w):
        raise ValueError(f"crop_flip: reflect padding needs padding < image size, got {padding} for {h}x{w}")
    for name, offset in (("oy", oy), ("ox", ox)):
        if offset.shape != (b,) or offset.min(initial=0) < 0 or offset.max(initial=0) > 2 * padding:
            raise ValueError(f"crop_flip: {name} must be {b} offsets in 0..{2 * padding}")
    pad = ((0, 0), (padding, padding), (padding, padding), (0, 0))
    padded = np.pad(images, pad, mode=PAD_MODES[pad_mode])  # (B, H+2p, W+2p, C)
    windows = sliding_window_view(padded, (h, w), axis=(1, 2))  # (B, 2p+1, 2p+1, C, H, W), a view
    windows = windows.transpose(0, 1, 2, 4, 5, 3)  # (B, 2p+1, 2p+1, H, W, C)
    out = windows[np.arange(b), oy, ox]  # (B, H, W, C), a fresh array
    out[flipped] = out[flipped, :, ::-1]  # the right-hand side is a copy, so this cannot overlap itself
    return out


def random_crop_flip(
    images: np.ndarray, rng: np.random.Generator, padding: int = 4, flip: bool = True, pad_mode: str = "zero"
) -> np.ndarray:
    """Random shift by up to `padding` pixels (crop of the zero-padded image) and random horizontal flip.

    Offsets oy, ox are uniform in 0..2*padding, each image is flipped with probability 1/2 (if `flip`);
    see `crop_flip` for the indexing.
    """
    if padding < 0:
        raise ValueError(f"random_crop_flip: padding must be >= 0, got {padding}")
    b = images.shape[0]
    oy = rng.integers(0, 2 * padding + 1, size=b)
    ox = rng.integers(0, 2 * padding + 1, size=b)
    flipped = rng.random(b) < 0.5 if flip else np.zeros(b, dtype=bool)
    return crop_flip(images, oy, ox, flipped, padding, pad_mode)


def holdout_split(
    labels: np.ndarray, fraction: float = 0.1, seed: int = 0, stratify: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Carve a held-out split from a training set: `(train_indices, holdout_indices)`, both sorted int64.

    The superclass step needs a confusion matrix on images the dense model did not train on, and must
    not use the validation set (that is reserved for the final evaluation), so it holds out part of
    train. With `stratify=True`, round(fraction * n_c) images of every class c are held out (at least
    one when the class has two or more images), so every class appears in the confusion matrix.
    The same (labels, fraction, seed) always give the same split.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"holdout_split: labels must be 1-D, got shape {labels.shape}")
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"holdout_split: fraction must be strictly between 0 and 1, got {fraction}")
    rng = np.random.default_rng([seed, 0x401D])
    if not stratify:
        order = rng.permutation(labels.size)
        k = int(round(fraction * labels.size))
        return np.sort(order[k:]), np.sort(order[:k])
    held = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        k = int(round(fraction * members.size))
        if members.size >= 2:
            k = min(max(k, 1), members.size - 1)  # keep at least one image of the class on each side
        else:
            k = 0
        held.append(rng.choice(members, size=k, replace=False))
    holdout = np.sort(np.concatenate(held)).astype(np.int64)
    train = np.setdiff1d(np.arange(labels.size, dtype=np.int64), holdout, assume_unique=True)
    return train, holdout



def train_fraction_split(
    labels: np.ndarray, train_indices: np.ndarray, fraction: float = 1.0, seed: int = 0
) -> np.ndarray:
    """The first `fraction` of every class's training images: a sorted int64 subset of `train_indices`.

    For the data-scale experiments: fewer unique training images, same classes in the same
    proportions. `train_indices` is what remains of train after `holdout_split`, so the held-out images
    stay exactly the same for every fraction and are never trained on. Each class c keeps
    floor(fraction * n_c + 1/2) of its n_c training images (at least one), namely a prefix of a
    permutation that depends only on (seed, c), so the subsets are nested: the 12.5% subset lies inside
    the 25% one, inside the 50% one. `fraction=1.0` returns `train_indices` itself (unchanged behaviour).
    """
    fraction = float(fraction)
    if not 0.0 < fraction <= 1.0:  # (also refuses NaN)
        raise ValueError(f"train fraction must be in (0, 1], got {fraction}")
    train_indices = np.asarray(train_indices, dtype=np.int64)
    if fraction == 1.0:
        return train_indices
    labels = np.asarray(labels)[train_indices]
    keep = []
    for c in np.unique(labels):
        members = train_indices[labels == c]  # sorted, as train_indices is
        k = max(1, int(np.floor(fraction * members.size + 0.5)))
        order = np.random.default_rng([seed, 0xF4AC, int(c)]).permutation(members.size)
        keep.append(members[order[:k]])
    return np.sort(np.concatenate(keep)).astype(np.int64)


def train_split(
    labels: np.ndarray, holdout_fraction: float = 0.1, train_fraction: float = 1.0, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """`(train_indices, holdout_indices)` of a run: `holdout_split`, then `train_fraction_split` of the rest."""
    train, holdout = holdout_split(labels, holdout_fraction, seed=seed)
    return train_fraction_split(labels, train, train_fraction, seed=seed), holdout

class BatchLoader:
    """Iterate (images float32 (B, H, W, 3) normalized, labels int64 (B,)) over a dataset, epoch by epoch.

    Args:
        images: uint8 (N, H, W, 3); a memory map is fine (only each batch's rows are read).
        labels: int (N,).
        batch_size: images per batch.
        shuffle: a new seeded order every epoch (else dataset order, for evaluation).
        drop_last: drop the final short batch (keeps every step's batch size equal).
        seed: with the epoch number, fixes order and augmentation.
        augment: random crop with `padding` + horizontal flip (if `flip`); off for evaluation.
        pad_mode: "zero" or "reflect": what the crop's padding holds (see the module docstring).
        mean, std: per-channel normalization in [0, 1] units (default ImageNet's; see `channel_stats`).
        indices: restrict to these rows (e.g. the train part of `holdout_split`) without copying.
        augmentation: RandAugment, random erasing, mixup/cutmix settings (`tinymoe.data.augment`); None = off.
        prefetch: number of batches prepared ahead by a background thread (0 = none). NumPy releases
            the GIL while gathering and converting, so preparation overlaps the caller's compute.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        batch_size: int,
        *,
        shuffle: bool = True,
        drop_last: bool = False,
        seed: int = 0,
        augment: bool = False,
        padding: int = 4,
        flip: bool = True,
        pad_mode: str = "zero",
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        indices: np.ndarray | None = None,
        prefetch: int = 0,
        augmentation: Augmentation | None = None,
    ):
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"BatchLoader: images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"BatchLoader: labels shape {labels.shape} does not match images {images.shape}")
        if batch_size < 1:
            raise ValueError(f"BatchLoader: batch_size must be >= 1, got {batch_size}")
        if prefetch < 0:
            raise ValueError(f"BatchLoader: prefetch must be >= 0, got {prefetch}")
        self.images, self.labels = images, np.asarray(labels)
        self.indices = np.arange(images.shape[0]) if indices is None else np.asarray(indices, dtype=np.int64)
        if self.indices.size and (self.indices.min() < 0 or self.indices.max() >= images.shape[0]):
            raise ValueError(f"BatchLoader: indices must lie in 0..{images.shape[0] - 1}")
        self.batch_size, self.shuffle, self.drop_last, self.seed = batch_size, shuffle, drop_last, seed
        if pad_mode not in PAD_MODES:
            raise ValueError(f"BatchLoader: pad_mode must be one of {sorted(PAD_MODES)}, got {pad_mode!r}")
        self.augment, self.padding, self.flip, self.pad_mode = augment, padding, flip, pad_mode
        self.mean, self.std = mean, std
        self.prefetch = prefetch
        if augmentation is not None and not isinstance(augmentation, Augmentation):
            raise TypeError(f"BatchLoader: augmentation must be a tinymoe.data.augment.Augmentation or None, "
                            f"got {type(augmentation).__name__}")
        self.augmentation = augmentation if augmentation is not None and augmentation.active else None
        # What geometric ops fill in from outside the image: the mean colour (it normalizes to 0).
        self.fill = tuple(int(round(255 * m)) for m in np.asarray(mean, dtype=np.float64).reshape(-1)[:3])
        normalize(np.zeros((1, 3), np.uint8), mean, std)  # validate mean/std now, not at the first batch

    def __len__(self) -> int:
        """Batches per epoch."""
        n = self.indices.size
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def order(self, epoch: int) -> np.ndarray:
        """The example indices of `epoch` in the order they are served."""
        if not self.shuffle:
            return self.indices
        return self.indices[np.random.default_rng([self.seed, epoch, 0]).permutation(self.indices.size)]

    def _batches(self, epoch: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        order = self.order(epoch)
        augment_rng = np.random.default_rng([self.seed, epoch, 1])
        for b in range(len(self)):
            rows = order[b * self.batch_size : (b + 1) * self.batch_size]
            # Gather rows in increasing order (sequential reads from a memory map), then restore the
            # shuffled order so batch composition *and* order are exactly the epoch's permutation.
            ascending = np.argsort(rows, kind="stable")
            pixels = np.empty((rows.size,) + self.images.shape[1:], dtype=np.uint8)
            pixels[ascending] = self.images[rows[ascending]]
            if self.augment:
                pixels = random_crop_flip(pixels, augment_rng, self.padding, self.flip, self.pad_mode)
            aug = self.augmentation
            if aug is not None:
                pixels = aug.pixels(pixels, self._augment_rng(epoch, _RANDAUGMENT, b), self.fill)
            x, y = normalize(pixels, self.mean, self.std), self.labels[rows].astype(np.int64)
            if aug is not None:
                x, y = aug.normalized(x, y, self._augment_rng(epoch, _ERASE, b), self._augment_rng(epoch, _MIX, b))
            yield x, y

    def _augment_rng(self, epoch: int, which: int, batch: int) -> np.random.Generator:
        """The generator of one regularising augmentation for one batch: a function of its position only."""
        return np.random.default_rng([self.seed, epoch, which, batch])

    def epoch(self, epoch: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The batches of epoch `epoch` (same seed and epoch -> same batches, bit for bit)."""
        if self.prefetch == 0:
            return self._batches(epoch)
        return _prefetched(self._batches(epoch), self.prefetch)

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Epoch 0; use `epoch(e)` in a training loop so every epoch gets its own order."""
        return self.epoch(0)


_DONE = object()


def _prefetched(batches: Iterator, depth: int) -> Iterator:
    """Run `batches` in a background thread, `depth` items ahead; re-raise its errors in the consumer.

    If the consumer stops early (break, exception, garbage collection), the producer is told to stop
    and joined, so no thread outlives the loop.
    """
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce():
        try:
            for item in batches:
                while not stop.is_set():
                    try:
                        buffer.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            item = _DONE
        except BaseException as exc:  # handed to the consumer, which re-raises it
            item = exc
        while not stop.is_set():
            try:
                buffer.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    thread = threading.Thread(target=produce, name="tinymoe-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = buffer.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()
