"""Files whose header was edited or damaged: the JSON entries npmobilenet records in a
safetensors header (the model config, a run's configuration) are checked where they are read,
so every reader (load_model, load_run and the predict / evaluate / export-onnx commands that use
it, train --init) raises a ValueError naming itself, the file and the entry; never a bare
JSONDecodeError or a TypeError from deep inside.

The damaged files are written by the safetensors library itself (``safetensors.numpy.save_file``
with edited metadata), as a user editing a header with it would.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import safetensors
import safetensors.numpy

from npmobilenet.interop.convert import run_config
from npmobilenet.io import load_model, save_weights
from npmobilenet.io.weights import MODEL_CONFIG, saved_config
from npmobilenet.models import MobileNetV1
from npmobilenet.train.finetune import read_weights
from npmobilenet.train.run import CONFIG_KEY, load_run, save_model


def _rewrite(path, out, **entries):
    """Copy the safetensors file ``path`` to ``out`` with header entries replaced (None: drop)."""
    with safetensors.safe_open(str(path), "numpy") as f:
        meta = dict(f.metadata() or {})
        arrays = {k: f.get_tensor(k) for k in f.keys()}
    for k, v in entries.items():
        if v is None:
            meta.pop(k, None)
        else:
            meta[k] = v
    safetensors.numpy.save_file(arrays, str(out), metadata=meta)
    return out


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("w") / "w.safetensors"
    save_weights(MobileNetV1(alpha=0.25, num_classes=4, seed=0), path)
    return path


@pytest.fixture(scope="module")
def run_file(tmp_path_factory):
    model = MobileNetV1(alpha=0.25, num_classes=4, in_channels=3, seed=0)
    model.labels = ["a", "b", "c", "d"]
    path = tmp_path_factory.mktemp("r") / "model.safetensors"
    save_model(path, model, run_config(model, "torchvision", resolution=64))
    return path


def _run_config(path) -> dict:
    with safetensors.safe_open(str(path), "numpy") as f:
        return json.loads(f.metadata()[CONFIG_KEY])


@pytest.mark.parametrize(
    "text, says",
    [("{alpha: 0.25", "is not JSON"), ("5", "must be a JSON object, got int 5"),
     ('"alpha"', "must be a JSON object, got str"), ("[1]", "must be a JSON object, got list")],
)  # fmt: skip
def test_damaged_model_config_is_a_clear_error_in_every_reader(weights, tmp_path, text, says):
    bad = _rewrite(weights, tmp_path / "bad.safetensors", **{MODEL_CONFIG: text})
    entry = f"the header entry '{MODEL_CONFIG}' {says}"
    # load_run reads a weights file (no run) with load_model
    for op, read in [("load_model", load_model), ("saved_config", saved_config),
                     ("load_model", load_run), ("--init", read_weights)]:  # fmt: skip
        with pytest.raises(ValueError) as e:
            read(bad)
        assert str(e.value).startswith(f"{op}: {bad}: {entry}"), str(e.value)
        assert len(str(e.value)) < 400


def test_damaged_run_configuration_is_a_clear_error(run_file, tmp_path):
    bad = _rewrite(run_file, tmp_path / "bad.safetensors", **{CONFIG_KEY: "{'classes': 3}"})
    with pytest.raises(ValueError, match=rf"^load_run: .*bad.* '{CONFIG_KEY}' is not JSON"):
        load_run(bad)
    bad = _rewrite(run_file, tmp_path / "bad.safetensors", **{CONFIG_KEY: "null"})
    with pytest.raises(ValueError, match=r"must be a JSON object, got NoneType None"):
        load_run(bad)


@pytest.mark.parametrize(
    "key, value, says",
    [("classes", "abcd", "classes must be a list of class names, got str 'abcd'"),
     ("classes", [0, 1, 2, 3], "classes must be a list of class names, got list of length 4"),
     ("resolution", "64", "resolution must be an integer >= 32, got str '64'"),
     ("resolution", 8, "resolution must be an integer >= 32, got int 8"),
     ("channels", 3.0, "channels must be an integer >= 1, got float 3.0"),
     ("mean", None, "mean must be a list of finite numbers, one per channel, got NoneType"),
     ("std", [0.2, 0.0, 0.2], "std must be positive, got list of length 3"),
     ("std", [0.2, "x", 0.2], "std must be a list of finite numbers"),
     ("alpha", "0.25", "alpha must be a number > 0, got str '0.25'")],
)  # fmt: skip
def test_edited_run_setting_is_named(run_file, tmp_path, key, value, says):
    config = {**_run_config(run_file), key: value}
    bad = _rewrite(run_file, tmp_path / "bad.safetensors", **{CONFIG_KEY: json.dumps(config)})
    with pytest.raises(ValueError) as e:
        load_run(bad)
    assert str(e.value).startswith(f"load_run: {bad}: the run configuration's {says}")


@pytest.mark.parametrize("key", ["resolution", "mean", "alpha"])
def test_run_configuration_missing_a_setting_is_refused(run_file, tmp_path, key):
    """A default would silently stand in for it (32x32 images for a 64x64 run)."""
    config = _run_config(run_file)
    del config[key]
    bad = _rewrite(run_file, tmp_path / "bad.safetensors", **{CONFIG_KEY: json.dumps(config)})
    with pytest.raises(ValueError, match=rf"holds no run configuration .*; it lacks {key}$"):
        load_run(bad)


def test_intact_run_file_still_loads(run_file):
    model, config = load_run(run_file)
    assert config["classes"] == ["a", "b", "c", "d"] and config["resolution"] == 64
    ref = MobileNetV1(alpha=0.25, num_classes=4, in_channels=3, seed=0)
    for k, v in ref.state_dict().items():
        np.testing.assert_array_equal(model.state_dict()[k], v, err_msg=k)


@pytest.mark.parametrize("cut", [0, 5, 100, -1])
def test_load_model_of_an_unreadable_file_says_so(weights, tmp_path, cut):
    """Not "records no model config ... pass the arguments it was made with": no argument
    makes a truncated file load."""
    data = weights.read_bytes()
    bad = tmp_path / "cut.safetensors"
    bad.write_bytes(data[: cut % len(data)])
    with pytest.raises(ValueError, match=r"is not a readable safetensors file") as e:
        load_model(bad)
    assert "pass the arguments" not in str(e.value)


def test_evaluate_of_a_converted_file_without_data_asks_for_it(tmp_path, capsys):
    """A converted file records a run configuration without data; evaluate crashed on it with
    'expected str, bytes or os.PathLike object, not NoneType'."""
    from npmobilenet.cli import main

    out = tmp_path / "converted.safetensors"
    src = os.path.join(os.path.dirname(__file__), "fixtures", "interop",
                       "timm_mobilenetv1.safetensors")  # fmt: skip
    assert main(["convert", src, str(out)]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"npmobilenet evaluate: error: evaluate: {out} records no data of its")
    assert "--data" in err and "NoneType" not in err
