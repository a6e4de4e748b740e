"""Hypothesis strategies that draw valid layer configurations, for your own pytest suites.

Each ``*_configs`` strategy draws a dict describing one valid call (shapes, settings, dtype and
the output shape PyTorch and :mod:`npmobilenet.ops` produce); ``make_*_inputs(config, seed)``
makes seeded arrays for it and ``*_kwargs(config)`` picks the settings to pass on.
:func:`module_inputs` draws inputs for any of the library's modules, for
:func:`npmobilenet.gradcheck.check_module`.

Needs the ``hypothesis`` package (``pip install hypothesis``); the rest of npmobilenet does not.
"""

try:
    import hypothesis  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised only without hypothesis
    raise ImportError(
        "npmobilenet.testing needs the hypothesis package: pip install hypothesis"
    ) from exc

from npmobilenet.testing.conv import conv2d_configs, conv2d_kwargs, make_conv2d_inputs
from npmobilenet.testing.layers import (
    batch_norm_configs,
    batch_norm_kwargs,
    cross_entropy_configs,
    cross_entropy_kwargs,
    dropout_configs,
    dropout_kwargs,
    linear_configs,
    make_batch_norm_inputs,
    make_cross_entropy_inputs,
    make_linear_inputs,
    softmax_configs,
)
from npmobilenet.testing.modules import module_inputs
from npmobilenet.testing.pool import pool2d_configs, pool2d_kwargs, pool2d_output_size

__all__ = [
    "conv2d_configs",
    "conv2d_kwargs",
    "make_conv2d_inputs",
    "pool2d_configs",
    "pool2d_kwargs",
    "pool2d_output_size",
    "batch_norm_configs",
    "batch_norm_kwargs",
    "make_batch_norm_inputs",
    "linear_configs",
    "make_linear_inputs",
    "softmax_configs",
    "cross_entropy_configs",
    "cross_entropy_kwargs",
    "make_cross_entropy_inputs",
    "dropout_configs",
    "dropout_kwargs",
    "module_inputs",
]
