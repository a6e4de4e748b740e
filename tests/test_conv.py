"""conv2d forward and backward against PyTorch, naive loops, per-channel convolutions and matmul."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import TOL
from hypothesis import assume, given
from hypothesis import strategies as st

from npmobilenet import threads
from npmobilenet.kernels import tuned
from npmobilenet.kernels.conv_depthwise import (
    depthwise3x3_backward_input,
    depthwise3x3_backward_weight,
    depthwise3x3_forward,
)
from npmobilenet.kernels.conv_direct import (
    conv2d_backward_naive,
    conv2d_direct_backward_input,
    conv2d_direct_backward_weight,
    conv2d_direct_forward,
    conv2d_forward_naive,
)
from npmobilenet.kernels.tuned.depthwise3x3 import (
    STACK_ELEMENTS,
    STACK_MAX_PIXELS,
    column_masks,
    depthwise3x3_backward_input_flat,
    depthwise3x3_backward_input_skip_padding,
    depthwise3x3_backward_input_stride2,
    depthwise3x3_backward_small,
    depthwise3x3_backward_stacked,
    depthwise3x3_backward_stride2,
    depthwise3x3_backward_stride2_pad1,
    depthwise3x3_backward_weight_flat,
    depthwise3x3_forward_flat_bands,
    depthwise3x3_forward_rows,
    depthwise3x3_forward_small,
    depthwise3x3_forward_split_columns,
)
from npmobilenet.ops import conv as conv_ops
from npmobilenet.ops.conv import choose_method, conv2d_backward, conv2d_forward
from npmobilenet.testing.conv import conv2d_configs, conv2d_kwargs, make_conv2d_inputs

pytestmark = pytest.mark.kernels
METHODS = ["direct", "im2col", "auto"]


def tol(dtype):
    # float32 sums of up to ~100 terms of order one: a loose absolute tolerance on top of TOL.
    return TOL[np.float64] if dtype == np.float64 else dict(rtol=1e-4, atol=5e-5)


def torch_conv(torch, arrays, dout, kwargs):
    """Forward output and autograd (dx, dw, db) from torch.nn.functional.conv2d, in float64."""
    t = {
        k: None if v is None else torch.tensor(v, dtype=torch.float64, requires_grad=True)
        for k, v in arrays.items()
    }
    out = torch.nn.functional.conv2d(t["x"], t["weight"], t["bias"], **kwargs)
    out.backward(torch.tensor(dout, dtype=torch.float64))
    grads = [None if t[k] is None else t[k].grad.numpy() for k in ("x", "weight", "bias")]
    return out.detach().numpy(), grads


def run_ours(arrays, dout, kwargs, method):
    out, cache = conv2d_forward(**arrays, **kwargs, method=method)
    return out, conv2d_backward(dout, cache)


@pytest.mark.torch
@pytest.mark.filterwarnings("ignore:Using padding='same'")
@given(cfg=conv2d_configs(), method=st.sampled_from(METHODS), seed=st.integers(0, 2**16))
def test_matches_torch_forward_and_backward(torch, cfg, method, seed):
    arrays = make_conv2d_inputs(cfg, seed)
    dout = np.random.default_rng(seed + 1).standard_normal(cfg["out_shape"]).astype(cfg["dtype"])
    ref_out, ref_grads = torch_conv(torch, arrays, dout, conv2d_kwargs(cfg))
    out, grads = run_ours(arrays, dout, conv2d_kwargs(cfg), method)
    assert out.shape == cfg["out_shape"] and out.dtype == cfg["dtype"]
    np.testing.assert_allclose(out, ref_out, **tol(cfg["dtype"]))
    for name, got, want in zip(("dx", "dweight", "dbias"), grads, ref_grads):
        if want is None:
            assert got is None, name
        else:
            assert got.shape == want.shape and got.dtype == cfg["dtype"], name
            np.testing.assert_allclose(got, want, err_msg=name, **tol(cfg["dtype"]))


@given(cfg=conv2d_configs(dtypes=(np.float64,)), seed=st.integers(0, 2**16))
def test_direct_and_im2col_agree(cfg, seed):
    arrays = make_conv2d_inputs(cfg, seed)
    dout = np.random.default_rng(seed + 1).standard_normal(cfg["out_shape"])
    out_d, grads_d = run_ours(arrays, dout, conv2d_kwargs(cfg), "direct")
    out_i, grads_i = run_ours(arrays, dout, conv2d_kwargs(cfg), "im2col")
    np.testing.assert_allclose(out_d, out_i, rtol=1e-12, atol=1e-12)
    for got, want in zip(grads_d, grads_i):
        if want is None:
            assert got is None
        else:
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.torch
@pytest.mark.filterwarnings("ignore:Using padding='same'")
@given(
    cfg=conv2d_configs(dtypes=(np.float64,)),
    method=st.sampled_from(METHODS),
    batched_im2col=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_backward_without_input_grad_matches_torch(torch, cfg, method, batched_im2col, seed):
    """``input_grad=False`` (a first layer): no dx, and dW, db still torch's, for every path."""
    arrays = make_conv2d_inputs(cfg, seed)
    dout = np.random.default_rng(seed + 1).standard_normal(cfg["out_shape"])
    _, (_, ref_dw, ref_db) = torch_conv(torch, arrays, dout, conv2d_kwargs(cfg))
    out, cache = conv2d_forward(**arrays, **conv2d_kwargs(cfg), method=method)
    threshold = conv_ops.IM2COL_BATCHED_MAX_BYTES
    conv_ops.IM2COL_BATCHED_MAX_BYTES = threshold if batched_im2col else -1
    try:
        dx, dw, db = conv_ops.conv2d_backward(dout, cache, input_grad=False)
    finally:
        conv_ops.IM2COL_BATCHED_MAX_BYTES = threshold
    assert dx is None
    np.testing.assert_allclose(dw, ref_dw, **TOL[np.float64])
    if ref_db is None:
        assert db is None
    else:
        np.testing.assert_allclose(db, ref_db, **TOL[np.float64])


@pytest.mark.torch
@pytest.mark.filterwarnings("ignore:Using padding='same'")
@given(cfg=conv2d_configs(dtypes=(np.float64,)), input_grad=st.booleans(),
       seed=st.integers(0, 2**16))  # fmt: skip
def test_im2col_columns_kept_for_the_backward_match_torch(torch, cfg, input_grad, seed):
    """A forward told a backward follows keeps its (small) column matrices; the backward then
    builds none and still gives torch's gradients."""
    arrays = make_conv2d_inputs(cfg, seed)
    dout = np.random.default_rng(seed + 1).standard_normal(cfg["out_shape"])
    ref_out, ref_grads = torch_conv(torch, arrays, dout, conv2d_kwargs(cfg))
    builds = []
    build = conv_ops.im2col_images
    conv_ops.im2col_images = lambda *a: builds.append(build(*a))
    try:
        out, cache = conv2d_forward(**arrays, **conv2d_kwargs(cfg), method="im2col",
                                    backward_ahead=True)  # fmt: skip
        assume(cache.method == "im2col")  # (a pointwise geometry multiplies x as it lies)
        assert cache.cols is not None and len(builds) == 1
        grads = conv_ops.conv2d_backward(dout, cache, input_grad=input_grad)
    finally:
        conv_ops.im2col_images = build
    assert len(builds) == 1
    np.testing.assert_allclose(out, ref_out, **TOL[np.float64])
    for name, got, want in zip(("dx", "dweight", "dbias"), grads, ref_grads):
        if want is None or (name == "dx" and not input_grad):
            assert got is None
        else:
            np.testing.assert_allclose(got, want, err_msg=name, **TOL[np.float64])


@given(cfg=conv2d_configs(dtypes=(np.float64,)), seed=st.integers(0, 2**16))
def test_im2col_batched_equals_per_image(cfg, seed):
    """The whole-batch im2col forward and backward (small batches) against the image-by-image
    ones."""
    arrays = make_conv2d_inputs(cfg, seed)
    dout = np.random.default_rng(seed + 1).standard_normal(cfg["out_shape"])
    out, batched = run_ours(arrays, dout, conv2d_kwargs(cfg), "im2col")
    threshold = conv_ops.IM2COL_BATCHED_MAX_BYTES
    conv_ops.IM2COL_BATCHED_MAX_BYTES = -1
    try:
        out_per_image, per_image = run_ours(arrays, dout, conv2d_kwargs(cfg), "im2col")
    finally:
        conv_ops.IM2COL_BATCHED_MAX_BYTES = threshold
    np.testing.assert_allclose(out, out_per_image, rtol=1e-12, atol=1e-12)
    for got, want in zip(batched, per_image):
        if want is None:
            assert got is None
        else:
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def _in_bands(cfg, band_rows, kept, input_grad, n_threads, arrays, dout):
    """conv2d_forward and conv2d_backward by im2col, the backward's weight gradient in bands of
    at most ``band_rows`` output rows (IM2COL_BAND_BYTES set just below band_rows + 1 rows'
    worth), the batch split over ``n_threads`` threads whatever its size. Returns (out, grads,
    cache, bands, im2col_images calls in the forward, and in the backward)."""
    x, w = arrays["x"], arrays["weight"]
    rows, OW = x.shape[-3] * w.shape[2] * w.shape[3], cfg["out_shape"][-1]
    per_row = rows * OW * x.itemsize
    saved = conv_ops.IM2COL_BAND_BYTES, threads.MIN_SLICE_ELEMENTS, conv_ops.im2col_images
    builds = []
    conv_ops.IM2COL_BAND_BYTES = (band_rows + 1) * per_row - 1
    threads.MIN_SLICE_ELEMENTS = 1
    conv_ops.im2col_images = lambda *a: builds.append(saved[2](*a))
    runner = threads.Runner(n_threads)
    try:
        out, cache = conv2d_forward(**arrays, **conv2d_kwargs(cfg), method="im2col",
                                    runner=runner, backward_ahead=kept)  # fmt: skip
        forward_builds = len(builds)
        del builds[:]
        grads = conv2d_backward(dout, cache, input_grad=input_grad, runner=runner)
        bands = conv_ops._bands(rows, cfg["out_shape"][-2], OW, x.itemsize)
    finally:
        conv_ops.IM2COL_BAND_BYTES, threads.MIN_SLICE_ELEMENTS, conv_ops.im2col_images = saved
    assume(cache.method == "im2col")  # (a pointwise geometry multiplies x as it lies)
    return out, grads, cache, bands, forward_builds, len(builds)


@pytest.mark.torch
@pytest.mark.filterwarnings("ignore:Using padding='same'")
@given(cfg=conv2d_configs(), band_rows=st.integers(1, 3), kept=st.booleans(),
       input_grad=st.booleans(), n_threads=st.sampled_from([1, 2]),
       seed=st.integers(0, 2**16))  # fmt: skip
def test_im2col_in_bands_of_rows_matches_torch(
    torch, cfg, band_rows, kept, input_grad, n_threads, seed
):
    """The output and weight gradient of images whose column matrices exceed
    IM2COL_BAND_BYTES, band by band (the forward's bands kept for the backward, or built again
    band by band), with dx or not: torch's output and gradients, float32 and float64, batches
    of 1-3 split unevenly over two threads."""
    arrays = make_conv2d_inputs(cfg, seed)
    dout = np.random.default_rng(seed + 1).standard_normal(cfg["out_shape"]).astype(cfg["dtype"])
    ref_out, ref_grads = torch_conv(torch, arrays, dout, conv2d_kwargs(cfg))
    out, grads, _, bands, forward_builds, builds = _in_bands(
        cfg, band_rows, kept, input_grad, n_threads, arrays, dout
    )
    OH, N = cfg["out_shape"][-2], (cfg["x_shape"][0] if len(cfg["x_shape"]) == 4 else 1)
    assert len(bands) == (1 if OH <= band_rows else -(-OH // band_rows))
    if len(bands) > 1:  # each image's bands built once in the forward; the backward uses the
        assert forward_builds == N * len(bands)  # kept ones, else builds each band again
        assert builds == (0 if kept else N * len(bands))
    assert out.dtype == cfg["dtype"]
    np.testing.assert_allclose(out, ref_out, **tol(cfg["dtype"]))
    for name, got, want in zip(("dx", "dweight", "dbias"), grads, ref_grads):
        if want is None or (name == "dx" and not input_grad):
            assert got is None
        else:
            assert got.dtype == cfg["dtype"], name
            np.testing.assert_allclose(got, want, err_msg=name, **tol(cfg["dtype"]))


@given(cfg=conv2d_configs(dtypes=(np.float64,), allow_unbatched=False),
       band_rows=st.integers(1, 3), kept=st.booleans(), seed=st.integers(0, 2**16))  # fmt: skip
def test_im2col_in_bands_of_rows_matches_naive_loops(cfg, band_rows, kept, seed):
    """The forward and both gradients, dW in bands, against the textbook loops, in float64."""
    arrays = make_conv2d_inputs(cfg, seed)
    dout = np.random.default_rng(seed + 1).standard_normal(cfg["out_shape"])
    out, (dx, dw, _), cache, *_ = _in_bands(cfg, band_rows, kept, True, 2, arrays, dout)
    x, w = arrays["x"], arrays["weight"]
    (sh, sw), (pt, _, pl, _), (dh, dw_) = cache.stride, cache.padding, cache.dilation
    geom = (sh, sw, pt, pl, dh, dw_, cfg["groups"])
    naive, dx_n, dw_n = np.zeros(cfg["out_shape"]), np.zeros_like(x), np.zeros_like(w)
    conv2d_forward_naive(x, w, naive, *geom)
    conv2d_backward_naive(dout, x, w, dx_n, dw_n, *geom)
    if arrays["bias"] is not None:
        naive += arrays["bias"].reshape(1, -1, 1, 1)
    np.testing.assert_allclose(out, naive, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx, dx_n, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dw, dw_n, rtol=1e-12, atol=1e-12)


@given(rows=st.integers(1, 64), OH=st.integers(1, 300), OW=st.integers(1, 300),
       itemsize=st.sampled_from([4, 8]), budget=st.integers(1, 2**20))  # fmt: skip
def test_im2col_bands_cover_the_rows_within_the_budget(rows, OH, OW, itemsize, budget):
    saved = conv_ops.IM2COL_BAND_BYTES
    conv_ops.IM2COL_BAND_BYTES = budget
    try:
        bands = conv_ops._bands(rows, OH, OW, itemsize)
    finally:
        conv_ops.IM2COL_BAND_BYTES = saved
    per_row = rows * OW * itemsize
    assert [r for a, b in bands for r in range(a, b)] == list(range(OH))
    assert all(b > a for a, b in bands)
    assert (len(bands) == 1) == (OH * per_row <= budget or OH == 1 == len(bands))
    if len(bands) > 1:
        assert all((b - a) * per_row <= budget or b - a == 1 for a, b in bands)
        assert len(bands) == -(-OH // max(1, budget // per_row))  # as few as the budget allows


@given(cfg=conv2d_configs(dtypes=(np.float64,), allow_unbatched=False), seed=st.integers(0, 99))
def test_fast_direct_kernels_match_naive_loops(cfg, seed):
    a = make_conv2d_inputs(cfg, seed)
    x, w = a["x"], a["weight"]
    _, cache = conv2d_forward(x, w, **conv2d_kwargs(cfg))
    (sh, sw), (pt, _, pl, _), (dh, dw) = cache.stride, cache.padding, cache.dilation
    geom = (sh, sw, pt, pl, dh, dw, cfg["groups"])
    fast, naive = np.zeros(cfg["out_shape"]), np.zeros(cfg["out_shape"])
    conv2d_direct_forward(x, w, fast, *geom)
    conv2d_forward_naive(x, w, naive, *geom)
    np.testing.assert_allclose(fast, naive, rtol=1e-12, atol=1e-12)

    dout = np.random.default_rng(seed).standard_normal(cfg["out_shape"])
    dx, dwt, dx_n, dw_n = np.zeros_like(x), np.zeros_like(w), np.zeros_like(x), np.zeros_like(w)
    conv2d_direct_backward_input(dout, w, dx, *geom)
    conv2d_direct_backward_weight(dout, x, dwt, *geom)
    conv2d_backward_naive(dout, x, w, dx_n, dw_n, *geom)
    np.testing.assert_allclose(dx, dx_n, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dwt, dw_n, rtol=1e-12, atol=1e-12)


@given(
    shape=st.tuples(st.integers(1, 2), st.integers(1, 3), st.integers(1, 3)),  # N, C, multiplier
    size=st.tuples(st.integers(1, 12), st.integers(1, 12)),
    stride=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    pads=st.tuples(*[st.integers(0, 3)] * 4),  # top, bottom, left, right: asymmetric too
    seed=st.integers(0, 99),
)
def test_depthwise3x3_kernels_match_naive_loops(shape, size, stride, pads, seed):
    (N, C, m), (H, W), (sh, sw), (pt, pb, pl, pr) = shape, size, stride, pads
    assume(H + pt + pb >= 3 and W + pl + pr >= 3)
    OH, OW = (H + pt + pb - 3) // sh + 1, (W + pl + pr - 3) // sw + 1
    rng = np.random.default_rng(seed)
    x, w = rng.standard_normal((N, C, H, W)), rng.standard_normal((C * m, 1, 3, 3))
    dout = rng.standard_normal((N, C * m, OH, OW))
    geom = (sh, sw, pt, pl, 1, 1, C)
    naive = np.zeros((N, C * m, OH, OW))
    conv2d_forward_naive(x, w, naive, *geom)
    forward = [depthwise3x3_forward]
    forward += [depthwise3x3_forward_rows] if (sh, sw) == (1, 1) else []
    forward += [depthwise3x3_forward_split_columns] if sw == 2 else []
    forward += [depthwise3x3_forward_small] if m == 1 else []
    forward += [depthwise3x3_forward_flat_bands] if (sh, sw) == (1, 1) and OW == W else []
    for kernel in forward:
        fast = np.full((N, C * m, OH, OW), np.nan)  # the forward kernels write out
        kernel(x, w, fast, sh, sw, pt, pl)
        np.testing.assert_allclose(fast, naive, rtol=1e-12, atol=1e-12, err_msg=kernel.__name__)

    dx_n, dw_n = np.zeros_like(x), np.zeros_like(w)
    conv2d_backward_naive(dout, x, w, dx_n, dw_n, *geom)
    weight_grad = [depthwise3x3_backward_weight]
    weight_grad += [depthwise3x3_backward_weight_flat] if (sh, sw) == (1, 1) else []
    for kernel in weight_grad:
        dw = np.zeros_like(w)
        kernel(dout, x, dw, sh, sw, pt, pl)
        np.testing.assert_allclose(dw, dw_n, rtol=1e-12, atol=1e-12, err_msg=kernel.__name__)
    w_flipped = np.ascontiguousarray(w[:, :, ::-1, ::-1])
    input_grad = [
        depthwise3x3_backward_input,
        depthwise3x3_backward_input_flat,
        depthwise3x3_backward_input_skip_padding,
    ]
    input_grad += [depthwise3x3_backward_input_stride2] if (sh, sw) == (2, 2) else []
    for kernel in input_grad:
        dx = np.zeros_like(x)
        kernel(dout, w_flipped, dx, sh, sw, pt, pl)
        np.testing.assert_allclose(dx, dx_n, rtol=1e-12, atol=1e-12, err_msg=kernel.__name__)

    both = [depthwise3x3_backward_small] if m == 1 else []  # both gradients: dx written
    both += [depthwise3x3_backward_stacked] if m == 1 and (sh, sw, OH, OW) == (1, 1, H, W) else []
    both += [depthwise3x3_backward_stride2] if m == 1 and (sh, sw) == (2, 2) else []
    pad1 = _pad1_halved(m, sh, sw, pt, pl, H, W, OH, OW)
    both += [depthwise3x3_backward_stride2_pad1] if pad1 else []
    for kernel in both:
        dx, dw = np.full_like(x, np.nan), np.zeros_like(w)
        kernel(dout, x, w, dx, dw, sh, sw, pt, pl)
        np.testing.assert_allclose(dx, dx_n, rtol=1e-12, atol=1e-12, err_msg=kernel.__name__)
        np.testing.assert_allclose(dw, dw_n, rtol=1e-12, atol=1e-12, err_msg=kernel.__name__)


@pytest.mark.parametrize(
    "size",
    [(12, 12), (7, 7), (14, 14), (1, 1), (3, 10), (17, 16), (5, 4), (9, 8), (6, 112), (1, 97),
     (40, 30)],
)  # fmt: skip
@pytest.mark.parametrize("pads", [(1, 1), (0, 0), (2, 2), (0, 2)])
def test_depthwise3x3_backward_stacked_matches_naive_loops(size, pads):
    """Enough images for several stacks (the last one partial), padding on either side; planes
    of more than STACK_MAX_PIXELS one image at a time (17x16, 6x112, 1x97, 40x30); rows of 1 to
    112 columns; loops of more than SUM_CHUNK positions (a 14x14 stack, 40x30: several chunks of
    sums); the kernel writes dx and adds into dweight."""
    (H, W), (pt, pl) = size, pads
    N = STACK_ELEMENTS // ((H + 1) * W) + 3 if H * W > 1 else 3
    rng = np.random.default_rng(H * W + pt)
    x, w = rng.standard_normal((N, 2, H, W)), rng.standard_normal((2, 1, 3, 3))
    dout = rng.standard_normal((N, 2, H, W))
    dx_n, dw_n = np.zeros_like(x), np.zeros_like(w)
    conv2d_backward_naive(dout, x, w, dx_n, dw_n, 1, 1, pt, pl, 1, 1, 2)
    dx, dw = np.full_like(x, np.nan), np.full_like(w, 0.25)
    depthwise3x3_backward_stacked(dout, x, w, dx, dw, 1, 1, pt, pl)
    np.testing.assert_allclose(dx, dx_n, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dw - 0.25, dw_n, rtol=1e-12, atol=1e-11)


@pytest.mark.parametrize("size, pads", [((112, 112), (1, 1)), ((14, 14), (1, 1)), ((7, 9), (0, 2))])
def test_depthwise3x3_backward_stacked_float32_matches_float64_loops(size, pads):
    """The stacked kernel in float32 (dW summed in float32 over chunks of positions, then in
    float64) on MobileNet's largest plane, a stack of 14x14 planes and a padded one: dx and dW
    are the float64 naive loops' to float32 precision."""
    (H, W), (pt, pl), C = size, pads, 3
    N = 2 if H * W > STACK_MAX_PIXELS else 12
    rng = np.random.default_rng(H + W)
    x, w = rng.standard_normal((N, C, H, W)), rng.standard_normal((C, 1, 3, 3))
    dout = rng.standard_normal((N, C, H, W))
    _assert_float32_is_float64_loops(depthwise3x3_backward_stacked, dout, x, w, 1, pt, pl)


@pytest.mark.parametrize("W", [1, 2, 3, 7, 14])
def test_column_masks_bits_are_the_columns_inside_a_row(W):
    """Bit e + 2 of the stacked kernel's mask at flat position q is set exactly where column
    q % W + e lies inside a row of W (e = -2 .. 2): the taps the flat loop keeps."""
    q = np.arange(3 * W + 2)
    m = column_masks(W, q.size)
    for e in range(-2, 3):
        inside = (q % W + e >= 0) & (q % W + e < W)
        np.testing.assert_array_equal((m >> (e + 2)) & 1, inside.astype(np.uint8), err_msg=str(e))


def _assert_float32_is_float64_loops(kernel, dout, x, w, stride, pt, pl):
    """A both-gradients kernel run in float32 gives the float64 naive loops' dx and dW to
    float32 precision (dW's terms are of order one with random signs: their sum's rounding
    grows as the square root of their count)."""
    dx_n, dw_n = np.zeros_like(x), np.zeros_like(w)
    conv2d_backward_naive(dout, x, w, dx_n, dw_n, stride, stride, pt, pl, 1, 1, x.shape[1])
    x32, w32, d32 = (a.astype(np.float32) for a in (x, w, dout))
    dx, dw = np.full_like(x32, np.nan), np.zeros_like(w32)
    kernel(d32, x32, w32, dx, dw, stride, stride, pt, pl)
    np.testing.assert_allclose(dx, dx_n, rtol=1e-5, atol=1e-5)
    terms = dout.shape[0] * dout.shape[2] * dout.shape[3]
    np.testing.assert_allclose(dw, dw_n, rtol=0, atol=2e-6 * np.sqrt(terms))


def test_depthwise3x3_backward_stacked_infinite_gradient_is_the_naive_loops():
    """An inf in dout at a row's first and last column gives the naive loops' dx: inf where it
    reaches, never NaN in the row above or below, where the flat loop's index wraps to it."""
    rng = np.random.default_rng(4)
    x, w = rng.standard_normal((3, 2, 9, 10)), rng.standard_normal((2, 1, 3, 3))
    dout = rng.standard_normal((3, 2, 9, 10))
    dout[1, 0, 4, 0] = dout[1, 1, 5, 9] = np.inf
    _assert_infinite_dout_gives_naive_dx(depthwise3x3_backward_stacked, dout, x, w, 1)


def _assert_infinite_dout_gives_naive_dx(kernel, dout, x, w, stride):
    """dx of a both-gradients kernel (padding 1) is the naive loops': inf where an inf in dout
    reaches, no NaN (the loops' dx has none)."""
    dx_n, dw_n = np.zeros_like(x), np.zeros_like(w)
    conv2d_backward_naive(dout, x, w, dx_n, dw_n, stride, stride, 1, 1, 1, 1, x.shape[1])
    dx, dw = np.full_like(x, np.nan), np.zeros_like(w)
    kernel(dout, x, w, dx, dw, stride, stride, 1, 1)
    assert np.isinf(dx).any() and not np.isnan(dx_n).any()
    np.testing.assert_allclose(dx, dx_n, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("stride", [1, 2])
def test_depthwise3x3_wide_planes_match_naive_loops(stride):
    """Planes wider than 32 columns: the readable kernels and the table's choice."""
    rng = np.random.default_rng(stride)
    H, W = 5, 41
    x, w = rng.standard_normal((2, 3, H, W)), rng.standard_normal((3, 1, 3, 3))
    OH, OW = (H - 1) // stride + 1, (W - 1) // stride + 1
    dout = rng.standard_normal((2, 3, OH, OW))
    geom = (stride, stride, 1, 1, 1, 1, 3)
    naive = np.zeros((2, 3, OH, OW))
    conv2d_forward_naive(x, w, naive, *geom)
    dx_n, dw_n = np.zeros_like(x), np.zeros_like(w)
    conv2d_backward_naive(dout, x, w, dx_n, dw_n, *geom)
    shape = tuned.DepthwiseShape(3, 3, (H, W), (OH, OW), (stride, stride))
    for forward in (depthwise3x3_forward, tuned.depthwise3x3_kernel("forward", shape)):
        fast = np.full((2, 3, OH, OW), np.nan)
        forward(x, w, fast, stride, stride, 1, 1)
        np.testing.assert_allclose(fast, naive, rtol=1e-12, atol=1e-12)
    w_flipped = np.ascontiguousarray(w[:, :, ::-1, ::-1])
    tuned_input_grad = tuned.depthwise3x3_kernel("backward_input", shape)
    for input_grad in (depthwise3x3_backward_input, tuned_input_grad):
        dx = np.zeros_like(x)
        input_grad(dout, w_flipped, dx, stride, stride, 1, 1)
        np.testing.assert_allclose(dx, dx_n, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("multiplier", [1, 2])
@pytest.mark.parametrize(
    "size, stride, pads",
    [
        ((20, 200), (1, 1), (1, 1, 1, 1)),  # bands of 8 rows: 3 bands, the last one partial
        ((21, 200), (1, 1), (2, 0, 0, 2)),
        ((30, 200), (2, 2), (1, 1, 1, 1)),  # bands of 4 output rows: 4, the last one partial
        ((31, 201), (2, 2), (0, 1, 0, 1)),  # TensorFlow's "SAME" at stride 2, odd width
        ((30, 199), (1, 2), (1, 1, 2, 0)),
        ((30, 200), (3, 2), (1, 1, 3, 3)),
        ((16, 14), (1, 1), (1, 1, 1, 1)),
        ((14, 28), (1, 1), (3, 0, 0, 2)),
        ((5, 3), (1, 1), (0, 2, 2, 0)),
        ((1, 1), (1, 1), (1, 1, 1, 1)),
    ],
)
def test_depthwise3x3_forward_variants_write_the_naive_loops_result(
    size, stride, pads, multiplier, dtype
):
    """Bands of rows and split columns: written over NaN (the kernels write out), equal to the
    naive loops (float64 to 1e-12, float32 to its rounding), several bands."""
    (H, W), (sh, sw), (pt, pb, pl, pr), N, C = size, stride, pads, 2, 3
    OH, OW = (H + pt + pb - 3) // sh + 1, (W + pl + pr - 3) // sw + 1
    rng = np.random.default_rng(H * W + sh)
    x, w = rng.standard_normal((N, C, H, W)), rng.standard_normal((C * multiplier, 1, 3, 3))
    naive = np.zeros((N, C * multiplier, OH, OW))
    conv2d_forward_naive(x, w, naive, sh, sw, pt, pl, 1, 1, C)
    kernel = depthwise3x3_forward_split_columns if sw == 2 else depthwise3x3_forward_rows
    out = np.full(naive.shape, np.nan, dtype=dtype)
    kernel(x.astype(dtype), w.astype(dtype), out, sh, sw, pt, pl)
    np.testing.assert_allclose(out, naive, **tol(dtype), err_msg=kernel.__name__)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("multiplier", [1, 2])
@pytest.mark.parametrize(
    "size, stride, pads",
    [
        ((40, 112), (1, 1), (1, 1, 1, 1)),  # bands of 16 rows: 3 bands, the last one partial
        ((21, 200), (1, 1), (2, 0, 0, 2)),  # taps reaching two columns past either end
        ((9, 97), (1, 1), (0, 2, 2, 0)),
        ((14, 14), (1, 1), (1, 1, 1, 1)),
        ((7, 7), (1, 1), (1, 1, 1, 1)),
        ((3, 1), (1, 1), (1, 1, 1, 1)),  # rows of one column: every side tap outside
        ((5, 2), (1, 1), (3, 0, 2, 0)),
    ],
)
def test_depthwise3x3_forward_flat_bands_writes_the_naive_loops_result(
    size, stride, pads, multiplier, dtype
):
    """Flat bands: written over NaN (the kernel writes out), equal to the naive loops (float64
    to 1e-12, float32 to its rounding) over several bands, with padding on either side and
    rows as short as one column."""
    (H, W), (sh, sw), (pt, pb, pl, pr), N, C = size, stride, pads, 2, 3
    OH, OW = (H + pt + pb - 3) // sh + 1, (W + pl + pr - 3) // sw + 1
    assert OW == W  # the shapes the kernel is dispatched on
    rng = np.random.default_rng(H * W + sh + pl)
    x, w = rng.standard_normal((N, C, H, W)), rng.standard_normal((C * multiplier, 1, 3, 3))
    naive = np.zeros((N, C * multiplier, OH, OW))
    conv2d_forward_naive(x, w, naive, sh, sw, pt, pl, 1, 1, C)
    out = np.full(naive.shape, np.nan, dtype=dtype)
    depthwise3x3_forward_flat_bands(x.astype(dtype), w.astype(dtype), out, sh, sw, pt, pl)
    np.testing.assert_allclose(out, naive, **tol(dtype))


@pytest.mark.parametrize("pad", [0, 1, 2])
def test_depthwise3x3_forward_flat_bands_non_finite_values_are_the_naive_loops(pad):
    """An inf in x at a row's first and last columns reaches only the outputs whose taps read
    it (a flat read past a row's end is masked, not multiplied), and an inf weight gives NaN
    where its tap lies on the zero border, as the naive loops give."""
    rng = np.random.default_rng(pad)
    x, w = rng.standard_normal((2, 2, 12, 12)), rng.standard_normal((2, 1, 3, 3))
    x[0, 0, 3, 0], x[0, 0, 6, 11], x[1, 1, 0, 0] = np.inf, -np.inf, np.inf
    w[1, 0, 0, 2], w[0, 0, 1, 0] = np.inf, -np.inf
    naive, out = np.zeros((2, 2, 12, 12)), np.full((2, 2, 12, 12), 0.5)  # pads: pad, 2 - pad
    with np.errstate(invalid="ignore"):
        conv2d_forward_naive(x, w, naive, 1, 1, pad, pad, 1, 1, 2)
    depthwise3x3_forward_flat_bands(x, w, out, 1, 1, pad, pad)
    assert np.isinf(naive).any() and np.isnan(naive).any()  # the case is the intended one
    np.testing.assert_array_equal(np.isnan(out), np.isnan(naive))
    np.testing.assert_array_equal(np.isposinf(out), np.isposinf(naive))
    np.testing.assert_array_equal(np.isneginf(out), np.isneginf(naive))
    finite = np.isfinite(naive)
    np.testing.assert_allclose(out[finite], naive[finite], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("size", [(7, 7), (8, 8), (7, 10), (12, 5), (1, 2)])
@pytest.mark.parametrize("pads", [(1, 1, 1, 1), (0, 1, 0, 1), (2, 0, 3, 1)])
@pytest.mark.parametrize("multiplier", [1, 2])
def test_depthwise3x3_stride2_input_grad_matches_naive_loops(size, pads, multiplier):
    """The stride-2 input gradient (zero rows skipped): odd and even sizes, batch 3, m 1 and 2."""
    (H, W), (pt, pb, pl, pr), N, C = size, pads, 3, 4
    OH, OW = (H + pt + pb - 3) // 2 + 1, (W + pl + pr - 3) // 2 + 1
    rng = np.random.default_rng(H * W + multiplier)
    x, w = rng.standard_normal((N, C, H, W)), rng.standard_normal((C * multiplier, 1, 3, 3))
    dout = rng.standard_normal((N, C * multiplier, OH, OW))
    dx, dx_n, dw_n = np.zeros_like(x), np.zeros_like(x), np.zeros_like(w)
    conv2d_backward_naive(dout, x, w, dx_n, dw_n, 2, 2, pt, pl, 1, 1, C)
    dx[:] = 0.5  # the kernel adds into dx
    w_flipped = np.ascontiguousarray(w[:, :, ::-1, ::-1])
    depthwise3x3_backward_input_stride2(dout, w_flipped, dx, 2, 2, pt, pl)
    np.testing.assert_allclose(dx - 0.5, dx_n, rtol=1e-12, atol=1e-12)


def _pad1_halved(m, sh, sw, pt, pl, H, W, OH, OW):
    """Whether ``depthwise3x3_backward_stride2_pad1`` takes this geometry."""
    return (m, sh, sw, pt, pl) == (1, 2, 2, 1, 1) and (H, W) == (2 * OH, 2 * OW)


def _stride2_kernels(pt, pl, H, W, OH, OW):
    """The stride-2 both-gradients kernels that take this geometry (depth multiplier 1)."""
    pad1 = _pad1_halved(1, 2, 2, pt, pl, H, W, OH, OW)
    return [depthwise3x3_backward_stride2] + ([depthwise3x3_backward_stride2_pad1] if pad1 else [])


@pytest.mark.parametrize(
    "size",
    [(7, 7), (8, 8), (7, 10), (12, 5), (1, 2), (1, 1), (2, 1), (5, 50), (4, 47), (1, 48),
     (2, 2), (6, 4), (14, 28), (4, 7)],
)  # fmt: skip
@pytest.mark.parametrize(
    "pads", [(1, 1, 1, 1), (0, 2, 1, 1), (2, 0, 3, 1), (3, 3, 0, 2), (1, 0, 1, 0), (1, 1, 0, 1)]
)
def test_depthwise3x3_backward_stride2_matches_naive_loops(size, pads):
    """Both gradients at stride 2: odd and even sizes, 1-pixel planes, asymmetric and wide
    padding (crops of the spread-out gradient), rows of 1 to 25 output columns; the loops for
    padding 1 on even sizes (the output half the input: bottom and right padding 1 or 0) and
    their neighbours (one padding 0, one size odd); writes dx, adds into dweight."""
    (H, W), (pt, pb, pl, pr), N, C = size, pads, 3, 4
    OH, OW = (H + pt + pb - 3) // 2 + 1, (W + pl + pr - 3) // 2 + 1
    rng = np.random.default_rng(H * W + pt)
    x, w = rng.standard_normal((N, C, H, W)), rng.standard_normal((C, 1, 3, 3))
    dout = rng.standard_normal((N, C, OH, OW))
    dx_n, dw_n = np.zeros_like(x), np.zeros_like(w)
    conv2d_backward_naive(dout, x, w, dx_n, dw_n, 2, 2, pt, pl, 1, 1, C)
    for kernel in _stride2_kernels(pt, pl, H, W, OH, OW):
        dx, dw = np.full_like(x, np.nan), np.full_like(w, 0.25)
        kernel(dout, x, w, dx, dw, 2, 2, pt, pl)
        np.testing.assert_allclose(dx, dx_n, rtol=1e-12, atol=1e-12, err_msg=kernel.__name__)
        np.testing.assert_allclose(dw - 0.25, dw_n, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("H", [9, 8])
def test_depthwise3x3_backward_stride2_infinite_gradient_is_the_naive_loops(H):
    """An inf in dout gives the naive loops' dx (inf where it reaches, never NaN from a zero
    times inf): an odd plane and an even one (padding 1, the output half the input)."""
    rng = np.random.default_rng(3)
    x, w = rng.standard_normal((1, 2, H, 50)), rng.standard_normal((2, 1, 3, 3))
    dout = rng.standard_normal((1, 2, (H + 1) // 2, 25))
    dout[0, 1, 2, 1] = np.inf
    for kernel in _stride2_kernels(1, 1, H, 50, *dout.shape[2:]):
        _assert_infinite_dout_gives_naive_dx(kernel, dout, x, w, 2)


@pytest.mark.parametrize(
    "size, pads", [((112, 112), (1, 1)), ((57, 51), (0, 1)), ((28, 49), (1, 0)), ((28, 9), (1, 1))]
)
def test_depthwise3x3_backward_stride2_float32_matches_float64_loops(size, pads):
    """The stride-2 kernel in float32 on MobileNet's largest plane and odd ones (odd and even
    column counts, TF "same" padding (0, 1)): dx and dW are the float64 naive loops' to float32
    precision (dW sums 3136 products a tap on 112x112)."""
    (H, W), (pt, pl), N, C = size, pads, 2, 3
    OH, OW = (H + 2 * pt - 3 + (pt == 0)) // 2 + 1, (W + 2 * pl - 3 + (pl == 0)) // 2 + 1
    rng = np.random.default_rng(H + W)
    x, w = rng.standard_normal((N, C, H, W)), rng.standard_normal((C, 1, 3, 3))
    dout = rng.standard_normal((N, C, OH, OW))
    for kernel in _stride2_kernels(pt, pl, H, W, OH, OW):
        _assert_float32_is_float64_loops(kernel, dout, x, w, 2, pt, pl)


@pytest.mark.torch
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "size, stride, padding",
    [((15, 15), 2, 1), ((14, 14), 2, "tf_same"), ((9, 12), 2, (0, 1)), ((1, 1), 2, 1),
     ((3, 3), 2, 1), ((14, 14), 1, 1), ((2, 2), 1, 1), ((28, 28), 2, "tf_same"),
     ((6, 112), 1, 1), ((5, 100), 1, "tf_same")],
)  # fmt: skip
def test_depthwise_backward_both_gradient_kernels_match_torch(torch, dtype, size, stride, padding):
    """The op through the both-gradients kernels (stride 2; stride 1 stacked; tiny planes), TF
    "same" padding included, float32 and float64, a batch of 5 (a partial stack), into a dx
    holding NaN: dx and dW are torch's."""
    rng = np.random.default_rng(size[0] + stride)
    N, C = 5, 6
    x = rng.standard_normal((N, C, *size)).astype(dtype)
    w = rng.standard_normal((C, 1, 3, 3)).astype(dtype)
    out, cache = conv2d_forward(x, w, stride=stride, padding=padding, groups=C, method="direct")
    dout = rng.standard_normal(out.shape).astype(dtype)
    pt, pb, pl, pr = cache.padding
    tx, tw = (torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in (x, w))
    ref = torch.nn.functional.conv2d(
        torch.nn.functional.pad(tx, (pl, pr, pt, pb)), tw, stride=stride, groups=C
    )
    ref.backward(torch.tensor(dout, dtype=torch.float64))
    dx = np.full_like(x, np.nan)
    got_dx, got_dw, _ = conv2d_backward(dout, cache, dx=dx)
    assert got_dx is dx and got_dw.dtype == dtype
    np.testing.assert_allclose(dx, tx.grad.numpy(), **tol(dtype))
    np.testing.assert_allclose(got_dw, tw.grad.numpy(), **tol(dtype))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("multiplier", [1, 3])
def test_depthwise_equals_per_channel_convolutions(rng, method, multiplier):
    C, m = 5, multiplier
    x = rng.standard_normal((2, C, 9, 8))
    w = rng.standard_normal((C * m, 1, 3, 3))
    dout = rng.standard_normal((2, C * m, 5, 4))
    kw = dict(stride=2, padding=1)
    out, cache = conv2d_forward(x, w, groups=C, method=method, **kw)
    dx, dw, _ = conv2d_backward(dout, cache)
    dx_ref = np.zeros_like(x)
    for c in range(C):  # output channels c*m ... c*m + m - 1 read input channel c only
        ks = slice(c * m, (c + 1) * m)
        o, cc = conv2d_forward(x[:, c : c + 1], w[ks], method="im2col", **kw)
        np.testing.assert_allclose(out[:, ks], o, rtol=1e-12, atol=1e-12)
        dxc, dwc, _ = conv2d_backward(dout[:, ks], cc)
        dx_ref[:, c : c + 1] = dxc
        np.testing.assert_allclose(dw[ks], dwc, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
# up to 9 pixels: output and dx as one GEMM over the batch (1 pixel: no copy); dW as one GEMM
# below 256 pixels, one per image from 256 on
@pytest.mark.parametrize("hw", [(1, 1), (2, 2), (3, 3), (2, 5), (16, 16), (16, 17)])
def test_pointwise_equals_matmul(rng, method, dtype, hw):
    x = rng.standard_normal((3, 6, *hw)).astype(dtype)
    w = rng.standard_normal((7, 6, 1, 1)).astype(dtype)
    dout = rng.standard_normal((3, 7, *hw)).astype(dtype)
    out, cache = conv2d_forward(x, w, method=method)
    dx, dw, _ = conv2d_backward(dout, cache)
    x64, w64, d64 = (a.astype(np.float64) for a in (x, w[:, :, 0, 0], dout))
    t = tol(dtype)
    np.testing.assert_allclose(out, np.einsum("kc,nchw->nkhw", w64, x64), **t)
    np.testing.assert_allclose(dx, np.einsum("kc,nkhw->nchw", w64, d64), **t)
    np.testing.assert_allclose(dw[:, :, 0, 0], np.einsum("nkhw,nchw->kc", d64, x64), **t)
    assert out.dtype == dx.dtype == dw.dtype == dtype


# Planes of up to 9 pixels run as one GEMM over a slice's images; larger ones when
# pixels * (C + K) * POINTWISE_ONE_GEMM_COPY_RATIO <= C * K (per group); only for slices of
# two images or more: 17 pixels need C = K >= 102, 25 pixels C = K >= 150.
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "n,hw,channels,groups,one_gemm",
    [(3, (1, 17), 102, 1, True), (3, (1, 17), 101, 1, False), (2, (5, 5), 150, 1, True),
     (2, (5, 5), 149, 1, False), (1, (1, 17), 102, 1, False), (3, (17, 1), 204, 2, True),
     (3, (17, 1), 202, 2, False), (3, (3, 3), 6, 1, True), (3, (2, 5), 6, 1, False)],
)  # fmt: skip
@pytest.mark.parametrize("grads", [(True, True), (True, False), (False, True)])
def test_pointwise_one_gemm_rule_boundary(
    rng, monkeypatch, dtype, n, hw, channels, groups, one_gemm, grads
):
    assert conv_ops.POINTWISE_ONE_GEMM_COPY_RATIO == 3  # the boundaries above assume them
    assert conv_ops.POINTWISE_ONE_GEMM_MAX_HW == 9
    calls = []  # the forward and a dx without dW go through _one_gemm exactly on one side
    one_gemm_fn = conv_ops._one_gemm
    monkeypatch.setattr(conv_ops, "_one_gemm", lambda *a: calls.append(one_gemm_fn(*a)))
    cg = channels // groups
    x = rng.standard_normal((n, channels, *hw)).astype(dtype)
    w = (rng.standard_normal((channels, cg, 1, 1)) / np.sqrt(cg)).astype(dtype)
    dout = rng.standard_normal((n, channels, *hw)).astype(dtype)
    out, cache = conv2d_forward(x, w, groups=groups, method="auto")
    assert cache.method == "pointwise" and len(calls) == one_gemm
    input_grad, weight_grad = grads
    dx, dw, _ = conv2d_backward(dout, cache, input_grad=input_grad, weight_grad=weight_grad)
    assert len(calls) == one_gemm * (1 + (input_grad and not weight_grad))
    x64, d64 = (a.astype(np.float64).reshape(n, groups, cg, -1) for a in (x, dout))
    w64 = w.astype(np.float64).reshape(groups, cg, cg)
    t = tol(dtype)
    want = np.einsum("gkc,ngcl->ngkl", w64, x64).reshape(out.shape)
    np.testing.assert_allclose(out, want, **t)
    if input_grad:
        want = np.einsum("gkc,ngkl->ngcl", w64, d64).reshape(x.shape)
        np.testing.assert_allclose(dx, want, **t)
        assert dx.dtype == dtype
    else:
        assert dx is None
    if weight_grad:
        want = np.einsum("ngkl,ngcl->gkc", d64, x64).reshape(w.shape)
        np.testing.assert_allclose(dw, want, **t)
        assert dw.dtype == dtype
    else:
        assert dw is None


# Slices with POINTWISE_BATCHED_DW_MAX_BYTES of dout or more run dW image by image on planes of
# up to POINTWISE_BATCHED_DW_MAX_HW pixels too, unless _one_gemm_pays for their dx (25 pixels:
# C = K >= 150); with POINTWISE_INTERLEAVE_MIN_BYTES, each image's dx right after its dW product.
@pytest.mark.parametrize(
    "hw,channels,groups,per_image",
    [((16, 17), 10, 2, True), ((5, 5), 10, 2, True), ((5, 5), 150, 1, False)],
)
def test_pointwise_backward_large_slices(rng, monkeypatch, hw, channels, groups, per_image):
    n, cg = 3, channels // groups
    x = rng.standard_normal((n, channels, *hw)).astype(np.float32)
    w = (rng.standard_normal((channels, cg, 1, 1)) / np.sqrt(cg)).astype(np.float32)
    dout = rng.standard_normal((n, channels, *hw)).astype(np.float32)
    _, cache = conv2d_forward(x, w, groups=groups, method="auto")
    assert cache.method == "pointwise"
    small = conv2d_backward(dout, cache)  # these slices are far below both byte limits
    calls = []
    per_image_fn = conv_ops._dweight_per_image
    monkeypatch.setattr(conv_ops, "_dweight_per_image", lambda *a, **k: calls.append(len(a)) or
                        per_image_fn(*a, **k))  # fmt: skip
    monkeypatch.setattr(conv_ops, "POINTWISE_BATCHED_DW_MAX_BYTES", dout.nbytes)
    monkeypatch.setattr(conv_ops, "POINTWISE_INTERLEAVE_MIN_BYTES", dout.nbytes)
    large = conv2d_backward(dout, cache)
    assert calls == ([4] if per_image else [])  # (d4, x4, w3, dx4): dx in the per-image loop
    if hw[0] * hw[1] > conv_ops.POINTWISE_BATCHED_DW_MAX_HW:  # the same products, reordered
        for a, b in zip(small[:2], large[:2]):
            np.testing.assert_array_equal(a, b)
    x64, d64 = (a.astype(np.float64).reshape(n, groups, cg, -1) for a in (x, dout))
    w64 = w.astype(np.float64).reshape(groups, cg, cg)
    want_dx = np.einsum("gkc,ngkl->ngcl", w64, d64).reshape(x.shape)
    want_dw = np.einsum("ngkl,ngcl->gkc", d64, x64).reshape(w.shape)
    for got in (small, large):
        np.testing.assert_allclose(got[0], want_dx, **tol(np.float32))
        np.testing.assert_allclose(got[1], want_dw, **tol(np.float32))


@pytest.mark.parametrize("n", [0, 1, 2, 3])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("with_dx", [False, True])
def test_pointwise_dweight_per_image_sums_every_image(rng, n, dtype, with_dx):
    """The per-image weight gradient against float64 einsum, for empty, one-image and longer
    slices, with and without dx in the same loop; dW is a new array each call, not a buffer
    the next call reuses."""
    g, kg, cg, pixels = 2, 5, 3, 7
    d4 = rng.standard_normal((n, g, kg, pixels)).astype(dtype)
    x4 = rng.standard_normal((n, g, cg, pixels)).astype(dtype)
    w3 = rng.standard_normal((g, kg, cg)).astype(dtype)
    dx4 = np.full(x4.shape, np.nan, dtype) if with_dx else None
    dw = conv_ops._dweight_per_image(d4, x4, w3, dx4) if with_dx \
        else conv_ops._dweight_per_image(d4, x4)  # fmt: skip
    assert dw.shape == (g, kg, cg) and dw.dtype == dtype
    d64, x64 = d4.astype(np.float64), x4.astype(np.float64)
    np.testing.assert_allclose(dw, np.einsum("ngkl,ngcl->gkc", d64, x64), **tol(dtype))
    if with_dx:
        want = np.einsum("gkc,ngkl->ngcl", w3.astype(np.float64), d64)
        np.testing.assert_allclose(dx4, want, **tol(dtype))
    again = conv_ops._dweight_per_image(d4, x4)
    assert not np.shares_memory(dw, again)
    np.testing.assert_array_equal(dw, again)


@pytest.mark.torch
@pytest.mark.parametrize("hw", [(1, 1), (2, 2), (1, 3), (5, 3), (16, 17)])
def test_grouped_pointwise_small_planes_match_torch(torch, rng, hw):
    """Pointwise with groups, on planes small enough for the one-GEMM path and on one of 272
    pixels (dW and dx image by image): output and all gradients as torch computes them."""
    arrays = dict(x=rng.standard_normal((5, 6, *hw)), weight=rng.standard_normal((4, 3, 1, 1)),
                  bias=rng.standard_normal(4))  # fmt: skip
    dout = rng.standard_normal((5, 4, *hw))
    ref_out, ref_grads = torch_conv(torch, arrays, dout, dict(groups=2))
    out, cache = conv2d_forward(**arrays, groups=2, method="auto")
    grads = conv2d_backward(dout, cache)
    np.testing.assert_allclose(out, ref_out, **TOL[np.float64])
    for name, got, want in zip(("dx", "dweight", "dbias"), grads, ref_grads):
        np.testing.assert_allclose(got, want, err_msg=name, **TOL[np.float64])


@pytest.mark.parametrize("method", METHODS)
def test_unbatched_input_is_batch_of_one(rng, method):
    x, w, b = (
        rng.standard_normal((4, 6, 7)),
        rng.standard_normal((6, 2, 3, 2)),
        rng.standard_normal(6),
    )
    kw = dict(stride=(1, 2), padding=(1, 0), groups=2, method=method)
    out, cache = conv2d_forward(x, w, b, **kw)
    out_b, cache_b = conv2d_forward(x[None], w, b, **kw)
    assert out.shape == out_b.shape[1:]
    np.testing.assert_array_equal(out, out_b[0])
    dout = rng.standard_normal(out.shape)
    dx, dw, db = conv2d_backward(dout, cache)
    dx_b, dw_b, db_b = conv2d_backward(dout[None], cache_b)
    assert dx.shape == x.shape
    np.testing.assert_array_equal(dx, dx_b[0])
    np.testing.assert_array_equal(dw, dw_b)
    np.testing.assert_array_equal(db, db_b)


@pytest.mark.torch
@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("method", ["direct", "im2col"])
@pytest.mark.parametrize("kernel,dilation", [((2, 4), 1), ((4, 2), (1, 3)), ((2, 3), 2)])
def test_same_padding_with_even_kernels(torch, rng, method, kernel, dilation):
    x = rng.standard_normal((2, 3, 7, 6))
    w = rng.standard_normal((4, 3, *kernel))
    dout = rng.standard_normal((2, 4, 7, 6))
    kw = dict(padding="same", dilation=dilation)
    out, grads = run_ours({"x": x, "weight": w, "bias": None}, dout, kw, method)
    ref_out, ref_grads = torch_conv(torch, {"x": x, "weight": w, "bias": None}, dout, kw)
    assert out.shape == x.shape[:1] + (4,) + x.shape[2:]
    np.testing.assert_allclose(out, ref_out, **TOL[np.float64])
    np.testing.assert_allclose(grads[0], ref_grads[0], **TOL[np.float64])
    np.testing.assert_allclose(grads[1], ref_grads[1], **TOL[np.float64])


@pytest.mark.torch
@pytest.mark.parametrize("method", METHODS)
def test_depth_multiplier_float32(torch, rng, method):
    x = rng.standard_normal((2, 4, 11, 10)).astype(np.float32)
    w = rng.standard_normal((8, 1, 3, 3)).astype(np.float32)
    b = rng.standard_normal(8).astype(np.float32)
    dout = rng.standard_normal((2, 8, 6, 5)).astype(np.float32)
    kw = dict(stride=2, padding=1, groups=4)
    out, grads = run_ours({"x": x, "weight": w, "bias": b}, dout, kw, method)
    ref_out, ref_grads = torch_conv(torch, {"x": x, "weight": w, "bias": b}, dout, kw)
    np.testing.assert_allclose(out, ref_out, **tol(np.float32))
    for got, want in zip(grads, ref_grads):
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, want, **tol(np.float32))


@pytest.mark.parametrize("method", METHODS)
def test_non_contiguous_inputs(rng, method):
    x = rng.standard_normal((2, 3, 8, 6)).transpose(0, 1, 3, 2)  # (2, 3, 6, 8), not contiguous
    w = rng.standard_normal((3, 3, 3, 3))[:, :, ::-1]  # negative strides
    out, cache = conv2d_forward(x, w, padding=1, method=method)
    ref, _ = conv2d_forward(np.ascontiguousarray(x), np.ascontiguousarray(w), padding=1)
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12)
    dout = rng.standard_normal(out.shape)[..., ::-1]
    dx, dw, _ = conv2d_backward(dout, cache)
    assert dx.shape == x.shape and dw.shape == w.shape


def test_nan_propagates(rng):
    x = rng.standard_normal((1, 2, 5, 5))
    x[0, 0, 2, 2] = np.nan
    for method in METHODS:
        out, _ = conv2d_forward(x, rng.standard_normal((2, 1, 3, 3)), groups=2, method=method)
        assert np.isnan(out[0, 0, 1:4, 1:4]).all() and not np.isnan(out[0, 1]).any()


def test_auto_rule():
    assert choose_method((1, 32, 8, 8), (64, 32, 1, 1), (1, 1), (0, 0, 0, 0), 1) == "pointwise"
    assert choose_method((1, 32, 8, 8), (32, 1, 3, 3), (2, 2), (1, 1, 1, 1), 32) == "direct"
    assert choose_method((1, 32, 8, 8), (64, 1, 3, 3), (1, 1), (1, 1, 1, 1), 32) == "direct"
    assert choose_method((1, 8, 8, 8), (8, 4, 3, 3), (1, 1), (1, 1, 1, 1), 2) == "direct"
    assert choose_method((1, 3, 8, 8), (32, 3, 3, 3), (2, 2), (1, 1, 1, 1), 1) == "im2col"
    assert choose_method((1, 32, 8, 8), (32, 32, 3, 3), (1, 1), (1, 1, 1, 1), 1) == "im2col"
    assert choose_method((1, 32, 8, 8), (64, 32, 1, 1), (2, 2), (0, 0, 0, 0), 1) == "im2col"


@given(cfg=conv2d_configs(depthwise=True, max_channels=6))
def test_strategy_depthwise_flag_draws_only_depthwise(cfg):
    C, K = cfg["x_shape"][-3], cfg["weight_shape"][0]
    assert cfg["groups"] == C and cfg["weight_shape"][1] == 1
    assert cfg["depth_multiplier"] == K // C and K % C == 0


@given(cfg=conv2d_configs())
def test_strategy_out_shape_is_the_shape_conv2d_returns(cfg):
    arrays = make_conv2d_inputs(cfg, seed=0)
    out, _ = conv2d_forward(**arrays, **conv2d_kwargs(cfg))
    assert out.shape == cfg["out_shape"] and out.dtype == cfg["dtype"]
    assert (arrays["bias"] is not None) == cfg["bias"]


def test_every_tuned_depthwise_kernel_is_tested_against_the_naive_loops():
    """The dispatch table holds exactly the kernels the naive-loop tests above exercise."""
    tested = {
        depthwise3x3_forward, depthwise3x3_forward_rows, depthwise3x3_forward_split_columns,
        depthwise3x3_forward_small, depthwise3x3_forward_flat_bands,
        depthwise3x3_backward_small, depthwise3x3_backward_stacked,
        depthwise3x3_backward_stride2, depthwise3x3_backward_stride2_pad1,
        depthwise3x3_backward_weight, depthwise3x3_backward_weight_flat,
        depthwise3x3_backward_input, depthwise3x3_backward_input_flat,
        depthwise3x3_backward_input_stride2, depthwise3x3_backward_input_skip_padding,
    }  # fmt: skip
    assert {v.kernel for v in tuned.DEPTHWISE3X3} == tested
    assert {v.op for v in tuned.DEPTHWISE3X3} == set(tuned.OPS)


@pytest.mark.parametrize(
    "shape, padding, want",
    [
        ((64, 64, (112, 112), (56, 56), (2, 2)), (1, 1), depthwise3x3_backward_stride2_pad1),
        ((512, 512, (14, 14), (7, 7), (2, 2)), (1, 1), depthwise3x3_backward_stride2_pad1),
        ((512, 512, (14, 14), (7, 7), (2, 2)), (0, 0), depthwise3x3_backward_stride2),
        ((512, 512, (14, 14), (7, 7), (2, 2)), (1, 0), depthwise3x3_backward_stride2),
        ((512, 512, (14, 14), (7, 7), (2, 2)), None, depthwise3x3_backward_stride2),
        ((8, 8, (15, 14), (8, 7), (2, 2)), (1, 1), depthwise3x3_backward_stride2),
        ((8, 8, (14, 14), (8, 7), (2, 2)), (1, 1), depthwise3x3_backward_stride2),
        ((8, 16, (14, 14), (7, 7), (2, 2)), (1, 1), None),
    ],
)
def test_depthwise_stride2_dispatch_by_padding(shape, padding, want):
    """Padding 1 at the top and left of an even plane halved: the two-rows-a-pass kernel; any
    other padding, an unknown one, odd sizes or another output size: the general one."""
    s = tuned.DepthwiseShape(*shape, padding=padding)
    assert tuned.depthwise3x3_kernel("backward", s) is want


def test_depthwise_stride2_pad1_refuses_another_geometry():
    """The kernel for padding 1 raises (rather than computing another padding's gradients) if
    called with another."""
    x, w = np.zeros((1, 1, 8, 8)), np.zeros((1, 1, 3, 3))
    dout, dx, dw = np.zeros((1, 1, 4, 4)), np.zeros_like(x), np.zeros_like(w)
    with pytest.raises(ValueError, match="padding 1"):
        depthwise3x3_backward_stride2_pad1(dout, x, w, dx, dw, 2, 2, 0, 0)


@pytest.mark.parametrize(
    "shape, want",
    [
        ((32, 32, (112, 112), (112, 112), (1, 1)), ("forward_flat_bands", "stacked", "stacked")),
        ((32, 64, (112, 112), (112, 112), (1, 1)), ("forward_flat_bands", "weight_flat",
                                                    "input_flat")),
        ((8, 8, (10, 10), (8, 8), (1, 1)), ("forward_rows", "weight_flat", "input_flat")),
        ((8, 8, (40, 41), (20, 21), (2, 2)), ("forward_split_columns", "stride2", "stride2")),
        ((8, 16, (40, 41), (20, 21), (2, 2)), ("forward_split_columns", "backward_weight",
                                                "stride2")),
        ((8, 8, (40, 41), (40, 14), (1, 3)), ("forward", "backward_weight", "input")),
        ((64, 64, (112, 112), (56, 56), (2, 2)), ("forward_split_columns", "stride2", "stride2")),
        ((512, 512, (14, 14), (14, 14), (1, 1)), ("forward_flat_bands", "stacked", "stacked")),
        ((256, 256, (28, 28), (28, 28), (1, 1)), ("forward_flat_bands", "stacked", "stacked")),
        ((1024, 1024, (2, 2), (2, 2), (1, 1)), ("forward_small", None, None)),
    ],
)
def test_depthwise_dispatch_picks_the_documented_variant(shape, want):
    s = tuned.DepthwiseShape(*shape)
    if want[1] is None:
        assert tuned.depthwise3x3_kernel("backward", s) is depthwise3x3_backward_small
    elif want[1] in ("stacked", "stride2"):
        both = {"stacked": depthwise3x3_backward_stacked, "stride2": depthwise3x3_backward_stride2}
        assert tuned.depthwise3x3_kernel("backward", s) is both[want[1]]
        not_finite = tuned.DepthwiseShape(*shape, finite_weight=False)
        assert tuned.depthwise3x3_kernel("backward", not_finite) is None
        return
    else:
        assert tuned.depthwise3x3_kernel("backward", s) is None
    ops = ("forward", "backward_weight", "backward_input")
    names = [tuned.depthwise3x3_kernel(op, s).__name__ for op in ops]
    assert names[0] == "depthwise3x3_" + want[0]
    if want[1] is not None:
        assert names[1].endswith(want[1]) and names[2].endswith(want[2])


@pytest.mark.parametrize(
    "shape, name",
    [
        ((32, 32, (112, 112), (112, 112), (1, 1)), "forward_flat_bands"),
        ((64, 64, (112, 112), (56, 56), (2, 2)), "forward_split_columns"),
        ((128, 128, (56, 56), (56, 56), (1, 1)), "forward_flat_bands"),
        ((256, 256, (28, 28), (28, 28), (1, 1)), "forward_flat_bands"),
        ((512, 512, (14, 14), (14, 14), (1, 1)), "forward_flat_bands"),
        ((512, 512, (14, 14), (7, 7), (2, 2)), "forward_split_columns"),
        ((1024, 1024, (7, 7), (7, 7), (1, 1)), "forward_flat_bands"),
        ((8, 8, (10, 10), (8, 8), (1, 1)), "forward_rows"),  # no padding: a narrower output
        ((8, 8, (40, 41), (40, 14), (1, 3)), "forward"),
        ((1024, 1024, (2, 2), (2, 2), (1, 1)), "forward_small"),
    ],
)
def test_depthwise_forward_dispatch_picks_the_documented_variant(shape, name):
    kernel = tuned.depthwise3x3_kernel("forward", tuned.DepthwiseShape(*shape))
    assert kernel.__name__ == "depthwise3x3_" + name


@pytest.mark.torch
@pytest.mark.filterwarnings("ignore:invalid value encountered")
@pytest.mark.parametrize("groups", [1, 4])
@pytest.mark.parametrize("stride", [1, 2])
def test_direct_weight_gradient_with_infinite_dout_is_torchs(torch, groups, stride):
    """An inf in dout: the direct kernels' weight gradients are inf where PyTorch's are, and
    finite elsewhere (a sum that starts from the previous one times zero would turn NaN)."""
    rng = np.random.default_rng(groups + stride)
    x, w = rng.standard_normal((2, 4, 11, 12)), rng.standard_normal((4, 4 // groups, 3, 3))
    kw = dict(stride=stride, padding=1, groups=groups)
    out, cache = conv2d_forward(x, w, method="direct", **kw)
    dout = rng.standard_normal(out.shape)
    dout[0, 0, 4, 1] = np.inf  # the first element of the row sums of the taps j = 0
    dout[1, 1, 3, 2] = -np.inf  # (both read no padding: torch has no 0 * inf there)
    _, dw, _ = conv2d_backward(dout, cache)
    tx, tw = (torch.tensor(a, requires_grad=True) for a in (x, w))
    torch.nn.functional.conv2d(tx, tw, **kw).backward(torch.from_numpy(dout))
    ref = tw.grad.numpy()
    assert np.isinf(ref).any() and np.isfinite(ref).any()
    np.testing.assert_array_equal(np.isnan(dw), np.isnan(ref))
    np.testing.assert_allclose(dw, ref, rtol=1e-12, atol=1e-12, equal_nan=True)


@pytest.mark.torch
@pytest.mark.filterwarnings("ignore:invalid value encountered")
@pytest.mark.parametrize(
    "size, stride", [((4, 4), 1), ((14, 14), 1), ((30, 17), 1), ((9, 9), 2), ((28, 28), 2)]
)
def test_depthwise_weight_gradient_with_nonfinite_input_is_torchs(torch, size, stride):
    """An inf or NaN in x: dW has NaN exactly where PyTorch's has (inf + -inf in a tap's sum),
    also for the tuned kernels whose flat loops multiply x by zeros outside the output."""
    rng = np.random.default_rng(size[0] + stride)
    C = 3
    x, w = rng.standard_normal((2, C, *size)), rng.standard_normal((C, 1, 3, 3))
    x[0, 0, 0, 0] = np.inf  # a corner: read by some taps only at stride 2
    x[1, 1, size[0] // 2, size[1] - 1] = -np.inf  # a row's last column
    x[0, 2, size[0] - 1, 1] = np.nan
    kw = dict(stride=stride, padding=1, groups=C)
    out, cache = conv2d_forward(x, w, method="direct", **kw)
    dout = rng.standard_normal(out.shape)
    _, dw, _ = conv2d_backward(dout, cache)
    tx, tw = (torch.tensor(a, requires_grad=True) for a in (x, w))
    torch.nn.functional.conv2d(tx, tw, **kw).backward(torch.from_numpy(dout))
    ref = tw.grad.numpy()
    assert np.isfinite(ref).any() or stride == 1  # stride 2: some taps never read the corner
    np.testing.assert_array_equal(np.isnan(dw), np.isnan(ref))
    np.testing.assert_allclose(dw, ref, rtol=1e-12, atol=1e-12, equal_nan=True)


@pytest.mark.torch
@pytest.mark.filterwarnings("ignore:invalid value encountered")
@pytest.mark.parametrize("method", ["direct", "im2col"])
@pytest.mark.parametrize("depthwise", [False, True])
@pytest.mark.parametrize(
    "size, stride",
    [((1, 1), 1), ((4, 4), 1), ((9, 9), 1), ((9, 9), 2), ((40, 40), 1), ((7, 40), 2)],
)
def test_nonfinite_weight_at_padded_taps_gives_ieee_nan_as_torch(
    torch, method, depthwise, size, stride
):
    """0 * inf = NaN at padded taps: every method and kernel variant gives PyTorch's output."""
    rng = np.random.default_rng(size[1] + stride)
    C = 3
    x = rng.standard_normal((2, C, *size))
    w = rng.standard_normal((C, 1 if depthwise else C, 3, 3))
    w[0, 0, 0, 0] = np.inf  # reads the top-left padding (the only tap left for a 1x1 input)
    w[1, 0, 2, 1] = -np.inf
    w[2, 0, 1, 0] = np.nan
    kw = dict(stride=stride, padding=1, groups=C if depthwise else 1)
    out, cache = conv2d_forward(x, w, method=method, **kw)
    tx, tw = (torch.tensor(a, requires_grad=True) for a in (x, w))
    ref = torch.nn.functional.conv2d(tx, tw, **kw)
    assert np.isnan(ref.detach().numpy()).any()  # the case under test: NaN from the padding
    np.testing.assert_array_equal(np.isnan(out), np.isnan(ref.detach().numpy()))
    np.testing.assert_allclose(out, ref.detach().numpy(), rtol=1e-12, atol=1e-12, equal_nan=True)
    # the input gradient: padded taps receive nothing, so they multiply nothing either
    dout = rng.standard_normal(out.shape)
    ref.backward(torch.from_numpy(dout))
    dx, _, _ = conv2d_backward(dout, cache)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-12, atol=1e-12, equal_nan=True)
