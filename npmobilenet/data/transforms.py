"""Batch transforms: ``transform(x, rng) -> x`` on ``(N, C, H, W)`` arrays, out of place.

Random transforms draw from the explicit ``numpy.random.Generator`` they are given (the
:class:`~npmobilenet.data.loader.DataLoader` passes one seeded per batch), so a run is
reproducible and resumable. Deterministic transforms ignore ``rng``.
"""

from __future__ import annotations

import numpy as np

from npmobilenet._checks import describe, float_array, integer, number, pair


def callables(op, name, values):
    """``values`` as a list, checked to hold only callables (the steps of a pipeline)."""
    values = list(values)
    for i, t in enumerate(values):
        if not callable(t):
            raise TypeError(f"{op}: {name}[{i}] must be callable, got {describe(t)}")
    return values


class Compose:
    """Apply ``transforms`` in order, all with the same generator."""

    def __init__(self, transforms):
        self.transforms = callables("Compose", "transforms", transforms)

    def __call__(self, x, rng=None):
        for t in self.transforms:
            x = t(x, rng)
        return x


class Normalize:
    """Per-channel ``(x - mean[c]) / std[c]``. ``mean``, ``std``: one value per channel."""

    def __init__(self, mean, std):
        self.mean = np.asarray(mean, dtype=np.float64).reshape(-1)
        self.std = np.asarray(std, dtype=np.float64).reshape(-1)
        if self.mean.shape != self.std.shape:
            raise ValueError(
                f"Normalize: mean and std need one value per channel each, got {len(self.mean)}"
                f" and {len(self.std)} values"
            )
        if not np.all(self.std > 0):
            raise ValueError(f"Normalize: every std must be > 0, got {self.std.tolist()}")

    def __call__(self, x, rng=None):
        x = float_array("Normalize", "x", x, ndim=4)
        if x.shape[1] != len(self.mean):
            raise ValueError(
                f"Normalize: x has {x.shape[1]} channels but mean/std have {len(self.mean)} values"
            )
        mean = self.mean.astype(x.dtype)[:, None, None]  # (C, 1, 1)
        std = self.std.astype(x.dtype)[:, None, None]
        return (x - mean) / std


def channel_stats(x) -> tuple[list[float], list[float]]:
    """Per-channel mean and (population) std of ``(N, C, H, W)`` images or a dataset's ``x``,
    computed in float64: feed them to :class:`Normalize`."""
    x = getattr(x, "x", x)
    x = float_array("channel_stats", "x", x, ndim=4)
    mean = x.mean(axis=(0, 2, 3), dtype=np.float64)
    std = x.std(axis=(0, 2, 3), dtype=np.float64)
    return mean.tolist(), std.tolist()


class RandomCrop:
    """Zero-pad each side by ``padding``, then crop a random ``size`` window per image."""

    def __init__(self, size, padding=0):
        self.size = pair("RandomCrop", "size", size, minimum=1)
        self.padding = integer("RandomCrop", "padding", padding, minimum=0)

    def __call__(self, x, rng):
        x = float_array("RandomCrop", "x", x, ndim=4)
        p, (oh, ow) = self.padding, self.size
        padded = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))  # (N, C, H + 2p, W + 2p)
        ph, pw = padded.shape[2:]
        if oh > ph or ow > pw:
            raise ValueError(
                f"RandomCrop: crop {oh}x{ow} is larger than the padded image {ph}x{pw}"
            )
        tops = rng.integers(0, ph - oh + 1, size=len(x))
        lefts = rng.integers(0, pw - ow + 1, size=len(x))
        out = np.empty((len(x), x.shape[1], oh, ow), dtype=x.dtype)
        for i, (t, l) in enumerate(zip(tops, lefts)):
            out[i] = padded[i, :, t : t + oh, l : l + ow]
        return out


class RandomHorizontalFlip:
    """Mirror each image left-right with probability ``p`` (off for digits: a mirrored 2 is no
    longer a 2)."""

    def __init__(self, p=0.5):
        self.p = number("RandomHorizontalFlip", "p", p, 0, 1)

    def __call__(self, x, rng):
        x = float_array("RandomHorizontalFlip", "x", x, ndim=4)
        flip = rng.random(len(x)) < self.p  # (N,)
        out = x.copy()
        out[flip] = x[flip, :, :, ::-1]
        return out
