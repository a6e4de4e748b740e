"""From a list of convolution layers in network order to a ready ``MobileNetV1``.

Every reader in :mod:`npmobilenet.interop` turns its format into the same neutral description,
so the architecture checks (count, channels, width multiplier) and the naming live here once:

* ``convs``: the 27 convolutions in forward order (the stem, then the depthwise and the
  pointwise conv of each of the 13 blocks), each a ``ConvLayer`` with its weight in PyTorch's
  ``(K, C/G, kH, kW)`` layout and its batch norm (gamma, beta, mean, var);
* ``fc_w`` ``(classes, C)`` and ``fc_b`` ``(classes,)``: the classifier.

The model's state_dict keys come from :data:`npmobilenet.models.mobilenet.TABLE_1`.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from npmobilenet.models.mobilenet import FIRST_CONV, TABLE_1, MobileNetV1, stages


class ConvLayer(NamedTuple):
    """One convolution of the network with its batch norm (inference statistics).

    weight (K, C/G, kH, kW); gamma, beta, mean, var (K,).
    """

    weight: np.ndarray
    gamma: np.ndarray
    beta: np.ndarray
    mean: np.ndarray
    var: np.ndarray


def block_prefixes() -> list[str]:
    """The 13 depthwise-separable blocks' state_dict prefixes, in forward order."""
    out = []
    for name, _, _, _, repeats in TABLE_1:
        out += [name] if repeats == 1 else [f"{name}.{i}" for i in range(repeats)]
    return out


def layer_names() -> list[tuple[str, str]]:
    """(conv prefix, batch-norm prefix) of the 27 convolutions, in forward order."""
    names = [("first_conv.conv", "first_conv.bn")]
    for p in block_prefixes():
        names += [(f"{p}.dwconv", f"{p}.bn0"), (f"{p}.pwconv", f"{p}.bn1")]
    return names


def expected_shapes(alpha: float, in_channels: int) -> list[tuple[int, ...]]:
    """The 27 conv weight shapes of ``MobileNetV1(alpha, in_channels=...)`` (from
    :func:`npmobilenet.models.mobilenet.stages`, the model's own channel arithmetic)."""
    stem, *rows = stages(alpha, in_channels)
    shapes = [(stem.out_channels, stem.in_channels, 3, 3)]
    for st in rows:
        for i in range(st.repeats):
            c = st.in_channels if i == 0 else st.out_channels
            shapes += [(c, 1, 3, 3), (st.out_channels, c, 1, 1)]
    return shapes


def infer_alpha(source: str, convs: list[ConvLayer]) -> float:
    """The width multiplier whose channel counts match every conv; ValueError otherwise."""
    if len(convs) != 27:
        raise ValueError(
            f"{source}: a MobileNetV1 has 27 convolutions (a stem and 13 depthwise-separable"
            f" blocks), this file has {len(convs)}: another architecture?"
        )
    first = convs[0].weight.shape
    alpha = first[0] / FIRST_CONV.out_channels
    got = [tuple(c.weight.shape) for c in convs]
    want = expected_shapes(alpha, first[1])
    for i, (g, w) in enumerate(zip(got, want)):
        if g != w:
            raise ValueError(
                f"{source}: conv {i} has weight shape {g}, but MobileNetV1 at width"
                f" alpha={alpha:g} (from the stem's {first[0]} channels) needs {w}:"
                " an unknown width or another architecture"
            )
    return alpha


def check_floats(source: str, convs: list[ConvLayer], fc_w, fc_b) -> None:
    """Weights and statistics must be floating point: integers are a quantized model (their
    scales and zero points live elsewhere), which would load as huge wrong weights."""
    arrays = [("classifier weight", fc_w), ("classifier bias", fc_b)]
    for i, layer in enumerate(convs):
        arrays += [(f"conv {i} {name}", a) for name, a in zip(ConvLayer._fields, layer)]
    for name, a in arrays:
        if np.asarray(a).dtype.kind != "f":
            raise ValueError(
                f"{source}: the {name} is {np.asarray(a).dtype}, not floating point: a quantized"
                " model, which is not supported (convert the float model)"
            )


def assemble(
    source: str,
    convs: list[ConvLayer],
    fc_w: np.ndarray,
    fc_b: np.ndarray,
    *,
    activation: str,
    padding: str,
    bn_eps: float,
    labels=None,
    dtype=np.float32,
) -> MobileNetV1:
    """Check the layers against MobileNetV1 and return the model holding them (eval mode).

    ``source`` names the file in error messages. Nothing is built until every check passed.
    """
    check_floats(source, convs, fc_w, fc_b)
    alpha = infer_alpha(source, convs)
    width = convs[-1].weight.shape[0]
    if fc_w.ndim != 2 or fc_w.shape[1] != width or fc_b.shape != (fc_w.shape[0],):
        raise ValueError(
            f"{source}: the classifier has weight {fc_w.shape} and bias {fc_b.shape}, expected"
            f" (classes, {width}) and (classes,) after the last {width}-channel block"
        )
    if labels is not None and len(labels) != fc_w.shape[0]:
        labels = None  # names that do not fit the classifier are dropped, never misapplied
    model = MobileNetV1(
        alpha=alpha, num_classes=int(fc_w.shape[0]), in_channels=int(convs[0].weight.shape[1]),
        activation=activation, padding=padding, bn_eps=bn_eps, dtype=dtype,
    )  # fmt: skip
    model.load_state_dict(state_dict_of(convs, fc_w, fc_b))
    model.labels = None if labels is None else [str(x) for x in labels]
    return model.eval()


def state_dict_of(convs, fc_w, fc_b) -> dict[str, np.ndarray]:
    """The npmobilenet state_dict of the layers (``num_batches_tracked`` = 0)."""
    state = {}
    for (conv, bn), layer in zip(layer_names(), convs):
        state[f"{conv}.weight"] = layer.weight
        for key, value in zip(("weight", "bias", "running_mean", "running_var"), layer[1:]):
            state[f"{bn}.{key}"] = value
        state[f"{bn}.num_batches_tracked"] = np.zeros((), np.int64)
    state["fc.weight"], state["fc.bias"] = fc_w, fc_b
    return state


def folded(weight: np.ndarray, bias, eps: float) -> ConvLayer:
    """A conv whose batch norm was folded into it (weight, bias) as a ConvLayer.

    The batch norm becomes the identity plus the bias: mean 0, var 1 - eps (so that
    sqrt(var + eps) = 1 up to rounding), gamma 1, beta = bias.
    """
    k = weight.shape[0]
    bias = np.zeros(k, weight.dtype) if bias is None else bias
    ones = np.ones(k, np.float64)
    return ConvLayer(weight, ones, bias, np.zeros(k), ones - eps)
