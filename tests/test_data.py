"""Data readers, the loader and the transforms against independent expectations."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from PIL import Image

from npmobilenet.data import (
    ArrayDataset,
    DataLoader,
    ImageFolder,
    load_cifar10,
    load_digits_dataset,
    load_npz,
    resize_bilinear,
)
from npmobilenet.data.transforms import (
    Compose,
    Normalize,
    RandomCrop,
    RandomHorizontalFlip,
    channel_stats,
)

# ----- digits ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits():
    return load_digits_dataset()


def test_digits_shapes_and_values(digits):
    train, test = digits
    assert train.x.shape == (1437, 3, 32, 32) and test.x.shape == (360, 3, 32, 32)
    assert train.x.dtype == np.float32 and train.y.dtype == np.int64
    assert 0.0 == min(train.x.min(), test.x.min()) and max(train.x.max(), test.x.max()) == 1.0
    assert train.classes == [str(d) for d in range(10)]
    np.testing.assert_array_equal(train.x[:, 0], train.x[:, 2])  # grey repeated into RGB


def test_digits_split_is_stratified_disjoint_and_complete():
    from sklearn.datasets import load_digits

    raw = load_digits()
    train, test = load_digits_dataset(resolution=8, channels=1)  # 8 -> 8: no resampling
    counts = np.bincount(raw.target)
    assert np.all(np.abs(np.bincount(test.y, minlength=10) - 0.2 * counts) < 1)
    both = np.concatenate([train.x, test.x])[:, 0].reshape(len(raw.target), -1)
    both_y = np.concatenate([train.y, test.y])
    expected = (raw.images / 16.0).astype(np.float32).reshape(len(raw.target), -1)
    # the same (image, label) pairs as scikit-learn's, compared as multisets
    pairs = lambda xs, ys: sorted(bytes(x) + bytes([y]) for x, y in zip(xs, ys))  # noqa: E731
    assert pairs(both, both_y) == pairs(expected, raw.target)


def test_digits_split_is_deterministic_and_seeded(digits):
    again = load_digits_dataset()
    np.testing.assert_array_equal(again[1].x, digits[1].x)
    other = load_digits_dataset(seed=1)
    assert not np.array_equal(other[1].x, digits[1].x)


@pytest.mark.torch
@pytest.mark.parametrize("shape,size", [((2, 3, 8, 8), 32), ((1, 2, 5, 7), 13), ((1, 1, 9, 9), 4)])
def test_resize_bilinear_matches_torch_interpolate(torch, shape, size):
    x = np.random.default_rng(0).random(shape)
    ref = torch.nn.functional.interpolate(
        torch.from_numpy(x), size=(size, size), mode="bilinear", align_corners=False
    )
    np.testing.assert_allclose(resize_bilinear(x, size), ref.numpy(), rtol=1e-12, atol=1e-12)


# ----- image folder ---------------------------------------------------------------------------


def _save(path, mode, size, colour, fmt=None):
    Image.new(mode, size, colour).save(path, fmt)


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "cat").mkdir()
    (tmp_path / "dog").mkdir()
    _save(tmp_path / "cat" / "a_rgb.png", "RGB", (20, 30), (255, 0, 51))
    _save(tmp_path / "cat" / "b_grey.png", "L", (16, 16), 102)
    _save(tmp_path / "cat" / "c_rgba.png", "RGBA", (40, 20), (0, 0, 0, 0))  # fully transparent
    _save(tmp_path / "dog" / "a.jpg", "RGB", (50, 50), (0, 255, 0))
    pal = Image.new("P", (12, 12), 1)
    pal.putpalette([0, 0, 0, 255, 255, 0] + [0] * 762)
    pal.save(tmp_path / "dog" / "b_palette.png")
    (tmp_path / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really an image")
    (tmp_path / "dog" / "notes.txt").write_text("not an image, ignored")
    return tmp_path


def test_image_folder_reads_every_mode_and_skips_the_corrupt_file(folder):
    with pytest.warns(UserWarning, match=r"ImageFolder: skipped .*dog[/\\]broken\.png"):
        ds = ImageFolder(folder, resolution=8, channels=3)
    assert ds.classes == ["cat", "dog"] and ds.x.shape == (5, 3, 8, 8)
    assert ds.x.dtype == np.float32 and ds.y.tolist() == [0, 0, 0, 1, 1]
    assert ds.skipped == [str(folder / "dog" / "broken.png")]
    assert "5 images in 2 classes" in ds.summary and "skipped 1 unreadable" in ds.summary
    expected = [(255, 0, 51), (102, 102, 102), (255, 255, 255), (0, 255, 0), (255, 255, 0)]
    for img, rgb in zip(ds.x, expected):  # solid colours survive resizing exactly
        np.testing.assert_allclose(
            img, np.broadcast_to(np.array(rgb)[:, None, None] / 255, img.shape), atol=2 / 255
        )  # fmt: skip  (JPEG may move a level or two)


def test_image_folder_grayscale_uses_luma(folder):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = ImageFolder(folder, resolution=4, channels=1)
    assert ds.x.shape == (5, 1, 4, 4)
    np.testing.assert_allclose(ds.x[0], (0.299 * 255 + 0.114 * 51) / 255, atol=1 / 255)


def test_image_folder_resizes_the_shorter_side_then_crops_the_centre(tmp_path):
    (tmp_path / "only").mkdir()
    stripes = np.zeros((20, 60), dtype=np.uint8)  # h 20, w 60: black | white | black thirds
    stripes[:, 20:40] = 255
    Image.fromarray(stripes).save(tmp_path / "only" / "s.png")
    (tmp_path / "other").mkdir()
    Image.fromarray(stripes).save(tmp_path / "other" / "t.png")
    img = ImageFolder(tmp_path, resolution=10, channels=1).x[0, 0]  # 20x60 -> 10x30 -> crop 10..20
    np.testing.assert_allclose(img[:, 1:9], 1.0, atol=1e-6)  # the centre third is white
    assert img[:, 0].max() < 1 and img[:, 9].max() < 1  # blurred edges of the white band


# ----- npz and CIFAR --------------------------------------------------------------------------


def test_npz_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.random((6, 3, 5, 5)).astype(np.float32)
    xt = rng.integers(0, 256, (2, 3, 5, 5), dtype=np.uint8)
    path = tmp_path / "d.npz"
    np.savez(path, x=x, y=np.array([0, 1, 2, 0, 1, 2]), x_test=xt, y_test=np.array([2, 1]),
             classes=np.array(["a", "b", "c"]))  # fmt: skip
    train, test = load_npz(path)
    np.testing.assert_array_equal(train.x, x)
    np.testing.assert_array_equal(test.x, xt / np.float32(255))
    assert train.y.tolist() == [0, 1, 2, 0, 1, 2] and test.y.dtype == np.int64
    assert train.classes == ["a", "b", "c"]
    np.savez(path, x=x, y=np.arange(6))
    train, test = load_npz(path)
    assert test is None and train.num_classes == 6


def _cifar_records(labels, rng):
    pix = rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8)
    return np.concatenate([np.array(labels, dtype=np.uint8)[:, None], pix], axis=1), pix


def test_cifar_binary_records(tmp_path):
    rng = np.random.default_rng(0)
    recs = [_cifar_records(lab, rng) for lab in ([3, 9, 0], [5, 5], [1, 2])]
    for name, (r, _) in zip(["data_batch_1.bin", "data_batch_2.bin", "test_batch.bin"], recs):
        r.tofile(tmp_path / name)
    train, test = load_cifar10(tmp_path)
    assert train.y.tolist() == [3, 9, 0, 5, 5] and test.y.tolist() == [1, 2]
    assert train.classes[3] == "cat" and train.x.shape == (5, 3, 32, 32)
    pix = recs[0][1][1]  # record 2 of batch 1: red plane, then green, then blue, row-major
    np.testing.assert_array_equal(train.x[1, 0, 0, :3], pix[:3] / np.float32(255))
    np.testing.assert_array_equal(train.x[1, 1, 2, 5], pix[1024 + 2 * 32 + 5] / np.float32(255))
    np.testing.assert_array_equal(train.x[1, 2, 31, 31], pix[3071] / np.float32(255))
    (tmp_path / "batches.meta.txt").write_text("\n".join("abcdefghij") + "\n")
    small, _ = load_cifar10(tmp_path, resolution=16, channels=1)
    assert small.classes[3] == "d" and small.x.shape == (5, 1, 16, 16)


# ----- loader ---------------------------------------------------------------------------------


def _ds(n=23):
    x = np.arange(n, dtype=np.float32)[:, None, None, None] * np.ones((1, 2, 4, 4), np.float32)
    return ArrayDataset(x, np.arange(n), classes=[str(i) for i in range(n)])


@pytest.mark.parametrize("shuffle", [False, True])
def test_loader_covers_every_sample_once_per_epoch(shuffle):
    loader = DataLoader(_ds(), batch_size=5, shuffle=shuffle, seed=3)
    epochs = [[(x, y) for x, y in loader] for _ in range(2)]
    for batches in epochs:
        assert [len(y) for _, y in batches] == [5, 5, 5, 5, 3] and len(loader) == 5
        ys = np.concatenate([y for _, y in batches])
        assert sorted(ys.tolist()) == list(range(23))
        for x, y in batches:
            assert x.dtype == np.float32 and y.dtype == np.int64
            np.testing.assert_array_equal(x[:, 1, 3, 3], y)  # images travel with their labels
    orders = [np.concatenate([y for _, y in b]).tolist() for b in epochs]
    if shuffle:
        assert orders[0] != orders[1] and orders[0] != list(range(23))
    else:
        assert orders[0] == orders[1] == list(range(23))


def test_loader_drop_last():
    loader = DataLoader(_ds(), batch_size=5, shuffle=True, drop_last=True)
    batches = [y for _, y in loader]
    assert len(loader) == len(batches) == 4 and all(len(y) == 5 for y in batches)
    assert len(set(np.concatenate(batches).tolist())) == 20


def _augment():
    return Compose([RandomCrop(4, padding=1), RandomHorizontalFlip(0.5)])


def test_loader_is_reproducible_and_seeded():
    def run(seed):
        loader = DataLoader(_ds(), 4, shuffle=True, seed=seed, transform=_augment())
        return [b for _ in range(2) for b in loader]

    a, b, c = run(7), run(7), run(8)
    for (xa, ya), (xb, yb) in zip(a, b):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    assert any(not np.array_equal(ya, yc) for (_, ya), (_, yc) in zip(a, c))


def test_loader_resumes_mid_epoch_with_the_same_batches():
    full = DataLoader(_ds(), 4, shuffle=True, seed=1, transform=_augment())
    expected = [b for _ in range(3) for b in full]  # 3 epochs of 6 batches

    first = DataLoader(_ds(), 4, shuffle=True, seed=1, transform=_augment())
    got = [b for b in first]
    it = iter(first)
    got += [next(it) for _ in range(2)]  # stop two batches into epoch 2
    saved = json.loads(json.dumps(first.state_dict()))
    assert saved == {"seed": 1, "epoch": 1, "batch": 2}

    second = DataLoader(_ds(), 4, shuffle=True, seed=99, transform=_augment())
    second.load_state_dict(saved)
    got += [b for b in second] + [b for b in second]
    assert len(got) == len(expected) == 18
    for (xa, ya), (xb, yb) in zip(got, expected):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)


def test_loader_gathers_batches_without_touching_the_dataset():
    ds = _ds()
    before = ds.x.copy()
    for x, _ in DataLoader(ds, 6, shuffle=True, transform=Normalize([1.0, 1.0], [2.0, 2.0])):
        x += 100  # the batch is the caller's: changing it leaves the dataset alone
    np.testing.assert_array_equal(ds.x, before)


# ----- transforms -----------------------------------------------------------------------------


def test_normalize_and_channel_stats_by_hand():
    x = np.zeros((2, 2, 2, 2), np.float32)
    x[0, 0], x[1, 0] = 1.0, 3.0  # channel 0: half 1s, half 3s -> mean 2, std 1
    x[:, 1] = [[0.0, 4.0], [0.0, 4.0]]  # channel 1: mean 2, std 2
    mean, std = channel_stats(ArrayDataset(x, np.zeros(2, np.int64)))
    assert mean == [2.0, 2.0] and std == [1.0, 2.0]
    out = Normalize(mean, std)(x)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out[0, 0], -1.0)
    np.testing.assert_array_equal(out[1, 0], 1.0)
    np.testing.assert_array_equal(out[0, 1], [[-1.0, 1.0], [-1.0, 1.0]])


def test_random_crop_returns_windows_of_the_padded_image():
    rng = np.random.default_rng(0)
    x = rng.random((40, 1, 3, 3)).astype(np.float32) + 1  # +1: padding zeros are recognisable
    out = RandomCrop(3, padding=1)(x, np.random.default_rng(5))
    padded = np.zeros((40, 1, 5, 5), np.float32)
    padded[:, :, 1:4, 1:4] = x
    offsets = set()
    for i in range(40):
        hits = [(t, l) for t in range(3) for l in range(3)
                if np.array_equal(out[i], padded[i, :, t : t + 3, l : l + 3])]  # fmt: skip
        assert len(hits) == 1
        offsets.add(hits[0])
    assert len(offsets) == 9  # every offset occurs
    np.testing.assert_array_equal(RandomCrop(3)(x, rng), x)  # no padding, full size: identity


def test_random_horizontal_flip():
    x = np.random.default_rng(0).random((50, 2, 3, 4))
    np.testing.assert_array_equal(RandomHorizontalFlip(1.0)(x, np.random.default_rng(0)),
                                  x[..., ::-1])  # fmt: skip
    np.testing.assert_array_equal(RandomHorizontalFlip(0.0)(x, np.random.default_rng(0)), x)
    out = RandomHorizontalFlip()(x, np.random.default_rng(0))
    flipped = [np.array_equal(o, xi[..., ::-1]) for o, xi in zip(out, x)]
    kept = [np.array_equal(o, xi) for o, xi in zip(out, x)]
    assert all(f != k for f, k in zip(flipped, kept)) and 10 < sum(flipped) < 40
