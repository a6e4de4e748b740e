"""Single-pass ReLU / ReLU6 backward kernels on flat (contiguous, raveled) arrays.

NumPy's ``np.where(mask, dout, 0)`` makes a boolean temporary and a second pass; these loops
read the two inputs once and write dx once. Each has a ``*_naive`` NumPy twin that the tests
compare it with. Serial on purpose: NumPy's BLAS owns the machine's threads.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def relu_backward_input(dout, out, dx):
    """dx[i] = 0 if out[i] <= 0 else dout[i] (so a NaN passes its gradient, as in PyTorch).

    All three: (size,) of one dtype; writes dx.
    """
    for i in range(dx.shape[0]):
        dx[i] = 0 if out[i] <= 0 else dout[i]


def relu_backward_input_naive(dout, out, dx):
    """NumPy reference for :func:`relu_backward_input`."""
    dx[...] = np.where(out <= 0, 0, dout)


@njit(cache=True)
def relu6_backward_input(dout, x, dx):
    """dx[i] = 0 if x[i] <= 0 or x[i] >= 6 else dout[i] (NaN passes, as in PyTorch).

    All three: (size,) of one dtype; writes dx.
    """
    for i in range(dx.shape[0]):
        v = x[i]
        dx[i] = 0 if v <= 0 or v >= 6 else dout[i]


def relu6_backward_input_naive(dout, x, dx):
    """NumPy reference for :func:`relu6_backward_input`."""
    dx[...] = np.where((x <= 0) | (x >= 6), 0, dout)
