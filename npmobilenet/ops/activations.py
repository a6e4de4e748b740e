"""ReLU and ReLU6 (``torch.nn.functional.relu`` / ``relu6`` semantics, NaN propagates).

Gradient conventions match PyTorch: ReLU passes the gradient where ``out > 0`` (so 0 at x == 0);
ReLU6 is ``hardtanh(x, 0, 6)`` and passes it where ``0 < x < 6`` (so 0 at exactly 0 and 6).
Any shape works; the output has x's shape and dtype.
"""

from __future__ import annotations

import numpy as np

from npmobilenet import _checks


def relu_forward(x):
    """out = max(x, 0), elementwise.

    Args:
        x: any shape, float32 or float64.

    Returns:
        out: x's shape and dtype. cache: out (its positive entries are where gradient flows).
    """
    _checks.float_array("relu_forward", "x", x)
    out = np.asarray(np.maximum(x, 0))  # propagates NaN, as torch.relu does; 0-D stays array
    return out, out


def relu_backward(dout, cache):
    """dx = dout where out > 0, else 0 (differentiates ``out = max(x, 0)``)."""
    out = cache
    dout = _checks.dout_like("relu_backward", dout, out.shape, out.dtype)
    return np.where(out > 0, dout, 0).astype(out.dtype, copy=False)


def relu6_forward(x):
    """out = min(max(x, 0), 6), elementwise.

    Args:
        x: any shape, float32 or float64.

    Returns:
        out: x's shape and dtype. cache: x (the gradient mask is 0 < x < 6).
    """
    _checks.float_array("relu6_forward", "x", x)
    out = np.asarray(np.minimum(np.maximum(x, 0), 6))
    return out, x


def relu6_backward(dout, cache):
    """dx = dout where 0 < x < 6, else 0 (differentiates ``out = min(max(x, 0), 6)``)."""
    x = cache
    dout = _checks.dout_like("relu6_backward", dout, x.shape, x.dtype)
    return np.where((x > 0) & (x < 6), dout, 0).astype(x.dtype, copy=False)
