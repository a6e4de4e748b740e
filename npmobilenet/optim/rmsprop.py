"""RMSprop (the MobileNet paper's optimizer), plain or centred, with optional momentum.

The rule is ``torch.optim.RMSprop``'s single-tensor path, line for line (v the square average,
m the gradient average of the centred variant, b the momentum buffer)::

    g = g + weight_decay * p                          (if weight_decay != 0)
    v = alpha * v + (1 - alpha) * g * g
    m = lerp(m, g, 1 - alpha);  avg = sqrt(v - m * m) + eps     (centred)
                                avg = sqrt(v) + eps             (otherwise)
    b = momentum * b + g / avg;  p = p - lr * b       (momentum > 0)
    p = p - lr * g / avg                              (otherwise)
"""

from __future__ import annotations

import numpy as np

from npmobilenet.optim.optimizer import Optimizer


def lerp_(start, end, weight, tmp):
    """``start = start + weight * (end - start)`` in place, as ``torch.lerp_`` computes it.

    torch switches to ``end - (end - start) * (1 - weight)`` when ``|weight| >= 0.5``; so do we.
    ``tmp``: a scratch array shaped like ``start``.
    """
    np.subtract(end, start, out=tmp)
    if abs(weight) < 0.5:
        tmp *= weight
        start += tmp
    else:
        tmp *= weight - 1
        np.add(end, tmp, out=start)


def rmsprop_update(p, g, state, work, *, lr, alpha, eps, weight_decay, momentum, centered):
    """One RMSprop step on ``p`` in place. ``p``, ``g``: same shape; ``work``: 3 scratch arrays.

    ``state``: ``"step"`` (int), ``"square_avg"``, and ``"momentum_buffer"`` (momentum > 0) and
    ``"grad_avg"`` (centred), all shaped like ``p``, created on the first step.
    """
    if not state:
        state["step"] = 0
        state["square_avg"] = np.zeros_like(p)
        if momentum > 0:
            state["momentum_buffer"] = np.zeros_like(p)
        if centered:
            state["grad_avg"] = np.zeros_like(p)
    d_p, avg, tmp = work
    state["step"] += 1
    if weight_decay != 0:  # grad = grad.add(param, alpha=weight_decay)
        np.multiply(p, weight_decay, out=d_p)
        d_p += g
        g = d_p
    square_avg = state["square_avg"]  # square_avg.mul_(alpha).addcmul_(grad, grad, 1 - alpha)
    square_avg *= alpha
    np.multiply(g, 1 - alpha, out=tmp)
    tmp *= g
    square_avg += tmp
    if centered:
        grad_avg = state["grad_avg"]
        lerp_(grad_avg, g, 1 - alpha, tmp)  # grad_avg.lerp_(grad, 1 - alpha)
        np.multiply(grad_avg, grad_avg, out=avg)  # square_avg.addcmul(grad_avg, grad_avg, -1)
        np.subtract(square_avg, avg, out=avg)
        np.sqrt(avg, out=avg)  # .sqrt_()
    else:
        np.sqrt(square_avg, out=avg)
    avg += eps
    if momentum > 0:
        buf = state.get("momentum_buffer")
        if buf is None:  # momentum switched on later (e.g. by a one-cycle schedule)
            buf = state["momentum_buffer"] = np.zeros_like(p)
        buf *= momentum  # buf.mul_(momentum).addcdiv_(grad, avg)
        np.divide(g, avg, out=tmp)
        buf += tmp
        np.multiply(buf, -lr, out=tmp)  # param.add_(buf, alpha=-lr)
        p += tmp
    else:  # param.addcdiv_(grad, avg, value=-lr)
        np.multiply(g, -lr, out=tmp)
        tmp /= avg
        p += tmp


class RMSprop(Optimizer):
    """``RMSprop(params, lr=0.01, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0,
    centered=False)``, as torch. ``params``: Parameters or parameter-group dicts."""

    def __init__(
        self, params, lr=0.01, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False
    ):
        defaults = dict(
            lr=lr,
            alpha=alpha,
            eps=eps,
            weight_decay=weight_decay,
            momentum=momentum,
            centered=centered,
        )
        super().__init__(params, defaults)

    update_rule = staticmethod(rmsprop_update)
    hyperparameters = ("lr", "alpha", "eps", "weight_decay", "momentum", "centered")
    work_arrays = 3
    non_negative = ("lr", "alpha", "eps", "weight_decay", "momentum")
    flags = ("centered",)

    def _update(self, p, state, group, hyper):
        if group["centered"] and state and "grad_avg" not in state:
            state["grad_avg"] = np.zeros_like(p.data)
        super()._update(p, state, group, hyper)
