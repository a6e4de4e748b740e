"""Training without autograd: the :class:`Trainer` loop, checkpoints, metrics, plots, runs.

* :mod:`~npmobilenet.train.trainer`: :class:`Trainer` (forward, loss, zero_grad, backward,
  step), :func:`evaluate`, :func:`clip_grad_norm_`.
* :mod:`~npmobilenet.train.checkpoint`: one-file atomic checkpoints for an exact resume.
* :mod:`~npmobilenet.train.metrics` and :mod:`~npmobilenet.train.plots`: ``metrics.json``,
  ``metrics.csv``, the confusion matrix, PNG curves.
* :mod:`~npmobilenet.train.run`: a whole configured run, as ``npmobilenet train`` runs it.
"""

from npmobilenet.train.checkpoint import check_architecture, load_checkpoint, save_checkpoint
from npmobilenet.train.metrics import confusion_matrix, format_confusion, write_metrics
from npmobilenet.train.run import (
    DEFAULTS,
    evaluate_run,
    load_run,
    make_config,
    predict_images,
    train_run,
)
from npmobilenet.train.trainer import NonFiniteLossError, Trainer, clip_grad_norm_, evaluate

__all__ = [
    "Trainer",
    "evaluate",
    "clip_grad_norm_",
    "NonFiniteLossError",
    "save_checkpoint",
    "load_checkpoint",
    "check_architecture",
    "confusion_matrix",
    "format_confusion",
    "write_metrics",
    "DEFAULTS",
    "make_config",
    "train_run",
    "evaluate_run",
    "load_run",
    "predict_images",
]
