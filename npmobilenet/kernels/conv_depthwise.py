"""Depthwise 3x3 convolution kernels: the specialised fast path of ``method="direct"``.

MobileNet spends its non-pointwise time in 3x3 depthwise convolutions (one 3x3 filter per
channel, stride 1 or 2, padding 1). These kernels compute exactly what
``conv2d_direct_forward`` and its gradients compute for weights of shape (K, 1, 3, 3) with
dilation 1 (any stride, any padding, depth multiplier m = K/C allowed), only faster.

How, for one (H, W) input plane and stride (sh, sw):

1. ``load_plane`` copies the plane into a small zero-bordered scratch buffer, split by column
   phase: ``buf[h, r, q] = padded[h, q*sw + r]`` for r < sw. The border stays zero, so the
   loops below need no bounds checks at all (a border/interior split costs more than the
   arithmetic on MobileNet's 7x7 planes). The copy is one pass over the plane; the sum reads it
   nine times from cache.
2. Kernel tap (i, j) of output column q reads ``padded[oh*sh + i, q*sw + j]``, which is
   ``buf[oh*sh + i, j % sw, q + j // sw]``: a unit-stride row even for stride 2.
3. ``_add_row`` sums all nine taps in one pass over an output row, weights held in scalars:
   each output element is loaded and stored once and LLVM vectorises the loop. It is inlined
   with ``sw`` a literal 1 or 2, so the phase and shift of each tap are constants.

Two Numba details matter for speed: every index is provably non-negative (``q + constant``),
since a possibly negative index gets a wraparound test that stops vectorisation; and the inner
loops index the arrays directly instead of taking row views (each view costs reference counting,
which dominates small planes).

Shape legend: N batch, C input channels, K = m*C output channels, H, W input size,
OH, OW output size. All kernels are serial and add into arrays the caller allocated.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from npmobilenet.kernels.conv_direct import _FASTMATH, valid_range


@njit(cache=True)
def make_buffer(OH, OW, sh, sw, like):
    """Zeroed scratch (rows, sw, cols) holding every input position an (OH, OW) output reads."""
    return np.zeros(((OH - 1) * sh + 3, sw, OW + 2 // sw), dtype=like.dtype)


@njit(cache=True, inline="always")
def _load_row(buf, row, srow, pl, sw):
    """buf[row, r, q] = srow[q*sw + r - pl] for every phase r and every q inside srow."""
    for r in range(sw):
        q_lo, q_hi = valid_range(r - pl, sw, srow.shape[0], buf.shape[2])
        dst = buf[row, r, q_lo:q_hi]  # views indexed from 0: no wraparound test, vectorised
        src = srow[q_lo * sw + r - pl :]
        for t in range(q_hi - q_lo):
            dst[t] = src[t * sw]


@njit(cache=True, inline="always")
def _load_row_stride2(buf, row, srow, pl):
    """``_load_row`` for sw == 2: even and odd padded columns filled in one loop.

    Padded column c = pl + w goes to phase c % 2, column c // 2. Reading the input pairwise
    (w, w + 1) lets LLVM vectorise the de-interleave with shuffles.
    """
    W, cols = srow.shape[0], buf.shape[2]
    w0 = max(0, -pl)  # first input column at or right of padded column 0
    if (pl + w0) % 2 == 1:  # it starts an odd column: store it alone
        if w0 < W and (pl + w0) // 2 < cols:
            buf[row, 1, (pl + w0) // 2] = srow[w0]
        w0 += 1
    q0 = (pl + w0) // 2  # pairs (w0 + 2t, w0 + 2t + 1) -> (even, odd) column q0 + t
    npairs = max(0, min((W - w0) // 2, cols - q0))
    even, odd, s = buf[row, 0, q0 : q0 + npairs], buf[row, 1, q0 : q0 + npairs], srow[w0:]
    for t in range(npairs):
        even[t] = s[2 * t]
        odd[t] = s[2 * t + 1]
    w_last = w0 + 2 * npairs  # an unpaired last column lands in the even phase
    if w_last < W and q0 + npairs < cols:
        buf[row, 0, q0 + npairs] = srow[w_last]


@njit(cache=True)
def load_plane(src, buf, pt, pl):
    """Copy the plane src (H, W) into buf so that ``buf[pt + h, r, q]`` = src[h, q*sw + r - pl].

    Positions outside the plane are never written, so they stay zero (the padding). pt and pl
    may be negative (a crop): rows and columns that land outside the buffer are skipped.
    """
    rows, sw = buf.shape[0], buf.shape[1]
    for h in range(max(0, -pt), min(src.shape[0], rows - pt)):
        if sw == 1:
            _load_row(buf, pt + h, src[h], pl, 1)
        elif sw == 2:
            _load_row_stride2(buf, pt + h, src[h], pl)
        else:
            _load_row(buf, pt + h, src[h], pl, sw)


@njit(cache=True, inline="always", fastmath=_FASTMATH)
def _add_row(dst, oh, buf, ih, ws, sw):
    """dst[oh, q] += sum_ij ws[3*i + j] * padded[ih + i, q*sw + j] for every q: one output row."""
    for q in range(dst.shape[1]):
        dst[oh, q] += (
            ws[0] * buf[ih, 0 % sw, q + 0 // sw]
            + ws[1] * buf[ih, 1 % sw, q + 1 // sw]
            + ws[2] * buf[ih, 2 % sw, q + 2 // sw]
            + ws[3] * buf[ih + 1, 0 % sw, q + 0 // sw]
            + ws[4] * buf[ih + 1, 1 % sw, q + 1 // sw]
            + ws[5] * buf[ih + 1, 2 % sw, q + 2 // sw]
            + ws[6] * buf[ih + 2, 0 % sw, q + 0 // sw]
            + ws[7] * buf[ih + 2, 1 % sw, q + 1 // sw]
            + ws[8] * buf[ih + 2, 2 % sw, q + 2 // sw]
        )


@njit(cache=True, fastmath=_FASTMATH)
def plane3x3(buf, wk, dst, sh):
    """dst (OH, OW) += sum_ij wk[i, j] * padded[oh*sh + i, ow*sw + j], padded held in buf."""
    ws = (wk[0, 0], wk[0, 1], wk[0, 2], wk[1, 0], wk[1, 1], wk[1, 2], wk[2, 0], wk[2, 1], wk[2, 2])
    sw = buf.shape[1]
    for oh in range(dst.shape[0]):
        if sw == 1:
            _add_row(dst, oh, buf, oh * sh, ws, 1)
        elif sw == 2:
            _add_row(dst, oh, buf, oh * sh, ws, 2)
        else:
            _add_row(dst, oh, buf, oh * sh, ws, sw)


@njit(cache=True, inline="always", fastmath=_FASTMATH)
def _row_weight_grad(d, oh, buf, ih, acc, sw):
    """acc[i, j] += sum_q d[oh, q] * padded[ih + i, q*sw + j]: one output row's contribution.

    Differentiates ``dst[oh, q] += sum_ij ws[3*i + j] * padded[...]`` of ``_add_row`` with
    respect to the weight: the dot product of the output-gradient row with each tap's row.
    """
    for i in range(3):
        g0 = g1 = g2 = acc[0, 0] * 0
        for q in range(d.shape[1]):
            g0 += d[oh, q] * buf[ih + i, 0 % sw, q + 0 // sw]
            g1 += d[oh, q] * buf[ih + i, 1 % sw, q + 1 // sw]
            g2 += d[oh, q] * buf[ih + i, 2 % sw, q + 2 // sw]
        acc[i, 0] += g0
        acc[i, 1] += g1
        acc[i, 2] += g2


@njit(cache=True, fastmath=_FASTMATH)
def plane3x3_weight_grad(buf, dplane, sh, acc):
    """acc (3, 3) += sum over pixels of dplane[oh, ow] * padded[oh*sh + i, ow*sw + j]."""
    sw = buf.shape[1]
    for oh in range(dplane.shape[0]):
        if sw == 1:
            _row_weight_grad(dplane, oh, buf, oh * sh, acc, 1)
        elif sw == 2:
            _row_weight_grad(dplane, oh, buf, oh * sh, acc, 2)
        else:
            _row_weight_grad(dplane, oh, buf, oh * sh, acc, sw)


@njit(cache=True)
def depthwise3x3_forward(x, w, out, sh, sw, pt, pl):
    """Depthwise 3x3 convolution. x (N, C, H, W), w (K, 1, 3, 3), out (N, K, OH, OW).

    Output channel k reads input channel k // m (m = K // C). ``out`` must hold zeros or the
    bias: the kernel adds into it.
    """
    N, C = x.shape[0], x.shape[1]
    m = w.shape[0] // C
    buf = make_buffer(out.shape[2], out.shape[3], sh, sw, x)
    for n in range(N):
        for c in range(C):
            load_plane(x[n, c], buf, pt, pl)
            for k in range(c * m, (c + 1) * m):
                plane3x3(buf, w[k, 0], out[n, k], sh)


@njit(cache=True)
def depthwise3x3_backward_input(dout, w_flipped, dx, pt, pl):
    """Input gradient of a stride-1 depthwise 3x3 convolution; adds into dx (N, C, H, W).

    dout (N, K, OH, OW); w_flipped (K, 1, 3, 3) is the weight rotated by 180 degrees. With
    stride 1 the forward reads ``x[oh - pt + i, ow - pl + j]``, so
    ``dx[ih, iw] = sum_ij w[i, j] * dout[ih + pt - i, iw + pl - j]``: a forward 3x3
    correlation of dout with the flipped filter and padding (2 - pt, 2 - pl).
    """
    N, K = dout.shape[0], dout.shape[1]
    m = K // dx.shape[1]
    buf = make_buffer(dx.shape[2], dx.shape[3], 1, 1, dout)
    for n in range(N):
        for k in range(K):
            load_plane(dout[n, k], buf, 2 - pt, 2 - pl)
            plane3x3(buf, w_flipped[k, 0], dx[n, k // m], 1)


@njit(cache=True)
def depthwise3x3_backward_weight(dout, x, dweight, sh, sw, pt, pl):
    """Weight gradient: adds into dweight (K, 1, 3, 3). dout (N, K, OH, OW), x (N, C, H, W)."""
    N, C = x.shape[0], x.shape[1]
    m = dweight.shape[0] // C
    buf = make_buffer(dout.shape[2], dout.shape[3], sh, sw, x)
    for n in range(N):
        for c in range(C):
            load_plane(x[n, c], buf, pt, pl)
            for k in range(c * m, (c + 1) * m):
                plane3x3_weight_grad(buf, dout[n, k], sh, dweight[k, 0])
