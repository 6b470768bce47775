"""Datasets for tinymoe: decoded to uint8 arrays once, cached, served as normalized float32 batches.

Every loader returns images as uint8 (N, H, W, 3) (channel-last) and labels as int64 (N,):

    load_tiny_imagenet(root, split)          Tiny ImageNet, 200 classes, 64x64, from the official zip
    load_downsampled_imagenet(root, split)   Imagenet16/32/64 (Chrabaszcz et al. 2017), npz or pickle
    load_image_folder(root, size)            one sub-folder per class
    make_synthetic(...)                      planted class hierarchy, for demos and tests

or, with class names and torchvision-like attributes, the dataset classes TinyImageNet,
DownsampledImageNet, ImageFolder, SyntheticHierarchy. Then:

    BatchLoader(images, labels, batch_size, shuffle=..., augment=..., seed=...).epoch(e)
    holdout_split(labels, fraction, seed)    the held-out part of train for the superclass step
    train_fraction_split(labels, train, f, seed)  a nested, per-class fraction of the training images

Decoded splits are cached as .npy memory maps (see tinymoe.data.cache for where and when they are
rebuilt). Command line: `python -m tinymoe.data --help` (prepare the cache, verify a download).
"""

from tinymoe.data.batches import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    BatchLoader,
    channel_stats,
    crop_flip,
    holdout_split,
    normalize,
    random_crop_flip,
    train_fraction_split,
    train_split,
)
from tinymoe.data.cache import default_cache_dir
from tinymoe.data.dataset import ArrayDataset
from tinymoe.data.download import download_url, file_md5
from tinymoe.data.downsampled import DownsampledImageNet, RestrictedUnpickler, load_downsampled_imagenet
from tinymoe.data.errors import (
    ChecksumError,
    DatasetFormatError,
    DatasetNotFoundError,
    DownloadError,
    ImageDecodeError,
    UnsafePickleError,
)
from tinymoe.data.folder import ImageFolder, load_image_folder
from tinymoe.data.synthetic import SyntheticHierarchy, make_synthetic
from tinymoe.data.tinyimagenet import (
    TINY_IMAGENET_MD5,
    TINY_IMAGENET_SIZE,
    TINY_IMAGENET_URL,
    TinyImageNet,
    download_tiny_imagenet,
    find_tiny_imagenet,
    index_tiny_imagenet,
    load_tiny_imagenet,
    verify_tiny_imagenet,
)

__all__ = [
    "ArrayDataset",
    "BatchLoader",
    "ChecksumError",
    "DatasetFormatError",
    "DatasetNotFoundError",
    "DownloadError",
    "DownsampledImageNet",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageDecodeError",
    "ImageFolder",
    "RestrictedUnpickler",
    "SyntheticHierarchy",
    "TINY_IMAGENET_MD5",
    "TINY_IMAGENET_SIZE",
    "TINY_IMAGENET_URL",
    "TinyImageNet",
    "UnsafePickleError",
    "channel_stats",
    "crop_flip",
    "default_cache_dir",
    "download_tiny_imagenet",
    "download_url",
    "file_md5",
    "find_tiny_imagenet",
    "holdout_split",
    "train_fraction_split",
    "train_split",
    "index_tiny_imagenet",
    "load_downsampled_imagenet",
    "load_image_folder",
    "load_tiny_imagenet",
    "make_synthetic",
    "normalize",
    "random_crop_flip",
    "verify_tiny_imagenet",
]
