import numpy as np


def batchnorm_backward(dout, x, gamma, eps=1e-5):
    """Step by step back through the computation graph (no simplification)."""
    axes = (0, 2, 3)
    M = x.size // x.shape[1]
    g = gamma[None, :, None, None]
    mean = x.mean(axis=axes, keepdims=True)
    xc = x - mean
    var = (xc**2).mean(axis=axes, keepdims=True)
    inv = 1.0 / np.sqrt(var + eps)
    xhat = xc * inv
    dbeta = dout.sum(axis=axes)
    dgamma = (dout * xhat).sum(axis=axes)
    dxhat = dout * g
    dinv = (dxhat * xc).sum(axis=axes, keepdims=True)
    dvar = dinv * -0.5 * (var + eps) ** -1.5
    dxc = dxhat * inv + dvar * 2 * xc / M
    dmean = -dxc.sum(axis=axes, keepdims=True)
    dx = dxc + dmean / M
    return dx, dgamma, dbeta
