"""Batch size 0: the convolution (every method and kind) and eval-mode batch norm return empty
results and empty gradients, as PyTorch does."""

from __future__ import annotations

import numpy as np
import pytest

from npmobilenet import ops
from npmobilenet.threads import Runner

pytestmark = [pytest.mark.torch, pytest.mark.kernels]

# (C, K, kernel, stride, padding, groups): dense 3x3, stride 2, pointwise, depthwise 3x3 (both
# strides), grouped, a depth multiplier
CONVS = [
    (3, 8, 3, 1, 1, 1),
    (3, 8, 3, 2, 1, 1),
    (6, 4, 1, 1, 0, 1),
    (6, 6, 3, 1, 1, 6),
    (6, 6, 3, 2, 1, 6),
    (6, 4, 3, 1, 0, 2),
    (3, 6, 3, 1, 1, 3),
]


@pytest.mark.parametrize("method", ["auto", "direct", "im2col"])
@pytest.mark.parametrize("cfg", CONVS)
@pytest.mark.parametrize("runner", [None, Runner(2)])
def test_conv_with_no_images_matches_torch(torch, method, cfg, runner):
    c, k, ks, stride, pad, groups = cfg
    rng = np.random.default_rng(0)
    x = np.zeros((0, c, 9, 7))
    w = rng.standard_normal((k, c // groups, ks, ks))
    b = rng.standard_normal(k)
    out, cache = ops.conv2d_forward(x, w, b, stride, pad, 1, groups, method, runner=runner)
    wt = torch.from_numpy(w).requires_grad_(True)
    bt = torch.from_numpy(b).requires_grad_(True)
    xt = torch.from_numpy(x).requires_grad_(True)
    out_t = torch.nn.functional.conv2d(xt, wt, bt, stride, pad, 1, groups)
    assert out.shape == tuple(out_t.shape) and out.dtype == x.dtype
    out_t.backward(torch.zeros_like(out_t))
    dx, dw, db = ops.conv2d_backward(np.zeros(out.shape), cache, runner=runner)
    assert dx.shape == x.shape
    np.testing.assert_array_equal(dw, wt.grad.numpy())  # zeros: no image contributes
    np.testing.assert_array_equal(db, bt.grad.numpy())


@pytest.mark.parametrize("activation", [None, "relu"])
def test_eval_batch_norm_with_no_images_matches_torch(torch, activation):
    rng = np.random.default_rng(0)
    x = np.zeros((0, 4, 5, 5), np.float32)
    w, b = rng.standard_normal(4).astype(np.float32), rng.standard_normal(4).astype(np.float32)
    mean, var = np.zeros(4, np.float32), np.ones(4, np.float32)
    if activation is None:
        out, cache = ops.batch_norm_forward(x, w, b, mean, var, False)
        dx, dw, db = ops.batch_norm_backward(np.zeros_like(out), cache)
    else:
        out, cache = ops.batch_norm_act_forward(x, w, b, mean, var, False, activation=activation)
        dx, dw, db = ops.batch_norm_act_backward(np.zeros_like(out), cache)
    wt, bt = (torch.from_numpy(a).requires_grad_(True) for a in (w, b))
    xt = torch.from_numpy(x).requires_grad_(True)
    out_t = torch.nn.functional.batch_norm(
        xt, torch.from_numpy(mean), torch.from_numpy(var), wt, bt, training=False
    )
    out_t.backward(torch.zeros_like(out_t))
    assert out.shape == tuple(out_t.shape) == (0, 4, 5, 5) and dx.shape == x.shape
    np.testing.assert_array_equal(dw, wt.grad.numpy())
    np.testing.assert_array_equal(db, bt.grad.numpy())


def test_training_batch_norm_with_no_images_is_a_clear_error():
    x = np.zeros((0, 4, 5, 5))
    with pytest.raises(ValueError, match="expected more than 1 value per channel when training"):
        ops.batch_norm_forward(x, None, None, None, None, True)
