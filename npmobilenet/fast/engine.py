"""``FusedMobileNetV1``: a fast eval-mode inference engine for MobileNetV1.

It computes exactly what the model computes in eval mode (up to float rounding), in fewer and
faster passes:

1. **BN folded** into each conv's weight and a bias once, at construction (``folding.py``).
2. **Channels-last (NHWC) inside**: the stem's im2col reads the public NCHW input and writes
   pixel-major rows; from then on every activation is ``(N, H, W, C)``, so
3. **a 1x1 conv is one GEMM** over all pixels of the batch, ``(N*H*W, C) @ (C, K)``, handed to
   BLAS by ``np.matmul(..., out=buffer)`` (the stem too, after im2col);
4. **bias + activation fused**: the depthwise 3x3 kernel adds the bias and clamps in the same
   pass; every GEMM is followed by one fused bias+clamp pass that writes straight into the next
   depthwise conv's zero-bordered input (so padding is never tested), and the last one also does
   the global average pool (``npmobilenet.kernels.fused_*``);
5. **buffers reused**: three activation buffers per input shape (im2col/depthwise outputs, GEMM
   outputs, zero-bordered depthwise inputs), allocated on the first call with that shape and
   reused afterwards;
6. **a batch split over threads**: several images are cut into slices that npmobilenet's threads
   run through the whole network side by side, each slice with its own buffers and BLAS at one
   thread (``npmobilenet.parallel``): one hand-off per call, and the depthwise kernels and
   epilogues run on every core too (batch 8 at 224: 80 -> 65 ms; batch 32: 320 -> 253 ms).

Numba kernels here are serial. One image runs on BLAS's threads (see ``npmobilenet.threads``).

The network is the seed article's (and ``npmobilenet.MobileNetV1``'s): a 3x3 stride-2 stem conv,
13 depthwise-separable blocks (strides below), global average pool, linear classifier. Dropout is
the identity in eval mode.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from npmobilenet import _checks, parallel
from npmobilenet.fast.folding import fold_batch_norm
from npmobilenet.kernels.fused_conv3x3 import conv_out_size, depthwise3x3_nhwc, im2col3x3_nchw
from npmobilenet.kernels.fused_epilogue import bias_clamp_mean, bias_clamp_pad

OP = "FusedMobileNetV1"

# The 13 depthwise-separable blocks: state_dict prefix and depthwise stride.
BLOCKS = (
    ("depthwise_sep_conv0", 1),
    ("depthwise_sep_conv1", 2),
    ("depthwise_sep_conv2", 1),
    ("depthwise_sep_conv3", 2),
    ("depthwise_sep_conv4", 1),
    ("depthwise_sep_conv5", 2),
    *((f"depthwise_sep_conv6.{i}", 1) for i in range(5)),
    ("depthwise_sep_conv7", 2),
    ("depthwise_sep_conv8", 1),
)
STEM_STRIDE = 2

# Activation -> the clamp (lo, hi) the fused kernels apply.
ACTIVATIONS = {"relu": (0.0, np.inf), "relu6": (0.0, 6.0)}

_BN_FIELDS = ("weight", "bias", "running_mean", "running_var")
_MAX_PLANS = 8  # input shapes whose buffers are kept (least recently used dropped first)


@dataclass(frozen=True)
class _Params:
    """Folded weights in the kernels' layouts, for one dtype.

    stem_w (C*9, K0) (the im2col GEMM's right operand), stem_b (K0,); per block: dw_w (3, 3, C),
    dw_b (C,), pw_w (C, K) (the GEMM's right operand), pw_b (K,); fc_w (classes, K_last),
    fc_b (classes,).
    """

    stem_w: np.ndarray
    stem_b: np.ndarray
    dw_w: tuple
    dw_b: tuple
    pw_w: tuple
    pw_b: tuple
    fc_w: np.ndarray
    fc_b: np.ndarray

    def astype(self, dtype) -> _Params:
        def cast(a):
            return np.ascontiguousarray(a, dtype=dtype)

        return _Params(
            cast(self.stem_w),
            cast(self.stem_b),
            tuple(map(cast, self.dw_w)),
            tuple(map(cast, self.dw_b)),
            tuple(map(cast, self.pw_w)),
            tuple(map(cast, self.pw_b)),
            cast(self.fc_w),
            cast(self.fc_b),
        )


@dataclass(frozen=True)
class _Plan:
    """Preallocated activations for one input shape and dtype (views into three flat buffers).

    cols (N, OH, OW, C*9): the stem's im2col rows.  stem_y (N*OH*OW, K0): the stem GEMM output.
    padded[i] (N, H+2, W+2, C): block i's depthwise input with its zero border.
    dw_out[i] (N, OH, OW, C): block i's depthwise output = pointwise GEMM input.
    pw_out[i] (N*OH*OW, K): block i's pointwise GEMM output.  pooled (N, K_last).
    Buffer sharing: cols and dw_out in one buffer, stem_y and pw_out in another, padded in a
    third; every step reads one buffer and writes another.
    """

    cols: np.ndarray
    stem_y: np.ndarray
    padded: tuple
    dw_out: tuple
    pw_out: tuple
    pooled: np.ndarray


class FusedMobileNetV1:
    """Eval-mode MobileNetV1 inference with BN folded and conv + bias + activation fused.

    Build it with :meth:`from_state_dict` (the seed's / ``npmobilenet.MobileNetV1``'s key names)
    or :meth:`from_model`; call it on an NCHW batch ``x`` of shape (N, C, H, W), float32 or
    float64, to get logits (N, num_classes) in the same dtype. The weights are frozen at
    construction: rebuild the engine after changing the model.

    Calls are serialised by a lock (the activation buffers are shared between calls).
    """

    def __init__(self, params: _Params, activation: str = "relu"):
        _checks.choice(OP, "activation", activation, ACTIVATIONS)
        self.activation = activation
        self._clamp = ACTIVATIONS[activation]
        self._params64 = params.astype(np.float64)
        self._params_by_dtype = {np.dtype(np.float64): self._params64}
        self._plans: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        self.reuse_buffers = True  # False re-allocates every call (used to measure what it buys)

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_state_dict(cls, state, activation="relu", eps=1e-5) -> FusedMobileNetV1:
        """Fold a MobileNetV1 state_dict (arrays keyed as in the seed article) into an engine.

        state: mapping from the seed's key names (``first_conv.conv.weight``, ``first_conv.bn.*``,
        ``depthwise_sep_conv{i}.{dwconv,bn0,pwconv,bn1}.*``, ``fc.weight``, ``fc.bias``) to
        arrays; ``num_batches_tracked`` entries are ignored. ``eps`` is BN's epsilon.
        """
        _checks.choice(OP, "activation", activation, ACTIVATIONS)
        eps = _checks.number(OP, "eps", eps, low=0.0, low_open=True)
        arrays = _read_state(state)

        def conv_bn(conv, bn, shape):
            w = _expect_shape(arrays, f"{conv}.weight", shape)
            k = w.shape[0]
            bn_arrays = [_expect_shape(arrays, f"{bn}.{f}", (k,)) for f in _BN_FIELDS]
            return fold_batch_norm(w, *bn_arrays, eps=eps)

        w, stem_b = conv_bn("first_conv.conv", "first_conv.bn", (None, None, 3, 3))
        stem_w = w.reshape(w.shape[0], -1).T  # (K, C, 3, 3) -> (C*9, K), im2col's column order
        channels = stem_w.shape[1]
        dw_w, dw_b, pw_w, pw_b = [], [], [], []
        for prefix, _stride in BLOCKS:
            w, b = conv_bn(f"{prefix}.dwconv", f"{prefix}.bn0", (channels, 1, 3, 3))
            dw_w.append(w[:, 0].transpose(1, 2, 0))  # (C, 1, 3, 3) -> (3, 3, C)
            dw_b.append(b)
            w, b = conv_bn(f"{prefix}.pwconv", f"{prefix}.bn1", (None, channels, 1, 1))
            pw_w.append(w[:, :, 0, 0].T)  # (K, C, 1, 1) -> (C, K)
            pw_b.append(b)
            channels = w.shape[0]
        fc_w = _expect_shape(arrays, "fc.weight", (None, channels))
        fc_b = _expect_shape(arrays, "fc.bias", (fc_w.shape[0],))
        params = _Params(stem_w, stem_b, tuple(dw_w), tuple(dw_b), tuple(pw_w), tuple(pw_b),
                         fc_w, fc_b)  # fmt: skip
        return cls(params, activation)

    @classmethod
    def from_model(cls, model) -> FusedMobileNetV1:
        """Fold an ``npmobilenet.MobileNetV1`` (its current weights and running statistics).

        Takes the activation from ``model.config`` and BN's epsilon from the model's first
        BatchNorm2d. The engine is a snapshot: rebuild it after training the model further.
        """
        state, config = getattr(model, "state_dict", None), getattr(model, "config", None)
        if not callable(state) or not isinstance(config, Mapping):
            raise TypeError(
                f"{OP}.from_model: model must be an npmobilenet MobileNetV1,"
                f" got {type(model).__name__}"
            )
        if config.get("conv", "separable") != "separable":
            raise ValueError(
                f"{OP}.from_model: only the depthwise-separable MobileNetV1 can be fused,"
                f" got conv={config.get('conv')!r}"
            )
        if config.get("padding", "torch") != "torch":  # the kernels store a 1-pixel border
            raise ValueError(
                f"{OP}.from_model: the fused engine runs padding='torch' models only, got"
                f" padding={config.get('padding')!r}; run the model itself in eval mode"
            )
        eps = float(getattr(getattr(model.first_conv, "bn", None), "eps", 1e-5))
        return cls.from_state_dict(state(), activation=config["activation"], eps=eps)

    # ------------------------------------------------------------------ properties

    @property
    def in_channels(self) -> int:
        return self._params64.stem_w.shape[0] // 9

    @property
    def num_classes(self) -> int:
        return self._params64.fc_w.shape[0]

    @property
    def channels(self) -> tuple[int, ...]:
        """Output channels of the stem and of each block's pointwise conv."""
        return (self._params64.stem_w.shape[1], *(w.shape[1] for w in self._params64.pw_w))

    # ------------------------------------------------------------------ inference

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Logits (N, num_classes) for an NCHW batch x (N, C, H, W), in x's dtype.

        A batch of several images is split into slices that npmobilenet's threads run through
        the whole network side by side, BLAS at one thread each (``npmobilenet.parallel``);
        one image runs on BLAS's threads.
        """
        x = self._check_input(x)
        with self._lock:
            params = self._params(x.dtype)
            # the stem's arrays are a forward's largest: they decide whether to split
            n, _, h, w = x.shape
            oh, ow = conv_out_size(h, STEM_STRIDE), conv_out_size(w, STEM_STRIDE)
            per_image = oh * ow * self.in_channels * 9 + (oh + 2) * (ow + 2) * self.channels[0]
            min_images = -(-parallel.MIN_SLICE_ELEMENTS // per_image)
            if parallel.threads() == 1 or n < 2 * min_images:  # BLAS's threads, one slice
                return self._forward(x, self._plan(x.shape, x.dtype), params)
            with parallel.splitting():
                slices = parallel.slices(n, min_images)
                if len(slices) == 1:  # splitting declined (BLAS could not be limited)
                    return self._forward(x, self._plan(x.shape, x.dtype), params)
                # each slice its own buffers (one plan per slice: a plan's layers share memory)
                plans = {lo: self._plan(x[lo:hi].shape, x.dtype, part=i)
                         for i, (lo, hi) in enumerate(slices)}  # fmt: skip
                parts = parallel.run(
                    lambda lo, hi: self._forward(x[lo:hi], plans[lo], params), n, per_image
                )
            return np.concatenate(parts)

    def profile(self, x: np.ndarray) -> dict[str, float]:
        """Run one forward and return seconds spent per step kind.

        Kinds: ``first conv``, ``depthwise``, ``pointwise GEMM``, ``pointwise bias+act``,
        ``pointwise bias+act+pool`` (the last block), ``linear``.
        """
        x = self._check_input(x)
        times: dict[str, float] = {}
        last = [time.perf_counter()]

        def clock(kind):
            now = time.perf_counter()
            times[kind] = times.get(kind, 0.0) + now - last[0]
            last[0] = now

        with self._lock:
            plan, params = self._plan(x.shape, x.dtype), self._params(x.dtype)
            last[0] = time.perf_counter()
            self._forward(x, plan, params, clock)
        return times

    def _forward(self, x, plan: _Plan, p: _Params, clock=None):
        """x (N, C, H, W) -> logits (N, classes), through the preallocated ``plan``."""
        lo, hi = (x.dtype.type(v) for v in self._clamp)
        im2col3x3_nchw(x, STEM_STRIDE, plan.cols)  # (N, OH, OW, C*9)
        n, oh, ow, c9 = plan.cols.shape
        np.matmul(plan.cols.reshape(n * oh * ow, c9), p.stem_w, out=plan.stem_y)  # the stem conv
        bias_clamp_pad(plan.stem_y.reshape(n, oh, ow, -1), p.stem_b, lo, hi, plan.padded[0])
        if clock:
            clock("first conv")
        last = len(BLOCKS) - 1
        for i, (_prefix, stride) in enumerate(BLOCKS):
            dw = plan.dw_out[i]  # (N, OH, OW, C)
            depthwise3x3_nhwc(plan.padded[i], p.dw_w[i], p.dw_b[i], stride, lo, hi, dw)
            if clock:
                clock("depthwise")
            n, oh, ow, c = dw.shape
            y = plan.pw_out[i]  # (N*OH*OW, K)
            np.matmul(dw.reshape(n * oh * ow, c), p.pw_w[i], out=y)  # the 1x1 conv: one GEMM
            if clock:
                clock("pointwise GEMM")
            if i < last:  # bias + activation, written into the next depthwise input's interior
                bias_clamp_pad(y.reshape(n, oh, ow, -1), p.pw_b[i], lo, hi, plan.padded[i + 1])
                if clock:
                    clock("pointwise bias+act")
            else:  # the last block: bias + activation + global average pool in one pass
                bias_clamp_mean(y.reshape(n, oh * ow, -1), p.pw_b[i], lo, hi, plan.pooled)
                if clock:
                    clock("pointwise bias+act+pool")
        logits = plan.pooled @ p.fc_w.T + p.fc_b  # (N, K_last) @ (K_last, classes): a new array
        if clock:
            clock("linear")
        return logits

    # ------------------------------------------------------------------ helpers

    def _check_input(self, x) -> np.ndarray:
        x = _checks.float_array(OP, "x", x, ndim=4)
        n, c, h, w = x.shape
        if c != self.in_channels:
            raise ValueError(
                f"{OP}: x must have {self.in_channels} channels (NCHW layout, shape (N, C, H, W)),"
                f" got shape {x.shape} with {c} channels"
            )
        if n < 1 or h < 1 or w < 1:
            raise ValueError(f"{OP}: x must have N, H and W >= 1, got shape {x.shape}")
        return np.ascontiguousarray(x)

    def _params(self, dtype) -> _Params:
        dtype = np.dtype(dtype)
        if dtype not in self._params_by_dtype:
            self._params_by_dtype[dtype] = self._params64.astype(dtype)
        return self._params_by_dtype[dtype]

    def _plan(self, shape, dtype, part: int = 0) -> _Plan:
        """The buffers for inputs of ``shape``; ``part``: which slice of a split batch."""
        key = (tuple(shape), np.dtype(dtype), part)
        if not self.reuse_buffers:
            return self._make_plan(*key[:2])
        if key in self._plans:
            self._plans.move_to_end(key)
        else:
            self._plans[key] = self._make_plan(*key[:2])
            if len(self._plans) > _MAX_PLANS:
                self._plans.popitem(last=False)
        return self._plans[key]

    def _make_plan(self, shape, dtype) -> _Plan:
        n, c_in, h, w = shape
        channels = self.channels
        h, w = conv_out_size(h, STEM_STRIDE), conv_out_size(w, STEM_STRIDE)
        cols_shape, stem_y_shape = (n, h, w, c_in * 9), (n * h * w, channels[0])
        padded_shapes, dw_shapes, pw_shapes = [], [], []
        for i, (_prefix, stride) in enumerate(BLOCKS):
            padded_shapes.append((n, h + 2, w + 2, channels[i]))
            h, w = conv_out_size(h, stride), conv_out_size(w, stride)
            dw_shapes.append((n, h, w, channels[i]))
            pw_shapes.append((n * h * w, channels[i + 1]))

        def views(shapes):  # views of one flat buffer big enough for the largest shape
            buf = np.empty(max(int(np.prod(s)) for s in shapes), dtype)
            return [buf[: int(np.prod(s))].reshape(s) for s in shapes]

        cols, *dw_out = views([cols_shape, *dw_shapes])
        stem_y, *pw_out = views([stem_y_shape, *pw_shapes])
        return _Plan(
            cols=cols,
            stem_y=stem_y,
            padded=tuple(views(padded_shapes)),
            dw_out=tuple(dw_out),
            pw_out=tuple(pw_out),
            pooled=np.empty((n, channels[-1]), dtype),
        )


def _read_state(state) -> dict[str, np.ndarray]:
    """Check the state_dict's keys (all required ones, no foreign ones) and return float arrays."""
    if not isinstance(state, Mapping):
        raise TypeError(
            f"{OP}.from_state_dict: state must be a mapping, got {_checks.describe(state)}"
        )
    required = {"fc.weight", "fc.bias", "first_conv.conv.weight"}
    required |= {f"first_conv.bn.{f}" for f in _BN_FIELDS}
    for prefix, _stride in BLOCKS:
        for conv, bn in (("dwconv", "bn0"), ("pwconv", "bn1")):
            required.add(f"{prefix}.{conv}.weight")
            required |= {f"{prefix}.{bn}.{f}" for f in _BN_FIELDS}
    present = {k for k in state if not str(k).endswith("num_batches_tracked")}
    missing, unexpected = sorted(required - present), sorted(present - required)
    if missing or unexpected:
        raise ValueError(
            f"{OP}.from_state_dict: state is not a MobileNetV1 state_dict:"
            f" missing keys {missing}, unexpected keys {unexpected}"
        )
    arrays = {}
    for k in required:
        a = np.asarray(state[k])
        if a.dtype.kind != "f":
            raise TypeError(f"{OP}.from_state_dict: {k} must be a float array, got dtype {a.dtype}")
        arrays[k] = a
    return arrays


def _expect_shape(arrays, key, shape) -> np.ndarray:
    """arrays[key], checked against ``shape`` (None matches any length)."""
    a = arrays[key]
    ok = a.ndim == len(shape) and all(s is None or s == d for s, d in zip(shape, a.shape))
    if not ok or a.size == 0:
        want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
        raise ValueError(f"{OP}.from_state_dict: {key} must have shape {want}, got {a.shape}")
    return a
