"""Hypothesis strategies for conv2d configurations: fuzz your own convolution layers.

Example (in your own pytest suite)::

    from hypothesis import given
    from npmobilenet.testing import conv2d_configs
    from npmobilenet.testing.conv import conv2d_kwargs, make_conv2d_inputs

    @given(conv2d_configs(max_channels=6))
    def test_my_conv(cfg):
        arrays = make_conv2d_inputs(cfg, seed=0)       # x, weight, bias (bias may be None)
        out = my_conv(**arrays, **conv2d_kwargs(cfg))   # stride, padding, dilation, groups
        assert out.shape == cfg["out_shape"]

Every drawn configuration is valid for ``torch.nn.functional.conv2d`` (and for
``npmobilenet.ops.conv2d_forward``): groups divide both channel counts, the dilated kernel fits in
the padded input, and padding "same" only comes with stride 1.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from npmobilenet._geometry import output_size


def _pair_or_int(values):
    """An int, or an (h, w) pair, drawn from ``values``: both forms are legal conv2d arguments."""
    return st.one_of(values, st.tuples(values, values))


def _as_pair(v):
    return tuple(v) if isinstance(v, tuple) else (v, v)


@st.composite
def conv2d_configs(
    draw,
    max_batch=3,
    max_channels=8,
    max_size=10,
    max_kernel=4,
    dtypes=(np.float32, np.float64),
    allow_unbatched=True,
    depthwise=False,
):
    """Draw one valid conv2d configuration as a dict.

    Keys:
        ``x_shape``: (N, C, H, W), or (C, H, W) for an unbatched input.
        ``weight_shape``: (K, C/groups, kH, kW). ``bias``: bool, whether to pass a bias (K,).
        ``stride``, ``dilation``: int or (h, w) pair. ``padding``: int, pair, "same" or "valid".
        ``groups``: int dividing C and K. ``depth_multiplier``: K/C for a depthwise configuration
        (groups == C), else None. ``dtype``: a numpy float dtype.
        ``out_shape``: the output shape torch.nn.functional.conv2d produces.

    ``max_channels`` bounds C and K, ``max_size`` bounds H and W (an input may be made larger
    only when the drawn dilated kernel needs it), ``max_kernel`` bounds kH and kW.
    ``depthwise=True`` draws only depthwise configurations (groups == C, so weight (K, 1, kH, kW)
    with K = multiplier * C), e.g. to fuzz a depthwise-only layer without filtering.
    """
    groups = draw(st.integers(1, max_channels))
    c_per_group = 1 if depthwise else draw(st.integers(1, max_channels // groups))
    k_per_group = draw(st.integers(1, max_channels // groups))
    C, K = groups * c_per_group, groups * k_per_group
    kh, kw = draw(st.integers(1, max_kernel)), draw(st.integers(1, max_kernel))

    stride = draw(_pair_or_int(st.integers(1, 3)))
    dil_max = max(1, (max_size - 1) // max(kh - 1, kw - 1, 1))
    dilation = draw(_pair_or_int(st.integers(1, min(3, dil_max))))
    (sh, sw), (dh, dw) = _as_pair(stride), _as_pair(dilation)

    padding_choices = [_pair_or_int(st.integers(0, 3)), st.just("valid")]
    if (sh, sw) == (1, 1):
        padding_choices.append(st.just("same"))
    padding = draw(st.one_of(*padding_choices))
    if padding == "valid":
        pad_h = pad_w = 0
    elif padding == "same":
        pad_h, pad_w = dh * (kh - 1), dw * (kw - 1)
    else:
        ph, pw = _as_pair(padding)
        pad_h, pad_w = 2 * ph, 2 * pw

    span_h, span_w = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    min_h, min_w = max(1, span_h - pad_h), max(1, span_w - pad_w)
    H = draw(st.integers(min_h, max(min_h, max_size)))
    W = draw(st.integers(min_w, max(min_w, max_size)))
    OH, OW = output_size(H, kh, sh, (pad_h, 0), dh), output_size(W, kw, sw, (pad_w, 0), dw)

    unbatched = allow_unbatched and draw(st.booleans()) and draw(st.booleans())  # ~1 in 4
    N = None if unbatched else draw(st.integers(1, max_batch))
    return {
        "x_shape": (C, H, W) if unbatched else (N, C, H, W),
        "weight_shape": (K, c_per_group, kh, kw),
        "bias": draw(st.booleans()),
        "stride": stride,
        "padding": padding,
        "dilation": dilation,
        "groups": groups,
        "depth_multiplier": k_per_group if c_per_group == 1 else None,
        "dtype": np.dtype(draw(st.sampled_from(dtypes))),
        "out_shape": (K, OH, OW) if unbatched else (N, K, OH, OW),
    }


def conv2d_kwargs(config):
    """The geometry arguments of a config: ``stride``, ``padding``, ``dilation``, ``groups``.

    Pass them to ``npmobilenet.ops.conv2d_forward`` or ``torch.nn.functional.conv2d`` as is.
    """
    return {k: config[k] for k in ("stride", "padding", "dilation", "groups")}


def make_conv2d_inputs(config, seed=0):
    """Seeded standard-normal arrays for a config: dict with ``x``, ``weight``, ``bias``.

    ``bias`` is None when ``config["bias"]`` is false. Weights are scaled by 1/sqrt(fan_in) so
    outputs stay of order one whatever the kernel size.
    """
    rng = np.random.default_rng(seed)
    dtype = config["dtype"]
    K, cg, kh, kw = config["weight_shape"]
    x = rng.standard_normal(config["x_shape"]).astype(dtype)
    weight = (rng.standard_normal((K, cg, kh, kw)) / np.sqrt(cg * kh * kw)).astype(dtype)
    bias = rng.standard_normal(K).astype(dtype) if config["bias"] else None
    return {"x": x, "weight": weight, "bias": bias}
