"""Depthwise 3x3 kernels tuned for particular shapes: the variants of ``kernels/conv_depthwise.py``.

Each kernel here computes exactly what its readable counterpart in ``kernels/conv_depthwise.py``
computes (and what ``conv2d_forward_naive`` computes), on a narrower set of shapes where it was
measured faster. Which one runs is decided by the table in ``npmobilenet.kernels.tuned``; each
kernel's docstring says which shapes it accepts. Signatures match the readable kernels:

* forward: ``kernel(x, w, out, sh, sw, pt, pl)``, writes out (N, K, OH, OW) (old contents
  ignored);
* input gradient: ``kernel(dout, w_flipped, dx, sh, sw, pt, pl)``, adds into dx (N, C, H, W);
* weight gradient: ``kernel(dout, x, dweight, sh, sw, pt, pl)``, adds into dweight (K, 1, 3, 3);
* both gradients: ``kernel(dout, x, w, dx, dweight, sh, sw, pt, pl)``, for K == C only:
  *writes* dx (every element, so the caller need not zero it) and adds into dweight.

The ``_affine`` twins of the kernels a training step runs read, instead of x, the output of the
batch norm and activation before the convolution, computed while they copy their input:
``z = act(y * scale + shift)``, never written to memory. They take y where the plain kernel
takes x, and three more arguments: ``kernel(y, w, out, sh, sw, pt, pl, scale, shift, act)``,
``kernel(dout, y, w, dx, dweight, sh, sw, pt, pl, scale, shift, act)``; scale, shift (C,)
float64, act 0 (none), 1 (ReLU) or 2 (ReLU6). Their results are the plain kernel's on z
(dx: the gradient with respect to z). Each twin and its plain kernel call one compiled loop
nest, which always reads z (the next section).

Shape legend: N batch, C input channels, K = m*C output channels, H, W input size,
OH, OW output size. All kernels are serial and fill arrays the caller allocated (writing or
adding, as listed above).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from npmobilenet.kernels.batchnorm import apply_channels
from npmobilenet.kernels.conv_depthwise import (
    add_tap_sums,
    load_plane,
    load_plane_upsampled,
    make_buffer,
)
from npmobilenet.kernels.conv_direct import (
    add_padded_taps,
    all_finite,
    conv2d_direct_backward_input,
)
from npmobilenet.kernels.fastmath import REASSOC

# --------------------------------------------------------------------------------------------
# The input a loop nest reads. Each compiled loop nest below takes, after the table kernel's
# arguments, ``scale, shift, act`` and reads z = act(x * scale + shift) wherever it reads its
# input, the expression written in its loops: ``v = x.dtype.type(x[i] * scale[c] + shift[c])``
# (float64, rounded to x's dtype), then clamped to act's bounds [lo, hi] (``_LO``, ``_HI``)
# as ``batchnorm._range_apply`` does (NaN passes, -0.0 stays -0.0, an inf is clamped like any
# value). A plain kernel passes ``identity(C)``: scale 1.0 and shift -0.0, for which
# ``x * 1.0 + -0.0`` is x exactly (-0.0, inf and NaN included; a shift of +0.0 would turn -0.0
# into +0.0), and act 0, whose bounds -inf and inf change nothing. So a plain kernel and its
# twin are one compiled specialisation, whichever runs first; the plain kernel pays one
# multiply-add and two compares a copied input value.
# --------------------------------------------------------------------------------------------

_LO, _HI = (-np.inf, 0.0, 0.0), (np.inf, np.inf, 6.0)  # z's bounds by act: none, ReLU, ReLU6


def identity(C):
    """``scale, shift, act`` for which a loop nest reads x itself (C channels): ones, -0.0
    ((C,) float64) and 0 (no activation)."""
    return np.ones(C), np.full(C, -0.0), 0


# --------------------------------------------------------------------------------------------
# Flat planes (stride 1, narrow planes): the whole plane is one long vectorised loop.
# --------------------------------------------------------------------------------------------


@njit(cache=True, nogil=True, inline="always")
def flat_taps(buf):
    """The nine shifted 1-D views of the flattened scratch ``buf`` (rows, cols) that a stride-1
    3x3 correlation reads: tap (i, j) of flat output q is ``taps[3*i + j][q]``, at
    ``q + i*cols + j``. Views starting at 0 keep every index provably non-negative."""
    rows, cols = buf.shape
    f = buf.reshape(rows * cols)
    return (f[0:], f[1:], f[2:], f[cols:], f[cols + 1 :], f[cols + 2 :],
            f[2 * cols :], f[2 * cols + 1 :], f[2 * cols + 2 :])  # fmt: skip


@njit(cache=True, nogil=True, inline="always", fastmath=REASSOC)
def plane3x3_flat(taps, cols, wk, dst, fo):
    """``plane3x3`` at stride 1 as one long loop over the flattened scratch.

    With output and scratch rows of the same length ``cols``, output pixel (oh, ow) is flat
    position q = oh*cols + ow and its tap (i, j) is a constant i*cols + j further on, so the
    whole plane is one vectorised loop into ``fo`` (the columns past OW are junk, dropped when
    adding into dst). On 7x7 planes, rows of 7 would be mostly loop overhead. Same sums, same
    order as ``_add_row``.

    The nine weights sit in registers, so each multiply-add reads one tap. Two output rows per
    pass (rows oh and oh + 1 share two of their three input rows: 12 tap loads for two vectors
    of outputs instead of 18) cannot be one flat loop; as a loop per row pair it measured
    slower on every MobileNet plane: 1.1-1.3x on 112 and 56 columns, 1.8-2.2x on 28, 14 and 7,
    where a loop over one row is mostly its scalar remainder (16 float32 lanes per vector).
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


@njit(cache=True, nogil=True, fastmath=REASSOC)
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
    g00 = g01 = g02 = g10 = g11 = g12 = g20 = g21 = g22 = 0.0  # float64 sums
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
    add_tap_sums(acc, (g00, g01, g02, g10, g11, g12, g20, g21, g22))


@njit(cache=True, nogil=True, fastmath=REASSOC)
def depthwise3x3_backward_weight_flat(dout, x, dweight, sh, sw, pt, pl):
    """``depthwise3x3_backward_weight`` at stride 1 (sh == sw == 1 only), one flat loop a plane.

    Each dout plane is copied into ``dbuf``, a zeroed scratch with the input scratch's row
    length, for ``_flat_weight_grad_stride1``.
    """
    N, C = x.shape[0], x.shape[1]
    m = dweight.shape[0] // C
    OH, OW = dout.shape[2], dout.shape[3]
    buf = make_buffer(OH, OW, 1, 1, x)
    dbuf = np.zeros_like(buf)
    for n in range(N):
        for c in range(C):
            load_plane(x[n, c], buf, pt, pl)
            for k in range(c * m, (c + 1) * m):
                d = dout[n, k]
                for oh in range(OH):
                    for ow in range(OW):
                        dbuf[oh, ow] = d[oh, ow]
                _flat_weight_grad_stride1(buf, dbuf, dweight[k, 0])


@njit(cache=True, nogil=True, fastmath=REASSOC)
def depthwise3x3_backward_input_flat(dout, w_flipped, dx, sh, sw, pt, pl):
    """``depthwise3x3_backward_input`` (any stride) with each dx plane one flat loop.

    The spread-out dout plane is correlated at stride 1 whatever the forward's stride, so the
    flat loop of ``plane3x3_flat`` applies; it is faster on narrow dx planes.
    """
    N, K = dout.shape[0], dout.shape[1]
    m = K // dx.shape[1]
    H, W = dx.shape[2], dx.shape[3]
    buf = make_buffer(H, W, 1, 1, dout)
    taps, cols = flat_taps(buf), buf.shape[1]
    fo = np.empty((H - 1) * cols + W, dtype=dout.dtype)
    for n in range(N):
        for k in range(K):
            load_plane_upsampled(dout[n, k], buf, 2 - pt, 2 - pl, sh, sw)
            plane3x3_flat(taps, cols, w_flipped[k, 0], dx[n, k // m], fo)


@njit(cache=True, nogil=True, fastmath=REASSOC)
def depthwise3x3_backward_input_stride2(dout, w_flipped, dx, sh, sw, pt, pl):
    """``depthwise3x3_backward_input`` at stride 2 (sh == sw == 2 only), skipping zero rows.

    dout (N, K, OH, OW), w_flipped (K, 1, 3, 3) the weight rotated by 180 degrees; adds into
    dx (N, C, H, W). Same spread plane U and same flipped-filter correlation as the general
    kernel, but only every second row of U holds data: of the three U rows dx row h reads,
    either rows h and h+2 (taps i=0 and i=2) or row h+1 alone (i=1) are non-zero, decided by
    the parity of h + pt. Summing only those is 6 or 3 multiply-adds per dx pixel instead of 9.
    Skipping the zero columns as well (sub-pixel parity classes, 9/4 per pixel) was measured
    slower: its results for even and odd columns must be interleaved, and the stride-2 stores
    do not vectorise.
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


# --------------------------------------------------------------------------------------------
# Forward in bands of output rows: the scratch holds only the input rows of one band, so it
# stays in L1, and each output row is written straight into out (one pass over out's memory).
# --------------------------------------------------------------------------------------------

# Elements of a band's scratch buffer (8 KiB in float32): the input rows of a band fit in L1.
BAND_ELEMENTS = 2048


@njit(cache=True, nogil=True, inline="always")
def load_band(src, buf, h0, rows, pl):
    """buf[r, pl + w] = src[h0 + r, w] for r < rows: ``load_plane`` for one band of rows.

    Rows outside the plane are written with zeros; columns outside it are never written, so
    they stay zero (the padding). pl >= 0. The offsets are made provably non-negative (max),
    so the copies vectorise.
    """
    H, W = src.shape
    w_lo, w_hi = max(0, -pl), min(W, buf.shape[1] - pl)
    off = max(0, pl + w_lo)
    for r in range(rows):
        h = h0 + r
        if h < 0 or h >= H:
            for t in range(w_hi - w_lo):
                buf[r, off + t] = 0
        else:
            for t in range(w_hi - w_lo):
                buf[r, off + t] = src[h, w_lo + t]


@njit(cache=True, nogil=True, inline="always", fastmath=REASSOC)
def _write_rows(buf, wk, dst, o0, b):
    """dst[o0 + r, q] = sum_ij wk[i, j] * buf[r + i, q + j] for r < b: ``_add_row`` at stride 1,
    written rather than added (same sums, same order)."""
    ws = (wk[0, 0], wk[0, 1], wk[0, 2], wk[1, 0], wk[1, 1], wk[1, 2], wk[2, 0], wk[2, 1], wk[2, 2])
    for r in range(b):
        oh = o0 + r
        for q in range(dst.shape[1]):
            dst[oh, q] = (
                ws[0] * buf[r, q] + ws[1] * buf[r, q + 1] + ws[2] * buf[r, q + 2]
                + ws[3] * buf[r + 1, q] + ws[4] * buf[r + 1, q + 1] + ws[5] * buf[r + 1, q + 2]
                + ws[6] * buf[r + 2, q] + ws[7] * buf[r + 2, q + 1] + ws[8] * buf[r + 2, q + 2]
            )  # fmt: skip


@njit(cache=True, nogil=True, fastmath=REASSOC)
def depthwise3x3_forward_rows(x, w, out, sh, sw, pt, pl):
    """``depthwise3x3_forward`` at stride 1 (sh == sw == 1 only; pt, pl >= 0), by bands of rows.

    x (N, C, H, W), w (K, 1, 3, 3); writes out (N, K, OH, OW). For each band of B output rows,
    its B + 2 input rows are copied into a zero-bordered scratch of ``BAND_ELEMENTS`` at most
    (``load_band``), and each output row is computed from it and written into out. A scratch
    for the whole plane (50 KB at 112x112) and a flat output added into a zeroed out took about
    four passes over each output plane's memory instead of one.
    """
    N, C = x.shape[0], x.shape[1]
    m = w.shape[0] // C
    OH, OW = out.shape[2], out.shape[3]
    B = max(1, min(OH, BAND_ELEMENTS // (OW + 2) - 2))
    buf = np.zeros((B + 2, OW + 2), dtype=x.dtype)
    for n in range(N):
        for c in range(C):
            src = x[n, c]
            for o0 in range(0, OH, B):
                b = min(B, OH - o0)
                load_band(src, buf, o0 - pt, b + 2, pl)
                for k in range(c * m, (c + 1) * m):
                    _write_rows(buf, w[k, 0], out[n, k], o0, b)


def depthwise3x3_forward_flat_bands(x, w, out, sh, sw, pt, pl):
    """``depthwise3x3_forward`` at stride 1 with an output as wide as the input (sh == sw == 1,
    OW == W): by bands of rows, each band one flat loop
    (``depthwise3x3_forward_flat_bands_loops``) when the left padding is 1, else by
    ``depthwise3x3_forward_rows``. x (N, C, H, W), w (K, 1, 3, 3);
    writes out (N, K, OH, W). A plain function: the compiled kernel takes the arrays flat
    (views; ``npmobilenet.kernels.tuned.compiled`` gives its argument types)."""
    if pl != 1:
        depthwise3x3_forward_rows(x, w, out, sh, sw, pt, pl)
        return
    N, C, H, W = x.shape
    depthwise3x3_forward_flat_bands_loops(x.reshape(-1), w.reshape(-1), out.reshape(-1), N, C, H, W,
                       out.shape[2], pt, *identity(C))  # fmt: skip


def depthwise3x3_forward_flat_bands_affine(y, w, out, sh, sw, pt, pl, scale, shift, act):
    """``depthwise3x3_forward_flat_bands`` of z = act(y * scale + shift), z computed in the
    band copy; with a left padding other than 1, z is written (``batchnorm.apply_channels``)
    and read by ``depthwise3x3_forward_rows``."""
    N, C, H, W = y.shape
    if pl != 1:
        z = np.empty_like(y)
        apply_channels(y.reshape(N, C, H * W), scale, shift, z.reshape(N, C, H * W), act, 0, C)
        depthwise3x3_forward_rows(z, w, out, sh, sw, pt, pl)
        return
    depthwise3x3_forward_flat_bands_loops(y.reshape(-1), w.reshape(-1), out.reshape(-1), N, C, H, W,
                       out.shape[2], pt, scale, shift, act)  # fmt: skip


@njit(cache=True, nogil=True, fastmath=REASSOC)
def depthwise3x3_forward_flat_bands_loops(x, w, out, N, C, H, W, OH, pt, scale, shift, act):
    """The stride-1 depthwise 3x3 forward with padding 1 left and right, on flat arrays: x
    (N*C*H*W,), w (K*9,), out (N*K*OH*W,), the output rows as long as the input's; the input
    read as z (scale, shift, act: ``identity`` for x itself).

    The B + 2 input rows of a band of B output rows are one contiguous run of the plane, copied
    into a flat scratch of rows of W (rows outside the plane zero). With output rows as long as
    the scratch's, tap (i, j) of flat output position q is the constant i*W + j further on, so
    the band is one vectorised loop written straight into out; a side tap of a row's first or
    last column would read the neighbouring row's end, and is taken as the zero border instead
    (``mask``: the products of ``_write_rows``, in its order). Rows of 14 or 7 columns, a loop
    each, are mostly loop overhead and scalar remainders. Flat arguments, unsigned offsets and
    no helper to inline keep its compile time close to the row kernel's (0.61-0.66 s against
    0.51-0.58); on the 112x112 and 56x56 planes it is 10-30% slower than the row kernel.
    """
    zlo, zhi = x.dtype.type(_LO[act]), x.dtype.type(_HI[act])  # z's bounds
    m = w.shape[0] // (9 * C)  # depth multiplier: output channels k of input channel c
    B = max(1, min(OH, BAND_ELEMENTS // W - 2))
    buf = np.zeros((B + 2) * W + 2, dtype=x.dtype)  # from buf[1]; a spare either end
    mask = np.ones((2, B * W), dtype=np.bool_)  # the left and right taps inside the row
    for r in range(B):
        mask[0, r * W] = False
        mask[1, r * W + W - 1] = False
    u, z = np.uint64, x.dtype.type(0)
    one, two, w1, w2 = u(1), u(2), u(W), u(2 * W)
    for n in range(N):
        for c in range(C):
            sc, sf = scale[c], shift[c]
            for o0 in range(0, OH, B):
                b, h0 = min(B, OH - o0), o0 - pt  # h0: the input row of scratch row 0
                lo = min(b + 2, max(0, -h0))  # scratch rows [lo, hi) hold plane rows
                hi = max(lo, min(b + 2, H - h0))
                for t in range(1, 1 + lo * W):
                    buf[t] = 0
                for t in range(1 + hi * W, 1 + (b + 2) * W):
                    buf[t] = 0
                d0, s0 = u(1 + lo * W), u(((n * C + c) * H + h0 + lo) * W)
                for t in range(u((hi - lo) * W)):
                    v = x.dtype.type(x[s0 + t] * sc + sf)
                    v = zlo if v < zlo else v
                    buf[d0 + t] = zhi if v > zhi else v
                for k in range(c * m, (c + 1) * m):
                    ws, o = w[9 * k : 9 * k + 9], u(((n * C * m + k) * OH + o0) * W)
                    for q in range(u(b * W)):
                        left, right = mask[0, q], mask[1, q]
                        out[o + q] = (
                            ws[0] * (buf[q] if left else z) + ws[1] * buf[q + one]
                            + ws[2] * (buf[q + two] if right else z)
                            + ws[3] * (buf[q + w1] if left else z) + ws[4] * buf[q + w1 + one]
                            + ws[5] * (buf[q + w1 + two] if right else z)
                            + ws[6] * (buf[q + w2] if left else z) + ws[7] * buf[q + w2 + one]
                            + ws[8] * (buf[q + w2 + two] if right else z)
                        )  # fmt: skip


# --------------------------------------------------------------------------------------------
# Column stride 2: even and odd columns split into two scratch arrays, so that every tap of
# an output row is a contiguous read (9 multiply-adds per output instead of computing every
# column and keeping every second one).
# --------------------------------------------------------------------------------------------


@njit(cache=True, nogil=True, inline="always")
def load_split_band(src, E, O, h0, rows, pl, k):
    """E[r, t] = padded[h0 + r, 2t], O[r, t] = padded[h0 + r, 2t + 1] for r < rows, the input
    read as z with the channel's coefficients k = (scale, shift, lo, hi).

    padded[h, p] = src[h, p - pl] (pl >= 0); rows outside the plane are written with zeros.
    Columns c0 + 2u and c0 + 2u + 1 (c0 = pl % 2) land at the same t = tb + u of E and O:
    read in pairs, they vectorise as one interleaved load. The columns left over (the first
    when c0 is 1, the last when W - c0 is odd; any after it fall outside the scratch) are
    copied one by one. Positions outside the plane's columns are never written (they stay
    zero). One loop nest: the same copy with a function per row measured 4x slower.
    """
    H, W = src.shape
    c0 = pl % 2
    tb = max(0, (c0 + pl) // 2)
    pairs = max(0, min((W - c0) // 2, E.shape[1] - tb, O.shape[1] - tb))
    cc = max(0, c0)
    sc, sf, lo, hi = k
    for r in range(rows):
        h = h0 + r
        if h < 0 or h >= H:
            E[r, :] = 0
            O[r, :] = 0
            continue
        hh = max(0, h)
        for u in range(pairs):
            E[r, tb + u] = min(max(src.dtype.type(src[hh, cc + 2 * u] * sc + sf), lo), hi)
            O[r, tb + u] = min(max(src.dtype.type(src[hh, cc + 2 * u + 1] * sc + sf), lo), hi)
        t = (pl - 1) // 2
        if c0 == 1 and 0 <= t < O.shape[1]:  # column 0: an odd padded column
            O[r, t] = min(max(src.dtype.type(src[hh, 0] * sc + sf), lo), hi)
        last = c0 + 2 * pairs  # an unpaired last column: even padded column tb + pairs
        if last < W and tb + pairs < E.shape[1]:
            E[r, tb + pairs] = min(max(src.dtype.type(src[hh, last] * sc + sf), lo), hi)


@njit(cache=True, nogil=True, inline="always", fastmath=REASSOC)
def _write_split_rows(E, O, wk, dst, o0, b, sh):
    """dst[o0 + r, q] = sum_ij wk[i, j] * padded[r*sh + i, 2q + j] for r < b, the even columns
    2q, 2q + 2 read from E (at q, q + 1) and the odd ones from O: ``_add_row`` at column
    stride 2, written rather than added (same sums, same order)."""
    ws = (wk[0, 0], wk[0, 1], wk[0, 2], wk[1, 0], wk[1, 1], wk[1, 2], wk[2, 0], wk[2, 1], wk[2, 2])
    for r in range(b):
        oh, e = o0 + r, r * sh
        for q in range(dst.shape[1]):
            dst[oh, q] = (
                ws[0] * E[e, q] + ws[1] * O[e, q] + ws[2] * E[e, q + 1]
                + ws[3] * E[e + 1, q] + ws[4] * O[e + 1, q] + ws[5] * E[e + 1, q + 1]
                + ws[6] * E[e + 2, q] + ws[7] * O[e + 2, q] + ws[8] * E[e + 2, q + 1]
            )  # fmt: skip


def depthwise3x3_forward_split_columns(x, w, out, sh, sw, pt, pl):
    """``depthwise3x3_forward`` at column stride 2 (sw == 2 only, any sh; pt, pl >= 0):
    ``depthwise3x3_forward_split_columns_loops`` on x."""
    depthwise3x3_forward_split_columns_loops(x, w, out, sh, sw, pt, pl, *identity(x.shape[1]))


def depthwise3x3_forward_split_columns_affine(y, w, out, sh, sw, pt, pl, scale, shift, act):
    """``depthwise3x3_forward_split_columns`` of z = act(y * scale + shift), z computed in the
    band split."""
    depthwise3x3_forward_split_columns_loops(y, w, out, sh, sw, pt, pl, scale, shift, act)


@njit(cache=True, nogil=True, fastmath=REASSOC)
def depthwise3x3_forward_split_columns_loops(x, w, out, sh, sw, pt, pl, scale, shift, act):
    """The depthwise 3x3 forward at column stride 2 (sw == 2) of z (scale, shift, act:
    ``identity`` for x itself).

    x (N, C, H, W), w (K, 1, 3, 3); writes out (N, K, OH, OW). By bands of B output rows, as
    ``depthwise3x3_forward_rows``: the band's (B - 1)*sh + 3 input rows are split into their
    even and odd padded columns (``load_split_band``), and each output row is computed from
    them and written into out. Computing every column and keeping every second one did twice
    the multiply-adds; reading every second column does not vectorise.
    """
    N, C = x.shape[0], x.shape[1]
    m = w.shape[0] // C
    OH, OW = out.shape[2], out.shape[3]
    lo, hi = x.dtype.type(_LO[act]), x.dtype.type(_HI[act])  # z's bounds
    B = max(1, min(OH, (BAND_ELEMENTS // (2 * OW + 1) - 3) // sh + 1))
    E = np.zeros(((B - 1) * sh + 3, OW + 1), dtype=x.dtype)  # padded columns 0, 2, ..., 2*OW
    O = np.zeros(((B - 1) * sh + 3, OW), dtype=x.dtype)  # padded columns 1, 3, ..., 2*OW - 1
    for n in range(N):
        for c in range(C):
            src, kc = x[n, c], (scale[c], shift[c], lo, hi)
            for o0 in range(0, OH, B):
                b = min(B, OH - o0)
                load_split_band(src, E, O, o0 * sh - pt, (b - 1) * sh + 3, pl, kc)
                for k in range(c * m, (c + 1) * m):
                    _write_split_rows(E, O, w[k, 0], out[n, k], o0, b, sh)


# --------------------------------------------------------------------------------------------
# Tiny planes (MobileNet's last stages at low resolution: 4x4, 2x2, 1x1): channels innermost.
# Per plane, the plane kernels pay a fixed cost (scratch load, loop set-up) that dwarfs the few
# multiply-adds of a 2x2 plane. These loop over the pixels of one image with the C channels as
# the innermost, contiguous, vectorised loop, on a channels-last copy of the image: the same
# sums for a depth multiplier of 1 (K == C), with the taps added one at a time.
# --------------------------------------------------------------------------------------------


@njit(cache=True, nogil=True, inline="always")
def _to_hwc(src, dst):
    """dst (H, W, C) = src (C, H, W) transposed: one image, channels last. Channels innermost:
    a loop over a tiny plane per channel would be all loop overhead (3-6x slower)."""
    C, H, W = src.shape
    for h in range(H):
        for w in range(W):
            for c in range(C):
                dst[h, w, c] = src[c, h, w]


@njit(cache=True, nogil=True, fastmath=REASSOC)
def depthwise3x3_forward_small(x, w, out, sh, sw, pt, pl):
    """``depthwise3x3_forward`` for K == C only, channels innermost: writes out (N, C, OH, OW).

    x (N, C, H, W), w (C, 1, 3, 3). ``out[n, c, oh, ow] = sum over the taps inside the image of
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
                    out[n, c, oh, ow] = acc[c]
    if not all_finite(w):  # the padded taps skipped above, for IEEE NaN from an inf weight
        add_padded_taps(w, out, H, W, sh, sw, pt, pl, 1, 1, C)


@njit(cache=True, nogil=True, fastmath=REASSOC)
def depthwise3x3_backward_small(dout, x, w, dx, dweight, sh, sw, pt, pl):
    """Both gradients of ``depthwise3x3_forward_small``; writes dx (N, C, H, W) and adds into
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
        for h in range(H):  # dx[n] = dxt transposed back, channels innermost as in _to_hwc
            for w_ in range(W):
                for c in range(C):
                    dx[n, c, h, w_] = dxt[h, w_, c]
    for c in range(C):
        for i in range(3):
            for j in range(3):
                dweight[c, 0, i, j] += dwt[i, j, c]


# --------------------------------------------------------------------------------------------
# Non-finite weights: the input gradient without the padding's zeros.
# --------------------------------------------------------------------------------------------


@njit(cache=True, nogil=True)
def depthwise3x3_backward_input_skip_padding(dout, w_flipped, dx, sh, sw, pt, pl):
    """``depthwise3x3_backward_input`` summing only the taps that read the input, as PyTorch.

    The plane kernels correlate a zero-bordered, zero-spread copy of dout with the flipped
    filter: for a finite weight the zeros add nothing, but an inf or NaN weight turns each into
    NaN (0 * inf), where PyTorch's gradient has none. The generic direct kernel multiplies only
    real (output, tap) pairs, so it gives PyTorch's answer for any weight.
    """
    w = w_flipped[:, :, ::-1, ::-1]  # (K, 1, 3, 3) the forward's weight, a view
    conv2d_direct_backward_input(dout, w, dx, sh, sw, pt, pl, 1, 1, dx.shape[1])


# --------------------------------------------------------------------------------------------
# Stride 1, "same" size: both gradients in one flat loop over a plane, or over the planes of
# several images stacked, in scratch rows as long as the image's.
# --------------------------------------------------------------------------------------------

# Elements of one stacked scratch buffer (two are used, and the flat dx): they stay in L1.
STACK_ELEMENTS = 2048
# Planes of more pixels are taken one image at a time (stacked 28x28 planes were 1.3x slower
# than one at a time, whose dx is written straight into dx).
STACK_MAX_PIXELS = 256
# Positions whose weight-gradient products are summed in registers before the sums are added
# into the channel's running sums: a float32 vector sum of up to 64 products a lane.
SUM_CHUNK = 1024


@njit(cache=True, nogil=True, inline="always")
def column_masks(W, n):
    """(n,) uint8: bit ``e + 2`` of ``m[q]`` is set where column ``q % W + e`` is inside a row
    of W (e = -2 .. 2), for flat positions q of rows of W. One byte for all five: one load a
    position (a byte per mask and tap measured 1.1-1.2x slower on the large planes, masks as
    wide as the data 1.2-1.45x slower still)."""
    m = np.zeros(n, dtype=np.uint8)
    for q in range(n):
        col = q % W
        for e in range(max(0, 2 - col), min(5, W + 2 - col)):
            m[q] |= 1 << e
    return m


@njit(cache=True, nogil=True, inline="always", fastmath=REASSOC)
def _masked_pass(v, xr, d, m, mx, mw, ws, out, acc, n):
    """One flat loop of ``n`` positions q over rows of W without a border, both gradients:
    ``out[q] = sum_ij ws[3*i + j] * v[i][q + j]`` (dx: dout correlated with the flipped filter
    ``ws``) and ``acc[3*i + j] += sum_q d[q] * xr[i][q + j]`` (dW).

    Tap column j of position q lies outside its row where bit ``mx[j]`` (dx) or ``mw[j]`` (dW)
    of ``m[q]`` is 0 (``column_masks``); there the flat index wraps to the neighbouring row.
    Such a column's three dx products are dropped together, and d is taken as zero in its dW
    products, as a zero border would give (the dropped dx products are never added, so an inf
    wrapped in gives no NaN; dW's zero d times an inf in x is NaN, which ``ops.conv`` replaces
    by the readable kernel's sums). The dW products are summed in the input's dtype over
    ``SUM_CHUNK`` positions at a time (vector registers), those sums in float64 over the n
    positions, as the flat kernels' sums. ``mx`` and ``mw`` are bits (uint8), one load a
    position for all six masks.
    """
    v0, v1, v2 = v
    x0, x1, x2 = xr
    a0, a1, a2 = mx
    b0, b1, b2 = mw
    z = out.dtype.type(0)
    h = (0.0,) * 9  # float64 sums of the chunks' sums
    for c0 in range(0, n, SUM_CHUNK):
        s = max(0, c0)  # provably non-negative: no wraparound test, the loop vectorises
        g0 = g1 = g2 = g3 = g4 = g5 = g6 = g7 = g8 = z
        for t in range(min(SUM_CHUNK, n - s)):
            q = s + t
            s0 = ws[0] * v0[q] + ws[3] * v1[q] + ws[6] * v2[q]
            s1 = ws[1] * v0[q + 1] + ws[4] * v1[q + 1] + ws[7] * v2[q + 1]
            s2 = ws[2] * v0[q + 2] + ws[5] * v1[q + 2] + ws[8] * v2[q + 2]
            mq = m[q]
            out[q] = (
                (s0 if mq & a0 != 0 else z) + (s1 if mq & a1 != 0 else z)
                + (s2 if mq & a2 != 0 else z)
            )  # fmt: skip
            dq = d[q]
            d0 = dq if mq & b0 != 0 else z
            d1 = dq if mq & b1 != 0 else z
            d2 = dq if mq & b2 != 0 else z
            g0 += d0 * x0[q]
            g1 += d1 * x0[q + 1]
            g2 += d2 * x0[q + 2]
            g3 += d0 * x1[q]
            g4 += d1 * x1[q + 1]
            g5 += d2 * x1[q + 2]
            g6 += d0 * x2[q]
            g7 += d1 * x2[q + 1]
            g8 += d2 * x2[q + 2]
        h = (h[0] + g0, h[1] + g1, h[2] + g2, h[3] + g3, h[4] + g4,
             h[5] + g5, h[6] + g6, h[7] + g7, h[8] + g8)  # fmt: skip
    for t in range(9):
        acc[t] += h[t]


def depthwise3x3_backward_stacked(dout, x, w, dx, dweight, sh, sw, pt, pl):
    """Both gradients at stride 1 for K == C and an output the input's size (pt, pl <= 2);
    writes dx (N, C, H, W) and adds into dweight (C, 1, 3, 3). dout (N, C, H, W), w (C, 1, 3, 3).

    Channel by channel, the planes of up to g images (one if a plane has more than
    ``STACK_MAX_PIXELS`` pixels) are copied one under the other into two scratch arrays with
    rows of W, each plane with G zero rows above and below (as far as a tap reaches; the rows
    are never written): x's and dout's, a plane each a flat copy. Positions a constant apart stay
    a constant apart across the whole stack, so one loop (``_masked_pass``) computes dx (the
    flipped-filter correlation of dout) and dW for all of them, columns outside a row masked
    rather than bordered (7x7 or 14x14 planes one at a time, or copied row by row into a
    bordered scratch, would be mostly loop overhead). One image's dx is written straight into dx; a
    stack's goes into a scratch (the rows between the planes dropped) and is copied out.

    Two output rows a pass (scratch rows split into even and odd ones, each row followed by
    zeros, so that rows 2p and 2p + 1 are one flat loop reading four rows of each array: 12
    tap loads for two positions instead of 18, no masks) would make the loop alone about 2x
    faster, but the planes then go into the scratch and dx out of it row by row: 8 images, one
    thread, 112x112 and 56x56 would take 1.7-2.0 ms, 28x28 0.87-0.91, 14x14 0.66-0.69 and 7x7
    0.51-0.55, and the kernel would compile 0.1 s longer.
    """
    depthwise3x3_backward_stacked_loops(
        dout, x, w, dx, dweight, sh, sw, pt, pl, *identity(x.shape[1])
    )


def depthwise3x3_backward_stacked_affine(dout, y, w, dx, dweight, sh, sw, pt, pl, scale, shift,
                                         act):  # fmt: skip
    """``depthwise3x3_backward_stacked`` of the convolution of z = act(y * scale + shift), z
    computed in the copy of its planes: dx (N, C, H, W) is the gradient with respect to z."""
    depthwise3x3_backward_stacked_loops(dout, y, w, dx, dweight, sh, sw, pt, pl, scale, shift, act)


@njit(cache=True, nogil=True, fastmath=REASSOC)
def depthwise3x3_backward_stacked_loops(dout, x, w, dx, dweight, sh, sw, pt, pl, scale, shift, act):
    """The loop nest of ``depthwise3x3_backward_stacked``, on z (scale, shift, act:
    ``identity`` for x itself)."""
    lo, hi = x.dtype.type(_LO[act]), x.dtype.type(_HI[act])  # z's bounds
    N, C, H, W = x.shape
    G = max(pt, 2 - pt)  # zero rows above and below a plane
    S = H + G  # scratch rows a plane takes (the next one's zero rows above are its own below)
    g = 1 if H * W > STACK_MAX_PIXELS else max(1, min(N, STACK_ELEMENTS // (S * W)))
    xb = np.zeros((g * S + G + 4, W), dtype=x.dtype)  # spare rows at the end: the masked
    xs, us = xb.reshape(xb.size), np.zeros_like(xb).reshape(xb.size)  # taps of the first
    fo = np.empty(g * S * W, dtype=x.dtype)  # and last positions read 2 elements past them
    m = column_masks(W, g * S * W)
    o = 2 + G * W  # output position 0 (the first plane's first pixel) in xs and us
    v = (us[o + (pt - 2) * W + pl - 2 :], us[o + (pt - 1) * W + pl - 2 :],
         us[o + pt * W + pl - 2 :])  # fmt: skip
    xr = (xs[o - pt * W - pl :], xs[o + (1 - pt) * W - pl :], xs[o + (2 - pt) * W - pl :])
    bit = np.uint8(1)
    mx = (bit << np.uint8(pl), bit << np.uint8(pl + 1), bit << np.uint8(pl + 2))
    mw = (bit << np.uint8(2 - pl), bit << np.uint8(3 - pl), bit << np.uint8(4 - pl))
    xf, df, dxf = x.reshape(x.size), dout.reshape(dout.size), dx.reshape(dx.size)
    acc = np.zeros((C, 9), dtype=x.dtype)  # per channel, summed over all the stacks
    for n0 in range(0, N, g):  # a stack of images, then its channels: the arrays' order
        gl = min(g, N - n0)
        for c in range(C):
            wk, sc, sf = w[c, 0], scale[c], shift[c]  # below: the filter rotated by 180 degrees
            ws = (wk[2, 2], wk[2, 1], wk[2, 0], wk[1, 2], wk[1, 1], wk[1, 0],
                  wk[0, 2], wk[0, 1], wk[0, 0])  # fmt: skip
            for k in range(gl):
                p0, s0 = max(0, ((n0 + k) * C + c) * H * W), max(0, o + k * S * W)
                for t in range(H * W):
                    xs[s0 + t] = min(max(x.dtype.type(xf[p0 + t] * sc + sf), lo), hi)
                    us[s0 + t] = df[p0 + t]
            out = fo if g > 1 else dxf[(n0 * C + c) * H * W :]
            _masked_pass(v, xr, us[o:], m, mx, mw, ws, out, acc[c], ((gl - 1) * S + H) * W)
            for k in range(gl if g > 1 else 0):
                p0, f0 = max(0, ((n0 + k) * C + c) * H * W), max(0, k * S * W)
                for t in range(H * W):
                    dxf[p0 + t] = fo[f0 + t]
    for c in range(C):
        add_tap_sums(dweight[c, 0], acc[c])


# --------------------------------------------------------------------------------------------
# Stride 2: both gradients in one pass over each plane.
# --------------------------------------------------------------------------------------------


@njit(cache=True, nogil=True, inline="always")
def load_plane_phases(src, e, o, pt, pl, cols):
    """Split the zero-padded plane into its four phases (even and odd rows, even and odd
    columns), flattened: e and o (2*R1*cols,), R1 rows of cols per phase, zeroed when allocated.

    padded[R, p] = src[R - pt, p - pl] (pt, pl >= 0). Padded row R goes to row
    ``(R % 2)*R1 + R // 2``: ``e[(a*R1 + r)*cols + t] = padded[2r + a, 2t]`` and o likewise
    holds ``padded[2r + a, 2t + 1]``, so each phase is a contiguous block of R1 rows.
    Positions outside the plane are never written, so they stay zero (the padding). Within a
    row, columns are copied in pairs as ``load_split_band`` does (an interleaved load).
    Offsets into e and o are unsigned, so no index needs a wraparound test.
    """
    H, W = src.shape
    R1 = e.shape[0] // (2 * cols)
    c0 = pl % 2
    tb = max(0, (c0 + pl) // 2)
    pairs = max(0, min((W - c0) // 2, cols - tb))
    cc = max(0, c0)
    for h in range(min(H, 2 * R1 - pt)):
        R = h + pt
        row = np.uint64(((R % 2) * R1 + R // 2) * cols)
        for u in range(pairs):
            e[row + np.uint64(tb + u)] = src[h, cc + 2 * u]
            o[row + np.uint64(tb + u)] = src[h, cc + 2 * u + 1]
        t = (pl - 1) // 2
        if c0 == 1 and 0 <= t < cols:  # column 0: an odd padded column
            o[row + np.uint64(t)] = src[h, 0]
        last = c0 + 2 * pairs  # an unpaired last column: even padded column tb + pairs
        if last < W and tb + pairs < cols:
            e[row + np.uint64(tb + pairs)] = src[h, last]


@njit(cache=True, nogil=True, inline="always")
def load_plane_phases_even(src, e, o, cols, tmp, k):
    """``load_plane_phases`` for pt == pl == 1 and H, W even: the same positions of e and o
    written with the same values, two source rows per pass and whole column pairs; the input
    read as z, k = (scale, shift, lo, hi) the channel's coefficients: each pair of rows of z
    computed into tmp (2, W) in one contiguous loop a row (max, then min: the clamp without a
    branch), then split.

    Source row 2m is padded row 2m + 1 (odd phase row m), source row 2m + 1 padded row 2m + 2
    (even phase row m + 1); column 2t is padded column 2t + 1 (o's column t), column 2t + 1
    padded column 2t + 2 (e's column t + 1). No column is left over, so no scalar tail.
    """
    H, W = src.shape
    R1 = e.shape[0] // (2 * cols)
    one = np.uint64(1)
    sc, sf, lo, hi = k
    for m in range(H // 2):
        ro, re = np.uint64((R1 + m) * cols), np.uint64((m + 1) * cols)
        for r in range(2):  # source rows 2m and 2m + 1
            for t in range(W):
                tmp[r, t] = min(max(src.dtype.type(src[2 * m + r, t] * sc + sf), lo), hi)
        for t in range(W // 2):
            u = np.uint64(t)
            o[ro + u] = tmp[0, 2 * t]
            e[ro + u + one] = tmp[0, 2 * t + 1]
            o[re + u] = tmp[1, 2 * t]
            e[re + u + one] = tmp[1, 2 * t + 1]


@njit(cache=True, nogil=True, inline="always")
def _load_dout(src, d, cols):
    """d (flat, rows of cols) = src (OH, OW) at row 1, column 1; the border is left as is."""
    OH, OW = src.shape
    for oh in range(OH):
        row = np.uint64((oh + 1) * cols + 1)
        for ow in range(OW):
            d[row + np.uint64(ow)] = src[oh, ow]


@njit(cache=True, nogil=True, inline="always", fastmath=REASSOC)
def _weight_grad_phases(e, o, d, n, cols, acc, zero):
    """acc (3, 3) += sum over k < n of d[cols + 1 + k] times the nine taps of flat position k
    in the phases e and o (``load_plane_phases``): the stride-2 weight gradient of one plane
    as one flat loop, the nine sums in the input's precision (``zero`` its zero).

    d: dout flattened with the phases' row length at (1, 1), zero elsewhere. Output pixel
    (oh, ow) is k = oh*cols + ow, and its tap (i, j), padded[2*oh + i, 2*ow + j], is phase
    (i % 2, j % 2) at k + (i // 2)*cols + j // 2: a constant offset, a contiguous read (every
    second column of an unsplit plane would need vector shuffles).
    """
    one, c = np.uint64(1), np.uint64(cols)
    c1, h1 = c + one, np.uint64(e.shape[0] // 2)  # h1: the odd rows' phases
    g0 = g1 = g2 = g3 = g4 = g5 = g6 = g7 = g8 = zero
    for k in range(np.uint64(n)):
        dk = d[k + c1]
        g0 += dk * e[k]
        g1 += dk * o[k]
        g2 += dk * e[k + one]
        g3 += dk * e[k + h1]
        g4 += dk * o[k + h1]
        g5 += dk * e[k + h1 + one]
        g6 += dk * e[k + c]
        g7 += dk * o[k + c]
        g8 += dk * e[k + c1]
    add_tap_sums(acc, (g0, g1, g2, g3, g4, g5, g6, g7, g8))


@njit(cache=True, nogil=True, inline="always", fastmath=REASSOC)
def _input_grad_pairs(d, wk, dst, pt, pl, cols):
    """dst (H, W) = the stride-2 input gradient, written, from d: dout (OH, OW) flattened
    with row length cols at (1, 1), zero elsewhere (D[r, t] = d[r*cols + t]); wk (3, 3) the
    forward's filter.

    Padded position (P, p) = (h + pt, w + pl) receives w[i, j]*dout[(P - i)/2, (p - j)/2]
    over the taps where both divisions are exact: an even row P = 2r takes taps i = 0 (D row
    r + 1) and i = 2 (D row r), an odd one tap i = 1 (D row r + 1; D's zero row 0 stands in
    for the second row, times zero weights); an even column 2t taps j = 0 and 2 (D columns
    t + 1 and t), an odd one tap j = 1 (column t + 1). So each pair of dx columns is 6 or 3
    multiply-adds from two contiguous rows of D, written as a pair (the column pairs of
    ``load_plane_phases``; the columns left over one by one).
    """
    H, W = dst.shape
    c0 = pl % 2
    tb = max(0, (c0 + pl) // 2)
    pairs = max(0, (W - c0) // 2)
    cc = max(0, c0)
    z, one = d[0], np.uint64(1)  # D's zero border: a zero weight in the input's precision
    for h in range(H):
        R = h + pt
        if R % 2 == 0:  # taps i = 0 (row a) and i = 2 (row b)
            a, b = np.uint64((R // 2 + 1) * cols), np.uint64(R // 2 * cols)
            e0, e2, f0, f2, o1, p1 = wk[0, 0], wk[0, 2], wk[2, 0], wk[2, 2], wk[0, 1], wk[2, 1]
        else:  # tap i = 1 (row a)
            a, b = np.uint64((R // 2 + 1) * cols), np.uint64(0)
            e0, e2, f0, f2, o1, p1 = wk[1, 0], wk[1, 2], z, z, wk[1, 1], z
        for u in range(pairs):
            t = np.uint64(tb + u)
            at, at1, bt, bt1 = d[a + t], d[a + t + one], d[b + t], d[b + t + one]
            dst[h, cc + 2 * u] = e0 * at1 + e2 * at + f0 * bt1 + f2 * bt
            dst[h, cc + 2 * u + 1] = o1 * at1 + p1 * bt1
        if c0 == 1:  # column 0: an odd padded column
            t = np.uint64(max(0, (pl - 1) // 2))
            dst[h, 0] = o1 * d[a + t + one] + p1 * d[b + t + one]
        if cc + 2 * pairs < W:  # an unpaired last column: an even padded column
            t = np.uint64(tb + pairs)
            dst[h, W - 1] = (
                e0 * d[a + t + one] + e2 * d[a + t] + f0 * d[b + t + one] + f2 * d[b + t]
            )


@njit(cache=True, nogil=True, inline="always", fastmath=REASSOC)
def _input_grad_even(d, wk, dst, cols):
    """``_input_grad_pairs`` for pt == pl == 1 and H, W even (OH = H/2, OW = W/2): dst (H, W)
    written from d (dout at (1, 1) of rows of cols, zero elsewhere), the same values.

    Source rows 2m and 2m + 1 are padded rows 2m + 1 (odd: tap row 1 of D row m + 1) and
    2m + 2 (even: tap rows 0 and 2 of D rows m + 2 and m + 1); columns 2t and 2t + 1 likewise
    tap column 1 of D column t + 1, and columns 0 and 2 of D columns t + 2 and t + 1. Written
    as two loops over whole column pairs, one per row, without the zero-weight products of the
    odd rows. Each sum is the general kernel's (a, then b products first: LLVM then fuses the
    same products, so the results are bit-identical).
    """
    H, W = dst.shape
    w00, w01, w02 = wk[0, 0], wk[0, 1], wk[0, 2]
    w10, w11, w12 = wk[1, 0], wk[1, 1], wk[1, 2]
    w20, w21, w22 = wk[2, 0], wk[2, 1], wk[2, 2]
    one = np.uint64(1)
    for m in range(H // 2):
        b, a = np.uint64((m + 1) * cols + 1), np.uint64((m + 2) * cols + 1)
        for t in range(W // 2):
            u = np.uint64(t)
            b1, b2 = d[b + u], d[b + u + one]
            dst[2 * m, 2 * t] = w11 * b1
            dst[2 * m, 2 * t + 1] = w10 * b2 + w12 * b1
        for t in range(W // 2):
            u = np.uint64(t)
            a1, a2, b1, b2 = d[a + u], d[a + u + one], d[b + u], d[b + u + one]
            dst[2 * m + 1, 2 * t] = w01 * a1 + w21 * b1
            dst[2 * m + 1, 2 * t + 1] = w00 * a2 + w02 * a1 + w20 * b2 + w22 * b1


@njit(cache=True, nogil=True, fastmath=REASSOC)
def depthwise3x3_backward_stride2(dout, x, w, dx, dweight, sh, sw, pt, pl):
    """Both gradients at stride 2 (sh == sw == 2) for K == C; writes dx (N, C, H, W) and adds
    into dweight (C, 1, 3, 3). dout (N, C, OH, OW), w (C, 1, 3, 3); pt, pl >= 0.

    Per plane, while x and dout are in cache: dout is copied into d, a flat zero-bordered
    scratch whose rows are as long as the phases of the padded x (``load_plane_phases``: even
    and odd rows and columns), in which a stride-2 correlation reads every tap contiguously.
    The weight gradient is one flat loop over them (``_weight_grad_phases``), the input
    gradient pairs of columns from two rows of d (``_input_grad_pairs``), written, so dx
    needs no zeroing (the readable input gradient's spread-out dout would multiply its zeros).
    The weight gradient's loop also multiplies d's zero columns (past OW) by the phases: as in
    the stride-1 kernel, an inf in x can then give NaN in a neighbouring tap's sum (``ops.conv``
    computes a non-finite dW again with the readable kernel).

    Measured and not used: with pl == 1 and W == 2*OW, dx read flat is pairs of (odd, even)
    padded columns, so its input gradient can be one flat loop over the plane (the row's
    parity a select, dout rows copied to the two dx rows that read them). Alone it beats the
    pairs (8 images, one thread: 56x56 0.39 ms against 0.50, 28x28 0.28 against 0.37, 14x14
    0.23 against 0.34), but not after ``load_plane_phases`` in this kernel (whole kernel:
    56x56 2.0-2.1 ms against 1.4-1.6, 28x28 and 14x14 within 7% either way).
    """
    N, C, H, W = x.shape
    OH, OW = dout.shape[2], dout.shape[3]
    cols = OW + 2  # phase column t holds padded column 2t (+ 1); d's last column stays zero
    e = np.zeros(2 * (OH + 1) * cols, dtype=x.dtype)
    o = np.zeros(2 * (OH + 1) * cols, dtype=x.dtype)
    d = np.zeros((OH + 2) * cols, dtype=x.dtype)  # dout at (1, 1)
    n = (OH - 1) * cols + OW  # up to the last output pixel
    for n_ in range(N):
        for c in range(C):
            load_plane_phases(x[n_, c], e, o, pt, pl, cols)
            _load_dout(dout[n_, c], d, cols)
            _weight_grad_phases(e, o, d, n, cols, dweight[c, 0], d[0])
            _input_grad_pairs(d, w[c, 0], dx[n_, c], pt, pl, cols)


def depthwise3x3_backward_stride2_pad1(dout, x, w, dx, dweight, sh, sw, pt, pl):
    """``depthwise3x3_backward_stride2`` for padding 1 at the top and left of an even plane
    whose output is half its size (pt == pl == 1, H == 2*OH, W == 2*OW: MobileNet's stride-2
    layers): the same scratch, weight gradient and results, bit for bit.

    Each pair of input rows and each pair of columns then has the same phases, so x is split
    (``load_plane_phases_even``) and dx written (``_input_grad_even``) two rows a pass, in
    whole column pairs: no scalar column at either end of a row, no row's tap weights chosen
    by its parity, no zero-weight products in the odd rows. One kernel for both cases (a test
    of the padding per plane, or one loop nest per case) compiles 0.4-0.7 s longer. x is read
    as z with ``identity`` coefficients, its rows computed into a scratch before the split, as
    the twin's: 8 images, one thread, cold input, 112x112 input 4.0-4.1 ms, 56x56 1.9-2.0,
    28x28 0.82-0.87, 14x14 0.72 (the split straight from x, a specialisation of its own: 3.4-3.5,
    1.5-1.8, 0.64, 0.57).
    """
    depthwise3x3_backward_stride2_pad1_loops(
        dout, x, w, dx, dweight, sh, sw, pt, pl, *identity(x.shape[1])
    )


def depthwise3x3_backward_stride2_pad1_affine(dout, y, w, dx, dweight, sh, sw, pt, pl, scale,
                                              shift, act):  # fmt: skip
    """``depthwise3x3_backward_stride2_pad1`` of the convolution of z = act(y * scale + shift):
    each pair of rows of z computed from y in one contiguous loop, then split (computed inside
    the split instead, 8 images, one thread: 112x112 input 4.2-4.4 ms against 3.8-3.9); dx
    (N, C, H, W) is the gradient with respect to z."""
    depthwise3x3_backward_stride2_pad1_loops(
        dout, y, w, dx, dweight, sh, sw, pt, pl, scale, shift, act
    )


@njit(cache=True, nogil=True, fastmath=REASSOC)
def depthwise3x3_backward_stride2_pad1_loops(
    dout, x, w, dx, dweight, sh, sw, pt, pl, scale, shift, act
):
    """The loop nest of ``depthwise3x3_backward_stride2_pad1``, on z (scale, shift, act:
    ``identity`` for x itself)."""
    lo, hi = x.dtype.type(_LO[act]), x.dtype.type(_HI[act])  # z's bounds
    N, C, H, W = x.shape
    OH, OW = dout.shape[2], dout.shape[3]
    if pt != 1 or pl != 1 or H != 2 * OH or W != 2 * OW:
        raise ValueError("depthwise3x3_backward_stride2_pad1: padding 1, H == 2*OH, W == 2*OW")
    cols = OW + 2
    e = np.zeros(2 * (OH + 1) * cols, dtype=x.dtype)
    o = np.zeros(2 * (OH + 1) * cols, dtype=x.dtype)
    d = np.zeros((OH + 2) * cols, dtype=x.dtype)
    tmp = np.empty(2 * W, dtype=x.dtype).reshape(2, W)  # two rows of z
    n = (OH - 1) * cols + OW
    for n_ in range(N):
        for c in range(C):
            load_plane_phases_even(x[n_, c], e, o, cols, tmp, (scale[c], shift[c], lo, hi))
            _load_dout(dout[n_, c], d, cols)
            _weight_grad_phases(e, o, d, n, cols, dweight[c, 0], d[0])
            _input_grad_even(d, w[c, 0], dx[n_, c], cols)
