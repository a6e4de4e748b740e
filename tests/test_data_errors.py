"""Every bad data input gets a clear error (or warning) naming the problem."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from PIL import Image

from npmobilenet.data import (
    ArrayDataset,
    DataLoader,
    ImageFolder,
    Normalize,
    RandomCrop,
    RandomHorizontalFlip,
    load_cifar10,
    load_digits_dataset,
    load_npz,
)

# ----- digits ---------------------------------------------------------------------------------


def test_digits_without_scikit_learn_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match=r'scikit-learn.*pip install "\.\[demo\]"'):
        load_digits_dataset()


@pytest.mark.parametrize(
    "kw,exc,match",
    [
        (dict(resolution=0), ValueError, r"load_digits_dataset: resolution must be >= 1, got 0"),
        (dict(resolution=32.0), TypeError, r"resolution must be an int, got float"),
        (dict(channels=2), ValueError, r"channels must be 1 \(grayscale\) or 3 \(RGB\), got 2"),
        (dict(test_fraction=1.0), ValueError, r"test_fraction must be < 1"),
        (dict(seed=-1), ValueError, r"seed must be >= 0"),
    ],
)
def test_digits_bad_arguments(kw, exc, match):
    with pytest.raises(exc, match=match):
        load_digits_dataset(**kw)


# ----- image folder ---------------------------------------------------------------------------


def test_image_folder_without_pillow_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(ImportError, match=r'needs Pillow; .*pip install "\.\[demo\]"'):
        ImageFolder(tmp_path)


def test_image_folder_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"ImageFolder: the data path .*nope.* not exist"):
        ImageFolder(tmp_path / "nope")


def test_image_folder_given_a_file(tmp_path):
    (tmp_path / "f.png").write_bytes(b"")
    with pytest.raises(NotADirectoryError, match=r"is a file; expected a folder"):
        ImageFolder(tmp_path / "f.png")


def test_image_folder_without_classes(tmp_path):
    (tmp_path / "loose.png").write_bytes(b"")
    with pytest.raises(ValueError, match=r"has no class subfolders; expected root/<class name>"):
        ImageFolder(tmp_path)


def test_image_folder_with_an_empty_class(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "a" / "x.png")
    (tmp_path / "b" / "readme.txt").write_text("no images here")
    with pytest.raises(ValueError, match=r"class folder .*b' has no images"):
        ImageFolder(tmp_path)


def test_image_folder_class_of_only_corrupt_files(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "bad.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (tmp_path / "b").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "b" / "good.png")
    with pytest.warns(UserWarning, match=r"skipped .*bad\.jpg"):
        with pytest.raises(ValueError, match=r"has no readable images \(all 1 files were skipped"):
            ImageFolder(tmp_path)


def test_image_folder_truncated_image_is_skipped_with_a_warning(tmp_path):
    (tmp_path / "a").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "a" / "good.png")
    (tmp_path / "b").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "b" / "good.png")
    Image.effect_noise((64, 64), 50).save(tmp_path / "a" / "cut.png")
    data = (tmp_path / "a" / "cut.png").read_bytes()
    (tmp_path / "a" / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.warns(UserWarning, match=r"ImageFolder: skipped .*cut\.png"):
        ds = ImageFolder(tmp_path, resolution=4)
    assert len(ds) == 2 and ds.skipped[0].endswith("cut.png")


def test_image_folder_bad_channels(tmp_path):
    with pytest.raises(ValueError, match=r"ImageFolder: channels must be 1 .* or 3 .*, got 4"):
        ImageFolder(tmp_path, channels=4)


# ----- npz ------------------------------------------------------------------------------------

X = np.zeros((3, 1, 2, 2), np.float32)


@pytest.mark.parametrize(
    "arrays,kw,exc,match",
    [
        (dict(x=X, y=np.array([0, 1, 3]), classes=np.array(["a", "b", "c"])), {}, ValueError,
         r"load_npz: y must be class indices in \[0, 3\), got 3 at index 2"),
        (dict(x=X, y=np.array([0, 1, 5])), dict(num_classes=2), ValueError,
         r"y must be class indices in \[0, 2\), got 5 at index 2 \(1 label"),
        (dict(x=X, y=np.array([0, -1, 1])), {}, ValueError, r"got -1 at index 1"),
        (dict(x=X, y=np.array([0, 1, 1]), x_test=X, y_test=np.array([0, 2, 9])),
         dict(num_classes=2), ValueError, r"y_test must be class indices in \[0, 2\), got 2"),
        (dict(x=X, y=np.array([0.0, 1.0, 1.0])), {}, TypeError,
         r"y must hold integer class labels, got dtype float64"),
        (dict(x=X, y=np.array([0, 1])), {}, ValueError,
         r"y must have shape \(3,\) .*got shape \(2,\)"),
        (dict(x=X[:, 0], y=np.array([0, 1, 1])), {}, ValueError,
         r"x must be 4-D \(N, C, H, W\), got shape \(3, 2, 2\)"),
        (dict(x=X.astype(np.int32), y=np.array([0, 1, 1])), {}, TypeError,
         r"x must be float or uint8 images, got dtype int32"),
        (dict(x=X), {}, ValueError, r"lacks array\(s\) \['y'\]; it has \['x'\]"),
        (dict(x=X, y=np.array([0, 1, 1]), x_test=X), {}, ValueError, r"both x_test and y_test"),
        (dict(x=X, y=np.array([0, 1, 1]), classes=np.array(["a", "b"])), dict(num_classes=3),
         ValueError, r"num_classes=3 but .* names 2 classes"),
    ],
)  # fmt: skip
def test_npz_bad_contents(tmp_path, arrays, kw, exc, match):
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(exc, match=match):
        load_npz(tmp_path / "d.npz", **kw)


def test_npz_with_pickled_objects_is_refused(tmp_path):
    np.savez(
        tmp_path / "d.npz", x=X, y=np.array([0, 1, 1]), meta=np.array([{"a": 1}], dtype=object)
    )
    with pytest.raises(ValueError, match=r"load_npz: .*d\.npz' cannot be read without pickle"):
        load_npz(tmp_path / "d.npz")


def test_npz_missing_or_not_a_zip(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"load_npz: the data path .*gone\.npz"):
        load_npz(tmp_path / "gone.npz")
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ValueError, match=r"load_npz: .*bad\.npz' is not a readable \.npz file"):
        load_npz(tmp_path / "bad.npz")


# ----- CIFAR ----------------------------------------------------------------------------------


def _write_cifar(folder, labels, cut=0):
    recs = np.zeros((len(labels), 3073), np.uint8)
    recs[:, 0] = labels
    data = recs.tobytes()
    for name in ("data_batch_1.bin", "test_batch.bin"):
        (folder / name).write_bytes(data[: len(data) - cut])


def test_cifar_truncated_file(tmp_path):
    _write_cifar(tmp_path, [1, 2], cut=100)
    with pytest.raises(ValueError, match=r"data_batch_1\.bin' has 6046 bytes, not a whole number"):
        load_cifar10(tmp_path)


def test_cifar_label_out_of_range(tmp_path):
    _write_cifar(tmp_path, [1, 10])
    with pytest.raises(ValueError, match=r"labels in .*must be class indices in \[0, 10\), got 10"):
        load_cifar10(tmp_path)


def test_cifar_missing_folder_or_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"load_cifar10: the data path .*nope"):
        load_cifar10(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=r"must contain data_batch_\*\.bin and test_batch"):
        load_cifar10(tmp_path)


# ----- datasets, loader, transforms -----------------------------------------------------------


def _ds(n=5):
    return ArrayDataset(np.zeros((n, 1, 2, 2), np.float32), np.zeros(n, np.int64), ["a"])


@pytest.mark.parametrize(
    "make,exc,match",
    [
        (lambda: DataLoader(_ds(), batch_size=0), ValueError,
         r"DataLoader: batch_size must be >= 1, got 0"),
        (lambda: DataLoader(_ds(), batch_size=2.5), TypeError, r"batch_size must be an int"),
        (lambda: DataLoader(_ds(), 2, shuffle="yes"), TypeError, r"shuffle must be a bool"),
        (lambda: DataLoader(_ds(), 2, seed=-3), ValueError, r"seed must be >= 0"),
        (lambda: DataLoader(_ds(), 2, transform="flip"), TypeError, r"transform must be callable"),
        (lambda: DataLoader(42, 2), TypeError, r"dataset must support len\(\) and indexing"),
        (lambda: DataLoader(_ds(0), 2), ValueError, r"DataLoader: the dataset is empty"),
        (lambda: DataLoader(_ds(), 8, drop_last=True), ValueError,
         r"batch_size 8 is larger than the dataset \(5 samples\) and drop_last=True"),
        (lambda: DataLoader(_ds(), 2).load_state_dict({"epoch": 1}), ValueError,
         r"expected keys seed, epoch, batch"),
        (lambda: DataLoader(_ds(), 2).load_state_dict({"seed": 0, "epoch": 0, "batch": 3}),
         ValueError, r"batch 3 is past the 3 batches per epoch"),
        (lambda: ArrayDataset(np.zeros((2, 3, 3)), np.zeros(2, np.int64)), ValueError,
         r"ArrayDataset: x must be 4-D, got 3-D"),
        (lambda: ArrayDataset(np.zeros((2, 1, 3, 3)), np.array([0, 2]), ["a", "b"]), ValueError,
         r"y must be class indices in \[0, 2\), got 2"),
        (lambda: Normalize([0.5], [0.0]), ValueError, r"Normalize: every std must be > 0"),
        (lambda: Normalize([0.5, 0.5], [1.0]), ValueError, r"one value per channel each"),
        (lambda: Normalize([0.5], [1.0])(np.zeros((1, 3, 2, 2))), ValueError,
         r"x has 3 channels but mean/std have 1 values"),
        (lambda: RandomCrop(5, padding=1)(np.zeros((1, 1, 2, 2)), np.random.default_rng()),
         ValueError, r"RandomCrop: crop 5x5 is larger than the padded image 4x4"),
        (lambda: RandomCrop(3, padding=-1), ValueError, r"padding must be >= 0"),
        (lambda: RandomHorizontalFlip(2), ValueError, r"RandomHorizontalFlip: p must be <= 1"),
    ],
)  # fmt: skip
def test_loader_and_transform_bad_arguments(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


# ----- odd .npz files: one line naming the file ------------------------------------------------


def test_npz_empty_file_npy_renamed_and_zero_images(tmp_path):
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=r"load_npz: '.*empty\.npz' is empty \(0 bytes\)"):
        load_npz(empty)
    renamed = tmp_path / "array.npz"
    with open(renamed, "wb") as f:
        np.save(f, np.zeros((2, 1, 4, 4), np.float32))
    with pytest.raises(ValueError, match=r"'.*array\.npz' holds a single array \(a \.npy file\)"):
        load_npz(renamed)
    none = tmp_path / "none.npz"
    np.savez(none, x=np.zeros((0, 1, 4, 4), np.float32), y=np.zeros(0, np.int64))
    with pytest.raises(ValueError, match=r"'.*none\.npz': x holds zero images"):
        load_npz(none)
    for path in (empty, renamed, none):
        with pytest.raises(ValueError) as err:
            load_npz(path)
        assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_npz_channels_last_is_refused_or_transposed_when_told(tmp_path):
    x = np.random.default_rng(0).random((4, 32, 32, 3)).astype(np.float32)  # (N, H, W, C)
    path = tmp_path / "nhwc.npz"
    np.savez(path, x=x, y=np.array([0, 1, 0, 1]))
    with pytest.raises(ValueError, match=r"looks channels-last .*x\.transpose\(0, 3, 1, 2\)"):
        load_npz(path)
    train, _ = load_npz(path, layout="nhwc")
    assert train.x.shape == (4, 3, 32, 32)
    np.testing.assert_array_equal(train.x[2, 1], x[2, :, :, 1])
    train, _ = load_npz(path, layout="nchw")  # explicitly as stored: 32 channels of 32x3
    assert train.x.shape == (4, 32, 32, 3)
