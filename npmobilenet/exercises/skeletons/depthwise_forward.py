"""Exercise depthwise_forward: a naive depthwise convolution, forward pass.

Check your answer with:  npmobilenet exercise check depthwise_forward THIS_FILE
"""

import numpy as np


def depthwise_conv_forward(x, w, stride=1, padding=0):
    """Depthwise 2-D convolution: channel c of x is filtered by its own kernel w[c, 0].

    x: (N, C, H, W) float64 input.
    w: (C, 1, kH, kW) one kernel per channel.
    stride, padding: ints; the same zero padding on all four sides.

    Returns out: (N, C, OH, OW) with OH = (H + 2 * padding - kH) // stride + 1 (OW likewise) and
        out[n, c, i, j] = sum over u, v of w[c, 0, u, v] * xpad[n, c, i*stride + u, j*stride + v]
    where xpad is x with `padding` zeros around H and W. (Cross-correlation, as in PyTorch.)
    """
    N, C, H, W = x.shape
    _, _, kH, kW = w.shape
    # TODO: compute OH and OW, zero-pad x (np.pad on the last two axes only), then loop over
    # n, c, i, j and sum the window times the kernel. Plain loops are fine: this is the
    # reference a fast kernel would be tested against.
    raise NotImplementedError("depthwise_conv_forward: TODO")
