import numpy as np


def batchnorm_backward(dout, x, gamma, eps=1e-5):
    """Mistake: treats mean and var as constants (the eval-mode dx in training mode)."""
    axes = (0, 2, 3)
    mean = x.mean(axis=axes, keepdims=True)
    var = x.var(axis=axes, keepdims=True)
    xhat = (x - mean) / np.sqrt(var + eps)
    dx = dout * gamma[None, :, None, None] / np.sqrt(var + eps)
    return dx, (dout * xhat).sum(axis=axes), dout.sum(axis=axes)
