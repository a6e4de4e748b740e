"""Label and image values that do not fit the training dtypes are refused with their true value."""

from __future__ import annotations

import numpy as np
import pytest

from npmobilenet.data import ArrayDataset, load_npz


def test_uint64_label_beyond_int64_is_reported_with_its_true_value(tmp_path):
    y = np.array([0, 1, 2**63 + 5, 1], dtype=np.uint64)
    x = np.zeros((4, 1, 8, 8), np.float32)
    with pytest.raises(ValueError, match=r"got 9223372036854775813 at index 2"):
        ArrayDataset(x, y)
    path = tmp_path / "d.npz"
    np.savez(path, x=x, y=y)
    with pytest.raises(ValueError, match=r"load_npz: y must be class indices.*9223372036854775813"):
        load_npz(path)


def test_float64_images_beyond_float32_are_refused_not_made_inf(tmp_path):
    x = np.zeros((5, 1, 8, 8))
    x[3, 0, 2, 1] = -1e300
    path = tmp_path / "d.npz"
    np.savez(path, x=x, y=np.arange(5) % 2)
    with pytest.raises(ValueError, match=r"load_npz: x\[3\] holds -1e\+300, beyond float32"):
        load_npz(path)
    x[3, 0, 2, 1] = 3.0e38  # within float32's range: loads, and stays finite
    np.savez(path, x=x, y=np.arange(5) % 2)
    train, _ = load_npz(path)
    assert np.isfinite(train.x).all() and train.x[3, 0, 2, 1] == np.float32(3.0e38)
