import numpy as np


def depthwise_conv_forward(x, w, stride=1, padding=0):
    """Mistake: a true convolution (flipped kernel) instead of PyTorch's cross-correlation."""
    N, C, H, W = x.shape
    kH, kW = w.shape[2:]
    OH, OW = (H + 2 * padding - kH) // stride + 1, (W + 2 * padding - kW) // stride + 1
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    out = np.zeros((N, C, OH, OW))
    for n in range(N):
        for c in range(C):
            for i in range(OH):
                for j in range(OW):
                    win = xp[n, c, i * stride : i * stride + kH, j * stride : j * stride + kW]
                    out[n, c, i, j] = (win * w[c, 0, ::-1, ::-1]).sum()
    return out
