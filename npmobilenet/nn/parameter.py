"""The Parameter: a weight array and the gradient that accumulates into it."""

from __future__ import annotations

import numpy as np

from npmobilenet._checks import describe


class Parameter:
    """A trainable array with its gradient.

    ``data`` is the weight itself; ``grad`` has the same shape and dtype and *accumulates*:
    every backward pass adds into it, as in PyTorch, until ``zero_grad()`` fills it with zeros.
    Keeping ``grad`` allocated (rather than ``None``) lets training reuse the same buffer
    every step.
    """

    __slots__ = ("data", "grad", "_requires_grad")

    def __init__(self, data: np.ndarray, requires_grad: bool = True):
        if not isinstance(data, np.ndarray):
            raise TypeError(f"Parameter: data must be a numpy array, got {type(data).__name__}")
        self.data = data
        self.grad = np.zeros_like(data)
        self.requires_grad = requires_grad

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
