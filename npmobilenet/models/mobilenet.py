"""MobileNetV1 (Howard et al. 2017), built from the paper's Table 1 with the reference
implementation's module names.

Architecture (alpha = width multiplier; channel counts are ``int(c * alpha)``), one row of
:data:`TABLE_1` per stage::

    first_conv            3x3 conv, stride 2, in_channels -> 32     + BN + activation
    depthwise_sep_conv0   dw 3x3 s1 + BN + act, pw 1x1 32 -> 64     + BN + act
    depthwise_sep_conv1   ... s2, 64 -> 128
    ...
    depthwise_sep_conv6   five blocks 512 -> 512 (a ModuleList: keys depthwise_sep_conv6.0 ...)
    ...
    avgpool               global average pooling (maxpool with global_pool="max")
    flatten                                                 -> (N, C)
    dropout               (p=0 by default)
    fc                    linear                            -> (N, num_classes)

``conv="full"`` gives the paper's Table 4 baseline: each depthwise-separable block becomes one
full 3x3 convolution + BN + activation (module names ``full_conv0`` ... ``full_conv8``).

The state_dict keys are exactly the reference implementation's PyTorch module names, so weights
move to and from PyTorch with no renaming (``first_conv.conv.weight``,
``depthwise_sep_conv6.0.dwconv.weight``, ``fc.bias`` ...).

The model is its current children: ``forward`` runs them in registration order (a ModuleList's
items one by one), so assigning ``m.fc = Linear(256, 3)`` or a block of your own takes effect,
in ``forward``, ``backward``, ``trace``, ``summary`` and ``output_shape`` alike.

Resolution: the resolution multiplier is simply the input size. With the default padding
("torch": 1 on every side of every 3x3 convolution) or "tf_same", a stride-2 stage maps H to
ceil(H / 2) and any H, W >= 1 survives the five stride-2 stages (the final map is
ceil(H/32) x ceil(W/32)); with "keras" the stride-2 blocks map H to floor(H / 2), so H and W
must be at least 31. In training mode batch norm needs more than one value per channel, so
there N * OH * OW of the final map must exceed 1.
"""

from __future__ import annotations

import contextlib
import math
import sys
import threading
from typing import NamedTuple

import numpy as np

from npmobilenet import _checks as chk
from npmobilenet import compile_ahead, ops, threads
from npmobilenet.nn import (
    AdaptiveAvgPool2d,
    AdaptiveMaxPool2d,
    BatchNorm2d,
    Conv2d,
    Dropout,
    Flatten,
    Identity,
    Linear,
    Module,
    ModuleList,
    ReLU,
    ReLU6,
    Workspace,
)
from npmobilenet.nn.layers import ACTIVATION_LAYERS, float_dtype
from npmobilenet.nn.module import SPENT, is_exactly, run_backward, run_forward
from npmobilenet.ops.conv import conv2d_kernels, reads_input_affine


class Stage(NamedTuple):
    """One stage of the network: ``repeats`` blocks named ``name`` (a ModuleList when
    ``repeats > 1``), the first mapping ``in_channels`` to ``out_channels`` with ``stride``, the
    others ``out_channels`` to ``out_channels`` with stride 1."""

    name: str
    in_channels: int
    out_channels: int
    stride: int
    repeats: int


# Table 1, row 1: "Conv / s2, 3x3x3x32" (the input channels are the images').
FIRST_CONV = Stage("first_conv", 3, 32, 2, 1)
# Table 1 after the first convolution, with the reference implementation's module names.
TABLE_1 = (
    Stage("depthwise_sep_conv0", 32, 64, 1, 1),
    Stage("depthwise_sep_conv1", 64, 128, 2, 1),
    Stage("depthwise_sep_conv2", 128, 128, 1, 1),
    Stage("depthwise_sep_conv3", 128, 256, 2, 1),
    Stage("depthwise_sep_conv4", 256, 256, 1, 1),
    Stage("depthwise_sep_conv5", 256, 512, 2, 1),
    Stage("depthwise_sep_conv6", 512, 512, 1, 5),
    Stage("depthwise_sep_conv7", 512, 1024, 2, 1),
    Stage("depthwise_sep_conv8", 1024, 1024, 1, 1),
)
ACTIVATIONS = ACTIVATION_LAYERS  # activation name -> layer class
CONV_KINDS = ("separable", "full")
GLOBAL_POOLS = {"avg": ("avgpool", AdaptiveAvgPool2d), "max": ("maxpool", AdaptiveMaxPool2d)}
# Padding conventions: each 3x3 conv's ``Conv2d`` padding, by (convention, role, stride).
# "torch": 1 on every side (PyTorch, timm). "tf_same": TensorFlow's "SAME" (TF-Slim, Hugging
# Face): asymmetric at stride 2 on an even size (0 above/left, 1 below/right). "keras":
# keras.applications.MobileNet: "SAME" in the stem, and before each stride-2 depthwise conv a
# ZeroPadding2D((0, 1), (0, 1)) then no padding, so a stride-2 block maps H to floor(H / 2).
PADDINGS = ("torch", "tf_same", "keras")


def conv_padding(convention: str, role: str, stride: int):
    """The ``Conv2d`` padding of a 3x3 conv (``role`` "stem" or "block") under ``convention``."""
    if convention == "tf_same" or (convention == "keras" and role == "stem"):
        return "tf_same"
    if convention == "keras" and stride == 2:
        return (0, 1, 0, 1)  # (top, bottom, left, right)
    return 1


def final_size(size: int, convention: str) -> int:
    """One side of the last feature map for an input side ``size`` (0: too small)."""
    size = -(-size // FIRST_CONV.stride)  # the stem: ceil(H / 2) under every convention
    for st in TABLE_1:
        if st.stride == 2:
            size = size // 2 if convention == "keras" else -(-size // 2)
    return size


def stages(alpha: float = 1.0, in_channels: int = 3, conv: str = "separable") -> tuple:
    """The stem and every Table 1 stage at width ``alpha``: channel counts ``int(c * alpha)``
    (the stem's input is ``in_channels``), names ``full_conv*`` for ``conv="full"``."""
    first = FIRST_CONV._replace(in_channels=in_channels,
                                out_channels=int(FIRST_CONV.out_channels * alpha))  # fmt: skip
    rows = [first]
    for st in TABLE_1:
        name = st.name.replace("depthwise_sep_conv", "full_conv") if conv == "full" else st.name
        rows.append(st._replace(name=name, in_channels=int(st.in_channels * alpha),
                                out_channels=int(st.out_channels * alpha)))  # fmt: skip
    return tuple(rows)


def _checked_config(alpha, num_classes, in_channels, dropout, activation, dtype, seed, conv,
                    global_pool, padding, bn_eps):  # fmt: skip
    """Validate MobileNetV1's arguments; return them as a dict."""
    op = "MobileNetV1"
    alpha = chk.number(op, "alpha", alpha, low=0.0, low_open=True)
    if int(FIRST_CONV.out_channels * alpha) < 1:  # the narrowest layer; int(c * alpha) grows
        raise ValueError(
            f"{op}: alpha={alpha} leaves first_conv with int(32 * alpha) = 0 channels;"
            " alpha must be at least 1/32 = 0.03125"
        )
    return dict(
        alpha=alpha,
        num_classes=chk.integer(op, "num_classes", num_classes, 0),
        in_channels=chk.integer(op, "in_channels", in_channels, 1),
        dropout=chk.number(op, "dropout", dropout, 0.0, 1.0, high_open=True),
        activation=chk.choice(op, "activation", activation, ACTIVATIONS),
        dtype=float_dtype(op, dtype).name,
        seed=None if seed is None else chk.integer(op, "seed", seed, 0),
        conv=chk.choice(op, "conv", conv, CONV_KINDS),
        global_pool=chk.choice(op, "global_pool", global_pool, GLOBAL_POOLS),
        padding=chk.choice(op, "padding", padding, PADDINGS),
        bn_eps=chk.number(op, "bn_eps", bn_eps, low=0.0, low_open=True),
    )


def _fuses(bn, act) -> bool:
    """Whether ``act(bn(x))`` runs as one op: ``bn`` a BatchNorm2d, ``act`` a ReLU / ReLU6
    (exactly: see ``nn.module.is_exactly``)."""
    return is_exactly(bn, BatchNorm2d) and is_exactly(act, ReLU, ReLU6)


def _bn_act_forward(bn, act, x, workspace):
    """``act(bn(x))``: one fused op (``BatchNorm2d.forward_act``) when :func:`_fuses`, else
    the two modules in turn. Returns (out, fused)."""
    if _fuses(bn, act):
        return bn.forward_act(x, act.name, workspace=workspace), True
    return run_forward(act, run_forward(bn, x, workspace), workspace), False


def _conv_forward(conv, x, workspace, keep_input: bool, input_affine=None):
    """A block's first convolution; ``keep_input=False`` needs a library ``Conv2d`` (its
    backward then takes x again, see :func:`_conv_backward`). ``input_affine``: a
    ``ChannelAffine`` of x, applied by a library ``Conv2d`` as it reads x; any other module
    gets it written (``ops.channel_affine``)."""
    if input_affine is not None and not is_exactly(conv, Conv2d):
        x, input_affine = ops.channel_affine(x, input_affine), None
    if keep_input and input_affine is None:
        return run_forward(conv, x, workspace)
    if not is_exactly(conv, Conv2d):
        raise ValueError(f"keep_input=False needs the block's first convolution to be a Conv2d,"
                         f" got {type(conv).__name__}")  # fmt: skip
    return conv.forward(x, workspace=workspace, keep_input=keep_input, input_affine=input_affine)


def _conv_backward(conv, dout, consume: bool, input_grad: bool = True, x=None):
    """The backward of :func:`_conv_forward`: ``x`` is the input again when it was not kept."""
    if x is None:
        return run_backward(conv, dout, consume, input_grad)
    return conv.backward(dout, consume=consume, input_grad=input_grad, x=x)


def _bn_act_deferred(bn, act, y, workspace, op: str):
    """``act(bn(y))`` not written: ``(y, ChannelAffine)`` (``BatchNorm2d.
    forward_act_coefficients``), for a block whose output is read by the next block's
    depthwise convolution (``input_affine``); only when :func:`_fuses`."""
    if not _fuses(bn, act):
        raise ValueError(f"{op}: the output can be deferred only when the block ends in a"
                         f" BatchNorm2d and a ReLU or ReLU6, got {type(bn).__name__} and"
                         f" {type(act).__name__}")  # fmt: skip
    return y, bn.forward_act_coefficients(y, act.name, workspace=workspace)


def _bn_act_backward(bn, act, dout, consume: bool, fused: bool):
    """The backward of :func:`_bn_act_forward` (bn's backward covers the fused activation)."""
    if fused:
        return bn.backward(dout, consume=consume)
    d = run_backward(act, dout, consume)
    return run_backward(bn, d, _owned(d, dout, consume))


def _owned(d, given, consume: bool) -> bool:
    """Whether a block may let its next backward write over ``d``, a gradient one of its
    modules returned: yes unless it shares memory with ``given``, the caller's ``dout``, and
    the caller did not pass ``consume=True``."""
    return consume or not np.may_share_memory(d, given)


class ConvBlock(Module):
    """3x3 convolution (no bias) + BatchNorm + activation: the reference implementation's
    ``FirstConv``, and each block of the full-convolution baseline.
    ``(N, C, H, W) -> (N, K, OH, OW)``."""

    def __init__(
        self, in_ch: int, out_ch: int, stride: int, activation: str, dtype, padding=1, eps=1e-5
    ) -> None:
        super().__init__()
        self.conv = Conv2d(
            in_ch, out_ch, 3, stride=stride, padding=padding, bias=False, dtype=dtype
        )
        self.bn = BatchNorm2d(out_ch, eps=eps, dtype=dtype)
        self.relu = ACTIVATIONS[activation]()

    def forward(self, x: np.ndarray, *, workspace=None, keep_input: bool = True) -> np.ndarray:
        """relu(bn(conv(x))), with BN and the activation fused into one op (same numbers).

        ``keep_input=False``: keep no reference to ``x`` (``Conv2d.forward``'s keyword); the
        backward then takes it again as ``x=``."""
        x = _conv_forward(self.conv, x, workspace, keep_input)
        out, self._cache = _bn_act_forward(self.bn, self.relu, x, workspace)
        return out

    def forward_deferred(self, x: np.ndarray, *, workspace=None, keep_input: bool = True):
        """:meth:`forward` with its output not written: ``(y, affine)``, the batch norm's input
        and the ``ChannelAffine`` with which the output's reader computes it as it reads y
        (``Conv2d.forward(y, input_affine=affine)``; ``ops.channel_affine(y, affine)`` is the
        output). Only when :attr:`recomputes_output`; the backward is :meth:`backward`'s."""
        x = _conv_forward(self.conv, x, workspace, keep_input)
        out = _bn_act_deferred(self.bn, self.relu, x, workspace, "ConvBlock.forward_deferred")
        self._cache = True  # the activation is batch norm's
        return out

    def backward(self, dout: np.ndarray, *, consume: bool = False, input_grad: bool = True,
                 x=None):  # fmt: skip
        """The forward's calls, differentiated in reverse; ``consume`` as in ``Module``.

        ``input_grad=False`` skips the input's gradient and returns None. ``x``: the input,
        again, after a forward with ``keep_input=False``."""
        fused = self._take_cache("ConvBlock.backward")
        d = _bn_act_backward(self.bn, self.relu, dout, consume, fused)
        self._cache = SPENT
        return _conv_backward(self.conv, d, _owned(d, dout, consume), input_grad, x)

    def release_output(self) -> None:
        """Let the output of the last forward go (``BatchNorm2d.release_output``); only when
        :attr:`recomputes_output`."""
        self.bn.release_output()

    def recompute_output(self) -> np.ndarray:
        """The output of the last forward again, after :meth:`release_output`."""
        return self.bn.recompute_output()

    @property
    def recomputes_output(self) -> bool:
        """Whether the block's output is batch norm's (fused activation included), which
        :meth:`recompute_output` can compute again from its cache."""
        return _fuses(self.bn, self.relu)


# A block lets the activation between its two convolutions go (and computes it again for the
# backward) only when it holds at least this many bytes. Computing it again costs a fixed
# ~20 us per block besides the pass itself, which at alpha 0.25, 32x32, batch 64 (activations
# of at most 0.5 MB, 2.5 MB in all) is 0.25 ms of a 10 ms step for little memory.
RELEASE_MIN_BYTES = 2**20


class DepthwiseSeparableConv(Module):
    """3x3 depthwise conv + BN + act, then 1x1 pointwise conv + BN + act (the reference block).

    ``(N, C, H, W) -> (N, C, OH, OW) -> (N, K, OH, OW)``; the stride sits on the depthwise conv.
    Each activation is its own module (the reference implementation shares one ReLU), applied
    fused into the batch norm before it: ``bn0.forward_act(x, relu0.name)`` computes
    ``relu0(bn0(x))`` in one pass (the same numbers), and ``bn0.backward`` differentiates both.
    """

    def __init__(
        self, in_ch: int, out_ch: int, stride: int, activation: str, dtype, padding=1, eps=1e-5
    ) -> None:
        super().__init__()
        act = ACTIVATIONS[activation]
        self.dwconv = Conv2d(
            in_ch, in_ch, 3, stride=stride, padding=padding, groups=in_ch, bias=False, dtype=dtype
        )
        self.bn0 = BatchNorm2d(in_ch, eps=eps, dtype=dtype)
        self.relu0 = act()
        self.pwconv = Conv2d(in_ch, out_ch, 1, bias=False, dtype=dtype)
        self.bn1 = BatchNorm2d(out_ch, eps=eps, dtype=dtype)
        self.relu1 = act()

    def forward(self, x: np.ndarray, *, workspace=None, keep_input: bool = True,
                input_affine=None) -> np.ndarray:  # fmt: skip
        """The two convolutions with their batch norms and activations.

        ``keep_input=False``: keep no reference to ``x`` (``Conv2d.forward``'s keyword); the
        backward then takes it again as ``x=``. ``input_affine``: a ``ChannelAffine`` the
        depthwise conv applies to x as it reads it (x is then the previous block's
        :meth:`forward_deferred` output); the backward's dx is the gradient with respect to
        the input it computed."""
        x, fused0, again = self._convolutions(x, workspace, keep_input, input_affine)
        x, fused1 = _bn_act_forward(self.bn1, self.relu1, x, workspace)
        self._cache = (fused0, fused1, again)
        return x

    def forward_deferred(self, x: np.ndarray, *, workspace=None, keep_input: bool = True,
                         input_affine=None):  # fmt: skip
        """:meth:`forward` with its output not written: ``(y, affine)``, bn1's input and the
        ``ChannelAffine`` with which the output's reader computes it as it reads y (the next
        block's ``forward(y, input_affine=affine)``; ``ops.channel_affine(y, affine)`` is the
        output). Only when :attr:`recomputes_output`; the backward is :meth:`backward`'s."""
        x, fused0, again = self._convolutions(x, workspace, keep_input, input_affine)
        op = "DepthwiseSeparableConv.forward_deferred"
        out = _bn_act_deferred(self.bn1, self.relu1, x, workspace, op)
        self._cache = (fused0, True, again)
        return out

    def _convolutions(self, x, workspace, keep_input, input_affine):
        """The forward up to bn1: returns (the pointwise conv's output, fused0, again)."""
        x = _conv_forward(self.dwconv, x, workspace, keep_input, input_affine)  # depthwise
        if self._pointwise_applies_bn0(x):
            # bn0's output is never written: the pointwise conv applies its coefficients to a
            # few images at a time as it multiplies them, forward and backward
            affine = self.bn0.forward_act_coefficients(x, self.relu0.name, workspace=workspace)
            return self.pwconv.forward(x, workspace=workspace, input_affine=affine), True, False
        x, fused0 = _bn_act_forward(self.bn0, self.relu0, x, workspace)
        # bn0's output is let go once the pointwise conv has read it, and computed again from
        # bn0's cache for the pointwise backward: one activation of the block is not kept
        # (when it is large enough to be worth the pass, RELEASE_MIN_BYTES)
        again = fused0 and is_exactly(self.pwconv, Conv2d) and x.nbytes >= RELEASE_MIN_BYTES
        x = _conv_forward(self.pwconv, x, workspace, keep_input=not again)  # pointwise
        if again:
            self.bn0.release_output()
        return x, fused0, again

    def backward(self, dout: np.ndarray, *, consume: bool = False, x=None) -> np.ndarray:
        """The forward's lines, differentiated in reverse (pointwise first). The gradients
        between them are this block's own, so each backward may write over its dout. ``x``:
        the input, again, after a forward with ``keep_input=False``."""
        fused0, fused1, again = self._take_cache("DepthwiseSeparableConv.backward")
        d = _bn_act_backward(self.bn1, self.relu1, dout, consume, fused1)
        y0 = self.bn0.recompute_output() if again else None  # the pointwise conv's input
        d = _conv_backward(self.pwconv, d, _owned(d, dout, consume), x=y0)
        d = _bn_act_backward(self.bn0, self.relu0, d, _owned(d, dout, consume), fused0)
        d = _conv_backward(self.dwconv, d, _owned(d, dout, consume), x=x)
        self._cache = SPENT
        return d

    def _pointwise_applies_bn0(self, y) -> bool:
        """Whether the pointwise conv reads bn0's output as ``input_affine`` (library modules,
        batch norm and activation fused, an output large enough to be worth not keeping,
        ``RELEASE_MIN_BYTES``)."""
        pw = self.pwconv
        return (_fuses(self.bn0, self.relu0) and is_exactly(pw, Conv2d)
                and y.nbytes >= RELEASE_MIN_BYTES
                and reads_input_affine(y.shape, pw.weight.shape, pw.stride, pw.padding,
                                       pw.dilation, pw.groups, pw.method, y.dtype))  # fmt: skip

    def release_output(self) -> None:
        """Let the output of the last forward go (``BatchNorm2d.release_output``); only when
        :attr:`recomputes_output`."""
        self.bn1.release_output()

    def recompute_output(self) -> np.ndarray:
        """The output of the last forward again, after :meth:`release_output`."""
        return self.bn1.recompute_output()

    @property
    def recomputes_output(self) -> bool:
        """Whether the block's output is bn1's (fused activation included), which
        :meth:`recompute_output` can compute again from its cache."""
        return _fuses(self.bn1, self.relu1)


class MobileNetV1(Module):
    """MobileNetV1 with width multiplier ``alpha``; the input size is the resolution multiplier.

    Args:
        alpha: width multiplier (> 0); every channel count c becomes ``int(c * alpha)``, so
            alpha must be at least 1/32 (the first convolution keeps >= 1 channel).
        num_classes: outputs of the classifier (>= 1), or 0 for a headless model whose
            forward returns the pooled features (N, C) (``fc`` is then an ``Identity``).
        in_channels: channels of the input images (3 for RGB, 1 for grayscale).
        dropout: dropout probability before ``fc`` (0 = none, as in the reference).
        activation: ``"relu"`` (paper, reference) or ``"relu6"`` (TF/Keras flavour).
        dtype: float32 or float64 for every parameter; inputs must match.
        seed: seeds the initialisation and the dropout masks (None: fresh entropy).
        conv: ``"separable"`` (MobileNet) or ``"full"`` (the paper's Table 4 baseline).
        global_pool: ``"avg"`` (module ``avgpool``) or ``"max"`` (module ``maxpool``).
        padding: ``"torch"`` (1 on every side; PyTorch, timm), ``"tf_same"`` (TensorFlow's
            "SAME"; TF-Slim, Hugging Face) or ``"keras"`` (keras.applications.MobileNet); see
            :func:`conv_padding`.
        bn_eps: batch norm's epsilon (1e-5 in PyTorch, 1e-3 in TensorFlow and Keras).

    ``labels``: the class names, when known (a converted pretrained model), else None; saved
    with the weights by :func:`npmobilenet.io.save_weights`.

    ``forward(x)``: ``(N, in_channels, H, W) -> (N, num_classes)`` logits.
    ``backward(dlogits)``: ``(N, num_classes) -> (N, in_channels, H, W)``, filling every
    ``.grad`` of a parameter that requires one (accumulating, until ``zero_grad()``).

    Dataflow: the model owns the arrays handed between its children. It runs them with its
    :class:`npmobilenet.nn.Workspace` (arrays reused from step to step) and splits each batch
    with ``self.runner`` (a :class:`npmobilenet.threads.Runner`; ``Runner(1)`` for serial), passing
    both, and ``consume=True`` in the backward, by the rule of :mod:`npmobilenet.nn.module`.
    What it returns (logits, features, dx) is always a fresh array. Threads that share one
    model run its forwards and backwards one at a time (they share its workspace); a backward
    differentiates the last forward, whichever thread ran it, so train one model per thread.

    Memory of a training step: backward needs each batch norm's input (the convolution's
    output); the activation between a block's two convolutions, when it holds at least
    :data:`RELEASE_MIN_BYTES` (1 MiB), is let go once the pointwise convolution has read it and
    computed again from batch norm's cache for its backward.
    ``self.recompute_block_outputs = True`` does the same with each block's output, which the
    next block reads: a third less memory (batch 32 at 224: ~0.95 instead of ~1.3 GB in all),
    one more pass over those activations in backward (~4% slower).
    """

    def __init__(
        self,
        alpha: float = 1.0,
        num_classes: int = 1000,
        in_channels: int = 3,
        dropout: float = 0.0,
        activation: str = "relu",
        dtype=np.float32,
        seed=None,
        conv: str = "separable",
        global_pool: str = "avg",
        padding: str = "torch",
        bn_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.config = _checked_config(
            alpha, num_classes, in_channels, dropout, activation, dtype, seed, conv, global_pool,
            padding, bn_eps,
        )
        self.labels = None
        self.dtype = np.dtype(self.config["dtype"])
        init_seed, dropout_seed = np.random.SeedSequence(self.config["seed"]).spawn(2)
        self._build_features()
        pool_name, pool = GLOBAL_POOLS[global_pool]
        setattr(self, pool_name, pool(1))
        self.flatten = Flatten(1)
        self.dropout = Dropout(dropout, rng=np.random.default_rng(dropout_seed))
        self.fc = self._classifier(num_classes)
        self.runner = threads.Runner()  # threads.set_threads() decides its count
        self.recompute_block_outputs = False
        object.__setattr__(self, "_workspace", Workspace())
        object.__setattr__(self, "_calls", CallLock())  # see _forward
        object.__setattr__(self, "_ran", None)  # what the last forward ran (see _backward)
        object.__setattr__(self, "_split_memo", (None, False))  # see _worth_splitting
        object.__setattr__(self, "_planned", None)  # see _compile_ahead
        self.reset_parameters(init_seed)
        self.pack_parameters()  # one buffer for the weights, one for the gradients

    def _build_features(self) -> None:
        """first_conv and one module per Table 1 row (:func:`stages`)."""
        cfg = self.config
        act, dtype, pad, eps = cfg["activation"], self.dtype, cfg["padding"], cfg["bn_eps"]
        first, *rows = stages(cfg["alpha"], cfg["in_channels"], cfg["conv"])
        stem_pad = conv_padding(pad, "stem", first.stride)
        self.first_conv = ConvBlock(first.in_channels, first.out_channels, first.stride, act,
                                    dtype, stem_pad, eps)  # fmt: skip
        block = ConvBlock if cfg["conv"] == "full" else DepthwiseSeparableConv
        for st in rows:
            blocks = [
                block(st.in_channels if i == 0 else st.out_channels, st.out_channels,
                      st.stride if i == 0 else 1, act, dtype,
                      conv_padding(pad, "block", st.stride if i == 0 else 1), eps)
                for i in range(st.repeats)
            ]  # fmt: skip
            # a stage of several blocks is a ModuleList, as in the reference implementation
            setattr(self, st.name, blocks[0] if st.repeats == 1 else ModuleList(blocks))

    def _classifier(self, num_classes: int) -> Module:
        if num_classes == 0:
            return Identity()
        return Linear(self.num_features, num_classes, dtype=self.dtype)

    def reset_parameters(self, seed=None) -> None:
        """Initialise every layer, reproducibly from ``seed`` (int, SeedSequence or None).

        Convolutions: Kaiming normal, fan_out mode, N(0, 2 / (K * kH * kW)) (torchvision's
        choice for MobileNets); batch norm: weight 1, bias 0, fresh running statistics;
        linear layers: weight N(0, 0.01^2), bias 0. Drawn in float64 then cast, so float32 and
        float64 models from one seed hold the same weights up to rounding.
        """
        rng = np.random.default_rng(seed)
        for _, m in self.named_modules():
            if isinstance(m, Conv2d):
                k, _, kh, kw = m.weight.shape
                std = math.sqrt(2.0 / (k * kh * kw))
                m.weight.data[...] = rng.normal(0.0, std, m.weight.shape)
            elif isinstance(m, BatchNorm2d):
                m.weight.data.fill(1)
                m.bias.data.fill(0)
                m.running_mean.fill(0)
                m.running_var.fill(1)
                m.num_batches_tracked.fill(0)
            elif isinstance(m, Linear):
                _init_linear(m, rng)

    def reset_classifier(self, num_classes: int, seed=None) -> None:
        """Replace ``fc`` with a fresh classifier for ``num_classes`` outputs (0: headless,
        an ``Identity``), initialised as :meth:`reset_parameters` does, in ``fc``'s place."""
        num_classes = chk.integer("MobileNetV1.reset_classifier", "num_classes", num_classes, 0)
        fc = self._classifier(num_classes)
        if isinstance(fc, Linear):
            _init_linear(fc, np.random.default_rng(seed))
        self.fc = fc
        self.config["num_classes"] = num_classes

    @property
    def runner(self) -> threads.Runner:
        """The :class:`npmobilenet.threads.Runner` that splits each batch (``Runner(1)``:
        serial)."""
        return self._runner

    @runner.setter
    def runner(self, value: threads.Runner) -> None:
        if not isinstance(value, threads.Runner):
            raise TypeError(
                "MobileNetV1.runner: expected an npmobilenet.threads.Runner (Runner(n) splits a"
                f" batch over n threads, Runner(1) runs serially), got {chk.describe(value)}"
            )
        object.__setattr__(self, "_runner", value)

    @property
    def recompute_block_outputs(self) -> bool:
        """Whether each block's output is let go and computed again in backward (see the
        class docstring)."""
        return self._recompute_block_outputs

    @recompute_block_outputs.setter
    def recompute_block_outputs(self, value: bool) -> None:
        value = chk.flag("MobileNetV1", "recompute_block_outputs", value)
        object.__setattr__(self, "_recompute_block_outputs", value)

    @property
    def num_features(self) -> int:
        """Channels of the feature map (the classifier's input), from the current children."""
        return self.output_shape_features((1, self.config["in_channels"], 32, 32))[1]

    # ----------------------------------------------------------------- checks
    def _check_input(self, op: str, x) -> None:
        """Validate x before any op runs: type, 4-D, channels, dtype, size (see module doc)."""
        if not isinstance(x, np.ndarray) or x.dtype not in chk.FLOAT_DTYPES:
            raise TypeError(
                f"{op}: x must be a float32 or float64 numpy array of shape (N, C, H, W), got"
                f" {chk.describe(x)} (convert with x.astype(np.{self.dtype.name}))"
            )
        if x.ndim != 4:
            hint = "; for one image use x[None]" if x.ndim == 3 else ""
            raise ValueError(
                f"{op}: x must be 4-D (N, C, H, W), got {x.ndim}-D shape {x.shape}{hint}"
            )
        n, c, h, w = x.shape
        if c != self.config["in_channels"]:
            raise ValueError(
                f"{op}: x has {c} channels (shape {x.shape}) but the model was built with"
                f" in_channels={self.config['in_channels']}"
            )
        if x.dtype != self.dtype:
            raise TypeError(
                f"{op}: x has dtype {x.dtype} but the model's parameters are {self.dtype};"
                f" convert with x.astype(np.{self.dtype.name}) (no silent casting)"
            )
        if n < 1 or h < 1 or w < 1:
            raise ValueError(
                f"{op}: x must hold at least one image of at least 1x1 pixels (MobileNetV1"
                f" takes any H, W >= 1), got shape {x.shape}"
            )
        fh, fw = (final_size(s, self.config["padding"]) for s in (h, w))
        if fh < 1 or fw < 1:
            raise ValueError(
                f"{op}: x of shape {x.shape} is too small for padding='keras': each stride-2"
                " block maps H to floor(H / 2), so H and W must be at least 31"
            )
        if self.training and n * fh * fw <= 1:
            raise ValueError(
                f"{op}: in training mode batch norm needs more than one value per channel, but x"
                f" of shape {x.shape} leaves one value after the five stride-2 stages"
                f" ({fh}x{fw} map, batch {n}); use a batch of at least 2, an input larger than"
                " 32x32, or model.eval()"
            )

    # ----------------------------------------------------------------- walking the children
    def units(self, features_only: bool = False) -> list[tuple[str, Module]]:
        """``(label, module)`` in the order forward runs them: the current children in
        registration order, a ModuleList's items one by one (labels ``"name #i"``).
        ``features_only``: stop before the global pool (``avgpool`` / ``maxpool``)."""
        out = []
        for name, child in self._modules.items():
            if features_only and name in _POOL_NAMES:
                break
            if (isinstance(child, ModuleList) and type(child).forward is Module.forward
                    and "forward" not in vars(child)):  # a list, not a module of its own
                out += [(f"{name} #{i}", m) for i, m in enumerate(child)]
            else:
                out.append((name, child))
        return out

    # ----------------------------------------------------------------- forward / backward
    def forward(self, x: np.ndarray) -> np.ndarray:
        """``(N, in_channels, H, W) -> (N, num_classes)`` logits (no softmax)."""
        return self._forward(x, "MobileNetV1.forward", self.units(), None)

    def forward_features(self, x: np.ndarray) -> np.ndarray:
        """The last feature map, before pooling: ``(N, in_channels, H, W) -> (N, C,
        ceil(H/32), ceil(W/32))``; differentiate it with :meth:`backward_features`."""
        return self._forward(x, "MobileNetV1.forward_features", self.units(True), None)

    def _forward(self, x: np.ndarray, op: str, units, file) -> np.ndarray:
        self._check_input(op, x)
        with self._calls:  # one forward or backward at a time: they share the workspace
            return self._forward_checked(x, units, file)

    def _forward_checked(self, x: np.ndarray, units, file) -> np.ndarray:
        ws = self._workspace
        ws.new_step()
        split = self._worth_splitting(x.shape, units)
        if compile_ahead.enabled():
            self._compile_ahead(x.shape, x.dtype, units)
        with self._session(split) as runner:
            ws.runner = runner
            try:
                if file is not None:
                    print(f"{'input':<30}: {x.shape}", file=file)
                x, drops = _run_units(x, units, ws, file, self.recompute_block_outputs)
            finally:
                ws.runner = threads.SERIAL
        object.__setattr__(self, "_ran", ([m for _, m in units], drops, x.shape, x.dtype, split))
        return x.copy() if ws.owns(x) else x  # never hand out an array the next step rewrites

    def backward(self, dlogits: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        """``(N, num_classes) -> (N, in_channels, H, W)``: the backward of every module the
        last forward ran, in reverse.

        Adds each parameter's gradient into its ``.grad`` and returns dx, the gradient with
        respect to the input images. Training needs only the parameter gradients:
        ``input_grad=False`` skips dx and returns None, as PyTorch does for an input that does
        not require grad; then the backward also stops after the first module (in forward
        order) that holds a parameter requiring a gradient, so a model frozen up to its
        classifier runs the classifier's backward only.
        """
        return self._backward(dlogits, "MobileNetV1.backward", input_grad)

    def backward_features(self, dfeat: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        """The backward of :meth:`forward_features`: ``dfeat`` (N, C, h, w) -> dx, filling
        the ``.grad`` of every feature parameter; ``input_grad`` as in :meth:`backward`."""
        return self._backward(dfeat, "MobileNetV1.backward_features", input_grad)

    def _backward(self, dout, op: str, input_grad) -> np.ndarray | None:
        input_grad = chk.flag(op, "input_grad", input_grad)
        with self._calls:  # see _forward
            return self._backward_checked(dout, op, input_grad)

    def _backward_checked(self, dout, op: str, input_grad: bool) -> np.ndarray | None:
        if self._ran is _SPENT_RUN:
            raise RuntimeError(f"{op}: backward called twice after one forward (run forward"
                               " again first)")  # fmt: skip
        if self._ran is None:
            raise RuntimeError(f"{op}: backward called before forward (no cached activations)")
        modules, drops, shape, dtype, split = self._ran
        given = dout = chk.dout_like(op, dout, shape, dtype)
        first = 0 if input_grad else _first_trainable(modules)
        object.__setattr__(self, "_ran", _SPENT_RUN)
        ws = self._workspace
        with self._session(split) as runner:
            ws.runner = runner
            try:
                for i in range(len(modules) - 1, first - 1, -1):
                    own = i < len(modules) - 1 and not np.may_share_memory(dout, given)
                    x = modules[i - 1].recompute_output() if drops[i] else None
                    dout = _unit_backward(modules[i], dout, own, input_grad or i > first, x)
            finally:
                ws.runner = threads.SERIAL
        if not input_grad or first == len(modules):
            return None
        return dout.copy() if ws.owns(dout) else dout

    def _worth_splitting(self, in_shape, units) -> bool:
        """Whether a step on ``in_shape`` may split its batch over ``self.runner``'s threads:
        its largest activation (``output_shape`` arithmetic over ``units``) holds at least two
        slices of ``threads.MIN_SLICE_ELEMENTS``. A batch of small images splits none of its
        ops, and then BLAS is better left its threads for the GEMMs (a module without shape
        arithmetic: True).

        The answer is remembered for the last ``(in_shape, units)`` (the modules themselves, so
        a model whose children change walks them again)."""
        if self.runner.threads == 1:  # nothing to split over
            return False
        key = (tuple(in_shape), tuple(m for _, m in units))
        memo_key, answer = self._split_memo
        if key != memo_key:
            answer = self._walk_shapes(in_shape, units)
            object.__setattr__(self, "_split_memo", (key, answer))
        return answer

    @staticmethod
    def _walk_shapes(in_shape, units) -> bool:
        """``_worth_splitting``'s walk of ``output_shape`` over ``units``."""
        largest, shape = math.prod(in_shape), in_shape
        for _, module in units:
            try:
                shape = module.output_shape(shape)
            except NotImplementedError:  # a user's module without shape arithmetic: may split
                return True
            largest = max(largest, math.prod(shape))
        return largest >= 2 * threads.MIN_SLICE_ELEMENTS

    def _compile_ahead(self, in_shape, dtype, units) -> None:
        """Hand the slow kernels a forward on ``in_shape`` (and in training its backward) will
        run to :mod:`npmobilenet.compile_ahead` (:func:`_kernel_plan`): on a cold Numba cache a
        second process compiles them meanwhile. Done once per input shape, dtype, mode and
        module list (the last one is remembered)."""
        key = (tuple(in_shape), dtype, self.training, tuple(m for _, m in units))
        if key != self._planned:
            object.__setattr__(self, "_planned", key)
            compile_ahead.plan(_kernel_plan(units, in_shape, dtype, self.training))

    def _session(self, split: bool):
        """``self.runner.session()`` (BLAS at one thread while ops split the batch) when
        ``split``, else the serial runner with BLAS keeping its threads."""
        return self.runner.session() if split else contextlib.nullcontext(threads.SERIAL)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Softmax of the logits: ``(N, in_channels, H, W) -> (N, num_classes)``.

        Runs in the current mode: call ``eval()`` first for inference. In eval mode the fused
        engine (:meth:`fuse`) computes the logits (the same up to float rounding), unless the
        model holds a module it does not know.
        """
        if self.training:
            return ops.softmax(self.forward(x), axis=1)
        from npmobilenet.fast import UnsupportedModuleError

        self._check_input("MobileNetV1.predict_proba", x)
        try:
            engine = self.fuse()
        except UnsupportedModuleError:
            return ops.softmax(self.forward(x), axis=1)
        return ops.softmax(engine(x), axis=1)

    def fuse(self):
        """The fused eval-mode inference engine for the current modules and weights.

        Returns a :class:`npmobilenet.fast.FusedMobileNetV1`: calling it on x gives what
        ``eval()`` then ``forward(x)`` gives (up to float rounding), faster. It is a snapshot:
        call ``fuse()`` again after changing the weights. Raises
        :class:`npmobilenet.fast.UnsupportedModuleError` for a module it cannot compute.
        """
        from npmobilenet.fast import FusedMobileNetV1

        return FusedMobileNetV1(self)

    def trace(self, x: np.ndarray, file=None) -> np.ndarray:
        """Run ``forward(x)``, printing each module's output shape as it runs.

        It is a real forward pass (in training mode it updates batch norm statistics); returns
        the logits. ``file`` defaults to stdout.
        """
        file = sys.stdout if file is None else file
        return self._forward(x, "MobileNetV1.trace", self.units(), file)

    def summary(self, input_size=(3, 224, 224), batch_size: int = 1):
        """Parameter and mult-add counts per layer, in total and by layer type (no ops run).

        ``input_size`` is ``(C, H, W)``; returns a :class:`npmobilenet.models.summary.ModelSummary`
        that prints as a torchinfo-style table.
        """
        from npmobilenet.models.summary import summarize

        return summarize(self, input_size, batch_size)

    def output_shape(self, in_shape: tuple) -> tuple:
        """Shape arithmetic only: ``(N, C, H, W) -> (N, num_classes)``."""
        for _, module in self.units():
            in_shape = module.output_shape(in_shape)
        return tuple(in_shape)

    def output_shape_features(self, in_shape: tuple) -> tuple:
        """Shape arithmetic only: ``(N, C, H, W) -> (N, C', ceil(H/32), ceil(W/32))``."""
        for _, module in self.units(True):
            in_shape = module.output_shape(in_shape)
        return tuple(in_shape)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.config.items())


_POOL_NAMES = tuple(name for name, _ in GLOBAL_POOLS.values())
_SPENT_RUN = "spent"  # _ran after a backward used it


class CallLock:
    """A re-entrant lock that a copy of its owner gets anew: a model's forward and backward
    take it, so threads sharing one model run them one at a time (they share the model's
    workspace and its record of the last forward) rather than writing over each other's
    activations."""

    def __init__(self) -> None:
        self._lock = threading.RLock()

    def __enter__(self):
        return self._lock.__enter__()

    def __exit__(self, *exc):
        return self._lock.__exit__(*exc)

    def __deepcopy__(self, memo) -> CallLock:
        return CallLock()

    def __reduce__(self):
        return CallLock, ()


def _init_linear(m: Linear, rng) -> None:
    """A classifier's initialisation: weight N(0, 0.01^2), bias 0."""
    m.weight.data[...] = rng.normal(0.0, 0.01, m.weight.shape)
    if m.bias is not None:
        m.bias.data.fill(0)


def _run_units(x, units, ws, file, recompute: bool) -> tuple[np.ndarray, list[bool]]:
    """Run ``units`` in turn on x with the workspace ``ws``; returns the last output and for
    each unit whether it ran with ``keep_input=False``.

    Where a library block's output is read by a depthwise convolution that can apply its last
    batch norm and activation as it reads (:func:`_deferrals`), that output is never written:
    the block returns its batch norm's input and coefficients (``forward_deferred``) and the
    next block takes them (``input_affine``). ``recompute``: between two other library blocks
    the output of the first is let go as soon as the second has read it (the second keeps no
    reference: ``keep_input=False``), and computed again from the first's batch-norm cache for
    the second's backward. Without it, or where a module of another kind reads it, a block's
    output is kept until its own backward."""
    drops, prev, affine = [], None, None  # prev: the unit whose output x is, if it can
    # compute it again; affine: the ChannelAffine of x when the last unit deferred its output
    for (label, module), defer in zip(units, _deferrals(units, x.shape, x.dtype)):
        drop = prev is not None and _reads_input_once(module)
        kw = {"keep_input": not drop} if affine is None else {"input_affine": affine}
        if defer:
            x, affine = module.forward_deferred(x, workspace=ws, **kw)
        elif drop or affine is not None:
            x, affine = module.forward(x, workspace=ws, **kw), None
        else:
            x = run_forward(module, x, ws)
        if drop:
            prev.release_output()
        drops.append(drop)
        prev = module if recompute and not defer and _recomputes(module) else None
        if file is not None:
            print(f"after {label:<24}: {x.shape}", file=file)
    return x, drops


def _deferrals(units, in_shape, dtype) -> list[bool]:
    """For each of ``units``, whether it hands its output to the next one unwritten: a library
    block that can compute it again (:func:`_recomputes`, its last batch norm and activation
    fused) followed by a ``DepthwiseSeparableConv`` whose depthwise conv is a library
    ``Conv2d`` with a kernel that applies them as it reads (``ops.conv.reads_input_affine``),
    each exactly of its class (``nn.module.is_exactly``).
    The walk of ``output_shape`` stops at a module without shape arithmetic (False after it)."""
    out, shape = [], tuple(in_shape)
    for (_, module), (_, reader) in zip(units, units[1:]):
        try:
            shape = module.output_shape(shape)
        except (NotImplementedError, TypeError, ValueError):  # the forward will tell
            break
        out.append(_recomputes(module) and _takes_affine(reader, shape, dtype))
    return out + [False] * (len(units) - len(out))


def _takes_affine(module, shape, dtype) -> bool:
    """Whether ``module`` is a library block whose depthwise conv applies an ``input_affine``
    of an input of ``shape`` as it reads it."""
    if not (is_exactly(module, DepthwiseSeparableConv) and is_exactly(module.dwconv, Conv2d)):
        return False
    c = module.dwconv
    return reads_input_affine(shape, c.weight.shape, c.stride, c.padding, c.dilation, c.groups,
                              c.method, dtype)  # fmt: skip


def _kernel_plan(units, in_shape, dtype, training: bool) -> list:
    """``(kernel, argument types)`` of the depthwise kernels the library blocks in ``units``
    run on ``in_shape`` (with a one-channel input, the first convolution's too), in the order a
    forward and, when ``training``, its backward (the blocks in reverse) first call them
    (``ops.conv.conv2d_kernels``). The walk stops at a module without shape arithmetic (or one
    that refuses the shape)."""
    forward, backward, shape = [], [], tuple(in_shape)
    affine = [False] + _deferrals(units, in_shape, dtype)  # whether unit i reads an affine
    for i, (_, module) in enumerate(units):
        conv = (module.dwconv if is_exactly(module, DepthwiseSeparableConv) else
                module.conv if is_exactly(module, ConvBlock) else None)  # fmt: skip
        if is_exactly(conv, Conv2d):
            f, b = conv2d_kernels(shape, conv.weight.shape, conv.stride, conv.padding,
                                  conv.dilation, conv.groups, conv.method, dtype,
                                  affine[i])  # fmt: skip
            forward += f
            backward[:0] = b
        try:
            shape = module.output_shape(shape)
        except (NotImplementedError, TypeError, ValueError):  # the forward will tell
            break
    return forward + backward if training else forward


def _reads_input_once(module) -> bool:
    """Whether ``module`` is a library block that can run with ``keep_input=False``."""
    if is_exactly(module, DepthwiseSeparableConv):
        return is_exactly(module.dwconv, Conv2d)
    return is_exactly(module, ConvBlock) and is_exactly(module.conv, Conv2d)


def _recomputes(module) -> bool:
    """Whether ``module`` is a library block that can compute its last output again."""
    return is_exactly(module, DepthwiseSeparableConv, ConvBlock) and module.recomputes_output


def _unit_backward(module, dout, consume: bool, input_grad: bool, x):
    """``run_backward``, or for a block that ran with ``keep_input=False`` its backward with
    its input ``x`` again (``input_grad`` as in ``run_backward``)."""
    if x is None:
        return run_backward(module, dout, consume, input_grad)
    kw = {"input_grad": False} if not input_grad and is_exactly(module, ConvBlock) else {}
    dx = module.backward(dout, consume=consume, x=x, **kw)
    return dx if input_grad else None


def _first_trainable(modules) -> int:
    """Index of the first module holding a parameter that requires a gradient (len if none):
    the backward need not go further when the input's gradient is not wanted."""
    for i, m in enumerate(modules):
        if any(p.requires_grad for p in m.parameters()):
            return i
    return len(modules)
