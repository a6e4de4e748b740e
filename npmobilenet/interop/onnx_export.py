"""``export_onnx``: a MobileNetV1 as an ONNX graph, written with the ``onnx`` package only.

The graph is the model's own sequence, unfused, so that it round-trips exactly:
``Conv`` -> ``BatchNormalization`` -> ``Relu`` / ``Clip(0, 6)`` for each of the 27
convolutions, then ``GlobalAveragePool`` -> ``Flatten`` -> ``Gemm``. It is written from the
modules the model holds, walked as the fused engine walks them (``fast.walk.fused_layers``), so
a replaced classifier, a block's activation, ``global_pool="max"`` (``GlobalMaxPool``) or a
headless model (output ``features``, the pooled features) are written as they run, and a module
the walk does not know (a block of your own, a subclass, a ``forward`` set on an instance)
raises ``UnsupportedModuleError`` rather than being written as the architecture's. Initializers
carry the model's state_dict names. Input ``input`` (N, C, H, W) and output ``logits`` (N,
classes) have symbolic N, H and W. Padding: a fixed 4-tuple becomes ``pads``; TensorFlow's "SAME"
(``padding="tf_same"``), which depends on the input size, becomes ``auto_pad="SAME_UPPER"``
(the same rule: output ceil(H / s), the extra pixel at the end). The model's config and class
names are stored in the graph's metadata (``npmobilenet.config``, ``npmobilenet.labels``).
"""

from __future__ import annotations

import json
import os

import numpy as np

from npmobilenet import _checks
from npmobilenet.fast.walk import fused_layers, part_paths
from npmobilenet.io.weights import atomic_write_bytes
from npmobilenet.ops.activations import ACTIVATIONS


def import_onnx():
    try:
        import onnx
        from onnx import helper, numpy_helper
    except ImportError:
        raise ImportError(
            "ONNX import/export needs the onnx package: pip install 'npmobilenet[onnx]'"
        ) from None
    return onnx, helper, numpy_helper


def _conv_attrs(conv) -> dict:
    """The ONNX Conv attributes of an npmobilenet ``Conv2d``."""
    attrs = dict(kernel_shape=list(conv.kernel_size), strides=list(conv.stride),
                 dilations=list(conv.dilation), group=conv.groups)  # fmt: skip
    pad = conv.padding
    if pad == "tf_same":
        attrs["auto_pad"] = "SAME_UPPER"
        return attrs
    if isinstance(pad, str):
        raise ValueError(f"export_onnx: padding={pad!r} is not exported")
    top, bottom, left, right = pad if len(pad) == 4 else (pad[0], pad[0], pad[1], pad[1])
    attrs["pads"] = [top, left, bottom, right]  # ONNX: all begins, then all ends
    return attrs


def _check_model(model, opset) -> None:
    from npmobilenet.models import MobileNetV1

    op = "export_onnx"
    if not isinstance(model, MobileNetV1):
        raise TypeError(
            f"{op}: model must be an npmobilenet MobileNetV1, got {type(model).__name__}"
        )
    if model.config["conv"] != "separable":
        raise ValueError(f"{op}: only conv='separable' is exported, got {model.config['conv']!r}")
    _checks.integer(op, "opset", opset, 13)


def build_graph(model, opset: int = 17):
    """The ``onnx.ModelProto`` of ``model`` (see the module docstring)."""
    onnx, helper, numpy_helper = import_onnx()
    _check_model(model, opset)
    layers, head = fused_layers(model, op="export_onnx")  # the modules that run, checked
    modules, state = dict(model.named_modules(remove_duplicate=False)), model.state_dict()
    elem = helper.np_dtype_to_tensor_dtype(model.dtype)
    inits, nodes, x = [], [], "input"

    def init(name, array):
        inits.append(numpy_helper.from_array(np.array(array, order="C"), name))  # keeps 0-d
        return name

    six = ACTIVATIONS["relu6"].clamp
    if any((layer.lo, layer.hi) == six for layer in layers):
        init("clip_min", np.array(six[0], model.dtype))
        init("clip_max", np.array(six[1], model.dtype))
    for layer in layers:
        conv_name, bn_name, _ = part_paths(layer)
        conv, bn = modules[conv_name], modules[bn_name]
        inputs = [x, init(f"{conv_name}.weight", state[f"{conv_name}.weight"])]
        if conv.bias is not None:
            inputs.append(init(f"{conv_name}.bias", state[f"{conv_name}.bias"]))
        nodes.append(helper.make_node("Conv", inputs, [conv_name], conv_name, **_conv_attrs(conv)))
        names = [init(f"{bn_name}.{k}", state[f"{bn_name}.{k}"])
                 for k in ("weight", "bias", "running_mean", "running_var")]  # fmt: skip
        nodes.append(helper.make_node("BatchNormalization", [conv_name, *names], [bn_name],
                                      bn_name, epsilon=float(bn.eps)))  # fmt: skip
        x = f"{bn_name}.act"
        nodes.append(_activation(helper, (layer.lo, layer.hi), bn_name, x))
    pool = {"avg": "GlobalAveragePool", "max": "GlobalMaxPool"}[head.pool]
    nodes.append(helper.make_node(pool, [x], [f"{head.pool}pool"], f"{head.pool}pool"))
    nodes.append(helper.make_node("Flatten", [f"{head.pool}pool"], ["flatten"], "flatten",
                                  axis=1))  # fmt: skip
    out, width = "flatten", layers[-1].weight.shape[1]  # headless: the pooled features
    if head.path is not None:
        fc = [init(f"{head.path}.{k}", state[f"{head.path}.{k}"])
              for k in ("weight", "bias") if f"{head.path}.{k}" in state]  # fmt: skip
        out, width = "logits", head.weight.shape[0]
        nodes.append(helper.make_node("Gemm", ["flatten", *fc], [out], head.path, transB=1))
    c = modules[part_paths(layers[0])[0]].in_channels
    graph = helper.make_graph(
        nodes, "MobileNetV1", [helper.make_tensor_value_info("input", elem, ["N", c, "H", "W"])],
        [helper.make_tensor_value_info(out, elem, ["N", width])], inits,
    )  # fmt: skip
    proto = helper.make_model(graph, producer_name="npmobilenet",
                              opset_imports=[helper.make_opsetid("", opset)])  # fmt: skip
    proto.ir_version = min(proto.ir_version, 8)  # readable by older onnxruntime releases
    meta = {"npmobilenet.config": json.dumps(model.config)}
    if getattr(model, "labels", None):
        meta["npmobilenet.labels"] = json.dumps(list(model.labels))
    helper.set_model_props(proto, meta)
    onnx.checker.check_model(proto)
    return proto


def _activation(helper, clamp, x, out):
    """The node of the activation whose clamp (lo, hi) is ``clamp`` (``ACTIVATIONS``):
    ``Relu``, or ``Clip`` between the initializers ``clip_min`` and ``clip_max``."""
    if clamp == ACTIVATIONS["relu"].clamp:
        return helper.make_node("Relu", [x], [out], out)
    return helper.make_node("Clip", [x, "clip_min", "clip_max"], [out], out)


def export_onnx(model, path, opset: int = 17) -> None:
    """Write ``model`` as an ONNX file at ``path`` (atomically; the ``onnx`` package only).

    Float32 models run in onnxruntime; the graph takes (N, C, H, W) inputs of any N, H, W the
    model accepts and returns (N, classes) logits.
    """
    proto = build_graph(model, opset)
    atomic_write_bytes(os.fspath(path), proto.SerializeToString())
