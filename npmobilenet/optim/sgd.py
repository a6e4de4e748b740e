"""Stochastic gradient descent with momentum, dampening, weight decay and Nesterov momentum.

The rule is ``torch.optim.SGD``'s single-tensor path, line for line (g is the gradient, b the
momentum buffer, t the step)::

    g = g + weight_decay * p                      (if weight_decay != 0)
    b = g  at the first step, else  b = momentum * b + (1 - dampening) * g
    g = g + momentum * b  (Nesterov)   or   g = b
    p = p - lr * g
"""

from __future__ import annotations

import numpy as np

from npmobilenet._checks import number
from npmobilenet.kernels.optim import sgd_momentum_step
from npmobilenet.optim.optimizer import Optimizer


def sgd_update(p, g, state, work, *, lr, momentum, dampening, weight_decay, nesterov):
    """One SGD step on ``p`` in place. ``p``, ``g``: any shape (same); ``work``: 2 scratch arrays.

    ``state`` gains ``"momentum_buffer"`` (shape of ``p``) on the first step when momentum != 0.
    ``g`` itself is never modified. Once the buffer exists, the step is one pass over the
    arrays (``kernels.optim.sgd_momentum_step``: the same numbers as :func:`sgd_update_numpy`,
    bit for bit) where it can be: contiguous arrays of one dtype, and hyper-parameters that are
    Python numbers (NumPy rounds those to the arrays' dtype, as the kernel's arguments are).
    """
    buf = state.get("momentum_buffer") if momentum != 0 else None
    hyper = (lr, momentum, dampening, weight_decay)
    if buf is not None and _one_pass(p, g, buf, hyper):
        t = p.dtype.type
        sgd_momentum_step(p.reshape(-1), g.reshape(-1), buf.reshape(-1), t(-lr), t(momentum),
                          t(1 - dampening), t(weight_decay), bool(nesterov))  # fmt: skip
        return
    sgd_update_numpy(p, g, state, work, lr=lr, momentum=momentum, dampening=dampening,
                     weight_decay=weight_decay, nesterov=nesterov)  # fmt: skip


def _one_pass(p, g, buf, hyper) -> bool:
    """Whether :func:`sgd_momentum_step` computes this step: ``p``, ``g`` and ``buf`` are
    C-contiguous arrays of one shape and float dtype, the hyper-parameters Python numbers."""
    arrays = (p, g, buf)
    return (all(type(v) in (int, float) for v in hyper)
            and all(type(a) is np.ndarray and a.flags.c_contiguous for a in arrays)
            and p.dtype in (np.float32, np.float64) and g.dtype == p.dtype == buf.dtype
            and g.shape == p.shape == buf.shape)  # fmt: skip


def sgd_update_numpy(p, g, state, work, *, lr, momentum, dampening, weight_decay, nesterov):
    """:func:`sgd_update` in NumPy, one operation per line of torch's rule (the reference the
    one-pass kernel is tested against)."""
    d_p, tmp = work
    if weight_decay != 0:  # grad.add(param, alpha=weight_decay)
        np.multiply(p, weight_decay, out=d_p)
        d_p += g
        g = d_p
    if momentum != 0:
        buf = state.get("momentum_buffer")
        if buf is None:  # buf = grad.clone()
            buf = state["momentum_buffer"] = g.copy()
        else:  # buf.mul_(momentum).add_(grad, alpha=1 - dampening)
            buf *= momentum
            if dampening == 0:  # alpha == 1: the same numbers without the multiply
                buf += g
            else:
                np.multiply(g, 1 - dampening, out=tmp)
                buf += tmp
        if nesterov:  # grad = grad.add(buf, alpha=momentum)
            np.multiply(buf, momentum, out=tmp)
            np.add(g, tmp, out=d_p)
            g = d_p
        else:
            g = buf
    np.multiply(g, -lr, out=tmp)  # param.add_(grad, alpha=-lr)
    p += tmp


class SGD(Optimizer):
    """``SGD(params, lr, momentum=0, dampening=0, weight_decay=0, nesterov=False)``, as torch.

    ``params``: an iterable of Parameters, or of dicts ``{"params": [...], "lr": ..., ...}``
    (parameter groups; keys left out take the constructor's values).
    """

    def __init__(self, params, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
        defaults = dict(
            lr=lr,
            momentum=momentum,
            dampening=dampening,
            weight_decay=weight_decay,
            nesterov=nesterov,
        )
        super().__init__(params, defaults)

    update_rule = staticmethod(sgd_update)
    hyperparameters = ("lr", "momentum", "dampening", "weight_decay", "nesterov")
    work_arrays = 2
    non_negative = ("lr", "momentum", "weight_decay")
    flags = ("nesterov",)

    def _check_group(self, group):
        super()._check_group(group)
        number("SGD", "dampening", group["dampening"])
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError(
                "SGD: nesterov=True requires momentum > 0 and dampening == 0, got"
                f" momentum={group['momentum']} and dampening={group['dampening']}"
            )
