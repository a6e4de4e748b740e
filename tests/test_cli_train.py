"""The train / evaluate / predict commands end to end, on a small digits subset (seconds)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from npmobilenet.cli import _default_out, main
from npmobilenet.data import load_digits_dataset
from npmobilenet.io import load_weights
from npmobilenet.models import MobileNetV1
from npmobilenet.train.metrics import without_timings

CLASSES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


@pytest.fixture(scope="module")
def small_npz(tmp_path_factory):
    """192 train / 60 test digits at 32x32, grey, with class names."""
    train, test = load_digits_dataset(32, channels=1)
    path = tmp_path_factory.mktemp("data") / "digits_small.npz"
    np.savez(path, x=train.x[:192], y=train.y[:192], x_test=test.x[:60], y_test=test.y[:60],
             classes=np.array(CLASSES))  # fmt: skip
    return str(path)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, small_npz):
    """One 2-epoch CLI run; returns (out dir, its stdout)."""
    out = tmp_path_factory.mktemp("runs") / "small"
    args = ["train", "--data", small_npz, "--epochs", "2", "--batch-size", "32", "--out",
            str(out), "--progress", "plain", "--lr", "0.05"]  # fmt: skip
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(args) == 0
    return out, buf.getvalue()


def test_train_writes_metrics_model_checkpoint_and_prints_progress(trained):
    out, stdout = trained
    assert {"metrics.json", "metrics.csv", "model.safetensors", "checkpoint.safetensors"} <= set(
        os.listdir(out)
    )
    with open(out / "metrics.json") as f:
        m = json.load(f)
    assert m["epochs"] == 2 and m["seconds"] > 0
    assert 0 <= m["test_accuracy"] <= 1
    assert len(m["history"]["train_loss"]) == 2 and len(m["history"]["test_accuracy"]) == 2
    assert m["history"]["test_accuracy"][-1] == m["test_accuracy"]
    assert m["classes"] == CLASSES and m["test_images"] == 60
    cm = np.array(m["confusion_matrix"])
    assert cm.shape == (10, 10) and cm.sum() == 60
    assert np.trace(cm) / 60 == pytest.approx(m["test_accuracy"])
    csv_rows = (out / "metrics.csv").read_text().splitlines()
    assert csv_rows[0].startswith("epoch,lr,train_loss") and len(csv_rows) == 3
    assert "epoch 1/2" in stdout and "epoch 2/2" in stdout and "img/s" in stdout
    assert "confusion matrix (rows: true class" in stdout
    assert f"test accuracy {100 * m['test_accuracy']:.2f}%" in stdout
    assert "curves.png" in stdout and (out / "curves.png").exists()
    assert (out / "confusion.png").exists()


def test_model_file_loads_into_a_fresh_model(trained):
    out, _ = trained
    model = MobileNetV1(alpha=0.25, num_classes=10, in_channels=1, seed=123)
    load_weights(model, out / "model.safetensors")
    assert model.first_conv.bn.num_batches_tracked.shape == ()
    assert int(model.first_conv.bn.num_batches_tracked) == 2 * 6  # 2 epochs x 6 batches


def test_evaluate_reproduces_the_runs_test_accuracy(trained, capsys):
    out, _ = trained
    with open(out / "metrics.json") as f:
        m = json.load(f)
    for target in (out, out / "model.safetensors", out / "checkpoint.safetensors"):
        assert main(["evaluate", "--checkpoint", str(target)]) == 0
        printed = capsys.readouterr().out
        assert f"accuracy {100 * m['test_accuracy']:.2f}%" in printed
        assert f"loss {m['test_loss']:.4f}" in printed
        assert "confusion matrix" in printed and "eight" in printed


def test_predict_prints_top_k_class_names_and_probabilities(trained, tmp_path, capsys):
    from PIL import Image

    out, _ = trained
    _, test = load_digits_dataset(32, channels=1)
    paths = []
    for i in range(2):
        p = tmp_path / f"digit{i}.png"
        Image.fromarray((255 * test.x[i, 0]).astype(np.uint8)).save(p)
        paths.append(str(p))
    assert main(["predict", "--checkpoint", str(out), *paths, "--top-k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == paths[0] and lines[4] == paths[1]
    probs = [float(line.split()[-1].rstrip("%")) for line in lines[1:4]]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 100.01
    assert all(line.split()[0] in CLASSES for line in lines[1:4])


@pytest.mark.slow
def test_same_seed_same_metrics(tmp_path, small_npz):
    args = ["--data", small_npz, "--epochs", "1", "--batch-size", "64", "--progress", "none"]
    runs = []
    for name in ("a", "b"):
        assert main(["train", *args, "--out", str(tmp_path / name)]) == 0
        with open(tmp_path / name / "metrics.json") as f:
            runs.append(without_timings(json.load(f)))
    assert runs[0] == runs[1]
    assert "seconds" not in runs[0] and "test_accuracy" in runs[0]


def test_default_out_never_reuses_a_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert _default_out(None) == os.path.join("runs", "digits")
    os.makedirs("runs/digits")
    assert _default_out(None) == os.path.join("runs", "digits")  # empty folder: fine
    open("runs/digits/metrics.json", "w").close()
    assert _default_out("digits") == os.path.join("runs", "digits-2")
    assert _default_out("/data/flowers/") == os.path.join("runs", "flowers")


def test_evaluate_and_predict_equal_the_module_path(trained, tmp_path):
    """evaluate_run / predict_images run the fused engine; their numbers are the module path's."""
    from npmobilenet.data import DataLoader
    from npmobilenet.data.transforms import Normalize
    from npmobilenet.train import evaluate
    from npmobilenet.train.run import evaluate_run, load_run, predict_images

    out, _ = trained
    model, config = load_run(out)
    _, test = load_digits_dataset(32, channels=1)
    with open(out / "metrics.json") as f:
        m = json.load(f)
    model.fuse = None  # no engine: evaluate falls back to the module path
    normalize = Normalize(config["mean"], config["std"])
    loader = DataLoader(_test_split(config), 256, transform=normalize)
    module_path = evaluate(model, loader, 10)
    fused = evaluate_run(out, log=lambda line: None)
    assert fused["loss"] == pytest.approx(module_path["loss"], rel=1e-5)
    assert fused["loss"] == pytest.approx(m["test_loss"], rel=1e-5)
    np.testing.assert_array_equal(fused["confusion"], module_path["confusion"])
    from PIL import Image

    p = tmp_path / "digit.png"
    Image.fromarray((255 * test.x[3, 0]).astype(np.uint8)).save(p)
    ((_, top),) = predict_images(out, [str(p)], top_k=10)
    from npmobilenet.data.decode import decode
    from npmobilenet.train.predict import input_transform

    x = input_transform(config)([decode(str(p), 1)])  # (1, 1, 32, 32), as predict prepares it
    model, _ = load_run(out)
    logits = model.forward(x.astype(model.dtype))[0]
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    got = {name: prob for name, prob in top}
    np.testing.assert_allclose([got[c] for c in config["classes"]], probs, rtol=1e-4, atol=1e-6)


def _test_split(config):
    from npmobilenet.train.run import load_data

    _, test, _ = load_data(config, warn=lambda line: None)
    return test
