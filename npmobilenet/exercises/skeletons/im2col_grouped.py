"""Exercise im2col_grouped: the im2col matrix of a grouped convolution.

Check your answer with:  npmobilenet exercise check im2col_grouped THIS_FILE
"""

import numpy as np


def im2col_grouped(x, kH, kW, stride=1, padding=0, groups=1):
    """Unfold the windows of x into one matrix per group, so a grouped conv is G matmuls.

    x: (N, C, H, W), C divisible by groups; Cg = C // groups channels per group.
    kH, kW: kernel size.  stride, padding: ints (zero padding on all four sides).

    Returns cols: (G, Cg * kH * kW, N * OH * OW), OH = (H + 2 * padding - kH) // stride + 1,
        cols[g, (c * kH + u) * kW + v, (n * OH + i) * OW + j]
            = xpad[n, g * Cg + c, i * stride + u, j * stride + v]
    so that, for a weight (K, Cg, kH, kW) with Kg = K // groups filters per group,
        w[g * Kg:(g + 1) * Kg].reshape(Kg, -1) @ cols[g]
    is output channels g*Kg .. (g+1)*Kg - 1 with columns ordered (n, i, j).
    """
    N, C, H, W = x.shape
    # TODO: zero-pad, then fill cols row by row (c, u, v) and column by column (n, i, j);
    # np.lib.stride_tricks.sliding_window_view is allowed once the loops work.
    raise NotImplementedError("im2col_grouped: TODO")
