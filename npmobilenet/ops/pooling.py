"""2-D max, average and adaptive average pooling (``torch.nn.functional`` semantics).

Input is (N, C, H, W) or unbatched (C, H, W); the output keeps the batch-ness of the input.
Output size along each axis (PyTorch's rule, with ``//`` rounding down; computed by
``npmobilenet._geometry.output_size``)::

    O = (H + 2 * p - d * (k - 1) - 1 + (s - 1 if ceil_mode else 0)) // s + 1
    if ceil_mode and (O - 1) * s >= H + p:  O -= 1   # the last window must start inside

Padding may be at most half the kernel size (``p <= k // 2``). Max-pool pads with -inf; a tie
keeps the first maximum in scan order and NaN always wins, as in PyTorch. Average pooling
divides by the window size clipped to the padded input (``count_include_pad=True``) or to the
input itself (False).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from npmobilenet import _checks
from npmobilenet._geometry import output_size
from npmobilenet.kernels import pool as K


class MaxPool2dCache(NamedTuple):
    """What ``max_pool2d_forward`` keeps: argmax (N, C, OH, OW) int64, the flat h * W + w index
    of each window's winner (-1 for a window of padding only); x's dtype and shape."""

    argmax: np.ndarray
    dtype: np.dtype
    shape: tuple[int, ...]


class AvgPool2dCache(NamedTuple):
    """What ``avg_pool2d_forward`` keeps: x's dtype and shape, the resolved (h, w) pairs
    kernel, stride and padding, count_include_pad, and the output size out_hw (OH, OW)."""

    dtype: np.dtype
    shape: tuple[int, ...]
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    count_include_pad: bool
    out_hw: tuple[int, int]


class AdaptiveAvgPool2dCache(NamedTuple):
    """What ``adaptive_avg_pool2d_forward`` keeps: x's dtype and shape, out_hw (OH, OW)."""

    dtype: np.dtype
    shape: tuple[int, ...]
    out_hw: tuple[int, int]


def _as_batched(op, x):
    """Validate x and return its (N, C, H, W) C-contiguous view and whether it was batched."""
    _checks.float_array(op, "x", x, ndim=(3, 4))
    x4 = x if x.ndim == 4 else x[None]
    if 0 in x4.shape[1:]:
        raise ValueError(f"{op}: x must have non-zero C, H and W, got shape {x.shape}")
    return np.ascontiguousarray(x4), x.ndim == 4


def _window_params(op, x4, kernel_size, stride, padding, dilation, ceil_mode):
    """Validate window arguments; return (k, s, p, d) pairs and (OH, OW)."""
    k = _checks.pair(op, "kernel_size", kernel_size, minimum=1)
    s = k if stride is None else _checks.pair(op, "stride", stride, minimum=1)
    p = _checks.pair(op, "padding", padding, minimum=0)
    d = _checks.pair(op, "dilation", dilation, minimum=1)
    if not isinstance(ceil_mode, (bool, np.bool_)):
        raise TypeError(f"{op}: ceil_mode must be a bool, got {_checks.describe(ceil_mode)}")
    if p[0] > k[0] // 2 or p[1] > k[1] // 2:
        raise ValueError(
            f"{op}: padding must be at most half the kernel size (padding <= kernel_size // 2),"
            f" got padding={p} with kernel_size={k}"
        )
    H, W = x4.shape[2:]
    OH = output_size(H, k[0], s[0], p[0], d[0], ceil_mode)  # may be < 1: rejected below
    OW = output_size(W, k[1], s[1], p[1], d[1], ceil_mode)
    if OH < 1 or OW < 1:
        raise ValueError(
            f"{op}: the kernel (size {k}, dilation {d}) is larger than the padded input"
            f" ({H} + 2*{p[0]}, {W} + 2*{p[1]}): output size would be ({OH}, {OW})"
        )
    return k, s, p, d, (OH, OW)


def _unbatch(out, batched):
    return out if batched else out[0]


def max_pool2d_forward(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    """Maximum over each kernel window.

    Args:
        x: (N, C, H, W) or (C, H, W), float32 or float64.
        kernel_size, stride (default: kernel_size), padding, dilation: int or (h, w) pair.
        ceil_mode: round the output size up instead of down.

    Returns:
        out: (N, C, OH, OW) (or (C, OH, OW)), x's dtype.
        cache: a ``MaxPool2dCache``.
    """
    op = "max_pool2d_forward"
    x4, batched = _as_batched(op, x)
    k, s, p, d, (OH, OW) = _window_params(op, x4, kernel_size, stride, padding, dilation, ceil_mode)
    out, argmax = K.max_pool2d_forward(x4, *k, *s, *p, *d, OH, OW)
    return _unbatch(out, batched), MaxPool2dCache(argmax, x.dtype, x.shape)


def max_pool2d_backward(dout, cache):
    """dx: each window's gradient goes to the pixel that won it (differentiates
    ``out = x[argmax]``); pixels that win several overlapping windows add up.

    dout: the shape and dtype of the forward output. Returns dx of x's shape.
    """
    op = "max_pool2d_backward"
    argmax, dtype, shape = _checks.cache_of(op, cache, MaxPool2dCache, "max_pool2d_forward")
    out_shape = argmax.shape if len(shape) == 4 else argmax.shape[1:]
    dout = _checks.dout_like(op, dout, out_shape, dtype)
    d4 = np.ascontiguousarray(dout).reshape(argmax.shape)
    dx = K.max_pool2d_backward_input(d4, argmax, shape[-2], shape[-1])
    return dx.reshape(shape)


def avg_pool2d_forward(
    x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True
):
    """Average over each kernel window (zero padding).

    Args:
        x: (N, C, H, W) or (C, H, W), float32 or float64.
        kernel_size, stride (default: kernel_size), padding: int or (h, w) pair.
        ceil_mode: round the output size up instead of down.
        count_include_pad: divide by the window size including padding (clipped to the padded
            input) rather than by the number of real pixels in the window.

    Returns:
        out: (N, C, OH, OW) (or (C, OH, OW)), x's dtype.
        cache: an ``AvgPool2dCache``.
    """
    op = "avg_pool2d_forward"
    x4, batched = _as_batched(op, x)
    k, s, p, _, osz = _window_params(op, x4, kernel_size, stride, padding, 1, ceil_mode)
    if not isinstance(count_include_pad, (bool, np.bool_)):
        raise TypeError(
            f"{op}: count_include_pad must be a bool, got {_checks.describe(count_include_pad)}"
        )
    windows = K.avg_pool2d_windows(*x4.shape[2:], *k, *s, *p, *osz, bool(count_include_pad))
    out = K.window_mean_forward(x4, *windows)
    cache = AvgPool2dCache(x.dtype, x.shape, k, s, p, bool(count_include_pad), osz)
    return _unbatch(out, batched), cache


def avg_pool2d_backward(dout, cache):
    """dx: each window's gradient divided by its divisor, spread over the window's real pixels
    (differentiates ``out = sum(window) / divisor``).

    dout: the shape and dtype of the forward output. Returns dx of x's shape.
    """
    op = "avg_pool2d_backward"
    dtype, shape, k, s, p, cip, osz = _checks.cache_of(
        op, cache, AvgPool2dCache, "avg_pool2d_forward"
    )
    dout = _checks.dout_like(op, dout, shape[:-2] + osz, dtype)
    d4 = np.ascontiguousarray(dout).reshape((-1, shape[-3]) + osz)  # (N, C, OH, OW)
    windows = K.avg_pool2d_windows(*shape[-2:], *k, *s, *p, *osz, cip)
    dx = K.window_mean_backward_input(d4, *windows, *shape[-2:])
    return dx.reshape(shape)


def adaptive_avg_pool2d_forward(x, output_size):
    """Average over windows chosen so the output is exactly ``output_size``.

    Output row i averages input rows [floor(i * H / OH), ceil((i + 1) * H / OH)) (columns
    likewise), so windows may overlap when H is not a multiple of OH.

    Args:
        x: (N, C, H, W) or (C, H, W), float32 or float64.
        output_size: int or (OH, OW) pair; a None element keeps that input size.

    Returns:
        out: (N, C, OH, OW) (or (C, OH, OW)), x's dtype. cache: an ``AdaptiveAvgPool2dCache``.
    """
    op = "adaptive_avg_pool2d_forward"
    x4, batched = _as_batched(op, x)
    if isinstance(output_size, (tuple, list)) and len(output_size) == 2:
        output_size = tuple(x4.shape[2 + i] if v is None else v for i, v in enumerate(output_size))
    OH, OW = _checks.pair(op, "output_size", output_size, minimum=1)
    _checks.output_fits(op, (*x4.shape[:2], OH, OW), x4.dtype)
    if (OH, OW) == (1, 1):  # global average pooling (MobileNet's head): one window, a plain mean
        N, C, H, W = x4.shape
        out = x4.reshape(N, C, H * W).mean(axis=2).reshape(N, C, 1, 1)  # (N, C, 1, 1)
    else:
        out = K.window_mean_forward(x4, *K.adaptive_avg_pool2d_windows(*x4.shape[2:], OH, OW))
    return _unbatch(out, batched), AdaptiveAvgPool2dCache(x.dtype, x.shape, (OH, OW))


def adaptive_avg_pool2d_backward(dout, cache):
    """dx: each output's gradient spread evenly over its window (differentiates the mean).

    dout: (N, C, OH, OW) (or (C, OH, OW)) of the forward's dtype. Returns dx of x's shape.
    """
    op = "adaptive_avg_pool2d_backward"
    fwd = "adaptive_avg_pool2d_forward"
    dtype, shape, osz = _checks.cache_of(op, cache, AdaptiveAvgPool2dCache, fwd)
    dout = _checks.dout_like(op, dout, shape[:-2] + osz, dtype)
    d4 = np.ascontiguousarray(dout).reshape((-1, shape[-3]) + osz)  # (N, C, OH, OW)
    H, W = shape[-2:]
    if osz == (1, 1):  # one window: every pixel gets dout / (H * W)
        dx = np.empty((d4.shape[0], d4.shape[1], H, W), dtype=dtype)
        np.divide(d4, H * W, out=dx)  # (N, C, 1, 1) broadcast over (N, C, H, W)
    else:
        windows = K.adaptive_avg_pool2d_windows(H, W, *osz)
        dx = K.window_mean_backward_input(d4, *windows, H, W)
    return dx.reshape(shape)
