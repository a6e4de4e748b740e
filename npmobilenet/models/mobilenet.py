"""MobileNetV1 (Howard et al. 2017), built like the paper's Table 1 and the seed article's code.

Architecture (alpha = width multiplier; channel counts are ``int(c * alpha)`` as in the seed)::

    first_conv            3x3 conv, stride 2, in_channels -> 32     + BN + activation
    depthwise_sep_conv0   dw 3x3 s1 + BN + act, pw 1x1 32 -> 64     + BN + act
    depthwise_sep_conv1   ... s2, 64 -> 128      (the table below drives the construction)
    ...
    depthwise_sep_conv6   five blocks 512 -> 512 (a ModuleList: keys depthwise_sep_conv6.0 ...)
    ...
    avgpool               global average pooling           (N, C, OH, OW) -> (N, C, 1, 1)
    flatten                                                 -> (N, C)
    dropout               (p=0 by default)
    fc                    linear                            -> (N, num_classes)

``conv="full"`` gives the paper's Table 4 baseline: each depthwise-separable block becomes one
full 3x3 convolution + BN + activation (module names ``full_conv0`` ... ``full_conv8``).

The state_dict keys are exactly the seed article's PyTorch module names, so weights move to and
from PyTorch with no renaming (``first_conv.conv.weight``, ``depthwise_sep_conv6.0.dwconv.weight``,
``fc.bias`` ...).

Resolution: the resolution multiplier is simply the input size. With the default padding
("torch": 1 on every side of every 3x3 convolution) or "tf_same", a stride-2 stage maps H to
ceil(H / 2) and any H, W >= 1 survives the five stride-2 stages (the final map is
ceil(H/32) x ceil(W/32)); with "keras" the stride-2 blocks map H to floor(H / 2), so H and W
must be at least 31. In training mode batch norm needs more than one value per channel, so
there N * OH * OW of the final map must exceed 1.
"""

from __future__ import annotations

import math
import sys

import numpy as np

from npmobilenet import _checks as chk
from npmobilenet import ops, parallel
from npmobilenet.nn import (
    AdaptiveAvgPool2d,
    BatchNorm2d,
    Conv2d,
    Dropout,
    Flatten,
    Linear,
    Module,
    ModuleList,
    ReLU,
    ReLU6,
    buffers,
)
from npmobilenet.nn.layers import float_dtype

FIRST_CONV_CHANNELS = 32  # Table 1, row 1: "Conv / s2, 3x3x3x32"

# Table 1 after the first convolution: one row per stage, with the seed article's module names.
# (name, in_channels, out_channels, stride, repeats); a stage with repeats > 1 is a ModuleList.
TABLE_1 = (
    ("depthwise_sep_conv0", 32, 64, 1, 1),
    ("depthwise_sep_conv1", 64, 128, 2, 1),
    ("depthwise_sep_conv2", 128, 128, 1, 1),
    ("depthwise_sep_conv3", 128, 256, 2, 1),
    ("depthwise_sep_conv4", 256, 256, 1, 1),
    ("depthwise_sep_conv5", 256, 512, 2, 1),
    ("depthwise_sep_conv6", 512, 512, 1, 5),
    ("depthwise_sep_conv7", 512, 1024, 2, 1),
    ("depthwise_sep_conv8", 1024, 1024, 1, 1),
)
ACTIVATIONS = {"relu": ReLU, "relu6": ReLU6}
CONV_KINDS = ("separable", "full")
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


def output_size(size: int, convention: str) -> int:
    """One side of the final feature map for an input side ``size`` (0: too small)."""
    size = -(-size // 2)  # the stem: ceil(H / 2) under every convention
    for *_, stride, _ in TABLE_1:
        if stride == 2:
            size = size // 2 if convention == "keras" else -(-size // 2)
    return size


def _checked_config(
    alpha, num_classes, in_channels, dropout, activation, dtype, seed, conv, padding, bn_eps
):
    """Validate MobileNetV1's arguments (section 7 of the issue); return them as a dict."""
    op = "MobileNetV1"
    alpha = chk.number(op, "alpha", alpha, low=0.0, low_open=True)
    if int(FIRST_CONV_CHANNELS * alpha) < 1:  # the narrowest layer; int(c * alpha) grows with c
        raise ValueError(
            f"{op}: alpha={alpha} leaves first_conv with int(32 * alpha) = 0 channels;"
            " alpha must be at least 1/32 = 0.03125"
        )
    return dict(
        alpha=alpha,
        num_classes=chk.integer(op, "num_classes", num_classes, 1),
        in_channels=chk.integer(op, "in_channels", in_channels, 1),
        dropout=chk.number(op, "dropout", dropout, 0.0, 1.0, high_open=True),
        activation=chk.choice(op, "activation", activation, ACTIVATIONS),
        dtype=float_dtype(op, dtype).name,
        seed=None if seed is None else chk.integer(op, "seed", seed, 0),
        conv=chk.choice(op, "conv", conv, CONV_KINDS),
        padding=chk.choice(op, "padding", padding, PADDINGS),
        bn_eps=chk.number(op, "bn_eps", bn_eps, low=0.0, low_open=True),
    )


class ConvBlock(Module):
    """3x3 convolution (no bias) + BatchNorm + activation: the seed's ``FirstConv``, and each
    block of the full-convolution baseline. ``(N, C, H, W) -> (N, K, OH, OW)``."""

    def __init__(
        self, in_ch: int, out_ch: int, stride: int, activation: str, dtype, padding=1, eps=1e-5
    ) -> None:
        super().__init__()
        self.conv = Conv2d(
            in_ch, out_ch, 3, stride=stride, padding=padding, bias=False, dtype=dtype
        )
        self.bn = BatchNorm2d(out_ch, eps=eps, dtype=dtype)
        self.relu = ACTIVATIONS[activation]()

    def forward(self, x: np.ndarray) -> np.ndarray:
        # relu(bn(conv(x))), with BN and the activation fused into one op (same numbers)
        return self.bn.forward_act(self.conv.forward(x), self.relu.name)

    def backward(self, dout: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        """The forward's calls, differentiated in reverse (bn's backward covers the activation).

        ``input_grad=False`` skips the input's gradient and returns None."""
        return self.conv.backward(self.bn.backward(dout), input_grad=input_grad)


class DepthwiseSeparableConv(Module):
    """3x3 depthwise conv + BN + act, then 1x1 pointwise conv + BN + act (the seed's block).

    ``(N, C, H, W) -> (N, C, OH, OW) -> (N, K, OH, OW)``; the stride sits on the depthwise conv.
    Each activation is its own module (the seed shares one ReLU), which the forward applies
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

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = self.bn0.forward_act(self.dwconv.forward(x), self.relu0.name)  # depthwise
        return self.bn1.forward_act(self.pwconv.forward(x), self.relu1.name)  # pointwise

    def backward(self, dout: np.ndarray) -> np.ndarray:
        """The forward's two lines, differentiated in reverse (pointwise first)."""
        dout = self.pwconv.backward(self.bn1.backward(dout))
        return self.dwconv.backward(self.bn0.backward(dout))


class MobileNetV1(Module):
    """MobileNetV1 with width multiplier ``alpha``; the input size is the resolution multiplier.

    Args:
        alpha: width multiplier (> 0); every channel count c becomes ``int(c * alpha)``, so
            alpha must be at least 1/32 (the first convolution keeps >= 1 channel).
        num_classes: outputs of the classifier (>= 1).
        in_channels: channels of the input images (3 for RGB, 1 for grayscale).
        dropout: dropout probability before ``fc`` (0 = none, as in the seed).
        activation: ``"relu"`` (paper, seed) or ``"relu6"`` (TF/Keras flavour).
        dtype: float32 or float64 for every parameter; inputs must match.
        seed: seeds the initialisation and the dropout masks (None: fresh entropy).
        conv: ``"separable"`` (MobileNet) or ``"full"`` (the paper's Table 4 baseline).
        padding: ``"torch"`` (1 on every side; PyTorch, timm), ``"tf_same"`` (TensorFlow's
            "SAME"; TF-Slim, Hugging Face) or ``"keras"`` (keras.applications.MobileNet); see
            :func:`conv_padding`.
        bn_eps: batch norm's epsilon (1e-5 in PyTorch, 1e-3 in TensorFlow and Keras).

    ``forward(x)``: ``(N, in_channels, H, W) -> (N, num_classes)`` logits.
    ``backward(dlogits)``: ``(N, num_classes) -> (N, in_channels, H, W)``, filling every
    ``.grad`` (accumulating, until ``zero_grad()``).
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
        padding: str = "torch",
        bn_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.config = _checked_config(
            alpha,
            num_classes,
            in_channels,
            dropout,
            activation,
            dtype,
            seed,
            conv,
            padding,
            bn_eps,
        )
        self.labels = None  # class names, when known (a converted pretrained model)
        self.dtype = np.dtype(self.config["dtype"])
        init_seed, dropout_seed = np.random.SeedSequence(self.config["seed"]).spawn(2)
        stages = self._build_features()
        self.avgpool = AdaptiveAvgPool2d(1)
        self.flatten = Flatten(1)
        self.dropout = Dropout(dropout, rng=np.random.default_rng(dropout_seed))
        self.fc = Linear(int(1024 * alpha), num_classes, dtype=self.dtype)
        stages += [(n, getattr(self, n)) for n in ("avgpool", "flatten", "dropout", "fc")]
        self._stages = tuple(stages)  # forward order, with the seed's trace labels
        self._out_meta = None
        # activations and gradients reused from step to step (npmobilenet.nn.buffers)
        object.__setattr__(self, "_buffers_pool", buffers.BufferPool())
        self.reset_parameters(init_seed)

    def _build_features(self) -> list:
        """first_conv and one module per Table 1 row; returns the (trace label, module) list."""
        alpha, act, dtype = self.config["alpha"], self.config["activation"], self.dtype
        full = self.config["conv"] == "full"
        pad, eps = self.config["padding"], self.config["bn_eps"]
        self.first_conv = ConvBlock(
            self.config["in_channels"], int(32 * alpha), 2, act, dtype,
            conv_padding(pad, "stem", 2), eps,
        )  # fmt: skip
        stages = [("first_conv", self.first_conv)]
        for name, c_in, c_out, stride, repeats in TABLE_1:
            name = name.replace("depthwise_sep_conv", "full_conv") if full else name
            block = ConvBlock if full else DepthwiseSeparableConv
            blocks = [
                block(int((c_in if i == 0 else c_out) * alpha), int(c_out * alpha),
                      stride if i == 0 else 1, act, dtype,
                      conv_padding(pad, "block", stride if i == 0 else 1), eps)
                for i in range(repeats)
            ]  # fmt: skip
            if repeats == 1:
                setattr(self, name, blocks[0])
                stages.append((name, blocks[0]))
            else:  # a ModuleList, as in the seed: keys depthwise_sep_conv6.0.dwconv.weight ...
                setattr(self, name, ModuleList(blocks))
                stages += [(f"{name} #{i}", b) for i, b in enumerate(blocks)]
        return stages

    def reset_parameters(self, seed=None) -> None:
        """The issue's initialisation, reproducible from ``seed`` (int, SeedSequence or None).

        Convolutions: Kaiming normal, fan_out mode, N(0, 2 / (K * kH * kW)) (torchvision's
        choice for MobileNets); batch norm: weight 1, bias 0, fresh running statistics;
        fc: weight N(0, 0.01^2), bias 0. Drawn in float64 then cast, so float32 and float64
        models from one seed hold the same weights up to rounding.
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
                m.weight.data[...] = rng.normal(0.0, 0.01, m.weight.shape)
                m.bias.data.fill(0)

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
        fh, fw = (output_size(s, self.config["padding"]) for s in (h, w))
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

    # ----------------------------------------------------------------- forward / backward
    def forward(self, x: np.ndarray) -> np.ndarray:
        """``(N, in_channels, H, W) -> (N, num_classes)`` logits (no softmax)."""
        return self._run(x, "MobileNetV1.forward", None)

    def _run(self, x: np.ndarray, op: str, file) -> np.ndarray:
        self._check_input(op, x)
        self._buffers_pool.new_step()
        with buffers.active(self._buffers_pool), parallel.splitting():
            return self._run_stages(x, file)

    def _run_stages(self, x: np.ndarray, file) -> np.ndarray:
        if file is not None:
            print(f"{'input':<30}: {x.shape}", file=file)
        for label, stage in self._stages:
            x = stage.forward(x)
            if file is not None:
                print(f"after {label:<24}: {x.shape}", file=file)
        self._out_meta = (x.shape, x.dtype)
        return x

    def backward(self, dlogits: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        """``(N, num_classes) -> (N, in_channels, H, W)``: every stage's backward in reverse.

        Adds each parameter's gradient into its ``.grad`` and returns dx, the gradient with
        respect to the input images. Training needs only the parameter gradients:
        ``input_grad=False`` skips dx (the first conv's input gradient, ~5% of a 224x224
        step) and returns None, as PyTorch does for an input that does not require grad.
        """
        op = "MobileNetV1.backward"
        input_grad = chk.flag(op, "input_grad", input_grad)
        if self._out_meta is None:
            raise RuntimeError(f"{op}: backward called before forward (no cached activations)")
        dout = chk.dout_like(op, dlogits, *self._out_meta)
        self._out_meta = None
        first, *rest = self._stages
        with buffers.active(self._buffers_pool), parallel.splitting():
            for _, stage in reversed(rest):
                dout = stage.backward(dout)
            return first[1].backward(dout, input_grad=input_grad)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Softmax of the logits: ``(N, in_channels, H, W) -> (N, num_classes)``.

        Runs in the current mode: call ``eval()`` first for inference.
        """
        return ops.softmax(self.forward(x), axis=1)

    def trace(self, x: np.ndarray, file=None) -> np.ndarray:
        """Run ``forward(x)``, printing each stage's output shape (the seed's Codeblock 9).

        It is a real forward pass (in training mode it updates batch norm statistics); returns
        the logits. ``file`` defaults to stdout.
        """
        return self._run(x, "MobileNetV1.trace", sys.stdout if file is None else file)

    def summary(self, input_size=(3, 224, 224), batch_size: int = 1):
        """Parameter and mult-add counts per layer, in total and by layer type (no ops run).

        ``input_size`` is ``(C, H, W)``; returns a :class:`npmobilenet.models.summary.ModelSummary`
        that prints as a torchinfo-style table.
        """
        from npmobilenet.models.summary import summarize

        return summarize(self, input_size, batch_size)

    def output_shape(self, in_shape: tuple) -> tuple:
        """Shape arithmetic only: ``(N, C, H, W) -> (N, num_classes)``."""
        for _, stage in self._stages:
            in_shape = stage.output_shape(in_shape)
        return in_shape

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.config.items())
