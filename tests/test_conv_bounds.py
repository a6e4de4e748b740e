"""Regression: taps that never land inside the input must give empty, in-bounds ranges.

With dilation larger than the input (a 2x3 input, 2x3 kernel, dilation 3, padding 2), one tap's
first in-bounds output lay *past* the output row, and im2col zero-filled ``[0, lo)`` beyond the
end of its column buffer: the NUMBA_BOUNDSCHECK=1 run caught it as an IndexError, and without
bounds checks it was a silent out-of-bounds write.
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from npmobilenet.kernels.conv_direct import valid_range
from npmobilenet.ops import conv2d_backward, conv2d_forward


@given(
    offset=st.integers(-30, 30),
    stride=st.integers(1, 4),
    size=st.integers(1, 10),
    out_size=st.integers(0, 12),
)
def test_valid_range_stays_inside_the_output(offset, stride, size, out_size):
    lo, hi = valid_range(offset, stride, size, out_size)
    assert 0 <= lo <= hi <= out_size
    assert list(range(lo, hi)) == [o for o in range(out_size) if 0 <= o * stride + offset < size]


def _naive_conv(x, w, pad, dil):
    """Plain NumPy loops over a zero-padded copy: the independent reference."""
    N, C, H, W = x.shape
    K, _, kH, kW = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    OH, OW = H + 2 * pad - dil * (kH - 1), W + 2 * pad - dil * (kW - 1)
    out = np.zeros((N, K, OH, OW))
    for oh in range(OH):
        for ow in range(OW):
            patch = xp[:, :, oh : oh + dil * kH : dil, ow : ow + dil * kW : dil]
            out[:, :, oh, ow] = np.einsum("ncij,kcij->nk", patch, w)
    return out


@pytest.mark.kernels
@pytest.mark.parametrize("method", ["direct", "im2col"])
def test_dilation_wider_than_the_input(method):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 1, 2, 3))
    w = rng.standard_normal((1, 1, 2, 3))
    out, cache = conv2d_forward(x, w, padding=2, dilation=3, method=method)
    np.testing.assert_allclose(out, _naive_conv(x, w, 2, 3), rtol=1e-12, atol=1e-12)
    dx, dw, _ = conv2d_backward(np.ones_like(out), cache)
    assert dx.shape == x.shape and dw.shape == w.shape and np.isfinite(dx).all()
