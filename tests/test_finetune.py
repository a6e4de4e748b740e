"""Fine-tuning from the command line: ``--init WEIGHTS``, ``--freeze-features`` and
``--resume --epochs N`` extending a finished run (a small digits subset, seconds)."""

from __future__ import annotations

import contextlib
import io
import json
import os

import numpy as np
import pytest
from torch_reference import build_seed_mobilenet

from npmobilenet.cli import main
from npmobilenet.data import load_digits_dataset
from npmobilenet.io import load_weights
from npmobilenet.io.weights import load_state_dict_file, save_state_dict
from npmobilenet.models import MobileNetV1
from npmobilenet.train.finetune import load_init_weights, read_weights
from npmobilenet.train.metrics import without_timings


def _npz(path, classes):
    """192 train / 60 test grey digits at 32x32, labels folded into ``classes`` classes."""
    train, test = load_digits_dataset(32, channels=1)
    np.savez(path, x=train.x[:192], y=train.y[:192] % classes, x_test=test.x[:60],
             y_test=test.y[:60] % classes)  # fmt: skip
    return str(path)


def _train(*args):
    """Run ``npmobilenet train ARGS``; returns (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["train", "--progress", "none", "--batch-size", "64", *args])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def ten(tmp_path_factory):
    return _npz(tmp_path_factory.mktemp("data") / "ten.npz", 10)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, ten):
    """A finished 2-epoch run on 10 classes; returns its folder."""
    out = tmp_path_factory.mktemp("runs") / "base"
    assert _train("--data", ten, "--epochs", "2", "--out", str(out))[0] == 0
    return out


def _params(model):
    return {k: p.data.copy() for k, p in model.named_parameters()}


def test_read_weights_loads_the_exact_arrays_of_a_run_and_of_a_checkpoint(finished):
    saved = load_state_dict_file(finished / "model.safetensors")
    for source in (finished, finished / "model.safetensors"):
        model = MobileNetV1(0.25, 10, 1, seed=7)
        load_init_weights(model, read_weights(source)[0], source, log=None)
        for k, v in model.state_dict().items():
            np.testing.assert_array_equal(v, saved[k])
    state, config = read_weights(finished / "checkpoint.safetensors")
    assert config["alpha"] == 0.25 and set(state) == set(saved)


def test_init_and_freeze_features_train_only_the_classifier(finished, ten, tmp_path):
    out = tmp_path / "tuned"
    code, stdout, _ = _train("--data", ten, "--epochs", "1", "--out", str(out), "--init",
                             str(finished), "--freeze-features")  # fmt: skip
    assert code == 0
    assert "initialised from" in stdout and "training only fc.weight, fc.bias" in stdout
    before = load_state_dict_file(finished / "model.safetensors")
    after = load_state_dict_file(out / "model.safetensors")
    model = MobileNetV1(0.25, 10, 1, seed=0)
    for name in _params(model):
        if name.startswith("fc."):
            assert np.abs(after[name] - before[name]).max() > 0  # the classifier trained
        else:
            np.testing.assert_array_equal(after[name], before[name])  # bit-identical


def test_init_onto_another_class_count_reinitialises_the_classifier(finished, tmp_path):
    three = _npz(tmp_path / "three.npz", 3)
    out = tmp_path / "three"
    code, stdout, _ = _train("--data", three, "--epochs", "1", "--out", str(out), "--init",
                             str(finished / "model.safetensors"), "--freeze-features")  # fmt: skip
    assert code == 0
    assert "has 10 classes and this data 3: fc is re-initialised" in stdout
    before = load_state_dict_file(finished / "model.safetensors")
    after = load_state_dict_file(out / "model.safetensors")
    assert after["fc.weight"].shape == (3, 256)
    np.testing.assert_array_equal(after["depthwise_sep_conv8.pwconv.weight"],
                                  before["depthwise_sep_conv8.pwconv.weight"])  # fmt: skip


def test_init_from_torch_weights_infers_the_width(torch, ten, tmp_path):
    """A 1000-class alpha-0.5 torch model's weights, fine-tuned onto 10 classes."""
    torch.manual_seed(0)
    reference = build_seed_mobilenet(torch, 0.5, 1000, 1)
    state = {k: v.detach().numpy().copy() for k, v in reference.state_dict().items()}
    save_state_dict(state, tmp_path / "imagenet.safetensors")
    out = tmp_path / "from_torch"
    init = str(tmp_path / "imagenet.safetensors")
    code, stdout, _ = _train("--data", ten, "--epochs", "1", "--out", str(out), "--init", init,
                             "--freeze-features")  # fmt: skip
    assert code == 0, stdout
    assert "alpha 0.5" in stdout and "1000 classes" in stdout
    model = MobileNetV1(0.5, 10, 1, seed=0)
    load_weights(model, out / "model.safetensors")
    for name, p in model.named_parameters():
        if not name.startswith("fc."):
            np.testing.assert_array_equal(p.data, state[name])


@pytest.mark.parametrize(
    "args,words",
    [
        (["--alpha", "0.5"], ["first_conv.conv.weight", "(8, 1, 3, 3) in the file", "--alpha"]),
        (["--init-missing"], ["no weights file"]),
    ],
)
def test_init_errors_are_clear(finished, ten, tmp_path, args, words):
    init = str(tmp_path / "nothing.safetensors") if args == ["--init-missing"] else str(finished)
    args = [] if args == ["--init-missing"] else args
    code, _, stderr = _train("--data", ten, "--epochs", "1", "--out", str(tmp_path / "x"),
                             "--init", init, *args)  # fmt: skip
    assert code == 2
    for word in words:
        assert word in stderr


@pytest.mark.slow
def test_resume_with_more_epochs_extends_a_finished_run(finished, ten, tmp_path):
    import shutil

    run = tmp_path / "extended"
    shutil.copytree(finished, run)
    with open(run / "metrics.json") as f:
        base = without_timings(json.load(f))
    code, stdout, stderr = _train("--data", ten, "--out", str(run), "--resume", "--epochs", "3")
    assert code == 0, stderr
    assert "resumed from" in stdout and "after epoch 2" in stdout
    assert "extending the finished 2-epoch run to 3 epochs" in stdout
    assert "epoch 3/3" in stdout and "epoch 1/3" not in stdout
    with open(run / "metrics.json") as f:
        extended = without_timings(json.load(f))
    assert extended["epochs"] == 3 and extended["history"]["epoch"] == [1, 2, 3]
    for key, values in base["history"].items():  # the first two epochs are the finished run's
        assert extended["history"][key][:2] == values
    # the extra epoch has a one-cycle of its own: the learning rates of a fresh 1-epoch run
    assert _train("--data", ten, "--epochs", "1", "--out", str(tmp_path / "one"))[0] == 0
    with open(tmp_path / "one" / "metrics.json") as f:
        assert extended["history"]["lr"][2] == json.load(f)["history"]["lr"][0]
    assert extended["config"]["schedule_start"] == 2
    # the same command again: nothing left to train, the same weights
    again = load_state_dict_file(run / "model.safetensors")
    assert _train("--data", ten, "--out", str(run), "--resume", "--epochs", "3")[0] == 0
    for k, v in load_state_dict_file(run / "model.safetensors").items():
        np.testing.assert_array_equal(v, again[k])


@pytest.mark.parametrize("epochs,words", [("2", ["already trained 2 epochs", "more than 2"]),
                                          ("1", ["already trained 2 epochs"])])  # fmt: skip
def test_resume_with_fewer_epochs_is_refused(finished, ten, tmp_path, epochs, words):
    import shutil

    run = tmp_path / "r"
    shutil.copytree(finished, run)
    code, _, stderr = _train("--data", ten, "--out", str(run), "--resume", "--epochs", epochs)
    if epochs == "2":  # the run's own epoch count: a plain resume of a finished run
        assert code == 0
        return
    assert code == 2
    for word in words:
        assert word in stderr


def test_init_from_another_library_file_says_to_convert_it(tmp_path, capsys):
    """A timm file or an ONNX graph given to --init got a list of missing keys, or 'not a
    readable safetensors file (... bfloat16?)'; the way to use them is convert."""
    fixtures = os.path.join(os.path.dirname(__file__), "fixtures", "interop")
    for name in ("timm_mobilenetv1.safetensors", "torch_onnx_legacy.onnx",
                 "keras_mobilenet.keras", "slim_mobilenet_v1/model.ckpt"):  # fmt: skip
        assert main(["train", "--init", os.path.join(fixtures, name), "--out",
                     str(tmp_path / "out"), "--progress", "none"]) == 2  # fmt: skip
        err = capsys.readouterr().err
        assert err.startswith("npmobilenet train: error:") and "npmobilenet convert" in err, err
    assert not (tmp_path / "out").exists()
