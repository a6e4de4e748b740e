"""Layers: thin shells over :mod:`npmobilenet.ops`, one class per op.

Each ``forward`` validates nothing itself (the op does, naming the op), calls the op, keeps the
cache and returns the output; each ``backward`` calls the op's backward on that cache, adds the
parameter gradients into ``Parameter.grad`` and returns ``dx``. The cache is dropped after the
backward (as PyTorch frees saved tensors), so one backward follows one forward.

Each layer also has ``output_shape(in_shape)``: shape arithmetic without running anything, used
by the model summary and by the model's input checks.

Shape legend: N batch, C in channels, K out channels, G groups, H, W in size, OH, OW out size.
"""

from __future__ import annotations

import math

import numpy as np

from npmobilenet import _checks as chk
from npmobilenet import ops
from npmobilenet.nn import buffers
from npmobilenet.nn.module import Module
from npmobilenet.nn.parameter import Parameter
from npmobilenet.ops import batchnorm as bn_ops
from npmobilenet.ops import conv as conv_ops


def as_generator(rng) -> np.random.Generator:
    """Turn ``None`` (fresh entropy), an int seed or a Generator into a Generator."""
    if rng is None or isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(rng)
    if isinstance(rng, np.random.Generator):
        return rng
    raise TypeError(f"rng must be None, an int seed or a numpy Generator, got {chk.describe(rng)}")


def float_dtype(op: str, dtype) -> np.dtype:
    """Check that ``dtype`` is float32 or float64 and return it as a ``np.dtype``."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt not in chk.FLOAT_DTYPES:
        raise TypeError(f"{op}: dtype must be float32 or float64, got {dtype!r}")
    return dt


def _accumulate(p: Parameter | None, g: np.ndarray | None) -> None:
    if p is not None and p.requires_grad:
        p.accumulate(g)


def _uniform_init(rng, shape, fan_in: int, dtype) -> np.ndarray:
    """PyTorch's default layer init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), drawn in float64."""
    bound = 1.0 / math.sqrt(fan_in)
    return rng.uniform(-bound, bound, size=shape).astype(dtype)


def _pool_size(size: int, k: int, s: int, p: int, d: int = 1, ceil_mode: bool = False) -> int:
    """Output length of a conv/pool along one axis: floor((size + 2p - d(k-1) - 1) / s) + 1."""
    span = size + 2 * p - d * (k - 1) - 1
    out = (-(-span // s) if ceil_mode else span // s) + 1
    if ceil_mode and (out - 1) * s >= size + p:  # PyTorch: the last window must start inside
        out -= 1
    return out


class Conv2d(Module):
    """2-D convolution. weight ``(K, C/G, kH, kW)``, bias ``(K,)`` or None.

    ``(N, C, H, W) -> (N, K, OH, OW)``. ``groups=C`` with ``K=C`` is a depthwise convolution.
    ``method`` is passed to :func:`npmobilenet.ops.conv2d_forward` (``"auto"``, ``"direct"``,
    ``"im2col"``). Default init is PyTorch's: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 1,
        bias: bool = True,
        dtype=np.float32,
        rng=None,
        method: str = "auto",
    ) -> None:
        super().__init__()
        op = "Conv2d"
        self.in_channels = chk.integer(op, "in_channels", in_channels, 1)
        self.out_channels = chk.integer(op, "out_channels", out_channels, 1)
        self.groups = chk.integer(op, "groups", groups, 1)
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"{op}: groups={groups} must divide in_channels={in_channels} "
                f"and out_channels={out_channels}"
            )
        self.kernel_size = chk.pair(op, "kernel_size", kernel_size, 1)
        self.stride = chk.pair(op, "stride", stride, 1)
        self.dilation = chk.pair(op, "dilation", dilation, 1)
        if isinstance(padding, str):
            self.padding = chk.choice(op, "padding", padding, conv_ops.PADDING_MODES)
        elif isinstance(padding, (tuple, list)) and len(padding) == 4:  # (top, bottom, left, right)
            self.padding = tuple(chk.integer(op, "padding", p, 0) for p in padding)
        else:
            self.padding = chk.pair(op, "padding", padding, 0)
        self.method = method
        dtype = float_dtype(op, dtype)
        rng = as_generator(rng)
        kh, kw = self.kernel_size
        fan_in = in_channels // groups * kh * kw
        self.weight = Parameter(
            _uniform_init(rng, (out_channels, in_channels // groups, kh, kw), fan_in, dtype)
        )
        self.bias = Parameter(_uniform_init(rng, (out_channels,), fan_in, dtype)) if bias else None
        self._plan_key = self._plan = None  # see forward

    def forward(self, x: np.ndarray) -> np.ndarray:
        w, b = self.weight.data, None if self.bias is None else self.bias.data
        # Checked and planned on the first call with each input signature (``conv2d_plan``,
        # what ``ops.conv2d_forward`` runs every call); later calls only run the plan.
        key = (type(x), getattr(x, "shape", None), getattr(x, "dtype", None), id(w), w.shape,
               w.dtype, None if b is None else (id(b), b.shape, b.dtype),
               self.stride, self.padding, self.dilation, self.groups, self.method)  # fmt: skip
        if key != self._plan_key:
            self._plan = conv_ops.conv2d_plan(
                x, w, b, self.stride, self.padding, self.dilation, self.groups, self.method
            )
            self._plan_key = key
        buf = (
            None
            if self._plan.unbatched
            else buffers.scratch(self, "_out", self._plan.out_shape, w.dtype)
        )
        out, self._cache = conv_ops.conv2d_run(x, w, b, self._plan, out=buf)
        return out

    def backward(self, dout: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        """Differentiates ``ops.conv2d_forward`` in forward: returns dx, accumulates dW, db.

        ``input_grad=False``: dx is not computed and None is returned (a first layer's input
        is data; its gradient is not needed).
        """
        input_grad = chk.flag("Conv2d.backward", "input_grad", input_grad)
        cache = self._take_cache("Conv2d.backward")
        dout = chk.dout_like("conv2d_backward", dout, cache.out_shape, cache.x.dtype)
        dx_buf = None
        if input_grad and not cache.unbatched:
            dx_buf = buffers.from_pool(cache.x.shape, cache.x.dtype)
        dx, dw, db = conv_ops.conv2d_backward_run(dout, cache, dx_buf, input_grad)
        if dx_buf is not None:
            dx = dx_buf  # the array itself, not a reshaped view of it (see buffers.overwritable)
        self._cache = None
        _accumulate(self.weight, dw)
        _accumulate(self.bias, db)
        return dx

    def output_shape(self, in_shape: tuple) -> tuple:
        n, _, h, w = in_shape
        pad = conv_ops.resolve_padding(
            "Conv2d", self.padding, self.kernel_size, self.dilation, self.stride, (h, w)
        )
        sizes = [
            _pool_size(size + p0 + p1, k, s, 0, d)
            for size, k, s, p0, p1, d in zip(
                (h, w), self.kernel_size, self.stride, pad[::2], pad[1::2], self.dilation
            )
        ]
        return (n, self.out_channels, *sizes)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, groups={self.groups}, "
            f"bias={self.bias is not None}"
        )


class BatchNorm2d(Module):
    """Batch normalisation over (N, H, W) per channel: ``(N, C, H, W) -> (N, C, H, W)``.

    Parameters weight ``(C,)`` (init 1) and bias ``(C,)`` (init 0); buffers ``running_mean``
    ``(C,)``, ``running_var`` ``(C,)`` (updated in place by the op in training mode) and
    ``num_batches_tracked`` (0-d int64, +1 per training forward, as in PyTorch).
    ``momentum=None`` gives PyTorch's cumulative average (momentum 1/num_batches_tracked).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum=0.1, dtype=np.float32):
        super().__init__()
        op = "BatchNorm2d"
        self.num_features = chk.integer(op, "num_features", num_features, 1)
        self.eps = chk.number(op, "eps", eps, low=0.0, low_open=True)
        self.momentum = None if momentum is None else chk.number(op, "momentum", momentum, 0, 1)
        dtype = float_dtype(op, dtype)
        self.weight = Parameter(np.ones(num_features, dtype))
        self.bias = Parameter(np.zeros(num_features, dtype))
        self.register_buffer("running_mean", np.zeros(num_features, dtype))
        self.register_buffer("running_var", np.ones(num_features, dtype))
        self.register_buffer("num_batches_tracked", np.zeros((), np.int64))
        object.__setattr__(self, "_checked_key", None)  # see _forward

    def forward(self, x: np.ndarray) -> np.ndarray:
        return self._forward(x, None)

    def forward_act(self, x: np.ndarray, activation: str) -> np.ndarray:
        """``relu(self.forward(x))`` (``activation="relu"`` or ``"relu6"``) in one fused op.

        The same numbers as this layer then a ReLU / ReLU6 layer, one pass less each way
        (``ops.batch_norm_act_forward``); ``backward`` then differentiates both.
        """
        return self._forward(x, activation)

    def _forward(self, x: np.ndarray, act) -> np.ndarray:
        momentum = self.momentum
        if momentum is None:  # cumulative average; unused in eval mode
            momentum = 1.0 / float(self.num_batches_tracked + 1) if self.training else 0.0
        args = (self.weight.data, self.bias.data, self.running_mean, self.running_var)
        # The op validates the first call with each input signature; later calls with the same
        # one go straight to the computation (the arrays are this layer's own).
        key = (type(x), getattr(x, "shape", None), getattr(x, "dtype", None), self.training, act,
               momentum, self.eps, *(id(a) for a in args))  # fmt: skip
        if key == self._checked_key:
            buf = buffers.scratch(self, "_out", x.shape, x.dtype)
            out, self._cache = bn_ops._forward(
                x, *args, self.training, momentum, self.eps, act, out=buf
            )
        elif act is None:
            out, self._cache = ops.batch_norm_forward(x, *args, self.training, momentum, self.eps)
        else:
            out, self._cache = bn_ops.batch_norm_act_forward(
                x, *args, self.training, momentum, self.eps, activation=act
            )
        object.__setattr__(self, "_checked_key", key)
        if self.training:
            self.num_batches_tracked += 1  # in place: a 0-d array, shared with state_dict()
        return out

    def backward(self, dout: np.ndarray) -> np.ndarray:
        """Differentiates ``ops.batch_norm_forward`` in forward (batch or running statistics,
        as in that forward), or ``ops.batch_norm_act_forward`` after ``forward_act``: returns
        dx, accumulates dweight, dbias."""
        cache = self._take_cache("BatchNorm2d.backward")
        op = "batch_norm_backward" if cache.act is None else "batch_norm_act_backward"
        dout = chk.dout_like(op, dout, cache.shape, cache.x3.dtype)
        # dx is elementwise in dout: written over it when it is the model's own intermediate
        buf = dout if buffers.overwritable(dout) else buffers.from_pool(cache.shape, cache.x3.dtype)
        dx, dw, db = bn_ops._backward(dout, cache, buf)
        self._cache = None
        _accumulate(self.weight, dw)
        _accumulate(self.bias, db)
        return dx

    def output_shape(self, in_shape: tuple) -> tuple:
        return tuple(in_shape)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"


class _Elementwise(Module):
    """A parameter-free layer whose output has the input's shape."""

    def output_shape(self, in_shape: tuple) -> tuple:
        return tuple(in_shape)


class ReLU(_Elementwise):
    """``max(x, 0)``, any shape."""

    name = "relu"  # for BatchNorm2d.forward_act

    def forward(self, x: np.ndarray) -> np.ndarray:
        out, self._cache = ops.relu_forward(x)
        return out

    def backward(self, dout: np.ndarray) -> np.ndarray:
        """Differentiates ``ops.relu_forward``: dout where the input was positive, else 0."""
        dx = ops.relu_backward(dout, self._take_cache("ReLU.backward"))
        self._cache = None
        return dx


class ReLU6(_Elementwise):
    """``min(max(x, 0), 6)``, any shape (the TF/Keras MobileNet activation)."""

    name = "relu6"  # for BatchNorm2d.forward_act

    def forward(self, x: np.ndarray) -> np.ndarray:
        out, self._cache = ops.relu6_forward(x)
        return out

    def backward(self, dout: np.ndarray) -> np.ndarray:
        """Differentiates ``ops.relu6_forward``: dout where 0 < input < 6, else 0."""
        dx = ops.relu6_backward(dout, self._take_cache("ReLU6.backward"))
        self._cache = None
        return dx


class Dropout(_Elementwise):
    """Inverted dropout: in training zero each element with probability ``p`` and scale the
    rest by ``1/(1-p)``; identity in eval mode. Masks come from ``rng`` (seed or Generator)."""

    def __init__(self, p: float = 0.5, rng=None) -> None:
        super().__init__()
        self.p = chk.number("Dropout", "p", p, 0.0, 1.0)
        self.rng = as_generator(rng)

    def forward(self, x: np.ndarray) -> np.ndarray:
        out, self._cache = ops.dropout_forward(x, self.p, self.training, self.rng)
        return out

    def backward(self, dout: np.ndarray) -> np.ndarray:
        """Differentiates ``ops.dropout_forward`` with the same mask and scale."""
        dx = ops.dropout_backward(dout, self._take_cache("Dropout.backward"))
        self._cache = None
        return dx

    def extra_repr(self) -> str:
        return f"p={self.p}"


class MaxPool2d(Module):
    """Max pooling ``(N, C, H, W) -> (N, C, OH, OW)``; ``stride`` defaults to ``kernel_size``."""

    def __init__(self, kernel_size, stride=None, padding=0) -> None:
        super().__init__()
        self.kernel_size = chk.pair("MaxPool2d", "kernel_size", kernel_size, 1)
        self.stride = (
            self.kernel_size if stride is None else chk.pair("MaxPool2d", "stride", stride, 1)
        )
        self.padding = chk.pair("MaxPool2d", "padding", padding, 0)

    def forward(self, x: np.ndarray) -> np.ndarray:
        out, self._cache = ops.max_pool2d_forward(x, self.kernel_size, self.stride, self.padding)
        return out

    def backward(self, dout: np.ndarray) -> np.ndarray:
        """Differentiates ``ops.max_pool2d_forward``: dout routed to each window's argmax."""
        dx = ops.max_pool2d_backward(dout, self._take_cache("MaxPool2d.backward"))
        self._cache = None
        return dx

    def output_shape(self, in_shape: tuple) -> tuple:
        n, c, h, w = in_shape
        ks, ss, ps = self.kernel_size, self.stride, self.padding
        return (n, c, *(_pool_size(sz, k, s, p) for sz, k, s, p in zip((h, w), ks, ss, ps)))


class AvgPool2d(Module):
    """Average pooling ``(N, C, H, W) -> (N, C, OH, OW)``, PyTorch's ``ceil_mode`` and
    ``count_include_pad`` semantics; ``stride`` defaults to ``kernel_size``."""

    def __init__(
        self, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True
    ) -> None:
        super().__init__()
        self.kernel_size = chk.pair("AvgPool2d", "kernel_size", kernel_size, 1)
        self.stride = (
            self.kernel_size if stride is None else chk.pair("AvgPool2d", "stride", stride, 1)
        )
        self.padding = chk.pair("AvgPool2d", "padding", padding, 0)
        self.ceil_mode = bool(ceil_mode)
        self.count_include_pad = bool(count_include_pad)

    def forward(self, x: np.ndarray) -> np.ndarray:
        out, self._cache = ops.avg_pool2d_forward(
            x, self.kernel_size, self.stride, self.padding, self.ceil_mode, self.count_include_pad
        )
        return out

    def backward(self, dout: np.ndarray) -> np.ndarray:
        """Differentiates ``ops.avg_pool2d_forward``: dout spread evenly over each window."""
        dx = ops.avg_pool2d_backward(dout, self._take_cache("AvgPool2d.backward"))
        self._cache = None
        return dx

    def output_shape(self, in_shape: tuple) -> tuple:
        n, c, h, w = in_shape
        ks, ss, ps = self.kernel_size, self.stride, self.padding
        sizes = (
            _pool_size(sz, k, s, p, 1, self.ceil_mode) for sz, k, s, p in zip((h, w), ks, ss, ps)
        )
        return (n, c, *sizes)


class AdaptiveAvgPool2d(Module):
    """Average pooling to a fixed ``output_size`` ``(OH, OW)``: ``(N, C, H, W) -> (N, C, OH, OW)``.

    ``AdaptiveAvgPool2d(1)`` is global average pooling."""

    def __init__(self, output_size) -> None:
        super().__init__()
        self.output_size = chk.pair("AdaptiveAvgPool2d", "output_size", output_size, 1)

    def forward(self, x: np.ndarray) -> np.ndarray:
        out, self._cache = ops.adaptive_avg_pool2d_forward(x, self.output_size)
        return out

    def backward(self, dout: np.ndarray) -> np.ndarray:
        """Differentiates ``ops.adaptive_avg_pool2d_forward``: dout spread over each bin."""
        dx = ops.adaptive_avg_pool2d_backward(dout, self._take_cache("AdaptiveAvgPool2d.backward"))
        self._cache = None
        return dx

    def output_shape(self, in_shape: tuple) -> tuple:
        return (*in_shape[:2], *self.output_size)


class Linear(Module):
    """``y = x @ weight.T + bias``: ``(..., in) -> (..., out)``; weight ``(out, in)``, bias
    ``(out,)`` or None. Default init is PyTorch's: U(-1/sqrt(in), 1/sqrt(in))."""

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, dtype=np.float32, rng=None
    ) -> None:
        super().__init__()
        self.in_features = chk.integer("Linear", "in_features", in_features, 1)
        self.out_features = chk.integer("Linear", "out_features", out_features, 1)
        dtype = float_dtype("Linear", dtype)
        rng = as_generator(rng)
        self.weight = Parameter(_uniform_init(rng, (out_features, in_features), in_features, dtype))
        self.bias = (
            Parameter(_uniform_init(rng, (out_features,), in_features, dtype)) if bias else None
        )

    def forward(self, x: np.ndarray) -> np.ndarray:
        b = None if self.bias is None else self.bias.data
        out, self._cache = ops.linear_forward(x, self.weight.data, b)
        return out

    def backward(self, dout: np.ndarray) -> np.ndarray:
        """Differentiates ``ops.linear_forward`` in forward: returns dx, accumulates dW, db."""
        dx, dw, db = ops.linear_backward(dout, self._take_cache("Linear.backward"))
        self._cache = None
        _accumulate(self.weight, dw)
        _accumulate(self.bias, db)
        return dx

    def output_shape(self, in_shape: tuple) -> tuple:
        return (*in_shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


class Flatten(Module):
    """Merge dims ``start_dim..end_dim`` into one: ``(N, C, H, W) -> (N, C*H*W)`` by default.

    A reshape: forward returns a view of ``x``; backward reshapes ``dout`` back."""

    def __init__(self, start_dim: int = 1, end_dim: int = -1) -> None:
        super().__init__()
        self.start_dim = chk.integer("Flatten", "start_dim", start_dim)
        self.end_dim = chk.integer("Flatten", "end_dim", end_dim)

    def output_shape(self, in_shape: tuple) -> tuple:
        nd = len(in_shape)
        s, e = self.start_dim % nd, self.end_dim % nd
        if s > e:
            raise ValueError(f"Flatten: start_dim {self.start_dim} is after end_dim {self.end_dim}")
        return (*in_shape[:s], math.prod(in_shape[s : e + 1]), *in_shape[e + 1 :])

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = chk.float_array("Flatten", "x", x)
        self._cache = (x.shape, x.dtype)
        return x.reshape(self.output_shape(x.shape))  # a view when x is contiguous

    def backward(self, dout: np.ndarray) -> np.ndarray:
        in_shape, dtype = self._take_cache("Flatten.backward")
        self._cache = None
        dout = chk.dout_like("Flatten.backward", dout, self.output_shape(in_shape), dtype)
        return dout.reshape(in_shape)  # the chain rule through a reshape is the reverse reshape
