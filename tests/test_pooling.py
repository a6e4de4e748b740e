"""Max, average and adaptive average pooling against torch.nn.functional + autograd.

Configurations come from the public strategy ``npmobilenet.testing.pool2d_configs``; its
``out_shape`` is checked against torch's too.
"""

import numpy as np
import pytest
from conftest import TOL
from hypothesis import given
from hypothesis import strategies as st

from npmobilenet import ops
from npmobilenet.testing import pool2d_configs
from npmobilenet.testing.pool import pool2d_kwargs

FORWARD = {"max": ops.max_pool2d_forward, "avg": ops.avg_pool2d_forward}
BACKWARD = {"max": ops.max_pool2d_backward, "avg": ops.avg_pool2d_backward}


def _torch_run(torch, fn, x, dout, **kw):
    tx = torch.tensor(x, requires_grad=True)
    out = fn(tx, **kw)
    out.backward(torch.tensor(dout))
    return out.detach().numpy(), tx.grad.numpy()


def _check_against_torch(torch, kind, cfg, x):
    rng = np.random.default_rng(1)
    kw = pool2d_kwargs(cfg)
    out, cache = FORWARD[kind](x, **kw)
    assert out.shape == cfg["out_shape"] and out.dtype == x.dtype
    dout = rng.standard_normal(out.shape).astype(x.dtype)
    dx = BACKWARD[kind](dout, cache)
    t_out, t_dx = _torch_run(torch, getattr(torch.nn.functional, f"{kind}_pool2d"), x, dout, **kw)
    assert t_out.shape == cfg["out_shape"]
    tol = TOL[x.dtype.type]
    np.testing.assert_allclose(out, t_out, **tol)
    np.testing.assert_allclose(dx, t_dx, **tol)
    assert dx.dtype == x.dtype and dx.shape == x.shape


@pytest.mark.kernels
@pytest.mark.parametrize("kind", ["max", "avg"])
@given(data=st.data())
def test_matches_torch(torch, kind, data):
    cfg = data.draw(pool2d_configs(kind=kind))
    seed = data.draw(st.integers(0, 2**16))
    x = np.random.default_rng(seed).standard_normal(cfg["x_shape"]).astype(cfg["dtype"])
    _check_against_torch(torch, kind, cfg, x)


@pytest.mark.kernels
@given(cfg=pool2d_configs(kind="max", dtypes=(np.float64,)), seed=st.integers(0, 2**16))
def test_max_pool_ties_pick_torchs_index(torch, cfg, seed):
    """Inputs from {0, 1, 2}: many ties; the gradient goes where torch's index says."""
    x = np.random.default_rng(seed).integers(0, 3, cfg["x_shape"]).astype(np.float64)
    _check_against_torch(torch, "max", cfg, x)


@pytest.mark.kernels
def test_max_pool_nan_and_neg_inf(torch):
    x = np.full((1, 1, 4, 4), -np.inf)
    x[0, 0, 0, 1] = np.nan
    cfg = dict(kind="max", kernel_size=2, stride=None, padding=1, dilation=1, ceil_mode=True)
    cfg["out_shape"] = (1, 1, 3, 3)
    _check_against_torch(torch, "max", cfg, x)


@pytest.mark.kernels
def test_avg_pool_ceil_mode_divisors_by_hand():
    """5x5 of ones, k=2, s=2, ceil_mode: the last row/column windows hang over the edge."""
    x = np.ones((1, 1, 5, 5))
    out, _ = ops.avg_pool2d_forward(x, 2, ceil_mode=True, count_include_pad=True)
    # windows clipped by ceil_mode (not by padding) divide by their clipped size: all ones
    np.testing.assert_array_equal(out, np.ones((1, 1, 3, 3)))
    out, _ = ops.avg_pool2d_forward(x, 3, stride=2, padding=1, count_include_pad=True)
    np.testing.assert_allclose(out[0, 0, 0], [4 / 9, 6 / 9, 4 / 9])  # corners see 4 real pixels


@pytest.mark.kernels
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@given(
    shape=st.tuples(st.integers(1, 2), st.integers(1, 3), st.integers(1, 9), st.integers(1, 9)),
    out_h=st.one_of(st.none(), st.integers(1, 9)),
    out_w=st.integers(1, 9),
    as_int=st.booleans(),
    unbatched=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_adaptive_avg_matches_torch(torch, dtype, shape, out_h, out_w, as_int, unbatched, seed):
    x = np.random.default_rng(seed).standard_normal(shape[1:] if unbatched else shape)
    x = x.astype(dtype)
    output_size = out_w if as_int else (out_h, out_w)
    out, cache = ops.adaptive_avg_pool2d_forward(x, output_size)
    dout = np.random.default_rng(seed + 1).standard_normal(out.shape).astype(dtype)
    dx = ops.adaptive_avg_pool2d_backward(dout, cache)
    fn = torch.nn.functional.adaptive_avg_pool2d
    t_out, t_dx = _torch_run(torch, fn, x, dout, output_size=output_size)
    assert out.shape == t_out.shape and out.dtype == dtype and dx.dtype == dtype
    np.testing.assert_allclose(out, t_out, **TOL[dtype])
    np.testing.assert_allclose(dx, t_dx, **TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", [(3, 5, 7, 7), (2, 4, 1, 1), (1, 2, 96, 80), (6, 3, 5)])
@pytest.mark.parametrize("output_size", [1, (1, 1), (None, 1)])
def test_global_adaptive_avg_pool_matches_torch(torch, dtype, shape, output_size):
    """Output 1x1 (global average pooling, MobileNet's head) runs its own path: against torch."""
    if output_size == (None, 1) and shape[-2] != 1:
        output_size = (1, 1)
    x = np.random.default_rng(3).standard_normal(shape).astype(dtype) + 2.0
    out, cache = ops.adaptive_avg_pool2d_forward(x, output_size)
    dout = np.random.default_rng(4).standard_normal(out.shape).astype(dtype)
    dx = ops.adaptive_avg_pool2d_backward(dout, cache)
    fn = torch.nn.functional.adaptive_avg_pool2d
    t_out, t_dx = _torch_run(torch, fn, x, dout, output_size=output_size)
    assert out.shape == t_out.shape and out.dtype == dtype
    assert dx.shape == x.shape and dx.dtype == dtype and dx.flags.c_contiguous
    np.testing.assert_allclose(out, t_out, **TOL[dtype])
    np.testing.assert_allclose(dx, t_dx, **TOL[dtype])


def test_global_adaptive_pool_is_the_mean():
    x = np.random.default_rng(0).standard_normal((2, 3, 7, 7)).astype(np.float32)
    out, _ = ops.adaptive_avg_pool2d_forward(x, 1)
    np.testing.assert_allclose(out[..., 0, 0], x.mean(axis=(2, 3)), rtol=1e-6)
