"""The one output-size helper against the output shapes PyTorch's conv2d and max_pool2d give."""

from __future__ import annotations

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from npmobilenet._geometry import output_size

pytestmark = pytest.mark.torch


@settings(max_examples=60, deadline=None)
@given(
    size=st.integers(1, 12),
    kernel=st.integers(1, 5),
    stride=st.integers(1, 4),
    pads=st.tuples(st.integers(0, 3), st.integers(0, 3)),
    dilation=st.integers(1, 3),
)
def test_conv_output_size_matches_torch(torch, size, kernel, stride, pads, dilation):
    before, after = pads
    assume(size + before + after >= dilation * (kernel - 1) + 1)
    x = torch.zeros(1, 1, 1, size + before + after)  # asymmetric padding applied by hand
    w = torch.zeros(1, 1, 1, kernel)
    out = torch.nn.functional.conv2d(x, w, stride=(1, stride), dilation=(1, dilation))
    assert output_size(size, kernel, stride, (before, after), dilation) == out.shape[-1]


@settings(max_examples=60, deadline=None)
@given(
    size=st.integers(1, 12),
    kernel=st.integers(1, 5),
    stride=st.integers(1, 4),
    padding=st.integers(0, 2),
    dilation=st.integers(1, 3),
    ceil_mode=st.booleans(),
)
def test_pool_output_size_matches_torch(torch, size, kernel, stride, padding, dilation, ceil_mode):
    assume(padding <= kernel // 2)
    want = output_size(size, kernel, stride, padding, dilation, ceil_mode)
    assume(want >= 1)
    x = torch.zeros(1, 1, 1, size)
    out = torch.nn.functional.max_pool2d(
        x, (1, kernel), (1, stride), (0, padding), (1, dilation), ceil_mode=ceil_mode
    )
    assert want == out.shape[-1]
