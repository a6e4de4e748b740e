"""The fused inference engine (npmobilenet.fast) and its kernels.

* Each fused kernel against a plain NumPy reference of the same math (no torch).
* BN folding against conv-then-BN computed the long way.
* The whole engine (``model.fuse()``) against the reference PyTorch model in eval mode, float32
  and float64, several widths, resolutions, activations and input channel counts; and against
  the model's own eval forward (the module path) for what torch's seed model does not cover:
  ``conv="full"``, per-block activations. The models' BN running statistics are measured on
  data, and every comparison checks that the images' logits differ by far more than its
  tolerance (``logit_checks.assert_matches``): an image, pixel or channel in the wrong place
  shows.
* Batches split into slices and groups, and layers run in blocks of rows, forced by patching the
  engine's thresholds: each alone, one or three blocked layers at a time (a bug repeated in every
  blocked call can cancel out over an even number), and all drawn together by Hypothesis.
* Unknown modules, bad inputs, buffer reuse, thread control.
"""

from __future__ import annotations

import warnings
from contextlib import nullcontext
from functools import partial

import numpy as np
import pytest
from conftest import TOL, Residual
from hypothesis import given, settings
from hypothesis import strategies as st
from logit_checks import assert_matches as _assert_matches
from test_onnx import random_model
from torch_reference import build_seed_mobilenet

from npmobilenet import threads
from npmobilenet.fast import UnsupportedModuleError, fold_batch_norm
from npmobilenet.fast import engine as engine_module
from npmobilenet.fast.engine import im2col3x3_padded
from npmobilenet.kernels.fused_conv3x3 import (
    bias_clamp_depthwise3x3,
    bias_clamp_depthwise3x3_naive,
    depthwise3x3_nhwc,
    depthwise3x3_nhwc_naive,
    im2col3x3_nchw,
    im2col3x3_nchw_naive,
)
from npmobilenet.kernels.fused_epilogue import (
    bias_clamp_mean,
    bias_clamp_mean_naive,
    bias_clamp_pad,
    bias_clamp_pad_naive,
)
from npmobilenet.models import MobileNetV1
from npmobilenet.nn import (
    AdaptiveAvgPool2d,
    BatchNorm2d,
    Conv2d,
    Dropout,
    Identity,
    Linear,
    ModuleList,
    ReLU,
    ReLU6,
    Sequential,
)

DTYPES = [np.float32, np.float64]
CLAMPS = {"relu": (0.0, np.inf), "relu6": (0.0, 6.0)}


def _clamp(dtype, activation):
    return tuple(np.dtype(dtype).type(v) for v in CLAMPS[activation])


def _close(dtype):
    """Kernel-vs-reference tolerance: only the order of float additions differs."""
    return dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- kernels vs NumPy references

shapes = st.tuples(
    st.integers(1, 2),
    st.integers(1, 9),
    st.integers(1, 9),
    st.integers(1, 20),
    st.sampled_from([1, 2]),
)  # N, H, W, C, stride


@pytest.mark.kernels
@pytest.mark.parametrize("dtype", DTYPES)
@given(shape=shapes, activation=st.sampled_from(["relu", "relu6"]), seed=st.integers(0, 2**16))
def test_depthwise_kernel_matches_naive(dtype, shape, activation, seed):
    n, h, w, c, stride = shape
    rng = np.random.default_rng(seed)
    x = (4 * rng.standard_normal((n, h, w, c))).astype(dtype)
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))  # the zero border the kernel expects
    wt, b = rng.standard_normal((3, 3, c)).astype(dtype), rng.standard_normal(c).astype(dtype)
    lo, hi = _clamp(dtype, activation)
    out = np.full((n, (h - 1) // stride + 1, (w - 1) // stride + 1, c), np.nan, dtype)
    depthwise3x3_nhwc(xp, wt, b, stride, lo, hi, out)
    ref = depthwise3x3_nhwc_naive(xp, wt, b, stride, lo, hi)
    np.testing.assert_allclose(out, ref, **_close(dtype))
    if activation == "relu6":
        assert out.max() <= 6.0 and out.min() >= 0.0


@pytest.mark.kernels
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("h,w,c", [(3, 8, 37), (2, 9, 37), (3, 17, 64), (2, 3, 1)])
def test_depthwise_kernel_pairs_and_last_pixel_match_naive(dtype, stride, h, w, c, rng):
    """Output pixels come in pairs, the last one alone when the row is odd; channels fill SIMD
    vectors with and without a remainder."""
    x = (4 * rng.standard_normal((2, h, w, c))).astype(dtype)
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    wt, b = rng.standard_normal((3, 3, c)).astype(dtype), rng.standard_normal(c).astype(dtype)
    lo, hi = _clamp(dtype, "relu6")
    out = np.full((2, (h - 1) // stride + 1, (w - 1) // stride + 1, c), np.nan, dtype)
    depthwise3x3_nhwc(xp, wt, b, stride, lo, hi, out)
    ref = depthwise3x3_nhwc_naive(xp, wt, b, stride, lo, hi)
    np.testing.assert_allclose(out, ref, **_close(dtype))


# (top, bottom, left, right): padding 1, TensorFlow's "same" at stride 2 (none or one before,
# one or two after), Keras's (0, 1), none, and one more after than before
PADS = [(1, 1, 1, 1), (0, 1, 0, 1), (1, 2, 0, 1), (0, 0, 0, 0), (0, 1, 1, 2), (1, 0, 2, 1)]


@pytest.mark.kernels
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pads", PADS)
@given(shape=shapes, activation=st.sampled_from(["relu", "relu6"]), seed=st.integers(0, 2**16))
@settings(max_examples=25, deadline=None)
def test_bias_clamp_depthwise_kernel_matches_naive(dtype, pads, shape, activation, seed):
    """The GEMM epilogue (bias, clamp, zero padding) and the depthwise conv in one pass against
    the two steps in NumPy: the ring of rows reproduces every padding, stride and odd size."""
    n, h, w, c, stride = shape
    top, bottom, left, right = pads
    hp, wp = h + top + bottom, w + left + right
    if hp < 3 or wp < 3:
        return  # no output pixel
    rng = np.random.default_rng(seed)
    y = (4 * rng.standard_normal((n, h, w, c))).astype(dtype)
    b0 = rng.standard_normal(c).astype(dtype)
    wt, b = rng.standard_normal((3, 3, c)).astype(dtype), rng.standard_normal(c).astype(dtype)
    lo0, hi0 = _clamp(dtype, "relu6")
    lo, hi = _clamp(dtype, activation)
    ring = np.full((3, wp, c), np.nan, dtype)  # garbage: every slot must be written
    out = np.full((n, (hp - 3) // stride + 1, (wp - 3) // stride + 1, c), np.nan, dtype)
    bias_clamp_depthwise3x3(y, b0, lo0, hi0, top, left, wt, b, stride, lo, hi, ring, out)
    ref = bias_clamp_depthwise3x3_naive(y, b0, lo0, hi0, pads, wt, b, stride, lo, hi)
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, **_close(dtype))


@pytest.mark.kernels
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("stride", [1, 2])
def test_bias_clamp_depthwise_kernel_on_a_mobilenet_shape(dtype, stride, rng):
    """A layer's width of channels (SIMD vectors and a remainder) and an odd image."""
    y = (4 * rng.standard_normal((1, 15, 13, 67))).astype(dtype)
    b0, b = rng.standard_normal(67).astype(dtype), rng.standard_normal(67).astype(dtype)
    wt = rng.standard_normal((3, 3, 67)).astype(dtype)
    lo, hi = _clamp(dtype, "relu")
    ring = np.full((3, 15, 67), np.nan, dtype)
    out = np.full((1, (17 - 3) // stride + 1, (15 - 3) // stride + 1, 67), np.nan, dtype)
    bias_clamp_depthwise3x3(y, b0, lo, hi, 1, 1, wt, b, stride, lo, hi, ring, out)
    ref = bias_clamp_depthwise3x3_naive(y, b0, lo, hi, (1, 1, 1, 1), wt, b, stride, lo, hi)
    np.testing.assert_allclose(out, ref, **_close(dtype))


def test_depthwise_reference_is_a_per_channel_convolution(rng):
    """The reference itself against the textbook definition, one channel at a time."""
    x = rng.standard_normal((1, 5, 6, 3))
    wt, b = rng.standard_normal((3, 3, 3)), rng.standard_normal(3)
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = depthwise3x3_nhwc_naive(xp, wt, b, 2, -np.inf, np.inf)
    for c in range(3):
        for oh in range(3):
            for ow in range(3):
                patch = xp[0, 2 * oh : 2 * oh + 3, 2 * ow : 2 * ow + 3, c]
                assert out[0, oh, ow, c] == pytest.approx(b[c] + (patch * wt[:, :, c]).sum())


@pytest.mark.kernels
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,c,h,w,stride", [(2, 3, 7, 5, 2), (1, 1, 1, 1, 2), (1, 3, 6, 8, 1)])
def test_im2col_kernel_matches_naive(dtype, n, c, h, w, stride, rng):
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    oh, ow = (h - 1) // stride + 1, (w - 1) // stride + 1
    cols = np.full((n, oh, ow, c * 9), np.nan, dtype)
    im2col3x3_nchw(x, stride, cols)
    np.testing.assert_array_equal(cols, im2col3x3_nchw_naive(x, stride))
    # im2col then GEMM is the convolution: check one output pixel by hand.
    wt = rng.standard_normal((4, c, 3, 3)).astype(dtype)
    y = cols @ wt.reshape(4, -1).T  # (N, OH, OW, 4)
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    r, q = oh - 1, ow - 1
    patch = xp[-1, :, r * stride : r * stride + 3, q * stride : q * stride + 3]  # (C, 3, 3)
    direct = (patch[None] * wt).sum(axis=(1, 2, 3))  # (4,)
    np.testing.assert_allclose(y[-1, r, q], direct, **_close(dtype))


@pytest.mark.kernels
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ["relu", "relu6"])
def test_bias_clamp_pad_matches_naive(dtype, activation, rng):
    y = (5 * rng.standard_normal((2, 4, 3, 6))).astype(dtype)
    b = rng.standard_normal(6).astype(dtype)
    lo, hi = _clamp(dtype, activation)
    out = np.full((2, 6, 5, 6), np.nan, dtype)  # garbage everywhere, border included
    bias_clamp_pad(y, b, lo, hi, out)
    np.testing.assert_array_equal(out, bias_clamp_pad_naive(y, b, lo, hi))


@pytest.mark.kernels
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("row0,rows", [(0, 2), (2, 3), (4, 1)])
def test_im2col_kernel_computes_a_band_of_rows(dtype, row0, rows, rng):
    x = rng.standard_normal((2, 3, 9, 7)).astype(dtype)  # 5 x 4 outputs at stride 2
    cols = np.full((2, rows, 4, 27), np.nan, dtype)
    im2col3x3_nchw(x, 2, cols, row0)
    np.testing.assert_array_equal(cols, im2col3x3_nchw_naive(x, 2)[:, row0 : row0 + rows])


@pytest.mark.kernels
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("top,bottom", [(1, 1), (1, 0), (0, 1), (0, 0)])
def test_bias_clamp_pad_writes_a_band_of_rows(dtype, top, bottom, rng):
    """Rows from inside an image: a zero row only on the sides given, the left and right
    border pixels zero."""
    y = (5 * rng.standard_normal((2, 4, 3, 6))).astype(dtype)
    b = rng.standard_normal(6).astype(dtype)
    lo, hi = _clamp(dtype, "relu6")
    out = np.full((2, top + 4 + bottom, 5, 6), np.nan, dtype)
    bias_clamp_pad(y, b, lo, hi, out, top)
    full = bias_clamp_pad_naive(y, b, lo, hi)  # (2, 6, 5, 6): zero rows on both sides
    np.testing.assert_array_equal(out, full[:, 1 - top : 5 + bottom])


@pytest.mark.kernels
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ["relu", "relu6"])
def test_bias_clamp_mean_matches_naive(dtype, activation, rng):
    y = (5 * rng.standard_normal((3, 10, 7))).astype(dtype)
    b = rng.standard_normal(7).astype(dtype)
    lo, hi = _clamp(dtype, activation)
    pooled = np.full((3, 7), np.nan, dtype)
    bias_clamp_mean(y, b, lo, hi, pooled)
    np.testing.assert_allclose(pooled, bias_clamp_mean_naive(y, b, lo, hi), **_close(dtype))


# ---------------------------------------------------------------- BN folding


def test_fold_batch_norm_equals_conv_then_bn(rng):
    """A 1x1 conv is a matmul: check folded == conv then eval-mode BN, written out by hand."""
    k, c, eps = 5, 4, 1e-3
    w = rng.standard_normal((k, c, 1, 1))
    gamma, beta, mean = rng.standard_normal(k), rng.standard_normal(k), rng.standard_normal(k)
    var = rng.uniform(0.1, 2.0, k)
    x = rng.standard_normal((10, c))  # 10 pixels
    conv = x @ w[:, :, 0, 0].T  # (10, K)
    bn = gamma * (conv - mean) / np.sqrt(var + eps) + beta
    wf, bf = fold_batch_norm(w, gamma, beta, mean, var, eps)
    np.testing.assert_allclose(x @ wf[:, :, 0, 0].T + bf, bn, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- the engine vs PyTorch


def _numpy_state(model):
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def _torch_logits(torch, model, x):
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def _pair(torch, alpha, classes, in_ch, activation, dtype):
    """The reference torch model and an npmobilenet MobileNetV1 with the same weights and
    batch-norm statistics (measured on data: the logits depend on the image)."""
    model = _measured_model(alpha, classes, in_ch, activation, dtype)
    return _torch_twin(torch, model, dtype, alpha, in_ch, activation), model


def _measured_model(alpha=0.25, classes=6, in_ch=3, activation="relu", dtype=np.float64, seed=0,
                    **kw):  # fmt: skip
    """``random_model`` (batch-norm statistics measured on data: logits that depend on the
    image) with the torch padding; ``kw``: further MobileNetV1 arguments (conv, global_pool)."""
    return random_model("torch", activation, classes, seed, dtype, alpha=alpha, in_ch=in_ch, **kw)


def test_the_comparison_rejects_a_model_blind_to_its_input(rng):
    """A freshly initialised model (batch-norm statistics 0 and 1) gives nearly the same logits
    for every image: comparisons against it could not see an image in the wrong place."""
    model = MobileNetV1(0.25, 6, 3, dtype=np.float64, seed=0).eval()
    for n in (2, 1):
        x = rng.standard_normal((n, 3, 32, 32))
        with pytest.raises(AssertionError, match="barely depend on the image"):
            _assert_matches(model.fuse()(x), model.forward, x, np.float64)


CASES = [
    # alpha, classes, in_channels, activation, dtype, (N, H, W)
    (1.0, 10, 3, "relu", np.float32, (2, 32, 32)),
    (0.25, 7, 1, "relu6", np.float32, (3, 37, 45)),
    (0.25, 5, 3, "relu", np.float64, (2, 64, 48)),
    (0.5, 4, 1, "relu6", np.float64, (1, 33, 33)),
]


@pytest.mark.kernels
@pytest.mark.parametrize("alpha,classes,in_ch,activation,dtype,nhw", CASES)
def test_engine_matches_torch_eval(torch, alpha, classes, in_ch, activation, dtype, nhw, rng):
    reference, model = _pair(torch, alpha, classes, in_ch, activation, dtype)
    engine = model.fuse()
    n, h, w = nhw
    x = rng.standard_normal((n, in_ch, h, w)).astype(dtype)
    out = engine(x)
    assert out.shape == (n, classes) and out.dtype == dtype
    _assert_matches(out, partial(_torch_logits, torch, reference), x, dtype)


@pytest.mark.kernels
@pytest.mark.parametrize("alpha,classes,in_ch,activation,dtype,nhw", CASES)
def test_engine_split_over_the_batch_matches_torch_and_serial(
    torch, monkeypatch, alpha, classes, in_ch, activation, dtype, nhw, rng
):
    """A batch split into slices run side by side (3 threads, every slice worth splitting)."""
    monkeypatch.setattr(threads, "MIN_SLICE_ELEMENTS", 1)
    saved = threads.num_threads()
    threads.set_threads(3)
    try:
        reference, model = _pair(torch, alpha, classes, in_ch, activation, dtype)
        engine = model.fuse()
        _, h, w = nhw
        x = rng.standard_normal((5, in_ch, h, w)).astype(dtype)
        out = engine(x)
    finally:
        threads.set_threads(saved)
    _assert_matches(out, partial(_torch_logits, torch, reference), x, dtype)
    one_by_one = np.concatenate([engine(x[i : i + 1]) for i in range(5)])  # batch 1: no split
    np.testing.assert_allclose(out, one_by_one, **TOL[dtype])


def _set_block_budget(patch, nbytes):
    """Blocks of rows of about ``nbytes``, for layers of more than eight such blocks over the
    batch: the small budgets and images of the blocked-layer tests are chosen for that ratio
    (the engine's own threshold, ``BLOCKED_ABOVE``, is a measured speed choice)."""
    patch.setattr(engine_module, "BLOCK_BYTES", nbytes)
    patch.setattr(engine_module, "BLOCKED_ABOVE", 8)


@pytest.mark.kernels
@pytest.mark.parametrize("dtype,n,budget", [(np.float32, 1, 2048), (np.float64, 3, 9000)])
def test_layers_run_in_blocks_of_rows_match_torch(torch, monkeypatch, dtype, n, budget, rng):
    """With a tiny cache budget every large layer runs a block of rows at a time (blocks of
    one row and of several, ending at the image's bottom edge): the logits do not change."""
    _set_block_budget(monkeypatch, budget)
    calls = {"stem or pointwise": 0, "depthwise + pointwise": 0}
    for name, kind in (("_run_blocked", "stem or pointwise"),
                       ("_run_separable_blocked", "depthwise + pointwise")):  # fmt: skip
        monkeypatch.setattr(engine_module, name, _counted(getattr(engine_module, name), calls,
                                                          kind))  # fmt: skip
    reference, model = _pair(torch, 0.25, 5, 3, "relu6", dtype)
    x = rng.standard_normal((n, 3, 45, 38)).astype(dtype)
    out = model.fuse()(x)
    assert all(calls.values()), calls
    _assert_matches(out, partial(_torch_logits, torch, reference), x, dtype)
    _assert_matches(out, model.eval().forward, x, dtype)


def _blocked_layers(monkeypatch) -> list[str]:
    """The paths of the layers each forward runs in blocks of rows, in order: ``stem`` for a
    blocked stem, a separable block's path for a blocked depthwise + pointwise pair, and the
    path and kind of any other layer run in blocks alone (none: every pointwise layer follows
    its depthwise layer, and a blocked one runs with it)."""
    seen = []
    blocked, separable = engine_module._run_blocked, engine_module._run_separable_blocked

    def one(layer, *args):
        seen.append("stem" if layer.kind == "stem" else f"{layer.path} ({layer.kind} alone)")
        return blocked(layer, *args)

    def pair(dw, *args):
        seen.append(dw.path)
        return separable(dw, *args)

    monkeypatch.setattr(engine_module, "_run_blocked", one)
    monkeypatch.setattr(engine_module, "_run_separable_blocked", pair)
    return seen


# padding, input channels, (N, H, W), BLOCK_BYTES, the layers that run in blocks of rows. One
# batch, one forward: a bug repeated in every blocked call (two images swapped, say) cancels out
# over an even number of blocked layers (a cycle of three images over three), so some cases block
# exactly one layer, others the stem alone or three pairs; tf_same and keras pad the stride-2
# depthwise input of depthwise_sep_conv1 with no top row (0, 1).
BLOCKED = [
    ("torch", 3, (3, 45, 38), 25000, ["stem", "depthwise_sep_conv0"]),
    ("torch", 1, (3, 45, 38), 25000, ["depthwise_sep_conv0"]),
    ("torch", 3, (3, 37, 29), 25000, ["stem"]),
    ("torch", 3, (3, 37, 29), 9000, ["stem", *(f"depthwise_sep_conv{i}" for i in range(3))]),
    ("tf_same", 3, (3, 64, 48), 15000, ["depthwise_sep_conv1"]),
    ("keras", 3, (3, 64, 48), 15000, ["depthwise_sep_conv1"]),
]


@pytest.mark.kernels
@pytest.mark.parametrize("padding,in_ch,nhw,budget,expected", BLOCKED)
def test_one_or_three_blocked_layers_match_the_model(monkeypatch, padding, in_ch, nhw, budget,
                                                     expected, rng):  # fmt: skip
    """Blocks of several rows, the last one shorter, in a batch of three different images: an
    image, a row or a channel computed in the wrong place in a blocked layer changes the logits
    (float64: far above rounding)."""
    _set_block_budget(monkeypatch, budget)
    seen = _blocked_layers(monkeypatch)
    model = random_model(padding, classes=6, dtype=np.float64, in_ch=in_ch)
    n, h, w = nhw
    x = rng.uniform(-1, 1, (n, in_ch, h, w))
    out = model.fuse()(x)
    assert seen == expected
    _assert_matches(out, model.forward, x, np.float64)


@pytest.mark.kernels
def test_one_blocked_pair_matches_torch_in_float32(torch, monkeypatch, rng):
    _set_block_budget(monkeypatch, 12500)  # float64's 25000: half the bytes
    seen = _blocked_layers(monkeypatch)
    reference, model = _pair(torch, 0.25, 5, 1, "relu6", np.float32)
    x = rng.uniform(-1, 1, (3, 1, 45, 38)).astype(np.float32)
    out = model.fuse()(x)
    assert seen == ["depthwise_sep_conv0"]
    _assert_matches(out, partial(_torch_logits, torch, reference), x, np.float32)


@pytest.mark.kernels
@pytest.mark.parametrize("dtype", DTYPES)
def test_blocked_layers_in_uneven_slices_and_groups(monkeypatch, dtype, rng):
    """Five images over two threads in groups of two: slices of 2 and 3 images, groups of 2, 2
    and 1; a group of two blocks the stem and three pairs, a group of one the stem and one."""
    _set_block_budget(monkeypatch, 9000 * np.dtype(dtype).itemsize // 8)
    monkeypatch.setattr(engine_module, "GROUP", 2)
    monkeypatch.setattr(threads, "MIN_SLICE_ELEMENTS", 1)
    seen = _blocked_layers(monkeypatch)
    model = random_model("torch", classes=6, dtype=dtype)
    engine = engine_module.FusedMobileNetV1(model, runner=threads.Runner(2))
    groups = _spy_on_forwards(monkeypatch, engine)
    x = rng.uniform(-1, 1, (5, 3, 45, 38)).astype(dtype)
    out = engine(x)
    assert sorted(groups) == [1, 2, 2], groups
    pairs = [path for path in seen if path != "stem"]
    assert seen.count("stem") == 3 and len(pairs) == 2 * 3 + 1, seen
    _assert_matches(out, model.forward, x, dtype)


@pytest.mark.kernels
@pytest.mark.parametrize("dtype,n_threads", [(np.float32, 1), (np.float64, 2)])
def test_a_slice_runs_its_images_in_groups(torch, monkeypatch, dtype, n_threads, rng):
    """Groups of two images (the last one shorter), in one slice or in two: the same logits."""
    monkeypatch.setattr(engine_module, "GROUP", 2)
    monkeypatch.setattr(threads, "MIN_SLICE_ELEMENTS", 1)
    reference, model = _pair(torch, 0.25, 5, 3, "relu", dtype)
    engine = engine_module.FusedMobileNetV1(model, runner=threads.Runner(n_threads))
    seen = _spy_on_forwards(monkeypatch, engine)
    x = rng.standard_normal((5, 3, 35, 29)).astype(dtype)
    out = engine(x)
    assert max(seen) == 2 and sum(seen) == 5, seen
    _assert_matches(out, partial(_torch_logits, torch, reference), x, dtype)


def _spy_on_forwards(monkeypatch, engine) -> list[int]:
    """The number of images of every forward through the engine's layers, in order."""
    seen, forward = [], engine._forward

    def spy(x, *args):
        seen.append(len(x))
        return forward(x, *args)

    monkeypatch.setattr(engine, "_forward", spy)
    return seen


def _torch_twin(torch, model, dtype, alpha=0.25, in_ch=3, activation="relu6"):
    """The reference torch model holding ``model``'s weights and statistics, in eval mode."""
    twin = build_seed_mobilenet(torch, alpha, model.fc.weight.shape[0], in_ch, activation)
    twin = twin.double() if dtype == np.float64 else twin  # before loading: no rounding
    state = {k: torch.from_numpy(np.asarray(v)) for k, v in model.state_dict().items()}
    twin.load_state_dict(state)
    eps = {m.eps for _, m in model.named_modules() if isinstance(m, BatchNorm2d)}.pop()
    for m in twin.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eps = eps
    return twin.eval()


@pytest.mark.kernels
@pytest.mark.parametrize("dtype,n_threads,n,group", [(np.float32, 2, 9, 2), (np.float64, 1, 7, 4)])
def test_groups_and_slices_of_a_batch_match_the_model_and_torch(
    torch, monkeypatch, dtype, n_threads, n, group, rng
):
    """A batch in slices and groups (the last ones shorter), with a model whose logits depend on
    the image (batch-norm statistics measured on data): an image computed in the wrong place, or
    a group reading another's buffers, changes the logits."""
    monkeypatch.setattr(engine_module, "GROUP", group)
    monkeypatch.setattr(threads, "MIN_SLICE_ELEMENTS", 1)
    model = random_model("torch", activation="relu6", dtype=dtype)
    engine = engine_module.FusedMobileNetV1(model, runner=threads.Runner(n_threads))
    seen = _spy_on_forwards(monkeypatch, engine)
    x = rng.uniform(-1, 1, (n, 3, 61, 50)).astype(dtype)
    out = engine(x)
    assert max(seen) == group and sum(seen) == n, seen
    _assert_matches(out, model.forward, x, dtype)
    _assert_matches(out, partial(_torch_logits, torch, _torch_twin(torch, model, dtype)), x, dtype)


_MODELS: dict = {}


def _cached_model(padding, dtype):
    """``random_model(padding)`` built once per padding and dtype (the engine never changes it)."""
    if (padding, dtype) not in _MODELS:
        _MODELS[padding, dtype] = random_model(padding, classes=6, dtype=dtype)
    return _MODELS[padding, dtype]


@pytest.mark.kernels
@settings(max_examples=20)
@given(
    padding=st.sampled_from(["torch", "tf_same", "keras"]),
    dtype=st.sampled_from(DTYPES),
    n=st.integers(1, 6),
    hw=st.tuples(st.integers(31, 72), st.integers(31, 72)),  # keras needs 31 to keep a pixel
    group=st.integers(1, 4),
    n_threads=st.integers(1, 3),
    budget=st.sampled_from([None, 2000, 6000, 15000, 40000]),
    seed=st.integers(0, 2**16),
)
def test_any_batch_in_slices_groups_and_blocks_matches_the_model(
    padding, dtype, n, hw, group, n_threads, budget, seed
):
    """Any batch size, image size, group size, thread count and block budget together: the
    engine's logits are the model's (every slice and group boundary, block of rows and padding
    convention in combination)."""
    model = _cached_model(padding, dtype)
    x = np.random.default_rng(seed).uniform(-1, 1, (n, 3, *hw)).astype(dtype)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(threads, "MIN_SLICE_ELEMENTS", 1)
        patch.setattr(engine_module, "GROUP", group)
        if budget:
            _set_block_budget(patch, budget * np.dtype(dtype).itemsize // 8)
        out = engine_module.FusedMobileNetV1(model, runner=threads.Runner(n_threads))(x)
    _assert_matches(out, model.forward, x, dtype)


def _counted(fn, calls, kind):
    def counted(*args):
        calls[kind] += 1
        return fn(*args)

    return counted


@pytest.mark.kernels
def test_engine_matches_torch_at_224(torch, rng):
    reference, model = _pair(torch, 1.0, 1000, 3, "relu", np.float32)
    x = rng.standard_normal((1, 3, 224, 224)).astype(np.float32)
    _assert_matches(model.fuse()(x), partial(_torch_logits, torch, reference), x, np.float32)


@pytest.mark.kernels
def test_buffers_reused_across_shapes_and_results_not_aliased(torch, rng):
    reference, model = _pair(torch, 0.25, 6, 3, "relu", np.float64)
    engine = model.fuse()
    xa = rng.standard_normal((2, 3, 40, 40))
    xb = rng.standard_normal((1, 3, 24, 30))
    first = engine(xa)
    kept = first.copy()
    second = engine(xb)  # another shape: its own buffers
    third = engine(xa[::-1].copy())  # the first shape again: reused buffers, new values
    np.testing.assert_array_equal(first, kept)  # later calls did not overwrite a returned array
    _assert_matches(first, partial(_torch_logits, torch, reference), xa, np.float64)
    _assert_matches(second, partial(_torch_logits, torch, reference), xb, np.float64)
    np.testing.assert_allclose(third, kept[::-1], **TOL[np.float64])
    # float32 input runs in float32 and agrees with the float64 run
    x32 = engine(xa.astype(np.float32))
    assert x32.dtype == np.float32
    np.testing.assert_allclose(x32, kept, rtol=1e-4, atol=1e-5)


@pytest.mark.kernels
def test_non_contiguous_input(torch, rng):
    reference, model = _pair(torch, 0.25, 3, 3, "relu", np.float64)
    x = rng.standard_normal((2, 3, 40, 60))[:, :, :, ::2]  # strided view (2, 3, 40, 30)
    reference_logits = partial(_torch_logits, torch, reference)
    _assert_matches(model.fuse()(x), lambda v: reference_logits(np.ascontiguousarray(v)), x,
                    np.float64)  # fmt: skip


@pytest.mark.kernels
def test_replaced_classifier_is_what_the_engine_computes(torch, rng):
    """m.fc = Linear(K, 3): the engine walks the model's current modules."""
    reference, model = _pair(torch, 0.25, 10, 3, "relu", np.float64)
    reference.fc = torch.nn.Linear(256, 3).double()
    model.fc = Linear(256, 3, dtype=np.float64)
    model.fc.weight.data[...] = reference.fc.weight.detach().numpy()
    model.fc.bias.data[...] = reference.fc.bias.detach().numpy()
    x = rng.standard_normal((2, 3, 36, 36))
    out = model.fuse()(x)
    assert out.shape == (2, 3)
    _assert_matches(out, partial(_torch_logits, torch, reference), x, np.float64)


# ---------------------------------------------------------------- the engine vs the module path


@pytest.mark.kernels
@pytest.mark.parametrize(
    "alpha,activation,in_ch,dtype,conv,shape",
    [
        (0.25, "relu", 3, np.float64, "separable", (2, 40, 36)),
        (0.5, "relu6", 1, np.float32, "separable", (1, 33, 33)),
        (0.25, "relu", 3, np.float64, "full", (2, 40, 36)),
        (0.125, "relu6", 1, np.float32, "full", (3, 17, 35)),
    ],
)
def test_fuse_matches_model_eval_forward(alpha, activation, in_ch, dtype, conv, shape, rng):
    model = _measured_model(alpha, 6, in_ch, activation, dtype, conv=conv)
    x = rng.standard_normal((shape[0], in_ch, *shape[1:])).astype(dtype)
    out = model.fuse()(x)
    assert out.dtype == dtype
    _assert_matches(out, model.eval().forward, x, dtype)


@pytest.mark.kernels
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_max_pooling_and_headless_models(dtype, rng):
    """global_pool="max", num_classes=0 and reset_classifier: what the model's forward returns."""
    x = rng.standard_normal((3, 3, 40, 36)).astype(dtype)
    for kwargs in (dict(global_pool="max"), dict(num_classes=0), dict(global_pool="max",
                                                                     num_classes=0)):  # fmt: skip
        classes = kwargs.get("num_classes", 6)
        model = _measured_model(classes=classes, dtype=dtype, global_pool=kwargs.get("global_pool"))
        engine = model.fuse()
        out = engine(x)
        assert out.shape == model.forward(x).shape and out.dtype == dtype
        _assert_matches(out, model.eval().forward, x, dtype)
        assert engine.head.pool == kwargs.get("global_pool", "avg")
        assert engine.num_classes == classes
    model.reset_classifier(4, seed=1)
    _assert_matches(model.fuse()(x), model.forward, x, dtype)


@pytest.mark.kernels
def test_blocks_in_a_sequential_are_walked_in_order(rng):
    model = _measured_model()
    blocks = list(model.depthwise_sep_conv6)
    model.depthwise_sep_conv6 = Sequential(*blocks[:2])  # three blocks fewer, as a Sequential
    x = rng.standard_normal((2, 3, 40, 40))
    _assert_matches(model.fuse()(x), model.forward, x, np.float64)
    assert [layer.path for layer in model.fuse().layers[13:17]] == [
        "depthwise_sep_conv6.0", "depthwise_sep_conv6.0", "depthwise_sep_conv6.1",
        "depthwise_sep_conv6.1",
    ]  # fmt: skip


def test_the_engine_splits_over_the_models_runner(rng, monkeypatch):
    model = _measured_model()
    assert model.fuse().runner is model.runner
    serial = threads.Runner(1)
    engine = model.fuse()
    engine.runner = serial
    monkeypatch.setattr(threads, "MIN_SLICE_ELEMENTS", 1)
    calls = []
    monkeypatch.setattr(serial, "session", lambda: calls.append(1))  # never entered at 1 thread
    x = rng.standard_normal((4, 3, 32, 32))
    _assert_matches(engine(x), model.forward, x, np.float64)
    assert calls == []


def test_full_conv_im2col_is_the_convolution(rng):
    """The NHWC im2col of the full-conv layers, then a GEMM, against a direct 3x3 sum."""
    x = rng.standard_normal((2, 5, 7, 3))
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    wt = rng.standard_normal((4, 3, 3, 3))  # (K, C, 3, 3)
    cols = np.full((2, 3, 4, 27), np.nan)
    im2col3x3_padded(xp, 2, cols)
    y = cols @ wt.transpose(2, 3, 1, 0).reshape(27, 4)  # the engine's weight layout
    for oh in range(3):
        for ow in range(4):
            patch = xp[:, 2 * oh : 2 * oh + 3, 2 * ow : 2 * ow + 3]  # (N, 3, 3, C)
            direct = np.einsum("nhwc,kchw->nk", patch, wt)
            np.testing.assert_allclose(y[:, oh, ow], direct, rtol=1e-12, atol=1e-12)


@pytest.mark.kernels
def test_each_block_keeps_its_own_activation(rng):
    """A ReLU6 swapped into one block of a ReLU model is what the engine applies there."""
    model = _measured_model(activation="relu")
    model.depthwise_sep_conv3.relu1 = ReLU6()
    for _, m in model.named_modules():  # large weights, so that the clamp at 6 matters
        if isinstance(m, BatchNorm2d):
            m.weight.data *= 8
    x = rng.standard_normal((2, 3, 40, 40))
    _assert_matches(model.fuse()(x), model.forward, x, np.float64)
    model.depthwise_sep_conv3.relu1 = ReLU()
    relu_everywhere = model.forward(x)
    assert np.abs(relu_everywhere - model.forward(x)).max() == 0
    model.depthwise_sep_conv3.relu1 = ReLU6()
    assert np.abs(model.fuse()(x) - relu_everywhere).max() > 1e-6  # the clamp changed the logits


def test_unknown_module_is_named_with_its_path_and_type(rng):
    model = _measured_model()
    inner = model.depthwise_sep_conv6[2]
    model.depthwise_sep_conv6 = ModuleList([*list(model.depthwise_sep_conv6)[:2],
                                            Residual(inner)])  # fmt: skip
    with pytest.raises(UnsupportedModuleError, match=r"depthwise_sep_conv6\.2 \(Residual\)"):
        model.fuse()
    model = _measured_model()
    model.depthwise_sep_conv2.relu0 = Dropout(0.0)
    with pytest.raises(UnsupportedModuleError, match=r"depthwise_sep_conv2\.relu0 \(Dropout\)"):
        model.fuse()
    model = _measured_model()
    model.depthwise_sep_conv4.dwconv = Conv2d(64, 64, 5, padding=2, groups=64, bias=False)
    with pytest.raises(TypeError, match=r"depthwise_sep_conv4\.dwconv.*3x3"):
        model.fuse()


def _with_bias(conv, rng):
    """A copy of ``conv`` with a bias: its weights and a random (N(0, 1)) bias per channel."""
    new = Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                 groups=conv.groups, bias=True, dtype=conv.weight.data.dtype)  # fmt: skip
    new.weight.data[...] = conv.weight.data
    new.bias.data[...] = rng.standard_normal(conv.out_channels)
    return new


@pytest.mark.kernels
@pytest.mark.parametrize("dtype", DTYPES)
def test_conv_biases_are_folded_with_the_batch_norm(dtype, rng):
    """Convs with a bias (a stem, a depthwise and a pointwise one): bn(conv(x) + c) is
    conv(x) * scale + (shift + scale * c) in the engine too."""
    model = _measured_model(dtype=dtype)
    for block, name in (("first_conv", "conv"), ("depthwise_sep_conv1", "dwconv"),
                        ("depthwise_sep_conv2", "pwconv")):  # fmt: skip
        parent = getattr(model, block)
        setattr(parent, name, _with_bias(getattr(parent, name), rng))
    x = rng.uniform(-1, 1, (2, 3, 40, 36)).astype(dtype)
    bias = model.depthwise_sep_conv2.pwconv.bias.data
    with_bias, kept = model.forward(x), bias.copy()
    bias[...] = 0
    assert np.abs(model.forward(x) - with_bias).max() > 0.01 * np.abs(with_bias).max()
    bias[...] = kept  # the biases change the logits, and the engine adds them as the model does
    _assert_matches(model.fuse()(x), model.forward, x, dtype)


@pytest.mark.parametrize(
    "changes,words",
    [
        ({"avgpool": lambda: AdaptiveAvgPool2d(2)}, r"avgpool \(AdaptiveAvgPool2d\).*output_size"),
        ({"avgpool": Identity, "fc": Identity}, r"MobileNetV1 has no global pooling"),
        ({"depthwise_sep_conv3.bn1": Identity},
         r"depthwise_sep_conv3\.pwconv \(Conv2d\).*followed by a BatchNorm2d"),
        ({"depthwise_sep_conv3.pwconv": lambda: Conv2d(64, 64, 1, stride=2, bias=False)},
         r"depthwise_sep_conv3\.pwconv \(Conv2d\).*stride 1"),
    ],
)  # fmt: skip
def test_a_model_the_engine_cannot_compute_is_refused_by_name(changes, words):
    """What the engine cannot compute exactly raises UnsupportedModuleError (a TypeError) naming
    the module: never a wrong number."""
    model = _measured_model()
    for path, module in changes.items():
        *parents, name = path.split(".")
        parent = model
        for part in parents:
            parent = getattr(parent, part)
        setattr(parent, name, module())
    with pytest.raises(UnsupportedModuleError, match=words) as info:
        model.fuse()
    assert str(info.value).startswith("FusedMobileNetV1") and len(str(info.value)) < 600


def test_fuse_is_a_snapshot_of_the_current_weights(rng):
    model = _measured_model()
    x = rng.standard_normal((1, 3, 32, 32))
    engine = model.fuse()
    before = engine(x)
    model.fc.bias.data += 1.0
    np.testing.assert_array_equal(engine(x), before)
    np.testing.assert_allclose(model.fuse()(x), before + 1.0, **TOL[np.float64])


@pytest.mark.kernels
def test_more_input_shapes_than_the_engine_keeps_buffers_for(rng):
    """Buffers of the least recently used shape are dropped: every call, a shape seen again
    after others pushed it out included, returns the model's logits."""
    model = _measured_model()
    engine = model.fuse()
    shapes = [(2, 3, 24 + k, 20) for k in range(engine_module._MAX_PLANS + 2)]
    inputs = [rng.uniform(-1, 1, shape) for shape in shapes]
    outputs = [engine(x) for x in inputs]
    outputs.append(engine(inputs[0]))
    for x, out in zip([*inputs, inputs[0]], outputs):
        _assert_matches(out, model.forward, x, np.float64)


@pytest.mark.kernels
@pytest.mark.parametrize("pool", ["avg", "max"])
def test_headless_features_are_new_arrays(pool, rng):
    """The pooled features a headless model returns are not the engine's buffer: the next call
    (same shape, other images) does not change them."""
    model = _measured_model(classes=0, global_pool=pool)
    engine = model.fuse()
    x, y = rng.uniform(-1, 1, (2, 2, 3, 32, 36))
    first = engine(x)
    kept = first.copy()
    _assert_matches(engine(y), model.forward, y, np.float64)
    np.testing.assert_array_equal(first, kept)
    _assert_matches(first, model.forward, x, np.float64)


@pytest.mark.kernels
def test_a_batch_the_runner_declines_to_split_runs_as_one_slice(monkeypatch, rng):
    """When BLAS does not take a thread limit the runner's session hands back the serial runner
    (``threads.Runner.session``): the batch runs as one slice, in groups, and gives the same
    logits."""
    monkeypatch.setattr(threads, "MIN_SLICE_ELEMENTS", 1)
    monkeypatch.setattr(engine_module, "GROUP", 2)
    model = _measured_model()
    engine = engine_module.FusedMobileNetV1(model, runner=threads.Runner(2))
    monkeypatch.setattr(engine.runner, "session", lambda: nullcontext(threads.SERIAL))
    seen = _spy_on_forwards(monkeypatch, engine)
    x = rng.uniform(-1, 1, (5, 3, 33, 30))
    out = engine(x)
    assert seen == [2, 2, 1]
    _assert_matches(out, model.forward, x, np.float64)


# ---------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def engine():
    return MobileNetV1(0.25, 3, 3, seed=0).fuse()


@pytest.mark.kernels
def test_profile_gives_the_same_logits(engine, rng):
    x = rng.standard_normal((2, 3, 32, 32)).astype(np.float32)
    expected = engine(x)
    times = engine.profile(x)
    # every GEMM before a depthwise conv has its epilogue applied by that conv
    assert set(times) == {
        "first conv", "bias+act+depthwise", "pointwise GEMM", "bias+act+pool", "linear",
    }  # fmt: skip
    assert all(t >= 0 for t in times.values())
    np.testing.assert_array_equal(engine(x), expected)


def test_engine_reports_its_shape(engine):
    assert (engine.in_channels, engine.num_classes, engine.num_features) == (3, 3, 256)
    assert [layer.kind for layer in engine.layers[:3]] == ["stem", "depthwise", "pointwise"]
    assert engine.layers[1].path == "depthwise_sep_conv0"


@pytest.mark.parametrize(
    "x,exc,words",
    [
        ([[[[1.0]]]], TypeError, ["x", "numpy array"]),
        (np.ones((1, 3, 8, 8), np.int64), TypeError, ["x", "int64"]),
        (np.ones((1, 3, 8, 8), np.complex64), TypeError, ["x", "complex64"]),
        (np.ones((3, 8, 8), np.float32), ValueError, ["x", "4-D", "3-D"]),
        (np.ones((1, 4, 8, 8), np.float32), ValueError, ["3 channels", "4 channels"]),
        (np.ones((1, 8, 8, 3), np.float32), ValueError, ["NCHW", "(1, 8, 8, 3)"]),
        (np.ones((0, 3, 8, 8), np.float32), ValueError, ["N, H and W >= 1"]),
        (np.ones((1, 3, 0, 8), np.float32), ValueError, ["N, H and W >= 1"]),
    ],
)
def test_bad_input_is_rejected_clearly(engine, x, exc, words):
    with pytest.raises(exc) as info:
        engine(x)
    message = str(info.value)
    assert message.startswith("FusedMobileNetV1")
    for word in words:
        assert word in message


@pytest.mark.parametrize("shape", [(1, 3, 33, 29), (2, 3, 30, 64)])
def test_an_input_too_small_for_keras_padding_is_rejected_as_the_model_rejects_it(shape):
    # keras pads a stride-2 depthwise conv by (0, 1): H -> floor(H / 2) five times, so an input
    # side under 31 leaves a 0-pixel map; the model refuses it, and so must its engine
    model = random_model("keras", dtype=np.float64)
    x = np.zeros(shape)
    with pytest.raises(ValueError, match="too small"):
        model(x)
    with pytest.raises(ValueError) as info:
        model.fuse()(x)
    message = str(info.value)
    assert message.startswith("FusedMobileNetV1") and "too small" in message
    assert str(shape) in message and (" 0x" in message or "x0 output" in message)
    assert len(message) < 400


# ---------------------------------------------------------------- thread control


def test_blas_threads_context_sets_and_restores():
    before = threads.blas_num_threads()
    assert before is not None and before >= 1  # threadpoolctl is installed here
    with threads.blas_threads(1):
        assert threads.blas_num_threads() == 1
    assert threads.blas_num_threads() == before
    assert "BLAS" in threads.describe() and "Numba kernels: serial" in threads.describe()


def test_thread_control_without_threadpoolctl_warns_and_does_nothing(monkeypatch):
    monkeypatch.setattr(threads, "_threadpoolctl", lambda: None)
    assert threads.blas_info() == [] and threads.blas_num_threads() is None
    with pytest.warns(RuntimeWarning, match="OPENBLAS_NUM_THREADS"):
        with threads.blas_threads(1):
            pass
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert threads.set_blas_threads(1) is False
    assert any("threadpoolctl is not installed" in str(w.message) for w in caught)
    assert "threadpoolctl not installed" in threads.describe()


@pytest.mark.parametrize("n", [0, -1, 1.5, True, "2"])
def test_thread_count_must_be_a_positive_int(n):
    with pytest.raises(ValueError, match="n must be an int >= 1"):
        with threads.blas_threads(n):
            pass
