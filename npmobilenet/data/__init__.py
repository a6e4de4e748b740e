"""Data: the built-in digits, image folders, ``.npz`` arrays, CIFAR-10 binaries, and a loader.

Every reader returns :class:`ArrayDataset` s: float32 images ``(N, C, H, W)`` in [0, 1] with
int64 labels and class names. :class:`DataLoader` batches them with seeded, resumable
shuffling and the batch transforms of :mod:`npmobilenet.data.transforms`.
"""

from npmobilenet.data.cifar import load_cifar10, read_cifar_batch
from npmobilenet.data.dataset import ArrayDataset, resize_bilinear
from npmobilenet.data.digits import load_digits_dataset
from npmobilenet.data.folder import ImageFolder
from npmobilenet.data.loader import DataLoader
from npmobilenet.data.npz import load_npz
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
