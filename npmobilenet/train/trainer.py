"""Training without autograd: the loop written out, one line per step of the algorithm.

One optimisation step on a batch ``x`` ``(N, C, H, W)`` with labels ``y`` ``(N,)``::

    logits = model.forward(x)                              # forward        (N, K)
    loss, cache = ops.cross_entropy_forward(logits, y)     # loss           scalar
    model.zero_grad()                                      # zero_grad      every .grad = 0
    model.backward(ops.cross_entropy_backward(1.0, cache)) # backward       fills every .grad
    optimizer.step()                                       # step           p -= lr * update

An epoch is that step over every training batch (model in train mode: batch statistics,
dropout on), then one pass over the test batches in eval mode (running statistics, no
gradients; the fused engine of ``model.fuse()`` computes it, see :func:`evaluate`).
:class:`Trainer` adds the practical parts around it: label smoothing, gradient
clipping by global norm, the learning-rate schedule (stepped per batch for one-cycle, per epoch
otherwise), a progress bar, a per-epoch history, checkpoints, and a stop with a clear message
when the loss stops being finite.
"""

from __future__ import annotations

import copy
import inspect
import math
import os
import sys
import time
from numbers import Real

import numpy as np

from npmobilenet import ops
from npmobilenet._checks import describe, number, short_repr
from npmobilenet.fast import UnsupportedModuleError
from npmobilenet.optim.lr_scheduler import OneCycleLR
from npmobilenet.train.checkpoint import (
    check_architecture,
    check_generator_states,
    generator_states,
    load_checkpoint,
    load_generator_states,
    save_checkpoint,
)
from npmobilenet.train.metrics import confusion_matrix


class NonFiniteLossError(RuntimeError):
    """The training loss became nan or inf; the step that produced it was not applied."""


def clip_grad_norm_(parameters, max_norm: float, norm_type: float = 2.0) -> float:
    """Scale every gradient by ``min(1, max_norm / (total_norm + 1e-6))``, in place.

    ``total_norm`` is the norm of all gradients taken together (the norm of the per-parameter
    norms), as ``torch.nn.utils.clip_grad_norm_`` computes it; ``norm_type`` 2 or ``inf``.
    Returns ``total_norm`` (before clipping).
    """
    op = "clip_grad_norm_"
    max_norm = number(op, "max_norm", max_norm, low=0)
    if norm_type not in (2, 2.0, math.inf):
        raise ValueError(f"{op}: norm_type must be 2 or inf, got {short_repr(norm_type)}")
    grads = [p.grad for p in parameters]
    if not grads:
        return 0.0
    if norm_type == math.inf:
        total = max(float(np.abs(g).max(initial=0)) for g in grads)
    else:
        norms = np.array([np.linalg.norm(g.reshape(-1)) for g in grads], dtype=grads[0].dtype)
        total = float(np.linalg.norm(norms))
    coef = min(max_norm / (total + 1e-6), 1.0)  # clip_coef, clamped at 1
    for g in grads:
        g *= g.dtype.type(coef)
    return total


class Trainer:
    """Fit ``model`` with ``optimizer`` on ``train_loader``, evaluating on ``test_loader``.

    Args:
        model: an npmobilenet model (``forward``/``backward``/``zero_grad``/``train``/``eval``/
            ``parameters``): a MobileNetV1 or a module of your own (its checkpoints then store
            an empty architecture config).
        optimizer: an :mod:`npmobilenet.optim` optimizer over the model's parameters.
        train_loader, test_loader: :class:`~npmobilenet.data.DataLoader` s (test may be None).
        scheduler: an :mod:`npmobilenet.optim.lr_scheduler` schedule, or None.
        scheduler_interval: ``"batch"`` or ``"epoch"``; default ``"batch"`` for
            :class:`OneCycleLR` (its steps are batches), ``"epoch"`` otherwise.
        label_smoothing: passed to the training loss (the test loss is plain cross-entropy).
        max_grad_norm: clip gradients to this global 2-norm before each step (None: no clip).
        progress: ``"auto"`` (a tqdm bar when tqdm is installed and stderr is a terminal),
            ``"bar"`` (force the bar), ``"plain"`` (one line per epoch) or ``"none"``.
        log: where the per-epoch lines go (default ``print``).
        config: the run configuration, stored in checkpoints (must be JSON-able).

    After each epoch ``history`` (a dict of per-epoch lists) has grown by one entry, and
    ``epoch`` counts the completed epochs.
    """

    def __init__(
        self,
        model,
        optimizer,
        train_loader,
        test_loader=None,
        scheduler=None,
        scheduler_interval=None,
        label_smoothing=0.0,
        max_grad_norm=None,
        progress="auto",
        log=print,
        config=None,
    ):
        op = "Trainer"
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.train_loader, self.test_loader = train_loader, test_loader
        if scheduler_interval is None:
            scheduler_interval = "batch" if isinstance(scheduler, OneCycleLR) else "epoch"
        if scheduler_interval not in ("batch", "epoch"):
            raise ValueError(
                f"{op}: scheduler_interval must be 'batch' or 'epoch',"
                f" got {short_repr(scheduler_interval)}"
            )
        if progress not in ("auto", "bar", "plain", "none"):
            raise ValueError(
                f"{op}: progress must be 'auto', 'bar', 'plain' or 'none',"
                f" got {short_repr(progress)}"
            )
        self.scheduler_interval = scheduler_interval
        self.label_smoothing = number(op, "label_smoothing", label_smoothing, 0, 1)
        if max_grad_norm is not None:
            max_grad_norm = number(op, "max_grad_norm", max_grad_norm, low=0, low_open=True)
        self.max_grad_norm = max_grad_norm
        self.progress, self.log = progress, log
        self.config = dict(config or {})
        # The images' own gradient is never needed: skip it when the model can (MobileNetV1).
        accepts = "input_grad" in inspect.signature(model.backward).parameters
        self._backward_kwargs = {"input_grad": False} if accepts else {}
        self.epoch = 0
        self.history = {"epoch": [], "lr": [], "train_loss": [], "train_accuracy": [],
                        "test_loss": [], "test_accuracy": [], "epoch_seconds": [],
                        "images_per_second": []}  # fmt: skip

    # ----------------------------------------------------------------- the algorithm
    def train_step(self, x: np.ndarray, y: np.ndarray) -> tuple[float, int]:
        """One optimisation step on a batch; returns (loss, number of correct predictions)."""
        logits = self.model.forward(x)  # forward: (N, K)
        loss, cache = ops.cross_entropy_forward(
            logits, y, label_smoothing=self.label_smoothing
        )  # loss
        if not np.isfinite(loss):
            raise NonFiniteLossError(f"the training loss is {float(loss)}")
        self.model.zero_grad()  # zero_grad
        self.model.backward(ops.cross_entropy_backward(1.0, cache), **self._backward_kwargs)
        if self.max_grad_norm is not None:  # the parameters trained now (a model unfrozen
            clip_grad_norm_(self.trainable(), self.max_grad_norm)  # mid-run clips them all)
        self.optimizer.step()  # step
        if self.scheduler is not None and self.scheduler_interval == "batch":
            self.scheduler.step()
        return float(loss), int((logits.argmax(axis=1) == y).sum())

    def train_epoch(self) -> dict:
        """One pass over the training batches: ``{"loss", "accuracy", "seconds", "images"}``."""
        self.model.train()
        total_loss = correct = seen = 0
        start = time.perf_counter()
        bar = self._bar(len(self.train_loader) - self.train_loader.batch)
        for b, (x, y) in enumerate(self.train_loader):
            try:
                loss, right = self.train_step(x, y)
            except NonFiniteLossError as e:
                raise NonFiniteLossError(
                    f"{e} at epoch {self.epoch + 1}, batch {b + 1}: training stopped (the"
                    " weights diverged; try a lower learning rate or --max-grad-norm)"
                ) from None
            total_loss, correct, seen = total_loss + loss * len(y), correct + right, seen + len(y)
            if bar is not None:
                rate = seen / (time.perf_counter() - start)
                bar.set_postfix_str(
                    f"loss {total_loss / seen:.4f} acc {100 * correct / seen:.1f}% {rate:.0f} img/s"
                )
                bar.update(1)
        if bar is not None:
            bar.close()
        seconds = time.perf_counter() - start
        return {"loss": total_loss / seen, "accuracy": correct / seen, "seconds": seconds,
                "images": seen}  # fmt: skip

    def evaluate(self, loader) -> dict:
        """Eval-mode pass: ``{"loss", "accuracy", "confusion", "n"}`` (plain cross-entropy)."""
        self.model.eval()
        return evaluate(self.model, loader, self.model_classes())

    def fit(self, epochs: int, checkpoint_path=None, on_epoch_end=None) -> dict:
        """Train until ``epochs`` epochs are complete (continuing from ``self.epoch``).

        After every epoch: step a per-epoch schedule, record the history, print one line,
        write ``checkpoint_path`` (if given) and call ``on_epoch_end(trainer, test_result)``.
        Returns ``history``.
        """
        while self.epoch < epochs:
            train = self.train_epoch()
            test = self.evaluate(self.test_loader) if self.test_loader is not None else None
            if test is not None and not np.isfinite(test["loss"]):
                raise NonFiniteLossError(
                    f"the test loss is {test['loss']} after epoch {self.epoch + 1}: the model's"
                    " outputs on the test images are not finite; training stopped (try a lower"
                    " learning rate or --max-grad-norm)"
                )
            lr = self.optimizer.param_groups[0]["lr"]
            if self.scheduler is not None and self.scheduler_interval == "epoch":
                self.scheduler.step()
            self.epoch += 1
            self._record(train, test, lr)
            if self.log is not None:
                self.log(self.epoch_line(epochs))
            if checkpoint_path is not None:
                self.save_checkpoint(checkpoint_path)
            if on_epoch_end is not None:
                on_epoch_end(self, test)
        return self.history

    # ----------------------------------------------------------------- bookkeeping
    def trainable(self) -> list:
        """The model's parameters that require a gradient, as they are now."""
        return [p for p in self.model.parameters() if p.requires_grad]

    def model_classes(self) -> int | None:
        """The model's class count from its ``config`` (a MobileNetV1's), else None (then
        :func:`evaluate` takes it from the logits' width)."""
        config = getattr(self.model, "config", None)
        if isinstance(config, dict) and "num_classes" in config:
            return int(config["num_classes"])
        return None

    def _record(self, train: dict, test: dict | None, lr: float) -> None:
        h = self.history
        h["epoch"].append(self.epoch)
        h["lr"].append(lr)
        h["train_loss"].append(train["loss"])
        h["train_accuracy"].append(train["accuracy"])
        h["test_loss"].append(test["loss"] if test else None)
        h["test_accuracy"].append(test["accuracy"] if test else None)
        h["epoch_seconds"].append(train["seconds"])
        h["images_per_second"].append(train["images"] / train["seconds"])

    def epoch_line(self, epochs: int) -> str:
        """The last epoch as one line: losses, accuracies, speed."""
        h, i = self.history, -1
        line = (
            f"epoch {h['epoch'][i]:>{len(str(epochs))}}/{epochs}  lr {h['lr'][i]:.4f}  "
            f"train loss {h['train_loss'][i]:.4f} acc {100 * h['train_accuracy'][i]:5.1f}%"
        )
        if h["test_loss"][i] is not None:
            line += f"  test loss {h['test_loss'][i]:.4f} acc {100 * h['test_accuracy'][i]:5.1f}%"
        return line + f"  {h['images_per_second'][i]:.0f} img/s"

    def _bar(self, total: int):
        """A tqdm bar for one epoch, or None (no tqdm, not a terminal, or plain output)."""
        if self.progress in ("plain", "none"):
            return None
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return None
        if self.progress == "auto" and not sys.stderr.isatty():
            return None
        return tqdm(total=total, desc=f"epoch {self.epoch + 1}", leave=False, unit="batch")

    # ----------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        """Everything that changes during training, besides the model's own state_dict."""
        return {
            "epoch": self.epoch,
            "config": self.config,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "train_loader": self.train_loader.state_dict(),
            "generators": generator_states(self.model),
            "history": self.history,
        }

    def save_checkpoint(self, path) -> None:
        """Write model + :meth:`state_dict` to ``path`` atomically (see ``checkpoint.py``)."""
        save_checkpoint(path, self.model, self.state_dict())

    def load_checkpoint(self, path) -> dict:
        """Continue from a checkpoint written by :meth:`save_checkpoint`; returns it.

        Everything (the file, the architecture, every part of the state) is checked before
        anything changes: on an error, naming the file, the trainer is exactly as it was.
        """
        ckpt = load_checkpoint(path)
        check_architecture(ckpt["model_config"], getattr(self.model, "config", None) or {},
                           f"checkpoint {path}")  # fmt: skip
        self.load_state_dict(ckpt, source=f"checkpoint {os.fspath(path)}")
        return ckpt

    def load_state_dict(self, ckpt: dict, source: str = "the checkpoint") -> None:
        """Restore a loaded checkpoint (model arrays under ``"model"``), all or nothing.

        Every part is checked first (the optimizer's, scheduler's and loader's states, the
        generators, the epoch and the history); then the model's arrays are loaded (which checks
        them all before copying any), and only then the rest, which can no longer fail.
        """
        try:
            epoch, history = self._check_state(ckpt)
        except (ValueError, TypeError, KeyError) as e:
            raise ValueError(f"{source} is damaged: {e}") from None
        try:
            self.model.load_state_dict(ckpt["model"])
        except (ValueError, TypeError) as e:
            raise ValueError(f"{source}: {e}") from None
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(ckpt["scheduler"])
        self.train_loader.load_state_dict(ckpt["train_loader"])
        load_generator_states(self.model, ckpt["generators"])
        self.history, self.epoch = history, epoch

    def _check_state(self, ckpt) -> tuple[int, dict]:
        """Raise if any part of ``ckpt`` would fail to load; returns ``(epoch, history)``."""
        if not isinstance(ckpt, dict):
            raise TypeError(f"expected a checkpoint dict, got {describe(ckpt)}")
        missing = [k for k in _STATE_KEYS if k not in ckpt]
        if missing:
            raise KeyError(f"it lacks {', '.join(missing)}")
        epoch = ckpt["epoch"]
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch must be an integer >= 0, got {describe(epoch)}")
        if ckpt["scheduler"] is None and self.scheduler is not None:
            raise ValueError("it has no scheduler state but this run uses a scheduler")
        self.optimizer.check_state_dict(ckpt["optimizer"])
        if self.scheduler is not None:
            self.scheduler.check_state_dict(ckpt["scheduler"])
        copy.copy(self.train_loader).load_state_dict(ckpt["train_loader"])  # a dry run
        check_generator_states(self.model, ckpt["generators"])
        return epoch, _checked_history(ckpt["history"], self.history, epoch)


_STATE_KEYS = ("model", "epoch", "optimizer", "scheduler", "train_loader", "generators", "history")


def _checked_history(saved, mine: dict, epoch: int) -> dict:
    """A copy of a saved history: the same keys as ``mine``, each a list of ``epoch`` numbers
    (or None for a missing test split)."""
    if not isinstance(saved, dict) or set(saved) != set(mine):
        raise ValueError(f"history must be a dict with keys {sorted(mine)}, got {describe(saved)}")
    out = {}
    for k, v in saved.items():
        if not isinstance(v, list) or len(v) != epoch:
            raise ValueError(f"history {k!r} must be a list of {epoch} values, got {describe(v)}")
        bad = [x for x in v if x is not None and (isinstance(x, bool) or not isinstance(x, Real))]
        if bad:
            raise ValueError(f"history {k!r} must hold numbers, got {describe(bad[0])}")
        out[k] = list(v)
    return out


def inference_forward(model):
    """What runs a model for evaluation: ``model.fuse()`` (the fused engine, the same logits up
    to float rounding) when the model is in eval mode and can be fused, otherwise
    ``model.forward`` (training mode, or a module the engine does not know)."""
    if model.training or not callable(getattr(model, "fuse", None)):
        return model.forward
    try:
        return model.fuse()
    except UnsupportedModuleError:
        return model.forward


def evaluate(model, loader, num_classes: int | None = None) -> dict:
    """Run ``model`` (in its current mode; see :func:`inference_forward`) over ``loader``: mean
    cross-entropy, accuracy and the ``(K, K)`` confusion matrix (rows: true class; K is
    ``num_classes``, or the logits' width when None)."""
    if loader is None:
        raise TypeError(f"evaluate: loader must be a DataLoader, got {describe(loader)}")
    forward = inference_forward(model)
    total_loss, n, cm = 0.0, 0, None
    for x, y in loader:
        logits = forward(x)  # (N, K)
        if cm is None:
            num_classes = logits.shape[1] if num_classes is None else num_classes
            cm = np.zeros((num_classes, num_classes), dtype=np.int64)
        loss, _ = ops.cross_entropy_forward(logits, y, reduction="sum")
        total_loss += float(loss)
        n += len(y)
        cm += confusion_matrix(y, logits.argmax(axis=1), num_classes)
    return {"loss": total_loss / n, "accuracy": float(np.trace(cm)) / n, "confusion": cm, "n": n}
