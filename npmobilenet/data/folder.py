"""An image folder: ``root/<class name>/<image>.png|.jpg``, read with Pillow, loaded eagerly.

Each image is converted to the model's channels (palette and transparency first resolved to
RGBA; alpha is composited onto a white background, as an image viewer shows it; then Pillow's
``convert("L")`` or ``"RGB"``), its shorter side resized to ``resolution`` (Pillow bilinear,
which antialiases when shrinking), then centre-cropped to ``resolution`` x ``resolution`` and
scaled to [0, 1].

Everything is decoded once, at construction, into one float32 array of
``N * channels * resolution**2 * 4`` bytes: 61 MB for 5,000 RGB images at 32x32, but 3 GB at
224x224, so this reader is meant for small sets. A file that Pillow cannot read is skipped
with a warning naming it and listed in ``skipped``; ``summary`` says how many.
"""

from __future__ import annotations

import os
import warnings

import numpy as np

from npmobilenet._checks import INSTALL_HINT as HINT
from npmobilenet.data.dataset import ArrayDataset, check_channels, check_resolution

OP = "ImageFolder"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


class ImageFolder(ArrayDataset):
    """``ImageFolder(root, resolution=32, channels=3)``: classes are the sorted subfolder names.

    Attributes: ``x`` ``(N, channels, resolution, resolution)`` float32, ``y`` ``(N,)`` int64,
    ``classes``, ``files`` (the path of each image), ``skipped`` (unreadable files) and
    ``summary`` (one line). Errors: a missing root, no class folders, a class with no images.
    """

    def __init__(self, root, resolution=32, channels=3):
        resolution = check_resolution(OP, resolution)
        channels = check_channels(OP, channels)
        try:
            import PIL  # noqa: F401
        except ImportError:
            raise ImportError(
                f"{OP}: reading images needs Pillow; install it with: {HINT}"
            ) from None
        self.root = os.fspath(root)
        classes = _class_folders(self.root)
        images, ys, self.files, self.skipped = [], [], [], []
        for label, cls in enumerate(classes):
            folder = os.path.join(self.root, cls)
            paths = _image_files(folder)
            if not paths:
                raise ValueError(
                    f"{OP}: class folder {folder!r} has no images ({', '.join(IMAGE_EXTENSIONS)})"
                )
            for path in paths:
                img = _read(path, resolution, channels)
                if img is None:
                    self.skipped.append(path)
                    continue
                images.append(img)
                ys.append(label)
                self.files.append(path)
            if not ys or ys[-1] != label:
                raise ValueError(
                    f"{OP}: class folder {folder!r} has no readable images"
                    f" (all {len(paths)} files were skipped)"
                )
        super().__init__(np.stack(images), np.asarray(ys, dtype=np.int64), classes, name=OP)
        self.summary = (
            f"{self.root}: {len(self)} images in {len(classes)} classes"
            f" ({resolution}x{resolution}, {channels} channel(s))"
            + (f"; skipped {len(self.skipped)} unreadable file(s)" if self.skipped else "")
        )


def _class_folders(root: str) -> list[str]:
    if not os.path.exists(root):
        raise FileNotFoundError(f"{OP}: the data path {root!r} does not exist")
    if not os.path.isdir(root):
        raise NotADirectoryError(
            f"{OP}: {root!r} is a file; expected a folder with one subfolder per class"
        )
    classes = sorted(d.name for d in os.scandir(root) if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise ValueError(
            f"{OP}: {root!r} has no class subfolders; expected root/<class name>/<image files>"
        )
    return classes


def _read(path: str, resolution: int, channels: int):
    """The image at ``path`` as ``(channels, R, R)``, or None (with a warning) if unreadable."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return load_image(img, resolution, channels)
    except (OSError, ValueError, SyntaxError) as err:
        warnings.warn(f"{OP}: skipped {path}: not a readable image ({err})", stacklevel=3)
        return None


def _image_files(folder: str) -> list[str]:
    names = sorted(
        n
        for n in os.listdir(folder)
        if n.lower().endswith(IMAGE_EXTENSIONS) and not n.startswith(".")
    )
    return [os.path.join(folder, n) for n in names]


def load_image(img, resolution: int, channels: int) -> np.ndarray:
    """A PIL image -> ``(channels, resolution, resolution)`` float32 in [0, 1].

    Shorter side resized to ``resolution`` (bilinear), then the centre crop (offsets rounded as
    torchvision's ``CenterCrop``).
    """
    from PIL import Image

    img.load()  # decode now, so a truncated file fails here
    if img.mode == "P" or "transparency" in img.info or img.mode in ("LA", "PA", "RGBA"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    img = img.convert("L" if channels == 1 else "RGB")
    w, h = img.size
    scale = resolution / min(w, h)
    nw, nh = max(resolution, round(w * scale)), max(resolution, round(h * scale))
    img = img.resize((nw, nh), Image.BILINEAR)
    left, top = int(round((nw - resolution) / 2.0)), int(round((nh - resolution) / 2.0))
    img = img.crop((left, top, left + resolution, top + resolution))
    a = np.asarray(img, dtype=np.float32) / 255.0  # (R, R) or (R, R, 3)
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)  # (channels, R, R)
