"""Exercise batchnorm_backward: batch normalisation's backward pass in training mode.

Check your answer with:  npmobilenet exercise check batchnorm_backward THIS_FILE
"""

import numpy as np


def batchnorm_backward(dout, x, gamma, eps=1e-5):
    """Gradients of training-mode batch norm, whose forward is, per channel k,

        mean = x[:, k].mean()   var = x[:, k].var()   (biased: divide by M, over N, H, W)
        xhat = (x[:, k] - mean) / sqrt(var + eps)
        out[:, k] = gamma[k] * xhat + beta[k]

    dout: (N, C, H, W) gradient of the loss with respect to out.
    x: (N, C, H, W) the forward's input.  gamma: (C,) the scale.  eps: as in the forward.

    Returns (dx, dgamma, dbeta): dx (N, C, H, W), dgamma (C,), dbeta (C,).
    """
    # TODO: recompute mean, var and xhat over axes (0, 2, 3). dbeta and dgamma are sums over
    # those axes. For dx, remember that mean and var depend on x too: either follow the
    # computation graph backwards step by step, or simplify it to one line.
    raise NotImplementedError("batchnorm_backward: TODO")
