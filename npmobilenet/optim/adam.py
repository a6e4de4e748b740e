"""Adam and AdamW (Adam with decoupled weight decay), with optional AMSGrad.

The rule is ``torch.optim.Adam``'s single-tensor path, line for line (m, v the first and second
moment estimates, t the step count)::

    p = p * (1 - lr * weight_decay)                   (AdamW: decoupled decay)
    g = g + weight_decay * p                          (Adam: L2 penalty in the gradient)
    m = lerp(m, g, 1 - beta1)
    v = beta2 * v + (1 - beta2) * g * g
    v_max = max(v_max, v);  use v_max instead of v    (AMSGrad)
    denom = sqrt(v) / sqrt(1 - beta2**t) + eps
    p = p - lr / (1 - beta1**t) * m / denom
"""

from __future__ import annotations

import functools
import numbers

import numpy as np

from npmobilenet._checks import short_repr
from npmobilenet.optim.optimizer import Optimizer
from npmobilenet.optim.rmsprop import lerp_


def adam_update(p, g, state, work, *, lr, betas, eps, weight_decay, amsgrad, decoupled):
    """One Adam/AdamW step on ``p`` in place. ``p``, ``g``: same shape; ``work``: 2 scratch arrays.

    ``state``: ``"step"`` (int), ``"exp_avg"``, ``"exp_avg_sq"`` and (AMSGrad)
    ``"max_exp_avg_sq"``, all shaped like ``p``, created on the first step.
    """
    if not state:
        state["step"] = 0
        state["exp_avg"] = np.zeros_like(p)
        state["exp_avg_sq"] = np.zeros_like(p)
    if amsgrad and "max_exp_avg_sq" not in state:
        state["max_exp_avg_sq"] = np.zeros_like(p)
    beta1, beta2 = betas
    d_p, tmp = work
    state["step"] += 1
    step = state["step"]
    if weight_decay != 0:
        if decoupled:  # param.mul_(1 - lr * weight_decay)
            p *= 1 - lr * weight_decay
        else:  # grad = grad.add(param, alpha=weight_decay)
            np.multiply(p, weight_decay, out=d_p)
            d_p += g
            g = d_p
    exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
    lerp_(exp_avg, g, 1 - beta1, tmp)  # exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq *= beta2  # exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    np.multiply(g, 1 - beta2, out=tmp)
    tmp *= g
    exp_avg_sq += tmp

    bias_correction1 = 1 - beta1**step
    bias_correction2 = 1 - beta2**step
    step_size = lr / bias_correction1
    bias_correction2_sqrt = bias_correction2**0.5
    if amsgrad:
        second = state["max_exp_avg_sq"]
        np.maximum(second, exp_avg_sq, out=second)
    else:
        second = exp_avg_sq
    denom = np.sqrt(second, out=d_p)  # g is not needed any more: reuse its buffer
    denom /= bias_correction2_sqrt
    denom += eps
    np.multiply(exp_avg, -step_size, out=tmp)  # param.addcdiv_(exp_avg, denom, -step_size)
    tmp /= denom
    p += tmp


class Adam(Optimizer):
    """``Adam(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False)``.

    As ``torch.optim.Adam`` (weight decay as an L2 term in the gradient). ``params``: Parameters
    or parameter-group dicts.
    """

    update_rule = staticmethod(functools.partial(adam_update, decoupled=False))
    hyperparameters = ("lr", "betas", "eps", "weight_decay", "amsgrad")
    work_arrays = 2
    non_negative = ("lr", "eps", "weight_decay")
    flags = ("amsgrad",)

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 amsgrad=False):  # fmt: skip
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)
        super().__init__(params, defaults)

    def _check_group(self, group):
        super()._check_group(group)
        op, betas = type(self).__name__, group["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise TypeError(f"{op}: betas must be a pair (beta1, beta2), got {short_repr(betas)}")
        for i, b in enumerate(betas):
            if isinstance(b, bool) or not isinstance(b, numbers.Real) or not 0 <= b < 1:
                raise ValueError(f"{op}: betas[{i}] must be in [0, 1), got {short_repr(b)}")
        group["betas"] = tuple(float(b) for b in betas)


class AdamW(Adam):
    """``AdamW(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False)``.

    Adam with decoupled weight decay (the weights shrink by ``lr * weight_decay`` each step,
    outside the moment estimates), as ``torch.optim.AdamW``.
    """

    update_rule = staticmethod(functools.partial(adam_update, decoupled=True))

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False):  # fmt: skip
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad)
