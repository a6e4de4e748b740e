"""Hypothesis strategies for 2-D pooling configurations: fuzz your own pooling layers.

Example (in your own pytest suite)::

    import numpy as np
    from hypothesis import given
    from npmobilenet.testing import pool2d_configs
    from npmobilenet.testing.pool import pool2d_kwargs

    @given(pool2d_configs(kind="avg"))
    def test_my_avg_pool(cfg):
        x = np.random.default_rng(0).standard_normal(cfg["x_shape"]).astype(cfg["dtype"])
        out = my_avg_pool(x, **pool2d_kwargs(cfg))  # kernel_size, stride, padding, ceil_mode, ...
        assert out.shape == cfg["out_shape"]

Every drawn configuration is valid for ``torch.nn.functional.max_pool2d`` / ``avg_pool2d`` (and
for ``npmobilenet.ops``): padding is at most half the kernel (``p <= k // 2``, PyTorch's rule) and
the (dilated) kernel fits in the padded input, so the output has at least one pixel, and every
window covers at least one input pixel (not only padding).
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from npmobilenet._geometry import output_size


def _as_pair(v):
    return tuple(v) if isinstance(v, tuple) else (v, v)


def pool2d_output_size(size, k, s, p, d, ceil_mode):
    """PyTorch's pooling output length along one axis (``pooling_output_shape``)."""
    return output_size(size, k, s, p, d, ceil_mode)


def _every_window_hits_input(size, k, s, p, d, ceil_mode):
    """True when each window has at least one tap inside the input (not only padding).

    A dilated max-pool window can straddle a tiny input with all its taps in the padding;
    PyTorch then returns -inf with a meaningless index, so such configurations are not drawn.
    """
    o = pool2d_output_size(size, k, s, p, d, ceil_mode)
    return all(any(0 <= i * s - p + j * d < size for j in range(k)) for i in range(max(o, 0)))


@st.composite
def pool2d_configs(
    draw,
    kind="max",
    max_batch=3,
    max_channels=4,
    max_size=10,
    max_kernel=4,
    dtypes=(np.float32, np.float64),
    allow_unbatched=True,
):
    """Draw one valid max- or average-pooling configuration as a dict.

    Keys:
        ``kind``: "max" or "avg". ``x_shape``: (N, C, H, W), or (C, H, W) for an unbatched input.
        ``kernel_size``: int or (kH, kW). ``stride``: int, pair or None (None means the kernel
        size). ``padding``: int or pair, at most kernel // 2 on each axis. ``ceil_mode``: bool.
        ``dilation``: int or pair (always 1 for "avg", which has none).
        ``count_include_pad``: bool (only meaningful for "avg"). ``dtype``: a numpy float dtype.
        ``out_shape``: the output shape PyTorch produces.

    ``max_size`` bounds H and W (an input is made larger only when the drawn dilated kernel
    needs it), ``max_kernel`` bounds kH and kW.
    """
    if kind not in ("max", "avg"):
        raise ValueError(f"pool2d_configs: kind must be 'max' or 'avg', got {kind!r}")

    def pair_or_int(values):
        return st.one_of(values, st.tuples(values, values))

    kernel_size = draw(pair_or_int(st.integers(1, max_kernel)))
    k = _as_pair(kernel_size)
    stride = draw(st.one_of(st.none(), pair_or_int(st.integers(1, 3))))
    s = k if stride is None else _as_pair(stride)
    ph = draw(st.integers(0, k[0] // 2))
    pw = draw(st.integers(0, k[1] // 2))
    padding = ph if ph == pw and draw(st.booleans()) else (ph, pw)
    dilation = draw(pair_or_int(st.integers(1, 3))) if kind == "max" else 1
    d = _as_pair(dilation)
    ceil_mode = draw(st.booleans())

    sizes = []
    for i, p in enumerate((ph, pw)):
        smallest = max(1, d[i] * (k[i] - 1) + 1 - 2 * p)  # the dilated kernel fits once
        size = draw(st.integers(smallest, max(smallest, max_size)))
        while not _every_window_hits_input(size, k[i], s[i], p, d[i], ceil_mode):
            size += 1
        sizes.append(size)
    OH, OW = (
        pool2d_output_size(sizes[i], k[i], s[i], (ph, pw)[i], d[i], ceil_mode) for i in (0, 1)
    )

    C = draw(st.integers(1, max_channels))
    unbatched = allow_unbatched and draw(st.booleans()) and draw(st.booleans())  # ~1 in 4
    N = None if unbatched else draw(st.integers(1, max_batch))
    lead = (C,) if unbatched else (N, C)
    return {
        "kind": kind,
        "x_shape": lead + tuple(sizes),
        "kernel_size": kernel_size,
        "stride": stride,
        "padding": padding,
        "dilation": dilation,
        "ceil_mode": ceil_mode,
        "count_include_pad": draw(st.booleans()),
        "dtype": np.dtype(draw(st.sampled_from(dtypes))),
        "out_shape": lead + (OH, OW),
    }


def pool2d_kwargs(config):
    """The geometry arguments of a config, named as ``torch.nn.functional`` names them.

    "max": kernel_size, stride, padding, dilation, ceil_mode. "avg": kernel_size, stride,
    padding, ceil_mode, count_include_pad. Pass them to ``npmobilenet.ops.max_pool2d_forward``
    / ``avg_pool2d_forward`` or to the torch functions as is.
    """
    keys = ["kernel_size", "stride", "padding", "ceil_mode"]
    keys += ["dilation"] if config["kind"] == "max" else ["count_include_pad"]
    return {key: config[key] for key in keys}
