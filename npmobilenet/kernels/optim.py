"""Optimizer update rules in one pass over the arrays.

NumPy applies an update rule one operation at a time: SGD with momentum reads and writes the
momentum buffer twice and the weights once more through a scratch array, four passes in all.
The kernel here does the same operations, in the same order and at the same precision, on
each element in turn, so its result is bit for bit that of the NumPy rule in
:mod:`npmobilenet.optim.sgd` (the tests compare the two): no multiply-add is fused (Numba does
not contract ``a * b + c`` without fast-math), and every scalar arrives already rounded to the
arrays' dtype, as NumPy rounds a Python float operand.

Serial: the update is a single stream over the parameters, a few MB, which one core runs near
the memory's speed.
"""

from __future__ import annotations

from numba import njit


@njit(cache=True, nogil=True)
def sgd_momentum_step(p, g, buf, neg_lr, momentum, one_minus_dampening, weight_decay,
                      nesterov):  # fmt: skip
    """One SGD step with an existing momentum buffer, in place on ``p`` and ``buf``.

    ``p``, ``g``, ``buf``: (size,) of one dtype, ``g`` only read; the scalars in that dtype:
    ``neg_lr`` = -lr, ``one_minus_dampening`` = 1 - dampening (1: no dampening, no multiply),
    ``weight_decay`` (0: none). Per element, as ``sgd_update``'s NumPy lines::

        d = g + weight_decay * p             (when weight_decay != 0)
        buf = momentum * buf + (1 - dampening) * d
        d = d + momentum * buf  (nesterov)   or   d = buf
        p = p + (-lr) * d
    """
    decay, damped = weight_decay != 0, one_minus_dampening != 1
    for i in range(p.shape[0]):
        d = g[i]
        if decay:
            t = p[i] * weight_decay
            d = t + d
        b = buf[i] * momentum
        if damped:
            t = d * one_minus_dampening
            b = b + t
        else:
            b = b + d
        buf[i] = b
        if nesterov:
            t = b * momentum
            d = d + t
        else:
            d = b
        t = d * neg_lr
        p[i] = p[i] + t
