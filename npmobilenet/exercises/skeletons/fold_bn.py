"""Exercise fold_bn: fold an eval-mode batch norm into the convolution before it.

Check your answer with:  npmobilenet exercise check fold_bn THIS_FILE
"""

import numpy as np


def fold_bn(w, gamma, beta, mean, var, eps=1e-5):
    """Return (w_folded, b_folded) with conv(x, w_folded) + b_folded == bn(conv(x, w)).

    w: (K, Cg, kH, kW) weight of a bias-free convolution.
    gamma, beta, mean, var: (K,) batch norm's scale, shift and running statistics; in eval mode
        bn(z)[:, k] = gamma[k] * (z[:, k] - mean[k]) / sqrt(var[k] + eps) + beta[k].

    Returns w_folded: (K, Cg, kH, kW) and b_folded: (K,), float64.
    """
    # TODO: bn is an affine map per output channel, and the convolution is linear in w.
    raise NotImplementedError("fold_bn: TODO")
