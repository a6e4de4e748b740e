"""Learning-rate schedules with ``torch.optim.lr_scheduler``'s semantics and numbers.

Usage is torch's: build the scheduler after the optimizer (the constructor performs the initial
step, setting epoch 0's learning rate), then call ``optimizer.step()`` followed by
``scheduler.step()`` once per epoch (or per batch for :class:`OneCycleLR`).

A scheduler writes the new rate into ``optimizer.param_groups[i]["lr"]``; the optimizer reads it
on its next step. Most schedules are computed the way torch computes them, *recursively* from
the group's current rate (e.g. StepLR multiplies it by ``gamma``), so the float64 sequences are
the same numbers torch produces, not merely close. A ``_closed_form_lr`` (used by
:class:`SequentialLR` at its milestones, as in torch) gives the rate at ``last_epoch`` directly.

``state_dict()`` holds only plain Python values (numbers, lists, strings, dicts): JSON-safe.
"""

from __future__ import annotations

import math
from bisect import bisect_right

from npmobilenet._checks import describe, integer, number, short_repr
from npmobilenet.optim.optimizer import Optimizer


def _per_group(op: str, name: str, optimizer: Optimizer, value) -> list:
    """A value per parameter group: a list of the right length, or one value repeated."""
    if isinstance(value, (list, tuple)):
        if len(value) != len(optimizer.param_groups):
            raise ValueError(
                f"{op}: {name} has {len(value)} values but the optimizer has"
                f" {len(optimizer.param_groups)} parameter groups"
            )
        return list(value)
    return [value] * len(optimizer.param_groups)


class LRScheduler:
    """Base class: ``base_lrs``, ``last_epoch`` (-1 before the initial step), ``get_last_lr()``."""

    def __init__(self, optimizer: Optimizer):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(
                f"{type(self).__name__}: optimizer must be an npmobilenet optimizer,"
                f" got {describe(optimizer)}"
            )
        self.optimizer = optimizer
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
        self.last_epoch = -1
        self._initial_step()

    def _initial_step(self) -> None:
        self._step_count = 0
        self._is_initial = True
        self.step()
        self._is_initial = False

    def get_lr(self) -> list[float]:
        """The rates for ``last_epoch`` (already advanced); subclasses implement it."""
        raise NotImplementedError

    def step(self) -> None:
        """Advance one epoch (or one batch) and write the new rates into the optimizer."""
        self._step_count += 1
        self._update_lr()

    def _update_lr(self, epoch: int | None = None) -> None:
        if epoch is None:
            self.last_epoch += 1
            values = self.get_lr()
        else:  # jump to an epoch (SequentialLR at a milestone): the closed form if there is one
            self.last_epoch = epoch
            closed = getattr(self, "_closed_form_lr", None)
            values = closed() if closed is not None else self.get_lr()
        for group, lr in zip(self.optimizer.param_groups, values):
            group["lr"] = lr
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def get_last_lr(self) -> list[float]:
        """The rates the last ``step()`` set, one per parameter group."""
        return list(self._last_lr)

    def _current(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        """Every attribute except the optimizer: plain numbers, lists and strings."""
        return {k: _copy(v) for k, v in self.__dict__.items() if k != "optimizer"}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore attributes saved by :meth:`state_dict` (the optimizer is restored separately).

        The saved state must have this scheduler's layout (the same keys, list lengths and
        kinds of value); it is checked before anything changes.
        """
        self.check_state_dict(state_dict)
        self.__dict__.update({k: _copy(v) for k, v in state_dict.items()})

    def check_state_dict(self, state_dict: dict) -> None:
        """Raise a ValueError if ``state_dict`` is not a state of this scheduler; change nothing."""
        op = f"{type(self).__name__}.load_state_dict"
        if not isinstance(state_dict, dict) or "last_epoch" not in state_dict:
            raise ValueError(
                f"{op}: expected a scheduler state dict with 'last_epoch', got"
                f" {describe(state_dict)}"
            )
        problem = _layout_difference(self.state_dict(), state_dict, "state")
        if problem:
            raise ValueError(f"{op}: the saved state does not fit this scheduler: {problem}")


def _layout_difference(mine, theirs, path: str):
    """Where ``theirs`` differs from ``mine`` in structure or kind of value (None if nowhere).

    Dicts must have the same keys and lists the same lengths; numbers match numbers (not bools),
    and every other leaf matches its own type.
    """
    if isinstance(mine, dict):
        if not isinstance(theirs, dict) or set(mine) != set(theirs):
            return f"{path} should be a dict with keys {sorted(mine)}, got {describe(theirs)}"
        for k in mine:
            problem = _layout_difference(mine[k], theirs[k], f"{path}.{k}")
            if problem:
                return problem
        return None
    if isinstance(mine, (list, tuple)):
        if not isinstance(theirs, (list, tuple)) or len(theirs) != len(mine):
            return f"{path} should be a list of {len(mine)}, got {describe(theirs)}"
        for i, (a, b) in enumerate(zip(mine, theirs)):
            problem = _layout_difference(a, b, f"{path}[{i}]")
            if problem:
                return problem
        return None
    if isinstance(mine, bool) or not isinstance(mine, (int, float)):
        ok = type(theirs) is type(mine)
    else:
        ok = isinstance(theirs, (int, float)) and not isinstance(theirs, bool)
        ok = ok and (math.isfinite(theirs) or not math.isfinite(mine))
        ok = ok and (isinstance(theirs, int) or not isinstance(mine, int))
    return None if ok else f"{path} should be like {describe(mine)}, got {describe(theirs)}"


def _copy(v):
    if isinstance(v, dict):
        return {k: _copy(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_copy(x) for x in v]
    return v


class StepLR(LRScheduler):
    """``lr = initial_lr * gamma ** (epoch // step_size)``, computed as torch does."""

    def __init__(self, optimizer, step_size: int, gamma: float = 0.1):
        self.step_size = integer("StepLR", "step_size", step_size, minimum=1)
        self.gamma = number("StepLR", "gamma", gamma, low=0)
        super().__init__(optimizer)

    def get_lr(self):
        if self.last_epoch == 0 or self.last_epoch % self.step_size != 0:
            return self._current()
        return [lr * self.gamma for lr in self._current()]

    def _closed_form_lr(self):
        return [b * self.gamma ** (self.last_epoch // self.step_size) for b in self.base_lrs]


class MultiStepLR(LRScheduler):
    """Multiply the rate by ``gamma`` at each epoch in ``milestones`` (repeats count twice)."""

    def __init__(self, optimizer, milestones, gamma: float = 0.1):
        self.milestones = sorted(
            integer("MultiStepLR", "milestones[i]", m, minimum=0) for m in milestones
        )
        self.gamma = number("MultiStepLR", "gamma", gamma, low=0)
        super().__init__(optimizer)

    def get_lr(self):
        if self.last_epoch not in self.milestones:
            return self._current()
        times = self.milestones.count(self.last_epoch)
        return [lr * self.gamma**times for lr in self._current()]

    def _closed_form_lr(self):
        n = bisect_right(self.milestones, self.last_epoch)
        return [b * self.gamma**n for b in self.base_lrs]


class ExponentialLR(LRScheduler):
    """``lr = initial_lr * gamma ** epoch``."""

    def __init__(self, optimizer, gamma: float):
        self.gamma = number("ExponentialLR", "gamma", gamma, low=0)
        super().__init__(optimizer)

    def get_lr(self):
        if self._is_initial:
            return self._current()
        return [lr * self.gamma for lr in self._current()]

    def _closed_form_lr(self):
        return [b * self.gamma**self.last_epoch for b in self.base_lrs]


class LinearLR(LRScheduler):
    """Linear warm-up: the factor goes from ``start_factor`` to ``end_factor`` over
    ``total_iters`` steps, then stays (torch's defaults: 1/3 -> 1 over 5 steps)."""

    def __init__(self, optimizer, start_factor=1.0 / 3, end_factor=1.0, total_iters=5):
        self.start_factor = number("LinearLR", "start_factor", start_factor, 0, 1, low_open=True)
        self.end_factor = number("LinearLR", "end_factor", end_factor, 0, 1)
        self.total_iters = integer("LinearLR", "total_iters", total_iters, minimum=1)
        super().__init__(optimizer)

    def get_lr(self):
        if self.last_epoch == 0:
            return [lr * self.start_factor for lr in self._current()]
        if self._is_initial or self.last_epoch > self.total_iters:
            return self._current()
        diff = self.end_factor - self.start_factor
        ratio = 1.0 + diff / (self.total_iters * self.start_factor + (self.last_epoch - 1) * diff)
        return [lr * ratio for lr in self._current()]

    def _closed_form_lr(self):
        diff = self.end_factor - self.start_factor
        t = min(self.total_iters, self.last_epoch)
        return [b * (self.start_factor + diff * t / self.total_iters) for b in self.base_lrs]


class CosineAnnealingLR(LRScheduler):
    """``lr = eta_min + (initial_lr - eta_min) * (1 + cos(pi * epoch / T_max)) / 2``, with
    torch's recursive form (and its behaviour past ``T_max``: the cosine continues upward)."""

    def __init__(self, optimizer, T_max: int, eta_min: float = 0.0):
        self.T_max = integer("CosineAnnealingLR", "T_max", T_max, minimum=1)
        self.eta_min = number("CosineAnnealingLR", "eta_min", eta_min, low=0)
        super().__init__(optimizer)

    def get_lr(self):
        t, T, eta = self.last_epoch, self.T_max, self.eta_min
        if self._is_initial:
            return self._current()
        if self._step_count == 1 and t > 0:
            return [eta + (b - eta) * (1 + math.cos(t * math.pi / T)) / 2 for b in self.base_lrs]
        if (t - 1 - T) % (2 * T) == 0:
            return [
                lr + (b - eta) * (1 - math.cos(math.pi / T)) / 2
                for b, lr in zip(self.base_lrs, self._current())
            ]
        ratio = (1 + math.cos(math.pi * t / T)) / (1 + math.cos(math.pi * (t - 1) / T))
        return [ratio * (lr - eta) + eta for lr in self._current()]

    def _closed_form_lr(self):
        t, T, eta = self.last_epoch, self.T_max, self.eta_min
        return [eta + (b - eta) * (1 + math.cos(math.pi * t / T)) / 2 for b in self.base_lrs]


class OneCycleLR(LRScheduler):
    """The one-cycle policy (Smith 2018), stepped once per *batch*, with torch's defaults.

    The rate rises from ``max_lr / div_factor`` to ``max_lr`` over the first ``pct_start`` of
    ``total_steps`` and anneals to ``initial_lr / final_div_factor`` by the end (``cos`` or
    ``linear``); with ``cycle_momentum`` the momentum (SGD/RMSprop ``momentum``, Adam ``beta1``)
    moves the opposite way between ``max_momentum`` and ``base_momentum``. Give ``total_steps`` or
    ``epochs`` and ``steps_per_epoch``. Stepping past ``total_steps`` is an error, as in torch.

    One deviation from torch: a phase that ends on the step it starts (a warm-up of exactly one
    step, as 4 total steps with ``pct_start=0.25`` or 1 step with ``pct_start=1`` give) takes its
    end value at that step, where torch divides by zero. Every longer schedule is torch's, bit
    for bit.
    """

    def __init__(
        self,
        optimizer,
        max_lr,
        total_steps=None,
        epochs=None,
        steps_per_epoch=None,
        pct_start=0.3,
        anneal_strategy="cos",
        cycle_momentum=True,
        base_momentum=0.85,
        max_momentum=0.95,
        div_factor=25.0,
        final_div_factor=1e4,
        three_phase=False,
    ):
        op = "OneCycleLR"
        if not isinstance(optimizer, Optimizer):
            raise TypeError(
                f"{op}: optimizer must be an npmobilenet optimizer, got {describe(optimizer)}"
            )
        if total_steps is not None:
            self.total_steps = integer(op, "total_steps", total_steps, minimum=1)
        elif epochs is not None and steps_per_epoch is not None:
            e = integer(op, "epochs", epochs, minimum=1)
            self.total_steps = e * integer(op, "steps_per_epoch", steps_per_epoch, minimum=1)
        else:
            raise ValueError(f"{op}: give total_steps, or both epochs and steps_per_epoch")
        pct_start = number(op, "pct_start", pct_start, 0, 1)
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(
                f"{op}: anneal_strategy must be 'cos' or 'linear',"
                f" got {short_repr(anneal_strategy)}"
            )
        self.anneal_strategy = anneal_strategy
        self._schedule_phases = _one_cycle_phases(pct_start, self.total_steps, three_phase)
        for group, m in zip(optimizer.param_groups, _per_group(op, "max_lr", optimizer, max_lr)):
            group["initial_lr"] = m / div_factor
            group["max_lr"] = m
            group["min_lr"] = group["initial_lr"] / final_div_factor
        self.cycle_momentum = bool(cycle_momentum)
        if self.cycle_momentum:
            if "momentum" not in optimizer.defaults and "betas" not in optimizer.defaults:
                raise ValueError(f"{op}: cycle_momentum needs an optimizer with momentum or betas")
            self.use_beta1 = "betas" in optimizer.defaults
            maxes = _per_group(op, "max_momentum", optimizer, max_momentum)
            bases = _per_group(op, "base_momentum", optimizer, base_momentum)
            for group, mx, base in zip(optimizer.param_groups, maxes, bases):
                self._set_momentum(group, mx)
                group["max_momentum"] = mx
                group["base_momentum"] = base
        super().__init__(optimizer)

    def _set_momentum(self, group, m):
        if self.use_beta1:
            group["betas"] = (m, *group["betas"][1:])
        else:
            group["momentum"] = m

    def _anneal(self, start, end, pct):
        if self.anneal_strategy == "cos":
            return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
        return (end - start) * pct + start

    def get_lr(self):
        step = self.last_epoch
        if step > self.total_steps:
            raise ValueError(
                f"OneCycleLR: stepped {step} times but total_steps is {self.total_steps}"
            )
        lrs = []
        for group in self.optimizer.param_groups:
            start = 0.0
            for i, phase in enumerate(self._schedule_phases):
                end = phase["end_step"]
                if step <= end or i == len(self._schedule_phases) - 1:
                    pct = (step - start) / (end - start) if end != start else 1.0
                    lrs.append(self._anneal(group[phase["start_lr"]], group[phase["end_lr"]], pct))
                    if self.cycle_momentum:
                        m = self._anneal(
                            group[phase["start_momentum"]], group[phase["end_momentum"]], pct
                        )
                        self._set_momentum(group, m)
                    break
                start = end
        return lrs


def _one_cycle_phases(pct_start: float, total: int, three_phase: bool) -> list[dict]:
    """torch's phase table: where each phase ends and which group keys it runs between."""
    up = {"end_step": float(pct_start * total) - 1, "start_lr": "initial_lr", "end_lr": "max_lr",
          "start_momentum": "max_momentum", "end_momentum": "base_momentum"}  # fmt: skip
    if not three_phase:
        down = {"end_step": total - 1, "start_lr": "max_lr", "end_lr": "min_lr",
                "start_momentum": "base_momentum", "end_momentum": "max_momentum"}  # fmt: skip
        return [up, down]
    return [
        up,
        {"end_step": float(2 * pct_start * total) - 2, "start_lr": "max_lr",
         "end_lr": "initial_lr", "start_momentum": "base_momentum",
         "end_momentum": "max_momentum"},
        {"end_step": total - 1, "start_lr": "initial_lr", "end_lr": "min_lr",
         "start_momentum": "max_momentum", "end_momentum": "max_momentum"},
    ]  # fmt: skip


class SequentialLR(LRScheduler):
    """Run ``schedulers[0]`` until ``milestones[0]``, then ``schedulers[1]``, ... (e.g. LinearLR
    warm-up then CosineAnnealingLR), as torch: each later schedule restarts at its epoch 0."""

    def __init__(self, optimizer, schedulers, milestones):
        op = "SequentialLR"
        schedulers = list(schedulers)
        if not schedulers:
            raise ValueError(f"{op}: schedulers is empty")
        for i, s in enumerate(schedulers):
            if not isinstance(s, LRScheduler) or s.optimizer is not optimizer:
                raise ValueError(f"{op}: schedulers[{i}] must be a scheduler of this optimizer")
        milestones = [integer(op, "milestones[i]", m, minimum=1) for m in milestones]
        if len(milestones) != len(schedulers) - 1:
            raise ValueError(
                f"{op}: needs len(schedulers) - 1 = {len(schedulers) - 1} milestones,"
                f" got {len(milestones)}"
            )
        self._schedulers = schedulers
        self._milestones = milestones
        self.last_epoch = 0
        self.optimizer = optimizer
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"]
        for s in schedulers:  # undo the initial steps the sub-schedulers took
            s.last_epoch -= 1
        schedulers[0]._initial_step()
        self._last_lr = schedulers[0].get_last_lr()

    def step(self) -> None:
        self.last_epoch += 1
        idx = bisect_right(self._milestones, self.last_epoch)
        scheduler = self._schedulers[idx]
        if idx > 0 and self._milestones[idx - 1] == self.last_epoch:
            scheduler._update_lr(0)
        else:
            scheduler.step()
        self._last_lr = scheduler.get_last_lr()

    def state_dict(self) -> dict:
        skip = ("optimizer", "_schedulers")
        out = {k: _copy(v) for k, v in self.__dict__.items() if k not in skip}
        out["_schedulers"] = [s.state_dict() for s in self._schedulers]
        return out

    def load_state_dict(self, state_dict: dict) -> None:
        self.check_state_dict(state_dict)
        state_dict = dict(state_dict)
        subs = state_dict.pop("_schedulers")
        self.__dict__.update({k: _copy(v) for k, v in state_dict.items()})
        for s, sd in zip(self._schedulers, subs):
            s.load_state_dict(sd)
