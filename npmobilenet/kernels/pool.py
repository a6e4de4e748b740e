"""Pooling kernels: explicit loops over (n, c, oh, ow) and the window taps.

These loops are the readable reference and the fast path at once (pooling does O(kH*kW) work
per output, nothing for a GEMM to win). Every array is 4-D NCHW and C-contiguous; windows follow
PyTorch's CPU kernels line for line (same clipping, divisors and tie/NaN rules). Serial on
purpose: NumPy's BLAS owns the machine's threads.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def max_pool2d_forward(x, kH, kW, sH, sW, pH, pW, dH, dW, OH, OW):
    """Max over each (dilated) window; ties keep the first in scan order, NaN wins.

    x: (N, C, H, W). Returns out (N, C, OH, OW) and argmax (N, C, OH, OW) int64, the flat
    index h * W + w of the chosen input pixel (as PyTorch's ``return_indices``).
    """
    N, C, H, W = x.shape
    out = np.empty((N, C, OH, OW), dtype=x.dtype)
    argmax = np.empty((N, C, OH, OW), dtype=np.int64)
    for n in range(N):
        for c in range(C):
            for oh in range(OH):
                h0 = oh * sH - pH
                for ow in range(OW):
                    w0 = ow * sW - pW
                    best = -np.inf
                    best_i = -1
                    for i in range(kH):
                        h = h0 + i * dH
                        if h < 0 or h >= H:
                            continue
                        for j in range(kW):
                            w = w0 + j * dW
                            if w < 0 or w >= W:
                                continue
                            v = x[n, c, h, w]
                            if best_i < 0 or v > best or np.isnan(v):
                                best = v
                                best_i = h * W + w
                    out[n, c, oh, ow] = best
                    argmax[n, c, oh, ow] = best_i
    return out, argmax


@njit(cache=True)
def max_pool2d_backward_input(dout, argmax, H, W):
    """Route each dout[n, c, oh, ow] to the input pixel that won its window (adding up).

    dout, argmax: (N, C, OH, OW). Returns dx (N, C, H, W).
    """
    N, C, OH, OW = dout.shape
    dx = np.zeros((N, C, H * W), dtype=dout.dtype)
    for n in range(N):
        for c in range(C):
            for oh in range(OH):
                for ow in range(OW):
                    i = argmax[n, c, oh, ow]
                    if i >= 0:  # -1: a window with no input pixel in it (all padding)
                        dx[n, c, i] += dout[n, c, oh, ow]
    return dx.reshape((N, C, H, W))


# Average pooling, plain and adaptive, is one computation over a table of windows: the row
# bounds [h0, h1) of each output row, the column bounds [w0, w1) of each output column, and the
# divisor of each window. Only the tables differ between the two.


@njit(cache=True)
def _avg_bounds(out_size, k, s, p, size):
    """One axis of an average pool: per output index (out_size, 3), the window [start, end)
    clipped to the input, and its length clipped only to the padded input (PyTorch's
    count_include_pad length)."""
    b = np.empty((out_size, 3), dtype=np.int64)
    for o in range(out_size):
        start = o * s - p
        end = min(start + k, size + p)
        b[o, 0], b[o, 1], b[o, 2] = max(start, 0), min(end, size), end - start
    return b


@njit(cache=True)
def avg_pool2d_windows(H, W, kH, kW, sH, sW, pH, pW, OH, OW, count_include_pad):
    """The window table of ``avg_pool2d``: row bounds (OH, 2), column bounds (OW, 2), divisors
    (OH, OW). The divisor counts padding iff ``count_include_pad``; a window lying entirely in
    padding (possible with ceil_mode) gets divisor 1, so its mean is 0 and its gradient empty.
    """
    hb = _avg_bounds(OH, kH, sH, pH, H)
    wb = _avg_bounds(OW, kW, sW, pW, W)
    div = np.ones((OH, OW), dtype=np.int64)
    for oh in range(OH):
        h0, h1, lh = hb[oh, 0], hb[oh, 1], hb[oh, 2]
        for ow in range(OW):
            w0, w1, lw = wb[ow, 0], wb[ow, 1], wb[ow, 2]
            if h0 < h1 and w0 < w1:
                div[oh, ow] = lh * lw if count_include_pad else (h1 - h0) * (w1 - w0)
    return hb[:, :2], wb[:, :2], div


@njit(cache=True)
def _adaptive_bounds(out_size, in_size):
    """PyTorch's adaptive windows along one axis (out_size, 2):
    [floor(o * in / out), ceil((o + 1) * in / out))."""
    b = np.empty((out_size, 2), dtype=np.int64)
    for o in range(out_size):
        b[o, 0] = (o * in_size) // out_size
        b[o, 1] = ((o + 1) * in_size + out_size - 1) // out_size
    return b


@njit(cache=True)
def adaptive_avg_pool2d_windows(H, W, OH, OW):
    """The window table of ``adaptive_avg_pool2d``: row bounds (OH, 2), column bounds (OW, 2)
    and divisors (OH, OW), each window's area (windows may overlap)."""
    hb = _adaptive_bounds(OH, H)
    wb = _adaptive_bounds(OW, W)
    div = np.empty((OH, OW), dtype=np.int64)
    for oh in range(OH):
        for ow in range(OW):
            div[oh, ow] = (hb[oh, 1] - hb[oh, 0]) * (wb[ow, 1] - wb[ow, 0])
    return hb, wb, div


@njit(cache=True)
def window_mean_forward(x, hb, wb, div):
    """Mean over each window of a table (``avg_pool2d_windows`` / ``adaptive_avg_pool2d_windows``).

    x: (N, C, H, W); hb (OH, 2), wb (OW, 2): [start, end) of each window's rows and columns;
    div (OH, OW). Returns out (N, C, OH, OW), out = sum(window) / div.
    """
    N, C = x.shape[0], x.shape[1]
    OH, OW = div.shape
    out = np.empty((N, C, OH, OW), dtype=x.dtype)
    for n in range(N):
        for c in range(C):
            for oh in range(OH):
                for ow in range(OW):
                    s = 0.0
                    for h in range(hb[oh, 0], hb[oh, 1]):
                        for w in range(wb[ow, 0], wb[ow, 1]):
                            s += x[n, c, h, w]
                    out[n, c, oh, ow] = s / div[oh, ow]
    return out


@njit(cache=True)
def window_mean_backward_input(dout, hb, wb, div, H, W):
    """Spread each dout[n, c, oh, ow] / div[oh, ow] evenly over its window (adding up, as
    windows may overlap). Differentiates ``out = sum(window) / div`` of ``window_mean_forward``.

    dout: (N, C, OH, OW); the window table as in ``window_mean_forward``. Returns dx (N, C, H, W).
    """
    N, C, OH, OW = dout.shape
    dx = np.zeros((N, C, H, W), dtype=dout.dtype)
    for n in range(N):
        for c in range(C):
            for oh in range(OH):
                for ow in range(OW):
                    g = dout[n, c, oh, ow] / div[oh, ow]
                    for h in range(hb[oh, 0], hb[oh, 1]):
                        for w in range(wb[ow, 0], wb[ow, 1]):
                            dx[n, c, h, w] += g
    return dx
