"""Bad input to train / evaluate / predict: a clear message naming the problem, exit code 2,
and nothing the user saved overwritten (issue 4, section 8)."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest
from conftest import digits_npz

from npmobilenet.cli import main
from npmobilenet.train import make_config, train_run


def quiet(*_):
    pass


def digests(folder) -> dict:
    out = {}
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name), "rb") as f:
            out[name] = hashlib.sha256(f.read()).hexdigest()
    return out


def fails(args, capsys, match):
    """Run the CLI; it must return 2 and print an error matching ``match`` to stderr."""
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"npmobilenet {args[0]}: error: ")
    assert "Traceback" not in err
    assert __import__("re").search(match, err), err
    return err


@pytest.fixture(scope="module")
def small_npz(tmp_path_factory):
    return digits_npz(tmp_path_factory.mktemp("data"), 96, 30)


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory, small_npz):
    out = tmp_path_factory.mktemp("runs") / "run"
    train_run({"data": small_npz, "epochs": 1, "batch_size": 48}, out, progress="none", log=quiet)
    return out


def test_missing_data_path(tmp_path, capsys):
    fails(["train", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")], capsys,
          r"--data '.*nowhere': no such file or folder")  # fmt: skip
    assert not (tmp_path / "o").exists()


def test_image_folder_without_classes(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    fails(["train", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "o")], capsys,
          r"has no class subfolders")  # fmt: skip


def test_image_folder_with_an_empty_class(tmp_path, capsys):
    from PIL import Image

    root = tmp_path / "imgs"
    (root / "cat").mkdir(parents=True)
    (root / "dog").mkdir()
    Image.new("RGB", (8, 8)).save(root / "cat" / "a.png")
    fails(["train", "--data", str(root), "--out", str(tmp_path / "o")], capsys,
          r"class folder '.*dog' has no images")  # fmt: skip


def test_corrupt_image_is_skipped_with_a_warning_and_counted(tmp_path, capsys):
    from PIL import Image

    root = tmp_path / "imgs"
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(5):
            pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / cls / f"{i}.png")
    (root / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    out = tmp_path / "o"
    args = ["train", "--data", str(root), "--epochs", "1", "--batch-size", "4", "--out", str(out),
            "--progress", "none"]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "warning: ImageFolder: skipped " in printed and "broken.png" in printed
    assert "skipped 1 unreadable file(s)" in printed  # the data summary line
    with open(out / "metrics.json") as f:
        m = json.load(f)
    assert [os.path.basename(p) for p in m["skipped_files"]] == ["broken.png"]
    assert m["train_images"] + m["test_images"] == 10


def test_npz_labels_out_of_range(tmp_path, capsys):
    path = tmp_path / "bad.npz"
    x = np.zeros((6, 1, 32, 32), np.float32)
    np.savez(path, x=x, y=np.array([0, 1, 2, 1, 0, 3]), classes=np.array(["a", "b", "c"]))
    fails(["train", "--data", str(path), "--out", str(tmp_path / "o")], capsys,
          r"y must be class indices in \[0, 3\), got 3 at index 5")  # fmt: skip


def test_batch_size_below_one(capsys):
    assert main(["train", "--batch-size", "0"]) == 2
    assert "argument --batch-size: must be >= 1, got 0" in capsys.readouterr().err
    with pytest.raises(ValueError, match="batch size must be an integer >= 1, got -3"):
        make_config(batch_size=-3)


def test_resolution_too_small(tmp_path, capsys):
    fails(["train", "--resolution", "16", "--out", str(tmp_path / "o")], capsys,
          r"resolution 16 is too small for MobileNetV1: .* at least 32x32")  # fmt: skip


def test_unknown_optimizer(tmp_path, capsys):
    fails(["train", "--optimizer", "adagrad", "--out", str(tmp_path / "o")], capsys,
          r"unknown optimizer 'adagrad'; choose one of adam, adamw, rmsprop, sgd")  # fmt: skip


def test_resume_with_another_architecture_is_refused(saved_run, capsys):
    before = digests(saved_run)
    fails(["train", "--resume", "--out", str(saved_run), "--alpha", "0.5"], capsys,
          r"differ: alpha: checkpoint 0.25, given 0.5")  # fmt: skip
    assert digests(saved_run) == before


def test_truncated_checkpoint_for_resume_and_evaluate(saved_run, tmp_path, capsys):
    ckpt = tmp_path / "cut.safetensors"
    data = (saved_run / "checkpoint.safetensors").read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])
    before = digests(saved_run)
    fails(["train", "--resume", str(ckpt), "--out", str(saved_run)], capsys,
          r"cut.safetensors is not a readable checkpoint \(truncated or corrupt")  # fmt: skip
    fails(["evaluate", "--checkpoint", str(ckpt)], capsys, r"not a readable checkpoint")
    assert digests(saved_run) == before


def test_existing_run_is_not_overwritten(saved_run, small_npz, capsys):
    before = digests(saved_run)
    fails(["train", "--data", small_npz, "--out", str(saved_run)], capsys,
          r"already holds a run .*--resume .*--overwrite")  # fmt: skip
    assert digests(saved_run) == before


def test_evaluate_on_data_with_other_classes(saved_run, tmp_path, capsys):
    path = tmp_path / "three.npz"
    np.savez(path, x=np.zeros((6, 1, 32, 32), np.float32), y=np.array([0, 1, 2, 0, 1, 2]))
    fails(["evaluate", "--checkpoint", str(saved_run), "--data", str(path)], capsys,
          r"data's classes \[0, 1, 2\] are not the model's .*; their counts differ")  # fmt: skip


def test_predict_missing_and_unreadable_images(saved_run, tmp_path, capsys):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"nope")
    assert main(["predict", "--checkpoint", str(saved_run), str(tmp_path / "none.png"),
                 str(bad)]) == 2  # fmt: skip
    captured = capsys.readouterr()
    assert captured.err == "npmobilenet predict: error: none of the 2 file(s) could be read\n"
    printed = captured.out  # each file is reported in the output
    assert "none.png\n  error: no such file" in printed
    assert "bad.jpg\n  error: not a readable image" in printed
    fails(["predict", "--checkpoint", str(tmp_path / "x.safetensors"), str(bad)], capsys,
          r"no checkpoint at .*x.safetensors")  # fmt: skip


@pytest.mark.parametrize("change", ["renamed", "reordered", "more_images"])
def test_resume_on_changed_data_is_refused(tmp_path, capsys, change):
    """The checkpoint's labels name its classes: data whose classes are named or ordered
    otherwise would silently train label i as another class; other images would continue
    neither the batches nor the test numbers of the run."""
    path = tmp_path / "d.npz"
    arrays = np.load(digits_npz(tmp_path, 60, 20))
    x, y, xt, yt = arrays["x"], arrays["y"], arrays["x_test"], arrays["y_test"]
    names = np.array([f"digit {i}" for i in range(10)])
    np.savez(path, x=x, y=y, x_test=xt, y_test=yt, classes=names)
    out = tmp_path / "run"
    train_run({"data": str(path), "epochs": 1, "batch_size": 30}, out, progress="none", log=quiet)
    if change == "renamed":
        np.savez(path, x=x, y=y, x_test=xt, y_test=yt, classes=np.char.add(names, "!"))
    elif change == "reordered":
        np.savez(path, x=x, y=9 - y, x_test=xt, y_test=9 - yt, classes=names[::-1])
    else:
        np.savez(path, x=np.concatenate([x, x[:5]]), y=np.concatenate([y, y[:5]]), x_test=xt,
                 y_test=yt, classes=names)  # fmt: skip
    before = digests(out)
    words = r"trained on 60 train and 20 test images, .* now has 65 and 20" if change == (
        "more_images") else r"trained on classes \[digit 0, digit 1, .*\], its data .* now has"
    fails(["train", "--resume", "--out", str(out), "--epochs", "2"], capsys, words + ".* --init")
    assert digests(out) == before


def test_resume_on_the_same_data_still_continues(tmp_path):
    path = digits_npz(tmp_path, 60, 20)
    out = tmp_path / "run"
    train_run({"data": path, "epochs": 1, "batch_size": 30}, out, progress="none", log=quiet)
    m = train_run({"epochs": 2}, out, resume=out / "checkpoint.safetensors", progress="none",
                  log=quiet)  # fmt: skip
    assert m["epochs"] == 2 and m["config"]["images"] == [60, 20]


def test_run_records_its_data_so_evaluate_finds_it_from_anywhere(tmp_path, monkeypatch):
    """A run given --data as a relative path recorded it as given: evaluate from another
    folder read whatever file had that name there, and reported its accuracy as the run's."""
    from npmobilenet.train import evaluate_run

    (tmp_path / "a" / "data").mkdir(parents=True)
    (tmp_path / "b" / "data").mkdir(parents=True)
    digits_npz(tmp_path / "a" / "data", 60, 20)
    digits_npz(tmp_path / "b" / "data", 60, 30)  # same name and classes, 30 test images
    monkeypatch.chdir(tmp_path / "a")
    train_run({"data": os.path.join("data", "digits.npz"), "epochs": 1, "batch_size": 30},
              "run", progress="none", log=quiet)  # fmt: skip
    monkeypatch.chdir(tmp_path / "b")
    assert evaluate_run(tmp_path / "a" / "run", log=quiet)["n"] == 20
