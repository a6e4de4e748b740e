"""Per-image transforms on decoded 8-bit Pillow images, before normalisation.

Each transform is ``t(img, rng) -> img`` on one Pillow image (mode ``"L"`` or ``"RGB"``);
random ones draw from the ``numpy.random.Generator`` they are given, in a fixed order, so a
seeded loader reproduces them exactly (and a resumed run continues them). They follow
torchvision's algorithms (PIL backend) draw for draw: where torchvision draws
``uniform(a, b)`` these draw ``rng.uniform(a, b)``, so the same uniform numbers give the same
crop boxes, flips and jitter factors (the numbers themselves come from a different generator).

:class:`ImageTransform` runs the steps on every image of a batch (a list of images, as the
lazy folders return them) and stacks the results into one ``(N, C, H, W)`` float32 batch in
[0, 1], ready for :class:`~npmobilenet.data.transforms.Normalize`.
"""

from __future__ import annotations

import math

import numpy as np

from npmobilenet._checks import choice, describe, integer, number
from npmobilenet.data.decode import pil
from npmobilenet.data.transforms import callables

INTERPOLATIONS = ("bilinear", "bicubic")


def _resample(op: str, interpolation: str):
    interpolation = choice(op, "interpolation", interpolation, INTERPOLATIONS)
    Image = pil(op)
    return {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}[interpolation]


class Resize:
    """Resize the shorter side to ``size``, keeping the aspect ratio: the longer side becomes
    ``int(size * long / short)`` (truncated, as torchvision's ``Resize(size)``)."""

    def __init__(self, size, interpolation="bilinear"):
        self.size = integer("Resize", "size", size, minimum=1)
        self.interpolation = interpolation
        self.resample = _resample("Resize", interpolation)

    def __call__(self, img, rng=None):
        w, h = img.size
        short, long = min(w, h), max(w, h)
        new_long = int(self.size * long / short)
        nw, nh = (self.size, new_long) if w <= h else (new_long, self.size)
        if (nw, nh) == (w, h):
            return img
        return img.resize((nw, nh), self.resample)


class CenterCrop:
    """The central ``size`` x ``size`` window; offsets ``int(round((H - size) / 2))`` and the
    same for W, as torchvision's ``CenterCrop`` (the image must be at least ``size``)."""

    def __init__(self, size):
        self.size = integer("CenterCrop", "size", size, minimum=1)

    def __call__(self, img, rng=None):
        w, h, s = *img.size, self.size
        if s > w or s > h:
            raise ValueError(f"CenterCrop: crop {s}x{s} is larger than the image {h}x{w}")
        top, left = int(round((h - s) / 2.0)), int(round((w - s) / 2.0))
        return img.crop((left, top, left + s, top + s))


def crop_box(height: int, width: int, scale, ratio, rng) -> tuple[int, int, int, int]:
    """``(top, left, h, w)`` of a random crop: torchvision's ``RandomResizedCrop.get_params``.

    Up to 10 attempts: area fraction ``rng.uniform(*scale)``, log aspect ratio
    ``rng.uniform(log ratio[0], log ratio[1])``, ``w = round(sqrt(area * aspect))``,
    ``h = round(sqrt(area / aspect))``; if that fits, ``top = rng.integers(0, height - h + 1)``
    and ``left = rng.integers(0, width - w + 1)``. Else the central crop of the whole image
    clamped to the ratio range.
    """
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * float(rng.uniform(scale[0], scale[1]))
        aspect = math.exp(float(rng.uniform(log_lo, log_hi)))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class RandomResizedCrop:
    """A random crop (:func:`crop_box`) resized to ``size`` x ``size``: the standard ImageNet
    training augmentation, ``scale=(0.08, 1)``, ``ratio=(3/4, 4/3)``."""

    def __init__(self, size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), interpolation="bilinear"):
        op = "RandomResizedCrop"
        self.size = integer(op, "size", size, minimum=1)
        self.scale = _range(op, "scale", scale, low=0)
        self.ratio = _range(op, "ratio", ratio, low=0, low_open=True)
        self.interpolation = interpolation
        self.resample = _resample(op, interpolation)

    def __call__(self, img, rng):
        w, h = img.size
        top, left, ch, cw = crop_box(h, w, self.scale, self.ratio, rng)
        return img.crop((left, top, left + cw, top + ch)).resize(
            (self.size, self.size), self.resample
        )


class HorizontalFlip:
    """Mirror the image left-right when ``rng.random() < p``."""

    def __init__(self, p=0.5):
        self.p = number("HorizontalFlip", "p", p, 0, 1)

    def __call__(self, img, rng):
        if float(rng.random()) < self.p:
            return img.transpose(pil("HorizontalFlip").FLIP_LEFT_RIGHT)
        return img


class ColorJitter:
    """torchvision's ``ColorJitter``: brightness, contrast, saturation (each a factor drawn
    from ``[max(0, 1 - v), 1 + v]``) and hue (a shift drawn from ``[-v, v]``, ``v <= 0.5``),
    applied in the order of ``rng.permutation(4)``; a 0 turns that adjustment off.

    Brightness, contrast and saturation are Pillow's ``ImageEnhance`` with those factors; hue
    shifts the H channel of Pillow's HSV (grey images are left as they are)."""

    def __init__(self, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0):
        op = "ColorJitter"
        self.amounts = [
            number(op, "brightness", brightness, low=0),
            number(op, "contrast", contrast, low=0),
            number(op, "saturation", saturation, low=0),
            number(op, "hue", hue, 0, 0.5),
        ]

    def factors(self, rng) -> tuple[np.ndarray, list]:
        """``(order, [b, c, s, h])``: the draws, in torchvision's order (None: off)."""
        order = rng.permutation(4)
        out = []
        for i, v in enumerate(self.amounts):
            if v == 0:
                out.append(None)
            elif i < 3:
                out.append(float(rng.uniform(max(0.0, 1 - v), 1 + v)))
            else:
                out.append(float(rng.uniform(-v, v)))
        return order, out

    def __call__(self, img, rng):
        from PIL import ImageEnhance

        enhancers = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)
        order, factors = self.factors(rng)
        for i in order:
            f = factors[i]
            if f is None:
                continue
            img = enhancers[i](img).enhance(f) if i < 3 else _shift_hue(img, f)
        return img


def _shift_hue(img, shift: float):
    if img.mode != "RGB":
        return img
    Image = pil("ColorJitter")
    h, s, v = img.convert("HSV").split()
    hue = np.asarray(h, dtype=np.uint8) + np.uint8(np.int64(shift * 255) % 256)  # wraps mod 256
    return Image.merge("HSV", (Image.fromarray(hue, "L"), s, v)).convert("RGB")


def _range(op: str, name: str, v, low=None, low_open=False) -> tuple[float, float]:
    if not isinstance(v, (tuple, list)) or len(v) != 2:
        raise TypeError(f"{op}: {name} must be a (low, high) pair, got {describe(v)}")
    lo = number(op, f"{name}[0]", v[0], low=low, low_open=low_open)
    hi = number(op, f"{name}[1]", v[1], low=lo)
    return lo, hi


class ImageTransform:
    """``ImageTransform(steps)(images, rng) -> (N, C, H, W)`` float32 in [0, 1].

    ``images``: a list of Pillow images (or ``(H, W)`` / ``(H, W, C)`` uint8 arrays); each goes
    through ``steps`` in order, every draw from ``rng``, image by image. The steps must end at
    one size for all (a crop).
    """

    def __init__(self, steps):
        self.steps = callables("ImageTransform", "steps", steps)

    def __call__(self, images, rng=None):
        Image = pil("ImageTransform")
        arrays = []
        for img in images:
            if isinstance(img, np.ndarray):
                img = Image.fromarray(img)
            for t in self.steps:
                img = t(img, rng)
            arrays.append(np.asarray(img, dtype=np.uint8))
        shapes = {a.shape for a in arrays}
        if len(shapes) > 1:
            raise ValueError(f"ImageTransform: the steps gave images of several sizes {shapes}")
        return to_batch(arrays)


def to_batch(arrays) -> np.ndarray:
    """uint8 images ``(H, W)`` or ``(H, W, C)`` -> ``(N, C, H, W)`` float32 in [0, 1]."""
    x = np.stack(arrays).astype(np.float32) / np.float32(255)  # (N, H, W[, C])
    return x[:, None] if x.ndim == 3 else np.ascontiguousarray(x.transpose(0, 3, 1, 2))
