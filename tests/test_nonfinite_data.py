"""nan and inf never pass silently: bad input images are refused at load time (naming the file,
the split and the first bad image), a non-finite test loss stops the run, and metrics.json is
always strict JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest

from npmobilenet.cli import main
from npmobilenet.data import ArrayDataset, DataLoader, load_digits_dataset
from npmobilenet.models import MobileNetV1
from npmobilenet.optim import SGD
from npmobilenet.train import NonFiniteLossError, Trainer, train_run, write_metrics
from npmobilenet.train.run import evaluate_run, load_run, save_model


@pytest.fixture(scope="module")
def digits():
    train, test = load_digits_dataset(32, channels=1)
    return train.x[:64], train.y[:64], test.x[:20], test.y[:20]


@pytest.mark.parametrize("key,split,index,value", [("x", "training", 5, np.nan),
                                                   ("x_test", "test", 3, -np.inf)])  # fmt: skip
def test_non_finite_image_is_refused_naming_file_split_and_index(
    tmp_path, digits, capsys, key, split, index, value
):
    x, y, xt, yt = (a.copy() for a in digits)
    (x if key == "x" else xt)[index, 0, 4, 7] = value
    path = tmp_path / "bad.npz"
    np.savez(path, x=x, y=y, x_test=xt, y_test=yt)
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=rf"bad\.npz: the {split} split \({key}\) holds a"
                       rf" non-finite value \({value}\) at image index {index}"):  # fmt: skip
        train_run({"data": str(path), "epochs": 1}, out, progress="none", log=lambda _: None)
    assert not out.exists()
    code = main(["train", "--data", str(path), "--out", str(out), "--progress", "none"])
    err = capsys.readouterr().err
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith("npmobilenet: compil")]
    assert code == 2 and f"image index {index}" in err and len(lines) == 1


def test_metrics_json_is_strict_json(tmp_path):
    metrics = {"test_loss": float("nan"), "history": {"test_loss": [1.5, np.float64("inf")]},
               "accuracy": np.float32(0.5)}  # fmt: skip
    write_metrics(tmp_path, metrics)
    text = (tmp_path / "metrics.json").read_text()

    def refuse(token):
        raise AssertionError(f"invalid JSON token {token}")

    back = json.loads(text, parse_constant=refuse)
    assert back["test_loss"] is None and back["history"]["test_loss"] == [1.5, None]


def _nan_running_mean(model):
    """A nan in the last batch norm's running mean: training (batch statistics) is unaffected,
    every eval-mode output is nan."""
    bn = [m for _, m in model.named_modules() if hasattr(m, "running_mean")][-1]
    bn.running_mean[0] = np.nan


def test_nan_test_loss_stops_the_run(digits):
    x, y, xt, yt = digits
    model = MobileNetV1(alpha=0.25, num_classes=10, in_channels=1, seed=0)
    _nan_running_mean(model)
    train = DataLoader(ArrayDataset(x, y), 32, shuffle=True)
    test = DataLoader(ArrayDataset(xt, yt, [str(i) for i in range(10)]), 32)
    t = Trainer(model, SGD(list(model.parameters()), lr=0.01), train, test, progress="none",
                log=None)  # fmt: skip
    with pytest.raises(NonFiniteLossError, match=r"the test loss is nan after epoch 1"):
        t.fit(1)
    assert t.epoch == 0 and t.history["test_loss"] == []


def test_evaluate_refuses_a_model_with_nan_outputs(tmp_path, digits):
    x, y, xt, yt = digits
    path = tmp_path / "d.npz"
    np.savez(path, x=x, y=y, x_test=xt, y_test=yt)
    train_run({"data": str(path), "epochs": 1, "batch_size": 32}, tmp_path / "run",
              progress="none", log=lambda _: None)  # fmt: skip
    model, config = load_run(tmp_path / "run")
    # finite weights whose eval outputs are nan: a negative running variance (sqrt of < 0)
    bn = [m for _, m in model.named_modules() if hasattr(m, "running_var")][-1]
    bn.running_var[0] = -1.0
    save_model(tmp_path / "nan.safetensors", model, config)
    with pytest.raises(ValueError, match=r"nan\.safetensors on its test images is nan"):
        evaluate_run(tmp_path / "nan.safetensors", log=lambda _: None)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_run_with_non_finite_weights_is_refused_before_predicting(tmp_path, digits, value):
    """predict printed every class at nan% and exited 0; evaluate, export-onnx and predict
    all read the run through load_run, which now names the damaged array."""
    from PIL import Image

    model = MobileNetV1(alpha=0.25, num_classes=3, in_channels=1, seed=0)
    model.state_dict()["fc.weight"][1, 2] = value
    config = {"classes": ["a", "b", "c"], "resolution": 32, "channels": 1, "mean": [0.5],
              "std": [0.25], "alpha": 0.25}  # fmt: skip
    save_model(tmp_path / "model.safetensors", model, config)
    image = tmp_path / "i.png"
    Image.fromarray(np.full((32, 32), 128, np.uint8)).save(image)
    assert main(["predict", "--checkpoint", str(tmp_path), str(image)]) == 2
    with pytest.raises(ValueError, match=r"fc\.weight holds 1 nan or inf value\(s\) of 768"):
        load_run(tmp_path)
