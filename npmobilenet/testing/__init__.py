"""Hypothesis strategies that draw valid layer configurations, for your own pytest suites.

Needs the ``hypothesis`` package (``pip install hypothesis``); the rest of npmobilenet does not.
"""

try:
    import hypothesis  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised only without hypothesis
    raise ImportError(
        "npmobilenet.testing needs the hypothesis package: pip install hypothesis"
    ) from exc

from npmobilenet.testing.conv import conv2d_configs
from npmobilenet.testing.pool import pool2d_configs

__all__ = ["conv2d_configs", "pool2d_configs"]
