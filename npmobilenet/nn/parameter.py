"""The Parameter: a weight array and the gradient that accumulates into it."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import NamedTuple

import numpy as np

from npmobilenet._checks import describe


class Parameter:
    """A trainable array with its gradient.

    ``data`` is the weight itself; ``grad`` has the same shape and dtype and *accumulates*:
    every backward pass adds into it, as in PyTorch, until ``zero_grad()`` fills it with zeros.
    Keeping ``grad`` allocated (rather than ``None``) lets training reuse the same buffer
    every step.
    """

    __slots__ = ("data", "_grad", "_requires_grad", "packed")

    def __init__(self, data: np.ndarray, requires_grad: bool = True):
        if not isinstance(data, np.ndarray):
            raise TypeError(f"Parameter: data must be a numpy array, got {type(data).__name__}")
        self.data = data
        self.grad = np.zeros_like(data)
        self.requires_grad = requires_grad
        self.packed: Packed | None = None  # see pack()

    @property
    def requires_grad(self) -> bool:
        """Whether backward computes and accumulates this parameter's gradient (False: frozen,
        no gradient work, ``grad`` left as it is, and the optimizers skip it)."""
        return self._requires_grad

    @requires_grad.setter
    def requires_grad(self, value: bool) -> None:
        if not isinstance(value, (bool, np.bool_)):
            raise TypeError(
                f"Parameter: requires_grad must be True or False, got {describe(value)}"
            )
        self._requires_grad = bool(value)

    @property
    def grad(self) -> np.ndarray:
        """The accumulated gradient, an array shaped like ``data``. It stays allocated:
        ``zero_grad()`` fills it with zeros (PyTorch's ``p.grad = None`` has no equivalent)."""
        return self._grad

    @grad.setter
    def grad(self, value: np.ndarray) -> None:
        if not isinstance(value, np.ndarray) or value.shape != self.data.shape:
            raise TypeError(
                f"Parameter.grad: expected an array of shape {self.data.shape} (a gradient"
                f" stays allocated; zero it with zero_grad()), got {describe(value)}"
            )
        self._grad = value

    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    def accumulate(self, g: np.ndarray) -> None:
        """Add a gradient contribution: ``grad += g``."""
        self.grad += g

    def zero_grad(self) -> None:
        self.grad.fill(0)

    def __repr__(self) -> str:
        return f"Parameter(shape={self.data.shape}, dtype={self.data.dtype})"


class Packed(NamedTuple):
    """Where :func:`pack` put a parameter: ``data`` and ``grad`` are the views
    ``data_buffer[start:stop]`` and ``grad_buffer[start:stop]`` (reshaped) it gave the
    parameter. The record holds while the parameter's arrays are still those views."""

    data_buffer: np.ndarray
    grad_buffer: np.ndarray
    start: int
    stop: int
    data: np.ndarray
    grad: np.ndarray


def pack(params: Iterable[Parameter]) -> None:
    """Lay the ``data`` of ``params`` end to end in one contiguous buffer per dtype, in the
    given order, and their ``grad`` likewise in a second buffer: each parameter keeps its
    values, its ``data`` and ``grad`` become views of the buffers (``Parameter.packed`` records
    where). A run of parameters packed side by side is then zeroed, and updated by an
    optimizer, with one call per array operation instead of one per parameter
    (:func:`packed_runs`). A parameter listed twice is packed once; one whose grad does not
    match its data is left alone."""
    groups: dict[np.dtype, list[Parameter]] = {}
    for p in dict.fromkeys(params):
        if p.grad.shape == p.data.shape and p.grad.dtype == p.data.dtype:
            groups.setdefault(p.data.dtype, []).append(p)
    for dtype, ps in groups.items():
        total = sum(p.data.size for p in ps)
        data, grad = np.empty(total, dtype), np.empty(total, dtype)
        start = 0
        for p in ps:
            stop = start + p.data.size
            d = data[start:stop].reshape(p.data.shape)  # a view
            g = grad[start:stop].reshape(p.data.shape)
            d[...], g[...] = p.data, p.grad
            p.data, p.grad, p.packed = d, g, Packed(data, grad, start, stop, d, g)
            start = stop


def packed_runs(params: Iterable[Parameter], trainable: bool = False) -> Iterator[tuple]:
    """Split ``params`` (in order) into ``(run, data, grad)``: ``run`` a list of parameters
    whose arrays are still side by side in :func:`pack`'s buffers, ``data`` and ``grad`` the
    1-D views of the buffers they cover; or ``([p], None, None)`` for a parameter on its own.
    ``trainable``: leave out the parameters with ``requires_grad`` False."""
    run, last = [], None
    for p in params:
        if trainable and not p._requires_grad:
            continue
        k = p.packed
        if k is not None and not _holds(p, k):
            k = None  # its arrays were replaced since pack(), or copied (copy.deepcopy)
        if run and k is not None and last is not None and k.start == last.stop \
                and k.data_buffer is last.data_buffer \
                and k.grad_buffer is last.grad_buffer:  # fmt: skip
            run.append(p)  # k starts in the buffers where last ends
        else:
            if run:
                yield _run(run)
            run = [p]
        last = k
    if run:
        yield _run(run)


def _holds(p: Parameter, k: Packed) -> bool:
    """Whether ``p``'s arrays are still the views of the buffers that ``k`` records (a deep
    copy of a parameter copies each view on its own: the record's buffers are then others)."""
    return (p.data is k.data and p.grad is k.grad and k.data.base is k.data_buffer
            and k.grad.base is k.grad_buffer)  # fmt: skip


def _run(run: list[Parameter]) -> tuple:
    if len(run) == 1:
        return run, None, None
    first, last = run[0].packed, run[-1].packed
    span = slice(first.start, last.stop)
    return run, first.data_buffer[span], first.grad_buffer[span]
