"""Epilogues of the GEMM-based convolutions of eval-mode inference (channels-last).

A 1x1 convolution over NHWC activations is one GEMM, ``(N*H*W, C) @ (C, K)``, and so is the stem
conv after im2col; NumPy hands both to BLAS. What BLAS cannot do is add the folded-BN bias and
apply the activation. These kernels do both in one pass over the GEMM output, and write the
result where the next layer wants it:

* :func:`bias_clamp_pad`: ``clamp(y + b)`` into a buffer with a one-pixel zero border,
  ``(N, H+2, W+2, K)``: the next layer is a 3x3 conv with padding 1, which then reads its
  padding instead of testing for it (``fused_conv3x3.depthwise3x3_nhwc``). When the next layer
  is a depthwise conv, that conv's kernel usually applies this epilogue itself
  (``fused_conv3x3.bias_clamp_depthwise3x3``); this pass serves the others (GEMMs run in blocks
  of rows or beside such blocks, see ``npmobilenet.fast.engine``, and those before a full 3x3
  conv).
* :func:`bias_clamp_mean`: for the last pointwise conv, ``mean over pixels of clamp(y + b)``:
  bias, activation and the global average pool in one read, nothing written back.

The clamp ``min(max(v, lo), hi)`` is the activation (ReLU: ``lo=0, hi=inf``; ReLU6: ``hi=6``);
pass ``lo``/``hi`` as scalars of the arrays' dtype. NumPy references sit beside each kernel.

Shape legend: N batch, H, W pixels, P = H*W, K channels.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from npmobilenet.kernels.fastmath import CONTRACT


@njit(cache=True, nogil=True, fastmath=CONTRACT)
def bias_clamp_pad(y, b, lo, hi, out, top=1):
    """``out[n, top+h, 1+w, k] = clamp(y[n, h, w, k] + b[k])``, and 0 on out's zero border.

    y: (N, H, W, K) GEMM output; b: (K,); out: (N, top+H+bottom, W+2, K), written in place (all
    of it): ``top`` zero rows above, the rest (``bottom``) below, one zero pixel left and right.
    By default a one-pixel border on every side; a block of rows from inside an image has zero
    rows only where it touches the image's top or bottom edge.
    """
    N, H, W, K = y.shape
    for n in range(N):
        for r in range(top):  # top and bottom padding rows
            out[n, r] = 0.0
        for r in range(top + H, out.shape[1]):
            out[n, r] = 0.0
        for h in range(H):
            orow = out[n, h + top]  # (W+2, K)
            yrow = y[n, h]  # (W, K)
            for k in range(K):  # left and right padding pixels
                orow[0, k] = 0.0
                orow[W + 1, k] = 0.0
            for w in range(W):
                for k in range(K):
                    orow[w + 1, k] = min(max(yrow[w, k] + b[k], lo), hi)


def bias_clamp_pad_naive(y, b, lo, hi):
    """NumPy reference for :func:`bias_clamp_pad`: (N, H, W, K) -> (N, H+2, W+2, K)."""
    return np.pad(np.clip(y + b, lo, hi), ((0, 0), (1, 1), (1, 1), (0, 0)))


@njit(cache=True, nogil=True, fastmath=CONTRACT)
def bias_clamp_mean(y, b, lo, hi, pooled):
    """``pooled[n, k] = mean_p clamp(y[n, p, k] + b[k])``.  y (N, P, K), b (K,), pooled (N, K).

    Sums in the dtype of ``y`` (as PyTorch's float32 mean does), one pixel row at a time.
    """
    N, P, K = y.shape
    for n in range(N):
        acc = pooled[n]  # (K,)
        acc[:] = 0.0
        for p in range(P):
            yrow = y[n, p]
            for k in range(K):
                acc[k] += min(max(yrow[k] + b[k], lo), hi)
        for k in range(K):
            acc[k] /= P


def bias_clamp_mean_naive(y, b, lo, hi):
    """NumPy reference for :func:`bias_clamp_mean`: (N, P, K) -> (N, K)."""
    return np.clip(y + b, lo, hi).mean(axis=1)
