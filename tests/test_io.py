"""Weights on disk: safetensors round trips (here and both ways with PyTorch), atomic writes,
and clear errors for truncated or foreign files that leave the model untouched."""

from __future__ import annotations

import json
import os
import struct

import numpy as np
import pytest
import safetensors.numpy

from npmobilenet.io import load_state_dict_file, load_weights, save_state_dict, save_weights
from npmobilenet.models import MobileNetV1


def _model(seed=0, **kw):
    return MobileNetV1(alpha=0.25, num_classes=6, seed=seed, **kw)


def _trained_state(model):
    """Give buffers non-default values so a round trip that dropped them would show."""
    for k, v in model.state_dict().items():
        if k.endswith("running_mean"):
            v[...] = np.linspace(-1, 1, v.size)
        elif k.endswith("num_batches_tracked"):
            v[...] = 17
    return model


def _assert_same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype, k
        np.testing.assert_array_equal(sa[k], sb[k], err_msg=k)


def test_round_trip_restores_every_parameter_and_buffer(tmp_path):
    src = _trained_state(_model(seed=1))
    dst = _model(seed=2)
    path = tmp_path / "w.safetensors"
    save_weights(src, path)
    assert load_weights(dst, path) == ([], [])
    _assert_same_state(src, dst)


def test_file_is_plain_safetensors_with_torch_names_and_metadata(tmp_path):
    model = _model(dtype=np.float64)
    path = tmp_path / "w.safetensors"
    save_weights(model, path)
    raw = path.read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + header_len])  # the format is specified: no pickle inside
    meta = header.pop("__metadata__")
    assert (
        meta["alpha"] == "0.25" and meta["num_classes"] == "6" and "npmobilenet" in meta["producer"]
    )
    assert set(header) == set(model.state_dict())
    assert header["fc.weight"] == {**header["fc.weight"], "dtype": "F64", "shape": [6, 256]}
    assert header["first_conv.bn.num_batches_tracked"]["dtype"] == "I64"
    assert header["first_conv.bn.num_batches_tracked"]["shape"] == []


def test_save_state_dict_writes_strided_arrays_correctly(tmp_path):
    base = np.arange(24, dtype=np.float32).reshape(4, 6)
    state = {"t": base.T, "s": base[:, ::2], "scalar": np.array(3, np.int64)}
    path = tmp_path / "a.safetensors"
    save_state_dict(state, path)
    back = load_state_dict_file(path)
    for k, v in state.items():
        np.testing.assert_array_equal(back[k], v)
        assert back[k].shape == v.shape and back[k].dtype == v.dtype  # 0-d stays 0-d
        assert back[k].flags.writeable


def test_failed_save_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "w.safetensors"
    save_weights(_model(seed=1), path)
    before = path.read_bytes()
    with pytest.raises(TypeError, match=r"save_state_dict: bad must be a numeric numpy array"):
        save_state_dict({"ok": np.zeros(2), "bad": [1, 2]}, path)

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        save_weights(_model(seed=2), path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["w.safetensors"]  # the temporary file was removed


def test_saved_file_has_ordinary_permissions_and_its_folder_is_created(tmp_path):
    old = os.umask(0o022)
    try:
        path = tmp_path / "new" / "w.safetensors"
        save_weights(_model(seed=1), path)
        reference = tmp_path / "plain"
        reference.write_bytes(b"")  # what open(path, "wb") gives under the same umask
    finally:
        os.umask(old)
    assert (path.stat().st_mode & 0o777) == (reference.stat().st_mode & 0o777) == 0o644


def _assert_load_fails_and_changes_nothing(path, match):
    """load_weights(model, path) raises a ValueError matching ``match`` and leaves every
    parameter and buffer of the model as it was."""
    model = _model(seed=3)
    before = {k: v.copy() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=match):
        load_weights(model, path)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


@pytest.mark.parametrize(
    "content",
    [b"", b"not a safetensors file at all", b"\x00" * 7, "truncated"],
    ids=["empty", "text", "short", "truncated"],
)
def test_unreadable_file_is_a_clear_error_and_changes_nothing(tmp_path, content):
    path = tmp_path / "bad.safetensors"
    if content == "truncated":
        save_weights(_model(seed=1), path)
        content = path.read_bytes()[:-100]
    path.write_bytes(content)
    _assert_load_fails_and_changes_nothing(
        path, r"load_state_dict_file: .*bad.safetensors is not a readable safetensors file"
    )


def test_npz_file_is_rejected(tmp_path):
    path = tmp_path / "w.npz"
    np.savez(path, a=np.zeros(3))
    with pytest.raises(ValueError, match="is not a readable safetensors file"):
        load_state_dict_file(path)


def test_missing_file():
    match = "load_state_dict_file: no safetensors file at /nope"
    with pytest.raises(FileNotFoundError, match=match):
        load_state_dict_file("/nope/w.safetensors")


def test_weights_of_another_architecture_load_nothing(tmp_path):
    path = tmp_path / "w.safetensors"
    save_weights(MobileNetV1(alpha=0.5, num_classes=6), path)
    _assert_load_fails_and_changes_nothing(
        path,
        r"(?s)problem\(s\), nothing was loaded.*fc.weight: shape"
        r" \(6, 512\) in the state, \(6, 256\) in the model",
    )


def test_non_strict_load_reports_keys(tmp_path):
    path = tmp_path / "partial.safetensors"
    src = _model(seed=1)
    state = {k: v for k, v in src.state_dict().items() if not k.startswith("fc.")}
    save_state_dict({**state, "head.scale": np.ones(1, np.float32)}, path)
    dst = _model(seed=2)
    result = load_weights(dst, path, strict=False)
    assert result.missing_keys == ["fc.weight", "fc.bias"]
    assert result.unexpected_keys == ["head.scale"]
    np.testing.assert_array_equal(dst.first_conv.conv.weight.data, src.first_conv.conv.weight.data)
    assert not np.array_equal(dst.fc.weight.data, src.fc.weight.data)


def test_save_argument_errors(tmp_path):
    with pytest.raises(TypeError, match="save_state_dict: state must be a mapping"):
        save_state_dict([np.zeros(1)], tmp_path / "x")
    with pytest.raises(TypeError, match="save_state_dict: every key must be a str"):
        save_state_dict({1: np.zeros(1)}, tmp_path / "x")
    with pytest.raises(TypeError, match="save_state_dict: metadata must be a dict of str -> str"):
        save_state_dict({"a": np.zeros(1)}, tmp_path / "x", metadata={"a": 1})
    assert os.listdir(tmp_path) == []


def test_reserved_key_is_refused_not_written_unreadable(tmp_path):
    """A tensor named __metadata__ collides with the header's metadata entry: the save
    succeeded and wrote a file that safetensors itself cannot read back."""
    path = tmp_path / "w.safetensors"
    save_state_dict({"a": np.ones(2, np.float32)}, path)
    before = path.read_bytes()
    with pytest.raises(ValueError, match="save_state_dict: the key '__metadata__' is reserved"):
        save_state_dict({"__metadata__": np.zeros(2, np.float32)}, path)
    assert path.read_bytes() == before
    safetensors.numpy.load(before)  # the file left is one safetensors reads


@pytest.fixture
def one_torch_thread(torch):
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # see test_model_torch.py: two threads spin on a loaded machine
    yield torch
    torch.set_num_threads(before)


@pytest.mark.torch
@pytest.mark.kernels
def test_our_file_loads_into_torch_with_equal_outputs(tmp_path, one_torch_thread):
    torch = one_torch_thread
    import safetensors.torch
    from torch_reference import build_seed_mobilenet

    ours = _trained_state(_model(seed=4, dtype=np.float64))
    path = tmp_path / "ours.safetensors"
    save_weights(ours, path)
    ref = build_seed_mobilenet(torch, alpha=0.25, num_classes=6).double()
    ref.load_state_dict(safetensors.torch.load_file(str(path)))
    assert int(ref.first_conv.bn.num_batches_tracked) == 17
    x = np.random.default_rng(4).standard_normal((2, 3, 40, 40))
    with torch.no_grad():
        expected = ref.eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ours.eval().forward(x), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.torch
@pytest.mark.kernels
def test_torch_file_loads_here_with_equal_outputs(tmp_path, one_torch_thread):
    torch = one_torch_thread
    import safetensors.torch
    from torch_reference import build_seed_mobilenet

    torch.manual_seed(0)
    ref = build_seed_mobilenet(torch, alpha=0.25, num_classes=6, activation="relu6")
    ref.train()(torch.randn(4, 3, 32, 32))  # move the running statistics off 0 / 1
    path = tmp_path / "torch.safetensors"
    safetensors.torch.save_file(ref.state_dict(), str(path))
    ours = MobileNetV1(alpha=0.25, num_classes=6, activation="relu6")
    load_weights(ours, path)
    x = np.random.default_rng(5).standard_normal((2, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        expected = ref.eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ours.eval().forward(x), expected, rtol=1e-4, atol=1e-5)
    assert int(ours.first_conv.bn.num_batches_tracked) == 1


@pytest.mark.torch
def test_bfloat16_file_is_a_clear_error(tmp_path, one_torch_thread):
    import safetensors.torch

    path = tmp_path / "bf16.safetensors"
    safetensors.torch.save_file({"a": one_torch_thread.ones(2, dtype=one_torch_thread.bfloat16)},
                                str(path))  # fmt: skip
    with pytest.raises(ValueError, match="a dtype numpy lacks such as bfloat16"):
        load_state_dict_file(path)


def test_safetensors_numpy_reads_our_file_directly(tmp_path):
    path = tmp_path / "w.safetensors"
    model = _model(seed=6)
    save_weights(model, path)
    raw = safetensors.numpy.load_file(str(path))  # the library's own reader agrees
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(raw[k], v)
