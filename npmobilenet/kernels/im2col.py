"""im2col / col2im kernels: turn a convolution into a matrix product.

Shape legend: C input channels, H, W input size, OH, OW output size, kH, kW kernel size,
L = OH*OW output pixels.

``im2col`` copies, for one image, every input value that each output pixel reads into one
column of a matrix ``cols`` of shape (C*kH*kW, L)::

    cols[(c*kH + i)*kW + j, oh*OW + ow] = x[c, oh*sh - pt + i*dil_h, ow*sw - pl + j*dil_w]

(zero where that position lies in the padding). Row ``(c*kH + i)*kW + j`` matches the flattened
weight index ``weight.reshape(K, C*kH*kW)[:, (c*kH + i)*kW + j]``, so the convolution of one
image becomes ``weight.reshape(K, -1) @ cols``; with groups, rows ``g*Cg*kH*kW ...`` belong to
group g and the product is taken per group.

``col2im`` is its adjoint (the transpose of the copy): it adds every entry of a (C*kH*kW, L)
matrix back onto the input position it was copied from, which is how the input gradient
``dx = col2im(weight.T @ dout)`` is formed.

Both are serial Numba kernels writing into arrays the caller allocated; padding is handled with
per-tap column ranges (``valid_range``), never by a padded copy of the input.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from npmobilenet.kernels.conv_direct import valid_range


@njit(cache=True, nogil=True, inline="always")
def _tap_row(cols, c, i, j, kH, kW, sw, pl, dil_w, W, OW):
    """Row ``(c*kH + i)*kW + j`` of cols (L,), the one tap (c, i, j) fills, with ``off``, the
    input column of output column 0 for that tap, and ``[lo, hi)``, the output columns whose
    input column ``ow*sw + off`` lies inside the image."""
    off = j * dil_w - pl
    lo, hi = valid_range(off, sw, W, OW)
    return cols[(c * kH + i) * kW + j], off, lo, hi


@njit(cache=True, nogil=True, inline="always")
def im2col(x, kH, kW, sh, sw, pt, pl, dil_h, dil_w, OH, OW, cols):
    """Fill cols (C*kH*kW, OH*OW) from one image x (C, H, W); padded positions become zero."""
    C, H, W = x.shape
    for c in range(C):
        for i in range(kH):
            for j in range(kW):
                row, off, lo, hi = _tap_row(cols, c, i, j, kH, kW, sw, pl, dil_w, W, OW)
                for oh in range(OH):
                    base = oh * OW
                    ih = oh * sh - pt + i * dil_h
                    if ih < 0 or ih >= H:
                        for ow in range(OW):
                            row[base + ow] = 0
                        continue
                    for ow in range(lo):
                        row[base + ow] = 0
                    # row[base + ow] = x[c, ih, ow*sw + off] for ow in [lo, hi), through slices:
                    # their indices need no wrap-around check, so LLVM vectorises the copy
                    src = x[c, ih, lo * sw + off : (hi - 1) * sw + off + 1 : sw]
                    dst = row[base + lo : base + hi]
                    for k in range(hi - lo):
                        dst[k] = src[k]
                    for ow in range(hi, OW):
                        row[base + ow] = 0


@njit(cache=True, nogil=True)
def im2col_images(x, kH, kW, sh, sw, pt, pl, dil_h, dil_w, OH, OW, cols):
    """:func:`im2col` of every image of x (N, C, H, W) into cols (N, C*kH*kW, OH*OW), in one
    call (a small batch's images are cheaper to loop over here than from Python). im2col is
    inlined here, so a first run compiles this kernel alone (a call to a separately compiled
    kernel would compile and optimise its body twice).

    Each image's input rows that the output rows read are first read in memory order, every
    8th value (at least one per 64-byte line): im2col then walks them once per tap, every
    ``sh``-th row, an order in which the hardware prefetcher does not bring them from memory
    ahead of use, while rows read in order come at streaming speed. Returns the sum of the
    values read ahead, of no use to the caller: returning it keeps the compiler from dropping
    the reads."""
    N, C, H, W = x.shape
    top = max(0, -pt)  # the first input row read
    bottom = min(H, (OH - 1) * sh - pt + (kH - 1) * dil_h + 1)  # one past the last
    s = 0.0
    for n in range(N):
        for c in range(C):
            for r in range(top, bottom):
                for q in range(0, W, 8):
                    s += x[n, c, r, q]
        im2col(x[n], kH, kW, sh, sw, pt, pl, dil_h, dil_w, OH, OW, cols[n])
    return s


@njit(cache=True, nogil=True)
def col2im(cols, kH, kW, sh, sw, pt, pl, dil_h, dil_w, OH, OW, dx):
    """Add cols (C*kH*kW, OH*OW) back onto one image's gradient dx (C, H, W) (adjoint of im2col).

    Differentiates ``im2col``'s copy ``row[base + ow] = x[c, ih, ow*sw + off]``: each input element
    receives the sum of the column entries it was copied to. Padded entries are dropped.
    """
    C, H, W = dx.shape
    for c, i, j in np.ndindex(C, kH, kW):
        row, off, lo, hi = _tap_row(cols, c, i, j, kH, kW, sw, pl, dil_w, W, OW)
        for oh in range(OH):
            ih = oh * sh - pt + i * dil_h
            if ih < 0 or ih >= H:
                continue
            # dx[c, ih, ow*sw + off] += row[base + ow] for ow in [lo, hi), through slices
            dst = dx[c, ih, lo * sw + off : (hi - 1) * sw + off + 1 : sw]
            src = row[oh * OW + lo : oh * OW + hi]
            for k in range(hi - lo):
                dst[k] += src[k]
