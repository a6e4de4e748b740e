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

import functools
import math

import numpy as np

from npmobilenet import _checks as chk
from npmobilenet import ops
from npmobilenet._geometry import output_size
from npmobilenet.nn.module import SPENT, Module
from npmobilenet.nn.parameter import Parameter
from npmobilenet.ops import conv as conv_ops
from npmobilenet.ops.activations import ACTIVATIONS
from npmobilenet.ops.batchnorm import batch_norm_output


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
    if dt is None or dt not in chk.FLOAT_DTYPES:  # (np.dtype compares equal to None)
        raise TypeError(f"{op}: dtype must be float32 or float64, got {chk.short_repr(dtype)}")
    return dt


def _op_backward(layer: Module, op_backward, dout: np.ndarray) -> np.ndarray:
    """``op_backward(dout, cache)`` with the cache ``layer``'s forward kept, which it spends."""
    dx = op_backward(dout, layer._take_cache(f"{type(layer).__name__}.backward"))
    layer._cache = SPENT
    return dx


def _accumulate(p: Parameter | None, g: np.ndarray | None) -> None:
    if p is not None and p.requires_grad:
        p.accumulate(g)


def _workspace_out(workspace, owner, x, output_shape) -> np.ndarray | None:
    """The workspace array for ``owner``'s output given input ``x``, or None (no workspace,
    or an input the op will refuse: it then reports the problem itself)."""
    if workspace is None or not isinstance(x, np.ndarray) or x.ndim != 4 \
            or x.dtype not in chk.FLOAT_DTYPES:  # fmt: skip
        return None
    try:
        shape = output_shape(x.shape)
    except (ValueError, TypeError, ZeroDivisionError):
        return None
    if min(shape) < 0:
        return None
    return workspace.output(owner, shape, x.dtype)


def _writable_like(a, shape, dtype) -> bool:
    """Whether ``a`` can take a result of ``shape`` and ``dtype`` in place."""
    return (isinstance(a, np.ndarray) and a.shape == tuple(shape) and a.dtype == dtype
            and a.flags.c_contiguous and a.flags.writeable)  # fmt: skip


def _given_input(cache, dropped, x):
    """``Conv2d.backward``'s op cache with the forward's input: the cached one, or ``x`` when
    the forward kept none (``dropped`` is then the input's (shape, dtype))."""
    if dropped is None:
        if x is not None:
            raise ValueError("Conv2d.backward: x is only passed for a forward run with"
                             " keep_input=False; this forward kept its input")  # fmt: skip
        return cache
    if x is None:
        raise ValueError("Conv2d.backward: the forward ran with keep_input=False; pass its input"
                         " again as x=")  # fmt: skip
    x4 = x[None] if cache.unbatched and isinstance(x, np.ndarray) else x
    if not isinstance(x4, np.ndarray) or (x4.shape, x4.dtype) != dropped:
        raise ValueError(f"Conv2d.backward: x must be the forward's input, of shape"
                         f" {dropped[0]} and dtype {dropped[1]}, got"
                         f" {chk.describe(x)}")  # fmt: skip
    return cache._replace(x=np.ascontiguousarray(x4))


@functools.lru_cache(maxsize=1024)
def _conv_output_hw(hw, padding, kernel_size, dilation, stride) -> tuple:
    """``(OH, OW)`` of a ``Conv2d`` with these arguments on an input of size ``hw`` (H, W)."""
    pad = conv_ops.resolve_padding("Conv2d", padding, kernel_size, dilation, stride, hw)
    return tuple(
        output_size(size, k, s, p, d)  # p: (before, after) along the axis
        for size, k, s, p, d in zip(hw, kernel_size, stride, (pad[0:2], pad[2:4]), dilation)
    )


def _uniform_init(rng, shape, fan_in: int, dtype, op: str = "layer") -> np.ndarray:
    """PyTorch's default layer init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), drawn in float64."""
    chk.output_fits(op, shape, np.float64, "weight")  # refuse a weight no machine could hold
    bound = 1.0 / math.sqrt(fan_in)
    return rng.uniform(-bound, bound, size=shape).astype(dtype)


class Conv2d(Module):
    """2-D convolution. weight ``(K, C/G, kH, kW)``, bias ``(K,)`` or None.

    ``(N, C, H, W) -> (N, K, OH, OW)``. ``groups=C`` with ``K=C`` is a depthwise convolution.
    ``padding``: an int or (h, w) pair (symmetric), a (top, bottom, left, right) 4-tuple,
    ``"valid"``, ``"same"`` (PyTorch's, stride 1) or ``"tf_same"`` (TensorFlow's "SAME" at any
    stride), as :func:`npmobilenet.ops.conv2d_forward`. ``method`` is passed to that op
    (``"auto"``, ``"direct"``, ``"im2col"``). Default init is PyTorch's:
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
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
            _uniform_init(rng, (out_channels, in_channels // groups, kh, kw), fan_in, dtype, op)
        )
        bias = chk.flag(op, "bias", bias)
        self.bias = Parameter(_uniform_init(rng, (out_channels,), fan_in, dtype)) if bias else None

    def forward(self, x: np.ndarray, *, workspace=None, keep_input: bool = True,
                input_affine=None) -> np.ndarray:  # fmt: skip
        """``ops.conv2d_forward`` with this layer's weights: ``(N, C, H, W) -> (N, K, OH, OW)``.

        ``workspace``: write the output into an array of the caller's
        :class:`npmobilenet.nn.workspace.Workspace` and split the batch with its runner.
        ``keep_input=False``: keep no reference to ``x`` (the backward reads it for the weight
        gradient, so the caller then passes it again as ``backward(..., x=x)``): for a caller
        who frees x's memory in between and can compute x again.
        ``input_affine``: a ``ChannelAffine`` the convolution applies to x as it reads it
        (``ops.conv2d_forward``'s keyword: x is a batch norm's input whose output was not
        written, :meth:`BatchNorm2d.forward_act_coefficients`); the backward's dx is then the
        gradient with respect to that output.
        """
        w, b = self.weight.data, None if self.bias is None else self.bias.data
        out = _workspace_out(workspace, self, x, self.output_shape)
        runner = None if workspace is None else workspace.runner
        out, cache = ops.conv2d_forward(
            x, w, b, self.stride, self.padding, self.dilation, self.groups, self.method,
            out=out, runner=runner, backward_ahead=self.training, input_affine=input_affine,
        )  # fmt: skip
        dropped = None
        if not chk.flag("Conv2d.forward", "keep_input", keep_input):
            dropped, cache = (cache.x.shape, cache.x.dtype), cache._replace(x=None)
        self._cache = (cache, workspace, dropped)
        return out

    def backward(self, dout: np.ndarray, *, consume: bool = False, input_grad: bool = True,
                 x=None):  # fmt: skip
        """Differentiates ``ops.conv2d_forward`` in forward: returns dx, accumulates dW, db.

        ``input_grad=False``: dx is not computed and None is returned (a first layer's input
        is data; its gradient is not needed). A frozen weight or bias (``requires_grad``
        False) gets no gradient work. ``consume=True``: ``dout`` is this backward's (the caller
        reads it no more), so a workspace gradient is given back to the workspace when done
        (dx is never written over dout: both are read to the end). ``x``: the forward's input,
        passed again when the forward ran with ``keep_input=False`` (and only then).
        """
        input_grad = chk.flag("Conv2d.backward", "input_grad", input_grad)
        cache, workspace, dropped = self._take_cache("Conv2d.backward")
        cache = _given_input(cache, dropped, x)
        dx = None
        if workspace is not None and input_grad:
            dx = workspace.gradient(cache.x.shape, cache.x.dtype) if not cache.unbatched else None
        dx, dw, db = ops.conv2d_backward(
            dout, cache, dx=dx, input_grad=input_grad, weight_grad=self.weight.requires_grad,
            runner=None if workspace is None else workspace.runner,
        )  # fmt: skip
        if workspace is not None:
            workspace.release(self)
            if consume:
                workspace.free(dout)
        self._cache = SPENT
        _accumulate(self.weight, dw)
        if self.bias is not None and self.bias.requires_grad:
            self.bias.accumulate(db)
        return dx

    def output_shape(self, in_shape: tuple) -> tuple:
        n, _, h, w = in_shape
        args = ((h, w), self.padding, self.kernel_size, self.dilation, self.stride)
        try:  # the same arithmetic, remembered for hashable arguments (a layer's own)
            sizes = _conv_output_hw(*args)
        except TypeError:
            sizes = _conv_output_hw.__wrapped__(*args)
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
        chk.output_fits(op, (4, num_features), dtype, "parameters and statistics")
        self.weight = Parameter(np.ones(num_features, dtype))
        self.bias = Parameter(np.zeros(num_features, dtype))
        self.register_buffer("running_mean", np.zeros(num_features, dtype))
        self.register_buffer("running_var", np.ones(num_features, dtype))
        self.register_buffer("num_batches_tracked", np.zeros((), np.int64))

    def forward(self, x: np.ndarray, *, workspace=None) -> np.ndarray:
        """``ops.batch_norm_forward`` with this layer's parameters and statistics (batch
        statistics in training mode); ``workspace`` as in :meth:`Conv2d.forward`."""
        return self._forward(x, None, workspace)

    def forward_act(self, x: np.ndarray, activation: str, *, workspace=None) -> np.ndarray:
        """``relu(self.forward(x))`` (``activation="relu"`` or ``"relu6"``) in one fused op.

        The same numbers as this layer then a ReLU / ReLU6 layer, one pass less each way
        (``ops.batch_norm_act_forward``); ``backward`` then differentiates both.
        """
        return self._forward(x, activation, workspace)

    def forward_act_coefficients(self, x: np.ndarray, activation: str, *, workspace=None):
        """:meth:`forward_act` without writing its output: returns the ``ChannelAffine`` with
        which its reader computes it as it reads x (``Conv2d.forward(x, input_affine=...)``),
        so it never goes through memory (``ops.batch_norm_act_coefficients``). The statistics
        and running statistics are the forward's; ``backward`` takes the gradient with respect
        to the output the reader computed."""
        return self._forward(x, activation, workspace, write=False)

    def _forward(self, x: np.ndarray, act, workspace, write: bool = True):
        momentum = self.momentum
        if momentum is None:  # cumulative average; unused in eval mode
            momentum = 1.0 / float(self.num_batches_tracked + 1) if self.training else 0.0
        args = (x, self.weight.data, self.bias.data, self.running_mean, self.running_var,
                self.training, momentum, self.eps)  # fmt: skip
        runner = None if workspace is None else workspace.runner
        if not write:
            out, cache = ops.batch_norm_act_coefficients(*args, activation=act, runner=runner)
        elif act is None:
            out, cache = ops.batch_norm_forward(
                *args, out=_workspace_out(workspace, self, x, self.output_shape), runner=runner
            )
        else:
            out, cache = ops.batch_norm_act_forward(
                *args, activation=act, runner=runner,
                out=_workspace_out(workspace, self, x, self.output_shape),
            )  # fmt: skip
        self._cache = (cache, workspace)
        if self.training:
            self.num_batches_tracked += 1  # in place: a 0-d array, shared with state_dict()
        return out

    def backward(self, dout: np.ndarray, *, consume: bool = False) -> np.ndarray:
        """Differentiates ``ops.batch_norm_forward`` in forward (batch or running statistics,
        as in that forward), or ``ops.batch_norm_act_forward`` after ``forward_act``: returns
        dx, accumulates dweight, dbias (unless frozen).

        ``consume=True``: the caller will not read ``dout`` again, so dx is computed in place
        over it (when it is a C-contiguous array of the right dtype)."""
        cache, workspace = self._take_cache("BatchNorm2d.backward")
        backward = ops.batch_norm_backward if cache.act is None else ops.batch_norm_act_backward
        dx = None
        if consume and _writable_like(dout, cache.shape, cache.x3.dtype):
            dx = dout
        elif workspace is not None:
            dx = workspace.gradient(cache.shape, cache.x3.dtype)
        runner = None if workspace is None else workspace.runner
        dx, dw, db = backward(dout, cache, dx=dx, runner=runner)
        if workspace is not None:
            workspace.release(self)
        self._cache = SPENT
        _accumulate(self.weight, dw)
        _accumulate(self.bias, db)
        return dx

    def release_output(self) -> None:
        """Let the output of the last forward go before this layer's backward.

        For a caller who knows that nothing reads the output any more (its reader kept no
        reference to it: a ``Conv2d`` run with ``keep_input=False``): its workspace array is
        free for other arrays, and the cache stops referring to it. :meth:`recompute_output`
        gives it back; the backward computes it again itself when it needs it (after
        ``forward_act``, whose backward reads where the activation blocked the gradient).
        """
        cache, workspace = self._take_cache("BatchNorm2d.release_output")
        if workspace is not None:
            workspace.release(self)
        self._cache = (cache._replace(out3=None), workspace)

    def recompute_output(self) -> np.ndarray:
        """The output of the last forward, computed again from the cache after
        :meth:`release_output` (``ops.batchnorm.batch_norm_output``: the same numbers, bit for
        bit).

        It is written into an array of the workspace the forward had (this layer's output
        again, until its backward), or a fresh array without one."""
        cache, workspace = self._take_cache("BatchNorm2d.recompute_output")
        out, runner = None, None
        if workspace is not None:
            out = workspace.output(self, cache.shape, cache.x3.dtype)
            runner = workspace.runner
        out, cache = batch_norm_output(cache, out=out, runner=runner)
        self._cache = (cache, workspace)
        return out

    def output_shape(self, in_shape: tuple) -> tuple:
        return tuple(in_shape)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"


class _Elementwise(Module):
    """A parameter-free layer whose output has the input's shape."""

    def output_shape(self, in_shape: tuple) -> tuple:
        return tuple(in_shape)


class _Activation(_Elementwise):
    """The layer of the op pair ``ops.activations.ACTIVATIONS[name]``."""

    name = ""  # the key in ACTIVATIONS (also what BatchNorm2d.forward_act takes)

    def forward(self, x: np.ndarray) -> np.ndarray:
        out, self._cache = ACTIVATIONS[self.name].forward(x)
        return out

    def backward(self, dout: np.ndarray) -> np.ndarray:
        """Differentiates the forward op: dout where the activation passes it, else 0."""
        return _op_backward(self, ACTIVATIONS[self.name].backward, dout)


class ReLU(_Activation):
    """``max(x, 0)``, any shape (``ops.relu_forward``; the gradient flows where x > 0)."""

    name = "relu"


class ReLU6(_Activation):
    """``min(max(x, 0), 6)``, any shape (the TF/Keras MobileNet activation,
    ``ops.relu6_forward``; the gradient flows where 0 < x < 6)."""

    name = "relu6"


# The layer of each activation in ``ops.activations.ACTIVATIONS``, under the same names.
ACTIVATION_LAYERS = {layer.name: layer for layer in (ReLU, ReLU6)}


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
        return _op_backward(self, ops.dropout_backward, dout)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class _Pool2d(Module):
    """Pooling over (kernel_size, stride, padding) windows, each an int or (h, w) pair:
    ``(N, C, H, W) -> (N, C, OH, OW)``; ``stride`` defaults to ``kernel_size``."""

    ceil_mode = False

    def __init__(self, kernel_size, stride=None, padding=0) -> None:
        super().__init__()
        layer = type(self).__name__
        self.kernel_size = chk.pair(layer, "kernel_size", kernel_size, 1)
        self.stride = (
            self.kernel_size if stride is None else chk.pair(layer, "stride", stride, 1)
        )
        self.padding = chk.pair(layer, "padding", padding, 0)

    def output_shape(self, in_shape: tuple) -> tuple:
        n, c, h, w = in_shape
        ks, ss, ps = self.kernel_size, self.stride, self.padding
        sizes = (
            output_size(sz, k, s, p, 1, self.ceil_mode) for sz, k, s, p in zip((h, w), ks, ss, ps)
        )
        return (n, c, *sizes)


class MaxPool2d(_Pool2d):
    """Max pooling ``(N, C, H, W) -> (N, C, OH, OW)``; ``stride`` defaults to ``kernel_size``."""

    def forward(self, x: np.ndarray) -> np.ndarray:
        out, self._cache = ops.max_pool2d_forward(x, self.kernel_size, self.stride, self.padding)
        return out

    def backward(self, dout: np.ndarray) -> np.ndarray:
        """Differentiates ``ops.max_pool2d_forward``: dout routed to each window's argmax."""
        return _op_backward(self, ops.max_pool2d_backward, dout)


class AvgPool2d(_Pool2d):
    """Average pooling ``(N, C, H, W) -> (N, C, OH, OW)``, PyTorch's ``ceil_mode`` and
    ``count_include_pad`` semantics; ``stride`` defaults to ``kernel_size``."""

    def __init__(
        self, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True
    ) -> None:
        super().__init__(kernel_size, stride, padding)
        self.ceil_mode = chk.flag("AvgPool2d", "ceil_mode", ceil_mode)
        self.count_include_pad = chk.flag("AvgPool2d", "count_include_pad", count_include_pad)

    def forward(self, x: np.ndarray) -> np.ndarray:
        out, self._cache = ops.avg_pool2d_forward(
            x, self.kernel_size, self.stride, self.padding, self.ceil_mode, self.count_include_pad
        )
        return out

    def backward(self, dout: np.ndarray) -> np.ndarray:
        """Differentiates ``ops.avg_pool2d_forward``: dout spread evenly over each window."""
        return _op_backward(self, ops.avg_pool2d_backward, dout)


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
        return _op_backward(self, ops.adaptive_avg_pool2d_backward, dout)

    def output_shape(self, in_shape: tuple) -> tuple:
        return (*in_shape[:2], *self.output_size)


class AdaptiveMaxPool2d(Module):
    """Maximum over each of ``output_size`` ``(OH, OW)`` equal bins: ``(N, C, H, W) ->
    (N, C, OH, OW)``; H and W must be multiples of OH and OW (then the bins are PyTorch's).

    ``AdaptiveMaxPool2d(1)`` is global max pooling: ``ops.max_pool2d_forward`` with one window
    the size of the image."""

    def __init__(self, output_size) -> None:
        super().__init__()
        self.output_size = chk.pair("AdaptiveMaxPool2d", "output_size", output_size, 1)

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = chk.float_array("AdaptiveMaxPool2d", "x", x, ndim=(3, 4))
        (h, w), (oh, ow) = x.shape[-2:], self.output_size
        if h % oh or w % ow:
            raise ValueError(
                f"AdaptiveMaxPool2d: input {h}x{w} is not a multiple of output_size {oh}x{ow}"
            )
        kernel = (h // oh, w // ow)
        out, self._cache = ops.max_pool2d_forward(x, kernel, kernel)
        return out

    def backward(self, dout: np.ndarray) -> np.ndarray:
        """Differentiates ``ops.max_pool2d_forward``: dout routed to each bin's argmax."""
        return _op_backward(self, ops.max_pool2d_backward, dout)

    def output_shape(self, in_shape: tuple) -> tuple:
        return (*in_shape[:-2], *self.output_size)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"


class Identity(_Elementwise):
    """``x -> x``: a placeholder, e.g. the classifier of a headless model (``num_classes=0``).

    Forward returns ``x`` itself and backward ``dout`` itself (nothing is computed)."""

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._cache = True
        return x

    def backward(self, dout: np.ndarray) -> np.ndarray:
        self._take_cache("Identity.backward")
        self._cache = SPENT
        return dout


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
        bias = chk.flag("Linear", "bias", bias)
        rng = as_generator(rng)
        w = _uniform_init(rng, (out_features, in_features), in_features, dtype, "Linear")
        self.weight = Parameter(w)
        self.bias = (
            Parameter(_uniform_init(rng, (out_features,), in_features, dtype)) if bias else None
        )

    def forward(self, x: np.ndarray) -> np.ndarray:
        b = None if self.bias is None else self.bias.data
        out, self._cache = ops.linear_forward(x, self.weight.data, b)
        return out

    def backward(self, dout: np.ndarray) -> np.ndarray:
        """Differentiates ``ops.linear_forward`` in forward: returns dx, accumulates dW, db."""
        dx, dw, db = _op_backward(self, ops.linear_backward, dout)
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
        for name, d in (("start_dim", self.start_dim), ("end_dim", self.end_dim)):
            if not -max(nd, 1) <= d < max(nd, 1):  # PyTorch's range (a 0-d input: -1 and 0)
                raise ValueError(f"Flatten: {name} {d} is out of range for an input of"
                                 f" {nd} dimensions, shape {tuple(in_shape)}")  # fmt: skip
        if nd == 0:
            return (1,)  # one value, as PyTorch flattens a 0-d tensor
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
        self._cache = SPENT
        dout = chk.dout_like("Flatten.backward", dout, self.output_shape(in_shape), dtype)
        return dout.reshape(in_shape)  # the chain rule through a reshape is the reverse reshape
