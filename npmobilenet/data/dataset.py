"""The in-memory dataset every loader in this package returns, and shared image helpers.

An :class:`ArrayDataset` is images ``x`` of shape ``(N, C, H, W)`` (float32, values in [0, 1]
for the built-in readers) with int64 labels ``y`` of shape ``(N,)`` and the class names.
Indexing with an integer array returns that batch, ``(x[idx], y[idx])``: a copy of the batch
only, never of the whole dataset.
"""

from __future__ import annotations

import numpy as np

from npmobilenet._checks import describe, float_array, integer


class Labelled:
    """Shared by the datasets: ``y``, the int64 labels ``(N,)``, and ``classes``, their names."""

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.y)


class ArrayDataset(Labelled):
    """``ArrayDataset(x, y, classes=None)``: images ``(N, C, H, W)`` and labels ``(N,)``.

    ``classes`` (names, one per class) defaults to ``["0", "1", ...]`` up to the largest label.
    Labels must be integers in ``[0, len(classes))``.
    """

    def __init__(self, x, y, classes=None, name: str = "ArrayDataset"):
        x = float_array(name, "x", x, ndim=4)
        y = labels(name, "y", y, len(x))
        if classes is None:
            classes = [str(i) for i in range(int(y.max()) + 1 if len(y) else 0)]
        classes = [str(c) for c in classes]
        check_label_range(name, "y", y, len(classes))
        self.x, self.y, self.classes = x, y, classes

    def __getitem__(self, idx):
        """``(x[idx], y[idx])``; ``idx`` an int, slice or integer array."""
        return self.x[idx], self.y[idx]

    def __repr__(self) -> str:
        n, c, h, w = self.x.shape
        return f"{type(self).__name__}({n} images, {c}x{h}x{w}, {self.num_classes} classes)"


def labels(op: str, name: str, y, n: int) -> np.ndarray:
    """Check labels: a 1-D integer array of length ``n``; returned as int64."""
    if not isinstance(y, np.ndarray):
        raise TypeError(f"{op}: {name} must be a numpy array of integer labels, got {describe(y)}")
    if y.dtype.kind not in "iu":
        raise TypeError(f"{op}: {name} must hold integer class labels, got dtype {y.dtype}")
    if y.ndim != 1 or len(y) != n:
        raise ValueError(
            f"{op}: {name} must have shape ({n},) (one label per image), got shape {y.shape}"
        )
    if y.dtype == np.uint64 and y.size and y.max() > np.iinfo(np.int64).max:
        i = int(np.argmax(y > np.iinfo(np.int64).max))  # int64 would wrap it to a negative
        raise ValueError(f"{op}: {name} must be class indices, got {int(y[i])} at index {i}")
    return y.astype(np.int64)


def check_label_range(op: str, name: str, y: np.ndarray, num_classes: int) -> None:
    """Every label in ``[0, num_classes)``, else a ValueError quoting the first bad one."""
    bad = np.flatnonzero((y < 0) | (y >= num_classes))
    if len(bad):
        i = int(bad[0])
        raise ValueError(
            f"{op}: {name} must be class indices in [0, {num_classes}), got {y[i]} at index {i}"
            f" ({len(bad)} label(s) out of range)"
        )


def resize_bilinear(x: np.ndarray, size: int) -> np.ndarray:
    """Resize ``(N, C, H, W)`` to ``(N, C, size, size)`` bilinearly (half-pixel centres).

    The same numbers as ``torch.nn.functional.interpolate(mode="bilinear",
    align_corners=False)``: output pixel ``o`` samples the input at ``(o + 0.5) * H / size - 0.5``
    (clamped at 0) and blends its two neighbours. Separable: rows, then columns.
    """

    def weights(n_in: int, n_out: int):
        src = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
        i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, (src - i0).astype(x.dtype)

    r0, r1, wr = weights(x.shape[2], size)
    c0, c1, wc = weights(x.shape[3], size)
    rows = x[:, :, r0, :] * (1 - wr)[:, None] + x[:, :, r1, :] * wr[:, None]  # (N, C, size, W)
    return rows[:, :, :, c0] * (1 - wc) + rows[:, :, :, c1] * wc  # (N, C, size, size)


LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, as Pillow's convert("L")


def to_channels(op: str, x: np.ndarray, channels: int) -> np.ndarray:
    """``(N, C, H, W)`` -> ``(N, channels, H, W)``: grey repeated to RGB, RGB to luma grey."""
    c = x.shape[1]
    if c == channels:
        return x
    if c == 1 and channels == 3:
        return np.repeat(x, 3, axis=1)
    if c == 3 and channels == 1:
        w = np.asarray(LUMA, dtype=x.dtype)
        return np.einsum("nchw,c->nhw", x, w)[:, None]
    raise ValueError(f"{op}: cannot convert {c}-channel images to {channels} channels")


def check_channels(op: str, channels) -> int:
    """The model's input channel count: 1 (grey) or 3 (RGB)."""
    channels = integer(op, "channels", channels)
    if channels not in (1, 3):
        raise ValueError(f"{op}: channels must be 1 (grayscale) or 3 (RGB), got {channels}")
    return channels


def check_resolution(op: str, resolution) -> int:
    """An image side length >= 1 (the model checks what it needs on top of that)."""
    return integer(op, "resolution", resolution, minimum=1)
