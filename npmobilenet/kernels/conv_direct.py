"""Direct (loop) convolution kernels: forward, input gradient and weight gradient.

Shape legend: N batch, C input channels, K output channels, G groups, Cg = C/G and Kg = K/G
channels per group, H, W input size, OH, OW output size, kH, kW kernel size.

The convolution being computed (PyTorch's cross-correlation), for every output pixel::

    out[n, k, oh, ow] = sum over c < Cg, i < kH, j < kW of
        weight[k, c, i, j] * x[n, g*Cg + c, oh*sh - pt + i*dil_h, ow*sw - pl + j*dil_w]

where g = k // Kg is the group of output channel k, and taps that land outside the input read
the zero padding. Padding is never materialised: each fast kernel works out, per kernel tap,
which output columns read a real input column (``valid_range``) and loops only over those, so
the innermost loop has no bounds checks and runs over contiguous output memory.

Padded taps follow IEEE arithmetic, as im2col and PyTorch do: ``weight * 0`` is 0 for a finite
weight but NaN for an inf or NaN one. Skipping a padded tap is exact only for finite weights, so
the fast forward kernels add ``weight * 0`` at the padded taps (``add_padded_taps``) when, and
only when, the weight holds a non-finite value.

Two versions of each computation live here:

* ``*_naive``: the textbook loops (one output pixel, then every tap, with an ``if`` per tap).
  They are the reference the fast kernels are tested against; read them first.
* the fast kernels (``conv2d_direct_forward`` and friends): the same sums reordered so the
  innermost loop walks one output row. For depthwise convolution (Cg == 1) this is the fast path
  of the whole library.

All kernels are serial (no ``prange``; released from the GIL, so a model's training step runs
them on slices of the batch from its own threads: ``npmobilenet.threads``), write into arrays the
Python wrapper allocated, and accumulate in the dtype of their inputs. ``fastmath`` is limited to
reassociation and fused multiply-add, so NaN and inf still propagate as in plain IEEE arithmetic.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from npmobilenet.kernels.fastmath import REASSOC


@njit(cache=True, nogil=True, inline="always")
def valid_range(offset, stride, size, out_size):
    """Output indices ``o`` in ``[lo, hi)`` for which ``o*stride + offset`` is inside ``[0, size)``.

    ``offset`` is the input position of output 0 for one kernel tap (``i*dil_h - pt``, may be
    negative). Solves ``0 <= o*stride + offset < size`` for integer ``o`` and clips to
    ``[0, out_size)``; always ``0 <= lo <= hi <= out_size``.
    """
    lo = -(offset // stride)  # ceil(-offset / stride)
    hi = -((offset - size) // stride)  # ceil((size - offset) / stride)
    lo = min(max(lo, 0), out_size)  # a tap that never lands inside gives an empty range,
    hi = min(hi, out_size)  # and lo <= out_size keeps "fill [0, lo) with zeros" in bounds
    return lo, max(hi, lo)


@njit(cache=True, nogil=True)
def all_finite(w):
    """Whether every value of the array ``w`` is finite (no inf, no NaN)."""
    for v in w.ravel():
        if not np.isfinite(v):
            return False
    return True


@njit(cache=True, nogil=True)
def add_padded_taps(w, out, H, W, sh, sw, pt, pl, dil_h, dil_w, groups):
    """out[n, k, oh, ow] += w[k, c, i, j] * 0 for every tap that reads the padding.

    w (K, Cg, kH, kW), out (N, K, OH, OW), input size (H, W). Adds nothing for finite weights
    (w * 0 = 0) and NaN where a padded tap has an inf or NaN weight: the IEEE result of the
    taps that the fast kernels skip. Only run when ``all_finite(w)`` is False.
    """
    N, K, OH, OW = out.shape
    _, Cg, kH, kW = w.shape
    for n in range(N):
        for k in range(K):
            for oh in range(OH):
                for ow in range(OW):
                    acc = out[n, k, oh, ow]
                    for c in range(Cg):
                        for i in range(kH):
                            ih = oh * sh - pt + i * dil_h
                            for j in range(kW):
                                iw = ow * sw - pl + j * dil_w
                                if not (0 <= ih < H and 0 <= iw < W):
                                    acc += w[k, c, i, j] * 0
                    out[n, k, oh, ow] = acc


# --------------------------------------------------------------------------------------------
# Naive reference kernels: one output pixel at a time, every tap bounds-checked.
# --------------------------------------------------------------------------------------------


@njit(cache=True, nogil=True)
def conv2d_forward_naive(x, w, out, sh, sw, pt, pl, dil_h, dil_w, groups):
    """Textbook grouped convolution. x (N, C, H, W), w (K, Cg, kH, kW), out (N, K, OH, OW).

    ``out`` must be zero (or hold the bias): the kernel adds into it. Padded taps multiply a
    zero, so an inf or NaN weight there gives NaN (IEEE, as PyTorch).
    """
    N, C, H, W = x.shape
    K, Cg, kH, kW = w.shape
    OH, OW = out.shape[2], out.shape[3]
    Kg = K // groups
    zero = np.zeros(1, dtype=x.dtype)[0]
    for n in range(N):
        for k in range(K):
            g = k // Kg
            for oh in range(OH):
                for ow in range(OW):
                    acc = out[n, k, oh, ow]
                    for c in range(Cg):
                        for i in range(kH):
                            ih = oh * sh - pt + i * dil_h
                            for j in range(kW):
                                iw = ow * sw - pl + j * dil_w
                                v = zero  # the padding
                                if 0 <= ih < H and 0 <= iw < W:
                                    v = x[n, g * Cg + c, ih, iw]
                                acc += w[k, c, i, j] * v
                    out[n, k, oh, ow] = acc


@njit(cache=True, nogil=True)
def conv2d_backward_naive(dout, x, w, dx, dweight, sh, sw, pt, pl, dil_h, dil_w, groups):
    """Textbook gradients of ``conv2d_forward_naive``.

    Adds into dx (N, C, H, W) and dweight (K, Cg, kH, kW). Differentiates
    ``acc += w[k, c, i, j] * x[n, ci, ih, iw]``: dx gets ``w * dout``, dweight gets ``x * dout``.
    """
    N, C, H, W = x.shape
    K, Cg, kH, kW = w.shape
    OH, OW = dout.shape[2], dout.shape[3]
    Kg = K // groups
    for n in range(N):
        for k in range(K):
            g = k // Kg
            for oh in range(OH):
                for ow in range(OW):
                    d = dout[n, k, oh, ow]
                    for c in range(Cg):
                        for i in range(kH):
                            ih = oh * sh - pt + i * dil_h
                            for j in range(kW):
                                iw = ow * sw - pl + j * dil_w
                                if 0 <= ih < H and 0 <= iw < W:
                                    dx[n, g * Cg + c, ih, iw] += w[k, c, i, j] * d
                                    dweight[k, c, i, j] += x[n, g * Cg + c, ih, iw] * d


# --------------------------------------------------------------------------------------------
# Fast direct kernels: innermost loop over one output row, bounds hoisted out of it.
# --------------------------------------------------------------------------------------------


@njit(cache=True, nogil=True, inline="always", fastmath=REASSOC)
def _axpy(o, xs, wv, sw):
    """o[t] += wv * xs[t*sw]: one tap added to a stretch of an output row."""
    for t in range(o.shape[0]):
        o[t] += wv * xs[t * sw]


@njit(cache=True, nogil=True, inline="always", fastmath=REASSOC)
def _axpy_strided(dxs, ds, wv, sw):
    """dxs[t*sw] += wv * ds[t]: the transpose of ``_axpy`` (input gradient of one tap)."""
    for t in range(ds.shape[0]):
        dxs[t * sw] += wv * ds[t]


@njit(cache=True, nogil=True, inline="always", fastmath=REASSOC)
def _dot(ds, xs, sw):
    """sum_t ds[t] * xs[t*sw]: the weight gradient of one tap over a stretch of a row."""
    acc = 0.0  # a float64 sum
    for t in range(ds.shape[0]):
        acc += ds[t] * xs[t * sw]
    return acc


@njit(cache=True, nogil=True, fastmath=REASSOC)
def conv2d_direct_forward(x, w, out, sh, sw, pt, pl, dil_h, dil_w, groups):
    """Grouped convolution, row by row. x (N, C, H, W), w (K, Cg, kH, kW), out (N, K, OH, OW).

    ``out`` must be zero (or hold the bias): the kernel adds into it. For each output row and
    each tap (c, i, j) it adds ``w[k, c, i, j] * (one input row, read every sw-th column)`` to
    the valid stretch of the output row; padded taps are skipped (see ``add_padded_taps``).
    """
    N, C, H, W = x.shape
    K, Cg, kH, kW = w.shape
    OH, OW = out.shape[2], out.shape[3]
    Kg = K // groups
    for n in range(N):
        for k in range(K):
            g = k // Kg
            for c in range(Cg):
                xc = x[n, g * Cg + c]  # (H, W) input plane read by output channel k
                for oh in range(OH):
                    orow = out[n, k, oh]  # (OW,)
                    for i in range(kH):
                        ih = oh * sh - pt + i * dil_h
                        if ih < 0 or ih >= H:
                            continue  # this kernel row lies in the zero padding
                        xrow = xc[ih]  # (W,)
                        for j in range(kW):
                            off = j * dil_w - pl
                            lo, hi = valid_range(off, sw, W, OW)
                            if hi == lo:
                                continue  # this tap reads only padding
                            # views that start at the first valid column: indices t, t*sw >= 0
                            o, xs = orow[lo:hi], xrow[lo * sw + off :]
                            if sw == 1:  # a literal stride lets LLVM vectorise
                                _axpy(o, xs, w[k, c, i, j], 1)
                            else:
                                _axpy(o, xs, w[k, c, i, j], sw)
    if not all_finite(w):
        add_padded_taps(w, out, H, W, sh, sw, pt, pl, dil_h, dil_w, groups)


@njit(cache=True, nogil=True, fastmath=REASSOC)
def conv2d_direct_backward_input(dout, w, dx, sh, sw, pt, pl, dil_h, dil_w, groups):
    """Input gradient. dout (N, K, OH, OW), w (K, Cg, kH, kW); adds into dx (N, C, H, W).

    Differentiates ``orow[ow] += wv * xrow[ow*sw + off]`` of ``conv2d_direct_forward``:
    every input element gets ``wv * dout`` from each output it was read by.
    """
    N, C, H, W = dx.shape
    K, Cg, kH, kW = w.shape
    OH, OW = dout.shape[2], dout.shape[3]
    Kg = K // groups
    for n in range(N):
        for k in range(K):
            g = k // Kg
            for c in range(Cg):
                dxc = dx[n, g * Cg + c]  # (H, W)
                for oh in range(OH):
                    drow = dout[n, k, oh]  # (OW,)
                    for i in range(kH):
                        ih = oh * sh - pt + i * dil_h
                        if ih < 0 or ih >= H:
                            continue
                        dxrow = dxc[ih]  # (W,)
                        for j in range(kW):
                            off = j * dil_w - pl
                            lo, hi = valid_range(off, sw, W, OW)
                            if hi == lo:
                                continue
                            dxs, ds = dxrow[lo * sw + off :], drow[lo:hi]
                            if sw == 1:
                                _axpy_strided(dxs, ds, w[k, c, i, j], 1)
                            else:
                                _axpy_strided(dxs, ds, w[k, c, i, j], sw)


@njit(cache=True, nogil=True, fastmath=REASSOC)
def conv2d_direct_backward_weight(dout, x, dweight, sh, sw, pt, pl, dil_h, dil_w, groups):
    """Weight gradient. dout (N, K, OH, OW), x (N, C, H, W); adds into dweight (K, Cg, kH, kW).

    Differentiates ``orow[ow] += wv * xrow[ow*sw + off]`` of ``conv2d_direct_forward``
    with respect to ``wv``: a dot product of the output-gradient row with the input row.
    """
    N, C, H, W = x.shape
    K, Cg, kH, kW = dweight.shape
    OH, OW = dout.shape[2], dout.shape[3]
    Kg = K // groups
    for n in range(N):
        for k in range(K):
            g = k // Kg
            for c in range(Cg):
                xc = x[n, g * Cg + c]  # (H, W)
                for oh in range(OH):
                    drow = dout[n, k, oh]  # (OW,)
                    for i in range(kH):
                        ih = oh * sh - pt + i * dil_h
                        if ih < 0 or ih >= H:
                            continue
                        xrow = xc[ih]  # (W,)
                        for j in range(kW):
                            off = j * dil_w - pl
                            lo, hi = valid_range(off, sw, W, OW)
                            if hi == lo:
                                continue
                            ds, xs = drow[lo:hi], xrow[lo * sw + off :]
                            if sw == 1:
                                dweight[k, c, i, j] += _dot(ds, xs, 1)
                            else:
                                dweight[k, c, i, j] += _dot(ds, xs, sw)
