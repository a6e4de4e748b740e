"""ReLU and ReLU6 (``torch.nn.functional.relu`` / ``relu6`` semantics, NaN propagates).

Gradient conventions match PyTorch: ReLU blocks the gradient where ``out <= 0`` (so 0 at x == 0);
ReLU6 is ``hardtanh(x, 0, 6)`` and blocks it where ``x <= 0 or x >= 6`` (0 at exactly 0 and 6).
A NaN input is neither, so its gradient passes through, as in PyTorch.
Any shape works; the output has x's shape and dtype.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from npmobilenet import _checks
from npmobilenet.kernels import activations as K


class ReLUCache(NamedTuple):
    """What ``relu_forward`` keeps: out, the output (the gradient flows where out > 0)."""

    out: np.ndarray


class ReLU6Cache(NamedTuple):
    """What ``relu6_forward`` keeps: x, the input (the gradient flows where 0 < x < 6)."""

    x: np.ndarray


def _masked_backward(op, dout, cache, cache_type, kernel):
    """The backward of an elementwise clamp: check the cache and dout, then run the flat
    ``kernel(dout, ref, dx)`` on contiguous copies/views; dx gets ref's shape and dtype, where
    ref is the one array the cache holds."""
    (ref,) = _checks.cache_of(op, cache, cache_type, op.replace("_backward", "_forward"))
    dout = _checks.dout_like(op, dout, ref.shape, ref.dtype)
    dx = np.empty(ref.shape, dtype=ref.dtype)
    kernel(
        np.ascontiguousarray(dout).reshape(-1),
        np.ascontiguousarray(ref).reshape(-1),
        dx.reshape(-1),
    )
    return dx


def relu_forward(x):
    """out = max(x, 0), elementwise.

    Args:
        x: any shape, float32 or float64.

    Returns:
        out: x's shape and dtype. cache: a ``ReLUCache`` (out; the gradient flows except where
            it is <= 0).
    """
    _checks.float_array("relu_forward", "x", x)
    out = np.asarray(np.maximum(x, 0))  # propagates NaN, as torch.relu does; 0-D stays array
    return out, ReLUCache(out)


def relu_backward(dout, cache):
    """dx = 0 where out <= 0, else dout (differentiates ``out = max(x, 0)``)."""
    return _masked_backward("relu_backward", dout, cache, ReLUCache, K.relu_backward_input)


def relu6_forward(x):
    """out = min(max(x, 0), 6), elementwise.

    Args:
        x: any shape, float32 or float64.

    Returns:
        out: x's shape and dtype. cache: a ``ReLU6Cache`` (x; the gradient is blocked where
            x <= 0 or x >= 6).
    """
    _checks.float_array("relu6_forward", "x", x)
    out = np.asarray(np.clip(x, 0, 6))  # one pass; NaN propagates
    return out, ReLU6Cache(x)


def relu6_backward(dout, cache):
    """dx = 0 where x <= 0 or x >= 6, else dout (differentiates ``out = min(max(x, 0), 6)``)."""
    return _masked_backward("relu6_backward", dout, cache, ReLU6Cache, K.relu6_backward_input)


class Activation(NamedTuple):
    """One entry of ``ACTIVATIONS``: the op pair, and the clamp ``(lo, hi)`` it computes,
    ``min(max(x, lo), hi)`` (what the fused kernels of batch norm and inference apply)."""

    forward: Callable
    backward: Callable
    clamp: tuple[float, float]


# Every activation a model, batch norm's fused op or the inference engine accepts, by name.
ACTIVATIONS = {
    "relu": Activation(relu_forward, relu_backward, (0.0, math.inf)),
    "relu6": Activation(relu6_forward, relu6_backward, (0.0, 6.0)),
}
