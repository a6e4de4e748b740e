"""Data: the built-in digits, image folders, ``.npz`` arrays, CIFAR-10 binaries, and a loader.

The array readers return :class:`ArrayDataset` s: float32 images ``(N, C, H, W)`` in [0, 1]
with int64 labels and class names. :class:`LazyImageFolder` decodes images per batch and
returns lists of Pillow images for the per-image transforms of :mod:`npmobilenet.data.image`.
:class:`DataLoader` batches either with seeded, resumable shuffling, transforms and optional
prefetch threads. :mod:`npmobilenet.data.presets` holds the standard training and evaluation
transforms and the named presets of published weights.
"""

from npmobilenet.data.cifar import load_cifar10, read_cifar_batch
from npmobilenet.data.dataset import ArrayDataset, resize_bilinear
from npmobilenet.data.digits import load_digits_dataset
from npmobilenet.data.folder import ImageCache, ImageFiles, ImageFolder, LazyImageFolder
from npmobilenet.data.image import (
    CenterCrop,
    ColorJitter,
    HorizontalFlip,
    ImageTransform,
    RandomResizedCrop,
    Resize,
    crop_box,
)
from npmobilenet.data.loader import DataLoader
from npmobilenet.data.npz import load_npz
from npmobilenet.data.presets import (
    PRESETS,
    eval_transform,
    preprocess,
    preset_transform,
    train_transform,
)
from npmobilenet.data.transforms import (
    Compose,
    Normalize,
    RandomCrop,
    RandomHorizontalFlip,
    channel_stats,
)

__all__ = [
    "ArrayDataset",
    "DataLoader",
    "ImageFolder",
    "LazyImageFolder",
    "ImageFiles",
    "ImageCache",
    "ImageTransform",
    "Resize",
    "CenterCrop",
    "RandomResizedCrop",
    "HorizontalFlip",
    "ColorJitter",
    "crop_box",
    "PRESETS",
    "preprocess",
    "preset_transform",
    "eval_transform",
    "train_transform",
    "load_digits_dataset",
    "load_npz",
    "load_cifar10",
    "read_cifar_batch",
    "resize_bilinear",
    "Compose",
    "Normalize",
    "RandomCrop",
    "RandomHorizontalFlip",
    "channel_stats",
]
