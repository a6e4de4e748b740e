"""Batch normalisation (``torch.nn.functional.batch_norm`` semantics).

Forward, for each channel c over the M = N * (product of spatial dims) values it holds::

    training:  mean_c = sum(x) / M,   var_c = sum((x - mean_c)^2) / M        (biased)
               running_mean <- (1 - momentum) * running_mean + momentum * mean_c
               running_var  <- (1 - momentum) * running_var  + momentum * var_c * M / (M - 1)
    eval:      mean_c, var_c = running_mean[c], running_var[c]
    both:      xhat = (x - mean_c) / sqrt(var_c + eps);   out = weight[c] * xhat + bias[c]

The running statistics are the caller's arrays, updated in place (as PyTorch's buffers are).
Input is ``(N, C)`` or ``(N, C, *)``; internally it is viewed as ``(N, C, L)``.

``batch_norm_act_forward`` / ``batch_norm_act_backward`` are batch norm followed by ReLU or
ReLU6 (MobileNet's pattern) in one op: the same numbers as the two ops in a row, with one pass
less over the activations each way and no intermediate array.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from npmobilenet import _checks
from npmobilenet.kernels import batchnorm as K
from npmobilenet.ops.activations import ACTIVATIONS
from npmobilenet.threads import SERIAL

_FWD = "batch_norm_forward"
_BWD = "batch_norm_backward"
ACT_CODES = {None: 0, "relu": 1, "relu6": 2}  # the channel kernels' activation argument

# The channel kernels' ranges (planes of at least K.FLAT_MAX_L pixels) are not cut equal: the
# calling thread's range (``Runner.map``'s ``caller_lead``) is longer by about this many elements
# (a channel holds N * L) of the forward's passes (about 0.33 ns an element per thread on planes
# out of cache: 22 us) and of the backward's (0.46 ns: 30 us), about the time another thread
# takes to start inside a session (25-27 us, median, in a batch-16 224 training step). (Planes of
# 112x112 hold more than that per channel, and there the split stays even.)
CALLER_LEAD_FORWARD = 2**16
CALLER_LEAD_BACKWARD = 2**16


class BatchNormCache(NamedTuple):
    """What ``batch_norm_forward`` and ``batch_norm_act_forward`` keep for their backwards.

    x3: the (N, C, L) contiguous view of x. w, mean, invstd: (C,) float64 copies of the weight
    (ones without one) and of the statistics used. has_weight, has_bias: whether they were given.
    training: batch statistics were used. shape: x's shape. act: None, "relu" or "relu6" (the
    fused activation). out3: the (N, C, L) output when act is set (its zeros mark where the
    activation blocked the gradient), else None. scale, shift: (C,) float64, the forward's
    ``out = act(x * scale + shift)`` coefficients (``K.affine_coefficients``), with which
    ``batch_norm_output`` computes the output again and the fused backward finds its mask.
    """

    x3: np.ndarray
    w: np.ndarray
    has_weight: bool
    has_bias: bool
    mean: np.ndarray
    invstd: np.ndarray
    training: bool
    shape: tuple
    act: str | None
    out3: np.ndarray | None
    scale: np.ndarray
    shift: np.ndarray


class ChannelAffine(NamedTuple):
    """A per-channel ``act(x * scale + shift)`` that its reader applies as it reads x, so the
    activation is never written (``batch_norm_act_coefficients``; ``conv2d_forward``'s
    ``input_affine``). scale, shift: (C,) float64; act: "relu" or "relu6". Each value is the
    float64 ``x * scale + shift`` rounded to x's dtype, then the activation: the numbers
    ``batch_norm_act_forward`` writes, bit for bit (:func:`channel_affine` writes them)."""

    scale: np.ndarray
    shift: np.ndarray
    act: str


def _check_vector(name, v, x, allow_none, op=_FWD):
    """A per-channel vector: None (if allowed) or a float array of shape (C,) and x's dtype."""
    if type(v) is np.ndarray and v.dtype == x.dtype and v.shape == (x.shape[1],):
        return v  # x is a checked float array: v is one of its dtype, of shape (C,)
    if v is None:
        if allow_none:
            return None
        raise TypeError(f"{op}: {name} must be an array of shape ({x.shape[1]},), got None")
    _checks.float_array(op, name, v, ndim=1)
    if v.shape != (x.shape[1],):
        raise ValueError(
            f"{op}: {name} must have shape ({x.shape[1]},) (one per channel of x, whose shape"
            f" is {x.shape}), got shape {v.shape}"
        )
    _checks.same_dtype(op, "x", x, **{name: v})
    return v


def _validate_forward(x, weight, bias, running_mean, running_var, training, momentum, eps, op=_FWD):
    _checks.float_array(op, "x", x)
    if x.ndim < 2:
        raise ValueError(f"{op}: x must be (N, C) or (N, C, *), got {x.ndim}-D shape {x.shape}")
    if x.shape[1] == 0:
        raise ValueError(f"{op}: x must have at least one channel, got shape {x.shape}")
    if not isinstance(training, (bool, np.bool_)):
        raise TypeError(f"{op}: training must be a bool, got {_checks.describe(training)}")
    for name, v in (("weight", weight), ("bias", bias)):
        _check_vector(name, v, x, allow_none=True, op=op)
    for name, v in (("running_mean", running_mean), ("running_var", running_var)):
        _check_vector(name, v, x, allow_none=bool(training), op=op)
        if v is not None and not v.flags.writeable:
            raise ValueError(f"{op}: {name} must be writeable (it is updated in place)")
    if (running_mean is None) != (running_var is None):
        raise ValueError(f"{op}: running_mean and running_var must both be arrays or both None")
    momentum = _checks.number(op, "momentum", momentum, low=0.0, high=1.0)
    eps = _checks.number(op, "eps", eps, low=0.0, low_open=True)
    if training and x.size // x.shape[1] <= 1:
        raise ValueError(
            f"{op}: expected more than 1 value per channel when training, got input of shape"
            f" {x.shape}"
        )
    return momentum, eps


def batch_norm_forward(
    x, weight, bias, running_mean, running_var, training, momentum=0.1, eps=1e-5, *,
    out=None, runner=None,
):  # fmt: skip
    """Normalise each channel of ``x``, then scale by ``weight`` and shift by ``bias``.

    Args:
        x: (N, C) or (N, C, *), float32 or float64 (N may be 0 in eval mode).
        weight, bias: (C,) of x's dtype, or None (affine=False: scale 1, shift 0).
        running_mean, running_var: (C,) of x's dtype, updated in place when ``training``; read
            when not. May be None in training mode (track_running_stats=False).
        training: True uses batch statistics (and updates the running ones); False uses the
            running statistics.
        momentum: weight of the new batch statistic in the running average, in [0, 1].
        eps: added to the variance before the square root, > 0.
        out (keyword): None, or a C-contiguous array of x's shape and dtype to write the
            output into (old contents ignored).
        runner (keyword): None (serial), or a ``npmobilenet.threads.Runner`` that splits the
            batch into slices run on its threads.

    Returns:
        out: same shape and dtype as x.
        cache: a ``BatchNormCache``.
    """
    args = (x, weight, bias, running_mean, running_var, training, momentum, eps)
    momentum, eps = _validate_forward(*args)
    out = _checks.out_array(_FWD, "out", out, x.shape, x.dtype, *args[:5])
    return _forward(*args[:6], momentum, eps, None, out, runner or SERIAL)


def batch_norm_act_forward(
    x, weight, bias, running_mean, running_var, training, momentum=0.1, eps=1e-5,
    activation="relu", *, out=None, runner=None,
):  # fmt: skip
    """``relu(batch_norm_forward(x, ...))`` (or relu6) in one op: the same numbers, one pass less.

    Arguments as :func:`batch_norm_forward`, plus ``activation``: ``"relu"`` or ``"relu6"``.
    Returns ``(out, cache)``, out of x's shape and dtype; backward: :func:`batch_norm_act_backward`.
    """
    op = "batch_norm_act_forward"
    _checks.choice(op, "activation", activation, ACTIVATIONS)
    args = (x, weight, bias, running_mean, running_var, training, momentum, eps)
    momentum, eps = _validate_forward(*args, op=op)
    out = _checks.out_array(op, "out", out, x.shape, x.dtype, *args[:5])
    return _forward(*args[:6], momentum, eps, activation, out, runner or SERIAL)


def batch_norm_act_coefficients(
    x, weight, bias, running_mean, running_var, training, momentum=0.1, eps=1e-5,
    activation="relu", *, runner=None,
):  # fmt: skip
    """:func:`batch_norm_act_forward` without writing its output: returns
    ``(ChannelAffine, cache)``, the coefficients with which the output's reader computes
    ``act(x * scale + shift)`` itself as it reads x (a depthwise convolution:
    ``conv2d_forward(x, ..., input_affine=affine)``), so the output never goes through memory.

    The statistics, the running statistics' update and the cache are the forward's; its
    backward is :func:`batch_norm_act_backward`, whose dout is the gradient with respect to the
    output the reader computed. Arguments as :func:`batch_norm_act_forward`.
    """
    op = "batch_norm_act_coefficients"
    _checks.choice(op, "activation", activation, ACTIVATIONS)
    args = (x, weight, bias, running_mean, running_var, training, momentum, eps)
    momentum, eps = _validate_forward(*args, op=op)
    _, cache = _forward(*args[:6], momentum, eps, activation, None, runner or SERIAL, False)
    return ChannelAffine(cache.scale, cache.shift, activation), cache


def check_affine(op: str, name: str, affine, channels: int) -> None:
    """Argument ``name`` of ``op`` must be a :class:`ChannelAffine` for x's ``channels``
    channels: (C,) float64 scale and shift, and an activation of ``ACTIVATIONS``."""
    if not isinstance(affine, ChannelAffine):
        raise TypeError(f"{op}: {name} must be a ChannelAffine, got {_checks.describe(affine)}")
    for field in ("scale", "shift"):
        v = getattr(affine, field)
        if not (isinstance(v, np.ndarray) and v.dtype == np.float64 and v.shape == (channels,)):
            raise ValueError(f"{op}: {name}.{field} must be a ({channels},) float64 array (one"
                             f" per channel of x), got {_checks.describe(v)}")  # fmt: skip
    _checks.choice(op, f"{name}.act", affine.act, ACTIVATIONS)


def channel_affine(x, affine, *, out=None, runner=None):
    """``act(x * scale + shift)`` per channel of x (N, C, ...) with a :class:`ChannelAffine`:
    the output ``batch_norm_act_forward`` would have written, bit for bit. ``out`` (keyword):
    None, or a C-contiguous array of x's shape and dtype; ``runner`` as in
    :func:`batch_norm_forward`."""
    op = "channel_affine"
    _checks.float_array(op, "x", x)
    if x.ndim < 2:
        raise ValueError(f"{op}: x must be (N, C) or (N, C, *), got {x.ndim}-D shape {x.shape}")
    C = x.shape[1]
    check_affine(op, "affine", affine, C)
    out = _checks.out_array(op, "out", out, x.shape, x.dtype, x)
    N, L = x.shape[0], math.prod(x.shape[2:])
    x3 = np.ascontiguousarray(x).reshape(N, C, L)
    out3 = np.empty_like(x3) if out is None else out.reshape(x3.shape)  # a view
    _apply(x3, affine.scale, affine.shift, affine.act, out3, runner or SERIAL, False)
    return out3.reshape(x.shape) if out is None else out


def affine_writer(affine, channels: int, trained: bool):
    """``write(x, out=None) -> out``: :func:`channel_affine` of x (n, C, ...), serially in the
    calling thread, for an op that applies a ``ChannelAffine`` a few images at a time (its
    coefficients prepared once; ``affine`` checked by the caller). ``trained``: a training
    run's kernels (compiled anyway), else eval mode's."""
    code, six = ACT_CODES[affine.act], affine.act == "relu6"
    fn_coef = np.empty((5, channels))  # rows: mean, var, invstd (unused), scale, shift
    fn_coef[3], fn_coef[4] = affine.scale, affine.shift

    def write(x, out=None):
        x3 = x.reshape(x.shape[0], channels, -1)
        out = np.empty_like(x) if out is None else out
        o3 = out.reshape(x3.shape)
        if K._is_flat(x3):
            K.scale_shift_act(x3, affine.scale, affine.shift, o3, six)
        elif trained:  # the training forward's kernel, called as the forward calls it
            unused = np.empty(channels, x.dtype)  # weight and bias: scale and shift are given
            K.forward_channels(x3, unused, unused, 1.0, fn_coef, o3, code, False, 0, channels)
        else:
            K.apply_channels(x3, affine.scale, affine.shift, o3, code, 0, channels)
        return out

    return write


def _forward(x, weight, bias, running_mean, running_var, training, momentum, eps, act, out, runner,
             write=True):  # fmt: skip
    """Batch norm (then ``act`` if not None) on validated arguments (``out`` checked too).
    ``write=False``: the statistics and coefficients only (out None, returned as None)."""
    N, C = x.shape[:2]
    L = math.prod(x.shape[2:])  # 1 for (N, C) input
    x3 = np.ascontiguousarray(x).reshape(N, C, L)  # (N, C, L)
    w = np.ones(C, x.dtype) if weight is None else weight  # no weight: scale 1
    b = np.zeros(C, x.dtype) if bias is None else bias  # no bias: shift 0
    given = out
    if write:
        out = np.empty_like(x3) if out is None else out.reshape(x3.shape)  # a view of out
    walk = _forward_eval if not training else _forward_flat if K._is_flat(x3) else _forward_rows
    # mean, var, invstd, scale, shift: (C,) float64 each
    stats = walk(x3, w, b, running_mean, running_var, eps, act, out, runner)
    mean, var, invstd, scale, shift = stats
    if training and running_mean is not None:  # r = (1 - momentum) * r + momentum * statistic
        M = N * L
        keep = running_mean.dtype.type(1.0 - momentum)  # rounded as NumPy would
        K.update_running(running_mean, running_var, mean, var, keep, momentum, M / (M - 1))
    cache = BatchNormCache(
        x3, w.astype(np.float64), weight is not None, bias is not None, mean, invstd,
        bool(training), x.shape, act, None if act is None else out, scale, shift,
    )  # fmt: skip
    if not write:
        return None, cache
    return (out.reshape(x.shape) if given is None else given), cache


def _forward_eval(x3, w, b, running_mean, running_var, eps, act, out, runner):
    """Eval mode: out (unless None) from the running statistics; returns mean, var, invstd,
    scale, shift, (C,) float64 each."""
    mean = running_mean.astype(np.float64)  # a copy: later in-place updates cannot leak in
    var = running_var.astype(np.float64)
    # invstd = 1 / sqrt(var + eps); out = x * scale + shift. (C,) float64 each
    _, _, invstd, scale, shift = K.forward_coefficients(mean, var, w, b, eps)
    if out is not None:
        _apply(x3, scale, shift, act, out, runner, False)
    return mean, var, invstd, scale, shift


def _forward_flat(x3, w, b, running_mean, running_var, eps, act, out, runner):
    """Training, planes of fewer than ``K.FLAT_MAX_L`` pixels: the statistics (each pass split
    over slices of the batch), then out (unless None); returns as :func:`_forward_eval`."""
    mean, var = _channel_stats(x3, runner)  # (C,), (C,) float64, biased variance
    _, _, invstd, scale, shift = K.forward_coefficients(mean, var, w, b, eps)
    if out is not None:
        _apply(x3, scale, shift, act, out, runner, True)
    return mean, var, invstd, scale, shift


def _forward_rows(x3, w, b, running_mean, running_var, eps, act, out, runner):
    """Training, planes of at least ``K.FLAT_MAX_L`` pixels: ``K.forward_channels`` on ranges
    of channels split by ``runner`` (statistics and out, unless None, in one call); returns as
    :func:`_forward_eval`."""
    N, C, L = x3.shape
    coef = np.empty((5, C))  # rows: mean, var, invstd, scale, shift
    code = K.NO_OUTPUT if out is None else ACT_CODES[act]
    out = x3 if out is None else out  # (not written without an output)

    def channels(lo, hi):
        K.forward_channels(x3, w, b, eps, coef, out, code, True, lo, hi)

    runner.map(channels, C, N * L, caller_lead=CALLER_LEAD_FORWARD)
    return tuple(coef)


def _apply(x3, scale, shift, act, out, runner, trained):
    """out (N, C, L) = act(x3 * scale + shift) with the (C,) float64 coefficients (see
    ``K.affine_coefficients``): one rounding per element, then the activation (if any).
    ``trained``: the coefficients are a training forward's (planes of at least
    ``K.FLAT_MAX_L`` pixels then use that forward's kernel, which the run has compiled; eval
    mode's kernel otherwise)."""
    N, C, L = x3.shape
    if not K._is_flat(x3):
        fn = _apply_channels(x3, scale, shift, ACT_CODES[act], out, trained)
        runner.map(fn, C, N * L, caller_lead=CALLER_LEAD_FORWARD)
        return

    def images(lo, hi):  # a slice of the batch (the whole batch unless a runner splits it)
        if act is None:
            K.scale_shift(x3[lo:hi], scale, shift, out[lo:hi])
        else:
            K.scale_shift_act(x3[lo:hi], scale, shift, out[lo:hi], act == "relu6")

    runner.map(images, N, C * L)


def _apply_channels(x3, scale, shift, code, out, trained):
    """``fn(lo, hi)`` writing out's channels lo:hi, for ``runner.map`` (see :func:`_apply`)."""
    if not trained:
        return lambda lo, hi: K.apply_channels(x3, scale, shift, out, code, lo, hi)
    C = x3.shape[1]
    coef = np.empty((5, C))  # rows: mean, var, invstd (unused here), scale, shift
    coef[3], coef[4] = scale, shift
    unused = np.empty(C, x3.dtype)  # weight and bias: scale and shift are given
    return lambda lo, hi: K.forward_channels(x3, unused, unused, 1.0, coef, out, code, False,
                                             lo, hi)  # fmt: skip


def batch_norm_output(cache, *, out=None, runner=None):
    """The output of the forward that returned ``cache``, computed again from it: the same
    numbers, bit for bit. Returns ``(out, cache)``: out of x's shape and dtype, and the cache
    to pass to the backward from now on (after ``batch_norm_act_forward`` its backward reads
    the output, and the new cache holds the new ``out``).

    For a caller that let the forward's output go to save memory (keeping x, which the
    backward needs anyway) and needs it back, e.g. as the next layer's input for that layer's
    backward. Keywords ``out`` (None, or a C-contiguous array of x's shape and dtype to write
    into) and ``runner`` as in :func:`batch_norm_forward`.
    """
    op = "batch_norm_output"
    _check_cache(op, cache, (None, *ACTIVATIONS))
    out = _checks.out_array(op, "out", out, cache.shape, cache.x3.dtype, cache.x3)
    out3 = np.empty_like(cache.x3) if out is None else out.reshape(cache.x3.shape)  # a view
    _apply(cache.x3, cache.scale, cache.shift, cache.act, out3, runner or SERIAL, cache.training)
    cache = cache._replace(out3=None if cache.act is None else out3)
    return (out3.reshape(cache.shape) if out is None else out), cache


def _channel_stats(x3, runner):
    """``K.channel_stats``, each pass split over slices of the batch by ``runner``."""
    N, C, L = x3.shape
    if runner.threads == 1:
        return K.channel_stats(x3)
    mean = sum(runner.map(lambda lo, hi: K.channel_sums(x3[lo:hi]), N, C * L)) / (N * L)
    sq_dev = runner.map(lambda lo, hi: K.channel_sq_dev(x3[lo:hi], mean), N, C * L)
    return mean, sum(sq_dev) / (N * L)


def batch_norm_backward(dout, cache, *, dx=None, runner=None):
    """Gradients of ``batch_norm_forward`` with respect to x, weight and bias.

    Differentiates ``out = weight * (x - mean) * invstd + bias``. With the per-channel sums
    ``S = sum(dout)`` and ``T = sum(dout * (x - mean))`` over the M values of a channel:

        dbias = S,    dweight = T * invstd
        eval:     dx = weight * invstd * dout                  (mean, invstd are constants)
        training: dx = weight * invstd * (dout - S / M - (x - mean) * invstd^2 * T / M)
                  (the extra terms differentiate mean and var, which depend on x)

    Args:
        dout: same shape and dtype as the forward output.
        cache: from ``batch_norm_forward``.
        dx (keyword): None, or a C-contiguous array of x's shape and dtype to write dx into.
            ``dx=dout`` computes dx in place over dout: for a caller that owns dout and does
            not read it again (dx is elementwise in dout once the per-channel sums are taken).
        runner (keyword): as in the forward.

    Returns:
        dx (shape of x), dweight (C,) and dbias (C,); dweight and dbias are None when the
        forward had no weight / bias.
    """
    _check_cache(_BWD, cache, None)
    dout = _checks.dout_like(_BWD, dout, cache.shape, cache.x3.dtype)
    return _backward(dout, cache, _check_dx(_BWD, dx, dout, cache), runner or SERIAL)


def batch_norm_act_backward(dout, cache, *, dx=None, runner=None):
    """Gradients of ``batch_norm_act_forward``: returns ``(dx, dweight, dbias)``.

    Differentiates its two steps in reverse: the activation passes ``dout`` where the output is
    positive (and below 6 for ReLU6) and blocks it elsewhere, as ``relu_backward`` does; what
    passes goes through ``batch_norm_backward``'s formula. Both happen in the same two passes.
    Keywords ``dx`` (``dx=dout``: in place) and ``runner`` as in :func:`batch_norm_backward`.
    """
    op = "batch_norm_act_backward"
    _check_cache(op, cache, ACTIVATIONS)
    dout = _checks.dout_like(op, dout, cache.shape, cache.x3.dtype)
    return _backward(dout, cache, _check_dx(op, dx, dout, cache), runner or SERIAL)


def _check_dx(op, dx, dout, cache):
    """``dx``: None, dout itself (C-contiguous, writeable: in place), or a separate array."""
    if dx is not None and dx is dout:
        if not (dout.flags.c_contiguous and dout.flags.writeable):
            raise ValueError(f"{op}: dx=dout (in place) needs a C-contiguous, writeable dout")
        return dx
    return _checks.out_array(op, "dx", dx, cache.shape, cache.x3.dtype, dout, cache.x3, cache.out3)


def _check_cache(op, cache, acts):
    """The cache must come from the matching forward (plain BN: act None; fused: act set)."""
    ok = isinstance(cache, BatchNormCache) and (
        cache.act is None if acts is None else cache.act in acts
    )
    if not ok:
        fwd = "batch_norm_forward" if acts is None else "batch_norm_act_forward"
        if acts is not None and None in acts:
            fwd = "batch_norm_forward or batch_norm_act_forward"
        raise TypeError(
            f"{op}: cache must be the cache returned by {fwd}, got {_checks.describe(cache)}"
        )


def _backward(dout, cache, dx, runner):
    """batch_norm_backward / batch_norm_act_backward on a checked dout and dx (None, a separate
    array, or dout itself: in place)."""
    x3 = cache.x3
    d3 = np.ascontiguousarray(dout).reshape(x3.shape)  # (N, C, L)
    if dx is not None and dx is dout:
        dx = d3  # in place
    else:
        dx = np.empty_like(x3) if dx is None else dx.reshape(x3.shape)  # a view of dx
    if K._is_flat(x3):
        S, T = _backward_flat(d3, cache, dx, runner)
    else:
        S, T = _backward_rows(d3, cache, dx, runner)
    dt = x3.dtype
    dweight = (T * cache.invstd).astype(dt) if cache.has_weight else None
    dbias = S.astype(dt) if cache.has_bias else None
    return dx.reshape(cache.shape), dweight, dbias


def _backward_rows(d3, cache, dx, runner):
    """Planes of at least ``K.FLAT_MAX_L`` pixels: ``K.backward_channels`` on ranges of channels
    split by ``runner`` (sums and dx in one call; ``dx is d3``: in place). Returns the
    per-channel sums S = sum(grad), T = sum(grad * (x - mean)), (C,) float64 each."""
    x3, c = cache.x3, cache
    N, C, L = x3.shape
    S, T = np.empty(C), np.empty(C)
    code = ACT_CODES[c.act]

    def channels(lo, hi):
        K.backward_channels(d3, x3, c.mean, c.w, c.invstd, c.training, S, T, dx, code,
                            c.scale, c.shift, lo, hi)  # fmt: skip

    runner.map(channels, C, N * L, caller_lead=CALLER_LEAD_BACKWARD)
    return S, T


def _backward_flat(d3, cache, dx, runner):
    """Planes of fewer than ``K.FLAT_MAX_L`` pixels: the sums (split over slices of the batch
    and added), then dx (``dx is d3``: in place). Returns S, T as :func:`_backward_rows`."""
    x3, w, has_weight, has_bias, mean, invstd, training, shape, act, out3 = cache[:10]
    if act is not None and out3 is None:  # not written (or let go): its zeros are the mask
        out3 = np.empty_like(x3)
        _apply(x3, cache.scale, cache.shift, act, out3, runner, training)
    inplace = dx is d3
    six = act == "relu6"

    def sums(lo, hi):  # (C,), (C,) float64 over a slice of the batch
        if act is None:
            return K.grad_sums(d3[lo:hi], x3[lo:hi], mean)
        return K.grad_sums_act(d3[lo:hi], out3[lo:hi], x3[lo:hi], mean, six)  # what act passes

    per_image = x3.shape[1] * x3.shape[2]
    parts = runner.map(sums, x3.shape[0], per_image)  # [(S, T) of each slice]
    S, T = parts[0] if len(parts) == 1 else (sum(p) for p in zip(*parts))
    M = x3.shape[0] * x3.shape[2]
    k, a, b = K.backward_coefficients(w, invstd, S, T, M, training)  # (C,) float64 each

    def images(lo, hi):  # float64 coefficients: the terms nearly cancel
        d, xs, o = d3[lo:hi], x3[lo:hi], None if out3 is None else out3[lo:hi]
        if inplace:  # d3 and dx are the same memory: the in-place kernels (kernels/batchnorm)
            if act is None:
                K.train_dx_inplace(d, xs, mean, k, a, b)
            else:
                K.train_dx_act_inplace(d, o, xs, mean, k, a, b, six)
        elif act is None:
            K.train_dx(d, xs, mean, k, a, b, dx[lo:hi])
        else:
            K.train_dx_act(d, o, xs, mean, k, a, b, dx[lo:hi], six)

    runner.map(images, x3.shape[0], per_image)
    return S, T
