"""Reading one image file into an 8-bit Pillow image with the model's channel count.

Every image reader in this package decodes through :func:`decode`, so all of them agree on:

- transparency (palette, ``LA``, ``RGBA`` ...): composited onto white, as a viewer shows it;
- more than 8 bits per sample: 16-bit PNGs (grey ``I;16`` or, in older Pillow, ``I``) are
  scaled by ``255 / 65535``, integer TIFFs by 255 over their type's largest value
  (``2**31 - 1`` for Pillow's signed 32-bit mode ``I``), float images
  (mode ``F``) are taken as values in [0, 1] and scaled by 255; all rounded to the nearest
  8-bit level, never clipped. A float image outside [0, 1], or a negative integer one, is
  refused rather than guessed at. 16-bit RGB PNGs are reduced to 8 bits by Pillow itself;
- channels: grey to RGB by repetition, RGB to grey by Pillow's ``convert("L")`` (ITU-R 601-2
  luma).

A file Pillow cannot read, a truncated one, or one larger than Pillow's decompression-bomb
limit (``PIL.Image.MAX_IMAGE_PIXELS`` times two) raises one of :func:`unreadable`; the
folder readers skip it with a warning naming it.
"""

from __future__ import annotations

import numpy as np

from npmobilenet._checks import INSTALL_HINT as HINT

GREY_MODES = ("1", "L", "LA", "La", "I", "F", "I;16", "I;16B", "I;16L", "I;16N")


def pil(op: str):
    """The ``PIL.Image`` module, or an ImportError saying how to install Pillow."""
    try:
        from PIL import Image
    except ImportError:
        raise ImportError(f"{op}: reading images needs Pillow; install it with: {HINT}") from None
    return Image


def unreadable() -> tuple:
    """The exception classes that mean "this file is not a usable image"."""
    Image = pil("decode")
    return (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def header_mode(path: str) -> str:
    """The Pillow mode of the image at ``path``, read from its header only (no decoding)."""
    Image = pil("decode")
    with Image.open(path) as img:
        return img.mode


def is_grey(mode: str) -> bool:
    """Whether an image of this Pillow mode has one colour channel."""
    return mode in GREY_MODES


def decode(path: str, channels: int):
    """The image at ``path`` as a Pillow image in mode ``"L"`` (channels 1) or ``"RGB"`` (3).

    Raises one of :func:`unreadable` for a file that is not a usable image.
    """
    Image = pil("decode")
    with Image.open(path) as img:
        img.load()  # decode now, so a truncated file fails here
        img = to_8bit(img)
    return img.convert("L" if channels == 1 else "RGB")


def to_8bit(img):
    """A decoded Pillow image as mode ``"L"``, ``"RGB"`` or another 8-bit mode (see above)."""
    Image = pil("decode")
    if img.mode == "P" or "transparency" in img.info or img.mode in ("LA", "La", "PA", "RGBA"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba)
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        return Image.fromarray(_scaled_levels(img), "L")
    return img


def _integer_top(img) -> float:
    """The largest value of an integer image's sample type: 65535 for 16-bit PNGs; for TIFFs
    from the BitsPerSample and SampleFormat tags (``2**bits - 1``, or ``2**(bits-1) - 1`` if
    signed); 32-bit signed otherwise."""
    if img.mode.startswith("I;16") or img.format == "PNG":
        return 65535.0
    tags = getattr(img, "tag_v2", {})
    bits = tags.get(258, (32,))
    bits = int(bits[0] if isinstance(bits, tuple) else bits)
    signed = tags.get(339, 2) in (2, (2,))
    return 2.0 ** (bits - 1 if signed else bits) - 1


def _scaled_levels(img) -> np.ndarray:
    """A high-bit-depth grey image ``(H, W)`` as uint8 levels, scaled (not clipped)."""
    a = np.asarray(img)
    if img.mode == "F":
        lo, hi, top = float(np.nanmin(a)), float(np.nanmax(a)), 1.0
        if not (0.0 <= lo and hi <= 1.0):
            raise ValueError(
                f"a float image must hold values in [0, 1], this one holds [{lo:g}, {hi:g}]"
            )
    else:
        if a.size and a.min() < 0:
            raise ValueError(f"an integer image must not be negative, got {int(a.min())}")
        top = _integer_top(img)
    return np.rint(a.astype(np.float64) * (255.0 / top)).astype(np.uint8)
