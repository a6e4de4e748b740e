"""``load_onnx``: a MobileNetV1 ONNX graph -> ``MobileNetV1``, by walking the graph.

Names are not trusted: ``torch.onnx.export`` folds each batch norm into the conv before it (a
Conv with a bias, no BatchNormalization node), and its dynamo exporter keeps the original
names on the folded values, so a load by name would silently use folded weights as unfolded
ones. Instead the walk follows the data from the graph's input to its output and reads each
op's constant operands:

``[Pad] -> Conv [-> BatchNormalization] -> Relu | Clip(0, 6)`` 27 times, then
``GlobalAveragePool | ReduceMean`` -> ``Flatten | Reshape | Squeeze`` -> ``Gemm | MatMul + Add``
(``Identity``, ``Dropout`` and a ``Cast`` to float or double are passed through; nodes whose
inputs are all constants are evaluated first, with onnx's reference evaluator). A ``Pad`` of
zeros adds to the next conv's padding; in a graph of a fixed input size, explicit paddings
that equal a convention's at that size (TensorFlow's "SAME" written out) select it. Any other
op, a branch, or a layer that does not fit MobileNetV1 is a ValueError naming the file.

A folded conv (weight W', bias b') loads as the conv W' with a batch norm that only adds b'
(mean 0, variance 1 - eps, gamma 1); the logits are the same up to rounding.
"""

from __future__ import annotations

import os

import numpy as np

from npmobilenet._geometry import output_size
from npmobilenet.interop._assemble import ConvLayer, assemble, folded
from npmobilenet.interop.onnx_export import import_onnx
from npmobilenet.io.weights import header_json
from npmobilenet.models.mobilenet import PADDINGS, TABLE_1, conv_padding
from npmobilenet.ops.conv import resolve_padding

_PASS = ("Identity", "Dropout", "Flatten", "Reshape", "Squeeze", "Cast")


class _Graph:
    """Constants (initializers and Constant nodes), consumers, and a cursor along the chain."""

    def __init__(self, proto, source: str, numpy_helper):
        self.source, g = source, proto.graph
        self.const = {t.name: numpy_helper.to_array(t) for t in g.initializer}
        self.nodes = []
        for node in g.node:  # in topological order, as ONNX requires
            if node.op_type == "Constant" and node.attribute:
                attr = node.attribute[0]
                if attr.name == "value":
                    self.const[node.output[0]] = numpy_helper.to_array(attr.t)
                    continue
            if node.input and all(not n or n in self.const for n in node.input):
                self._fold(node)  # e.g. the Cast / Concat an exporter leaves before Pad's pads
                continue
            self.nodes.append(node)
        self.consumers: dict[str, list] = {}
        for node in self.nodes:
            for name in node.input:
                if name and name not in self.const:
                    self.consumers.setdefault(name, []).append(node)
        inputs = [i.name for i in g.input if i.name not in self.const]
        if len(inputs) != 1 or len(g.output) != 1:
            raise ValueError(
                f"{source}: a MobileNetV1 graph has one input and one output, this one has"
                f" {len(inputs)} inputs and {len(g.output)} outputs"
            )
        self.input, self.output = inputs[0], g.output[0].name

    def _fold(self, node) -> None:
        """Evaluate a node whose inputs are all constants (onnx's reference evaluator)."""
        from onnx.reference import ReferenceEvaluator

        inputs = {n: self.const[n] for n in node.input if n}
        try:
            outputs = ReferenceEvaluator(node).run(None, inputs)
        except Exception as e:  # noqa: BLE001 - any failure is this file's problem
            raise ValueError(
                f"{self.source}: cannot evaluate the constant {node.op_type} node"
                f" {node.name!r}: {type(e).__name__}: {str(e)[:200]}"
            ) from None
        self.const.update(zip(node.output, outputs))

    def next(self, value: str):
        users = self.consumers.get(value, [])
        if value == self.output and not users:
            return None
        if len(users) != 1:
            raise ValueError(
                f"{self.source}: value {value!r} feeds {len(users)} nodes; a MobileNetV1 graph"
                " is a single chain (another architecture, e.g. with residual connections?)"
            )
        return users[0]

    def operand(self, node, i: int, default=None):
        if i >= len(node.input) or not node.input[i]:
            return default
        name = node.input[i]
        if name not in self.const:
            raise ValueError(
                f"{self.source}: {node.op_type} node {node.name!r} takes a computed {name!r}"
                f" as operand {i}; only constant weights are supported"
            )
        return self.const[name]


def _attrs(node, helper) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


class _Layer:
    def __init__(self, weight, bias, padding, stride, group):
        self.weight, self.bias, self.padding = weight, bias, padding
        self.stride, self.group, self.bn, self.act = stride, group, None, None


def load_onnx(path, dtype=None):
    """Read a MobileNetV1 ONNX file (from :func:`export_onnx` or ``torch.onnx.export``).

    Returns a ``MobileNetV1`` in eval mode in the file's float type (or ``dtype``). The padding
    convention, activation and batch-norm epsilon are read from the graph.
    """
    onnx, helper, numpy_helper = import_onnx()
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"load_onnx: no such file: {path}")
    try:
        proto = onnx.load(path)  # with its external data files, if any
    except Exception as e:  # noqa: BLE001 - protobuf's and onnx's errors have no common base
        raise ValueError(
            f"load_onnx: {path}: not a readable ONNX file (truncated or corrupt, or its external"
            f" data?): {type(e).__name__}: {str(e)[:300]}"
        ) from None
    try:
        graph = _Graph(proto, path, numpy_helper)
    except ValueError:
        raise  # names the file
    except Exception as e:  # noqa: BLE001 - a graph that does not decode
        raise ValueError(
            f"load_onnx: {path}: not a readable ONNX graph: {type(e).__name__}: {str(e)[:300]}"
        ) from None
    layers, fc = _walk(graph, helper)
    meta = {p.key: p.value for p in proto.metadata_props}
    labels = header_json("load_onnx", path, meta, "npmobilenet.labels", list)
    return _build(path, layers, fc, labels, dtype, _static_size(proto, graph.input))


def _static_size(proto, name: str):
    """The input's (H, W) when the graph fixes them, else None."""
    for value in proto.graph.input:
        if value.name == name:
            dims = value.type.tensor_type.shape.dim
            if len(dims) == 4 and all(d.HasField("dim_value") for d in dims[2:]):
                return (dims[2].dim_value, dims[3].dim_value)
    return None


def _walk(graph: _Graph, helper):
    """Follow the chain from the input; return (conv layers, (fc_w, fc_b))."""
    layers, fc, pending_pad, pooled = [], None, (0, 0, 0, 0), False
    value, node = graph.input, graph.next(graph.input)
    while node is not None:
        op, a = node.op_type, _attrs(node, helper)
        if op == "Pad":
            pending_pad = _pad(graph, node, a, pending_pad)
        elif op == "Conv":
            layers.append(_conv(graph, node, a, pending_pad))
            pending_pad = (0, 0, 0, 0)
        elif op == "BatchNormalization" and layers and layers[-1].bn is None and not pooled:
            stats = [graph.operand(node, i) for i in range(1, 5)]
            # ONNX stores epsilon as float32: take the shortest decimal (1e-3, not 0.0010000000475)
            layers[-1].bn = (*stats, float(str(np.float32(a.get("epsilon", 1e-5)))))
        elif op in ("Relu", "Clip") and layers and layers[-1].act is None and not pooled:
            layers[-1].act = _activation(graph, node, a)
        elif op in ("GlobalAveragePool", "ReduceMean") and not pooled:
            pooled = True
        elif op in _PASS and (op != "Cast" or a.get("to") in (1, 11)):  # FLOAT, DOUBLE
            pass
        elif op in ("Gemm", "MatMul") and pooled and fc is None:
            fc, node = _fc(graph, node, a)
        else:
            raise ValueError(
                f"{graph.source}: unsupported op {op} (node {node.name!r}) at this point of the"
                f" graph; a MobileNetV1 graph has only Conv, BatchNormalization, Relu/Clip,"
                " global average pooling and a final Gemm"
            )
        value = node.output[0]
        node = graph.next(value)
    if fc is None:
        raise ValueError(f"{graph.source}: no classifier (Gemm or MatMul) at the end of the graph")
    return layers, fc


def _pad(graph, node, a, pending):
    mode = a.get("mode", b"constant")
    pads = graph.operand(node, 1) if len(node.input) > 1 else a.get("pads")
    value = graph.operand(node, 2, np.zeros(()))
    pads = None if pads is None else [int(p) for p in np.asarray(pads).ravel()]
    if (
        mode not in (b"constant", "constant")
        or np.any(value != 0)
        or pads is None
        or len(pads) != 8
        or any(pads[i] for i in (0, 1, 4, 5))
    ):
        raise ValueError(f"{graph.source}: Pad node {node.name!r} is not a zero padding of H and W")
    t, l_, b, r = pads[2], pads[3], pads[6], pads[7]
    return (pending[0] + t, pending[1] + b, pending[2] + l_, pending[3] + r)


def _conv(graph, node, a, pending) -> _Layer:
    w, b = graph.operand(node, 1), graph.operand(node, 2)
    if w is None or w.ndim != 4 or list(a.get("dilations", [1, 1])) != [1, 1]:
        raise ValueError(f"{graph.source}: Conv node {node.name!r} is not a 2-D undilated conv")
    auto = a.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    strides = tuple(a.get("strides", [1, 1]))
    if auto == "SAME_UPPER" and not any(pending):
        padding = "tf_same"
    elif auto in ("NOTSET", "VALID"):
        t, l_, b_, r = a.get("pads", [0, 0, 0, 0]) if auto == "NOTSET" else (0, 0, 0, 0)
        padding = (pending[0] + t, pending[1] + b_, pending[2] + l_, pending[3] + r)
    else:
        raise ValueError(f"{graph.source}: Conv node {node.name!r} has auto_pad={auto}")
    if strides[0] != strides[1]:
        raise ValueError(f"{graph.source}: Conv node {node.name!r} has strides {strides}")
    return _Layer(w, b, padding, strides[0], int(a.get("group", 1)))


def _activation(graph, node, a) -> str:
    if node.op_type == "Relu":
        return "relu"
    lo = np.asarray(graph.operand(node, 1, a.get("min", -np.inf)), np.float64).ravel()
    hi = np.asarray(graph.operand(node, 2, a.get("max", np.inf)), np.float64).ravel()
    if lo.size == 1 and hi.size == 1 and lo[0] == 0 and hi[0] in (6, np.inf):
        return "relu6" if hi[0] == 6 else "relu"
    raise ValueError(f"{graph.source}: Clip node {node.name!r} clamps to [{lo}, {hi}]")


def _fc(graph, node, a):
    """((fc_w (K, C), fc_b (K,)), last node of the classifier)."""
    w = graph.operand(node, 1)
    if node.op_type == "Gemm":
        if a.get("transA", 0) or a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0:
            raise ValueError(f"{graph.source}: Gemm node {node.name!r} is not x @ W.T + b")
        w = w if a.get("transB", 0) else w.T
        b = graph.operand(node, 2, np.zeros(w.shape[0], w.dtype))
        return (w, np.broadcast_to(b, (w.shape[0],)).copy()), node
    add = graph.next(node.output[0])
    if add is None or add.op_type != "Add":
        return (w.T, np.zeros(w.shape[1], w.dtype)), node
    b = graph.operand(add, 1 if add.input[0] == node.output[0] else 0)
    return (w.T, np.broadcast_to(b, (w.shape[1],)).copy()), add


def _build(path, layers, fc, labels, dtype, size=None):
    if len(layers) != 27:
        raise ValueError(
            f"{path}: {len(layers)} Conv nodes, a MobileNetV1 has 27: another architecture?"
        )
    acts = {layer.act for layer in layers}
    if None in acts or len(acts) != 1:
        raise ValueError(f"{path}: every conv must be followed by the same Relu/Clip, got {acts}")
    eps = {layer.bn[4] for layer in layers if layer.bn is not None} or {1e-5}
    if len(eps) != 1:
        raise ValueError(f"{path}: batch norms with different epsilons {sorted(eps)}")
    eps = eps.pop()
    _check_strides(path, layers)
    convs = [_conv_layer(layer, eps) for layer in layers]
    dtype = dtype or (np.float64 if layers[0].weight.dtype == np.float64 else np.float32)
    padding = _convention(path, layers, size)
    return assemble(path, convs, *fc, activation=acts.pop(), padding=padding, bn_eps=eps,
                    labels=labels, dtype=dtype)  # fmt: skip


def _conv_layer(layer: _Layer, eps: float) -> ConvLayer:
    if layer.bn is None:
        return folded(layer.weight, layer.bias, eps)
    gamma, beta, mean, var, _ = layer.bn
    if layer.bias is not None:  # BN(conv + b) = BN'(conv) with mean' = mean - b
        mean = mean - layer.bias
    return ConvLayer(layer.weight, gamma, beta, mean, var)


def _roles():
    """(role, stride, groups is channels) of the 27 convs, from TABLE_1."""
    out = [("stem", 2, False)]
    for *_, stride, repeats in TABLE_1:
        for i in range(repeats):
            out += [("block", stride if i == 0 else 1, True), ("pointwise", 1, False)]
    return out


def _check_strides(path, layers) -> None:
    for i, (layer, (_, stride, depthwise)) in enumerate(zip(layers, _roles())):
        groups_ok = layer.group == layer.weight.shape[0] if depthwise else layer.group == 1
        if layer.stride != stride or not groups_ok:
            raise ValueError(
                f"{path}: conv {i} has stride {layer.stride} and group {layer.group}; MobileNetV1"
                f" needs stride {stride} and {'one group per channel' if depthwise else 'group 1'}"
            )


def _same(a, b, stride) -> bool:
    norm = {1: (1, 1, 1, 1), "tf_same": "tf_same" if stride > 1 else (1, 1, 1, 1)}
    return norm.get(a, a) == norm.get(b, b)


def _convention(path, layers, size=None) -> str:
    """The padding convention whose rule gives every conv's padding; for a graph of a fixed
    input ``size`` (H, W), also one whose paddings at that size are the graph's (explicit
    ``Pad`` nodes computed for one size, as exporters write TensorFlow's "SAME")."""
    roles = _roles()
    for conv in PADDINGS:
        ok = all(
            _same(layer.padding, conv_padding(conv, role, stride), stride)
            if role != "pointwise" else layer.padding == (0, 0, 0, 0)
            for layer, (role, stride, _) in zip(layers, roles)
        )  # fmt: skip
        if ok or (size is not None and _matches_at(conv, layers, roles, size)):
            return conv
    got = sorted({str(layer.padding) for layer in layers})
    raise ValueError(
        f"{path}: the convs' paddings {got} match none of MobileNetV1's conventions {PADDINGS}"
    )


def _matches_at(conv, layers, roles, size) -> bool:
    """Whether convention ``conv`` pads every 3x3 conv as the graph does for input ``size``."""
    h, w = size
    for layer, (role, stride, _) in zip(layers, roles):
        if role == "pointwise":
            if layer.padding != (0, 0, 0, 0):
                return False
            continue
        geometry = ((3, 3), (1, 1), (stride, stride), (h, w))
        want = resolve_padding("load_onnx", conv_padding(conv, role, stride), *geometry)
        if resolve_padding("load_onnx", layer.padding, *geometry) != want:
            return False
        h, w = output_size(h, 3, stride, want[:2]), output_size(w, 3, stride, want[2:])
    return True
