"""Building optimizers: a factory by name, and the MobileNet paper's weight-decay groups."""

from __future__ import annotations

import inspect
from collections.abc import Mapping

from npmobilenet._checks import describe, number
from npmobilenet.nn.parameter import Parameter
from npmobilenet.optim.adam import Adam, AdamW
from npmobilenet.optim.rmsprop import RMSprop
from npmobilenet.optim.sgd import SGD

OPTIMIZERS = {"sgd": SGD, "rmsprop": RMSprop, "adam": Adam, "adamw": AdamW}


def make_optimizer(name: str, params, **hparams):
    """``make_optimizer("sgd", params, lr=0.1, momentum=0.9)``: an optimizer by (case-blind) name.

    Names: ``sgd``, ``rmsprop``, ``adam``, ``adamw``. Unknown names or hyper-parameters get a
    ``ValueError``/``TypeError`` listing what is accepted.
    """
    key = name.lower() if isinstance(name, str) else name
    if key not in OPTIMIZERS:
        raise ValueError(
            f"make_optimizer: unknown optimizer {name!r}; choose one of {sorted(OPTIMIZERS)}"
        )
    cls = OPTIMIZERS[key]
    names = inspect.signature(cls.__init__).parameters
    accepted = [a for a in names if a not in ("self", "params")]
    unknown = sorted(set(hparams) - set(accepted))
    if unknown:
        raise TypeError(
            f"make_optimizer: {cls.__name__} does not take {unknown}; it takes {accepted}"
        )
    return cls(params, **hparams)


def paper_param_groups(named_parameters, weight_decay, depthwise_weight_decay=0.0):
    """Parameter groups with the MobileNet paper's weight decay recommendation.

    * 1-D parameters (BatchNorm scale and shift, biases): no weight decay;
    * depthwise filters (4-D, shape ``(C, 1, kH, kW)``): ``depthwise_weight_decay`` (the paper:
      "very little or no weight decay" since they have so few parameters);
    * everything else (pointwise and standard conv filters, the classifier): ``weight_decay``.

    ``named_parameters``: a mapping or an iterable of ``(name, Parameter)`` pairs. Note that a
    standard conv with one input channel (a grayscale stem) has the depthwise shape too and so
    falls in the depthwise group. Returns a list of group dicts (empty groups left out), each
    ``{"params": [...], "weight_decay": ..., "names": [...]}``; pass it to any optimizer.
    """
    op = "paper_param_groups"
    weight_decay = number(op, "weight_decay", weight_decay, low=0)
    depthwise_weight_decay = number(op, "depthwise_weight_decay", depthwise_weight_decay, low=0)
    items = named_parameters.items() if isinstance(named_parameters, Mapping) else named_parameters
    buckets = {"decay": [], "depthwise": [], "no_decay": []}
    for item in items:
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], Parameter)):
            raise TypeError(f"{op}: expected (name, Parameter) pairs, got {describe(item)}")
        name, p = item
        if p.data.ndim <= 1:
            buckets["no_decay"].append((name, p))
        elif p.data.ndim == 4 and p.data.shape[1] == 1:
            buckets["depthwise"].append((name, p))
        else:
            buckets["decay"].append((name, p))
    if not any(buckets.values()):
        raise ValueError(f"{op}: named_parameters is empty")
    decay = {"decay": weight_decay, "depthwise": depthwise_weight_decay, "no_decay": 0.0}
    return [
        {"params": [p for _, p in pairs], "weight_decay": decay[k], "names": [n for n, _ in pairs]}
        for k, pairs in buckets.items()
        if pairs
    ]
