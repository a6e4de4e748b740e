"""Arrays from an ``.npz`` file: ``x``, ``y`` and optionally ``x_test``, ``y_test``, ``classes``.

Loaded with ``allow_pickle=False`` (an ``.npz`` holding Python objects is refused: unpickling
can run arbitrary code). ``x`` is ``(N, C, H, W)``: float (cast to float32) or uint8 (scaled
by 1/255 to [0, 1]). ``y`` holds integer labels in ``[0, num_classes)``, where ``num_classes``
is the argument, else the length of ``classes`` (an array of strings) if stored, else the
largest label + 1.
"""

from __future__ import annotations

import os
import zipfile

import numpy as np

from npmobilenet._checks import integer
from npmobilenet.data.dataset import ArrayDataset, check_label_range, labels

OP = "load_npz"


def load_npz(path, num_classes=None):
    """``(train, test)`` :class:`ArrayDataset` s from an ``.npz``; ``test`` is None without
    ``x_test``/``y_test``."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{OP}: the data path {path!r} does not exist or is not a file")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except ValueError as err:  # object arrays need pickle
        raise ValueError(f"{OP}: {path!r} cannot be read without pickle ({err})") from None
    except (OSError, zipfile.BadZipFile) as err:
        raise ValueError(f"{OP}: {path!r} is not a readable .npz file ({err})") from None
    missing = [k for k in ("x", "y") if k not in arrays]
    if missing:
        raise ValueError(f"{OP}: {path!r} lacks array(s) {missing}; it has {sorted(arrays)}")
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise ValueError(f"{OP}: {path!r} must have both x_test and y_test, or neither")
    classes = None
    if "classes" in arrays:
        classes = [str(c) for c in arrays["classes"].reshape(-1)]
    y_all = [labels(OP, k, arrays[k], len(arrays[k])) for k in ("y", "y_test") if k in arrays]
    if num_classes is not None:
        num_classes = integer(OP, "num_classes", num_classes, minimum=1)
        if classes is not None and len(classes) != num_classes:
            raise ValueError(
                f"{OP}: num_classes={num_classes} but {path!r} names {len(classes)} classes"
            )
    elif classes is not None:
        num_classes = len(classes)
    else:
        num_classes = int(max(y.max(initial=0) for y in y_all)) + 1
    if classes is None:
        classes = [str(i) for i in range(num_classes)]
    train = _dataset(arrays, "x", "y", classes)
    test = _dataset(arrays, "x_test", "y_test", classes) if "x_test" in arrays else None
    if test is not None and test.x.shape[1:] != train.x.shape[1:]:
        raise ValueError(
            f"{OP}: x_test images have shape {test.x.shape[1:]} but x images {train.x.shape[1:]}"
        )
    return train, test


def _dataset(arrays, xk, yk, classes):
    x = arrays[xk]
    if x.dtype == np.uint8:
        x = x.astype(np.float32) / 255.0
    elif x.dtype.kind == "f":
        _check_float32_range(xk, x)
        x = x.astype(np.float32)
    else:
        raise TypeError(f"{OP}: {xk} must be float or uint8 images, got dtype {x.dtype}")
    if x.ndim != 4:
        raise ValueError(f"{OP}: {xk} must be 4-D (N, C, H, W), got shape {x.shape}")
    y = labels(OP, yk, arrays[yk], len(x))
    check_label_range(OP, yk, y, len(classes))
    return ArrayDataset(x, y, classes, name=OP)


def _check_float32_range(xk: str, x: np.ndarray) -> None:
    """Refuse finite values that float32 cannot hold (the cast would make them inf)."""
    if x.dtype.itemsize <= 4 or x.size == 0:
        return
    big = np.abs(x.reshape(len(x), -1)) > np.finfo(np.float32).max  # (N, C*H*W); nan: False
    rows = np.flatnonzero(big.any(axis=1))
    if len(rows):
        i = int(rows[0])
        v = float(x[i].reshape(-1)[np.argmax(big[i])])
        raise ValueError(
            f"{OP}: {xk}[{i}] holds {v:.6g}, beyond float32's range (max"
            f" {float(np.finfo(np.float32).max):.6g}); images are trained in float32, so scale"
            " them (e.g. to [0, 1]) first"
        )
