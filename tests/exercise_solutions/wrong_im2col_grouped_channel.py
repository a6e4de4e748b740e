import numpy as np


def im2col_grouped(x, kH, kW, stride=1, padding=0, groups=1):
    """Mistake: every group reads the first group's channels (forgets the g * Cg offset)."""
    N, C, H, W = x.shape
    Cg = C // groups
    OH, OW = (H + 2 * padding - kH) // stride + 1, (W + 2 * padding - kW) // stride + 1
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    cols = np.zeros((groups, Cg * kH * kW, N * OH * OW))
    for g in range(groups):
        for c in range(Cg):
            for u in range(kH):
                for v in range(kW):
                    row = (c * kH + u) * kW + v
                    for n in range(N):
                        for i in range(OH):
                            for j in range(OW):
                                col = (n * OH + i) * OW + j
                                cols[g, row, col] = xp[n, c, i * stride + u, j * stride + v]
    return cols
