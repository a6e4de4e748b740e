"""CIFAR-10 in its binary format, for users who have the files (nothing is downloaded).

Each ``data_batch_{1..5}.bin`` / ``test_batch.bin`` is a run of 3,073-byte records: one label
byte (0..9) then a 32x32 image as 1,024 red, 1,024 green and 1,024 blue bytes, rows top to
bottom. ``batches.meta.txt``, when present, names the classes one per line.
"""

from __future__ import annotations

import glob
import os

import numpy as np

from npmobilenet.data.dataset import (
    ArrayDataset,
    check_channels,
    check_label_range,
    check_resolution,
    resize_bilinear,
    to_channels,
)

OP = "load_cifar10"
RECORD = 1 + 3 * 32 * 32
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def read_cifar_batch(path) -> tuple[np.ndarray, np.ndarray]:
    """One ``.bin`` file -> images ``(n, 3, 32, 32)`` float32 in [0, 1] and labels ``(n,)``."""
    path = os.fspath(path)
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % RECORD:
        raise ValueError(
            f"{OP}: {path!r} has {raw.size} bytes, not a whole number of {RECORD}-byte records"
            " (1 label byte + 3072 pixel bytes); is it truncated?"
        )
    records = raw.reshape(-1, RECORD)  # (n, 3073)
    y = records[:, 0].astype(np.int64)
    check_label_range(OP, f"the labels in {path!r}", y, 10)
    x = records[:, 1:].reshape(-1, 3, 32, 32).astype(np.float32) / 255.0  # (n, 3, 32, 32)
    return x, y


def load_cifar10(root, resolution=32, channels=3):
    """``(train, test)`` from ``root`` (or ``root/cifar-10-batches-bin``) holding
    ``data_batch_*.bin`` and ``test_batch.bin``; resized bilinearly if ``resolution != 32``."""
    resolution = check_resolution(OP, resolution)
    channels = check_channels(OP, channels)
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{OP}: the data path {root!r} does not exist or is not a folder")
    sub = os.path.join(root, "cifar-10-batches-bin")
    if os.path.isdir(sub):
        root = sub
    train_files = sorted(glob.glob(os.path.join(root, "data_batch_*.bin")))
    test_file = os.path.join(root, "test_batch.bin")
    if not train_files or not os.path.isfile(test_file):
        raise FileNotFoundError(
            f"{OP}: {root!r} must contain data_batch_*.bin and test_batch.bin"
            f" (found {sorted(os.listdir(root))[:10]})"
        )
    classes = CLASSES
    meta = os.path.join(root, "batches.meta.txt")
    if os.path.isfile(meta):
        with open(meta) as f:
            classes = [line.strip() for line in f if line.strip()] or CLASSES

    def build(files):
        parts = [read_cifar_batch(f) for f in files]
        x = np.concatenate([p[0] for p in parts])
        if resolution != 32:
            x = resize_bilinear(x, resolution)
        x = np.ascontiguousarray(to_channels(OP, x, channels))
        return ArrayDataset(x, np.concatenate([p[1] for p in parts]), classes, name=OP)

    return build(train_files), build([test_file])
