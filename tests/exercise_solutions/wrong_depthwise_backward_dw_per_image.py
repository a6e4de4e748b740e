import numpy as np


def depthwise_conv_backward(dout, x, w, stride=1, padding=0):
    """Mistake: dw keeps only the last image's contribution (reset inside the batch loop)."""
    N, C, H, W = x.shape
    kH, kW = w.shape[2:]
    OH, OW = dout.shape[2:]
    p, s = padding, stride
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    dxp = np.zeros_like(xp)
    for n in range(N):
        dw = np.zeros_like(w)
        for c in range(C):
            for i in range(OH):
                for j in range(OW):
                    g = dout[n, c, i, j]
                    dw[c, 0] += g * xp[n, c, i * s : i * s + kH, j * s : j * s + kW]
                    dxp[n, c, i * s : i * s + kH, j * s : j * s + kW] += g * w[c, 0]
    return dxp[:, :, p : p + H, p : p + W], dw
