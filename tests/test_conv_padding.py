"""Asymmetric padding: 4-tuples (top, bottom, left, right) and TensorFlow's "SAME" rule.

Reference: PyTorch with the padding made explicit, ``F.conv2d(F.pad(x, (left, right, top,
bottom)))``, forward and backward (dx, dW, db) in float64; and TensorFlow's documented SAME
arithmetic (output ceil(H / s), smaller half of the total on top/left).
"""

from __future__ import annotations

import numpy as np
import pytest

from npmobilenet.nn import Conv2d
from npmobilenet.ops.conv import conv2d_backward, conv2d_forward, tf_same_total

pytestmark = pytest.mark.kernels

# (C, K, groups, kernel, stride, (H, W))
GEOMETRIES = [
    (3, 4, 1, 3, 2, (9, 8)),  # a dense stem, odd and even sides
    (6, 6, 6, 3, 2, (10, 7)),  # depthwise, stride 2
    (6, 6, 6, 3, 1, (5, 6)),  # depthwise, stride 1
    (4, 8, 2, 3, 2, (11, 12)),  # grouped
    (5, 5, 5, 3, 2, (1, 2)),  # tiny inputs
]
PADDINGS = [(0, 1, 0, 1), (2, 0, 1, 3), (1, 1, 1, 1), "tf_same"]


def explicit(padding, size, kernel, stride):
    if padding != "tf_same":
        return padding
    th, tw = (tf_same_total(n, kernel, stride) for n in size)
    return (th // 2, th - th // 2, tw // 2, tw - tw // 2)


@pytest.mark.parametrize("method", ["direct", "im2col"])
@pytest.mark.parametrize("padding", PADDINGS, ids=str)
@pytest.mark.parametrize("geom", GEOMETRIES, ids=str)
def test_matches_torch_with_explicit_pad(torch, geom, padding, method):
    c, k, g, ks, s, (h, w) = geom
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, c, h, w))
    weight = rng.standard_normal((k, c // g, ks, ks))
    bias = rng.standard_normal(k)
    top, bottom, left, right = explicit(padding, (h, w), ks, s)
    if h + top + bottom < ks or w + left + right < ks:  # as PyTorch: the kernel must fit
        with pytest.raises(ValueError, match="larger than the padded input"):
            conv2d_forward(x, weight, bias, s, padding, groups=g, method=method)
        return
    out, cache = conv2d_forward(x, weight, bias, s, padding, groups=g, method=method)
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, weight, bias))
    F = torch.nn.functional
    ref = F.conv2d(F.pad(tx, (left, right, top, bottom)), tw, tb, stride=s, groups=g)
    np.testing.assert_allclose(out, ref.detach().numpy(), rtol=1e-12, atol=1e-12)
    dout = rng.standard_normal(out.shape)
    ref.backward(torch.tensor(dout))
    dx, dw, db = conv2d_backward(dout, cache)
    for mine, theirs in ((dx, tx), (dw, tw), (db, tb)):
        np.testing.assert_allclose(mine, theirs.grad.numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("size", range(1, 12))
@pytest.mark.parametrize("stride", [1, 2, 3])
def test_tf_same_output_is_ceil_of_size_over_stride(size, stride):
    x = np.zeros((1, 1, size, size + 1))
    out, _ = conv2d_forward(x, np.zeros((1, 1, 3, 3)), stride=stride, padding="tf_same")
    assert out.shape[2:] == (-(-size // stride), -(-(size + 1) // stride))


def test_tf_same_puts_the_smaller_half_on_top_and_left():
    # stride 2, 3x3 on an even side: total 1, all of it at the bottom/right (TF's rule)
    assert explicit("tf_same", (8, 9), 3, 2) == (0, 1, 1, 1)
    assert tf_same_total(8, 3, 2) == 1 and tf_same_total(9, 3, 2) == 2
    assert tf_same_total(4, 1, 1) == 0


def test_layer_output_shape_agrees_with_the_op():
    for padding in PADDINGS:
        layer = Conv2d(3, 4, 3, stride=2, padding=padding, dtype=np.float64, rng=0)
        x = np.zeros((2, 3, 9, 8))
        assert layer.output_shape(x.shape) == layer.forward(x).shape


@pytest.mark.parametrize("padding", [(1, 2, 3), (1, -1, 0, 0), (0, 1, 0, 1.5)], ids=str)
def test_bad_four_tuples_are_refused(padding):
    with pytest.raises((TypeError, ValueError), match="padding"):
        conv2d_forward(np.zeros((1, 1, 4, 4)), np.zeros((1, 1, 3, 3)), padding=padding)
    with pytest.raises((TypeError, ValueError), match="padding"):
        Conv2d(1, 1, 3, padding=padding)


def test_pytorch_same_still_needs_stride_one():
    with pytest.raises(ValueError, match="padding='tf_same' is TensorFlow's stride-aware rule"):
        conv2d_forward(np.zeros((1, 1, 4, 4)), np.zeros((1, 1, 3, 3)), stride=2, padding="same")
