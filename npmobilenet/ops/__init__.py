"""Functional layer ops: forward returns ``(out, cache)``, backward takes ``(dout, cache)``.

Shape legend used in every docstring:
    N batch, C (C_in) input channels, K (C_out) output channels, G groups,
    H, W input height and width, OH, OW output height and width, kH, kW kernel size.
Arrays are NCHW, weights use PyTorch layouts: conv ``(K, C/G, kH, kW)``, linear ``(out, in)``.
"""

from npmobilenet.ops.activations import relu6_backward, relu6_forward, relu_backward, relu_forward
from npmobilenet.ops.batchnorm import (
    batch_norm_act_backward,
    batch_norm_act_coefficients,
    batch_norm_act_forward,
    batch_norm_backward,
    batch_norm_forward,
    channel_affine,
)
from npmobilenet.ops.conv import conv2d_backward, conv2d_forward
from npmobilenet.ops.dropout import dropout_backward, dropout_forward
from npmobilenet.ops.linear import linear_backward, linear_forward
from npmobilenet.ops.pooling import (
    adaptive_avg_pool2d_backward,
    adaptive_avg_pool2d_forward,
    avg_pool2d_backward,
    avg_pool2d_forward,
    max_pool2d_backward,
    max_pool2d_forward,
)
from npmobilenet.ops.softmax import (
    cross_entropy_backward,
    cross_entropy_forward,
    log_softmax,
    softmax,
)

__all__ = [
    "conv2d_forward",
    "conv2d_backward",
    "batch_norm_forward",
    "batch_norm_backward",
    "batch_norm_act_forward",
    "batch_norm_act_backward",
    "batch_norm_act_coefficients",
    "channel_affine",
    "relu_forward",
    "relu_backward",
    "relu6_forward",
    "relu6_backward",
    "max_pool2d_forward",
    "max_pool2d_backward",
    "avg_pool2d_forward",
    "avg_pool2d_backward",
    "adaptive_avg_pool2d_forward",
    "adaptive_avg_pool2d_backward",
    "linear_forward",
    "linear_backward",
    "softmax",
    "log_softmax",
    "cross_entropy_forward",
    "cross_entropy_backward",
    "dropout_forward",
    "dropout_backward",
]
