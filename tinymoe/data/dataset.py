"""`ArrayDataset`: a decoded image dataset held as two arrays, with torchvision-like attributes.

Every loader in `tinymoe.data` ends in one of these: `images` uint8 (N, H, W, 3), channel-last, and
`labels` int64 (N,) in 0..num_classes-1. The arrays may be read-only memory maps of the cache
(`tinymoe.data.cache`), so indexing reads from disk lazily and costs no RAM until touched.
"""

from __future__ import annotations

import numpy as np


class ArrayDataset:
    """Images, labels and class names, indexable like a torchvision dataset.

    Attributes:
        images: uint8 (N, H, W, 3).
        labels: int64 (N,).
        classes: one human-readable name per class, in label order.
        class_to_idx: class name -> label.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, classes: list[str]):
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(
                f"ArrayDataset: images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}"
            )
        if labels.shape != (images.shape[0],):
            raise ValueError(
                f"ArrayDataset: labels shape {labels.shape} does not match images {images.shape} "
                f"(expected ({images.shape[0]},))"
            )
        self.images = images
        self.labels = labels.astype(np.int64, copy=False)
        self.classes = list(classes)
        # Names can repeat in principle (WordNet synonyms); the first class with a name wins, as in torchvision.
        self.class_to_idx: dict[str, int] = {}
        for i, name in enumerate(self.classes):
            self.class_to_idx.setdefault(name, i)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        """(image uint8 (H, W, 3), label) of example i."""
        return np.asarray(self.images[i]), int(self.labels[i])

    def __repr__(self) -> str:
        h, w = self.images.shape[1:3]
        return f"{type(self).__name__}({len(self)} images of {h}x{w}, {self.num_classes} classes)"
