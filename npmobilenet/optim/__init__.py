"""Optimizers and learning-rate schedules with torch.optim's update rules and semantics.

``SGD``, ``RMSprop``, ``Adam``, ``AdamW`` update :class:`~npmobilenet.nn.parameter.Parameter`
objects in place; :func:`make_optimizer` builds one by name and :func:`paper_param_groups` the
MobileNet paper's weight-decay groups. Schedules live in :mod:`npmobilenet.optim.lr_scheduler`.
"""

from npmobilenet.optim import lr_scheduler
from npmobilenet.optim.adam import Adam, AdamW
from npmobilenet.optim.groups import OPTIMIZERS, make_optimizer, paper_param_groups
from npmobilenet.optim.optimizer import Optimizer
from npmobilenet.optim.rmsprop import RMSprop
from npmobilenet.optim.sgd import SGD
from npmobilenet.optim.state import join_arrays, split_arrays

__all__ = [
    "Optimizer",
    "SGD",
    "RMSprop",
    "Adam",
    "AdamW",
    "OPTIMIZERS",
    "make_optimizer",
    "paper_param_groups",
    "lr_scheduler",
    "split_arrays",
    "join_arrays",
]
