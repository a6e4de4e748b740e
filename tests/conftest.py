"""Shared test fixtures.

* ``torch`` fixture: PyTorch is the independent reference. It is a test-only dependency: where it
  is absent the comparison skips with a visible reason locally, but under ``CI=true`` its absence
  fails the run (a CI that silently skipped every reference test would prove nothing).
* Hypothesis profiles: ``ci`` (thorough) under ``CI=true``, ``dev`` (quick) otherwise; override
  with ``HYPOTHESIS_PROFILE``.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

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
def rng():
    """A seeded generator, fresh for every test."""
    return np.random.default_rng(12345)


# Tolerances for comparisons against PyTorch, by dtype.
TOL = {
    np.float64: dict(rtol=1e-10, atol=1e-12),
    np.float32: dict(rtol=1e-4, atol=1e-5),
}
