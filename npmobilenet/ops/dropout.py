"""Inverted dropout (``torch.nn.functional.dropout`` semantics) with an explicit generator.

In training each element is kept with probability 1 - p and scaled by 1 / (1 - p), so the
expected output equals the input and evaluation needs no rescaling; p = 1 zeroes everything.
In eval mode (or with p = 0) the op is the identity. Randomness comes only from the
``np.random.Generator`` passed in, so a run is reproducible from its seed.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from npmobilenet import _checks


class DropoutCache(NamedTuple):
    """What ``dropout_forward`` keeps for ``dropout_backward``.

    mask: the per-element factor (0 or 1 / (1 - p)) of x's shape and dtype, or None when the op
    was the identity (eval mode or p = 0). shape, dtype: x's.
    """

    mask: np.ndarray | None
    shape: tuple[int, ...]
    dtype: np.dtype


def dropout_forward(x, p, training, rng):
    """Zero each element with probability p and scale the survivors by 1 / (1 - p).

    Args:
        x: any shape, float32 or float64.
        p: drop probability in [0, 1].
        training: False makes this the identity (no random numbers are drawn).
        rng: a ``np.random.Generator`` (e.g. ``np.random.default_rng(seed)``).

    Returns:
        out: x's shape and dtype.
        cache: a ``DropoutCache``.
    """
    op = "dropout_forward"
    _checks.float_array(op, "x", x)
    p = _checks.number(op, "p", p, low=0.0, high=1.0)
    if not isinstance(training, (bool, np.bool_)):
        raise TypeError(f"{op}: training must be a bool, got {_checks.describe(training)}")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(
            f"{op}: rng must be a numpy.random.Generator (np.random.default_rng(seed)),"
            f" got {_checks.describe(rng)}"
        )
    if not training or p == 0.0:
        return x.copy(), DropoutCache(None, x.shape, x.dtype)
    keep = np.asarray(rng.random(x.shape, dtype=x.dtype)) >= p  # True with probability 1 - p
    scale = 0.0 if p == 1.0 else 1.0 / (1.0 - p)
    mask = np.asarray(keep * x.dtype.type(scale))  # (shape of x), values 0 or 1 / (1 - p)
    return np.asarray(x * mask), DropoutCache(mask, x.shape, x.dtype)


def dropout_backward(dout, cache):
    """dx = dout * mask: the same elements dropped and the same scale (differentiates
    ``out = x * mask``); the identity when the forward was.

    dout: the shape and dtype of x. Returns dx of that shape and dtype.
    """
    op = "dropout_backward"
    mask, shape, dtype = _checks.cache_of(op, cache, DropoutCache, "dropout_forward")
    dout = _checks.dout_like(op, dout, shape, dtype)
    return dout.copy() if mask is None else np.asarray(dout * mask)
