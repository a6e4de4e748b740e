"""2-D convolution (grouped, depthwise, pointwise), forward and backward, two ways.

Shape legend: N batch, C input channels, K output channels, G groups, Cg = C/G, Kg = K/G,
H, W input size, OH, OW output size, kH, kW kernel size, L = OH*OW.

Semantics are exactly ``torch.nn.functional.conv2d`` in 2-D (a cross-correlation)::

    out[n, k, oh, ow] = bias[k] + sum over c < Cg, i < kH, j < kW of
        weight[k, c, i, j] * x_padded[n, (k // Kg)*Cg + c, oh*sh + i*dil_h, ow*sw + j*dil_w]

    OH = (H + pad_top + pad_bottom - dil_h*(kH - 1) - 1) // sh + 1     (OW likewise;
                                                 npmobilenet._geometry.output_size)

Three implementations sit behind one API (``method=``):

* ``"direct"``: loops over output rows and kernel taps (``kernels/conv_direct.py``, which also
  holds the naive textbook loops it is tested against). The fast path for depthwise
  convolution, where there is no matrix product to hand to BLAS: 3x3 depthwise weights
  (K, 1, 3, 3) with dilation 1, MobileNet's case, run specialised kernels
  (``kernels/conv_depthwise.py``, and the variants of ``kernels/tuned/`` chosen by its dispatch
  table) that sum all nine taps in one vectorised pass.
* ``"im2col"``: copy each image's receptive fields into a (C*kH*kW, L) matrix
  (``kernels/im2col.py``) and multiply by the (K, C*kH*kW) weight, one GEMM per group. A 1x1,
  stride-1, unpadded convolution (a *pointwise* convolution) needs no copy at all: the image
  already is that matrix, so it is computed as ``weight (K, C) @ x (C, H*W)`` directly.
* ``"auto"``: see ``choose_method``.

Padding is never materialised for a whole tensor (no ``np.pad``): the general kernels skip the
taps that land in the padding, and the depthwise 3x3 kernels copy one plane at a time into a
small zero-bordered scratch buffer.

Padding is zeros under IEEE arithmetic, in every method: a weight of inf or NaN at a tap that
reads padding contributes ``inf * 0 = NaN`` there, as in ``torch.nn.functional.conv2d``. The
kernels that skip padded taps add those products back when the weight has a non-finite value.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import NamedTuple

import numpy as np

from npmobilenet import _checks, compile_ahead
from npmobilenet._geometry import output_size, window_span
from npmobilenet.kernels.conv_depthwise import depthwise3x3_backward_weight
from npmobilenet.kernels.conv_direct import (
    conv2d_direct_backward_input,
    conv2d_direct_backward_weight,
    conv2d_direct_forward,
)
from npmobilenet.kernels.im2col import col2im, im2col_images
from npmobilenet.kernels.tuned import (
    AFFINE_INPUT,
    DepthwiseShape,
    compiled_signature,
    depthwise3x3_kernel,
)
from npmobilenet.ops.batchnorm import (
    ACT_CODES,
    ChannelAffine,
    affine_writer,
    channel_affine,
    check_affine,
)
from npmobilenet.threads import MACS_PER_ELEMENT, SERIAL

METHODS = ("auto", "direct", "im2col")
PADDING_MODES = ("same", "valid", "tf_same")


class Conv2dCache(NamedTuple):
    """What ``conv2d_forward`` keeps for ``conv2d_backward``.

    x: the input as a C-contiguous (N, C, H, W) array (an unbatched input is stored with N=1).
    weight: the C-contiguous (K, Cg, kH, kW) weight.
    has_bias: whether a bias was given (dbias is None if not).
    stride (sh, sw), padding (top, bottom, left, right), dilation (dil_h, dil_w), groups:
        the resolved geometry.
    method: the implementation that ran, "direct", "im2col" or "pointwise" (the no-copy 1x1
        matmul); backward uses the same one.
    unbatched: the input was (C, H, W), so the output and dx drop the batch axis.
    out_shape: the shape of the returned ``out`` (dout is checked against it).
    cols: the "im2col" method's column matrices (N, C*kH*kW*OH*OW), each image's band after
        band (:func:`_band_block`), kept for the backward when one was announced
        (``backward_ahead``) and they are small (:data:`IM2COL_KEEP_MAX_BYTES`), else None
        (the backward builds them again).
    input_affine: the ``ChannelAffine`` the kernels applied to x as they read it (x is then
        the input before it), or None (x is the convolution's input).
    """

    x: np.ndarray
    weight: np.ndarray
    has_bias: bool
    stride: tuple[int, int]
    padding: tuple[int, int, int, int]
    dilation: tuple[int, int]
    groups: int
    method: str
    unbatched: bool
    out_shape: tuple[int, ...]
    cols: np.ndarray | None = None
    input_affine: ChannelAffine | None = None


# --------------------------------------------------------------------------------------------
# Validation and geometry
# --------------------------------------------------------------------------------------------


def _check_arrays(op, x, weight, bias, groups):
    """Validate x, weight, bias and groups; return (x4, weight, bias, groups, unbatched)."""
    x = _checks.float_array(op, "x", x, ndim=(3, 4))
    weight = _checks.float_array(op, "weight", weight, ndim=4)
    _checks.same_dtype(op, "x", x, weight=weight)
    if bias is not None:
        bias = _checks.float_array(op, "bias", bias)
        _checks.same_dtype(op, "x", x, bias=bias)
    if min(weight.shape) < 1:
        raise ValueError(
            f"{op}: weight must have no zero-sized dimension, got shape {weight.shape}"
        )
    groups = _checks.integer(op, "groups", groups, minimum=1)
    unbatched = x.ndim == 3
    x4 = x[None] if unbatched else x
    C, K, Cg = x4.shape[1], weight.shape[0], weight.shape[1]
    if C % groups:
        raise ValueError(f"{op}: groups={groups} must divide the input channels, x has {C}")
    if K % groups:
        raise ValueError(
            f"{op}: groups={groups} must divide the output channels, weight has {K} "
            f"(weight.shape[0])"
        )
    if C != Cg * groups:
        raise ValueError(
            f"{op}: x has {C} channels but weight expects {Cg} per group x groups={groups}"
            f" = {Cg * groups}"
        )
    if bias is not None and bias.shape != (K,):
        raise ValueError(
            f"{op}: bias must have shape ({K},) (one per output channel), got {bias.shape}"
        )
    return x4, weight, bias, groups, unbatched


def resolve_padding(op, padding, kernel, dilation, stride, size):
    """Turn ``padding`` into (top, bottom, left, right) for an input of ``size`` (H, W).

    int or (h, w) pair: symmetric. 4-tuple: (top, bottom, left, right) as given.
    "valid": none. "same" follows PyTorch: stride 1 only, total padding per axis
    dilation*(k - 1), an odd total puts the extra pixel at the bottom/right.
    "tf_same" is TensorFlow's stride-aware "SAME": the output is ceil(H / s) and the total
    padding is max((ceil(H/s) - 1)*s + dilation*(k - 1) + 1 - H, 0), the smaller half on
    top/left (so a stride-2 3x3 conv on an even H pads 0 above and 1 below).
    """
    if isinstance(padding, str):
        _checks.choice(op, "padding", padding, PADDING_MODES)
        if padding == "valid":
            return (0, 0, 0, 0)
        if padding == "same" and stride != (1, 1):
            raise ValueError(
                f"{op}: padding='same' needs stride 1 (as in PyTorch), got stride={stride};"
                " padding='tf_same' is TensorFlow's stride-aware rule"
            )
        th, tw = (tf_same_total(*a) for a in zip(size, kernel, stride, dilation))
        return (th // 2, th - th // 2, tw // 2, tw - tw // 2)
    if isinstance(padding, (tuple, list)) and len(padding) == 4:
        return tuple(_checks.integer(op, f"padding[{i}]", p, 0) for i, p in enumerate(padding))
    ph, pw = _checks.pair(op, "padding", padding, minimum=0)
    return (ph, ph, pw, pw)


def tf_same_total(size: int, kernel: int, stride: int, dilation: int = 1) -> int:
    """TensorFlow "SAME": total padding so that one axis of ``size`` gives ceil(size / stride).

    At stride 1 this is dilation*(k - 1), PyTorch's padding="same".
    """
    return max((-(-size // stride) - 1) * stride + window_span(kernel, dilation) - size, 0)


# Largest stride, dilation or padding accepted (kernels compute int64 products of them).
MAX_GEOMETRY = 2**31 - 1


def _output_size(op, size, pads, kernel, dilation, stride, axis):
    """One output extent; errors if the dilated kernel is larger than the padded input."""
    span, pad_total = window_span(kernel, dilation), pads[0] + pads[1]
    if size + pad_total < span:
        raise ValueError(
            f"{op}: the kernel (size {kernel}, dilation {dilation}, so it spans {span}) is larger"
            f" than the padded input {axis} {size} + padding {pad_total} = {size + pad_total}"
        )
    return output_size(size, kernel, stride, pads, dilation)


def choose_method(x_shape, w_shape, stride, padding, groups):
    """The implementation ``method="auto"`` runs for this geometry.

    Rule: a 1x1 convolution with stride 1 and no padding is ``"pointwise"`` (a plain matmul, no
    copy; any groups). Otherwise, when each group is tiny, (C/G)*(K/G) <= 16 (depthwise
    convolution, depth multipliers, narrow groups), it is ``"direct"``: the per-group matrix
    products would be too small to keep BLAS busy and the im2col copy would dominate.
    Everything else (dense convolutions such as MobileNet's first 3->32 layer, wide groups) is
    ``"im2col"`` + GEMM.
    """
    if _is_pointwise(w_shape, stride, padding):
        return "pointwise"
    if w_shape[1] * (w_shape[0] // groups) <= 16:
        return "direct"
    return "im2col"


def _is_pointwise(w_shape, stride, padding):
    return w_shape[2] == 1 and w_shape[3] == 1 and stride == (1, 1) and not any(padding)


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def conv2d_forward(
    x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, method="auto", *,
    out=None, runner=None, backward_ahead=False, input_affine=None,
):  # fmt: skip
    """2-D convolution, as ``torch.nn.functional.conv2d``. Returns ``(out, cache)``.

    x: (N, C, H, W) or unbatched (C, H, W), float32 or float64; N may be 0.
    weight: (K, C/groups, kH, kW), same dtype as x. bias: (K,) or None.
    stride, dilation: int or (h, w) pair, >= 1. padding: int or (h, w) pair >= 0, a 4-tuple
    (top, bottom, left, right), "valid" (no padding), "same" (output size = input size; stride
    must be 1; an odd total padding puts the extra row/column at the bottom/right, as PyTorch
    does) or "tf_same" (TensorFlow's "SAME" at any stride: output ceil(H / stride), the extra
    row/column at the bottom/right).
    groups: splits C and K into groups convolved separately; groups == C gives depthwise
    convolution, and K = m*C with groups = C a depth multiplier m.
    method: "direct", "im2col" or "auto" (see ``choose_method``). All give the same result to
    float rounding.
    out (keyword): None, or a C-contiguous array of the output's shape and x's dtype to write
    the output into (its old contents are ignored); it is the ``out`` returned.
    runner (keyword): None (serial), or a ``npmobilenet.threads.Runner`` that splits the batch
    into slices run on its threads.
    backward_ahead (keyword): a backward will follow (a layer in training mode); on a cold
    Numba cache its kernels are compiled meanwhile in a second process
    (:mod:`npmobilenet.compile_ahead`), and small im2col column matrices are kept in the cache
    for it.
    input_affine (keyword): None, or a ``ChannelAffine`` (``ops.batch_norm_act_coefficients``):
    the convolution's input is then ``act(x * scale + shift)`` per channel of x, the output of
    a batch norm and activation that was not written. A depthwise 3x3 kernel computes it as it
    reads x (where the table ``kernels.tuned.AFFINE_INPUT`` has a variant for the call) and a
    pointwise convolution a few images at a time (:data:`POINTWISE_AFFINE_BYTES`), so it never
    goes through memory; any other convolution has it written first. The backward's dx is the
    gradient with respect to that input (``reads_input_affine`` tells which case a call is).

    out: (N, K, OH, OW), or (K, OH, OW) for an unbatched x, in x's dtype.
    cache: a ``Conv2dCache``.
    """
    op = "conv2d"
    x4, weight, bias, groups, unbatched = _check_arrays(op, x, weight, bias, groups)
    geom, method, out_shape = _geometry(
        op, x4.shape, weight.shape, x4.dtype, stride, padding, dilation, groups, method
    )
    shape = out_shape[1:] if unbatched else out_shape
    out = _checks.out_array(op, "out", out, shape, x4.dtype, x4, weight, bias)
    x4 = np.ascontiguousarray(x4)  # (N, C, H, W)
    weight = np.ascontiguousarray(weight)
    if input_affine is not None:
        check_affine(op, "input_affine", input_affine, x4.shape[1])
        if not _reads_affine(method, x4.shape, weight.shape, out_shape, geom):
            x4 = channel_affine(x4, input_affine, runner=runner)  # written once, read as x
            input_affine = None
    out4 = None if out is None else out.reshape(out_shape)  # a view
    if backward_ahead:
        compile_ahead.expect_backward()
        if method == "direct" and _is_depthwise3x3(weight, geom[2]):
            _compile_backward_ahead(x4, weight, out_shape, geom[0], geom[1], input_affine)
    cols = _kept_columns(x4, weight, out_shape) if backward_ahead and method == "im2col" else None
    kw = {} if cols is None else {"cols": cols}
    if input_affine is not None:
        kw["affine"] = input_affine
        if method == "pointwise":  # the kernels a training run (or an eval one) compiles
            kw["trained"] = backward_ahead
    out4 = _FORWARD[method](x4, weight, out_shape, *geom, out=out4, runner=runner or SERIAL, **kw)
    if bias is not None:
        out4 += bias.reshape(1, -1, 1, 1)  # out (N, K, OH, OW) + bias (1, K, 1, 1)
    result = out4[0] if unbatched else out4
    if out is not None:
        result = out
    cache = Conv2dCache(x4, weight, bias is not None, *geom, method, unbatched, result.shape,
                        cols, input_affine)  # fmt: skip
    return result, cache


def _reads_affine(method, x_shape, w_shape, out_shape, geom) -> bool:
    """Whether the op applies an ``input_affine`` as it reads x, on resolved arguments (x
    (N, C, H, W), out (N, K, OH, OW), geom (stride, padding, dilation, groups)): a pointwise
    convolution (a few images at a time), or a depthwise 3x3 one whose forward kernel has an
    ``AFFINE_INPUT`` variant (the forward's choice of kernel does not depend on the weight's
    values)."""
    if method == "pointwise":
        return True
    stride, pad, dilation = geom[:3]
    if method != "direct" or not _is_depthwise3x3_shape(w_shape, dilation):
        return False
    shape = DepthwiseShape(x_shape[1], w_shape[0], tuple(x_shape[2:]), tuple(out_shape[2:]),
                           stride, padding=(pad[0], pad[2]))  # fmt: skip
    return depthwise3x3_kernel("forward", shape) in AFFINE_INPUT


def _kept_columns(x4, weight, out_shape):
    """An array for the im2col column matrices of the whole batch, (N, C*kH*kW*OH*OW) (each
    image's band after band, :func:`_band_block`), when they take at most
    :data:`IM2COL_KEEP_MAX_BYTES`, else None."""
    rows = x4.shape[1] * weight.shape[2] * weight.shape[3]  # C*kH*kW
    shape = (x4.shape[0], rows * out_shape[2] * out_shape[3])  # (N, C*kH*kW*L)
    if math.prod(shape) * x4.itemsize > IM2COL_KEEP_MAX_BYTES:
        return None
    return np.empty(shape, dtype=x4.dtype)


def _geometry(op, x_shape, w_shape, dtype, stride, padding, dilation, groups, method):
    """Check and resolve the geometry of x (N, C, H, W) and weight (K, Cg, kH, kW) of ``dtype``:
    ((stride, padding, dilation, groups), method, out_shape).

    out_shape is (N, K, OH, OW); padding is (top, bottom, left, right). A function of the
    shapes, the dtype and the arguments alone: for arguments of plain Python ints, tuples of
    them and strings (a layer's own) the answer is remembered (:func:`_geometry_memo`); any
    other argument is checked afresh on every call."""
    args = (op, x_shape, w_shape, dtype, stride, padding, dilation, groups, method)
    if all(map(_plain, args[4:])):
        return _geometry_memo(*args)
    return _geometry_of(*args)


def _plain(v) -> bool:
    """An int, a str, or a tuple of ints: exactly those types (not bool, NumPy or float)."""
    t = type(v)
    return t is int or t is str or (t is tuple and all(type(i) is int for i in v))


def _geometry_of(op, x_shape, w_shape, dtype, stride, padding, dilation, groups, method):
    """:func:`_geometry` on the shapes and dtype of x4 and weight."""
    stride = _checks.pair(op, "stride", stride, minimum=1)
    dilation = _checks.pair(op, "dilation", dilation, minimum=1)
    kernel = w_shape[2:]
    N, _, H, W = x_shape
    pad = resolve_padding(op, padding, kernel, dilation, stride, (H, W))
    for name, v in (("stride", stride), ("dilation", dilation), ("padding", pad)):
        if max(v) > MAX_GEOMETRY:  # the kernels index with int64 products of these
            raise ValueError(f"{op}: {name} must be at most {MAX_GEOMETRY}, got {max(v)}")
    _checks.choice(op, "method", method, METHODS)
    OH = _output_size(op, H, pad[0:2], kernel[0], dilation[0], stride[0], "height")
    OW = _output_size(op, W, pad[2:4], kernel[1], dilation[1], stride[1], "width")
    if method == "auto":
        method = choose_method(x_shape, w_shape, stride, pad, groups)
    elif method == "im2col" and _is_pointwise(w_shape, stride, pad):
        method = "pointwise"
    out_shape = (N, w_shape[0], OH, OW)
    _checks.output_fits(op, out_shape, dtype)
    return (stride, pad, dilation, groups), method, out_shape


# A call that raises is not remembered: bad arguments are reported on every call.
_geometry_memo = lru_cache(maxsize=1024)(_geometry_of)


def conv2d_backward(dout, cache, *, dx=None, input_grad=True, weight_grad=True, runner=None):
    """Gradients of ``conv2d_forward``. Returns ``(dx, dweight, dbias)``.

    dout: the gradient of the loss with respect to ``out``, same shape and dtype.
    dx: shaped like the forward's x ((N, C, H, W) or (C, H, W)). dweight: (K, Cg, kH, kW).
    dbias: (K,), or None when the forward had no bias.
    Uses the same implementation the forward ran (``cache.method``).

    Keywords: ``dx``: None, or a C-contiguous array shaped and typed like x to write dx into
    (old contents ignored; it must not overlap dout). ``input_grad=False`` skips dx (returned
    as None): a network's first layer, whose input is data, needs none (PyTorch skips it too).
    ``weight_grad=False`` returns dweight as None (a frozen weight; the direct and pointwise
    methods skip its work). ``runner``: as in the forward.
    """
    op = "conv2d_backward"
    _checks.cache_of(op, cache, Conv2dCache, "conv2d_forward")
    input_grad = _checks.flag(op, "input_grad", input_grad)
    weight_grad = _checks.flag(op, "weight_grad", weight_grad)
    dout = _checks.dout_like(op, dout, cache.out_shape, cache.x.dtype)
    x_shape = cache.x.shape[1:] if cache.unbatched else cache.x.shape
    dx = _checks.out_array(op, "dx", dx, x_shape, cache.x.dtype, dout, cache.x, cache.weight)
    dout4 = np.ascontiguousarray(dout[None] if cache.unbatched else dout)  # (N, K, OH, OW)
    dx4 = None if dx is None else dx.reshape(cache.x.shape)  # a view
    geom = (cache.stride, cache.padding, cache.dilation, cache.groups)
    kw = {} if cache.cols is None else {"cols": cache.cols}
    if cache.input_affine is not None:
        kw["affine"] = cache.input_affine
    dx4, dweight = _BACKWARD[cache.method](
        dout4, cache.x, cache.weight, *geom, dx=dx4, input_grad=input_grad,
        weight_grad=weight_grad, runner=runner or SERIAL, **kw,
    )  # fmt: skip
    # out = conv + bias.reshape(1, K, 1, 1): the bias gradient sums dout over N, OH, OW.
    dbias = dout4.sum(axis=(0, 2, 3)) if cache.has_bias else None
    if not input_grad:
        return None, dweight, dbias
    if dx is None:
        dx = dx4[0] if cache.unbatched else dx4
    return dx, dweight, dbias


def conv2d_kernels(x_shape, weight_shape, stride=1, padding=0, dilation=1, groups=1,
                   method="auto", dtype=np.float32, input_affine=False):  # fmt: skip
    """The slow-to-compile kernels that ``conv2d_forward`` and ``conv2d_backward`` would run on
    x (N, C, H, W) and weight (K, C/groups, kH, kW) with these arguments, as ``(forward,
    backward)``: tuples of ``(kernel, argument types)`` in the order the ops call them. These are
    the depthwise 3x3 kernels (weights assumed finite); other convolutions, and arguments the op
    would refuse, give empty tuples. ``input_affine``: the ops get an ``input_affine`` (its
    ``AFFINE_INPUT`` variants, where the kernels have them). For :mod:`npmobilenet.compile_ahead`,
    which compiles them in a second process on a cold Numba cache.
    """
    try:
        geom, method, out_shape = _geometry(
            "conv2d", tuple(x_shape), tuple(weight_shape), np.dtype(dtype), stride, padding,
            dilation, groups, method,
        )  # fmt: skip
    except (TypeError, ValueError):  # the op itself says what is wrong when it runs
        return (), ()
    if method != "direct" or not _is_depthwise3x3_shape(weight_shape, geom[2]):
        return (), ()
    return _depthwise_plan(x_shape[1], weight_shape[0], tuple(x_shape[2:]), out_shape[2:],
                           geom[0], (geom[1][0], geom[1][2]), np.dtype(dtype),
                           bool(input_affine))  # fmt: skip


def reads_input_affine(x_shape, weight_shape, stride=1, padding=0, dilation=1, groups=1,
                       method="auto", dtype=np.float32) -> bool:  # fmt: skip
    """Whether ``conv2d_forward`` with these arguments and an ``input_affine`` applies it as it
    reads x (a depthwise 3x3 kernel's variant in ``kernels.tuned.AFFINE_INPUT``; a pointwise
    convolution, a few images at a time) rather than writing the whole input first. False for
    arguments the op would refuse."""
    try:
        geom, method, out_shape = _geometry(
            "conv2d", tuple(x_shape), tuple(weight_shape), np.dtype(dtype), stride, padding,
            dilation, groups, method,
        )  # fmt: skip
    except (TypeError, ValueError):
        return False
    return _reads_affine(method, x_shape, weight_shape, out_shape, geom)


@lru_cache(maxsize=256)
def _depthwise_plan(channels, out_channels, in_hw, out_hw, stride, top_left, dtype, affine):
    """``conv2d_kernels`` of a depthwise 3x3 convolution: (forward, backward). top_left: the
    padding (top, left); affine: an ``input_affine`` is given."""
    shape = DepthwiseShape(channels, out_channels, in_hw, out_hw, stride, padding=top_left)
    fused = affine and depthwise3x3_kernel("forward", shape) in AFFINE_INPUT
    forward = (_forward_compiled(shape, dtype, fused),)
    backward = _depthwise_backward_plan(
        channels, out_channels, in_hw, out_hw, stride, top_left, dtype, fused
    )
    return forward, backward[::-1]  # the weight gradient is computed first


def _forward_compiled(shape, dtype, affine=False):
    """(compiled kernel, argument types) the depthwise 3x3 forward of ``shape`` runs (its
    ``AFFINE_INPUT`` variant when ``affine``)."""
    kernel = depthwise3x3_kernel("forward", shape)
    return compiled_signature(AFFINE_INPUT[kernel] if affine else kernel, dtype)


def _compile_backward_ahead(x4, weight, out_shape, stride, pad, affine) -> None:
    """Hand the depthwise 3x3 backward kernels ``conv2d_backward`` will run to
    :mod:`npmobilenet.compile_ahead` (they are the slow ones to compile); ``affine``: the
    forward's ChannelAffine, or None."""
    plan = _depthwise_backward_plan(
        x4.shape[1], weight.shape[0], x4.shape[2:], out_shape[2:], stride, (pad[0], pad[2]),
        x4.dtype, affine is not None,
    )  # fmt: skip
    for kernel, sig in plan:
        compile_ahead.submit(kernel, sig)


@lru_cache(maxsize=256)
def _depthwise_backward_plan(channels, out_channels, in_hw, out_hw, stride, top_left, dtype,
                             affine=False):  # fmt: skip
    """((kernel, argument types), ...) of a depthwise backward (weights assumed finite;
    top_left: the padding (top, left); ``affine``: the input is a ChannelAffine's)."""
    shape = DepthwiseShape(channels, out_channels, in_hw, out_hw, stride, padding=top_left)
    both = depthwise3x3_kernel("backward", shape)
    if both is not None:
        return _backward_signatures(dtype, AFFINE_INPUT.get(both, both) if affine else both)
    kernels = (depthwise3x3_kernel(op, shape) for op in ("backward_weight", "backward_input"))
    return _backward_signatures(dtype, None, *kernels)


def _backward_signatures(dtype, both, dw_kernel=None, dx_kernel=None):
    """((compiled kernel, argument types), ...) of the depthwise backward kernels that run:
    ``both`` (both gradients, or its ``AFFINE_INPUT`` twin), or else dx_kernel and dw_kernel,
    in the order the worker should compile them (``kernels.tuned.compiled_signature``)."""
    if both is not None:
        return (compiled_signature(both, dtype),)
    # the backward runs the weight gradient first: submitted last, it is compiled first
    return tuple(compiled_signature(k, dtype) for k in (dx_kernel, dw_kernel) if k is not None)


def _per_image(a):
    """Elements per image of a (N, ...) array (also when N is 0)."""
    return math.prod(a.shape[1:])


# --------------------------------------------------------------------------------------------
# Direct
# --------------------------------------------------------------------------------------------


def _is_depthwise3x3(weight, dilation):
    """(K, 1, 3, 3) weight, dilation 1: MobileNet's depthwise layers, run by conv_depthwise.py
    or one of its tuned variants (``npmobilenet.kernels.tuned``)."""
    return _is_depthwise3x3_shape(weight.shape, dilation)


def _is_depthwise3x3_shape(w_shape, dilation):
    return tuple(w_shape[1:]) == (1, 3, 3) and dilation == (1, 1)


def _depthwise_shape(x, weight, out_hw, stride, pad):
    finite = bool(np.isfinite(weight).all())
    return DepthwiseShape(
        x.shape[1], weight.shape[0], x.shape[2:], tuple(out_hw), stride, finite, (pad[0], pad[2])
    )


def _zeroed(shape, dtype, buf):
    """A zero-filled array: ``buf`` filled with zeros, or a new one when buf is None."""
    if buf is None:
        return np.zeros(shape, dtype=dtype)
    buf.fill(0)
    return buf


def _forward_direct(x, weight, out_shape, stride, pad, dilation, groups, out, runner,
                    affine=None):  # fmt: skip
    """``affine``: a ChannelAffine the depthwise kernel applies to x as it reads it (the
    caller checked that the call's kernel has such a variant, ``AFFINE_INPUT``)."""
    out = np.empty(out_shape, dtype=x.dtype) if out is None else out
    (sh, sw), (dil_h, dil_w) = stride, dilation
    depthwise = _is_depthwise3x3(weight, dilation)
    if depthwise:  # the depthwise kernels write out
        shape = _depthwise_shape(x, weight, out_shape[2:], stride, pad)
        kernel, args = depthwise3x3_kernel("forward", shape), (sh, sw, pad[0], pad[2])
        if affine is not None:
            kernel = AFFINE_INPUT[kernel]
            args += (affine.scale, affine.shift, ACT_CODES[affine.act])
        compile_ahead.wait(*_forward_compiled(shape, x.dtype, affine is not None))
    else:
        kernel = conv2d_direct_forward
        args = (sh, sw, pad[0], pad[2], dil_h, dil_w, groups)

    def images(lo, hi):  # a slice of the batch (the whole batch unless a runner splits it)
        if not depthwise:
            out[lo:hi].fill(0)  # the generic kernel accumulates into it
        kernel(x[lo:hi], weight, out[lo:hi], *args)

    runner.map(images, x.shape[0], max(_per_image(x), _per_image(out)))
    return out


def _backward_direct(
    dout, x, weight, stride, pad, dilation, groups, dx, input_grad, weight_grad, runner,
    affine=None,
):  # fmt: skip
    """``affine``: the forward's ChannelAffine (x is the input before it): the kernel's
    ``AFFINE_INPUT`` variant applies it as it reads x, or (without one) it is written first."""
    if not (input_grad or weight_grad):
        return None, None
    (sh, sw), (dil_h, dil_w) = stride, dilation
    if input_grad and dx is None:
        dx = np.empty(x.shape, dtype=x.dtype)
    depthwise = _is_depthwise3x3(weight, dilation)
    both = dw_kernel = dx_kernel = w_flipped = read = None
    extra = ()  # the affine variant's arguments
    if depthwise:
        shape = _depthwise_shape(x, weight, dout.shape[2:], stride, pad)
        both = depthwise3x3_kernel("backward", shape)  # one kernel for dx and dW, or None
        if affine is not None and both in AFFINE_INPUT:
            both, read = AFFINE_INPUT[both], affine  # the kernel applies it as it reads x
            extra, affine = (affine.scale, affine.shift, ACT_CODES[affine.act]), None
    if affine is not None:  # no variant reads it: the input written once
        x = channel_affine(x, affine, runner=runner)
    if depthwise:
        if both is None:
            dw_kernel = depthwise3x3_kernel("backward_weight", shape)
            dx_kernel = depthwise3x3_kernel("backward_input", shape)
        # dx is a correlation of (zero-spread) dout with the 180-degree rotated filter
        w_flipped = None if both else np.ascontiguousarray(weight[:, :, ::-1, ::-1])
        sigs = _backward_signatures(x.dtype, both, dw_kernel, dx_kernel)
        for kernel, sig in reversed(sigs):  # in the order they run (the weight's first)
            compile_ahead.wait(kernel, sig)  # compiled by the worker, or taken back from it

    def images(lo, hi):  # a slice of the batch: adds its dW into a zeroed array of its own
        dweight = np.zeros_like(weight)
        d, xs = dout[lo:hi], x[lo:hi]
        if both is not None:  # dx is cheap here, computed even if not wanted; written, not added
            dxs = dx[lo:hi] if input_grad else np.empty_like(xs)
            both(d, xs, weight, dxs, dweight, sh, sw, pad[0], pad[2], *extra)
            if weight_grad and not np.isfinite(dweight).all():
                zs = channel_affine(xs, read) if extra else xs  # the convolution's input
                _readable_weight_grad(d, zs, dweight, stride, pad)
            return dweight
        if weight_grad and depthwise:
            dw_kernel(d, xs, dweight, sh, sw, pad[0], pad[2])
        elif weight_grad:
            conv2d_direct_backward_weight(
                d, xs, dweight, sh, sw, pad[0], pad[2], dil_h, dil_w, groups
            )
        if not input_grad:
            return dweight
        dxs = dx[lo:hi]
        dxs.fill(0)  # the kernels accumulate into it
        if depthwise:
            dx_kernel(d, w_flipped, dxs, sh, sw, pad[0], pad[2])
        else:
            conv2d_direct_backward_input(
                d, weight, dxs, sh, sw, pad[0], pad[2], dil_h, dil_w, groups
            )
        return dweight

    slices = runner.map(images, x.shape[0], max(_per_image(x), _per_image(dout)))
    return (dx if input_grad else None), (_sum_slices(slices) if weight_grad else None)


def _readable_weight_grad(d, xs, dweight, stride, pad):
    """dweight = the readable kernel's depthwise weight gradient, written. The tuned
    both-gradients kernels' flat loops also multiply x by zeros outside the output, which turns
    an inf or NaN in x into NaN in taps whose sums never read it; with a non-finite dW their
    result is replaced by the readable kernel's, whose sums have exactly the products of the
    convolution (and PyTorch's NaN)."""
    dweight.fill(0)
    depthwise3x3_backward_weight(d, xs, dweight, *stride, pad[0], pad[2])


def _sum_slices(parts):
    """The sum of per-slice partial sums (dW), added in slice order."""
    total = parts[0]
    for p in parts[1:]:
        total += p
    return total


# --------------------------------------------------------------------------------------------
# im2col + GEMM: a small batch's columns at once, else one image at a time (the column
# matrix of a whole batch can be gigabytes); a large image's weight gradient in bands of
# output rows
# --------------------------------------------------------------------------------------------


def _forward_im2col(x, weight, out_shape, stride, pad, dilation, groups, out, runner, cols=None):
    """``cols``: None, or an array for the whole batch's column matrices to fill (see
    :func:`_kept_columns`). A small batch's columns are built at once and multiplied in one
    batched product; else each image's in bands of output rows (:func:`_bands`), each band
    multiplied while its columns are in the core's cache."""
    N, K, OH, OW = out_shape
    rows, L = x.shape[1] * weight.shape[2] * weight.shape[3], OH * OW  # C*kH*kW, L
    w3 = weight.reshape(groups, K // groups, -1)  # (G, Kg, Cg*kH*kW)
    out = np.empty(out_shape, dtype=x.dtype) if out is None else out  # fully written below
    out4 = out.reshape(N, groups, K // groups, L)  # (N, G, Kg, L) view
    taps = _taps(weight, stride, pad, dilation, OW)
    bands = _bands(rows, OH, OW, x.itemsize)
    kept = cols

    def images(lo, hi):  # a slice of the batch (the whole batch unless a runner splits it)
        n = hi - lo
        batched = kept is not None or n * rows * L * x.itemsize <= IM2COL_BATCHED_MAX_BYTES
        if len(bands) == 1 and batched:
            cols = np.empty((n, rows * L), dtype=x.dtype) if kept is None else kept[lo:hi]
            _im2col_rows(x[lo:hi], taps, 0, OH, cols.reshape(n, rows, L))
            cols4 = cols.reshape(n, groups, rows // groups, L)  # (n, G, Cg*kH*kW, L) view
            np.matmul(w3, cols4, out=out4[lo:hi])
            return
        most = max(b - a for a, b in bands)
        scratch = np.empty(rows * most * OW, dtype=x.dtype) if kept is None else None
        for i in range(lo, hi):
            for a, b in bands:  # out[i]'s band (G, Kg, p) = w3 @ the band's columns
                block = _band_columns(x, taps, a, b, kept, i, scratch, build=True)
                np.matmul(w3, block.reshape(groups, rows // groups, -1),
                          out=out4[i, :, :, a * OW : b * OW])  # fmt: skip

    runner.map(images, N, max(_per_image(x), rows * L))
    return out


def _taps(weight, stride, pad, dilation, OW):
    """The arguments im2col needs besides the images, rows and columns: (kH, kW, sh, sw, pt,
    pl, dil_h, dil_w, OW)."""
    return (*weight.shape[2:], *stride, pad[0], pad[2], *dilation, OW)


def _im2col_rows(x, taps, a, b, cols):
    """cols (n, C*kH*kW, (b - a)*OW) = the column matrices of output rows a..b-1 of the images
    x (n, C, H, W) (all of them for a, b = 0, OH)."""
    kH, kW, sh, sw, pt, pl, dil_h, dil_w, OW = taps
    # output row a + r reads input row (a + r)*sh - pt + i*dil_h: rows a..b-1 are those of an
    # image with pt - a*sh rows of padding above it (a negative padding cuts rows off)
    im2col_images(x, kH, kW, sh, sw, pt - a * sh, pl, dil_h, dil_w, b - a, OW, cols)


def _bands(rows, OH, OW, itemsize):
    """An image's output rows cut into bands ``[(a, b), ...]`` (rows a..b-1, in order) whose
    column matrices, (rows, (b - a)*OW) for rows = C*kH*kW, take at most
    :data:`IM2COL_BAND_BYTES` (or hold one output row); ``[(0, OH)]`` when the whole image's
    do."""
    per_row = rows * OW * itemsize
    if OH * per_row <= IM2COL_BAND_BYTES:
        return [(0, OH)]
    count = -(-OH // max(1, IM2COL_BAND_BYTES // per_row))  # bands of at most that many rows
    return [(OH * i // count, OH * (i + 1) // count) for i in range(count)]


def _band_columns(x, taps, a, b, cols, n, scratch, build=False):
    """The column matrix (rows, (b - a)*OW) of output rows a..b-1 of image n: its block of the
    kept ``cols`` (N, rows*L) (:func:`_band_block`), built from x into it when ``build``; or,
    with no kept columns, built from x into ``scratch`` (flat, large enough)."""
    OW = taps[8]
    rows = x.shape[1] * taps[0] * taps[1]  # C*kH*kW
    p = (b - a) * OW
    if cols is not None:
        block = _band_block(cols, n, rows, a, b, OW)
        if not build:
            return block
    else:
        block = scratch[: rows * p].reshape(rows, p)
    _im2col_rows(x[n : n + 1], taps, a, b, block.reshape(1, rows, p))
    return block


def _band_block(cols, n, rows, a, b, OW):
    """Image n's band of output rows a..b-1 in the kept columns ``cols`` (N, rows*L): its
    column matrix (rows, (b - a)*OW), stored contiguously after the bands above it (an image
    of one band is its (rows, L) matrix)."""
    return cols[n, rows * a * OW : rows * b * OW].reshape(rows, (b - a) * OW)


def _backward_im2col(
    dout, x, weight, stride, pad, dilation, groups, dx, input_grad, weight_grad, runner,
    cols=None,
):  # fmt: skip
    """``cols``: None, or the forward's column matrices of the whole batch (then not built
    again)."""
    if input_grad and dx is None:
        dx = np.empty(x.shape, dtype=x.dtype)
    geom = (stride, pad, dilation, groups)

    def images(lo, hi):  # a slice of the batch: returns its part of dW
        sub_dx = dx[lo:hi] if input_grad else None
        sub_cols = None if cols is None else cols[lo:hi]
        return _backward_im2col_images(dout[lo:hi], x[lo:hi], weight, *geom, sub_dx, input_grad,
                                       sub_cols)[1]  # fmt: skip

    if not (input_grad or weight_grad):
        return None, None
    per_image = x.shape[1] * weight.shape[2] * weight.shape[3] * dout.shape[2] * dout.shape[3]
    slices = runner.map(images, x.shape[0], max(_per_image(x), per_image))
    return (dx if input_grad else None), (_sum_slices(slices) if weight_grad else None)


def _backward_im2col_images(
    dout, x, weight, stride, pad, dilation, groups, dx, input_grad, cols=None
):  # fmt: skip
    """``_backward_im2col`` of a batch (or a slice of one), serially; ``cols`` the slice's
    column matrices (n, C*kH*kW*L), when the forward kept them."""
    N, K, OH, OW = dout.shape
    rows, L = x.shape[1] * weight.shape[2] * weight.shape[3], OH * OW  # C*kH*kW, L
    bands = _bands(rows, OH, OW, x.itemsize)
    if len(bands) == 1 and (cols is not None or N * rows * L * x.itemsize
                            <= IM2COL_BATCHED_MAX_BYTES):  # fmt: skip
        return _backward_im2col_batched(
            dout, x, weight, stride, pad, dilation, groups, dx, input_grad, cols
        )
    w3 = weight.reshape(groups, K // groups, -1)  # (G, Kg, Cg*kH*kW)
    d4 = dout.reshape(N, groups, K // groups, L)  # (N, G, Kg, L)
    taps = _taps(weight, stride, pad, dilation, OW)
    dw3 = _dweight_bands(d4, x, taps, bands, cols)
    if not input_grad:
        return None, dw3.reshape(weight.shape)
    dcols = np.empty((rows, L), dtype=x.dtype)
    dx = _zeroed(x.shape, x.dtype, dx)  # col2im adds into it
    for n in range(N):  # forward: out[n] = w3 @ cols[n], so dcols = W.T @ dout[n]
        np.matmul(w3.transpose(0, 2, 1), d4[n], out=dcols.reshape(groups, -1, L))
        col2im(dcols, *taps[:8], OH, OW, dx[n])  # dx = im2col^T
    return dx, dw3.reshape(weight.shape)


def _dweight_bands(d4, x, taps, bands, cols):
    """dW (G, Kg, Cg*kH*kW) = sum over images n and bands of d4[n]'s band columns (G, Kg, p)
    @ that band's column matrix transposed (G, p, Cg*kH*kW), added in that order; the column
    matrices from ``cols`` (N, C*kH*kW*L) when kept, else built band by band."""
    N, G, Kg, L = d4.shape
    rows, OW = x.shape[1] * taps[0] * taps[1], taps[8]  # C*kH*kW, OW
    dw3 = np.zeros((G, Kg, rows // G), dtype=d4.dtype)
    step = np.empty_like(dw3)
    most = max(b - a for a, b in bands)
    scratch = np.empty(rows * most * OW, dtype=x.dtype) if cols is None else None
    for n in range(N):
        for a, b in bands:  # forward: out[n]'s band columns = w3 @ block
            block = _band_columns(x, taps, a, b, cols, n, scratch)  # (C*kH*kW, p)
            blockT = block.reshape(G, rows // G, -1).transpose(0, 2, 1)  # (G, p, Cg*kH*kW)
            dw3 += np.matmul(d4[n, :, :, a * OW : b * OW], blockT, out=step)
    return dw3


# When the column matrices of the whole batch fit in this many bytes, the forward and the
# backward build them all in one kernel call and hand BLAS one batched product instead of one
# per image (alpha 0.25 at 32x32, batch 64: the first layer's 64 small GEMM pairs were ~5 ms
# of a ~40 ms step).
IM2COL_BATCHED_MAX_BYTES = 32 * 2**20
# Column matrices of at most this many bytes for the whole batch are kept from the forward for
# the backward (``Conv2dCache.cols``) instead of being built twice: at alpha 0.25, 32x32, batch
# 64 the first layer's are 1.7 MB and take about a third of a millisecond to build; at 224x224,
# batch 16, 21.7 MB held through the step (its peak is about 800 MiB) and about 2 ms of the
# first layer's 5.4 ms weight gradient on 2 threads. Larger ones (batch 32 at 224) are rebuilt.
IM2COL_KEEP_MAX_BYTES = 32 * 2**20
# An image whose column matrix takes more than this many bytes has its weight gradient summed
# in bands of whole output rows of at most this size, one GEMM per band (a rebuilt band's
# columns built into a scratch that stays in the core's L2 cache): OpenBLAS multiplies GEMMs of
# M*N*K <= 100^3 without packing them on its AVX-512 kernels, and (32, 1120) @ (1120, 27) is
# one, (32, 12544) @ (12544, 27), a whole 112x112 image's, is not. Measured on the first layer
# at 224x224, 2 threads, unpinned OpenBLAS: batch 16, kept columns, 2.9 ms in the training step
# against 3.8 ms per whole image (2.3-2.5 against 3.8 ms alone); batch 32, columns rebuilt,
# 8.0 against 11.4-12.2 ms alone. Bands of 96 KiB ran 2.5 ms, 64 KiB 2.9, 150 KiB (over 100^3)
# 3.7. The forward builds and multiplies the same bands, each band's columns while they are in
# the core's cache (with im2col's read-ahead, batch 16 on 2 threads: 2.6-2.7 ms alone against
# 4.0-4.1 for whole images, 3.1-3.2 against 4.3-4.5 in the training step).
IM2COL_BAND_BYTES = 128 * 2**10


def _backward_im2col_batched(
    dout, x, weight, stride, pad, dilation, groups, dx=None, input_grad=True, cols=None
):
    """``_backward_im2col`` with every image's columns at once: the same sums, fewer calls.
    ``cols``: the forward's column matrices (N, C*kH*kW*L), one band each, or None to build
    them here."""
    N, K, OH, OW = dout.shape
    C, kH, kW = x.shape[1], weight.shape[2], weight.shape[3]
    (sh, sw), (dil_h, dil_w), L = stride, dilation, OH * OW
    w3 = weight.reshape(groups, K // groups, -1)  # (G, Kg, Cg*kH*kW)
    d4 = dout.reshape(N, groups, K // groups, L)  # (N, G, Kg, L)
    if cols is None:
        cols = np.empty((N, C * kH * kW, L), dtype=x.dtype)  # (N, C*kH*kW, L)
        im2col_images(x, kH, kW, sh, sw, pad[0], pad[2], dil_h, dil_w, OH, OW, cols)
    cols = cols.reshape(N, C * kH * kW, L)  # kept ones are (N, C*kH*kW*L)
    # forward: out[n] = w3 @ cols[n], so dW = sum_n dout[n] @ cols[n].T, dcols = W.T @ dout
    dw3 = _pointwise_dweight(d4, cols.reshape(N, groups, C // groups * kH * kW, L))
    if not input_grad:
        return None, dw3.reshape(weight.shape)
    dcols = np.matmul(w3.transpose(0, 2, 1), d4).reshape(N, C * kH * kW, L)
    dx = _zeroed(x.shape, x.dtype, dx)  # col2im adds into it
    for n in range(N):
        col2im(dcols[n], kH, kW, sh, sw, pad[0], pad[2], dil_h, dil_w, OH, OW, dx[n])
    return dx, dw3.reshape(weight.shape)


# --------------------------------------------------------------------------------------------
# Pointwise (1x1, stride 1, no padding): the convolution is a matmul on the image as it lies
# --------------------------------------------------------------------------------------------


def _forward_pointwise(x, weight, out_shape, stride, pad, dilation, groups, out, runner,
                       affine=None, trained=False):  # fmt: skip
    """``affine``: a ChannelAffine applied to x a few images at a time (:func:`_affine_chunks`)
    just before they are multiplied; ``trained``: with a training run's kernels."""
    N, C, H, W = x.shape
    K = weight.shape[0]
    x4 = x.reshape(N, groups, C // groups, H * W)  # (N, G, Cg, H*W) view, no copy
    w3 = weight.reshape(groups, K // groups, C // groups)  # (G, Kg, Cg)
    out = np.empty(out_shape, dtype=x.dtype) if out is None else out
    out4 = out.reshape(N, groups, K // groups, H * W)  # a view
    write = None if affine is None else affine_writer(affine, C, trained)

    def images(lo, hi):  # (n, G, Kg, H*W): one GEMM per image and group, or one in all
        if _one_gemm_pays(hi - lo, H * W, C // groups, K // groups):
            xs = x4[lo:hi] if write is None else write(x4[lo:hi])
            _one_gemm(w3, xs, out4[lo:hi])
        elif write is None:
            np.matmul(w3, x4[lo:hi], out=out4[lo:hi])
        else:
            for a, b, z in _affine_chunks(x4, lo, hi, write):
                np.matmul(w3, z, out=out4[a:b])

    runner.map(images, N, _pointwise_work(x4, out4))
    return out


# A pointwise convolution given an ``input_affine`` (the batch norm and activation before it,
# not written) applies it to this many bytes of images at a time (at least one image), into a
# scratch of the calling thread's, and multiplies them while they are in its caches: the
# activation is never written to memory and read back.
POINTWISE_AFFINE_BYTES = 2**20


def _affine_chunks(x4, lo, hi, write):
    """``(a, b, z)`` for images lo:hi of x4 (N, ...) in chunks of about
    :data:`POINTWISE_AFFINE_BYTES`: z is ``write(x4[a:b])``, in one scratch reused by every
    chunk (read it before the next)."""
    step = max(1, POINTWISE_AFFINE_BYTES // max(1, _per_image(x4) * x4.itemsize))
    scratch = np.empty((min(step, hi - lo), *x4.shape[1:]), x4.dtype)
    for a in range(lo, hi, step):
        b = min(hi, a + step)
        yield a, b, write(x4[a:b], scratch[: b - a])


def _backward_pointwise(
    dout, x, weight, stride, pad, dilation, groups, dx, input_grad, weight_grad, runner,
    affine=None,
):  # fmt: skip
    """``affine``: the forward's ChannelAffine (x is the input before it), applied again to the
    images the weight gradient reads, a few at a time (or to a slice that is multiplied as
    one)."""
    N, C, H, W = x.shape
    K = weight.shape[0]
    x4 = x.reshape(N, groups, C // groups, H * W)  # (N, G, Cg, H*W)
    d4 = dout.reshape(N, groups, K // groups, H * W)  # (N, G, Kg, H*W)
    w3 = weight.reshape(groups, K // groups, C // groups)  # (G, Kg, Cg)
    if not (input_grad or weight_grad):
        return None, None
    # forward: out = w3 @ x4, so dx = w3.T @ dout and dW = sum over images of dout @ x.T.
    # The transposes are views: BLAS reads them with its transpose flag, nothing is copied.
    if input_grad and dx is None:
        dx = np.empty(x.shape, dtype=x.dtype)
    dx4 = dx.reshape(x4.shape) if input_grad else None  # a view
    write = None if affine is None else affine_writer(affine, C, True)

    def images(lo, hi):  # a slice of the batch: its dx, and its part of dW
        n, L, d, xs = hi - lo, H * W, d4[lo:hi], x4[lo:hi]
        dxs = dx4[lo:hi] if input_grad else None
        batched = weight_grad and _batched_dweight_pays(n, L, K // groups, C // groups, d.nbytes)
        if write is not None and batched:  # the products read the slice as one
            xs, write_each = write(xs), None
        else:
            write_each = write
        if input_grad and batched and n > 1 and L > 1:
            # dW moves dout next to the pixels anyway, so dx as one GEMM costs only its copy back
            # (N=16 on 2 threads, dx and dW, SkylakeX kernels: 7x7, 1024 -> 1024 8.0 ms against
            # 10.3 with dx per image)
            d2 = _channel_major(d)  # (G, Kg, n*L): one copy for both products
            _gemm_batch_major(w3.transpose(0, 2, 1), d2, dxs)
            return np.matmul(d2, _channel_major(xs).transpose(0, 2, 1))  # (G, Kg, Cg)
        if input_grad and _one_gemm_pays(n, L, K // groups, C // groups):
            _one_gemm(w3.transpose(0, 2, 1), d, dxs)
        elif input_grad and weight_grad and not batched \
                and d.nbytes >= POINTWISE_INTERLEAVE_MIN_BYTES:  # fmt: skip
            return _dweight_per_image(d, xs, w3, dxs, write=write_each)  # and dx
        elif input_grad:
            np.matmul(w3.transpose(0, 2, 1), d, out=dxs)  # (n, G, Cg, H*W)
        if not weight_grad:
            return None
        return _pointwise_dweight(d, xs) if batched else _dweight_per_image(d, xs,
                                                                            write=write_each)

    slices = runner.map(images, N, _pointwise_work(x4, d4))
    dweight = _sum_slices(slices).reshape(weight.shape) if weight_grad else None
    return (dx if input_grad else None), dweight


def _pointwise_work(x4, y4):
    """Per-image work of a pointwise GEMM in ``Runner.map``'s units (array elements): a 7x7
    1024x1024 layer has few elements but 51 M multiply-adds per image, worth a thread each.
    """
    macs = _per_image(x4) * y4.shape[2]  # H*W * Cg * Kg * G: one image's multiply-adds
    return max(_per_image(x4), _per_image(y4), macs // MACS_PER_ELEMENT)


# Up to this many pixels per image, a pointwise layer's output (and its dx) is one GEMM over the
# whole batch instead of one per image: N GEMMs of H*W columns each run at a fraction of BLAS's
# speed. Measured at N=64 on 2 threads, the forward as one GEMM with its two transposing copies
# against one per image, under OpenBLAS's SkylakeX (AVX-512) kernels and its Haswell (AVX2) ones:
# 2x2, 128 -> 128 0.061 against 0.057 ms, even (Haswell 0.092 against 0.201); 3x3, 64 -> 64 0.041
# against 0.049 (Haswell 0.060 against 0.078); at 4x4, 64 -> 64 one per image is faster, 0.049
# against 0.074 (Haswell 0.091 against 0.099).
POINTWISE_ONE_GEMM_MAX_HW = 9
# Larger planes too when the copies are small beside the weight: per image, BLAS packs the whole
# (K, C) weight again for only H*W columns, while one GEMM pays for moving H*W * (C + K)
# elements of input and output. One GEMM when H*W * (C + K) * this <= C * K. Measured at N=16
# on 2 threads (8 images a slice), forward one GEMM against one per image, SkylakeX (Haswell):
# 7x7, 512 -> 512 0.96 against 1.19 ms (1.78 against 1.99); 7x7, 256 -> 512 0.53 against 0.61
# (0.92 against 1.00); 14x14, 1024 -> 1024 even (14.5 and 14.4; 27.5 and 27.4); slower at 7x7,
# 256 -> 256 (0.56 against 0.34; 0.75 against 0.53) and at 10x10, 512 -> 512 (3.2 against 2.1;
# 5.0 against 3.7). dx gives the same order.
POINTWISE_ONE_GEMM_COPY_RATIO = 3


def _one_gemm_pays(n, pixels, c_in, c_out):
    """Whether a slice of ``n`` images of ``pixels`` pixels each, ``c_in -> c_out`` channels
    per group, runs as one GEMM (:func:`_one_gemm`) rather than one GEMM per image."""
    if n < 2:  # one image is one GEMM already: a copy would buy nothing
        return False
    return (
        pixels <= POINTWISE_ONE_GEMM_MAX_HW
        or pixels * (c_in + c_out) * POINTWISE_ONE_GEMM_COPY_RATIO <= c_in * c_out
    )


def _one_gemm(w3, x4, out4):
    """out4 (n, G, Kg, L) = w3 (G, Kg, Cg) @ x4[i] (G, Cg, L) for every image i, as one GEMM
    ``(G, Kg, Cg) @ (G, Cg, n*L)`` (the batch axis moved next to the pixels: a copy of x4 and
    of the result, see :func:`_channel_major`). With one group and one pixel the images are
    the rows of x4 and out4 already: ``(n, Cg) @ (Cg, Kg)``, no copy."""
    n, G, Cg, L = x4.shape
    if L == 1 and G == 1 and out4.flags.c_contiguous:
        np.matmul(x4.reshape(n, Cg), w3[0].T, out=out4.reshape(n, -1))  # (n, Cg) @ (Cg, Kg)
        return
    _gemm_batch_major(w3, _channel_major(x4), out4)


def _gemm_batch_major(w3, x2, out4):
    """out4 (n, G, Kg, L) = w3 (G, Kg, Cg) @ x2 (G, Cg, n*L), the product's columns moved
    back to their images."""
    n, G, _, L = out4.shape
    y = np.matmul(w3, x2)  # (G, Kg, n*L)
    _copy_transposed(out4, y.reshape(G, -1, n, L), (2, 0, 1, 3))


def _channel_major(a4):
    """(n, G, C, L) -> (G, C, n*L), the batch axis moved next to the pixels: a copy (a view
    when L is 1)."""
    n, G, C, L = a4.shape
    if L == 1:
        return a4.transpose(1, 2, 0, 3).reshape(G, C, n)
    out = np.empty((G, C, n, L), a4.dtype)
    _copy_transposed(out, a4, (1, 2, 0, 3))
    return out.reshape(G, C, n * L)


def _copy_transposed(dst, src, axes):
    """``dst[...] = src.transpose(axes)``, ``axes`` keeping the last axis (L pixels) last.

    Where both last axes are contiguous, each row of L pixels is copied as one opaque element:
    NumPy's copy loops run over the innermost axis, only a few pixels long here (at 2x2 pixels
    moving rows is 4x faster)."""
    L, size = src.shape[-1], src.itemsize
    if L > 1 and src.size and src.strides[-1] == size and dst.strides[-1] == size:
        row = np.dtype(f"V{L * size}")  # (an opaque element of L * size bytes)
        dst, src = dst.view(row), src.view(row)
    np.copyto(dst, src.transpose(axes))


# Up to this many pixels per image, dW is one GEMM over the whole batch (a small transposing copy
# of each operand); above it, one GEMM per image with no copy. Measured at N=16 on 2 threads, dx
# and dW together, under OpenBLAS's SkylakeX (AVX-512) kernels and its Haswell (AVX2) ones:
# 7x7, 1024 -> 1024 8.0 ms batched against 11.2 per image (Haswell 13.9 against 16.7); 112x112,
# 32 -> 64 14.2 batched against 9.1 per image (Haswell 16.3 against 10.8); at N=64, 16x16,
# 64 -> 128: 2.3 against 1.7.
POINTWISE_BATCHED_DW_MAX_HW = 255
# A pointwise backward's slice with at least this many bytes of dout runs dW one GEMM per image on
# planes of up to POINTWISE_BATCHED_DW_MAX_HW pixels too, unless one GEMM pays for its dx
# (:func:`_one_gemm_pays`): its copies would come from memory, not the caches. In a batch-16 224
# training step on 2 threads (14x14, 8 images a slice, 3.1 MiB), dx and dW of 512 -> 512 take 8.2 ms
# per image against 8.4 batched under the SkylakeX kernels (Haswell 14.3 against 14.5); measured
# alone, with warm caches, the two are even. Smaller slices keep the copies: at N=64, 14x14,
# 32 -> 64 (1.5 MiB a slice), 0.52 ms batched against 0.71 per image (Haswell 0.65 against 0.77).
POINTWISE_BATCHED_DW_MAX_BYTES = 2 * 2**20
# Per image, each image's dx product runs right after its dW product (its dout still in the
# caches) when a slice's dout has at least this many bytes; below, all of dx is one NumPy call
# before the dW loop (a Python-level call per image costs more than the caches save). Measured
# as above (SkylakeX): 112x112, 32 -> 64 8.3 ms against 9.1 (Haswell 10.5 against 10.8), 56x56,
# 128 -> 128 9.8 against 10.2, 28x28 even; 14x14, 512 -> 512 in the training step 0.1 ms
# slower; at N=64, 16x16, 8 -> 16 (512 KiB of dout per slice of 32 images) 0.20 against 0.14.
POINTWISE_INTERLEAVE_MIN_BYTES = 4 * 2**20


def _batched_dweight_pays(n, pixels, c_out, c_in, dout_bytes):
    """Whether a pointwise backward's slice of ``n`` images (``c_out`` channels of dout and
    ``c_in`` of x per group, ``dout_bytes`` of dout) runs dW as one GEMM over the slice
    (:func:`_pointwise_dweight`) rather than one per image."""
    return pixels <= POINTWISE_BATCHED_DW_MAX_HW and (
        dout_bytes < POINTWISE_BATCHED_DW_MAX_BYTES or _one_gemm_pays(n, pixels, c_out, c_in)
    )


def _pointwise_dweight(d4, x4):
    """dW (G, Kg, Cg) = sum over images n of d4[n] (G, Kg, L) @ x4[n].T (G, L, Cg).

    The sum over images and pixels is one contraction over N*L; for small images it is handed
    to BLAS as one GEMM, ``(G, Kg, N*L) @ (G, N*L, Cg)``, after moving the batch axis next to
    the pixels (a copy of each operand; the transpose of x is a view).
    """
    L = d4.shape[3]
    if L <= POINTWISE_BATCHED_DW_MAX_HW:
        d2 = _channel_major(d4)  # (G, Kg, N*L)
        x2 = _channel_major(x4)  # (G, Cg, N*L)
        return np.matmul(d2, x2.transpose(0, 2, 1))
    return _dweight_per_image(d4, x4)


def _dweight_per_image(d4, x4, w3=None, dx4=None, write=None):
    """dW (G, Kg, Cg) = sum over images n of d4[n] (G, Kg, L) @ x4[n].T (G, L, Cg), one GEMM
    per image, no copy. With ``w3`` (G, Kg, Cg) and ``dx4`` (N, G, Cg, L), also
    ``dx4[n] = w3.T @ d4[n]`` right after image n's dW product, while d4[n] is still in the
    caches (the same products as computing all of dx first, in a cheaper order). ``write``:
    the product reads ``write(x4)`` (an affine writer's, :func:`_affine_chunks`) for x4."""
    N, G, Kg, _ = d4.shape
    dw3 = np.zeros((G, Kg, x4.shape[2]), dtype=d4.dtype)
    step = np.empty_like(dw3)
    chunks = [(0, N, x4)] if write is None else _affine_chunks(x4, 0, N, write)
    for a, b, xs in chunks:
        for n in range(a, b):
            dw3 += np.matmul(d4[n], xs[n - a].transpose(0, 2, 1), out=step)
            if dx4 is not None:
                np.matmul(w3.transpose(0, 2, 1), d4[n], out=dx4[n])  # (G, Cg, L)
    return dw3


_FORWARD = {"direct": _forward_direct, "im2col": _forward_im2col, "pointwise": _forward_pointwise}
_BACKWARD = {
    "direct": _backward_direct,
    "im2col": _backward_im2col,
    "pointwise": _backward_pointwise,
}
