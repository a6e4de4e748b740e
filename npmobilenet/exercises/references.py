"""The library's own implementation of each exercise, with the exercise's signature.

Thin adapters over ``npmobilenet.ops``, its im2col kernel and ``fast.folding``: the checker
compares the learner's answers with these, and notebooks plug them in to run end to end.
"""

from __future__ import annotations

import numpy as np

from npmobilenet import ops
from npmobilenet.fast.folding import fold_batch_norm
from npmobilenet.kernels.im2col import im2col


def depthwise_conv_forward(x, w, stride=1, padding=0):
    """x (N, C, H, W), w (C, 1, kH, kW) -> out (N, C, OH, OW)."""
    return ops.conv2d_forward(x, w, stride=stride, padding=padding, groups=x.shape[1])[0]


def depthwise_conv_backward(dout, x, w, stride=1, padding=0):
    """dout (N, C, OH, OW), x, w as in the forward -> (dx (N, C, H, W), dw (C, 1, kH, kW))."""
    _, cache = ops.conv2d_forward(x, w, stride=stride, padding=padding, groups=x.shape[1])
    dx, dw, _ = ops.conv2d_backward(dout, cache)
    return dx, dw


def im2col_grouped(x, kH, kW, stride=1, padding=0, groups=1):
    """x (N, C, H, W) -> cols (G, C/G * kH * kW, N * OH * OW), columns ordered (n, i, j)."""
    N, C, H, W = x.shape
    OH, OW = (H + 2 * padding - kH) // stride + 1, (W + 2 * padding - kW) // stride + 1
    per_image = np.empty((N, C * kH * kW, OH * OW), dtype=x.dtype)
    for n in range(N):  # the library's kernel, one image at a time: rows (c, u, v)
        im2col(x[n], kH, kW, stride, stride, padding, padding, 1, 1, OH, OW, per_image[n])
    # (N, G, Cg*kH*kW, OH*OW) -> (G, Cg*kH*kW, N, OH*OW) -> (G, Cg*kH*kW, N*OH*OW)
    grouped = per_image.reshape(N, groups, C // groups * kH * kW, OH * OW).transpose(1, 2, 0, 3)
    return grouped.reshape(groups, C // groups * kH * kW, N * OH * OW)


def batchnorm_backward(dout, x, gamma, eps=1e-5):
    """dout, x (N, C, H, W), gamma (C,) -> (dx, dgamma (C,), dbeta (C,)), training mode."""
    beta = np.zeros_like(gamma)
    _, cache = ops.batch_norm_forward(x, gamma, beta, None, None, training=True, eps=eps)
    return ops.batch_norm_backward(dout, cache)


def fold_bn(w, gamma, beta, mean, var, eps=1e-5):
    """w (K, Cg, kH, kW), the rest (K,) -> (w_folded, b_folded) in float64."""
    return fold_batch_norm(w, gamma, beta, mean, var, eps=eps)
