"""Exercise depthwise_backward: the gradients of a naive depthwise convolution.

Check your answer with:  npmobilenet exercise check depthwise_backward THIS_FILE
"""

import numpy as np


def depthwise_conv_backward(dout, x, w, stride=1, padding=0):
    """Gradients of out = depthwise_conv_forward(x, w, stride, padding) (see that exercise).

    dout: (N, C, OH, OW) gradient of the loss with respect to out.
    x: (N, C, H, W) the forward's input.  w: (C, 1, kH, kW) its kernels.
    stride, padding: as in the forward.

    Returns (dx, dw):
        dx: (N, C, H, W), the gradient with respect to x;
        dw: (C, 1, kH, kW), the gradient with respect to w.
    """
    N, C, H, W = x.shape
    _, _, kH, kW = w.shape
    # TODO dw: each weight w[c, 0, u, v] multiplied xpad[n, c, i*stride + u, j*stride + v] to
    #   make out[n, c, i, j], so it collects dout[n, c, i, j] times that input, summed.
    # TODO dx: each output spread dout[n, c, i, j] * w[c, 0] back over its window of a zero
    #   gradient buffer the size of xpad (+=: windows overlap); crop the padding at the end.
    raise NotImplementedError("depthwise_conv_backward: TODO")
