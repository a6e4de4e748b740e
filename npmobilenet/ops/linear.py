"""Fully connected layer (``torch.nn.functional.linear`` semantics): out = x @ weight.T + bias."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from npmobilenet import _checks

_FWD = "linear_forward"


class LinearCache(NamedTuple):
    """What ``linear_forward`` keeps for ``linear_backward``.

    x: the (..., in) input. weight: the (out, in) weight. has_bias: whether a bias was given.
    """

    x: np.ndarray
    weight: np.ndarray
    has_bias: bool


def linear_forward(x, weight, bias=None):
    """Affine map of the last axis of x.

    Args:
        x: (..., in), float32 or float64 (at least 1-D).
        weight: (out, in), x's dtype (PyTorch layout).
        bias: (out,) of x's dtype, or None.

    Returns:
        out: (..., out), x's dtype. cache: a ``LinearCache``.
    """
    _checks.float_array(_FWD, "x", x)
    _checks.float_array(_FWD, "weight", weight, ndim=2)
    if x.ndim < 1:
        raise ValueError(f"{_FWD}: x must be at least 1-D (..., in), got a 0-D array")
    if x.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"{_FWD}: x has {x.shape[-1]} input features (last axis of shape {x.shape}) but"
            f" weight of shape {weight.shape} expects {weight.shape[1]}"
        )
    if bias is not None:
        _checks.float_array(_FWD, "bias", bias, ndim=1)
        if bias.shape != (weight.shape[0],):
            raise ValueError(
                f"{_FWD}: bias must have shape ({weight.shape[0]},) to match weight of shape"
                f" {weight.shape}, got shape {bias.shape}"
            )
    _checks.same_dtype(_FWD, "x", x, weight=weight, bias=bias)
    out = x @ weight.T  # (..., in) @ (in, out) -> (..., out)
    if bias is not None:
        out += bias
    return out, LinearCache(x, weight, bias is not None)


def linear_backward(dout, cache):
    """Gradients of ``out = x @ weight.T + bias``.

    Returns:
        dx (..., in) = dout @ weight; dweight (out, in) = dout2.T @ x2 with the leading axes
        flattened ((B, out) and (B, in)); dbias (out,) = dout summed over the leading axes, or
        None without bias.
    """
    x, weight, has_bias = _checks.cache_of("linear_backward", cache, LinearCache, _FWD)
    out_shape = x.shape[:-1] + (weight.shape[0],)
    dout = _checks.dout_like("linear_backward", dout, out_shape, x.dtype)
    dx = dout @ weight  # (..., out) @ (out, in) -> (..., in)
    d2 = dout.reshape(-1, weight.shape[0])  # (B, out)
    dweight = d2.T @ x.reshape(-1, weight.shape[1])  # (out, B) @ (B, in) -> (out, in)
    dbias = d2.sum(axis=0) if has_bias else None
    return dx, dweight, dbias
