"""``module_inputs(module)``: a Hypothesis strategy of inputs for any of the library's modules.

Example (in your own pytest suite)::

    from hypothesis import given
    from npmobilenet import nn
    from npmobilenet.testing import module_inputs

    block = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())

    @given(x=module_inputs(block))
    def test_block_gradients(gradcheck, x):
        gradcheck.check_module(block, x)
"""

from __future__ import annotations

import copy

import numpy as np
from hypothesis import strategies as st

from npmobilenet._checks import describe


def module_inputs(module, *, max_batch=3, max_size=8, dtype=None):
    """A strategy of seeded standard-normal arrays that ``module.forward`` accepts.

    The input layout comes from the first layer that constrains it, in the order ``forward``
    runs them: ``Conv2d`` and ``BatchNorm2d`` take (N, C, H, W) with their channel count,
    ``Linear`` takes (N, in_features), pooling takes (N, C, H, W); a module made only of
    elementwise layers (ReLU, ReLU6, Dropout) gets (N, C, H, W). Spatial sizes run from 1 to
    ``max_size`` and are kept only when the module's forward runs on them (a deep copy is
    tried once per size, on the first draw; the 16 smallest that run are kept), so a kernel
    larger than the input or a Flatten feeding a Linear of fixed width only gets sizes that
    fit. A module with batch norm in
    training mode gets N >= 2 (batch statistics need more than one value per channel).

    Args:
        module: an ``npmobilenet.nn.Module`` built from the library's layers (containers and
            models included).
        max_batch, max_size: bounds on N and on H and W.
        dtype: the arrays' dtype; default the module's parameter dtype (float64 without any).

    Raises:
        TypeError: the module contains no layer whose input layout is known, or it is not a
            Module.
    """
    from npmobilenet import nn  # here: importing nn loads the Numba kernels

    if not isinstance(module, nn.Module):
        raise TypeError(f"module_inputs: module must be an npmobilenet.nn.Module, got "
                        f"{describe(module)}")  # fmt: skip
    layout = _layout(module, nn)
    if dtype is None:
        dtype = next((p.dtype for p in module.parameters()), np.dtype(np.float64))
    dtype = np.dtype(dtype)
    bn_training = any(isinstance(m, nn.BatchNorm2d) and m.training for _, m in
                      module.named_modules())  # fmt: skip
    n = st.integers(1, max_batch) if not bn_training else st.integers(2, max(2, max_batch))
    if layout[0] == "linear":
        shapes = st.tuples(n, st.just(layout[1]))
    else:
        channels = st.just(layout[1]) if layout[1] else st.integers(1, 4)
        shapes = st.deferred(lambda: _image_shapes(module, n, channels, layout[1], max_size, dtype))
    return st.tuples(shapes, st.integers(0, 2**32 - 1)).map(
        lambda drawn: np.random.default_rng(drawn[1]).standard_normal(drawn[0]).astype(dtype)
    )


_MAX_SIZES = 16  # enough variety for a gradient check; keeps the scan of a whole model short


def _image_shapes(module, n, channels, c, max_size, dtype):
    """(N, C, H, W) with (H, W) among the smallest sizes the module's forward runs on (tried
    once, on the first draw, with a batch of 2, smallest area first, up to 16 sizes)."""
    sizes = []
    pairs = sorted(((h, w) for h in range(1, max_size + 1) for w in range(1, max_size + 1)),
                   key=lambda hw: (hw[0] * hw[1], hw))  # fmt: skip
    for h, w in pairs:
        if len(sizes) < _MAX_SIZES and _forward_runs(module, np.zeros((2, c or 1, h, w), dtype)):
            sizes.append((h, w))
    if not sizes:
        raise ValueError(
            f"module_inputs: {type(module).__name__} runs on no input of size up to "
            f"{max_size}x{max_size}; raise max_size"
        )
    return st.tuples(n, channels, st.sampled_from(sizes)).map(lambda t: (t[0], t[1], *t[2]))


def _layout(module, nn) -> tuple[str, int | None]:
    """("linear", in_features) or ("image", channels or None), from the layers in forward order
    (children in registration order, which is the forward order of every container and model
    in the library) up to the first one that fixes the channel count."""
    pools = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)
    image = False  # a pooling layer came first: the input is an image, channels still open
    for _, m in module.named_modules():
        if isinstance(m, nn.Conv2d):
            return "image", m.in_channels
        if isinstance(m, nn.BatchNorm2d):
            return "image", m.num_features
        if isinstance(m, nn.Linear):
            return ("image", None) if image else ("linear", m.in_features)
        if isinstance(m, nn.Flatten):
            return "image", None
        image = image or isinstance(m, pools)
        known = (*pools, nn.ReLU, nn.ReLU6, nn.Dropout)
        if not isinstance(m, known) and not any(True for _ in m.children()):
            raise TypeError(
                f"module_inputs: cannot tell the input layout of {type(m).__name__}; draw "
                "the input yourself (e.g. hypothesis.extra.numpy.arrays)"
            )
    return "image", None


def _forward_runs(module, x) -> bool:
    try:
        copy.deepcopy(module).forward(x)
    except (ValueError, TypeError):
        return False
    return True
