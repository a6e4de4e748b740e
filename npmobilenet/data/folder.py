"""Image folders ``root/<class name>/<image>.png|.jpg``, read with Pillow.

:class:`LazyImageFolder` (what ``npmobilenet train`` uses for folders) scans the file names and
reads each file's header once, to find unreadable files and grey images up front; it decodes
images only when a batch asks for them, so its memory is O(batch) whatever the folder's size.
An optional cache keeps decoded images as uint8, up to ``cache_mb`` megabytes. Indexing returns
a list of decoded Pillow images (sizes vary) for a per-image transform such as
:class:`~npmobilenet.data.image.ImageTransform` to bring to one size.

:class:`ImageFolder` decodes everything at once into one float32 array ``x``: convenient for a
small set in a notebook (``channel_stats``, plotting, NumPy), but ``N * C * R**2 * 4`` bytes:
3 GB for 5,000 RGB images at 224x224.

Decoding (transparency, 16-bit images, channels) is :mod:`npmobilenet.data.decode`'s. A file
Pillow cannot read is skipped with a warning naming it and listed in ``skipped``.
"""

from __future__ import annotations

import os
import threading
import warnings

import numpy as np

from npmobilenet._checks import integer
from npmobilenet.data.dataset import ArrayDataset, Labelled, check_channels, check_resolution
from npmobilenet.data.decode import decode, header_mode, is_grey, pil, unreadable

OP = "ImageFolder"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class ImageCache:
    """Decoded images (uint8 arrays) by path, up to ``megabytes`` in total; thread-safe.

    Images arriving once the budget is spent are not stored. ``megabytes=0``: no cache."""

    def __init__(self, megabytes=0):
        self.limit = integer("ImageCache", "megabytes", megabytes, minimum=0) * 2**20
        self.used = 0
        self._images, self._lock = {}, threading.Lock()

    def get(self, path):
        return self._images.get(path)

    def put(self, path, array: np.ndarray) -> None:
        with self._lock:
            if path not in self._images and self.used + array.nbytes <= self.limit:
                self._images[path] = array
                self.used += array.nbytes


class ImageFiles(Labelled):
    """Image files with labels, decoded on demand: ``files`` (paths), ``y`` ``(N,)`` int64,
    ``classes``, ``channels`` (1 or 3).

    ``dataset[indices]`` -> ``(images, y)``: the decoded Pillow images (mode ``"L"`` or
    ``"RGB"``) of the readable files among ``indices`` and their labels. An unreadable file is
    left out of its batch, added to ``skipped`` and reported once through ``warn(message)``
    (default: ``warnings.warn``). ``cache``: an :class:`ImageCache`, or None.
    """

    def __init__(self, files, y, classes, channels, cache=None, warn=None, skipped=None):
        self.files, self.classes = list(files), list(classes)
        self.y = np.asarray(y, dtype=np.int64)
        self.channels = check_channels(OP, channels)
        self.cache, self.warn = cache, warn
        self.skipped = skipped if skipped is not None else []

    def __getitem__(self, idx):
        if isinstance(idx, slice):
            idx = range(*idx.indices(len(self)))
        idx = np.atleast_1d(np.asarray(idx, dtype=np.int64))  # (B,)
        images, keep = [], []
        for i in idx:
            img = self.load(self.files[i])
            if img is not None:
                images.append(img)
                keep.append(i)
        return images, self.y[np.asarray(keep, dtype=np.int64)]

    def load(self, path: str):
        """The decoded image at ``path`` (from the cache if there), or None if unreadable."""
        Image = pil(OP)
        cached = self.cache.get(path) if self.cache is not None else None
        if cached is not None:
            return Image.fromarray(cached)
        try:
            img = decode(path, self.channels)
        except unreadable() as err:
            self._skip(path, err)
            return None
        if self.cache is not None and self.cache.limit:
            self.cache.put(path, np.asarray(img))
        return img

    def _skip(self, path: str, err) -> None:
        if path in self.skipped:
            return
        self.skipped.append(path)
        message = f"{OP}: skipped {path}: not a readable image ({err})"
        if self.warn is None:
            warnings.warn(message, stacklevel=4)
        else:
            self.warn(message)

    def subset(self, indices) -> ImageFiles:
        """The files at ``indices``, sharing this dataset's cache and ``skipped`` list."""
        indices = np.asarray(indices, dtype=np.int64)
        files = [self.files[i] for i in indices]
        return ImageFiles(files, self.y[indices], self.classes, self.channels, self.cache,
                          self.warn, self.skipped)  # fmt: skip

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} images, {self.num_classes} classes)"


class LazyImageFolder(ImageFiles):
    """``LazyImageFolder(root, channels=None, cache_mb=0, warn=None, progress=False)``.

    Classes are the sorted subfolder names (at least 2). ``channels`` None: 1 if every image
    is grey, else 3. The scan reads each header (Pillow's ``open``, no decoding), with a tqdm
    bar on stderr when ``progress`` and tqdm is installed. ``summary``: one line.
    """

    def __init__(self, root, channels=None, cache_mb=0, warn=None, progress=False):
        if channels is not None:
            channels = check_channels(OP, channels)
        cache = ImageCache(cache_mb)
        pil(OP)
        self.root = os.fspath(root)
        classes = class_folders(self.root)
        files, ys = [], []
        for label, cls in enumerate(classes):
            paths = image_files(os.path.join(self.root, cls))
            files += paths
            ys += [label] * len(paths)
        super().__init__(files, ys, classes, channels or 3, cache, warn)
        found = np.bincount(self.y, minlength=len(classes))
        grey = self._scan_headers(progress)
        self.channels = channels or (1 if grey else 3)
        require_every_class(self.root, classes, self.y, found)
        self.summary = (
            f"{self.root}: {len(self)} images in {len(classes)} classes ({self.channels}"
            f" channel(s){'' if channels else ', inferred'})"
            + (f"; skipped {len(self.skipped)} unreadable file(s)" if self.skipped else "")
        )

    def _scan_headers(self, progress) -> bool:
        """Drop the files whose header Pillow cannot read; True if every other one is grey."""
        bar = _bar(len(self.files), progress)
        keep, grey = [], True
        for i, path in enumerate(self.files):
            try:
                grey = is_grey(header_mode(path)) and grey
                keep.append(i)
            except unreadable() as err:
                self._skip(path, err)
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        self.files = [self.files[i] for i in keep]
        self.y = self.y[np.asarray(keep, dtype=np.int64)]
        return grey


def require_every_class(root: str, classes, y: np.ndarray, found: np.ndarray) -> None:
    """A ValueError naming the first class with no readable image left in ``y``."""
    left = np.bincount(y, minlength=len(classes))
    for label, cls in enumerate(classes):
        if left[label] == 0:
            raise ValueError(
                f"{OP}: class folder {os.path.join(root, cls)!r} has no readable images"
                f" (all {found[label]} files were skipped)"
            )


def _bar(total: int, progress):
    if not progress:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc="scanning images", unit="file", leave=False)


class ImageFolder(ArrayDataset):
    """``ImageFolder(root, resolution=32, channels=None)``, decoded at once into ``x``.

    Each image's shorter side is resized to ``resolution`` (Pillow bilinear, which antialiases
    when shrinking), then the centre ``resolution`` x ``resolution`` crop is kept and scaled
    to [0, 1]. ``channels`` None: 1 if every image is grey, else 3.

    Attributes: ``x`` ``(N, channels, resolution, resolution)`` float32, ``y`` ``(N,)`` int64,
    ``classes``, ``files``, ``skipped`` (unreadable files) and ``summary`` (one line).
    Errors: a missing root, fewer than 2 class folders, a class with no readable images.
    """

    def __init__(self, root, resolution=32, channels=None):
        from npmobilenet.data.image import CenterCrop, ImageTransform, Resize

        resolution = check_resolution(OP, resolution)
        lazy = LazyImageFolder(root, channels, warn=lambda m: warnings.warn(m, stacklevel=4))
        images, y = lazy[np.arange(len(lazy))]
        require_every_class(lazy.root, lazy.classes, y, np.bincount(lazy.y))
        x = ImageTransform([Resize(resolution), CenterCrop(resolution)])(images)
        super().__init__(x, y, lazy.classes, name=OP)
        self.root, self.skipped = lazy.root, lazy.skipped
        self.files = [f for f in lazy.files if f not in set(lazy.skipped)]
        self.summary = (
            f"{self.root}: {len(self)} images in {len(self.classes)} classes"
            f" ({resolution}x{resolution}, {lazy.channels} channel(s))"
            + (f"; skipped {len(self.skipped)} unreadable file(s)" if self.skipped else "")
        )


def class_folders(root: str) -> list[str]:
    """The sorted class subfolder names of ``root`` (at least 2)."""
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
    if len(classes) < 2:
        raise ValueError(
            f"{OP}: {root!r} has one class folder ({classes[0]!r}): need at least 2 classes"
            " (one subfolder per class)"
        )
    return classes


def image_files(folder: str) -> list[str]:
    """The image files in ``folder`` (by extension, hidden files left out), sorted by name."""
    names = sorted(
        n
        for n in os.listdir(folder)
        if n.lower().endswith(IMAGE_EXTENSIONS) and not n.startswith(".")
    )
    if not names:
        raise ValueError(
            f"{OP}: class folder {folder!r} has no images ({', '.join(IMAGE_EXTENSIONS)})"
        )
    return [os.path.join(folder, n) for n in names]
