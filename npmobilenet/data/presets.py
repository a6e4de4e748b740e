"""The standard image transforms, defined once: training augmentation, evaluation, presets.

:func:`train_transform` is the standard fine-tuning augmentation: ``RandomResizedCrop(size)``
(scale 0.08-1, aspect 3/4-4/3) and a horizontal flip with probability 0.5, optionally colour
jitter. Training runs, ``predict`` and the named presets use the evaluation transform below.

Every evaluation transform here is torchvision's and timm's: resize the shorter side to
``floor(size / crop_pct)``, centre-crop ``size`` x ``size``, scale to [0, 1], then
``(x - mean) / std`` per channel. The named presets are the settings published MobileNetV1
weights were trained with:

========================  =============  ========  ===========================================
preset                    interpolation  crop_pct  normalisation
========================  =============  ========  ===========================================
``timm``                  bicubic        0.875     mean = std = 0.5 (256 -> 224 at size 224)
``torchvision``           bilinear       0.875     ImageNet mean (0.485, 0.456, 0.406),
                                                   std (0.229, 0.224, 0.225)
``keras`` / ``tf``        bilinear       0.875     mean = std = 0.5: ``x / 127.5 - 1``, [-1, 1]
========================  =============  ========  ===========================================

For ``keras`` / ``tf`` only the scaling is the library's own (``preprocess_input``); the
geometry is the shared one above, which matches TF-Slim's central 87.5% crop up to resampling.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from npmobilenet._checks import choice, describe, integer, number
from npmobilenet.data import image
from npmobilenet.data.transforms import Compose, Normalize

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CROP_PCT = 0.875


class Preset(NamedTuple):
    interpolation: str
    crop_pct: float
    mean: tuple
    std: tuple


PRESETS = {
    "timm": Preset("bicubic", CROP_PCT, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "torchvision": Preset("bilinear", CROP_PCT, IMAGENET_MEAN, IMAGENET_STD),
    "keras": Preset("bilinear", CROP_PCT, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "tf": Preset("bilinear", CROP_PCT, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}


def resize_size(size: int, crop_pct: float = CROP_PCT) -> int:
    """The shorter side before the centre crop: ``floor(size / crop_pct)`` (224 -> 256)."""
    return int(math.floor(size / crop_pct))


def eval_steps(size, crop_pct=CROP_PCT, interpolation="bilinear") -> image.ImageTransform:
    """``Resize(floor(size / crop_pct))`` then ``CenterCrop(size)``: images to ``(N, C, size,
    size)`` float32 in [0, 1], not yet normalised."""
    size = integer("eval_transform", "size", size, minimum=1)
    crop_pct = number("eval_transform", "crop_pct", crop_pct, 0, 1, low_open=True)
    steps = [image.Resize(resize_size(size, crop_pct), interpolation), image.CenterCrop(size)]
    return image.ImageTransform(steps)


def train_transform(size, interpolation="bilinear", flip=True, jitter=0.0) -> image.ImageTransform:
    """``RandomResizedCrop(size)``, a horizontal flip (if ``flip``) and, if ``jitter`` > 0,
    ``ColorJitter(jitter, jitter, jitter)``: images to ``(N, C, size, size)`` float32 in
    [0, 1], not yet normalised."""
    steps = [image.RandomResizedCrop(size, interpolation=interpolation)]
    if flip:
        steps.append(image.HorizontalFlip())
    if jitter:
        steps.append(image.ColorJitter(jitter, jitter, jitter))
    return image.ImageTransform(steps)


def eval_transform(size, mean, std, crop_pct=CROP_PCT, interpolation="bilinear") -> Compose:
    """:func:`eval_steps` then ``Normalize(mean, std)``: ``transform(images, rng=None)``."""
    return Compose([eval_steps(size, crop_pct, interpolation), Normalize(mean, std)])


def preset_transform(name: str, size: int = 224) -> Compose:
    """The evaluation transform of a named preset (``timm``, ``torchvision``, ``keras``,
    ``tf``) at ``size``."""
    p = PRESETS[choice("preset_transform", "name", name, tuple(PRESETS))]
    return eval_transform(size, p.mean, p.std, p.crop_pct, p.interpolation)


def preprocess(images, preset: str = "timm", size: int = 224) -> np.ndarray:
    """Images -> the ``(N, 3, size, size)`` float32 batch a model trained with ``preset`` expects.

    ``images``: one image or a list of them, each a Pillow image or an array ``(H, W)`` /
    ``(H, W, 3)`` of uint8 (0-255) or float (0-1); or an ``(N, H, W, 3)`` array. Grey images
    are repeated to RGB.
    """
    transform = preset_transform(preset, size)
    return transform([_rgb(img) for img in _as_list(images)])


def _as_list(images) -> list:
    if isinstance(images, np.ndarray) and images.ndim == 4:
        return list(images)
    return list(images) if isinstance(images, (list, tuple)) else [images]


def _rgb(img):
    from PIL import Image

    if isinstance(img, Image.Image):
        return img.convert("RGB")
    if not isinstance(img, np.ndarray) or img.ndim not in (2, 3):
        raise TypeError(
            "preprocess: each image must be a PIL image or an (H, W) / (H, W, 3) array,"
            f" got {describe(img)}"
        )
    if img.dtype.kind == "f":
        if img.size and not (img.min() >= 0 and img.max() <= 1):
            raise ValueError("preprocess: a float image must hold values in [0, 1]")
        img = np.rint(img * 255.0).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise TypeError(f"preprocess: an image array must be uint8 or float, got {img.dtype}")
    if img.ndim == 3 and img.shape[2] not in (1, 3):
        raise ValueError(f"preprocess: an image must have 1 or 3 channels, got shape {img.shape}")
    return Image.fromarray(img.reshape(img.shape[:2]) if img.ndim == 3 and img.shape[2] == 1
                           else img).convert("RGB")  # fmt: skip
