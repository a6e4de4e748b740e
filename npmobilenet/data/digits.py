"""The built-in dataset: scikit-learn's handwritten digits at the model's resolution.

1,797 real 8x8 scans of the digits 0-9 (the UCI optical-recognition set, shipped inside
scikit-learn, so nothing is downloaded). Values 0..16 are scaled to [0, 1] and the images are
upsampled bilinearly (:func:`~npmobilenet.data.dataset.resize_bilinear`, half-pixel centres) to
``resolution`` x ``resolution``; grey is repeated into 3 channels when ``channels=3``.

The train/test split is fixed and stratified: ``ceil(test_fraction * N)`` test images (360 of
1,797 at 0.2), shared out over the classes in proportion to their sizes (largest remainders
first), each class shuffled with ``numpy.random.default_rng(seed)``.
"""

from __future__ import annotations

import math

import numpy as np

from npmobilenet._checks import INSTALL_HINT, integer, number
from npmobilenet.data.dataset import (
    ArrayDataset,
    check_channels,
    check_resolution,
    resize_bilinear,
    to_channels,
)


def load_digits_dataset(resolution=32, channels=3, test_fraction=0.2, seed=0):
    """``(train, test)`` :class:`ArrayDataset` s of the digits: x ``(N, channels, R, R)``
    float32 in [0, 1], y int64 in 0..9, classes ``["0", ..., "9"]``. Default: 1,437 / 360."""
    op = "load_digits_dataset"
    resolution = check_resolution(op, resolution)
    channels = check_channels(op, channels)
    test_fraction = number(op, "test_fraction", test_fraction, 0, 1, low_open=True, high_open=True)
    seed = integer(op, "seed", seed, minimum=0)
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ImportError(
            f"{op}: the built-in digits dataset ships with scikit-learn, which is not installed;"
            f" install it with: {INSTALL_HINT}"
        ) from None
    digits = load_digits()
    x = (digits.images[:, None] / 16.0).astype(np.float32)  # (1797, 1, 8, 8) in [0, 1]
    x = to_channels(op, resize_bilinear(x, resolution), channels)  # (1797, C, R, R)
    y = digits.target.astype(np.int64)
    test = stratified_test_indices(y, test_fraction, seed)
    train = np.setdiff1d(np.arange(len(y)), test)
    classes = [str(c) for c in digits.target_names]
    return (
        ArrayDataset(np.ascontiguousarray(x[train]), y[train], classes, name=op),
        ArrayDataset(np.ascontiguousarray(x[test]), y[test], classes, name=op),
    )


def stratified_test_indices(y: np.ndarray, test_fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of a stratified test split with ``ceil(test_fraction * len(y))`` items."""
    classes, counts = np.unique(y, return_counts=True)
    n_test = math.ceil(test_fraction * len(y))
    share = counts * (n_test / len(y))
    per_class = np.floor(share).astype(np.int64)
    order = np.argsort(-(share - per_class), kind="stable")  # largest remainder first
    per_class[order[: n_test - per_class.sum()]] += 1
    rng = np.random.default_rng(seed)
    picks = [rng.permutation(np.flatnonzero(y == c))[:k] for c, k in zip(classes, per_class)]
    return np.sort(np.concatenate(picks))
