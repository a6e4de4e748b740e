"""Depthwise 3x3 convolution kernels: the specialised fast path of ``method="direct"``.

MobileNet spends its non-pointwise time in 3x3 depthwise convolutions (one 3x3 filter per
channel, stride 1 or 2, padding 1). These kernels compute exactly what
``conv2d_direct_forward`` and its gradients compute for weights of shape (K, 1, 3, 3) with
dilation 1 (any stride, any padding, depth multiplier m = K/C allowed), only faster.

How, for one (H, W) input plane and stride (sh, sw):

1. ``load_plane`` copies the plane into a small zero-bordered scratch buffer,
   ``buf[pt + h, pl + w] = x[h, w]``. The border is never written, so it stays zero (the padding)
   and the loops below need no bounds checks at all: a border/interior split costs more than
   the arithmetic on MobileNet's 7x7 planes. The copy is one contiguous pass over the plane; the
   sum then reads it nine times from cache.
2. ``_add_row`` sums all nine taps in one pass over an output row, weights held in scalars:
   ``dst[oh, q] += sum_ij w_ij * buf[oh*sh + i, q*sw + j]``. Each output element is loaded and
   stored once, and LLVM vectorises the loop. It is inlined with ``sw`` a literal 1 or 2, so the
   column stride is a compile-time constant (stride-2 reads become vector shuffles).

Three variations of step 2, measured faster on MobileNet's shapes: at stride 1 on planes up to
``FLAT_MAX_WIDTH`` wide, the whole plane is one flat loop (``plane3x3_flat``); at column stride
2, each row is computed at every column and every second value kept (``plane3x3_cols2``); and
planes of at most 16 output pixels (the last stages at low resolution) run channels-innermost
kernels on a channels-last copy (``depthwise3x3_*_small``), chosen in ``ops/conv.py``.

Two Numba details matter for speed: every index is provably non-negative (``q*sw + j``), since
a possibly negative index gets a wraparound test that stops vectorisation; and the inner loops
index the arrays directly rather than through per-row views (each view costs reference counting,
which dominates small planes).

Shape legend: N batch, C input channels, K = m*C output channels, H, W input size,
OH, OW output size. All kernels are serial and add into arrays the caller allocated. The
per-plane helpers are inlined into the three entry points (a call per 7x7 plane costs ~15%).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from npmobilenet.kernels.conv_direct import _FASTMATH, valid_range


@njit(cache=True, nogil=True)
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


@njit(cache=True, nogil=True, inline="always", fastmath=_FASTMATH)
def _add_row(dst, oh, buf, ih, ws, sw):
    """dst[oh, q] += sum_ij ws[3*i + j] * buf[ih + i, q*sw + j] for every q: one output row."""
    for q in range(dst.shape[1]):
        p = q * sw
        dst[oh, q] += (
            ws[0] * buf[ih, p] + ws[1] * buf[ih, p + 1] + ws[2] * buf[ih, p + 2]
            + ws[3] * buf[ih + 1, p] + ws[4] * buf[ih + 1, p + 1] + ws[5] * buf[ih + 1, p + 2]
            + ws[6] * buf[ih + 2, p] + ws[7] * buf[ih + 2, p + 1] + ws[8] * buf[ih + 2, p + 2]
        )  # fmt: skip


@njit(cache=True, nogil=True, inline="always", fastmath=_FASTMATH)
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


@njit(cache=True, nogil=True, inline="always", fastmath=_FASTMATH)
def _row_weight_grad(d, oh, buf, ih, acc, sw):
    """acc[i, j] += sum_q d[oh, q] * buf[ih + i, q*sw + j]: one output row's contribution.

    Differentiates ``dst[oh, q] += sum_ij ws[3*i + j] * buf[ih + i, q*sw + j]`` of ``_add_row``
    with respect to the weight: the dot product of the output-gradient row with each tap's row.
    """
    g00 = g01 = g02 = g10 = g11 = g12 = g20 = g21 = g22 = acc[0, 0] * 0
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
    acc[0, 0] += g00
    acc[0, 1] += g01
    acc[0, 2] += g02
    acc[1, 0] += g10
    acc[1, 1] += g11
    acc[1, 2] += g12
    acc[2, 0] += g20
    acc[2, 1] += g21
    acc[2, 2] += g22


@njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _flat_weight_grad_stride1(buf, dbuf, acc):
    """acc[i, j] += sum_q dbuf_flat[q] * buf_flat[q + i*cols + j]: stride 1, whole plane at once.

    dbuf (rows, cols) holds the output gradient with buf's row length, its extra columns zero.
    With equal row lengths, output pixel (oh, ow) and its tap (oh + i, ow + j) are a constant
    ``i*cols + j`` apart in the flattened arrays, so the plane is one long vectorised loop
    (rows of 7 would otherwise be all loop overhead).
    """
    rows, cols = buf.shape
    flat, d = buf.reshape(rows * cols), dbuf.reshape(rows * cols)
    b00, b01, b02 = flat[0:], flat[1:], flat[2:]  # views indexed from 0 (no wraparound test)
    b10, b11, b12 = flat[cols:], flat[cols + 1 :], flat[cols + 2 :]
    b20, b21, b22 = flat[2 * cols :], flat[2 * cols + 1 :], flat[2 * cols + 2 :]
    g00 = g01 = g02 = g10 = g11 = g12 = g20 = g21 = g22 = acc[0, 0] * 0
    for q in range((rows - 2) * cols - 2):  # up to the last real pixel (rows-3, cols-3)
        dq = d[q]
        g00 += dq * b00[q]
        g01 += dq * b01[q]
        g02 += dq * b02[q]
        g10 += dq * b10[q]
        g11 += dq * b11[q]
        g12 += dq * b12[q]
        g20 += dq * b20[q]
        g21 += dq * b21[q]
        g22 += dq * b22[q]
    acc[0, 0] += g00
    acc[0, 1] += g01
    acc[0, 2] += g02
    acc[1, 0] += g10
    acc[1, 1] += g11
    acc[1, 2] += g12
    acc[2, 0] += g20
    acc[2, 1] += g21
    acc[2, 2] += g22


@njit(cache=True, nogil=True, inline="always", fastmath=_FASTMATH)
def plane3x3_weight_grad(buf, dplane, sh, sw, acc, dbuf):
    """acc (3, 3) += sum over pixels of dplane[oh, ow] * buf[oh*sh + i, ow*sw + j].

    dbuf: zeroed scratch shaped like buf, used at stride 1 (see ``_flat_weight_grad_stride1``).
    """
    OH, OW = dplane.shape
    if sh == 1 and sw == 1:
        for oh in range(OH):
            for ow in range(OW):
                dbuf[oh, ow] = dplane[oh, ow]
        _flat_weight_grad_stride1(buf, dbuf, acc)
        return
    for oh in range(OH):
        if sw == 1:
            _row_weight_grad(dplane, oh, buf, oh * sh, acc, 1)
        elif sw == 2:
            _row_weight_grad(dplane, oh, buf, oh * sh, acc, 2)
        else:
            _row_weight_grad(dplane, oh, buf, oh * sh, acc, sw)


@njit(cache=True, nogil=True, inline="always", fastmath=_FASTMATH)
def plane3x3_cols2(buf, wk, dst, sh, row):
    """``plane3x3`` at column stride 2: each output row is computed at every column into
    ``row`` (contiguous reads, vectorised), then every second value is added into dst.

    Twice the multiply-adds, but measured faster than the nine stride-2 reads per output
    (64 channels at 112x112, batch 1: 0.30 ms instead of 0.44 ms). Same sums, same order.
    """
    ws = (wk[0, 0], wk[0, 1], wk[0, 2], wk[1, 0], wk[1, 1], wk[1, 2], wk[2, 0], wk[2, 1], wk[2, 2])
    for oh in range(dst.shape[0]):
        ih = oh * sh
        for p in range(row.shape[0]):
            row[p] = (
                ws[0] * buf[ih, p] + ws[1] * buf[ih, p + 1] + ws[2] * buf[ih, p + 2]
                + ws[3] * buf[ih + 1, p] + ws[4] * buf[ih + 1, p + 1] + ws[5] * buf[ih + 1, p + 2]
                + ws[6] * buf[ih + 2, p] + ws[7] * buf[ih + 2, p + 1] + ws[8] * buf[ih + 2, p + 2]
            )  # fmt: skip
        for q in range(dst.shape[1]):
            dst[oh, q] += row[2 * q]


@njit(cache=True, nogil=True, inline="always")
def flat_taps(buf):
    """The nine shifted 1-D views of the flattened scratch ``buf`` (rows, cols) that a stride-1
    3x3 correlation reads: tap (i, j) of flat output q is ``taps[3*i + j][q]``, at
    ``q + i*cols + j``. Views starting at 0 keep every index provably non-negative."""
    rows, cols = buf.shape
    f = buf.reshape(rows * cols)
    return (f[0:], f[1:], f[2:], f[cols:], f[cols + 1 :], f[cols + 2 :],
            f[2 * cols :], f[2 * cols + 1 :], f[2 * cols + 2 :])  # fmt: skip


@njit(cache=True, nogil=True, inline="always", fastmath=_FASTMATH)
def plane3x3_flat(taps, cols, wk, dst, fo):
    """``plane3x3`` at stride 1 as one long loop over the flattened scratch.

    With output and scratch rows of the same length ``cols``, output pixel (oh, ow) is flat
    position q = oh*cols + ow and its tap (i, j) is a constant i*cols + j further on, so the
    whole plane is one vectorised loop into ``fo`` (the columns past OW are junk, dropped when
    adding into dst). On 7x7 planes rows of 7 are mostly loop overhead: 1024 channels, batch
    32: 3.9 -> 2.6 ms. Same sums, same order as ``_add_row``.
    """
    ws = (wk[0, 0], wk[0, 1], wk[0, 2], wk[1, 0], wk[1, 1], wk[1, 2], wk[2, 0], wk[2, 1], wk[2, 2])
    t0, t1, t2, t3, t4, t5, t6, t7, t8 = taps
    for q in range(fo.shape[0]):
        fo[q] = (
            ws[0] * t0[q] + ws[1] * t1[q] + ws[2] * t2[q]
            + ws[3] * t3[q] + ws[4] * t4[q] + ws[5] * t5[q]
            + ws[6] * t6[q] + ws[7] * t7[q] + ws[8] * t8[q]
        )  # fmt: skip
    for oh in range(dst.shape[0]):
        for ow in range(dst.shape[1]):
            dst[oh, ow] += fo[oh * cols + ow]


# Stride-1 planes at most this wide use ``plane3x3_flat`` (at 56 columns the two are even).
FLAT_MAX_WIDTH = 32


@njit(cache=True, nogil=True, fastmath=_FASTMATH)
def depthwise3x3_forward(x, w, out, sh, sw, pt, pl):
    """Depthwise 3x3 convolution. x (N, C, H, W), w (K, 1, 3, 3), out (N, K, OH, OW).

    Output channel k reads input channel k // m (m = K // C). ``out`` must hold zeros or the
    bias: the kernel adds into it.
    """
    N, C = x.shape[0], x.shape[1]
    m = w.shape[0] // C
    OH, OW = out.shape[2], out.shape[3]
    buf = make_buffer(OH, OW, sh, sw, x)
    row = np.empty(2 * OW - 1, dtype=x.dtype)  # column stride 2: one full-width row
    flat = sh == 1 and sw == 1 and OW <= FLAT_MAX_WIDTH
    taps, cols = flat_taps(buf), buf.shape[1]
    fo = np.empty((OH - 1) * cols + OW, dtype=x.dtype)  # flat output, stride 1
    for n in range(N):
        for c in range(C):
            load_plane(x[n, c], buf, pt, pl)
            for k in range(c * m, (c + 1) * m):
                if flat:
                    plane3x3_flat(taps, cols, w[k, 0], out[n, k], fo)
                elif sw == 2:
                    plane3x3_cols2(buf, w[k, 0], out[n, k], sh, row)
                else:
                    plane3x3(buf, w[k, 0], out[n, k], sh, sw)


@njit(cache=True, nogil=True, inline="always")
def load_plane_upsampled(src, buf, pt, pl, sh, sw):
    """buf[pt + oh*sh, pl + ow*sw] = src[oh, ow]: a plane spread out with sh-1 / sw-1 zeros.

    The zero-stuffed ("dilated") plane that turns a strided convolution's input gradient into a
    stride-1 correlation. Positions between the spread-out values are never written, so they
    stay zero; values that would land outside buf (a crop) are skipped.
    """
    rows, cols = buf.shape
    ow_lo, ow_hi = valid_range(pl, sw, cols, src.shape[1])  # ow with 0 <= pl + ow*sw < cols
    for oh in range(src.shape[0]):
        row = pt + oh * sh
        if row < 0 or row >= rows or ow_hi == ow_lo:
            continue
        dst, srow = buf[row, pl + ow_lo * sw :], src[oh, ow_lo:ow_hi]
        for t in range(ow_hi - ow_lo):
            dst[t * sw] = srow[t]


@njit(cache=True, nogil=True, fastmath=_FASTMATH)
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
    H, W = dx.shape[2], dx.shape[3]
    buf = make_buffer(H, W, 1, 1, dout)
    flat = W <= FLAT_MAX_WIDTH
    taps, cols = flat_taps(buf), buf.shape[1]
    fo = np.empty((H - 1) * cols + W, dtype=dout.dtype)
    for n in range(N):
        for k in range(K):
            if sh == 1 and sw == 1:  # nothing to spread out: the plain (contiguous) copy
                load_plane(dout[n, k], buf, 2 - pt, 2 - pl)
            else:
                load_plane_upsampled(dout[n, k], buf, 2 - pt, 2 - pl, sh, sw)
            if flat:
                plane3x3_flat(taps, cols, w_flipped[k, 0], dx[n, k // m], fo)
            else:
                plane3x3(buf, w_flipped[k, 0], dx[n, k // m], 1, 1)


@njit(cache=True, nogil=True, fastmath=_FASTMATH)
def depthwise3x3_backward_input_stride2(dout, w_flipped, dx, pt, pl):
    """``depthwise3x3_backward_input`` at stride 2 (both axes), skipping the all-zero rows.

    dout (N, K, OH, OW), w_flipped (K, 1, 3, 3) the weight rotated by 180 degrees; adds into
    dx (N, C, H, W). Same spread plane U and same flipped-filter correlation as the general
    kernel, but only every second row of U holds data: of the three U rows dx row h reads,
    either rows h and h+2 (taps i=0 and i=2) or row h+1 alone (i=1) are non-zero, decided by
    the parity of h + pt. Summing only those is 6 or 3 multiply-adds per dx pixel instead of 9
    (batch 16, float32, MobileNet's four stride-2 layers: 20.8 -> 15.3 ms). Skipping the zero
    columns as well (sub-pixel parity classes, 9/4 per pixel) was measured slower: its results
    for even and odd columns must be interleaved, and the stride-2 stores do not vectorise.
    """
    N, K = dout.shape[0], dout.shape[1]
    m = K // dx.shape[1]
    H, W = dx.shape[2], dx.shape[3]
    buf = make_buffer(H, W, 1, 1, dout)
    for n in range(N):
        for k in range(K):
            load_plane_upsampled(dout[n, k], buf, 2 - pt, 2 - pl, 2, 2)
            wk, dst = w_flipped[k, 0], dx[n, k // m]
            ws = (wk[0, 0], wk[0, 1], wk[0, 2], wk[1, 0], wk[1, 1], wk[1, 2],
                  wk[2, 0], wk[2, 1], wk[2, 2])  # fmt: skip
            for h in range(H):
                if (h + pt) % 2 == 0:  # U rows h and h+2 hold data, row h+1 is zero
                    for q in range(W):
                        dst[h, q] += (
                            ws[0] * buf[h, q] + ws[1] * buf[h, q + 1] + ws[2] * buf[h, q + 2]
                            + ws[6] * buf[h + 2, q] + ws[7] * buf[h + 2, q + 1]
                            + ws[8] * buf[h + 2, q + 2]
                        )  # fmt: skip
                else:  # only U row h+1 holds data
                    for q in range(W):
                        dst[h, q] += (
                            ws[3] * buf[h + 1, q] + ws[4] * buf[h + 1, q + 1]
                            + ws[5] * buf[h + 1, q + 2]
                        )  # fmt: skip


@njit(cache=True, nogil=True, fastmath=_FASTMATH)
def depthwise3x3_backward_weight(dout, x, dweight, sh, sw, pt, pl):
    """Weight gradient: adds into dweight (K, 1, 3, 3). dout (N, K, OH, OW), x (N, C, H, W)."""
    N, C = x.shape[0], x.shape[1]
    m = dweight.shape[0] // C
    buf = make_buffer(dout.shape[2], dout.shape[3], sh, sw, x)
    dbuf = np.zeros_like(buf)
    for n in range(N):
        for c in range(C):
            load_plane(x[n, c], buf, pt, pl)
            for k in range(c * m, (c + 1) * m):
                plane3x3_weight_grad(buf, dout[n, k], sh, sw, dweight[k, 0], dbuf)


# --------------------------------------------------------------------------------------------
# Tiny planes (MobileNet's last stages at low resolution: 4x4, 2x2, 1x1): channels innermost.
# Per plane, the kernels above pay a fixed cost (scratch load, loop set-up) that dwarfs the few
# multiply-adds of a 2x2 plane. These loop over the pixels of one image with the C channels as
# the innermost, contiguous, vectorised loop, on a channels-last copy of the image: the same
# sums for a depth multiplier of 1 (K == C), with the taps added one at a time.
# --------------------------------------------------------------------------------------------


@njit(cache=True, nogil=True, inline="always")
def _to_hwc(src, dst):
    """dst (H, W, C) = src (C, H, W) transposed: one image, channels last."""
    C, H, W = src.shape
    for c in range(C):
        for h in range(H):
            for w in range(W):
                dst[h, w, c] = src[c, h, w]


@njit(cache=True, nogil=True, fastmath=_FASTMATH)
def depthwise3x3_forward_small(x, w, out, sh, sw, pt, pl):
    """``depthwise3x3_forward`` for K == C, channels innermost: adds into out (N, C, OH, OW).

    x (N, C, H, W), w (C, 1, 3, 3). ``out[n, c, oh, ow] += sum over the taps inside the image of
    w[c, 0, i, j] * x[n, c, oh*sh - pt + i, ow*sw - pl + j]``.
    """
    N, C, H, W = x.shape
    OH, OW = out.shape[2], out.shape[3]
    wt = np.empty((3, 3, C), dtype=w.dtype)  # (3, 3, C): the taps, channels last
    _to_hwc(w[:, 0], wt)
    xt = np.empty((H, W, C), dtype=x.dtype)
    acc = np.empty(C, dtype=x.dtype)
    for n in range(N):
        _to_hwc(x[n], xt)
        for oh in range(OH):
            for ow in range(OW):
                acc[:] = 0
                for i in range(3):
                    ih = oh * sh - pt + i
                    if ih < 0 or ih >= H:
                        continue
                    for j in range(3):
                        iw = ow * sw - pl + j
                        if iw < 0 or iw >= W:
                            continue
                        for c in range(C):
                            acc[c] += wt[i, j, c] * xt[ih, iw, c]
                for c in range(C):
                    out[n, c, oh, ow] += acc[c]


@njit(cache=True, nogil=True, fastmath=_FASTMATH)
def depthwise3x3_backward_small(dout, x, w, dx, dweight, sh, sw, pt, pl):
    """Both gradients of ``depthwise3x3_forward_small``; adds into dx (N, C, H, W) and
    dweight (C, 1, 3, 3). dout (N, C, OH, OW).

    Differentiates ``acc[c] += wt[i, j, c] * xt[ih, iw, c]``: ``dwt[i, j, c] += dout * xt`` and
    ``dxt[ih, iw, c] += wt[i, j, c] * dout``, over the same in-image taps.
    """
    N, C, H, W = x.shape
    OH, OW = dout.shape[2], dout.shape[3]
    wt = np.empty((3, 3, C), dtype=w.dtype)
    _to_hwc(w[:, 0], wt)
    dwt = np.zeros((3, 3, C), dtype=w.dtype)
    xt = np.empty((H, W, C), dtype=x.dtype)
    dxt = np.empty((H, W, C), dtype=x.dtype)
    dt = np.empty((OH, OW, C), dtype=x.dtype)
    for n in range(N):
        _to_hwc(x[n], xt)
        _to_hwc(dout[n], dt)
        dxt[:] = 0
        for oh in range(OH):
            for ow in range(OW):
                for i in range(3):
                    ih = oh * sh - pt + i
                    if ih < 0 or ih >= H:
                        continue
                    for j in range(3):
                        iw = ow * sw - pl + j
                        if iw < 0 or iw >= W:
                            continue
                        for c in range(C):
                            g = dt[oh, ow, c]
                            dwt[i, j, c] += g * xt[ih, iw, c]
                            dxt[ih, iw, c] += wt[i, j, c] * g
        for c in range(C):
            for h in range(H):
                for w_ in range(W):
                    dx[n, c, h, w_] += dxt[h, w_, c]
    for c in range(C):
        for i in range(3):
            for j in range(3):
                dweight[c, 0, i, j] += dwt[i, j, c]
