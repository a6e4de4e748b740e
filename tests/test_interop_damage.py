"""Published files whose settings or side files are edited or damaged: the JSON a loader reads for a
model's conventions (Hugging Face's config.json, a .keras file's config.json, the labels an
ONNX file records) gets a ValueError naming the loader, the file and the setting, never an
AttributeError or a bare float() error, and an intact config still loads exactly (logits of
the library that wrote the file). An ONNX graph's truncated external data file is named too.
"""

from __future__ import annotations

import copy
import json
import shutil
import zipfile

import numpy as np
import pytest
from test_interop import fixture, need, reference

from npmobilenet import interop


def _hf_copy(tmp_path, **settings):
    folder = tmp_path / "hf"
    shutil.copytree(fixture("hf_mobilenet_v1"), folder)
    path = folder / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **settings}))
    return folder


@pytest.mark.parametrize(
    "key, value, says",
    [("id2label", ["cat"] * 10, "id2label must be an object, got list of length 10"),
     ("id2label", "cats", "id2label must be an object, got str 'cats'"),
     ("layer_norm_eps", "1e-3", "layer_norm_eps must be a number, got str '1e-3'"),
     ("layer_norm_eps", [0.001], "layer_norm_eps must be a number, got list"),
     ("layer_norm_eps", True, "layer_norm_eps must be a number, got bool True"),
     ("tf_padding", "false", "tf_padding must be true or false, got str 'false'")],
)  # fmt: skip
def test_hf_config_of_the_wrong_type_is_named(tmp_path, key, value, says):
    folder = _hf_copy(tmp_path, **{key: value})
    with pytest.raises(ValueError) as e:
        interop.load_hf(folder)
    assert str(e.value).startswith(f"load_hf: {folder}: config.json's {says}")


def test_hf_config_with_null_settings_uses_the_defaults(tmp_path, x):
    """transformers writes null for unset values; the fixture's defaults give its logits."""
    model = interop.load_hf(_hf_copy(tmp_path, layer_norm_eps=None, id2label=None))
    assert model.config["bn_eps"] == 1e-3 and model.config["padding"] == "tf_same"
    assert np.abs(model(x) - reference("hf_mobilenet_v1")).max() < 1e-4


@pytest.fixture(scope="module")
def x():
    return np.load(fixture("input.npy"))


def _keras_with_config(tmp_path, config):
    with zipfile.ZipFile(fixture("keras_mobilenet.keras")) as z:
        files = {n: z.read(n) for n in z.namelist()}
    path = tmp_path / "edited.keras"
    with zipfile.ZipFile(path, "w") as out:
        for name, data in files.items():
            out.writestr(name, json.dumps(config) if name == "config.json" else data)
    return path


def _keras_config():
    with zipfile.ZipFile(fixture("keras_mobilenet.keras")) as z:
        return json.loads(z.read("config.json"))


def _set_epsilon(config, value):
    config = copy.deepcopy(config)
    for layer in config["config"]["layers"]:
        if layer["class_name"] == "BatchNormalization":
            layer["config"]["epsilon"] = value
    return config


@pytest.mark.parametrize(
    "config", [[1], {"config": [1]}, {"config": {"layers": "conv1"}},
               {"config": {"layers": ["conv1", 1]}}, {"config": {"layers": [{"config": 3}]}}],
)  # fmt: skip
def test_keras_config_that_is_not_a_model_config_is_named(tmp_path, config):
    need("h5py")
    path = _keras_with_config(tmp_path, config)
    with pytest.raises(ValueError, match=rf"^load_keras: {path}: its model config is not a Keras"):
        interop.load_keras(path)


def test_keras_epsilon_of_the_wrong_type_is_named(tmp_path):
    need("h5py")
    path = _keras_with_config(tmp_path, _set_epsilon(_keras_config(), "0.001"))
    with pytest.raises(ValueError, match=rf"^load_keras: {path}: a batch norm's epsilon is str"):
        interop.load_keras(path)


def test_keras_rewritten_config_still_loads_exactly(tmp_path, x):
    need("h5py")
    model = interop.load_keras(_keras_with_config(tmp_path, _keras_config()))
    assert np.abs(model(x) - reference("keras_mobilenet")).max() < 1e-3


@pytest.mark.parametrize(
    "text, says", [("{cat", "is not JSON"), ("5", "must be a JSON array, got int 5"),
                   ('{"0": "cat"}', "must be a JSON array, got dict")],
)  # fmt: skip
def test_onnx_labels_metadata_that_is_not_a_list_is_named(tmp_path, text, says):
    onnx = need("onnx")
    proto = onnx.load(fixture("torch_onnx_legacy.onnx"))
    entry = proto.metadata_props.add()
    entry.key, entry.value = "npmobilenet.labels", text
    path = tmp_path / "labelled.onnx"
    onnx.save(proto, str(path))
    with pytest.raises(ValueError) as e:
        interop.load_onnx(path)
    entry = "the header entry 'npmobilenet.labels'"
    assert str(e.value).startswith(f"load_onnx: {path}: {entry} {says}")



@pytest.mark.parametrize("cut", [0, 100, 424928, -1])
def test_onnx_with_truncated_external_data_names_the_file(tmp_path, cut):
    """torch.onnx's dynamo exporter writes the weights to NAME.onnx.data beside the graph; a
    truncated one raised onnx's bare 'External data length (864) exceeds available data'."""
    need("onnx")
    for name in ("torch_onnx_dynamo.onnx", "torch_onnx_dynamo.onnx.data"):
        shutil.copy(fixture(name), tmp_path / name)
    data = tmp_path / "torch_onnx_dynamo.onnx.data"
    data.write_bytes(data.read_bytes()[:cut])
    path = tmp_path / "torch_onnx_dynamo.onnx"
    with pytest.raises(ValueError, match=rf"^load_onnx: {path}: not a readable ONNX file .*"
                       r"exceeds available data"):  # fmt: skip
        interop.load_onnx(path)
