"""Batch-norm folding: an eval-mode ``conv -> BN`` pair becomes one conv with a bias.

In eval mode BN is an affine map per output channel k with fixed numbers::

    bn(z)[k] = gamma[k] * (z[k] - mean[k]) / sqrt(var[k] + eps) + beta[k]
             = scale[k] * z[k] + shift[k],   scale = gamma / sqrt(var + eps),
                                             shift = beta - mean * scale

and a convolution is linear in its weight, so ``scale[k] * conv(x, W)[k] = conv(x, scale[k] *
W[k])[k]``. Hence ``bn(conv(x, W)) = conv(x, W') + shift`` with ``W'[k] = scale[k] * W[k]``: the
BN layer disappears at construction time and costs nothing per image.

Folding is done in float64 whatever the stored dtype, so a float32 engine only rounds once.
"""

from __future__ import annotations

import numpy as np


def fold_batch_norm(weight, gamma, beta, running_mean, running_var, eps=1e-5):
    """Fold eval-mode BN into the preceding (bias-free) conv.

    weight: (K, C/G, kH, kW) conv weight; gamma, beta, running_mean, running_var: (K,).
    Returns ``(weight', bias)`` in float64: weight' (K, C/G, kH, kW) and bias (K,), such that
    ``bn(conv(x, weight)) == conv(x, weight') + bias`` (bias broadcast over pixels).
    """
    weight = np.asarray(weight, dtype=np.float64)
    scale = np.asarray(gamma, np.float64) / np.sqrt(np.asarray(running_var, np.float64) + eps)
    shift = np.asarray(beta, np.float64) - np.asarray(running_mean, np.float64) * scale
    return weight * scale[:, None, None, None], shift
