"""Turn a model's modules into the fused engine's layer list, by walking the model.

:func:`fused_layers` visits the model's children in the order the model holds them (its forward
order) and recognises:

* ``ConvBlock`` (3x3 conv + BN + activation): the model's first block reads the
  NCHW input (``kind="stem"``); any later one reads the previous layer's NHWC output
  (``kind="full"``, the ``conv="full"`` baseline);
* ``DepthwiseSeparableConv``: a ``"depthwise"`` layer then a ``"pointwise"`` layer;
* ``ModuleList`` / ``Sequential`` of those: walked in order;
* global pooling, ``AdaptiveAvgPool2d(1)`` (``"avg"``) or ``AdaptiveMaxPool2d(1)`` (``"max"``);
* ``Flatten``, ``Dropout`` (the identity in eval mode) and ``Identity``: nothing to compute;
* the classifier ``Linear``, or none (a headless model returns the pooled features).

Every conv's batch norm is folded into its weight and a bias (``folding.fold_batch_norm``), in
float64, and its activation becomes a clamp ``(lo, hi)``. Any other module raises
:class:`UnsupportedModuleError` naming its path and type: the engine computes only what it
knows the module computes, and the module path (``model.eval(); model(x)``) runs any model.
"Knows" means exactly these classes (``nn.module.is_exactly``): a subclass, or a module with a
``forward`` or ``backward`` set on the instance, may compute anything, and so may a model
whose forward is not ``MobileNetV1``'s walk of its children (or a container's).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from npmobilenet import nn
from npmobilenet.fast.folding import fold_batch_norm
from npmobilenet.nn.layers import ACTIVATION_LAYERS
from npmobilenet.nn.module import USER_METHODS, is_exactly
from npmobilenet.ops.activations import ACTIVATIONS

OP = "FusedMobileNetV1"

# activation module type -> the clamp (lo, hi) the fused kernels apply
CLAMPS = {layer: ACTIVATIONS[name].clamp for name, layer in ACTIVATION_LAYERS.items()}

_IDENTITIES = (nn.Flatten, nn.Dropout, nn.Identity)
_POOLS = {nn.AdaptiveAvgPool2d: "avg", nn.AdaptiveMaxPool2d: "max"}


_IN_ORDER = (nn.ModuleList.forward, nn.Sequential.forward)  # containers' forwards: in order


class UnsupportedModuleError(TypeError):
    """A module the fused engine cannot compute; the message names its path and type."""


class Layer(NamedTuple):
    """One conv with its batch norm folded in and its activation as a clamp.

    kind: ``"stem"`` (3x3 on the NCHW input, by im2col + GEMM), ``"full"`` (3x3 on the
    NHWC activations, by im2col + GEMM), ``"depthwise"`` (3x3 per channel) or ``"pointwise"``
    (1x1, one GEMM). weight: ``(9*C, K)`` for stem (rows in ``c*9 + kh*3 + kw`` order, as
    ``im2col3x3_nchw`` writes, when its padding is 1; else in full's order, see
    :func:`stem_reads_nchw`) and full (rows in ``(kh*3 + kw)*C + c`` order), ``(3, 3, C)``
    for depthwise, ``(C, K)`` for pointwise; bias ``(K,)``; lo, hi: the activation's clamp.
    padding: the conv's ``Conv2d`` padding (an (h, w) pair, a (top, bottom, left, right)
    4-tuple, or a rule such as ``"tf_same"``), resolved for each input size by the plan.
    """

    kind: str
    path: str
    stride: int
    weight: np.ndarray
    bias: np.ndarray
    lo: float
    hi: float
    padding: object = (1, 1)

    def astype(self, dtype) -> Layer:
        return self._replace(
            weight=np.ascontiguousarray(self.weight, dtype), bias=self.bias.astype(dtype)
        )


# the modules a layer of each kind is made of, by attribute name in its block: the conv, its
# batch norm and its activation
PARTS = {"stem": ("conv", "bn", "relu"), "full": ("conv", "bn", "relu"),
         "depthwise": ("dwconv", "bn0", "relu0"), "pointwise": ("pwconv", "bn1", "relu1")}


def part_paths(layer: Layer) -> tuple[str, str, str]:
    """The paths in the model of ``layer``'s conv, batch norm and activation modules."""
    return tuple(f"{layer.path}.{name}" for name in PARTS[layer.kind])


class Head(NamedTuple):
    """Global pooling (``"avg"`` or ``"max"``) and the classifier: weight (classes, K) and bias
    (classes,), or None for a headless model; ``path``: the classifier's path in the model."""

    pool: str
    weight: np.ndarray | None
    bias: np.ndarray | None
    path: str | None = None

    def astype(self, dtype) -> Head:
        if self.weight is None:
            return self
        return self._replace(weight=self.weight.astype(dtype), bias=self.bias.astype(dtype))


def fused_layers(model, op: str = OP) -> tuple[tuple[Layer, ...], Head]:
    """Walk ``model``'s children: its conv layers (folded, float64) and its head. ``op``:
    the name errors start with (the engine's, or an exporter's that writes the same layers)."""
    from npmobilenet.models.mobilenet import ConvBlock, DepthwiseSeparableConv

    _check_walks_children(model, op)
    layers, pool, fc, fc_path = [], None, None, None
    for path, module in _leaves(model, (ConvBlock, DepthwiseSeparableConv)):
        if pool is None and is_exactly(module, ConvBlock):
            layers.append(_conv_block(op, path, module, "full" if layers else "stem"))
        elif pool is None and is_exactly(module, DepthwiseSeparableConv) and layers:
            layers += _separable(op, path, module)
        elif pool is None and layers and is_exactly(module, *_POOLS):
            pool = _pool(op, path, module)
        elif is_exactly(module, *_IDENTITIES):
            continue
        elif pool is not None and fc is None and is_exactly(module, nn.Linear):
            fc, fc_path = module, path
        elif _known_but_not_exactly(module, (ConvBlock, DepthwiseSeparableConv)):
            raise _unsupported(op, path, module, _NOT_EXACTLY)
        else:
            raise UnsupportedModuleError(
                f"{op}: cannot fuse {path} ({type(module).__name__}) at this place: it takes"
                " a ConvBlock stem, then ConvBlocks and DepthwiseSeparableConvs, one"
                " global pooling (AdaptiveAvgPool2d(1) or AdaptiveMaxPool2d(1)), Flatten,"
                " Dropout, and one Linear classifier; the model's own forward runs any module"
                " (model.eval(); model(x))"
            )
    if pool is None:
        raise UnsupportedModuleError(f"{op}: {type(model).__name__} has no global pooling")
    if fc is None:
        return tuple(layers), Head(pool, None, None)
    w = np.array(fc.weight.data, np.float64)  # copies: the engine is a snapshot
    b = np.zeros(w.shape[0]) if fc.bias is None else np.array(fc.bias.data, np.float64)
    return tuple(layers), Head(pool, w, b, fc_path)


def _leaves(module, blocks, prefix=""):
    """(path, module) of the children in order; containers that run their children in order
    (``ModuleList``, ``Sequential``) are opened, ``blocks`` and any other module are not."""
    for name, child in module._modules.items():
        path = f"{prefix}{name}"
        in_order = (isinstance(child, nn.ModuleList) and type(child).forward in _IN_ORDER
                    and "forward" not in vars(child))  # fmt: skip
        if in_order and not isinstance(child, blocks):
            yield from _leaves(child, blocks, path + ".")
        else:
            yield path, child


# why a subclass of a module the engine knows, or one with a method set on the instance, is not
# fused
_NOT_EXACTLY = ("a subclass, or a module with forward or backward set on the instance, computes"
                " what its own code says, which cannot be known here; the model's own forward"
                " runs it (model.eval(); model(x))")


def _known_but_not_exactly(module, blocks) -> bool:
    """Whether ``module`` is an instance of a class the engine knows without being exactly of
    it (``is_exactly``: a subclass, or a method set on the instance)."""
    known = (*blocks, *_POOLS, *_IDENTITIES, nn.Linear)
    return isinstance(module, known) and not is_exactly(module, *known)


def _check_walks_children(model, op) -> None:
    """Raise unless calling ``model`` runs its children in order: ``MobileNetV1``'s forward
    (not overridden, nor the methods it walks with) or a container's, none set on the
    instance."""
    from npmobilenet.models.mobilenet import MobileNetV1

    own = [m for m in USER_METHODS if m in vars(model)]
    if isinstance(model, MobileNetV1):
        own += [m for m in ("forward", "_forward", "units")
                if getattr(type(model), m) is not getattr(MobileNetV1, m)]
    elif not (isinstance(model, nn.ModuleList) and type(model).forward in _IN_ORDER):
        own.append("forward")
    if own:
        raise UnsupportedModuleError(
            f"{op}: cannot fuse {type(model).__name__}: its {', '.join(sorted(set(own)))} is its"
            " own, where only MobileNetV1's walk of its children in order is known; the"
            " model's own forward runs it (model.eval(); model(x))"
        )


def _unsupported(op, path, module, why) -> UnsupportedModuleError:
    return UnsupportedModuleError(f"{op}: cannot fuse {path} ({type(module).__name__}): {why}")


def _clamp(op, path, module):
    for kind, clamp in CLAMPS.items():
        if is_exactly(module, kind):
            return clamp
    if isinstance(module, tuple(CLAMPS)):
        raise _unsupported(op, path, module, _NOT_EXACTLY)
    names = ", ".join(k.__name__ for k in CLAMPS)
    raise _unsupported(op, path, module, f"the fused kernels apply {names} only")


def _folded(op, path, conv, bn, kernel, groups):
    """conv + eval-mode bn -> (weight (K, C/G, kh, kw), bias (K,)) in float64, checked."""
    if not (is_exactly(conv, nn.Conv2d) and is_exactly(bn, nn.BatchNorm2d)):
        raise _unsupported(op, path, conv, "expected a Conv2d followed by a BatchNorm2d, each"
                                       f" exactly of its class; {_NOT_EXACTLY}")  # fmt: skip
    if (
        conv.kernel_size != (kernel, kernel)
        or (kernel == 1 and conv.padding not in ((0, 0), (0, 0, 0, 0), "valid"))
        or conv.dilation != (1, 1)
        or conv.stride[0] != conv.stride[1]
        or conv.groups != groups
    ):
        raise _unsupported(
            op, path, conv, f"it needs a {kernel}x{kernel} conv"
            f"{' without padding' if kernel == 1 else ''}, groups {'C' if groups != 1 else 1},"
            " equal strides and no dilation, got"
            f" kernel {conv.kernel_size}, padding {conv.padding}, groups {conv.groups},"
            f" stride {conv.stride}, dilation {conv.dilation}",
        )  # fmt: skip
    w, b = fold_batch_norm(conv.weight.data, bn.weight.data, bn.bias.data, bn.running_mean,
                           bn.running_var, eps=bn.eps)  # fmt: skip
    if conv.bias is not None:  # bn(z + c) = scale * z + (shift + scale * c)
        b = b + np.asarray(conv.bias.data, np.float64) * _scale(bn)
    return w, b


def _scale(bn) -> np.ndarray:
    """BN's eval-mode per-channel scale gamma / sqrt(var + eps), float64."""
    var = np.asarray(bn.running_var, np.float64)
    return np.asarray(bn.weight.data, np.float64) / np.sqrt(var + bn.eps)


def _parts(op, path, block, kind, kernel, groups):
    """A layer's conv module, its weight and bias with the batch norm folded in, and its clamp
    (lo, hi), from its modules in ``block`` (``PARTS``)."""
    conv, bn, act = (getattr(block, name) for name in PARTS[kind])
    conv_name, _, act_name = PARTS[kind]
    w, b = _folded(op, f"{path}.{conv_name}", conv, bn, kernel, groups)
    return conv, w, b, _clamp(op, f"{path}.{act_name}", act)


def _conv_block(op, path, block, kind) -> Layer:
    conv, w, b, (lo, hi) = _parts(op, path, block, kind, 3, 1)
    if kind == "stem" and stem_reads_nchw(conv.padding):
        weight = w.reshape(w.shape[0], -1).T  # (K, C, 3, 3) -> (C*9, K): im2col3x3_nchw's rows
    else:
        weight = w.transpose(2, 3, 1, 0).reshape(-1, w.shape[0])  # -> (3*3*C, K), tap-major
    return Layer(kind, path, conv.stride[0], weight, b, lo, hi, conv.padding)


def stem_reads_nchw(padding) -> bool:
    """Whether the stem runs ``im2col3x3_nchw`` on the NCHW input (padding 1 on every side);
    any other padding copies the input into a zero-bordered NHWC buffer first."""
    return padding in ((1, 1), (1, 1, 1, 1))


def _separable(op, path, block) -> tuple[Layer, Layer]:
    conv, w, b, (lo, hi) = _parts(op, path, block, "depthwise", 3, block.dwconv.in_channels)
    dw = Layer("depthwise", path, conv.stride[0], w[:, 0].transpose(1, 2, 0), b, lo, hi,
               conv.padding)  # fmt: skip
    _, w, b, (lo, hi) = _parts(op, path, block, "pointwise", 1, 1)
    pw = Layer("pointwise", path, 1, w[:, :, 0, 0].T, b, lo, hi, (0, 0))  # (K, C, 1, 1) -> (C, K)
    if block.pwconv.stride != (1, 1):
        raise _unsupported(op, f"{path}.pwconv", block.pwconv,
                           "a pointwise conv must have stride 1")  # fmt: skip
    return dw, pw


def _pool(op, path, module) -> str:
    if tuple(module.output_size) != (1, 1):
        raise _unsupported(op, path, module, f"only global pooling (output_size 1) is fused, got"
                                         f" output_size {module.output_size}")  # fmt: skip
    return _POOLS[type(module)]
