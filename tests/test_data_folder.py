"""Lazy image folders, per-image transforms, presets, prefetch and predict, against hand-computed
crop boxes, Pillow called directly, and runs without prefetch or without interruption."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
from PIL import Image

from npmobilenet.data import (
    CenterCrop,
    ColorJitter,
    Compose,
    DataLoader,
    HorizontalFlip,
    ImageFolder,
    ImageTransform,
    LazyImageFolder,
    Normalize,
    RandomResizedCrop,
    Resize,
    crop_box,
    eval_transform,
    preprocess,
    train_transform,
)


class Scripted:
    """A stand-in generator returning scripted draws and recording the ranges asked for."""

    def __init__(self, uniforms=(), integers=(), randoms=(), permutation=(0, 1, 2, 3)):
        self.uniforms, self.integers_, self.randoms = list(uniforms), list(integers), list(randoms)
        self.perm, self.asked = list(permutation), []

    def uniform(self, lo, hi):
        self.asked.append(("uniform", lo, hi))
        return self.uniforms.pop(0)

    def integers(self, lo, hi):
        self.asked.append(("integers", lo, hi))
        v = self.integers_.pop(0)
        assert lo <= v < hi
        return v

    def random(self):
        return self.randoms.pop(0)

    def permutation(self, n):
        return np.array(self.perm)


def random_image(h, w, mode="RGB", seed=0):
    rng = np.random.default_rng(seed)
    shape = (h, w, 3) if mode == "RGB" else (h, w)
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)


# ----- crop boxes: torchvision's RandomResizedCrop.get_params, computed by hand -------------------

SCALE, RATIO = (0.08, 1.0), (3 / 4, 4 / 3)


def test_crop_box_first_attempt_fits():
    # 200x300 image, area 60000; scale 0.5 -> 30000; aspect 4/3 -> w = sqrt(40000) = 200,
    # h = sqrt(22500) = 150; top in [0, 51), left in [0, 101).
    rng = Scripted(uniforms=[0.5, math.log(4 / 3)], integers=[10, 7])
    assert crop_box(200, 300, SCALE, RATIO, rng) == (10, 7, 150, 200)
    assert rng.asked == [("uniform", 0.08, 1.0), ("uniform", math.log(3 / 4), math.log(4 / 3)),
                         ("integers", 0, 51), ("integers", 0, 101)]  # fmt: skip


def test_crop_box_rounds_like_torchvision():
    # 100x100, scale 0.3 -> 3000; aspect 1 -> w = h = round(54.77) = 55; top, left in [0, 46).
    rng = Scripted(uniforms=[0.3, 0.0], integers=[45, 0])
    assert crop_box(100, 100, SCALE, RATIO, rng) == (45, 0, 55, 55)


@pytest.mark.parametrize(
    "h,w,aspect_draw,expected",
    [
        (10, 1000, 0.0, (0, 493, 10, 13)),  # too wide: h = 10, w = round(10 * 4/3) = 13
        (1000, 10, 0.0, (493, 0, 13, 10)),  # too tall: w = 10, h = round(10 / (3/4)) = 13
        (100, 100, math.log(4 / 3), (0, 0, 100, 100)),  # 115x87 never fits: whole image
    ],
)
def test_crop_box_falls_back_after_ten_failed_attempts(h, w, aspect_draw, expected):
    rng = Scripted(uniforms=[1.0, aspect_draw] * 10)
    assert crop_box(h, w, SCALE, RATIO, rng) == expected
    assert not rng.uniforms  # exactly ten attempts, two draws each


# ----- transforms against Pillow called directly -----------------------------------------------


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_random_resized_crop_is_pil_crop_then_resize_of_the_box(interpolation):
    img = random_image(60, 90)
    box = crop_box(60, 90, SCALE, RATIO, np.random.default_rng(5))
    top, left, h, w = box
    resample = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}[interpolation]
    want = img.crop((left, top, left + w, top + h)).resize((32, 32), resample)
    got = RandomResizedCrop(32, interpolation=interpolation)(img, np.random.default_rng(5))
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


@pytest.mark.parametrize(
    "w,h,resized,offsets",
    [
        # shorter side 200 -> floor(224 / 0.875) = 256; longer int(256 * 300 / 200) = 384;
        # CenterCrop 224: top round(16) = 16, left round(80) = 80.
        (300, 200, (384, 256), (80, 16)),
        # int(256 * 301 / 200) = int(385.28) = 385; left round(80.5) = 80 (half to even).
        (301, 200, (385, 256), (80, 16)),
        (200, 333, (256, 426), (16, 101)),  # int(426.24) = 426, top round(101.0) = 101
    ],
)
def test_eval_transform_is_resize_then_centre_crop(w, h, resized, offsets):
    img = random_image(h, w)
    left, top = offsets
    ref = img.resize(resized, Image.BILINEAR).crop((left, top, left + 224, top + 224))
    ref = np.asarray(ref, dtype=np.float32).transpose(2, 0, 1) / 255
    mean, std = (0.2, 0.3, 0.4), (0.5, 0.6, 0.7)
    m, s = (np.array(v, np.float32)[:, None, None] for v in (mean, std))  # (3, 1, 1)
    want = (ref - m) / s
    got = eval_transform(224, mean, std)([img])
    assert got.shape == (1, 3, 224, 224) and got.dtype == np.float32
    np.testing.assert_allclose(got[0], want, rtol=0, atol=1e-6)


def test_presets_by_hand():
    img = random_image(200, 300, seed=3)
    crop = (80, 16, 304, 240)
    bicubic = np.asarray(img.resize((384, 256), Image.BICUBIC).crop(crop), np.float64) / 255
    bilinear = np.asarray(img.resize((384, 256), Image.BILINEAR).crop(crop), np.float64) / 255
    np.testing.assert_allclose(preprocess(img, "timm")[0], (bicubic.transpose(2, 0, 1) - 0.5) / 0.5,
                               atol=1e-6)  # fmt: skip
    imagenet = (bilinear - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    np.testing.assert_allclose(preprocess(np.asarray(img), "torchvision")[0],
                               imagenet.transpose(2, 0, 1), atol=1e-5)  # fmt: skip
    keras = preprocess([img, img], "keras")
    assert keras.shape == (2, 3, 224, 224) and keras.min() >= -1 and keras.max() <= 1
    np.testing.assert_allclose(keras[1], bilinear.transpose(2, 0, 1) * 2 - 1, atol=1e-6)


def test_flip_and_resize_and_centre_crop_steps():
    img = random_image(20, 30)
    a = np.asarray(img)
    flips = [np.asarray(HorizontalFlip()(img, Scripted(randoms=[r]))) for r in (0.3, 0.7)]
    np.testing.assert_array_equal(flips[0], a[:, ::-1])  # 0.3 < 0.5: flipped
    np.testing.assert_array_equal(flips[1], a)
    assert Resize(10)(img, None).size == (15, 10)  # (w, h): int(10 * 30 / 20)
    np.testing.assert_array_equal(np.asarray(CenterCrop(10)(img, None)), a[5:15, 10:20])


def test_colour_jitter_brightness_is_a_scale_and_draws_in_torchvision_order():
    img = random_image(8, 8)
    rng = Scripted(uniforms=[1.3], permutation=[3, 0, 2, 1])
    out = np.asarray(ColorJitter(brightness=0.5)(img, rng), dtype=np.float64)
    assert rng.asked == [("uniform", 0.5, 1.5)]
    np.testing.assert_allclose(out, np.clip(np.asarray(img) * 1.3, 0, 255), atol=1)


def _luma(a):
    return a @ np.array([0.299, 0.587, 0.114])  # ITU-R 601-2, Pillow's "L" conversion


@pytest.mark.parametrize("which", ["contrast", "saturation"])
def test_colour_jitter_contrast_and_saturation_blend_with_the_grey_image(which):
    img = random_image(8, 8)
    a = np.asarray(img, dtype=np.float64)
    # torchvision's definitions: contrast blends with the mean grey level, saturation with
    # each pixel's own grey level; factor 1.4 pushes away from them, with clipping at 0 and 255
    grey = (
        np.full_like(a, np.floor(_luma(a).mean() + 0.5))
        if which == "contrast"
        else (np.repeat(_luma(a)[..., None], 3, axis=-1))
    )
    rng = Scripted(uniforms=[1.4], permutation=[3, 0, 2, 1])
    out = np.asarray(ColorJitter(**{which: 0.5})(img, rng), dtype=np.float64)
    assert rng.asked == [("uniform", 0.5, 1.5)]
    np.testing.assert_allclose(out, np.clip(grey + 1.4 * (a - grey), 0, 255), atol=1)


def test_colour_jitter_hue_rotates_the_hue_and_keeps_saturation_and_value():
    import colorsys

    img = random_image(8, 8)
    a = np.asarray(img, dtype=np.float64) / 255
    shift = 20 / 255  # a whole step of Pillow's 8-bit hue
    rng = Scripted(uniforms=[shift])
    out = np.asarray(ColorJitter(hue=0.2)(img, rng), dtype=np.float64)
    assert rng.asked == [("uniform", -0.2, 0.2)]

    def rotate(p, by):
        h, s, v = colorsys.rgb_to_hsv(*p)
        return colorsys.hsv_to_rgb((h + by) % 1, s, v)

    expected = np.array([[rotate(p, shift) for p in row] for row in a]) * 255
    backwards = np.array([[rotate(p, -shift) for p in row] for row in a]) * 255
    # Pillow's HSV holds each channel in 8 bits: a few levels of rounding, far from the
    # 100+ levels that separate the right rotation from the wrong one
    assert np.abs(out - expected).max() <= 7
    assert np.abs(out - backwards).max() > 50


# ----- decoding: bit depths, bombs, channels ------------------------------------------------------


def _png_rgb16(path, rgb16):
    """A 16-bit RGB PNG written byte by byte (Pillow cannot write one)."""
    import struct
    import zlib

    h, w, _ = rgb16.shape
    raw = b"".join(b"\x00" + rgb16[r].astype(">u2").tobytes() for r in range(h))

    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)  # 16 bits, colour type 2 (RGB)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw))
    path.write_bytes(png + chunk(b"IEND", b""))


def _two_classes(tmp_path, save):
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        save(tmp_path / cls)
    return tmp_path


def test_high_bit_depth_images_are_scaled_not_clipped(tmp_path):
    ramp16 = (np.arange(256, dtype=np.uint32) * 257).astype(np.uint16)[None].repeat(4, 0)
    rgb16 = np.stack([ramp16, ramp16[:, ::-1], np.full_like(ramp16, 32768)], axis=2)
    rampf = np.linspace(0, 1, 256, dtype=np.float32)[None].repeat(4, 0)
    ramp32 = (rampf.astype(np.float64) * (2**31 - 1)).astype(np.int32)

    def save(folder):
        Image.fromarray(ramp16).save(folder / "grey16.png")
        _png_rgb16(folder / "rgb16.png", rgb16)
        Image.fromarray(rampf, "F").save(folder / "float.tif")
        Image.fromarray(ramp32, "I").save(folder / "int32.tif")

    data = LazyImageFolder(_two_classes(tmp_path, save), channels=3)
    images, _ = data[np.arange(4)]  # a/float.tif, a/grey16.png, a/int32.tif, a/rgb16.png
    expected_grey = np.arange(256) / 255  # the ramp, as 8-bit levels
    for img in images[:3]:
        got = np.asarray(img, np.float64)[0] / 255  # (256, 3) of row 0
        np.testing.assert_allclose(got, np.repeat(expected_grey[:, None], 3, 1), atol=1 / 255)
    rgb = np.asarray(images[3], np.float64)[0] / 255
    np.testing.assert_allclose(rgb, rgb16[0] / 65535, atol=1 / 255)
    assert data.channels == 3


def test_grey_folder_is_one_channel_unless_told(tmp_path):
    root = _two_classes(tmp_path, lambda f: Image.new("L", (8, 8), 7).save(f / "g.png"))
    assert LazyImageFolder(root).channels == 1
    assert LazyImageFolder(root, channels=3).channels == 3
    Image.new("RGB", (8, 8)).save(root / "b" / "colour.png")
    assert LazyImageFolder(root).channels == 3


def test_single_class_folder_is_refused(tmp_path):
    (tmp_path / "only").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "only" / "x.png")
    with pytest.raises(ValueError, match=r"one class folder \('only'\): need at least 2 classes"):
        LazyImageFolder(tmp_path)


def test_bad_files_are_skipped_and_reported(tmp_path, monkeypatch):
    def save(folder):
        for i in range(3):
            random_image(16, 16, seed=i).save(folder / f"{i}.png")

    root = _two_classes(tmp_path, save)
    Image.effect_noise((64, 64), 50).save(root / "a" / "1.png")
    data = (root / "a" / "1.png").read_bytes()
    (root / "a" / "1.png").write_bytes(data[: len(data) // 2])  # header fine, pixels cut
    Image.new("L", (300, 300)).save(root / "b" / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300 * 300 // 3)  # > 2x the limit: an error
    messages = []
    folder = LazyImageFolder(root, warn=messages.append)
    assert [os.path.basename(p) for p in folder.skipped] == ["bomb.png"]  # found by the scan
    assert len(folder) == 6 and "skipped 1 unreadable" in folder.summary
    images, y = folder[np.arange(6)]
    assert len(images) == 5 and y.tolist() == [0, 0, 1, 1, 1]  # the truncated a/1.png left out
    folder[np.arange(6)]
    assert [os.path.basename(p) for p in folder.skipped] == ["bomb.png", "1.png"]
    assert len(messages) == 2 and "ImageFolder: skipped" in messages[1]  # reported once each
    assert "DecompressionBomb" in messages[0] or "decompression bomb" in messages[0]


# ----- loader: prefetch, cache, resume -----------------------------------------------------------


@pytest.fixture(scope="module")
def small_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(0)
    for c in range(2):
        (root / f"c{c}").mkdir()
        for i in range(10):
            size = (int(rng.integers(40, 80)), int(rng.integers(40, 80)))
            Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(
                root / f"c{c}" / f"{i}.jpg"
            )
    return root


def _batches(loader, epochs=2):
    return [(x.copy(), y.copy()) for _ in range(epochs) for x, y in loader]


def test_prefetch_and_cache_give_the_same_batches(small_folder):
    tf = Compose([train_transform(32, jitter=0.2), Normalize([0.5] * 3, [0.25] * 3)])

    def loader(workers, cache_mb):
        data = LazyImageFolder(small_folder, cache_mb=cache_mb)
        return DataLoader(data, 6, shuffle=True, seed=3, transform=tf, workers=workers)

    plain = _batches(loader(0, 0))
    assert plain[0][0].shape == (6, 3, 32, 32)
    assert not np.array_equal(plain[0][0], plain[4][0])  # epochs differ
    for workers, cache_mb in ((1, 0), (3, 0), (2, 64)):
        for (x, y), (x0, y0) in zip(_batches(loader(workers, cache_mb)), plain):
            np.testing.assert_array_equal(x, x0)
            np.testing.assert_array_equal(y, y0)


def test_cache_holds_uint8_images_within_its_budget(small_folder):
    data = LazyImageFolder(small_folder, cache_mb=0)
    one = np.asarray(data[[0]][0][0]).nbytes
    data = LazyImageFolder(small_folder, cache_mb=1)
    data.cache.limit = 3 * one + 1  # room for three images of this size
    data[np.arange(len(data))]
    assert 0 < data.cache.used <= data.cache.limit
    assert all(a.dtype == np.uint8 for a in data.cache._images.values())


def test_prefetch_mid_epoch_resume_is_exact(small_folder):
    tf = train_transform(32)
    full = _batches(DataLoader(LazyImageFolder(small_folder), 4, shuffle=True, seed=1,
                               transform=tf, workers=2))  # fmt: skip
    first = DataLoader(LazyImageFolder(small_folder), 4, shuffle=True, seed=1, transform=tf,
                       workers=2)  # fmt: skip
    seen = []
    for x, y in first:
        seen.append((x, y))
        if len(seen) == 3:
            break  # leaves the epoch early: the workers must stop
    state = first.state_dict()
    assert state == {"seed": 1, "epoch": 0, "batch": 3}
    again = DataLoader(LazyImageFolder(small_folder), 4, shuffle=True, seed=1, transform=tf,
                       workers=3)  # fmt: skip
    again.load_state_dict(state)
    rest = seen + _batches(again, epochs=1) + _batches(again, epochs=1)
    assert len(rest) == len(full)
    for (x, y), (x0, y0) in zip(rest, full):
        np.testing.assert_array_equal(x, x0)
        np.testing.assert_array_equal(y, y0)


def _data_threads():
    return [t for t in threading.enumerate() if t.name.startswith("npmobilenet-data")]


def test_prefetch_error_is_raised_at_its_batch_and_the_workers_stop(small_folder):
    def transform(images, rng):
        if len(images) == 4 and transform.calls == 2:
            raise RuntimeError("boom in batch 2")
        transform.calls += 1
        return ImageTransform([Resize(32), CenterCrop(32)])(images, rng)

    transform.calls = 0
    loader = DataLoader(LazyImageFolder(small_folder), 4, transform=transform, workers=1)
    got = []
    with pytest.raises(RuntimeError, match="boom in batch 2"):
        for x, _ in loader:
            got.append(x)
    assert len(got) == 2 and loader.state_dict()["batch"] == 2
    assert not _data_threads()


def test_trainer_resumed_mid_epoch_with_augmentation_matches(small_folder, tmp_path):
    from npmobilenet.models import MobileNetV1
    from npmobilenet.optim import SGD
    from npmobilenet.train import Trainer

    tf = Compose([train_transform(32), Normalize([0.5] * 3, [0.25] * 3)])

    def trainer():
        model = MobileNetV1(alpha=0.25, num_classes=2, seed=0)
        loader = DataLoader(LazyImageFolder(small_folder), 4, shuffle=True, seed=2,
                            transform=tf, workers=2)  # fmt: skip
        opt = SGD(list(model.parameters()), lr=0.05, momentum=0.9)
        return Trainer(model, opt, loader, progress="none", log=None)

    full = trainer()
    full.fit(2)
    part = trainer()
    part.model.train()
    for i, (x, y) in enumerate(part.train_loader):
        part.train_step(x, y)
        if i == 2:
            break  # stopped after 3 of the 5 batches of epoch 1
    part.save_checkpoint(tmp_path / "mid.safetensors")
    resumed = trainer()
    resumed.load_checkpoint(tmp_path / "mid.safetensors")
    resumed.fit(2)  # the rest of epoch 1, then epoch 2
    for k, v in full.model.state_dict().items():
        np.testing.assert_array_equal(resumed.model.state_dict()[k], v, err_msg=k)


# ----- memory ----------------------------------------------------------------------------------

PEAK = """
import sys
import numpy as np
from npmobilenet.data import DataLoader, LazyImageFolder, train_transform
loader = DataLoader(LazyImageFolder(sys.argv[1]), 32, shuffle=True, transform=train_transform(64),
                    workers=2)
for x, y in loader:
    pass
for line in open("/proc/self/status"):
    if line.startswith("VmHWM:"):
        print(int(line.split()[1]))
"""


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc")
def test_peak_memory_does_not_grow_with_the_folder(tmp_path):
    rng = np.random.default_rng(0)
    roots = {}
    for n in (200, 2000):
        roots[n] = tmp_path / f"n{n}"
        for i in range(n):
            folder = roots[n] / f"c{i % 2}"
            folder.mkdir(parents=True, exist_ok=True)
            coarse = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
            Image.fromarray(coarse).resize((64, 64)).save(folder / f"{i}.png")
    peak_kb = {}
    for n, root in roots.items():
        out = subprocess.run([sys.executable, "-c", PEAK, str(root)], capture_output=True,
                             text=True, check=True)  # fmt: skip
        peak_kb[n] = int(out.stdout.split()[-1])
    eager_growth_kb = 1800 * 3 * 64 * 64 * 4 // 1024  # what one float32 array would add: 86 MB
    assert peak_kb[2000] - peak_kb[200] < eager_growth_kb / 8, peak_kb


# ----- the eager reader on the same decoding --------------------------------------------------


def test_eager_image_folder_matches_the_lazy_one(small_folder):
    eager = ImageFolder(small_folder, resolution=24)
    lazy = LazyImageFolder(small_folder)
    x = ImageTransform([Resize(24), CenterCrop(24)])(lazy[np.arange(len(lazy))][0])
    np.testing.assert_array_equal(eager.x, x)
    assert eager.y.tolist() == lazy.y.tolist() == [0] * 10 + [1] * 10


# ----- predict ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    from npmobilenet.models import MobileNetV1
    from npmobilenet.train.run import save_model

    config = {"classes": ["c0", "c1"], "resolution": 32, "channels": 3, "alpha": 0.25,
              "dropout": 0.0, "seed": 0, "mean": [0.4, 0.5, 0.6],
              "std": [0.2, 0.25, 0.3]}  # fmt: skip
    model = MobileNetV1(alpha=0.25, num_classes=2, seed=0)
    path = tmp_path_factory.mktemp("model") / "model.safetensors"
    save_model(path, model, config)
    return path, model.eval(), config


def _expected_probs(model, config, path):
    """Resize 36 (floor(32 / 0.875)), crop 32, normalise: by hand with Pillow and NumPy."""
    img = Image.open(path).convert("RGB")
    w, h = img.size
    size = (36, int(36 * h / w)) if w <= h else (int(36 * w / h), 36)
    img = img.resize(size, Image.BILINEAR)
    left, top = round((size[0] - 32) / 2), round((size[1] - 32) / 2)
    a = np.asarray(img.crop((left, top, left + 32, top + 32)), np.float32).transpose(2, 0, 1) / 255
    mean, std = (np.array(config[k], np.float32)[:, None, None] for k in ("mean", "std"))
    return model.predict_proba(((a - mean) / std)[None])[0]


def test_predict_folder_to_csv_and_jsonl(saved_model, small_folder, tmp_path, capsys):
    from npmobilenet.cli import main

    path, model, config = saved_model
    bad = tmp_path / "extra" / "broken.jpg"
    bad.parent.mkdir()
    bad.write_bytes(b"\xff\xd8\xff not a jpeg")
    out = tmp_path / "results.csv"
    args = ["predict", "--checkpoint", str(path), str(small_folder), str(bad), "--top-k", "2",
            "--batch-size", "6", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    assert "1 of 21 file(s) could not be read" in capsys.readouterr().err
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    files = sorted(str(p) for p in small_folder.rglob("*.jpg"))
    assert [r["path"] for r in rows] == files + [str(bad)]
    for r in rows[:20:7]:
        p = _expected_probs(model, config, r["path"])
        assert r["class_1"] == config["classes"][int(np.argmax(p))] and r["error"] == ""
        np.testing.assert_allclose(float(r["probability_1"]), p.max(), rtol=1e-4)
        np.testing.assert_allclose(float(r["probability_1"]) + float(r["probability_2"]), 1,
                                   rtol=1e-4)  # fmt: skip
    assert rows[-1]["class_1"] == "" and rows[-1]["error"].startswith("not a readable image")
    assert main([*args[:-1], str(tmp_path / "r.jsonl")]) == 0
    lines = [json.loads(line) for line in open(tmp_path / "r.jsonl")]
    assert [d["path"] for d in lines] == [r["path"] for r in rows]
    assert lines[0]["top"][0]["class"] == rows[0]["class_1"] and lines[-1]["top"] == []
    assert not list(tmp_path.glob("*.partial"))


# ----- runs on folders ------------------------------------------------------------------------


def test_run_on_a_grey_folder(tmp_path):
    from npmobilenet.train import make_config, train_run

    rng = np.random.default_rng(0)
    for c in range(2):
        (tmp_path / "data" / f"c{c}").mkdir(parents=True)
        for i in range(8):
            pixels = rng.integers(0, 256, (40, 36), dtype=np.uint8)
            Image.fromarray(pixels, "L").save(tmp_path / "data" / f"c{c}" / f"{i}.png")
    config = make_config(data=str(tmp_path / "data"), epochs=1, batch_size=4, cache_mb=1)
    assert config["augment"] is None and make_config(augment=True)["augment"] == "standard"
    lines = []
    m = train_run(config, tmp_path / "run", progress="none", log=lines.append)
    assert m["config"]["channels"] == 1 and "(1 channel(s), inferred)" in lines[0]
    assert m["config"]["augment"] == "standard"  # the default for folders
    assert m["train_images"] == 12 and m["test_images"] == 4
    assert len(m["config"]["mean"]) == 1 and 0.3 < m["config"]["mean"][0] < 0.7
    # workers and cache_mb change speed only, so a resume may change them
    quiet = lambda line: None  # noqa: E731
    again = train_run({"workers": 0, "cache_mb": 0}, tmp_path / "run", progress="none",
                      log=quiet, resume=tmp_path / "run" / "checkpoint.safetensors")  # fmt: skip
    assert again["test_accuracy"] == m["test_accuracy"]
    with pytest.raises(ValueError, match=r"differ: augment: checkpoint 'standard', given 'none'"):
        train_run({"augment": "none"}, tmp_path / "run", progress="none", log=quiet,
                  resume=tmp_path / "run" / "checkpoint.safetensors")  # fmt: skip


def test_ctrl_c_in_a_training_step_stops_the_prefetch_threads(small_folder):
    from npmobilenet.models import MobileNetV1
    from npmobilenet.optim import SGD
    from npmobilenet.train import Trainer

    model = MobileNetV1(alpha=0.25, num_classes=2, seed=0)
    loader = DataLoader(LazyImageFolder(small_folder), 2, shuffle=True,
                        transform=train_transform(32), workers=2, prefetch=4)  # fmt: skip
    trainer = Trainer(model, SGD(list(model.parameters()), lr=0.01), loader, progress="none")
    calls = []

    def interrupted(x, y):
        calls.append(len(y))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return 0.0, 0

    trainer.train_step = interrupted
    with pytest.raises(KeyboardInterrupt):
        trainer.train_epoch()
    assert not _data_threads()  # stopped at once, not at interpreter exit
    assert loader.state_dict()["batch"] == 2


def test_predict_with_a_preset_uses_the_preset_preprocessing(saved_model, small_folder, tmp_path):
    from npmobilenet.cli import main

    path, model, _ = saved_model
    image = sorted(small_folder.rglob("*.jpg"))[3]
    out = tmp_path / "p.jsonl"
    args = ["predict", "--checkpoint", str(path), str(image), "--preset", "timm", "--out", str(out)]
    assert main(args) == 0
    [row] = [json.loads(line) for line in open(out)]
    x = preprocess(Image.open(image), "timm", size=32)  # bicubic 36, crop 32, mean = std = 0.5
    p = model.predict_proba(x)[0]
    assert row["top"][0]["class"] == ["c0", "c1"][int(np.argmax(p))]
    np.testing.assert_allclose(row["top"][0]["probability"], p.max(), rtol=1e-5)
