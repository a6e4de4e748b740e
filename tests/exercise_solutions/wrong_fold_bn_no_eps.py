import numpy as np


def fold_bn(w, gamma, beta, mean, var, eps=1e-5):
    """Mistake: forgets eps under the square root."""
    scale = gamma / np.sqrt(var)
    return w * scale[:, None, None, None], beta - mean * scale
