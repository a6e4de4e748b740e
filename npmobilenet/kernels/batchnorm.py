"""Per-channel batch-norm kernels on a ``(N, C, L)`` view (L = product of the spatial dims).

Each fast ``@njit`` kernel has a plain NumPy ``*_naive`` twin with the same signature and result;
tests run both on the same inputs. Sums are accumulated in float64 whatever the input dtype (as
PyTorch's CPU kernels do), so a float32 batch of millions of pixels keeps its precision.

Two walks over the planes. Planes of at least ``FLAT_MAX_L`` pixels (all of MobileNet's at 224)
go to the channel kernels at the end of this module, :func:`forward_channels` and
:func:`backward_channels`: one call per range of channels does both of a direction's passes.
Smaller planes are walked as flat rows by the kernels before them, one call per pass.

The kernels are serial on purpose (``nogil``): a model's training step runs them on ranges of
channels (the channel kernels) or slices of the batch (the flat ones) on a
``npmobilenet.threads.Runner``; see that module.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from npmobilenet.kernels.fastmath import REASSOC

# Planes of fewer pixels than this (MobileNet's last stages at small inputs: 4x4, 2x2, 1x1)
# are walked as one flat row of C*L values per image, with per-position copies of the
# per-channel coefficients and per-position accumulators: a loop over C*L vectorises, while a
# loop over L values per channel is mostly loop overhead (measured at 64 images of 128 channels
# of 2x2 pixels: the backward sums 4x faster flat; at 32 channels of 4x4, float32, the four
# kernels of a training step 30 -> 23 us, 3x3 28 -> 16 us, and 5x5 still faster flat, 8x8
# slower). Larger planes keep their per-channel rows (7x7 and up: a run at 224 never walks flat).
FLAT_MAX_L = 17
# The two walks are separate compiled kernels (the op picks one by the plane size): Numba
# compiles a kernel on its first call, so a run compiles only the walks its planes use (both
# walks in one kernel doubled the compile time of a first training step's batch norm, about
# 4 s). The flat kernels give the same results on planes of any size, only slower on large ones.


def _is_flat(a) -> bool:
    """Whether an (N, C, L) array's planes are walked as flat rows."""
    return a.shape[2] < FLAT_MAX_L


# ``forward_channels``' activation code for "statistics and coefficients only, no output".
NO_OUTPUT = -1


@njit(cache=True, nogil=True, inline="always")
def _flat(a):
    """(N, C, L) C-contiguous -> (N, C*L) view: each image as one row."""
    return a.reshape(a.shape[0], a.shape[1] * a.shape[2])


@njit(cache=True, nogil=True, inline="always")
def _channel_totals(acc, C, L):
    """(C*L,) per-position sums -> (C,) per-channel sums, float64, each added in position
    order (as ``acc.reshape(C, L).sum(axis=1)``, whose Numba version takes about 1 s to compile
    on a cold cache)."""
    out = np.zeros(C)
    for c in range(C):
        for i in range(L):
            out[c] += acc[c * L + i]
    return out


@njit(cache=True, nogil=True, fastmath=REASSOC)
def channel_sums(x):
    """Sum of each channel over images and pixels, float64. x: (N, C, L) -> (C,)."""
    N, C, L = x.shape
    x2, acc = _flat(x), np.zeros(C * L, dtype=np.float64)
    for n in range(N):
        for j in range(C * L):
            acc[j] += x2[n, j]
    return _channel_totals(acc, C, L)


@njit(cache=True, nogil=True, fastmath=REASSOC)
def channel_sq_dev(x, mean):
    """Sum of squared deviations from ``mean`` (C,) of each channel, float64. -> (C,)."""
    N, C, L = x.shape
    x2, mu2, acc = _flat(x), np.repeat(mean, L), np.zeros(C * L, dtype=np.float64)
    for n in range(N):
        for j in range(C * L):
            d = x2[n, j] - mu2[j]
            acc[j] += d * d
    return _channel_totals(acc, C, L)


def channel_stats(x):
    """Mean and biased variance of each channel, float64 accumulation.

    x: (N, C, L) C-contiguous float32/float64. Returns mean (C,), var (C,), both float64.
    Two passes, :func:`channel_sums` and :func:`channel_sq_dev` (a model's training step runs
    each pass on slices of the batch in parallel and adds the slices' sums).
    """
    M = x.shape[0] * x.shape[2]
    mean = channel_sums(x) / M
    return mean, channel_sq_dev(x, mean) / M


def channel_stats_naive(x):
    """NumPy reference for :func:`channel_stats` (same shapes and dtypes)."""
    x64 = x.astype(np.float64)
    return x64.mean(axis=(0, 2)), x64.var(axis=(0, 2))


# The per-channel (C,) float64 arithmetic of a training step, in one kernel call each: a few
# dozen values, where a dozen NumPy calls on (C,) arrays cost more than the arithmetic. No
# fastmath: each value is rounded as the NumPy twin rounds it, bit for bit.


def affine_coefficients(w, b, mean, invstd):
    """``scale = w * invstd`` and ``shift = b - mean * scale``, (C,) float64 each, so that
    ``w * (x - mean) * invstd + b == x * scale + shift``. All arguments (C,) float64. (NumPy:
    called once per recomputed output, where a kernel's compile would cost more.)"""
    scale = w * invstd
    return scale, b - mean * scale


@njit(cache=True, nogil=True)
def forward_coefficients(mean, var, weight, bias, eps):
    """``(w, b, invstd, scale, shift)``, (C,) float64 each: weight and bias as float64,
    ``invstd = 1 / sqrt(var + eps)`` and :func:`affine_coefficients`. mean, var: (C,) float64;
    weight, bias: (C,) of one float dtype."""
    C = mean.shape[0]
    w, b, invstd, scale, shift = np.empty(C), np.empty(C), np.empty(C), np.empty(C), np.empty(C)
    for c in range(C):
        w[c] = weight[c]
        b[c] = bias[c]
        invstd[c] = 1.0 / math.sqrt(var[c] + eps)
        scale[c] = w[c] * invstd[c]  # as affine_coefficients
        shift[c] = b[c] - mean[c] * scale[c]
    return w, b, invstd, scale, shift


def forward_coefficients_naive(mean, var, weight, bias, eps):
    """NumPy reference for :func:`forward_coefficients`."""
    w, b, invstd = weight.astype(np.float64), bias.astype(np.float64), 1.0 / np.sqrt(var + eps)
    return (w, b, invstd, *affine_coefficients(w, b, mean, invstd))


@njit(cache=True, nogil=True)
def update_running(running_mean, running_var, mean, var, keep, momentum, unbias):
    """In place: ``running_mean = keep * running_mean + momentum * mean`` and ``running_var =
    keep * running_var + momentum * var * unbias``. running_*: (C,) float32 or float64; mean,
    var: (C,) float64; keep: ``1 - momentum`` as a scalar of the running arrays' dtype (its
    product with them is rounded in that dtype, as NumPy rounds a Python float times a float32
    array); momentum, unbias (M / (M - 1)): floats."""
    for c in range(mean.shape[0]):
        running_mean[c] = keep * running_mean[c] + momentum * mean[c]
        running_var[c] = keep * running_var[c] + momentum * var[c] * unbias


def update_running_naive(running_mean, running_var, mean, var, keep, momentum, unbias):
    """NumPy reference for :func:`update_running` (``keep`` as a Python float)."""
    running_mean[...] = keep * running_mean + momentum * mean
    running_var[...] = keep * running_var + momentum * var * unbias


@njit(cache=True, nogil=True)
def backward_coefficients(w, invstd, S, T, M, training):
    """``(k, a, b)`` of the backward's ``dx = k * grad - a * (x - mean) - b`` (see
    ``train_dx``), (C,) float64 each: ``k = w * invstd``; training: ``a = k * invstd**2 * T / M``
    and ``b = k * S / M`` (S, T: the per-channel sums of grad and grad * (x - mean) over M
    values); eval: a = b = 0. w, invstd, S, T: (C,) float64."""
    C = w.shape[0]
    k, a, b = np.empty(C), np.empty(C), np.empty(C)
    for c in range(C):
        k[c] = w[c] * invstd[c]
        a[c] = k[c] * (invstd[c] * invstd[c]) * T[c] / M if training else 0.0
        b[c] = k[c] * S[c] / M if training else 0.0
    return k, a, b


def backward_coefficients_naive(w, invstd, S, T, M, training):
    """NumPy reference for :func:`backward_coefficients`."""
    k = w * invstd
    if not training:
        return k, np.zeros_like(k), np.zeros_like(k)
    return k, k * invstd**2 * T / M, k * S / M


def scale_shift(x, scale, shift, out):
    """out[n, c, i] = x[n, c, i] * scale[c] + shift[c].

    x, out: (N, C, L) of one dtype; scale, shift: (C,) float64 (so the large, nearly cancelling
    x * scale and shift of a low-variance channel are added in float64). Writes ``out`` in place.
    """
    _scale_shift_flat(x, scale, shift, out)


@njit(cache=True, nogil=True, fastmath=REASSOC)
def _scale_shift_flat(x, scale, shift, out):
    L = x.shape[2]
    _affine_flat(_flat(x), _flat(out), np.repeat(scale, L), np.repeat(shift, L))


@njit(cache=True, nogil=True, inline="always", fastmath=REASSOC)
def _affine_flat(x2, out2, a, b):
    """out2[n, j] = x2[n, j] * a[j] + b[j]: (N, C*L) rows, per-position (C*L,) coefficients."""
    for n in range(x2.shape[0]):
        for j in range(x2.shape[1]):
            out2[n, j] = x2[n, j] * a[j] + b[j]


def scale_shift_naive(x, scale, shift, out):
    """NumPy reference for :func:`scale_shift`."""
    out[...] = x * scale[None, :, None] + shift[None, :, None]


# The gradient that reaches batch norm at element (n, c, i): dout itself, or, for a BN fused with
# the ReLU / ReLU6 after it, 0 where ``out <= 0`` (or ``out >= 6`` for ReLU6) and dout elsewhere
# (PyTorch's convention: a NaN passes). The mask is a select, so that LLVM vectorises the loops
# using it (a branch made them 2-4x slower), between 0.0 and dout widened to float64 plus 0.0:
# the addition makes the load of dout unconditional, where a select on the loaded value itself
# becomes a masked load, measured 1.6x slower (it turns -0.0 into +0.0, which the float64 sums
# starting at +0.0 do anyway). The flat-row twins read ``out``, the activation's output (and
# ``zero``, a 0 of dout's dtype); both are None where nothing masks dout.


@njit(cache=True, nogil=True, inline="always")
def _grad(dout, out, n, c, i, zero):
    return dout[n, c, i]


# On planes walked as rows (the channel kernels), the mask is taken from x rather than out, so
# the backward reads one array fewer in each of its passes (x is read anyway). The forward's
# output is round(v) with v = x * scale + shift in float64 (``forward_channels``; the same
# expression, compiled alike, gives the same float64 value here), and round(v) <= 0 exactly
# when v <= lo, round(v) >= 6 exactly when v >= hi: for float32, lo = 2**-150 and
# hi = 6 - 2**-22, the midpoints that round (ties to even) to 0 and to 6; for float64 (no
# rounding), 0 and 6 (``mask_bounds``). ``m`` is (scale, shift, lo, hi), scale and shift (C,)
# float64 as in the forward. (Testing x against per-channel thresholds, the x at which v
# crosses lo and hi found once per channel, measured no faster: the select and the widening of
# dout cost, not the multiply-add.)


def mask_bounds(dtype) -> tuple[float, float]:
    """(lo, hi): an affine value v (float64) rounded to ``dtype`` is <= 0 exactly when
    v <= lo and >= 6 exactly when v >= hi."""
    return (2.0**-150, 6.0 - 2.0**-22) if np.dtype(dtype) == np.float32 else (0.0, 6.0)


@njit(cache=True, nogil=True, inline="always")
def _grad_relu(dout, x, n, c, i, m):
    v = x[n, c, i] * m[0][c] + m[1][c]  # the forward's affine value, before rounding
    g = np.float64(dout[n, c, i]) + 0.0
    return 0.0 if v <= m[2] else g


@njit(cache=True, nogil=True, inline="always")
def _grad_relu6(dout, x, n, c, i, m):
    v = x[n, c, i] * m[0][c] + m[1][c]
    g = np.float64(dout[n, c, i]) + 0.0
    return 0.0 if (v <= m[2]) | (v >= m[3]) else g


@njit(cache=True, nogil=True, inline="always")
def _grad_flat(d2, o2, n, j, zero):  # the flat-row twins, on (N, C*L) views
    return d2[n, j]


@njit(cache=True, nogil=True, inline="always")
def _grad_relu_flat(d2, o2, n, j, zero):
    g = np.float64(d2[n, j]) + 0.0
    return 0.0 if o2[n, j] <= 0 else g


@njit(cache=True, nogil=True, inline="always")
def _grad_relu6_flat(d2, o2, n, j, zero):
    o, g = o2[n, j], np.float64(d2[n, j]) + 0.0
    return 0.0 if (o <= 0) | (o >= 6) else g


@njit(cache=True, nogil=True, inline="always", fastmath=REASSOC)
def _grad_sums_flat(grad, dout, out, zero, x, mean):
    """sum(g) and sum(g * (x - mean)) per channel, (C,) float64 each, g = grad(dout, out, ...)
    (flat rows: ``grad`` a ``_flat`` twin; ``out`` must be an array, dout where nothing masks)."""
    N, C, L = x.shape
    d2, o2, x2, mu2 = _flat(dout), _flat(out), _flat(x), np.repeat(mean, L)
    s, t = np.zeros(C * L, dtype=np.float64), np.zeros(C * L, dtype=np.float64)
    for n in range(N):
        for j in range(C * L):
            g = grad(d2, o2, n, j, zero)
            s[j] += g
            t[j] += g * (x2[n, j] - mu2[j])
    return _channel_totals(s, C, L), _channel_totals(t, C, L)


def grad_sums(dout, x, mean):
    """Per-channel sums the backward needs, in one pass: sum(dout) and sum(dout * (x - mean)).

    dout, x: (N, C, L) of one dtype; mean: (C,) float64. Returns two (C,) float64 arrays.
    """
    return _grad_sums_plain_flat(dout, x, mean)


@njit(cache=True, nogil=True, fastmath=REASSOC)
def _grad_sums_plain_flat(dout, x, mean):
    return _grad_sums_flat(_grad_flat, dout, dout, None, x, mean)  # nothing masks dout


def grad_sums_naive(dout, x, mean):
    """NumPy reference for :func:`grad_sums`."""
    d64 = dout.astype(np.float64)
    xmu = x.astype(np.float64) - mean[None, :, None]
    return d64.sum(axis=(0, 2)), (d64 * xmu).sum(axis=(0, 2))


@njit(cache=True, nogil=True, inline="always", fastmath=REASSOC)
def _train_dx_flat(grad, d2, o2, zero, x2, mean, k, a, b, dx2, L):
    """dx2[n, j] = k * g - a * (x2[n, j] - mean) - b on (N, C*L) flat views, with g =
    grad(d2, o2, ...) (a ``_flat`` twin) and per-position copies of the (C,) coefficients. Each
    element is computed in float64 and rounded once: with few values per channel the three
    terms nearly cancel, and float32 arithmetic would lose digits there. In place: pass one
    view as both d2 and dx2 (two views of one array do not vectorise)."""
    k2, a2, m2, b2 = np.repeat(k, L), np.repeat(a, L), np.repeat(mean, L), np.repeat(b, L)
    for n in range(x2.shape[0]):
        for j in range(x2.shape[1]):
            dx2[n, j] = k2[j] * grad(d2, o2, n, j, zero) - a2[j] * (x2[n, j] - m2[j]) - b2[j]


def train_dx(dout, x, mean, k, a, b, dx):
    """dx[n, c, i] = k[c] * dout[n, c, i] - a[c] * (x[n, c, i] - mean[c]) - b[c].

    The training-mode input gradient once the per-channel sums are folded into k, a, b (see
    ``batch_norm_backward``); with a = b = 0 it is the eval-mode gradient k * dout.
    dout, x, dx: (N, C, L) of one dtype; mean, k, a, b: (C,) float64.
    """
    _train_dx_plain_flat(dout, x, mean, k, a, b, dx)


@njit(cache=True, nogil=True, fastmath=REASSOC)
def _train_dx_plain_flat(dout, x, mean, k, a, b, dx):
    d2, L = _flat(dout), x.shape[2]  # nothing masks dout
    _train_dx_flat(_grad_flat, d2, d2, None, _flat(x), mean, k, a, b, _flat(dx), L)


def train_dx_naive(dout, x, mean, k, a, b, dx):
    """NumPy reference for :func:`train_dx`."""
    dx[...] = (
        k[None, :, None] * dout - a[None, :, None] * (x - mean[None, :, None]) - b[None, :, None]
    )


# --------------------------------------------------------------------------------------------
# Batch norm fused with the ReLU / ReLU6 that follows it (MobileNet's every BN): one pass less
# over the activations each way, and no intermediate (N, C, L) array.
# --------------------------------------------------------------------------------------------


def scale_shift_act(x, scale, shift, out, six):
    """out = act(x * scale[c] + shift[c]): :func:`scale_shift` then ReLU (ReLU6 if ``six``).

    x, out: (N, C, L) of one dtype; scale, shift: (C,) float64. The affine value is rounded to
    x's dtype first, exactly as the unfused BN output is, then clamped; a NaN stays NaN (as
    ``np.maximum`` / ``np.clip`` and PyTorch keep it).
    """
    _scale_shift_act_flat(x, scale, shift, out, six)


@njit(cache=True, nogil=True, inline="always")
def _bounds(dtype_of):
    """0 and 6 in the dtype of the array ``dtype_of``."""
    bounds = np.zeros(2, dtype=dtype_of.dtype)
    bounds[1] = 6
    return bounds[0], bounds[1]


@njit(cache=True, nogil=True, fastmath=REASSOC)
def _scale_shift_act_flat(x, scale, shift, out, six):
    L = x.shape[2]
    zero, top = _bounds(out)
    x2, o2, a, b = _flat(x), _flat(out), np.repeat(scale, L), np.repeat(shift, L)
    for n in range(x2.shape[0]):  # (N, C*L) rows: one pass
        for j in range(x2.shape[1]):
            o2[n, j] = x2[n, j] * a[j] + b[j]  # rounded to out's dtype by the store ...
            v = o2[n, j]  # ... and read back, then clamped
            v = zero if v < 0 else v
            o2[n, j] = (top if v > 6 else v) if six else v


def scale_shift_act_naive(x, scale, shift, out, six):
    """NumPy reference for :func:`scale_shift_act`."""
    scale_shift_naive(x, scale, shift, out)
    out[...] = np.clip(out, 0, 6) if six else np.maximum(out, 0)


def grad_sums_act(dout, out, x, mean, six):
    """:func:`grad_sums` of the gradient that reaches BN through the activation.

    That gradient is 0 where ``out <= 0`` (or ``out >= 6`` for ReLU6) and dout elsewhere.
    dout, out, x: (N, C, L), out the activation's output; mean (C,) float64. Returns sum(g)
    and sum(g * (x - mean)), (C,) float64 each.
    """
    return (_grad_sums_relu6_flat if six else _grad_sums_relu_flat)(dout, out, x, mean)


# The backward kernels through an activation come in pairs, ReLU and ReLU6, picked in Python
# rather than by a ``six`` argument: a first run compiles only the one it uses (a kernel taking
# ``six`` compiles both loops, 1.5-2x the time).


@njit(cache=True, nogil=True, fastmath=REASSOC)
def _grad_sums_relu_flat(dout, out, x, mean):
    return _grad_sums_flat(_grad_relu_flat, dout, out, _bounds(dout)[0], x, mean)


@njit(cache=True, nogil=True, fastmath=REASSOC)
def _grad_sums_relu6_flat(dout, out, x, mean):
    return _grad_sums_flat(_grad_relu6_flat, dout, out, _bounds(dout)[0], x, mean)


def _act_grad_naive(dout, out, six):
    blocked = (out <= 0) | (out >= 6) if six else out <= 0
    return np.where(blocked, 0, dout).astype(dout.dtype)


def grad_sums_act_naive(dout, out, x, mean, six):
    """NumPy reference for :func:`grad_sums_act`."""
    return grad_sums_naive(_act_grad_naive(dout, out, six), x, mean)


def train_dx_act(dout, out, x, mean, k, a, b, dx, six):
    """:func:`train_dx` of the gradient through the activation (masked as in ``grad_sums_act``).

    dout, out, x, dx: (N, C, L) of one dtype; mean, k, a, b: (C,) float64. Writes dx.
    """
    (_train_dx_relu6_flat if six else _train_dx_relu_flat)(dout, out, x, mean, k, a, b, dx)


@njit(cache=True, nogil=True, fastmath=REASSOC)
def _train_dx_relu_flat(dout, out, x, mean, k, a, b, dx):
    _train_dx_flat(_grad_relu_flat, _flat(dout), _flat(out), _bounds(dout)[0], _flat(x), mean,
                   k, a, b, _flat(dx), x.shape[2])  # fmt: skip


@njit(cache=True, nogil=True, fastmath=REASSOC)
def _train_dx_relu6_flat(dout, out, x, mean, k, a, b, dx):
    _train_dx_flat(_grad_relu6_flat, _flat(dout), _flat(out), _bounds(dout)[0], _flat(x), mean,
                   k, a, b, _flat(dx), x.shape[2])  # fmt: skip


# In place: dx written over dout, for a backward whose incoming gradient is dead after it.
# Passing the same memory as two arrays (dout, dx) would be correct but slow: LLVM cannot prove
# they are one array, its overlap check fails and it runs the unvectorised loop (measured 14x
# slower); with one array read and written at the same index it vectorises as usual.


def train_dx_inplace(d, x, mean, k, a, b):
    """:func:`train_dx` with ``dout`` = ``dx`` = ``d`` (N, C, L): d becomes dx."""
    _train_dx_inplace_flat(d, x, mean, k, a, b)


@njit(cache=True, nogil=True, fastmath=REASSOC)
def _train_dx_inplace_flat(d, x, mean, k, a, b):
    d2 = _flat(d)
    _train_dx_flat(_grad_flat, d2, d2, None, _flat(x), mean, k, a, b, d2, x.shape[2])


def train_dx_act_inplace(d, out, x, mean, k, a, b, six):
    """:func:`train_dx_act` with ``dout`` = ``dx`` = ``d`` (N, C, L): d becomes dx."""
    kernel = _train_dx_relu6_inplace_flat if six else _train_dx_relu_inplace_flat
    kernel(d, out, x, mean, k, a, b)


@njit(cache=True, nogil=True, fastmath=REASSOC)
def _train_dx_relu_inplace_flat(d, out, x, mean, k, a, b):
    d2 = _flat(d)
    _train_dx_flat(_grad_relu_flat, d2, _flat(out), _bounds(d)[0], _flat(x), mean, k, a, b, d2,
                   x.shape[2])  # fmt: skip


@njit(cache=True, nogil=True, fastmath=REASSOC)
def _train_dx_relu6_inplace_flat(d, out, x, mean, k, a, b):
    d2 = _flat(d)
    _train_dx_flat(_grad_relu6_flat, d2, _flat(out), _bounds(d)[0], _flat(x), mean, k, a, b,
                   d2, x.shape[2])  # fmt: skip


def train_dx_act_naive(dout, out, x, mean, k, a, b, dx, six):
    """NumPy reference for :func:`train_dx_act`."""
    train_dx_naive(_act_grad_naive(dout, out, six), x, mean, k, a, b, dx)


# --------------------------------------------------------------------------------------------
# Channel kernels: planes walked as rows (at least FLAT_MAX_L pixels), one call per range of
# channels over the whole batch, doing both of batch norm's passes (the sums, then the writes).
# A runner gives each thread its own channels: one hand-over of work per op and direction
# instead of one per pass, and a channel's sums are added by one thread in the serial kernels'
# order, with no reduction across threads (the result does not depend on the thread count).
# Each pass walks the whole range, image by image: long contiguous runs (shorter blocks of
# channels, kept in cache for the second pass, measured slower: the first pass's many short
# runs cost more than the second pass's reads from memory; blocks of 2-8 MB per thread, sized
# for the shared L3, were no faster, nor blocks of 256-768 KB sized for the L2, on any plane
# size from 7x7 to 112x112). Planes larger than the caches run at memory speed over two threads
# (at or below ``benchmarks/floor.py``'s streaming time for the same bytes; the forward's
# writes to ``out`` also read its lines first, and non-temporal stores, which skip that read,
# measured slower), so a cheaper element loop helps only the planes that stay in cache. Inside
# a training step the kernels take as long as alone on a cold cache. The element loops stay float64
# (float32 widened): float32 partial sums, even over blocks of 256 values merged in float64
# with each block's own mean taken out first, leave relative errors of about 1e-7 in the
# variance and mean of float32 data with large offsets or an outlier shift (the precision
# test's data), where the float64 sums are accurate to 1e-9 and better.
# --------------------------------------------------------------------------------------------


@njit(cache=True, nogil=True, inline="always")
def _forward_coefficient(c, mean, var, weight, bias, eps, invstd, scale, shift):
    """invstd[c], scale[c], shift[c] of channel c, as :func:`forward_coefficients`."""
    invstd[c] = 1.0 / math.sqrt(var[c] + eps)
    scale[c] = np.float64(weight[c]) * invstd[c]
    shift[c] = np.float64(bias[c]) - mean[c] * scale[c]


@njit(cache=True, nogil=True, inline="always", fastmath=REASSOC)
def _range_stats(x, c, e, one_pass, mean, var, S, Q):
    """mean[c:e], var[c:e] (biased) of channels c:e, float64: sums S of d = x - shift and Q of
    d*d, var = Q/M - (S/M)**2 (0 if rounded below). ``one_pass`` (float32 input): the shift is
    each channel's first value, one of its M values, so (shift - mean)**2 <= M * var and the
    subtraction cancels at most a factor M: the float64 sums lose at most log10(M) of their 16
    digits, far below float32's 7. Else two passes (float64 input: full float64 precision):
    shift 0, then the mean found. S, Q: (C,) float64 rows the sums are kept in (their c:e are
    overwritten): an array allocated here would cost the kernel about 0.15 s of compile time."""
    N, C, L = x.shape
    M = N * L
    for j in range(c, e):
        mean[j] = x[0, j, 0] if one_pass else 0.0  # the shift of the first pass
    for _ in range(1 if one_pass else 2):  # the passes
        for j in range(c, e):
            S[j], Q[j] = 0.0, 0.0
        for n in range(N):  # memory order: images outer
            for j in range(c, e):
                k, s, q, xr = mean[j], 0.0, 0.0, x[n, j]
                for i in range(L):
                    d = xr[i] - k
                    s += d
                    q += d * d
                S[j] += s
                Q[j] += q
        for j in range(c, e):
            d = S[j] / M
            mean[j] += d  # the shift plus the mean deviation from it
            var[j] = max(Q[j] / M - d * d, 0.0)


@njit(cache=True, nogil=True, inline="always", fastmath=REASSOC)
def _range_apply(x, out, c, e, scale, shift, act):
    """out = act(x * scale + shift) on channels c:e (act 0: none, 1: ReLU, 2: ReLU6), the
    affine value rounded to out's dtype first, as ``scale_shift_act``."""
    zero, top = _bounds(out)
    for n in range(x.shape[0]):
        for j in range(c, e):
            a, b, o, xr = scale[j], shift[j], out[n, j], x[n, j]  # o, xr: (L,) rows
            for i in range(x.shape[2]):
                o[i] = xr[i] * a + b
                if act != 0:
                    v = o[i]
                    v = zero if v < 0 else v
                    o[i] = (top if v > 6 else v) if act == 2 else v


@njit(cache=True, nogil=True, fastmath=REASSOC)
def _forward_channels(x, weight, bias, eps, coef, out, act, training, one_pass, c0, c1):
    mean, var, invstd, scale, shift = coef[0], coef[1], coef[2], coef[3], coef[4]
    if training:
        _range_stats(x, c0, c1, one_pass, mean, var, invstd, scale)  # scratch until set below
        for c in range(c0, c1):
            _forward_coefficient(c, mean, var, weight, bias, eps, invstd, scale, shift)
    if act != NO_OUTPUT:
        _range_apply(x, out, c0, c1, scale, shift, act)


def forward_channels(x, weight, bias, eps, coef, out, act, training, c0, c1):
    """Batch norm's forward (``act``: 0 none, 1 ReLU, 2 ReLU6 after it) on channels c0:c1.

    x, out: (N, C, L) of one dtype, L >= FLAT_MAX_L; weight, bias: (C,) of that dtype; coef:
    (5, C) float64, the rows mean, var, invstd, scale, shift. ``training``: the batch
    statistics of the channels are computed (one pass for float32, two for float64;
    ``_range_stats``) with their coefficients (``forward_coefficients``) into coef, else coef's
    scale and shift are used as they are (the output again, after a training forward: this
    kernel is compiled anyway). Writes ``out = act(x * scale + shift)``; ``act`` ``NO_OUTPUT``:
    coef only, out is not written (its reader applies the coefficients itself).
    """
    one_pass = x.dtype == np.float32
    _forward_channels(x, weight, bias, eps, coef, out, act, training, one_pass, c0, c1)


def apply_channels(x, scale, shift, out, act, c0, c1):
    """``out = act(x * scale + shift)`` on channels c0:c1 (as :func:`forward_channels` with
    given coefficients), in a kernel without the statistics: an eval-mode run compiles it in
    about half the time. x, out: (N, C, L) of one dtype; scale, shift: (C,) float64."""
    _apply_channels(x, scale, shift, out, act, c0, c1)


@njit(cache=True, nogil=True, fastmath=REASSOC)
def _apply_channels(x, scale, shift, out, act, c0, c1):
    _range_apply(x, out, c0, c1, scale, shift, act)


def forward_channels_naive(x, weight, bias, eps, coef, out, act, training, c0, c1):
    """NumPy reference for :func:`forward_channels`."""
    xs, s = x[:, c0:c1], slice(c0, c1)
    if training:
        coef[0, s], coef[1, s] = channel_stats_naive(xs)
        _, _, coef[2, s], coef[3, s], coef[4, s] = forward_coefficients_naive(
            coef[0, s], coef[1, s], weight[s], bias[s], eps
        )
    o = np.empty_like(xs)
    scale_shift_naive(xs, coef[3, s], coef[4, s], o)
    out[:, c0:c1] = np.clip(o, 0, 6 if act == 2 else None) if act else o


@njit(cache=True, nogil=True, inline="always", fastmath=REASSOC)
def _backward_channels(grad, dout, m, x, mean, w, invstd, M, training, S, T, dx, c0, c1):
    """S, T (``grad_sums``) of channels c0:c1, then their dx (``train_dx``)."""
    N, C, L = x.shape
    for c in range(c0, c1):
        S[c], T[c] = 0.0, 0.0
    for n in range(N):
        for c in range(c0, c1):
            mu, s, t = mean[c], 0.0, 0.0
            for i in range(L):
                g = grad(dout, x, n, c, i, m)
                s += g
                t += g * (x[n, c, i] - mu)
            S[c] += s
            T[c] += t
    for n in range(N):
        for c in range(c0, c1):
            k = w[c] * invstd[c]  # as backward_coefficients
            a = k * (invstd[c] * invstd[c]) * T[c] / M if training else 0.0
            b = k * S[c] / M if training else 0.0
            mu = mean[c]
            for i in range(L):
                dx[n, c, i] = k * grad(dout, x, n, c, i, m) - a * (x[n, c, i] - mu) - b


def backward_channels(dout, x, mean, w, invstd, training, S, T, dx, act, scale, shift, c0, c1):
    """Batch norm's backward (through ``act``: 0 none, 1 ReLU, 2 ReLU6) on channels c0:c1.

    dout, x, dx: (N, C, L) of one dtype, L >= FLAT_MAX_L; ``dx`` may be dout itself (in
    place). mean, w, invstd, scale, shift: (C,) float64 (the forward's). Writes S and T, (C,)
    float64: ``grad_sums_act`` (``grad_sums`` without act), then dx: ``train_dx_act`` with the
    coefficients ``backward_coefficients`` gives (training or eval).
    """
    M = x.shape[0] * x.shape[2]
    args = (x, mean, w, invstd, M, training, S, T)
    if act == 0:
        if dx is dout:
            _backward_channels_plain_inplace(dout, *args, c0, c1)
        else:
            _backward_channels_plain(dout, *args, dx, c0, c1)
        return
    m = (scale, shift, *mask_bounds(x.dtype))
    if dx is dout:
        kernel = _backward_channels_relu6_inplace if act == 2 else _backward_channels_relu_inplace
        kernel(dout, m, *args, c0, c1)
    else:
        kernel = _backward_channels_relu6 if act == 2 else _backward_channels_relu
        kernel(dout, m, *args, dx, c0, c1)


def backward_channels_naive(dout, x, mean, w, invstd, training, S, T, dx, act, scale, shift,
                            c0, c1):  # fmt: skip
    """NumPy reference for :func:`backward_channels`."""
    s, M = slice(c0, c1), x.shape[0] * x.shape[2]
    xs, g = x[:, s], dout[:, s].copy()  # a copy: dx may be dout
    if act:
        out = np.empty_like(xs)
        scale_shift_act_naive(xs, scale[s], shift[s], out, act == 2)
        g = _act_grad_naive(g, out, act == 2)
    S[s], T[s] = grad_sums_naive(g, xs, mean[s])
    k, a, b = backward_coefficients_naive(w[s], invstd[s], S[s], T[s], M, training)
    d = np.empty_like(xs)
    train_dx_naive(g, xs, mean[s], k, a, b, d)
    dx[:, s] = d


# One compiled kernel per activation, and per in place (dx is dout: one array read and written,
# see train_dx_inplace) or not: a run compiles the ones it uses.


@njit(cache=True, nogil=True, fastmath=REASSOC)
def _backward_channels_plain(dout, x, mean, w, invstd, M, training, S, T, dx, c0, c1):
    _backward_channels(_grad, dout, None, x, mean, w, invstd, M, training, S, T, dx, c0,
                       c1)  # fmt: skip


@njit(cache=True, nogil=True, fastmath=REASSOC)
def _backward_channels_plain_inplace(d, x, mean, w, invstd, M, training, S, T, c0, c1):
    _backward_channels(_grad, d, None, x, mean, w, invstd, M, training, S, T, d, c0, c1)


@njit(cache=True, nogil=True, fastmath=REASSOC)
def _backward_channels_relu(dout, m, x, mean, w, invstd, M, training, S, T, dx, c0, c1):
    _backward_channels(_grad_relu, dout, m, x, mean, w, invstd, M, training, S, T, dx, c0, c1)


@njit(cache=True, nogil=True, fastmath=REASSOC)
def _backward_channels_relu6(dout, m, x, mean, w, invstd, M, training, S, T, dx, c0, c1):
    _backward_channels(_grad_relu6, dout, m, x, mean, w, invstd, M, training, S, T, dx, c0, c1)


@njit(cache=True, nogil=True, fastmath=REASSOC)
def _backward_channels_relu_inplace(d, m, x, mean, w, invstd, M, training, S, T, c0, c1):
    _backward_channels(_grad_relu, d, m, x, mean, w, invstd, M, training, S, T, d, c0, c1)


@njit(cache=True, nogil=True, fastmath=REASSOC)
def _backward_channels_relu6_inplace(d, m, x, mean, w, invstd, M, training, S, T, c0, c1):
    _backward_channels(_grad_relu6, d, m, x, mean, w, invstd, M, training, S, T, d, c0, c1)
