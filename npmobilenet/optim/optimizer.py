"""The optimizer base class: parameter groups, ``zero_grad``, ``state_dict`` / ``load_state_dict``.

Every optimizer here follows ``torch.optim``:

* ``param_groups`` is a list of dicts, each with ``"params"`` (a list of
  :class:`~npmobilenet.nn.parameter.Parameter`) and that group's hyper-parameters. Anything that
  changes a hyper-parameter during training (a learning-rate scheduler, a one-cycle momentum
  schedule) writes into these dicts, and ``step()`` reads them afresh every call.
* ``state`` holds, per parameter, the running buffers of the update rule (momentum, moving
  averages, step count), created lazily on the first ``step()``.
* ``step()`` updates ``p.data`` **in place**: the weight arrays keep their identity, so a model
  holding views of them sees the new values. Parameters packed side by side in one buffer
  (``Module.pack_parameters``) are updated as one array: the update rules are elementwise, so
  the numbers are the same, with one call per operation instead of one per parameter. Their
  state arrays are then views of one buffer per state entry, kept by the optimizer
  (``_packed``) and made again from ``state`` whenever ``state`` no longer holds those views
  (after ``load_state_dict``, say).

The update rules themselves are small functions of ``(param, grad, state, hyper-parameters)`` in
``sgd.py``, ``rmsprop.py`` and ``adam.py``; they follow torch's single-tensor (``foreach=False``)
code operation for operation, so a float64 run matches torch to rounding.

``state_dict()`` returns nested dicts whose leaves are numpy arrays or plain Python numbers,
strings, bools and lists, with string keys only: it survives JSON (for the numbers) plus
safetensors (for the arrays); see :mod:`npmobilenet.optim.state`.
"""

from __future__ import annotations

import numbers
from itertools import repeat
from operator import is_, itemgetter

import numpy as np

from npmobilenet._checks import describe, number, short_repr
from npmobilenet.nn.parameter import Parameter, packed_runs


class Optimizer:
    """Base class. A subclass passes its ``defaults`` and names its update rule: the pure
    function ``update_rule(p, g, state, work, **hyper-parameters)``, the group keys it takes
    (``hyperparameters``), how many scratch arrays shaped like ``p`` it needs
    (``work_arrays``), and which group keys must be numbers >= 0 (``non_negative``) or bools
    (``flags``); ``_check_group`` checks anything else."""

    update_rule = None
    hyperparameters: tuple[str, ...] = ()
    work_arrays = 0
    non_negative: tuple[str, ...] = ()
    flags: tuple[str, ...] = ()

    def __init__(self, params, defaults: dict):
        name = type(self).__name__
        self.defaults = dict(defaults)
        self._check_group(self.defaults)
        self.param_groups: list[dict] = []
        self.state: dict[int, dict] = {}  # id(param) -> that parameter's buffers
        self._work: dict[int, list[np.ndarray]] = {}  # id(param) -> scratch arrays, not state
        # a run of packed parameters (_run_key) -> (the state arrays of the whole run,
        # {key: [view per parameter]}): the views this optimizer put into self.state
        self._packed: dict[tuple, tuple[dict, dict[str, list]]] = {}
        if isinstance(params, Parameter) or isinstance(params, dict):
            params = [params]
        try:
            params = list(params)
        except TypeError:
            raise TypeError(
                f"{name}: params must be an iterable of Parameters or of parameter-group dicts,"
                f" got {describe(params)}"
            ) from None
        if not params:
            raise ValueError(f"{name}: params is empty; the optimizer got no parameters to update")
        groups = params if isinstance(params[0], dict) else [{"params": params}]
        for group in groups:
            self.add_param_group(group)

    # ----- parameter groups -------------------------------------------------------------------

    def add_param_group(self, group: dict) -> None:
        """Add ``{"params": [...], **hyper-parameters}``; missing hyper-parameters take defaults."""
        name = type(self).__name__
        if not isinstance(group, dict) or "params" not in group:
            raise TypeError(
                f"{name}: a parameter group must be a dict with a 'params' key,"
                f" got {describe(group)}"
            )
        params = group["params"]
        params = [params] if isinstance(params, Parameter) else list(params)
        if not params:
            raise ValueError(f"{name}: a parameter group has an empty 'params' list")
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        for i, p in enumerate(params):
            if not isinstance(p, Parameter):
                raise TypeError(
                    f"{name}: params[{i}] must be an npmobilenet Parameter, got {describe(p)}"
                )
            if id(p) in seen:
                raise ValueError(f"{name}: params[{i}] ({p!r}) appears in more than one group")
            seen.add(id(p))
        full = {**self.defaults, **group, "params": params}
        self._check_group(full)
        self.param_groups.append(full)

    def _check_group(self, group: dict) -> None:
        """The ``non_negative`` numbers and the ``flags`` of a group (subclasses add more)."""
        op = type(self).__name__
        for key in self.non_negative:
            number(op, key, group[key], low=0)
        for key in self.flags:
            if not isinstance(group[key], bool):
                raise TypeError(f"{op}: {key} must be a bool, got {short_repr(group[key])}")

    def _params(self):
        for group in self.param_groups:
            yield from group["params"]

    # ----- the training-loop API --------------------------------------------------------------

    def zero_grad(self) -> None:
        """Fill every parameter's ``grad`` with zeros (gradients accumulate until then)."""
        for p in self._params():
            p.zero_grad()

    def step(self) -> None:
        """Apply one update to every parameter that requires a gradient, in place."""
        packs = type(self)._update is Optimizer._update  # (a subclass's own _update: per param)
        for group in self.param_groups:
            hyper = {k: group[k] for k in self.hyperparameters}  # read now: schedulers write them
            for run, data, grad in packed_runs(group["params"], trainable=True):
                state = None if data is None or not packs else self._run_state(run, data)
                if state is not None:
                    self.update_rule(data, grad, state, self._scratch_run(run, data), **hyper)
                    self._share_state(run, data, state)
                    continue
                for p in run:
                    self._update(p, self.state.setdefault(id(p), {}), group, hyper)

    def _update(self, p: Parameter, state: dict, group: dict, hyper: dict) -> None:
        """``update_rule`` on ``p`` in place, with ``hyper``: the group's hyper-parameters."""
        self.update_rule(p.data, p.grad, state, self._scratch(p, self.work_arrays), **hyper)

    def _scratch(self, p: Parameter, k: int) -> list[np.ndarray]:
        """``k`` reusable arrays shaped like ``p`` (allocated once, so a step makes no garbage)."""
        work = self._work.get(id(p))
        if work is None or len(work) < k:
            work = self._work.setdefault(id(p), [])
            work += [np.empty_like(p.data) for _ in range(k - len(work))]
        return work

    # ----- packed parameters: one update for a run of them -----------------------------------

    def _run_state(self, run: list[Parameter], data: np.ndarray) -> dict | None:
        """The state of the whole run for ``update_rule``: the buffers whose views ``state``
        holds, else new ones from the parameters' state (None if their entries differ)."""
        states = list(map(self.state.get, map(id, run), repeat(_NO_STATE)))
        if not all(map(states[0].keys().__eq__, map(dict.keys, states))):
            return None
        kept = self._packed.get(_run_key(run))
        if kept is not None and _hold_views(states, kept[1]):
            whole = {k: a for k, a in kept[0].items() if isinstance(a, np.ndarray)}
        elif all(not s for s in states):
            return {}
        else:
            whole = _joined(states, run)
            if whole is None:
                return None
        for k in states[0].keys() - whole.keys():  # numbers (a step count): the same for all
            if any(isinstance(s[k], np.ndarray) for s in states):
                return None
            if len({repr(s[k]) for s in states}) != 1:
                return None
            whole[k] = states[0][k]
        return whole

    def _share_state(self, run: list[Parameter], data: np.ndarray, whole: dict) -> None:
        """Give each parameter of the run its part of the run's state: views of its arrays,
        its numbers as they are."""
        key, views = _run_key(run), {}
        arrays = {k: a for k, a in whole.items() if isinstance(a, np.ndarray)}
        for k in whole.keys() - arrays.keys():
            for p in run:
                self.state.setdefault(id(p), {})[k] = whole[k]
        kept = self._packed.get(key)
        if kept is not None and kept[0].keys() == arrays.keys() \
                and all(kept[0][k] is a for k, a in arrays.items()):  # fmt: skip
            return  # the parameters hold views of these arrays already
        start = run[0].packed.start
        for k, a in arrays.items():
            views[k] = []
            for p in run:
                lo, hi = p.packed.start - start, p.packed.stop - start
                view = self.state.setdefault(id(p), {})[k] = a[lo:hi].reshape(p.data.shape)
                views[k].append(view)
        self._packed[key] = (arrays, views)

    def _scratch_run(self, run: list[Parameter], data: np.ndarray) -> list[np.ndarray]:
        """``work_arrays`` reusable arrays shaped like the run's 1-D ``data``."""
        key = _run_key(run)
        work = self._work.get(key)
        if work is None or len(work) < self.work_arrays or work[0].shape != data.shape:
            work = self._work[key] = [np.empty_like(data) for _ in range(self.work_arrays)]
        return work

    # ----- checkpointing ----------------------------------------------------------------------

    def state_dict(self) -> dict:
        """A copy of the optimizer state: ``{"state": {"0": {...}, ...}, "param_groups": [...]}``.

        Parameters are referred to by their position across all groups ("0", "1", ...), as in
        torch. Arrays are copies, so the result stays valid while training continues.
        """
        index, groups = 0, []
        state = {}
        for group in self.param_groups:
            ids = []
            for p in group["params"]:
                if self.state.get(id(p)):
                    state[str(index)] = {
                        k: (v.copy() if isinstance(v, np.ndarray) else v)
                        for k, v in self.state[id(p)].items()
                    }
                ids.append(index)
                index += 1
            saved = {k: _plain(v) for k, v in group.items() if k != "params"}
            groups.append({**saved, "params": ids})
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore from :meth:`state_dict` (after a JSON round trip too: keys may be str or int).

        The saved groups must have the same sizes as this optimizer's; every array must have the
        shape of its parameter. Hyper-parameters are taken from the saved groups, as in torch.
        Everything is checked before anything changes: on an error the optimizer is unchanged.
        """
        new_state, new_groups = self._staged(state_dict)
        for group, new in zip(self.param_groups, new_groups):
            group.update(new)
        self.state = new_state

    def check_state_dict(self, state_dict: dict) -> None:
        """Raise the error :meth:`load_state_dict` would raise; change nothing."""
        self._staged(state_dict)

    def _staged(self, state_dict: dict) -> tuple[dict, list[dict]]:
        """``(new state, new hyper-parameters per group)`` from a state dict, all checked."""
        name = type(self).__name__
        op = f"{name}.load_state_dict"
        if not isinstance(state_dict, dict) or set(state_dict) != {"state", "param_groups"}:
            raise ValueError(
                f"{op}: expected a dict with keys 'state' and 'param_groups',"
                f" got {describe(state_dict)}"
            )
        saved_groups, saved_state = state_dict["param_groups"], state_dict["state"]
        if not isinstance(saved_groups, list) or not all(
            isinstance(g, dict) and isinstance(g.get("params"), list) for g in saved_groups
        ):
            raise ValueError(
                f"{op}: param_groups must be a list of dicts with a 'params' list,"
                f" got {describe(saved_groups)}"
            )
        mine = [len(g["params"]) for g in self.param_groups]
        theirs = [len(g["params"]) for g in saved_groups]
        if mine != theirs:
            raise ValueError(
                f"{op}: the saved state has parameter groups of sizes {theirs},"
                f" this optimizer has {mine}"
            )
        if not isinstance(saved_state, dict):
            raise ValueError(f"{op}: state must be a dict, got {describe(saved_state)}")
        params = list(self._params())
        new_state = {}
        for key, entry in saved_state.items():
            i = _state_index(op, key, len(params))
            if not isinstance(entry, dict):
                raise ValueError(f"{op}: state {key!r} must be a dict, got {describe(entry)}")
            p = params[i]
            new_state[id(p)] = {k: _restore(name, k, v, p) for k, v in entry.items()}
        new_groups = []
        for group, saved in zip(self.param_groups, saved_groups):
            new = {k: (tuple(v) if k == "betas" else v) for k, v in saved.items() if k != "params"}
            self._check_group({**group, **new})
            new_groups.append(new)
        return new_state, new_groups


_NO_STATE: dict = {}  # (read only) the state of a parameter without any


def _hold_views(states: list[dict], views: dict[str, list]) -> bool:
    """Whether each of ``states`` (one per parameter of a run) still holds, under each key of
    ``views``, that parameter's view (one identity test per entry, in C loops)."""
    try:
        return all(all(map(is_, map(itemgetter(k), states), v)) for k, v in views.items())
    except KeyError:  # a parameter without that entry
        return False


def _run_key(run: list[Parameter]) -> tuple:
    """A run of packed parameters: its first and last parameter's identities."""
    return (id(run[0]), id(run[-1]), len(run))


def _joined(states: list[dict], run: list[Parameter]) -> dict | None:
    """Each array entry of the parameters' ``states`` joined end to end into one 1-D array (a
    copy), when every parameter's entry is an array shaped like its data (else None)."""
    keys = {k for k, a in states[0].items() if isinstance(a, np.ndarray)}
    whole = {}
    for k in keys:
        parts = [s[k] for s in states]
        if any(not isinstance(a, np.ndarray) or a.shape != p.data.shape
               for a, p in zip(parts, run)):  # fmt: skip
            return None
        whole[k] = np.concatenate([a.ravel() for a in parts]).astype(run[0].data.dtype)
    return whole


def _state_index(op: str, key, count: int) -> int:
    """A state key ("0", "1" ...) as a parameter position in ``range(count)``."""
    try:
        i = int(key)
    except (TypeError, ValueError):
        i = -1
    if isinstance(key, bool) or not 0 <= i < count or str(i) != str(key):
        raise ValueError(
            f"{op}: state key {describe(key)} is not a parameter position 0..{count - 1}"
        )
    return i


def _plain(v):
    """Hyper-parameter values as JSON-friendly Python values (tuples become lists)."""
    if isinstance(v, tuple):
        return [_plain(x) for x in v]
    if isinstance(v, np.generic):
        return v.item()
    return v


def _restore(name: str, key: str, v, p: Parameter):
    """A state entry from a state dict: arrays are checked against ``p`` and copied."""
    if isinstance(v, np.ndarray):
        if v.shape != p.data.shape:
            raise ValueError(
                f"{name}.load_state_dict: state '{key}' has shape {v.shape} but its parameter has"
                f" shape {p.data.shape}"
            )
        return v.astype(p.data.dtype, copy=True)
    if isinstance(v, numbers.Number):
        return v.item() if isinstance(v, np.generic) else v
    raise TypeError(
        f"{name}.load_state_dict: state '{key}' must be an array or a number, got {describe(v)}"
    )
