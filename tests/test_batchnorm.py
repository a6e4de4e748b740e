"""Batch norm against torch.nn.functional.batch_norm + autograd, and kernels against NumPy."""

import numpy as np
import pytest
from conftest import TOL
from hypothesis import given
from hypothesis import strategies as st

from npmobilenet.kernels import batchnorm as K
from npmobilenet.ops import (
    batch_norm_backward,
    batch_norm_forward,
    relu6_backward,
    relu6_forward,
    relu_backward,
    relu_forward,
)
from npmobilenet.ops.batchnorm import (
    batch_norm_act_backward,
    batch_norm_act_forward,
    batch_norm_output,
)

DTYPES = [np.float64, np.float32]


@st.composite
def bn_cases(draw):
    N = draw(st.integers(1, 4))
    C = draw(st.integers(1, 5))
    spatial = tuple(draw(st.lists(st.integers(1, 5), min_size=0, max_size=3)))
    training = draw(st.booleans())
    if training and N * int(np.prod(spatial)) < 2:
        N = 2  # torch: "Expected more than 1 value per channel when training"
    return dict(
        shape=(N, C) + spatial,
        training=training,
        affine=draw(st.booleans()),
        momentum=draw(st.sampled_from([0.1, 0.0, 1.0, 0.37])),
        eps=draw(st.sampled_from([1e-5, 1e-3, 0.5])),
        seed=draw(st.integers(0, 2**16)),
    )


def _torch_bn(torch, x, w, b, rm, rv, training, momentum, eps, dout):
    t = {k: None if v is None else torch.tensor(v) for k, v in dict(x=x, w=w, b=b).items()}
    for v in t.values():
        if v is not None:
            v.requires_grad_(True)
    trm, trv = torch.tensor(rm), torch.tensor(rv)
    out = torch.nn.functional.batch_norm(t["x"], trm, trv, t["w"], t["b"], training, momentum, eps)
    out.backward(torch.tensor(dout))
    grads = [None if v is None else v.grad.numpy() for v in t.values()]
    return out.detach().numpy(), grads, trm.numpy(), trv.numpy()


@pytest.mark.kernels
@pytest.mark.parametrize("dtype", DTYPES)
@given(case=bn_cases())
def test_matches_torch(torch, dtype, case):
    rng = np.random.default_rng(case["seed"])
    C = case["shape"][1]
    x = (rng.standard_normal(case["shape"]) * 2 + 0.5).astype(dtype)
    w = rng.standard_normal(C).astype(dtype) if case["affine"] else None
    b = rng.standard_normal(C).astype(dtype) if case["affine"] else None
    rm = rng.standard_normal(C).astype(dtype)
    rv = rng.uniform(0.5, 2, C).astype(dtype)
    dout = rng.standard_normal(case["shape"]).astype(dtype)
    args = (case["training"], case["momentum"], case["eps"])
    # The reference runs in float64 on the same (possibly float32) values: with few values per
    # channel BN is ill-conditioned and torch's own float32 result can be off by ~1e-3 relative,
    # while ours rounds a float64 computation once.
    f64 = [None if a is None else a.astype(np.float64) for a in (x, w, b, rm, rv)]
    t_out, t_grads, t_rm, t_rv = _torch_bn(torch, *f64, *args, dout.astype(np.float64))

    out, cache = batch_norm_forward(x, w, b, rm, rv, *args)
    grads = batch_norm_backward(dout, cache)
    tol = TOL[dtype]
    assert out.dtype == dtype and out.shape == x.shape
    np.testing.assert_allclose(out, t_out, **tol)
    np.testing.assert_allclose(rm, t_rm, **tol)  # updated in place, like torch's buffers
    np.testing.assert_allclose(rv, t_rv, **tol)
    for g, tg in zip(grads, t_grads):
        if tg is None:
            assert g is None
        else:
            assert g.dtype == dtype
            np.testing.assert_allclose(g, tg, **tol)


def test_running_stats_over_steps_then_eval(torch):
    """Five training steps with a BatchNorm2d module, then eval: the same numbers."""
    rng = np.random.default_rng(0)
    C = 3
    m = torch.nn.BatchNorm2d(C, momentum=0.2).double()
    w, b = rng.standard_normal(C), rng.standard_normal(C)
    with torch.no_grad():
        m.weight.copy_(torch.tensor(w))
        m.bias.copy_(torch.tensor(b))
    rm, rv = np.zeros(C), np.ones(C)
    for _ in range(5):
        x = rng.standard_normal((4, C, 3, 5)) * 3 + 1
        out, _ = batch_norm_forward(x, w, b, rm, rv, True, momentum=0.2)
        np.testing.assert_allclose(out, m(torch.tensor(x)).detach().numpy(), **TOL[np.float64])
    np.testing.assert_allclose(rm, m.running_mean.numpy(), **TOL[np.float64])
    np.testing.assert_allclose(rv, m.running_var.numpy(), **TOL[np.float64])
    m.eval()
    x = rng.standard_normal((2, C, 4, 4))
    out, _ = batch_norm_forward(x, w, b, rm, rv, False, momentum=0.2)
    np.testing.assert_allclose(out, m(torch.tensor(x)).detach().numpy(), **TOL[np.float64])


def test_training_without_running_stats(torch):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 2, 4))
    out, _ = batch_norm_forward(x, None, None, None, None, True)
    ref = torch.nn.functional.batch_norm(torch.tensor(x), None, None, training=True)
    np.testing.assert_allclose(out, ref.numpy(), **TOL[np.float64])


def test_eval_ignores_later_running_stat_changes():
    """The cache holds copies: mutating the running stats after forward leaves backward alone."""
    rng = np.random.default_rng(2)
    x, dout = rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 3, 4))
    rm, rv, w = np.zeros(3), np.ones(3), np.full(3, 2.0)
    _, cache = batch_norm_forward(x, w, None, rm, rv, False, eps=0.0001)
    rm += 5.0
    rv *= 9.0
    dx, dw, db = batch_norm_backward(dout, cache)
    np.testing.assert_allclose(dx, dout * 2.0 / np.sqrt(1.0001), rtol=1e-12)
    np.testing.assert_allclose(dw, (dout * x).sum(axis=(0, 2)) / np.sqrt(1.0001), rtol=1e-12)
    assert db is None


@pytest.mark.kernels
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("L", [17, 16, 4, 1])  # the flat walk at and below FLAT_MAX_L
def test_kernels_match_naive(dtype, L):
    assert (L < K.FLAT_MAX_L) == (L != 17)
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((3, 4, L)) * 5 + 2).astype(dtype)
    dout = rng.standard_normal(x.shape).astype(dtype)
    v = [rng.standard_normal(4).astype(dtype) for _ in range(4)]
    for fast, naive in zip(K.channel_stats(x), K.channel_stats_naive(x)):
        np.testing.assert_allclose(fast, naive, rtol=1e-12)
    mean = K.channel_stats_naive(x)[0]
    for fast, naive in zip(K.grad_sums(dout, x, mean), K.grad_sums_naive(dout, x, mean)):
        np.testing.assert_allclose(fast, naive, rtol=1e-10, atol=1e-10)
    a, b = np.empty_like(x), np.empty_like(x)
    K.scale_shift(x, v[0], v[1], a)
    K.scale_shift_naive(x, v[0], v[1], b)
    np.testing.assert_allclose(a, b, **TOL[dtype])
    K.train_dx(dout, x, *v, a)
    K.train_dx_naive(dout, x, *v, b)
    np.testing.assert_allclose(a, b, **TOL[dtype])
    d = dout.copy()
    K.train_dx_inplace(d, x, *v)  # dx written over dout
    np.testing.assert_allclose(d, b, **TOL[dtype])


@pytest.mark.kernels
@pytest.mark.parametrize("L", [40, 2])  # per-channel rows; flat rows
def test_channel_stats_stable_across_images_with_offsets_and_outliers(L):
    """The per-image merge keeps float64 precision: images with very different offsets, a tiny
    spread, an outlier first value (a one-pass sum of squares would lose every digit here)."""
    rng = np.random.default_rng(5)
    x = 1e-3 * rng.standard_normal((5, 3, L)) + np.array([1e6, -3e5, 7.0, 1e6, 2e6])[:, None, None]
    x[0, :, 0] = 1e9
    for fast, naive in zip(K.channel_stats(x), K.channel_stats_naive(x)):
        np.testing.assert_allclose(fast, naive, rtol=1e-12)
    y = 1e6 + 1e-3 * rng.standard_normal((4, 2, L))  # low variance under a large mean
    for fast, naive in zip(K.channel_stats(y), K.channel_stats_naive(y)):
        np.testing.assert_allclose(fast, naive, rtol=1e-9)


# ------------------------------------------------------------------ BN fused with ReLU / ReLU6
UNFUSED_ACT = {"relu": (relu_forward, relu_backward), "relu6": (relu6_forward, relu6_backward)}


@pytest.mark.kernels
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ["relu", "relu6"])
@pytest.mark.parametrize("training", [True, False])
def test_act_matches_bn_then_activation(dtype, activation, training):
    """The fused op against the two trusted ops in a row (which test_matches_torch checks)."""
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((3, 4, 5, 6)) * 4 + 1).astype(dtype)
    w, b = (rng.standard_normal(4) * 3).astype(dtype), rng.standard_normal(4).astype(dtype)
    dout = rng.standard_normal(x.shape).astype(dtype)
    stats = [np.zeros(4, dtype), np.ones(4, dtype)]
    stats_ref = [s.copy() for s in stats]
    out, cache = batch_norm_act_forward(x, w, b, *stats, training, activation=activation)
    act_fwd, act_bwd = UNFUSED_ACT[activation]
    y, bn_cache = batch_norm_forward(x, w, b, *stats_ref, training)
    ref, act_cache = act_fwd(y)
    np.testing.assert_array_equal(out, ref)
    assert out.dtype == dtype and (out == 0).any() and (activation == "relu" or (out == 6).any())
    for s, s_ref in zip(stats, stats_ref):
        np.testing.assert_array_equal(s, s_ref)
    grads = batch_norm_act_backward(dout, cache)
    grads_ref = batch_norm_backward(act_bwd(dout, act_cache), bn_cache)
    for g, g_ref in zip(grads, grads_ref):
        assert g.dtype == dtype
        np.testing.assert_allclose(g, g_ref, rtol=1e-12 if dtype == np.float64 else 1e-6,
                                   atol=1e-12 if dtype == np.float64 else 1e-6)  # fmt: skip


@pytest.mark.kernels
@pytest.mark.parametrize("six", [False, True])
@pytest.mark.parametrize("L", [17, 16, 4, 1])  # the flat walk at and below FLAT_MAX_L
def test_act_kernels_match_naive(six, L):
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((3, 4, L)) * 5 + 2).astype(np.float32)
    dout = rng.standard_normal(x.shape).astype(np.float32)
    scale, shift, mean, k, a, b = (rng.standard_normal(4) for _ in range(6))  # (C,) each
    out, out_n = np.empty_like(x), np.empty_like(x)
    K.scale_shift_act(x, scale, shift, out, six)
    K.scale_shift_act_naive(x, scale, shift, out_n, six)
    np.testing.assert_array_equal(out, out_n)
    sums = K.grad_sums_act(dout, out, x, mean, six)
    for fast, naive in zip(sums, K.grad_sums_act_naive(dout, out, x, mean, six)):
        np.testing.assert_allclose(fast, naive, rtol=1e-10, atol=1e-10)
    dx, dx_n = np.empty_like(x), np.empty_like(x)
    K.train_dx_act(dout, out, x, mean, k, a, b, dx, six)
    K.train_dx_act_naive(dout, out, x, mean, k, a, b, dx_n, six)
    np.testing.assert_allclose(dx, dx_n, **TOL[np.float32])
    d = dout.copy()
    K.train_dx_act_inplace(d, out, x, mean, k, a, b, six)  # dx over dout
    np.testing.assert_allclose(d, dx_n, **TOL[np.float32])


@pytest.mark.kernels
@pytest.mark.parametrize("activation", [None, "relu", "relu6"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_backward_in_place_over_dout_equals_out_of_place(activation, dtype):
    """``batch_norm_backward(dout, cache, dx=dout)`` (what ``backward(dout, consume=True)``
    does) gives the out-of-place op's gradients, with dx in dout's memory."""
    rng = np.random.default_rng(6)
    x = (rng.standard_normal((3, 4, 5, 6)) * 4 + 1).astype(dtype)
    w, b = (rng.standard_normal(4) * 3).astype(dtype), rng.standard_normal(4).astype(dtype)
    dout = rng.standard_normal(x.shape).astype(dtype)
    stats = [np.zeros(4, dtype), np.ones(4, dtype)]
    if activation is None:
        _, cache = batch_norm_forward(x, w, b, *stats, True)
        expected = batch_norm_backward(dout, cache)
    else:
        _, cache = batch_norm_act_forward(x, w, b, *stats, True, activation=activation)
        expected = batch_norm_act_backward(dout, cache)
    d = dout.copy()
    backward = batch_norm_backward if activation is None else batch_norm_act_backward
    got = backward(d, cache, dx=d)
    assert np.shares_memory(got[0], d)
    for g, want in zip(got, expected):
        np.testing.assert_allclose(g, want, rtol=1e-14 if dtype == np.float64 else 1e-6, atol=0)


@pytest.mark.kernels
@pytest.mark.parametrize("activation", [None, "relu", "relu6"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("training", [True, False])
def test_output_computed_again_from_the_cache_is_the_forward_s_bit_for_bit(
    activation, dtype, training
):
    """``batch_norm_output(cache)`` gives the forward's output exactly (into ``out`` or a new
    array), and its cache gives the backward the forward's cache gives, the output having
    been let go (overwritten) in between."""
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((3, 4, 5, 6)) * 4 + 1).astype(dtype)
    w, b = (rng.standard_normal(4) * 3).astype(dtype), rng.standard_normal(4).astype(dtype)
    dout = rng.standard_normal(x.shape).astype(dtype)
    stats = [rng.standard_normal(4).astype(dtype), rng.uniform(0.5, 2, 4).astype(dtype)]
    if activation is None:
        out, cache = batch_norm_forward(x, w, b, *stats, training)
        backward = batch_norm_backward
    else:
        out, cache = batch_norm_act_forward(x, w, b, *stats, training, activation=activation)
        backward = batch_norm_act_backward
    kept = out.copy()
    expected = backward(dout, cache)
    out[...] = np.nan  # the caller let the output go: its memory holds something else
    again, cache2 = batch_norm_output(cache)
    np.testing.assert_array_equal(again, kept)
    into = np.full_like(x, np.nan)
    assert batch_norm_output(cache, out=into)[0] is into
    np.testing.assert_array_equal(into, kept)
    for g, want in zip(backward(dout, cache2), expected):
        np.testing.assert_array_equal(g, want)
    with pytest.raises(TypeError, match="batch_norm_output: cache must be the cache returned by"):
        batch_norm_output((x,))
    with pytest.raises(ValueError, match="batch_norm_output: out must have shape"):
        batch_norm_output(cache, out=np.empty((3, 4), dtype))


def test_act_bad_inputs():
    x, v = np.zeros((2, 3, 4), np.float32), np.ones(3, np.float32)
    with pytest.raises(ValueError, match=r"batch_norm_act_forward: activation must be one of"):
        batch_norm_act_forward(x, v, v, v.copy(), v.copy(), True, activation="tanh")
    with pytest.raises(TypeError, match=r"batch_norm_act_forward: x must have dtype"):
        batch_norm_act_forward(x.astype(int), v, v, v.copy(), v.copy(), True)
    with pytest.raises(ValueError, match=r"batch_norm_act_forward: weight must have shape \(3,\)"):
        batch_norm_act_forward(x, np.ones(2, np.float32), v, v.copy(), v.copy(), True)
    _, plain = batch_norm_forward(x, v, v, v.copy(), v.copy(), True)
    _, fused = batch_norm_act_forward(x, v, v, v.copy(), v.copy(), True)
    with pytest.raises(
        TypeError, match="batch_norm_act_backward: cache must be the cache returned"
    ):
        batch_norm_act_backward(x, plain)
    with pytest.raises(TypeError, match="batch_norm_backward: cache must be the cache returned"):
        batch_norm_backward(x, fused)
    with pytest.raises(ValueError, match=r"batch_norm_act_backward: dout has shape \(2, 3\)"):
        batch_norm_act_backward(np.zeros((2, 3), np.float32), fused)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_coefficient_kernels_round_as_their_numpy_twins(dtype):
    rng = np.random.default_rng(3)
    C = 37
    mean, var = rng.normal(size=C), rng.uniform(0.0, 3.0, C) ** 3  # float64, as from the stats
    weight, bias = rng.normal(size=C).astype(dtype), rng.normal(size=C).astype(dtype)
    got = K.forward_coefficients(mean, var, weight, bias, 1e-5)
    want = K.forward_coefficients_naive(mean, var, weight, bias, 1e-5)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == np.float64
        np.testing.assert_array_equal(g, w)
    rm, rv = rng.normal(size=C).astype(dtype), rng.uniform(0.5, 2.0, C).astype(dtype)
    rm2, rv2 = rm.copy(), rv.copy()
    M, momentum = 7, 0.1
    K.update_running(rm, rv, mean, var, dtype(1.0 - momentum), momentum, M / (M - 1))
    # the update as written on the arrays: (1 - momentum) * r is rounded in r's dtype (NEP 50)
    K.update_running_naive(rm2, rv2, mean, var, 1.0 - momentum, momentum, M / (M - 1))
    np.testing.assert_array_equal(rm, rm2)
    np.testing.assert_array_equal(rv, rv2)
    assert rm.dtype == rv.dtype == dtype


@pytest.mark.parametrize("training", [True, False])
def test_backward_coefficient_kernel_rounds_as_its_numpy_twin(training):
    rng = np.random.default_rng(4)
    w, invstd, S, T = rng.normal(size=(4, 29))  # (C,) float64 each
    got = K.backward_coefficients(w, invstd, S, T, 13, training)
    for g, want in zip(got, K.backward_coefficients_naive(w, invstd, S, T, 13, training),
                       strict=True):  # fmt: skip
        np.testing.assert_array_equal(g, want)
    assert training == bool(np.any(got[1]))  # eval: a = b = 0


# ------------------------------------------------------------------ channel kernels (rows)
# Planes of at least FLAT_MAX_L pixels: forward_channels / backward_channels, one call per range
# of channels, against their NumPy twins (which reuse the naive kernels above).

CHANNEL_SHAPES = [(1, 3, 17), (2, 5, 17), (3, 4, 49)]  # one image; the smallest row plane; 7x7


def _channel_inputs(dtype, shape, seed):
    rng = np.random.default_rng(seed)
    C = shape[1]
    x = (rng.standard_normal(shape) * 3 + 1).astype(dtype)
    w, b = (rng.standard_normal(C) * 2).astype(dtype), rng.standard_normal(C).astype(dtype)
    return rng, x, w, b, rng.standard_normal(shape).astype(dtype)


def _eval_coef(rng, C):
    """coef rows for a forward with given statistics: mean, var, invstd, scale, shift."""
    coef = np.empty((5, C))
    coef[0], coef[1] = rng.standard_normal(C), rng.uniform(0.5, 2.0, C)
    coef[2] = 1.0 / np.sqrt(coef[1] + 1e-5)
    coef[3], coef[4] = rng.standard_normal(C) * 2, rng.standard_normal(C)
    return coef


@pytest.mark.kernels
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", [0, 1, 2])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", CHANNEL_SHAPES)
def test_channel_kernels_match_naive(dtype, act, training, shape):
    assert shape[2] >= K.FLAT_MAX_L
    rng, x, w, b, dout = _channel_inputs(dtype, shape, 8)
    N, C, L = shape
    coef = _eval_coef(rng, C) if not training else np.full((5, C), np.nan)
    coef_n = coef.copy()
    out, out_n = np.full_like(x, np.nan), np.full_like(x, np.nan)
    for lo, hi in ((0, 1), (1, C)):  # two calls, as two threads make them
        K.forward_channels(x, w, b, 1e-5, coef, out, act, training, lo, hi)
    K.forward_channels_naive(x, w, b, 1e-5, coef_n, out_n, act, training, 0, C)
    np.testing.assert_allclose(coef, coef_n, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(out, out_n, **TOL[dtype])
    whole = np.empty_like(x)  # one call over every channel: the same bits
    K.forward_channels(x, w, b, 1e-5, coef.copy(), whole, act, training, 0, C)
    np.testing.assert_array_equal(whole, out)
    if not training:  # eval mode's kernel, without the statistics: the same bits
        K.apply_channels(x, coef[3], coef[4], whole, act, 0, C)
        np.testing.assert_array_equal(whole, out)

    mean, invstd, scale, shift = coef[0], coef[2], coef[3], coef[4]
    w64 = w.astype(np.float64)
    args = (x, mean, w64, invstd, training)
    S, T, dx = np.empty(C), np.empty(C), np.full_like(x, np.nan)
    for lo, hi in ((0, C - 1), (C - 1, C)):
        K.backward_channels(dout, *args, S, T, dx, act, scale, shift, lo, hi)
    S_n, T_n, dx_n = np.empty(C), np.empty(C), np.empty_like(x)
    K.backward_channels_naive(dout, *args, S_n, T_n, dx_n, act, scale, shift, 0, C)
    np.testing.assert_allclose(S, S_n, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(T, T_n, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(dx, dx_n, **TOL[dtype])
    d = dout.copy()  # in place: dx written over dout, the same bits as out of place
    K.backward_channels(d, *args, S_n, T_n, d, act, scale, shift, 0, C)
    np.testing.assert_array_equal(d, dx)
    np.testing.assert_array_equal(S_n, S)


@pytest.mark.kernels
@pytest.mark.parametrize("L", [17, 40, 12544])
def test_channel_kernels_float32_one_pass_stats_match_float64_two_pass(L):
    """The forward's statistics of float32 input (one pass of shifted sums) against the float64
    two-pass NumPy statistics, on data built to make a plain sum of squares cancel (offsets far
    above a tiny spread, an outlier shift, a constant channel, a large mean); and float64 input
    (two passes) at float64 precision."""
    rng = np.random.default_rng(L)
    offsets = np.array([1e4, -3e3, 7.0, 1e4, 2e4])[:, None, None]
    x = (rng.standard_normal((5, 4, L)) + offsets).astype(np.float32)
    x[0, 1, 0] = 1e9  # the shift of channel 1 is an outlier
    x[:, 2] = 3.25  # constant: variance exactly 0
    x[:, 3] = (1e5 + rng.standard_normal((5, L))).astype(np.float32)
    ones, zeros = np.ones(4, np.float32), np.zeros(4, np.float32)
    coef, out = np.empty((5, 4)), np.empty_like(x)
    K.forward_channels(x, ones, zeros, 1e-5, coef, out, 0, True, 0, 4)
    mean_n, var_n = K.channel_stats_naive(x)
    np.testing.assert_allclose(coef[0], mean_n, rtol=1e-10)
    np.testing.assert_allclose(coef[1], var_n, rtol=1e-9)
    assert coef[1, 2] == 0.0
    y = 1e6 + 1e-3 * rng.standard_normal((4, 2, L))  # float64: low variance under a large mean
    y[0, :, 0] = 1e9
    coef = np.empty((5, 2))
    K.forward_channels(y, np.ones(2), np.zeros(2), 1e-5, coef, np.empty_like(y), 0, True, 0, 2)
    for got, want in zip(coef[:2], K.channel_stats_naive(y)):
        np.testing.assert_allclose(got, want, rtol=1e-12)


@pytest.mark.kernels
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", [1, 2])
def test_channel_backward_mask_from_x_is_the_mask_of_the_output_at_the_boundaries(dtype, act):
    """backward_channels takes the activation's mask from x and the forward's scale and shift:
    exactly the mask of forward_channels' output, also where the affine value rounds to 0 or
    to 6 (ties to even, a subnormal) or lands next to them."""
    tiny, f32 = 2.0**-149, np.float32  # the smallest float32 subnormal
    below6 = float(np.nextafter(f32(6), f32(0)))  # 6 - 2**-21
    rows = [  # (scale, shift, x values): each a channel
        (0.5, 0.0, [tiny, 3 * tiny, -tiny, 0.0, 2 * tiny, 5 * tiny, 1.0, -1.0, 7 * tiny]),
        (1.0, 2.0**-22, [below6, 6.0, 5.0, below6 - 2.0**-21, 7.0, 0.0, -0.0, 1e-30, 6.5]),
        (1.0, 2.0**-22 - 2.0**-40, [below6, 6.0, 5.0, 1.0, 2.0, 3.0, 4.0, -1.0, 0.25]),
    ]
    scale = np.array([r[0] for r in rows] + [1.7, -0.3])
    shift = np.array([r[1] for r in rows] + [0.61, 2.2])
    x = np.ones((2, 5, 18), dtype)  # 18 >= FLAT_MAX_L pixels: the channel kernels
    for c, r in enumerate(rows):
        x[:, c, :9] = r[2]
    for c in (3, 4):  # values around the input where v crosses 0 and 6
        for j, target in enumerate((0.0, 6.0)):
            x0 = dtype((target - shift[c]) / scale[c])
            x[j, c, :9] = [np.nextafter(x0, dtype(np.inf * s), dtype=dtype) if s else x0
                           for s in (-1, 0, 1, -1, 0, 1, 0, 1, -1)]  # fmt: skip
    coef, out = np.zeros((5, 5)), np.empty_like(x)
    coef[3], coef[4] = scale, shift
    unused = np.empty(5, dtype)
    K.forward_channels(x, unused, unused, 1.0, coef, out, act, False, 0, 5)
    blocked = (out <= 0) | (out >= 6) if act == 2 else out <= 0
    assert blocked.any() and (~blocked).any()
    dout = np.random.default_rng(7).standard_normal(x.shape).astype(dtype)
    want = np.where(blocked, 0, dout)
    ones, zeros = np.ones(5), np.zeros(5)  # k = 1, a = b = 0 (eval): dx is the masked dout
    S, T, dx = np.empty(5), np.empty(5), np.empty_like(x)
    K.backward_channels(dout, x, zeros, ones, ones, False, S, T, dx, act, scale, shift, 0, 5)
    np.testing.assert_array_equal(dx, want)
    np.testing.assert_allclose(S, want.astype(np.float64).sum(axis=(0, 2)), rtol=1e-12)
