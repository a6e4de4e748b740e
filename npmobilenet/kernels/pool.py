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


@njit(cache=True)
def _avg_window(o, s, p, k, size):
    """One axis of an average-pool window: (start, end) clipped to the input, and the length
    of the window clipped only to the padded input (PyTorch's count_include_pad length)."""
    start = o * s - p
    end = min(start + k, size + p)
    padded_len = end - start
    return max(start, 0), min(end, size), padded_len


@njit(cache=True)
def _avg_divisor(h0, h1, lh, w0, w1, lw, count_include_pad):
    """Divisor of one average-pool window (0 for a window with no input pixel)."""
    if h0 >= h1 or w0 >= w1:
        return 0
    return lh * lw if count_include_pad else (h1 - h0) * (w1 - w0)


@njit(cache=True)
def avg_pool2d_forward(x, kH, kW, sH, sW, pH, pW, OH, OW, count_include_pad):
    """Mean over each window; the divisor counts padding iff ``count_include_pad``.

    x: (N, C, H, W). Returns out (N, C, OH, OW). A window lying entirely in padding (possible
    with ceil_mode) gives 0.
    """
    N, C, H, W = x.shape
    out = np.zeros((N, C, OH, OW), dtype=x.dtype)
    for n in range(N):
        for c in range(C):
            for oh in range(OH):
                h0, h1, lh = _avg_window(oh, sH, pH, kH, H)
                for ow in range(OW):
                    w0, w1, lw = _avg_window(ow, sW, pW, kW, W)
                    div = _avg_divisor(h0, h1, lh, w0, w1, lw, count_include_pad)
                    if div == 0:
                        continue
                    s = 0.0
                    for h in range(h0, h1):
                        for w in range(w0, w1):
                            s += x[n, c, h, w]
                    out[n, c, oh, ow] = s / div
    return out


@njit(cache=True)
def avg_pool2d_backward_input(dout, H, W, kH, kW, sH, sW, pH, pW, count_include_pad):
    """Spread each dout[n, c, oh, ow] / divisor evenly over its window (adding up).

    dout: (N, C, OH, OW). Returns dx (N, C, H, W).
    """
    N, C, OH, OW = dout.shape
    dx = np.zeros((N, C, H, W), dtype=dout.dtype)
    for n in range(N):
        for c in range(C):
            for oh in range(OH):
                h0, h1, lh = _avg_window(oh, sH, pH, kH, H)
                for ow in range(OW):
                    w0, w1, lw = _avg_window(ow, sW, pW, kW, W)
                    div = _avg_divisor(h0, h1, lh, w0, w1, lw, count_include_pad)
                    if div == 0:
                        continue
                    g = dout[n, c, oh, ow] / div
                    for h in range(h0, h1):
                        for w in range(w0, w1):
                            dx[n, c, h, w] += g
    return dx


@njit(cache=True)
def _adaptive_window(o, out_size, in_size):
    """PyTorch's adaptive window: [floor(o * in / out), ceil((o + 1) * in / out))."""
    return (o * in_size) // out_size, ((o + 1) * in_size + out_size - 1) // out_size


@njit(cache=True)
def adaptive_avg_pool2d_forward(x, OH, OW):
    """Mean over each adaptive window. x: (N, C, H, W). Returns out (N, C, OH, OW)."""
    N, C, H, W = x.shape
    out = np.empty((N, C, OH, OW), dtype=x.dtype)
    for n in range(N):
        for c in range(C):
            for oh in range(OH):
                h0, h1 = _adaptive_window(oh, OH, H)
                for ow in range(OW):
                    w0, w1 = _adaptive_window(ow, OW, W)
                    s = 0.0
                    for h in range(h0, h1):
                        for w in range(w0, w1):
                            s += x[n, c, h, w]
                    out[n, c, oh, ow] = s / ((h1 - h0) * (w1 - w0))
    return out


@njit(cache=True)
def adaptive_avg_pool2d_backward_input(dout, H, W):
    """Spread each dout[n, c, oh, ow] evenly over its adaptive window (windows may overlap).

    dout: (N, C, OH, OW). Returns dx (N, C, H, W).
    """
    N, C, OH, OW = dout.shape
    dx = np.zeros((N, C, H, W), dtype=dout.dtype)
    for n in range(N):
        for c in range(C):
            for oh in range(OH):
                h0, h1 = _adaptive_window(oh, OH, H)
                for ow in range(OW):
                    w0, w1 = _adaptive_window(ow, OW, W)
                    g = dout[n, c, oh, ow] / ((h1 - h0) * (w1 - w0))
                    for h in range(h0, h1):
                        for w in range(w0, w1):
                            dx[n, c, h, w] += g
    return dx
