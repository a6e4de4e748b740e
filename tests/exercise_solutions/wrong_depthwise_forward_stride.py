import numpy as np


def depthwise_conv_forward(x, w, stride=1, padding=0):
    """Mistake: the window moves one cell per output pixel whatever the stride."""
    N, C, H, W = x.shape
    kH, kW = w.shape[2:]
    OH, OW = (H + 2 * padding - kH) // stride + 1, (W + 2 * padding - kW) // stride + 1
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    out = np.zeros((N, C, OH, OW))
    for n in range(N):
        for c in range(C):
            for i in range(OH):
                for j in range(OW):
                    out[n, c, i, j] = (xp[n, c, i : i + kH, j : j + kW] * w[c, 0]).sum()
    return out
