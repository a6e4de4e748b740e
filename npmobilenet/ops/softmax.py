"""Softmax, log-softmax and cross-entropy (``torch.nn.functional`` semantics).

Both softmaxes subtract the maximum along the axis first, so logits of +-1e4 stay finite.
Cross-entropy works on ``(N, C)`` logits (or unbatched ``(C,)``) with either integer class
targets ``(N,)`` or probability targets ``(N, C)``, like ``F.cross_entropy``.
"""

from __future__ import annotations

import numbers
from typing import NamedTuple

import numpy as np

from npmobilenet import _checks

_FWD = "cross_entropy_forward"
_BWD = "cross_entropy_backward"


class CrossEntropyCache(NamedTuple):
    """What ``cross_entropy_forward`` keeps for ``cross_entropy_backward``.

    logp: (N, C) log-softmax of the logits. q: (N, C) target distributions (zero rows for
    ignored samples). reduction: "mean", "sum" or "none". count: the divisor of "mean" (samples
    not ignored). shape: the logits' shape ((N, C) or (C,)).
    """

    logp: np.ndarray
    q: np.ndarray
    reduction: str
    count: int
    shape: tuple[int, ...]


def _checked_axis(op, x, axis):
    """Check that x is a float array and axis one of its axes; return axis as an int."""
    _checks.float_array(op, "x", x)
    axis = _checks.integer(op, "axis", axis)
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(f"{op}: axis must be in [{-x.ndim}, {x.ndim}) for x of shape {x.shape}")
    return axis


def softmax(x, axis=-1):
    """exp(x) / sum(exp(x)) along ``axis``, computed as exp(x - max) / sum(exp(x - max)).

    Args:
        x: any shape with ndim >= 1, float32 or float64.
        axis: the axis that sums to one.

    Returns:
        Probabilities: an array of x's shape and dtype, summing to one along ``axis``.
    """
    axis = _checked_axis("softmax", x, axis)
    if x.size == 0:
        return x.copy()
    e = np.exp(x - x.max(axis=axis, keepdims=True))  # every exponent <= 0: no overflow
    return e / e.sum(axis=axis, keepdims=True)


def log_softmax(x, axis=-1):
    """x - logsumexp(x) along ``axis``, with logsumexp(x) = max + log(sum(exp(x - max))).

    Args:
        x: any shape with ndim >= 1, float32 or float64.
        axis: the axis to normalise.

    Returns:
        Log-probabilities: an array of x's shape and dtype.
    """
    axis = _checked_axis("log_softmax", x, axis)
    if x.size == 0:
        return x.copy()
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def _class_target(target, N, C, ignore_index, batched):
    """Validate integer class targets; return them as an (N,) int64 array."""
    if isinstance(target, numbers.Integral) and not isinstance(target, bool) and not batched:
        target = np.array(target)
    if not isinstance(target, np.ndarray) or target.dtype.kind not in "iu":
        raise TypeError(
            f"{_FWD}: target must be an integer array of class indices or a float array of"
            f" probabilities, got {_checks.describe(target)}"
        )
    want = (N,) if batched else ()
    if target.shape != want:
        raise ValueError(
            f"{_FWD}: class target must have shape {want} to match logits with {N} samples,"
            f" got shape {target.shape}"
        )
    t = target.reshape(N).astype(np.int64)
    bad = (t != ignore_index) & ((t < 0) | (t >= C))
    if bad.any():
        raise ValueError(
            f"{_FWD}: target value {t[bad][0]} is out of range for {C} classes (expected 0 <="
            f" target < {C}, or ignore_index={ignore_index})"
        )
    return t


def _validate(logits, target, reduction, label_smoothing, ignore_index):
    _checks.float_array(_FWD, "logits", logits, ndim=(1, 2))
    _checks.choice(_FWD, "reduction", reduction, ("mean", "sum", "none"))
    eps = _checks.number(_FWD, "label_smoothing", label_smoothing, low=0.0, high=1.0)
    ignore_index = _checks.integer(_FWD, "ignore_index", ignore_index)
    if logits.shape[-1] == 0:
        raise ValueError(f"{_FWD}: logits must have at least one class, got shape {logits.shape}")
    is_int = isinstance(target, numbers.Integral) and not isinstance(target, bool)
    if not is_int and not isinstance(target, np.ndarray):
        raise TypeError(
            f"{_FWD}: target must be an integer array (class indices) or a float array"
            f" (probabilities), got {_checks.describe(target)}"
        )
    if not is_int and target.dtype.kind not in "iuf":
        raise TypeError(
            f"{_FWD}: target must have an integer dtype (class indices) or logits' dtype"
            f" (probabilities), got dtype {target.dtype}"
        )
    return eps, ignore_index


def cross_entropy_forward(logits, target, reduction="mean", label_smoothing=0.0, ignore_index=-100):
    """Cross-entropy between softmax(logits) and the target distribution.

    With logp = log_softmax(logits), C classes and smoothing e, each sample's target
    distribution is q = (1 - e) * t + e / C, where t is one-hot(target) for class targets or the
    given probabilities, and loss_i = -sum_c q_c * logp_c. Samples whose class target equals
    ``ignore_index`` get loss 0 and are left out of the mean. "mean" divides by the number of
    non-ignored samples (class targets) or by N (probability targets), as PyTorch does.

    Args:
        logits: (N, C) or unbatched (C,), float32 or float64.
        target: class indices, integer array (N,) (or () / int when unbatched), or
            probabilities, an array of logits' shape and dtype (rows need not sum to 1).
        reduction: "mean", "sum" or "none".
        label_smoothing: e in [0, 1].
        ignore_index: class value to skip (class targets only).

    Returns:
        loss: a logits-dtype scalar for "mean"/"sum", or (N,) (() when unbatched) for "none".
        cache: a ``CrossEntropyCache``.
    """
    eps, ignore_index = _validate(logits, target, reduction, label_smoothing, ignore_index)
    batched = logits.ndim == 2
    logp = log_softmax(logits.reshape(-1, logits.shape[-1]))  # (N, C)
    N, C = logp.shape
    if isinstance(target, np.ndarray) and target.dtype.kind == "f":  # probability targets
        if target.shape != logits.shape:
            raise ValueError(
                f"{_FWD}: probability target must have the shape of logits {logits.shape},"
                f" got shape {target.shape}"
            )
        _checks.same_dtype(_FWD, "logits", logits, target=target)
        q = target.reshape(N, C) * (1 - eps) + eps / C  # (N, C)
        count = N
    else:  # class targets
        t = _class_target(target, N, C, ignore_index, batched)
        valid = t != ignore_index  # (N,)
        q = np.full((N, C), eps / C, dtype=logits.dtype)
        q[np.arange(N)[valid], t[valid]] += 1 - eps
        q[~valid] = 0
        count = int(valid.sum())
    losses = -(q * logp).sum(axis=1)  # (N,)
    if reduction == "none":
        loss = losses if batched else losses.reshape(())
    elif reduction == "sum":
        loss = losses.sum()
    else:
        with np.errstate(invalid="ignore", divide="ignore"):  # all ignored -> nan, like torch
            loss = losses.sum() / logits.dtype.type(count)
    cache = CrossEntropyCache(logp, q, reduction, count, logits.shape)
    return logits.dtype.type(loss) if reduction != "none" else loss, cache


def _dloss(dloss, cache, dtype):
    """Upstream gradient of the loss as an (N,) array of per-sample weights."""
    N = cache.q.shape[0]
    if cache.reduction == "none":
        want = (N,) if len(cache.shape) == 2 else ()
        g = _checks.dout_like(_BWD, dloss, want, dtype)
        return g.reshape(N)
    if isinstance(dloss, np.ndarray):
        if dloss.shape != ():
            raise ValueError(
                f"{_BWD}: dloss must be a scalar for reduction={cache.reduction!r}, got"
                f" shape {dloss.shape}"
            )
        dloss = dloss.item()
    g = _checks.number(_BWD, "dloss", dloss)
    if cache.reduction == "mean":
        g = g / cache.count if cache.count else 0.0  # all ignored: torch's grad is 0
    return np.full(N, g, dtype=dtype)


def cross_entropy_backward(dloss, cache):
    """Gradient with respect to the logits.

    Differentiates ``loss_i = -sum_c q_c * logp_c`` with ``logp = logits - logsumexp(logits)``:
    dlogits_i = g_i * (softmax_i * sum_c(q_c) - q), where sum_c(q_c) = 1 for class targets and
    g_i is dloss (sum), dloss / count (mean) or dloss[i] (none).

    Args:
        dloss: a scalar for "mean"/"sum"; for "none" an array of the loss's shape and dtype.
        cache: from ``cross_entropy_forward``.

    Returns:
        dlogits: the shape and dtype of the logits.
    """
    _checks.cache_of(_BWD, cache, CrossEntropyCache, _FWD)
    logp, q = cache.logp, cache.q
    g = _dloss(dloss, cache, logp.dtype)  # (N,)
    p = np.exp(logp)  # softmax, (N, C)
    dlogits = g[:, None] * (p * q.sum(axis=1, keepdims=True) - q)  # (N, C)
    return dlogits.reshape(cache.shape)
