"""Depthwise 3x3 convolution: the readable fast kernels behind ``method="direct"``.

MobileNet spends its non-pointwise time in 3x3 depthwise convolutions (one 3x3 filter per
channel, stride 1 or 2, padding 1). These kernels compute exactly what ``conv2d_forward_naive``
(``kernels/conv_direct.py``) and its gradients compute for weights of shape (K, 1, 3, 3) with
dilation 1 (any stride, any padding, depth multiplier m = K/C allowed), only faster.

How, for one (H, W) input plane and stride (sh, sw):

1. ``load_plane`` copies the plane into a small zero-bordered scratch buffer,
   ``buf[pt + h, pl + w] = x[h, w]``. The border is never written, so it stays zero (the padding)
   and the loops below need no bounds checks at all. The copy is one contiguous pass over the
   plane; the sum then reads it nine times from cache. Every tap is multiplied, padding
   included, so a weight of inf or NaN at a tap that only sees padding gives NaN (0 * inf), as
   im2col and PyTorch do.
2. ``_add_row`` sums all nine taps in one pass over an output row, weights held in scalars:
   ``dst[oh, q] += sum_ij w_ij * buf[oh*sh + i, q*sw + j]``. Each output element is loaded and
   stored once, and LLVM vectorises the loop. It is inlined with ``sw`` a literal 1 or 2, so the
   column stride is a compile-time constant (stride-2 reads become vector shuffles).

Two Numba details matter for speed: every index is provably non-negative (``q*sw + j``), since
a possibly negative index gets a wraparound test that stops vectorisation; and the inner loops
index the arrays directly rather than through per-row views (each view costs reference counting,
which dominates small planes).

Variants of these kernels measured faster on particular shapes (bands of rows, flat loops over
narrow planes, column stride 2, tiny planes) live in ``npmobilenet.kernels.tuned``, behind one
dispatch table that ends with the kernels here.

Shape legend: N batch, C input channels, K = m*C output channels, H, W input size,
OH, OW output size. All kernels are serial and fill arrays the caller allocated: the forward
writes its output (old contents ignored), the gradients add into theirs.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from npmobilenet.kernels.conv_direct import valid_range
from npmobilenet.kernels.fastmath import REASSOC


@njit(cache=True, nogil=True, inline="always")
def make_buffer(OH, OW, sh, sw, like):
    """Zeroed scratch (rows, cols) holding every input position an (OH, OW) output reads."""
    return np.zeros(((OH - 1) * sh + 3, (OW - 1) * sw + 3), dtype=like.dtype)


@njit(cache=True, nogil=True, inline="always")
def load_plane(src, buf, pt, pl):
    """buf[pt + h, pl + w] = src[h, w]: copy a plane into the zero-bordered scratch.

    Positions outside the plane are never written, so they stay zero (the padding). pt and pl
    may be negative (a crop): rows and columns that land outside the buffer are skipped.
    """
    rows, cols = buf.shape
    H, W = src.shape
    w_lo, w_hi = max(0, -pl), min(W, cols - pl)
    for h in range(max(0, -pt), min(H, rows - pt)):
        dst, srow = buf[pt + h, pl + w_lo :], src[h, w_lo:]  # views indexed from 0
        for t in range(w_hi - w_lo):
            dst[t] = srow[t]


@njit(cache=True, nogil=True, inline="always", fastmath=REASSOC)
def _add_row(dst, oh, buf, ih, ws, sw):
    """dst[oh, q] += sum_ij ws[3*i + j] * buf[ih + i, q*sw + j] for every q: one output row."""
    for q in range(dst.shape[1]):
        p = q * sw
        dst[oh, q] += (
            ws[0] * buf[ih, p] + ws[1] * buf[ih, p + 1] + ws[2] * buf[ih, p + 2]
            + ws[3] * buf[ih + 1, p] + ws[4] * buf[ih + 1, p + 1] + ws[5] * buf[ih + 1, p + 2]
            + ws[6] * buf[ih + 2, p] + ws[7] * buf[ih + 2, p + 1] + ws[8] * buf[ih + 2, p + 2]
        )  # fmt: skip


@njit(cache=True, nogil=True, inline="always", fastmath=REASSOC)
def plane3x3(buf, wk, dst, sh, sw):
    """dst (OH, OW) += sum_ij wk[i, j] * buf[oh*sh + i, ow*sw + j] (buf: the padded plane)."""
    ws = (wk[0, 0], wk[0, 1], wk[0, 2], wk[1, 0], wk[1, 1], wk[1, 2], wk[2, 0], wk[2, 1], wk[2, 2])
    for oh in range(dst.shape[0]):
        if sw == 1:
            _add_row(dst, oh, buf, oh * sh, ws, 1)
        elif sw == 2:
            _add_row(dst, oh, buf, oh * sh, ws, 2)
        else:
            _add_row(dst, oh, buf, oh * sh, ws, sw)


@njit(cache=True, nogil=True, fastmath=REASSOC)
def depthwise3x3_forward(x, w, out, sh, sw, pt, pl):
    """Depthwise 3x3 convolution. x (N, C, H, W), w (K, 1, 3, 3), out (N, K, OH, OW).

    Output channel k reads input channel k // m (m = K // C). Writes out (its old contents are
    ignored): each output plane is zeroed, then ``plane3x3`` adds the taps into it while it is
    in cache.
    """
    N, C = x.shape[0], x.shape[1]
    m = w.shape[0] // C
    buf = make_buffer(out.shape[2], out.shape[3], sh, sw, x)
    for n in range(N):
        for c in range(C):
            load_plane(x[n, c], buf, pt, pl)
            for k in range(c * m, (c + 1) * m):
                out[n, k] = 0
                plane3x3(buf, w[k, 0], out[n, k], sh, sw)


@njit(cache=True, nogil=True, inline="always")
def add_tap_sums(acc, g):
    """acc (3, 3) += g, the nine per-tap sums of a weight gradient in row-major order."""
    acc[0, 0] += g[0]
    acc[0, 1] += g[1]
    acc[0, 2] += g[2]
    acc[1, 0] += g[3]
    acc[1, 1] += g[4]
    acc[1, 2] += g[5]
    acc[2, 0] += g[6]
    acc[2, 1] += g[7]
    acc[2, 2] += g[8]


@njit(cache=True, nogil=True, inline="always", fastmath=REASSOC)
def _row_weight_grad(d, oh, buf, ih, acc, sw):
    """acc[i, j] += sum_q d[oh, q] * buf[ih + i, q*sw + j]: one output row's contribution.

    Differentiates ``dst[oh, q] += sum_ij ws[3*i + j] * buf[ih + i, q*sw + j]`` of ``_add_row``
    with respect to the weight: the dot product of the output-gradient row with each tap's row.
    """
    g00 = g01 = g02 = g10 = g11 = g12 = g20 = g21 = g22 = 0.0  # float64 sums
    for q in range(d.shape[1]):
        p, dq = q * sw, d[oh, q]
        g00 += dq * buf[ih, p]
        g01 += dq * buf[ih, p + 1]
        g02 += dq * buf[ih, p + 2]
        g10 += dq * buf[ih + 1, p]
        g11 += dq * buf[ih + 1, p + 1]
        g12 += dq * buf[ih + 1, p + 2]
        g20 += dq * buf[ih + 2, p]
        g21 += dq * buf[ih + 2, p + 1]
        g22 += dq * buf[ih + 2, p + 2]
    add_tap_sums(acc, (g00, g01, g02, g10, g11, g12, g20, g21, g22))


@njit(cache=True, nogil=True, inline="always", fastmath=REASSOC)
def plane3x3_weight_grad(buf, dplane, sh, sw, acc):
    """acc (3, 3) += sum over pixels of dplane[oh, ow] * buf[oh*sh + i, ow*sw + j].

    Column stride 2 is a literal (the stride-2 layers run this kernel; stride 1 runs the tuned
    flat kernel, so a literal-1 copy would only lengthen a first run's compilation)."""
    for oh in range(dplane.shape[0]):
        if sw == 2:
            _row_weight_grad(dplane, oh, buf, oh * sh, acc, 2)
        else:
            _row_weight_grad(dplane, oh, buf, oh * sh, acc, sw)


@njit(cache=True, nogil=True, fastmath=REASSOC)
def depthwise3x3_backward_weight(dout, x, dweight, sh, sw, pt, pl):
    """Weight gradient: adds into dweight (K, 1, 3, 3). dout (N, K, OH, OW), x (N, C, H, W)."""
    N, C = x.shape[0], x.shape[1]
    m = dweight.shape[0] // C
    buf = make_buffer(dout.shape[2], dout.shape[3], sh, sw, x)
    for n in range(N):
        for c in range(C):
            load_plane(x[n, c], buf, pt, pl)
            for k in range(c * m, (c + 1) * m):
                plane3x3_weight_grad(buf, dout[n, k], sh, sw, dweight[k, 0])


@njit(cache=True, nogil=True, inline="always")
def load_plane_upsampled(src, buf, pt, pl, sh, sw):
    """buf[pt + oh*sh, pl + ow*sw] = src[oh, ow]: a plane spread out with sh-1 / sw-1 zeros.

    The zero-stuffed ("dilated") plane that turns a strided convolution's input gradient into a
    stride-1 correlation. Positions between the spread-out values are never written, so they
    stay zero; values that would land outside buf (a crop) are skipped. At stride 1 it is
    ``load_plane``.
    """
    if sh == 1 and sw == 1:  # nothing to spread out: the plain (contiguous) copy
        load_plane(src, buf, pt, pl)
        return
    rows, cols = buf.shape
    ow_lo, ow_hi = valid_range(pl, sw, cols, src.shape[1])  # ow with 0 <= pl + ow*sw < cols
    for oh in range(src.shape[0]):
        row = pt + oh * sh
        if row < 0 or row >= rows or ow_hi == ow_lo:
            continue
        dst, srow = buf[row, pl + ow_lo * sw :], src[oh, ow_lo:ow_hi]
        for t in range(ow_hi - ow_lo):
            dst[t * sw] = srow[t]


@njit(cache=True, nogil=True, fastmath=REASSOC)
def depthwise3x3_backward_input(dout, w_flipped, dx, sh, sw, pt, pl):
    """Input gradient of a depthwise 3x3 convolution; adds into dx (N, C, H, W).

    dout (N, K, OH, OW); w_flipped (K, 1, 3, 3) is the weight rotated by 180 degrees.
    Differentiates the forward ``out[oh, ow] += sum_ij w[i, j] * x[oh*sh - pt + i, ow*sw - pl + j]``
    with respect to x: ``dx[ih, iw] = sum_ij w[i, j] * dout[(ih + pt - i)/sh, (iw + pl - j)/sw]``
    over the taps where the division is exact. Spreading dout out with zeros (``U[oh*sh, ow*sw] =
    dout[oh, ow]``) makes that a stride-1 correlation of U with the flipped filter and padding
    (2 - pt, 2 - pl), which ``plane3x3`` computes.
    """
    N, K = dout.shape[0], dout.shape[1]
    m = K // dx.shape[1]
    buf = make_buffer(dx.shape[2], dx.shape[3], 1, 1, dout)
    for n in range(N):
        for k in range(K):
            load_plane_upsampled(dout[n, k], buf, 2 - pt, 2 - pl, sh, sw)
            plane3x3(buf, w_flipped[k, 0], dx[n, k // m], 1, 1)
