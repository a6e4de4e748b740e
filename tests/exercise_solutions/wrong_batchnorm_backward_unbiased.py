import numpy as np


def batchnorm_backward(dout, x, gamma, eps=1e-5):
    """Mistake: the unbiased variance (divide by M - 1), which the forward does not use."""
    axes = (0, 2, 3)
    M = x.size // x.shape[1]
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).sum(axis=axes, keepdims=True) / (M - 1)
    xhat = (x - mean) / np.sqrt(var + eps)
    dgamma = (dout * xhat).sum(axis=axes)
    dbeta = dout.sum(axis=axes)
    g = gamma[None, :, None, None] / np.sqrt(var + eps)
    dx = g * (dout - dbeta[None, :, None, None] / M - xhat * dgamma[None, :, None, None] / M)
    return dx, dgamma, dbeta
