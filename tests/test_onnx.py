"""ONNX: export_onnx runs in onnxruntime and matches the model; load_onnx reads it back exactly
and reads what torch.onnx.export writes (BN folded into the convs); bad graphs are refused."""

from __future__ import annotations

import numpy as np
import pytest
from test_interop import fixture, need

from npmobilenet import interop
from npmobilenet.models import MobileNetV1
from npmobilenet.nn import BatchNorm2d


def random_model(padding="torch", activation="relu6", classes=7, seed=0, dtype=np.float32,
                 alpha=0.25, in_ch=3, **kw):  # fmt: skip
    """A model in eval mode whose batch-norm statistics were measured on a random batch (so
    every layer is normalised and the logits depend on the input, as a trained model's do),
    random gamma, beta and classifier. ``kw``: further MobileNetV1 arguments (bn_eps 1e-3
    unless given)."""
    kw = {"bn_eps": 1e-3, **{k: v for k, v in kw.items() if v is not None}}
    model = MobileNetV1(alpha=alpha, num_classes=classes, in_channels=in_ch, activation=activation,
                        padding=padding, seed=seed, dtype=dtype, **kw)  # fmt: skip
    rng = np.random.default_rng(seed)
    bns = [m for _, m in model.named_modules() if isinstance(m, BatchNorm2d)]
    for m in bns:
        m.momentum = 1.0  # the running statistics become this batch's
    model.train()(rng.uniform(-1, 1, (4, in_ch, 64, 48)).astype(dtype))
    for m in bns:
        m.weight.data[...] = rng.uniform(0.5, 1.5, m.num_features)
        m.bias.data[...] = rng.normal(0, 0.2, m.num_features)
    if classes:  # a headless model (num_classes=0) has no classifier
        model.fc.weight.data[...] = rng.normal(0, 0.1, model.fc.weight.shape)
        model.fc.bias.data[...] = rng.normal(0, 0.1, classes)
    return model.eval()


def run_ort(path, x):
    ort = need("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


@pytest.mark.parametrize("padding", ["torch", "tf_same", "keras"])
def test_export_runs_in_onnxruntime_and_matches(tmp_path, padding):
    need("onnx")
    model = random_model(padding, activation="relu" if padding == "torch" else "relu6")
    path = tmp_path / "m.onnx"
    interop.export_onnx(model, path)
    rng = np.random.default_rng(1)
    for shape in ((1, 3, 225, 201), (3, 3, 225, 201), (3, 3, 67, 45), (1, 3, 32, 33)):
        x = rng.uniform(-1, 1, shape).astype(np.float32)
        out = run_ort(path, x)
        ref = model(x)
        assert out.shape == ref.shape and (shape[0] == 1 or np.ptp(ref, axis=0).max() > 0.1)
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-4, err_msg=str(shape))


@pytest.mark.parametrize("padding", ["torch", "tf_same", "keras"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_round_trip_is_exact(tmp_path, padding, dtype):
    need("onnx")
    model = random_model(padding, dtype=dtype)
    model.labels = [f"c{i}" for i in range(7)]
    path = tmp_path / "m.onnx"
    interop.export_onnx(model, path)
    again = interop.load_onnx(path)
    assert again.config["padding"] == padding and again.dtype == model.dtype
    assert again.labels == model.labels
    mine, theirs = model.state_dict(), again.state_dict()
    assert mine.keys() == theirs.keys()
    for k in mine:  # every weight and statistic (ONNX has no training counter)
        if not k.endswith("num_batches_tracked"):
            np.testing.assert_array_equal(mine[k], theirs[k], err_msg=k)
    x = np.random.default_rng(2).uniform(-1, 1, (2, 3, 41, 37)).astype(dtype)
    out = model(x)
    assert np.abs(out[0] - out[1]).max() > 0.1  # the logits depend on the input
    np.testing.assert_allclose(again(x), out, rtol=0, atol=100 * np.finfo(dtype).eps)


def _torch_reference(torch):
    """The reference implementation's module names with relu6, random BN statistics."""
    from torch_reference import build_seed_mobilenet, randomize_batch_norm

    model = build_seed_mobilenet(torch, alpha=0.25, num_classes=5, activation="relu6")
    randomize_batch_norm(torch, model)
    return model.eval()


@pytest.mark.torch
@pytest.mark.parametrize("dynamo", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_imports_what_torch_onnx_export_writes(tmp_path, torch, dynamo):
    need("onnx")
    if dynamo:
        need("onnxscript")
    model = _torch_reference(torch)
    x = torch.from_numpy(np.random.default_rng(3).uniform(-1, 1, (2, 3, 45, 38)).astype("f4"))
    path = tmp_path / "torch.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=dynamo, input_names=["input"])
    with torch.no_grad():
        ref = model(x).numpy()
    loaded = interop.load_onnx(path)
    assert loaded.config["activation"] == "relu6" and loaded.config["padding"] == "torch"
    assert np.abs(loaded(x.numpy()) - ref).max() <= 1e-4


# ------------------------------------------------------------------------------ bad graphs
def _exported(tmp_path):
    onnx = need("onnx")
    path = tmp_path / "m.onnx"
    interop.export_onnx(random_model("torch"), path)
    return onnx, onnx.load(path)


def _save(onnx, proto, tmp_path, name="bad.onnx"):
    path = tmp_path / name
    onnx.save(proto, path)
    return str(path)


def test_unsupported_op_is_refused(tmp_path):
    onnx, proto = _exported(tmp_path)
    relu = next(n for n in proto.graph.node if n.op_type == "Clip")
    relu.op_type, relu.input[:] = "Sigmoid", relu.input[:1]
    path = _save(onnx, proto, tmp_path)
    with pytest.raises(ValueError, match="unsupported op Sigmoid") as e:
        interop.load_onnx(path)
    assert path in str(e.value)


def test_branching_graph_is_refused(tmp_path):
    """A residual connection (a value feeding two nodes) is another architecture."""
    onnx, proto = _exported(tmp_path)
    from onnx import helper

    proto.graph.node.append(helper.make_node("Identity", ["first_conv.bn.act"], ["extra"]))
    path = _save(onnx, proto, tmp_path)
    with pytest.raises(ValueError, match="single chain"):
        interop.load_onnx(path)


def test_truncated_onnx_is_refused(tmp_path):
    need("onnx")
    path = tmp_path / "m.onnx"
    interop.export_onnx(random_model("torch"), path)
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(ValueError, match="truncated or corrupt") as e:
        interop.load_onnx(path)
    assert str(path) in str(e.value)


def test_onnx_of_another_width_or_depth_is_refused(tmp_path):
    onnx, proto = _exported(tmp_path)
    # drop the last block (dw conv, bn, clip, pw conv, bn, clip): 25 convs instead of 27
    nodes = list(proto.graph.node)
    cut = [i for i, n in enumerate(nodes) if n.op_type == "Conv"][-2]
    keep = nodes[:cut] + nodes[cut + 6 :]
    keep[cut].input[0] = nodes[cut - 1].output[0]
    del proto.graph.node[:]
    proto.graph.node.extend(keep)
    path = _save(onnx, proto, tmp_path)
    with pytest.raises(ValueError, match="25 Conv nodes, a MobileNetV1 has 27"):
        interop.load_onnx(path)


def test_export_refuses_what_it_cannot_write(tmp_path):
    need("onnx")
    with pytest.raises(TypeError, match="must be an npmobilenet MobileNetV1"):
        interop.export_onnx(object(), tmp_path / "x.onnx")
    with pytest.raises(ValueError, match="conv='separable'"):
        interop.export_onnx(MobileNetV1(alpha=0.25, conv="full", seed=0), tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_torch_fixture_dynamo_names_are_not_trusted():
    """The dynamo export names folded weights like the unfolded ones: the graph walk, not the
    names, decides (the loaded batch norms are the identity plus the folded bias)."""
    onnx = need("onnx")
    proto = onnx.load(fixture("torch_onnx_dynamo.onnx"))
    assert not any(n.op_type == "BatchNormalization" for n in proto.graph.node)
    model = interop.load_onnx(fixture("torch_onnx_dynamo.onnx"))
    np.testing.assert_allclose(model.first_conv.bn.running_mean, 0)


def _torch_with_explicit_pads(torch, model, size):
    """``model`` (npmobilenet) as a torch Sequential for inputs of ``size`` (H, W): convs
    without padding, each 3x3 one preceded by a ``ZeroPad2d`` of TensorFlow's SAME padding at
    its input size (what an exporter writes for a fixed size: Pad nodes with constant pads)."""
    from npmobilenet._geometry import output_size
    from npmobilenet.interop._assemble import layer_names
    from npmobilenet.ops.conv import tf_same_total

    modules, state, layers = dict(model.named_modules()), model.state_dict(), []
    (h, w) = size
    for conv_name, bn_name in layer_names():
        conv = modules[conv_name]
        k, cg = conv.weight.shape[:2]
        s = conv.stride[0]
        tconv = torch.nn.Conv2d(cg * conv.groups, k, conv.kernel_size, s, groups=conv.groups,
                                bias=False)  # fmt: skip
        tconv.weight.data = torch.from_numpy(state[f"{conv_name}.weight"])
        tbn = torch.nn.BatchNorm2d(k, eps=modules[bn_name].eps)
        for key in ("weight", "bias", "running_mean", "running_var"):
            getattr(tbn, key).data = torch.from_numpy(state[f"{bn_name}.{key}"])
        pad = []
        if conv.kernel_size == (3, 3):
            th, tw = tf_same_total(h, 3, s), tf_same_total(w, 3, s)
            pad = [torch.nn.ZeroPad2d((tw // 2, tw - tw // 2, th // 2, th - th // 2))]
            h, w = (
                output_size(h, 3, s, (th // 2, th - th // 2)),
                output_size(w, 3, s, (tw // 2, tw - tw // 2)),
            )
        layers += [*pad, tconv, tbn, torch.nn.ReLU6()]
    fc = torch.nn.Linear(*model.fc.weight.shape[::-1])
    fc.weight.data, fc.bias.data = (torch.from_numpy(state[f"fc.{k}"]) for k in ("weight", "bias"))
    layers += [torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), fc]
    return torch.nn.Sequential(*layers).eval()


@pytest.mark.torch
def test_imports_tf_same_padding_written_as_pad_nodes(tmp_path, torch):
    """A fixed-size graph whose TF "SAME" padding is explicit Pad nodes loads as tf_same."""
    need("onnx")
    model = random_model("tf_same")
    reference = _torch_with_explicit_pads(torch, model, (67, 45))
    x = np.random.default_rng(4).uniform(-1, 1, (2, 3, 67, 45)).astype(np.float32)
    with torch.no_grad():
        ref = reference(torch.from_numpy(x)).numpy()
    assert np.abs(ref - model(x)).max() <= 1e-4  # the torch model is the same network
    path = tmp_path / "pads.onnx"
    torch.onnx.export(reference, (torch.from_numpy(x),), str(path), dynamo=False,
                      input_names=["input"])  # fmt: skip
    proto = need("onnx").load(path)
    assert sum(n.op_type == "Pad" for n in proto.graph.node) == 14
    loaded = interop.load_onnx(path)
    assert loaded.config["padding"] == "tf_same"
    assert np.abs(loaded(x) - ref).max() <= 1e-4


def _changed(change):
    """A model with one change a user makes, in eval mode, and the path of what changed."""
    from npmobilenet import nn

    model = random_model(classes=0 if change == "headless" else 7, activation="relu",
                         global_pool="max" if change == "max pool" else None)  # fmt: skip
    rng = np.random.default_rng(3)
    if change == "a block's ReLU6":
        model.depthwise_sep_conv8.relu1 = nn.ReLU6()
        model.depthwise_sep_conv8.bn1.bias.data[...] += 6.0  # so that the clip at 6 shows
    elif change == "new classifier":
        model.fc = nn.Linear(model.fc.in_features, 3)
        model.fc.weight.data[...] = rng.normal(0, 0.3, model.fc.weight.shape)
    elif change == "a conv with a bias":
        old = model.depthwise_sep_conv8.pwconv
        new = nn.Conv2d(old.in_channels, old.out_channels, 1, bias=True)
        new.weight.data[...] = old.weight.data
        new.bias.data[...] = rng.normal(0, 2.0, new.bias.shape)
        model.depthwise_sep_conv8.pwconv = new
    return model.eval()


@pytest.mark.parametrize("change", ["max pool", "a block's ReLU6", "new classifier", "headless",
                                    "a conv with a bias"])  # fmt: skip
def test_export_writes_the_modules_the_model_runs(tmp_path, change):
    """What the model holds, not what its config says: onnxruntime against the model's forward,
    and the change shown real against the unchanged model."""
    need("onnx")
    model, path = _changed(change), tmp_path / "m.onnx"
    interop.export_onnx(model, path)
    x = np.random.default_rng(1).uniform(-1, 1, (3, 3, 67, 45)).astype(np.float32)
    ref = model(x)
    out = run_ort(path, x)
    assert out.shape == ref.shape  # float32 through 27 layers: within 1e-5 of the largest logit
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max() + 1e-6)
    if change != "headless":
        plain = random_model(activation="relu")(x)
        assert plain.shape != ref.shape or np.abs(plain - ref).max() > 1e-2


def _unknowable(change):
    from npmobilenet import nn
    from npmobilenet.models.mobilenet import DepthwiseSeparableConv

    model = random_model()
    if change == "a block of your own":
        class Scaled(nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def forward(self, x):
                return self.inner(x) * 2.0

        model.depthwise_sep_conv4 = Scaled(model.depthwise_sep_conv4)
        return model, "depthwise_sep_conv4"
    if change == "a subclassed block":
        class Doubled(DepthwiseSeparableConv):
            def forward(self, x, **kwargs):
                return super().forward(x, **kwargs) * 2.0

        old = model.depthwise_sep_conv4
        new = Doubled(old.dwconv.in_channels, old.pwconv.out_channels, 1, "relu6", np.float32)
        new.load_state_dict(old.state_dict())
        model.depthwise_sep_conv4 = new.eval()
        return model, "depthwise_sep_conv4"
    if change == "a forward set on a ReLU":
        relu = model.depthwise_sep_conv8.relu1
        forward = relu.forward
        relu.forward = lambda x: np.minimum(forward(x), 0.1)
        return model, "depthwise_sep_conv8.relu1"
    if change == "a ReLU replaced by Identity":
        model.depthwise_sep_conv8.relu1 = nn.Identity()
        return model, "depthwise_sep_conv8.relu1"
    if change == "a two-layer classifier":
        model.fc = nn.Sequential(nn.Linear(model.fc.in_features, 8), nn.ReLU(), nn.Linear(8, 7))
        return model, "fc.1"

    class Tempered(MobileNetV1):
        def forward(self, x):
            return super().forward(x) / 3.0

    tempered = Tempered(alpha=0.25, num_classes=7, activation="relu6", bn_eps=1e-3, seed=0)
    tempered.load_state_dict(model.state_dict())
    return tempered.eval(), "Tempered"


@pytest.mark.parametrize("change", ["a block of your own", "a subclassed block",
                                    "a forward set on a ReLU", "a ReLU replaced by Identity",
                                    "a two-layer classifier", "a model subclass"])  # fmt: skip
def test_export_refuses_a_module_it_cannot_write(tmp_path, change):
    """Never the architecture's graph for a model that computes something else: an error naming
    the module, and no file."""
    need("onnx")
    from npmobilenet.fast import UnsupportedModuleError

    model, where = _unknowable(change)
    path = tmp_path / "m.onnx"
    with pytest.raises(UnsupportedModuleError, match=f"export_onnx: cannot fuse {where}") as info:
        interop.export_onnx(model, path)
    assert len(str(info.value)) < 400
    assert not path.exists()
