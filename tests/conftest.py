"""Shared test fixtures.

* ``torch`` fixture: PyTorch is the independent reference. It is a test-only dependency: where it
  is absent the comparison skips with a visible reason locally, but under ``CI=true`` its absence
  fails the run (a CI that silently skipped every reference test would prove nothing).
* Hypothesis profiles: ``ci`` (thorough) under ``CI=true``, ``dev`` (quick) otherwise; override
  with ``HYPOTHESIS_PROFILE``.
* ``TOL``: tolerances against PyTorch by dtype; ``Residual``: a user-defined block;
  ``digits_npz``: a small digits ``.npz`` for training runs.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

from npmobilenet.nn import Module

# CI draws the same examples every run (derandomize), so a red CI is reproducible; locally each
# run explores new ones (and remembers failures in .hypothesis/).
settings.register_profile(
    "ci",
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "dev", max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if IN_CI else "dev"))


def _import_torch():
    try:
        import torch
    except ImportError:
        if IN_CI:
            pytest.fail("torch is required under CI=true: pip install '.[test]' (torch==2.13.0)")
        pytest.skip("torch is not installed (pip install '.[test]'); PyTorch comparison skipped")
    # One thread: the reference needs no speed, and two spinning threads on a loaded 2-core
    # machine made a float64 whole-model step take 7 s instead of 0.3 s.
    torch.set_num_threads(1)
    return torch


@pytest.fixture(scope="session")
def torch():
    """The torch module, or a skip (locally) / failure (CI) when it is absent."""
    return _import_torch()


@pytest.fixture
def split_everything(monkeypatch):
    """Every array worth splitting over a runner's threads (tiny test arrays included); BLAS's
    thread count restored afterwards."""
    from npmobilenet import threads

    monkeypatch.setattr(threads, "MIN_SLICE_ELEMENTS", 1)
    before = threads.blas_num_threads()
    yield
    if before is not None:
        threads.set_blas_threads(before)


@pytest.fixture
def rng():
    """A seeded generator, fresh for every test."""
    return np.random.default_rng(12345)


# Tolerances for comparisons against PyTorch, by dtype.
TOL = {
    np.float64: dict(rtol=1e-10, atol=1e-12),
    np.float32: dict(rtol=1e-4, atol=1e-5),
}


class Residual(Module):
    """A user's block that no library code knows: ``x + block(x)``."""

    def __init__(self, block):
        super().__init__()
        self.block = block

    def forward(self, x):
        return x + self.block.forward(x)


def digits_npz(folder, n_train, n_test):
    """The first n_train training and n_test test digits at 32x32, grey, saved as
    ``folder/digits.npz`` (the arrays ``x, y, x_test, y_test``); returns its path as a str."""
    from npmobilenet.data import load_digits_dataset

    train, test = load_digits_dataset(32, channels=1)
    path = folder / "digits.npz"
    x, y = train.x[:n_train], train.y[:n_train]
    np.savez(path, x=x, y=y, x_test=test.x[:n_test], y_test=test.y[:n_test])
    return str(path)
