"""Loaders of published MobileNetV1 files against the logits their own libraries computed.

The fixtures in tests/fixtures/interop were written by timm, transformers, keras, tensorflow
and torch.onnx (make_fixtures.py there; versions in versions.json): each model file sits next
to ``<name>.logits.npy``, the library's logits for ``input.npy`` (2, 3, 67, 45). Odd sizes,
so the three padding conventions give different maps at every stride-2 layer.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
from conftest import IN_CI

from npmobilenet import interop
from npmobilenet.io import load_model, save_weights

FIX = os.path.join(os.path.dirname(__file__), "fixtures", "interop")
TOL = 1e-4  # max abs error on float32 logits


def need(module: str):
    """Import an optional dependency: a failure under CI=true, a visible skip elsewhere."""
    try:
        return __import__(module)
    except ImportError:
        if IN_CI:
            pytest.fail(f"{module} is required under CI=true: pip install '.[test]'")
        pytest.skip(f"{module} is not installed (pip install '.[test]')")


def fixture(name: str) -> str:
    return os.path.join(FIX, name)


def reference(name: str) -> np.ndarray:
    return np.load(fixture(f"{name}.logits.npy"))


@pytest.fixture(scope="module")
def x():
    return np.load(fixture("input.npy"))


def max_error(model, x, name) -> float:
    ref = reference(name)
    out = model(x)
    assert out.shape == ref.shape and out.dtype == np.float32
    return float(np.abs(out - ref).max())


# ------------------------------------------------------------------------------ the loaders
LOADS = [
    ("keras", "keras_mobilenet.keras", "keras_mobilenet", "keras", 1e-3),
    ("keras", "keras_mobilenet.weights.h5", "keras_mobilenet", "keras", 1e-3),
    ("keras", "keras_mobilenet_legacy.h5", "keras_mobilenet_legacy", "keras", 1e-3),
    ("tf", "slim_mobilenet_v1/model.ckpt", "slim_mobilenet_v1", "tf_same", 1e-3),
    ("timm", "timm_mobilenetv1.safetensors", "timm_mobilenetv1", "torch", 1e-5),
    ("hf", "hf_mobilenet_v1", "hf_mobilenet_v1", "tf_same", 1e-3),
    ("onnx", "torch_onnx_legacy.onnx", "torch_onnx_legacy", "torch", None),
    ("onnx", "torch_onnx_dynamo.onnx", "torch_onnx_dynamo", "torch", None),
]


@pytest.mark.parametrize("source, path, ref, padding, eps", LOADS, ids=[p for _, p, *_ in LOADS])
def test_loader_reproduces_the_libraries_logits(source, path, ref, padding, eps, x):
    if source == "keras":
        need("h5py")
    if source == "onnx":
        need("onnx")
    model = interop.load(fixture(path), source)
    assert model.config["padding"] == padding and model.config["activation"] == "relu6"
    if eps is not None:
        assert model.config["bn_eps"] == eps
    assert not model.training
    assert max_error(model, x, ref) <= TOL


@pytest.mark.parametrize("path", [p for _, p, *_ in LOADS], ids=[p for _, p, *_ in LOADS])
def test_auto_detection_picks_the_right_loader(path):
    want = {p: s for s, p, *_ in LOADS}[path]
    assert interop.detect_source(fixture(path)) == want


def test_each_convention_matters(x):
    """The same weights under another padding rule or epsilon give clearly wrong logits, so
    the matches above test the conventions, not only the weights."""
    need("h5py")
    model = interop.load_keras(fixture("keras_mobilenet.weights.h5"))
    state = model.state_dict()
    for change in ({"padding": "tf_same"}, {"padding": "torch"}, {"bn_eps": 1e-5}):
        other = type(model)(**{**_ctor(model), **change}).eval()
        other.load_state_dict(state)
        assert max_error(other, x, "keras_mobilenet") > 100 * TOL, change


def _ctor(model) -> dict:
    keys = ("alpha", "num_classes", "in_channels", "activation", "padding", "bn_eps")
    return {k: model.config[k] for k in keys}


def test_converted_file_rebuilds_the_model_alone(tmp_path, x):
    """save_weights records the config (padding, eps, activation ...) and class names, so
    load_model needs nothing but the file."""
    model = interop.load_tf_checkpoint(fixture("slim_mobilenet_v1/model.ckpt"))
    model.labels = [f"name {i}" for i in range(model.config["num_classes"])]
    path = tmp_path / "converted.safetensors"
    save_weights(model, path)
    again = load_model(path)
    assert again.config == model.config and again.labels == model.labels
    assert max_error(again, x, "slim_mobilenet_v1") <= TOL


def test_a_file_without_config_loads_with_flags(tmp_path, x):
    from npmobilenet.io import save_state_dict

    model = interop.load_tf_checkpoint(fixture("slim_mobilenet_v1/model.ckpt"))
    path = tmp_path / "bare.safetensors"
    state = {k: v for k, v in model.state_dict().items() if "num_batches_tracked" not in k}
    save_state_dict(state, path)  # no metadata, no counters (as other tools write)
    with pytest.raises(ValueError, match="records no model config"):
        load_model(path)
    again = load_model(path, **_ctor(model))
    assert max_error(again, x, "slim_mobilenet_v1") <= TOL


# ------------------------------------------------------------------------------ bad input
def _truncated(tmp_path, name: str, keep: float = 0.5) -> str:
    src = fixture(name)
    dst = tmp_path / os.path.basename(name)
    data = open(src, "rb").read()
    dst.write_bytes(data[: int(len(data) * keep)])
    return str(dst)


def test_truncated_files_are_refused_naming_the_file(tmp_path):
    need("h5py")
    for name, load in (
        ("keras_mobilenet.weights.h5", interop.load_keras),
        ("keras_mobilenet_legacy.h5", interop.load_keras),
        ("keras_mobilenet.keras", interop.load_keras),
        ("timm_mobilenetv1.safetensors", interop.load_timm),
    ):
        path = _truncated(tmp_path, name)
        with pytest.raises(ValueError, match=r"truncated") as e:
            load(path)
        assert path in str(e.value) and len(str(e.value)) < 600


def test_truncated_tf_checkpoint_is_refused(tmp_path):
    d = tmp_path / "ckpt"
    shutil.copytree(fixture("slim_mobilenet_v1"), d)
    data = d / "model.ckpt.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[:-1000])
    with pytest.raises(ValueError, match=r"truncated or corrupt") as e:
        interop.load_tf_checkpoint(d / "model.ckpt")
    assert "model.ckpt.data-00000-of-00001" in str(e.value)
    index = d / "model.ckpt.index"
    index.write_bytes(index.read_bytes()[:-60])
    with pytest.raises(ValueError, match="not a TensorFlow checkpoint index"):
        interop.load_tf_checkpoint(d / "model.ckpt")
    with pytest.raises(FileNotFoundError, match="no such file"):
        interop.load_tf_checkpoint(tmp_path / "missing")


def test_keras_file_of_another_model_is_refused():
    need("h5py")
    path = fixture("keras_other_model.keras")
    with pytest.raises(ValueError, match="not a keras.applications.MobileNet file") as e:
        interop.load_keras(path)
    assert path in str(e.value)


def test_timm_head_conv_variant_is_refused():
    path = fixture("timm_mobilenetv1_100h.safetensors")
    with pytest.raises(ValueError, match="mobilenetv1_100h") as e:
        interop.load_timm(path)
    assert path in str(e.value)


def test_timm_file_of_another_architecture_is_refused():
    path = fixture("timm_mobilenetv2_050.safetensors")
    with pytest.raises(ValueError, match="another architecture") as e:
        interop.load_timm(path)
    assert path in str(e.value)


def test_unknown_width_is_refused(tmp_path):
    """A stem of 12 channels (alpha 0.375) followed by alpha-0.25 blocks fits no width."""
    from npmobilenet.io import load_state_dict_file, save_state_dict

    state = load_state_dict_file(fixture("timm_mobilenetv1.safetensors"))
    state["conv_stem.weight"] = np.zeros((12, 3, 3, 3), np.float32)
    for k in ("weight", "bias", "running_mean", "running_var"):
        state[f"bn1.{k}"] = np.ones(12, np.float32)
    path = str(tmp_path / "odd.safetensors")
    save_state_dict(state, path)
    with pytest.raises(ValueError, match="unknown width") as e:
        interop.load_timm(path)
    assert path in str(e.value)


def test_hf_model_without_classifier_is_refused(tmp_path):
    from npmobilenet.io import load_state_dict_file, save_state_dict

    state = load_state_dict_file(fixture("hf_mobilenet_v1/model.safetensors"))
    base = {k.removeprefix("mobilenet_v1."): v for k, v in state.items() if "classifier" not in k}
    save_state_dict(base, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="without its classification head"):
        interop.load_hf(tmp_path)


def test_unknown_source_and_undetectable_file(tmp_path):
    with pytest.raises(ValueError, match="source must be one of"):
        interop.load(fixture("input.npy"), "caffe")
    from npmobilenet.io import save_state_dict

    path = tmp_path / "x.safetensors"
    save_state_dict({"a": np.zeros(3)}, path)
    with pytest.raises(ValueError, match="cannot tell which library wrote"):
        interop.load(path)


@pytest.mark.parametrize(
    "path, ref", [(p, r) for _, p, r, *_ in LOADS], ids=[p for _, p, *_ in LOADS]
)
def test_fused_engine_reproduces_the_libraries_logits(path, ref, x):
    """model.fuse() runs every padding convention (TF "SAME", Keras, PyTorch)."""
    if path.endswith((".h5", ".keras")):
        need("h5py")
    if path.endswith(".onnx"):
        need("onnx")
    engine = interop.load(fixture(path)).fuse()
    assert np.abs(engine(x) - reference(ref)).max() <= TOL


# ------------------------------------------------------------------------------ the CLI
@pytest.mark.parametrize(
    "path, ref", [(p, r) for _, p, r, *_ in LOADS], ids=[p for _, p, *_ in LOADS]
)
def test_cli_convert_writes_a_file_that_rebuilds_the_model(tmp_path, path, ref, x, capsys):
    from npmobilenet.cli import main
    from npmobilenet.train import load_run

    if path.endswith((".h5", ".keras")):
        need("h5py")
    if path.endswith(".onnx"):
        need("onnx")
    out = tmp_path / "converted.safetensors"
    assert main(["convert", fixture(path), str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    assert max_error(load_model(out), x, ref) <= TOL
    model, run = load_run(out)  # what predict, evaluate and export-onnx read
    assert max_error(model, x, ref) <= TOL and len(run["classes"]) == model.config["num_classes"]


def test_cli_convert_refuses_bad_input_and_writes_nothing(tmp_path, capsys):
    from npmobilenet.cli import main

    out = tmp_path / "out.safetensors"
    for src, source in (
        (fixture("timm_mobilenetv2_050.safetensors"), "auto"),
        (fixture("timm_mobilenetv1_100h.safetensors"), "timm"),
        (fixture("input.npy"), "auto"),
        (str(tmp_path / "missing.onnx"), "auto"),
    ):
        assert main(["convert", src, str(out), "--from", source]) == 2
        err = capsys.readouterr().err
        assert err.startswith("npmobilenet convert: error:") and len(err) < 600
        assert not out.exists()


def test_cli_export_onnx_matches_in_onnxruntime(tmp_path, x, capsys):
    from test_onnx import run_ort

    from npmobilenet.cli import main

    need("onnx")
    converted, onnx_path = tmp_path / "m.safetensors", tmp_path / "m.onnx"
    assert main(["convert", fixture("keras_mobilenet.weights.h5"), str(converted)]) == 0
    assert main(["export-onnx", str(converted), str(onnx_path)]) == 0
    out = run_ort(onnx_path, x)
    assert np.abs(out - reference("keras_mobilenet")).max() <= TOL


def test_labels_come_from_the_file_or_imagenet():
    hf = interop.load_hf(fixture("hf_mobilenet_v1"))
    assert hf.labels == [f"class {i}" for i in range(10)]  # config.json's id2label
    names = interop.imagenet_labels(1001)
    assert names[0] == "background" and names[1] == interop.imagenet_labels()[0]
    assert names[1].startswith("tench") and len(set(interop.imagenet_wnids())) == 1000
    scores = np.zeros((1, 1000), np.float32)
    scores[0, 1] = 2.0
    scores[0, 2] = 1.0
    top = interop.decode_predictions(scores, top=2)[0]
    assert [(i, n.split(",")[0]) for i, n, _ in top] == [(1, "goldfish"), (2, "great white shark")]


def test_fine_tuning_starts_from_a_converted_file_with_its_conventions(tmp_path, capsys):
    """train --init takes padding, epsilon and activation from the converted Keras weights,
    trains only the new classifier with --freeze-features, and predict reads the run."""
    from PIL import Image

    from npmobilenet.cli import main

    need("h5py")
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (tmp_path / "imgs" / name).mkdir(parents=True)
        for i in range(4):
            colour = tuple(int(v) for v in rng.integers(0, 256, 3))
            Image.new("RGB", (40, 36), colour).save(tmp_path / "imgs" / name / f"{i}.png")
    converted = tmp_path / "keras.safetensors"
    assert main(["convert", fixture("keras_mobilenet.keras"), str(converted)]) == 0
    run = tmp_path / "run"
    args = ["train", "--data", str(tmp_path / "imgs"), "--init", str(converted), "--epochs", "1",
            "--freeze-features", "--resolution", "32", "--batch-size", "4", "--out", str(run),
            "--progress", "none"]  # fmt: skip
    assert main(args) == 0
    tuned, start = load_model(run / "model.safetensors"), load_model(converted)
    assert {k: tuned.config[k] for k in ("padding", "bn_eps", "activation")} == {
        "padding": "keras", "bn_eps": 1e-3, "activation": "relu6"
    }  # fmt: skip
    w = "depthwise_sep_conv5.dwconv.weight"
    np.testing.assert_array_equal(tuned.state_dict()[w], start.state_dict()[w])
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(run), str(tmp_path / "imgs" / "a" / "0.png")]) == 0
    assert "0.png" in capsys.readouterr().out


def test_predict_and_export_take_a_plain_weights_file(tmp_path, capsys):
    """A save_weights file (model config and labels, no training run) is enough for predict
    and export-onnx: the model is rebuilt from the file alone."""
    from PIL import Image

    from npmobilenet.cli import main
    from npmobilenet.models import MobileNetV1

    model = MobileNetV1(alpha=0.25, num_classes=3, padding="keras", bn_eps=1e-3, seed=0)
    model.labels = ["red", "green", "blue"]
    save_weights(model, tmp_path / "w.safetensors")
    Image.new("RGB", (50, 40), (10, 200, 30)).save(tmp_path / "img.png")
    argv = ["predict", "--checkpoint", str(tmp_path / "w.safetensors"), str(tmp_path / "img.png")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in model.labels)
    need("onnx")
    argv = ["export-onnx", str(tmp_path / "w.safetensors"), str(tmp_path / "w.onnx")]
    assert main(argv) == 0
    assert interop.load_onnx(tmp_path / "w.onnx").config["padding"] == "keras"


def test_loaders_import_no_framework():
    """Reading every format imports neither torch, tensorflow, keras nor transformers."""
    import subprocess
    import sys

    need("h5py")
    code = (
        "import sys; from npmobilenet import interop\n"
        f"for p in {[p for _, p, *_ in LOADS if not p.endswith('.onnx')]!r}:\n"
        f"    interop.load({FIX!r} + '/' + p)\n"
        "bad = [m for m in ('torch', 'tensorflow', 'keras', 'transformers', 'timm')"
        " if m in sys.modules]\n"
        "print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
