"""One image through the fused engine on several threads (``npmobilenet.fast.bands``).

The references are independent of the band path: the model's own module-by-module forward
(``model.eval(); model(x)``), and NumPy slicing for the fused epilogue + depthwise kernel. The
models have batch-norm statistics measured on data (``test_onnx.random_model``) and the
comparisons assert that the logits depend on the image (``test_fast._assert_matches``), so a
band computed from the wrong rows, or written to the wrong place, cannot pass.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_fast import _assert_matches
from test_onnx import random_model

from npmobilenet import threads
from npmobilenet.fast import bands
from npmobilenet.kernels.fused_conv3x3 import (
    bias_clamp_depthwise3x3,
    bias_clamp_depthwise3x3_naive,
    conv_out_size,
)


@pytest.mark.kernels
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("size", [(7, 9), (8, 8), (1, 1), (2, 3)])
def test_bias_clamp_depthwise_matches_naive_in_any_row_bands(dtype, stride, size, rng):
    h, w = size
    y = rng.standard_normal((2, h, w, 5)).astype(dtype)
    b0, b = rng.standard_normal(5).astype(dtype), rng.standard_normal(5).astype(dtype)
    wt = rng.standard_normal((3, 3, 5)).astype(dtype)
    oh, ow = conv_out_size(h, stride), conv_out_size(w, stride)
    clamps = (dtype(0), dtype(6), wt, b, stride, dtype(-1), dtype(np.inf))
    expected = bias_clamp_depthwise3x3_naive(y, b0, *clamps)
    for cuts in ([0, oh], [0, oh // 2, oh], [0, *range(1, oh), oh]):
        out = np.full((2, oh, ow, 5), np.nan, dtype)
        for r0, r1 in zip(cuts, cuts[1:]):  # each band with a fresh ring of garbage
            ring = np.full((3, w + 2, 5), np.nan, dtype)
            bias_clamp_depthwise3x3(y, b0, *clamps, ring, out, r0, r1)
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def _fused(model, runner):
    from npmobilenet.fast import FusedMobileNetV1

    return FusedMobileNetV1(model, runner=runner)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_threads", [2, 3])
@pytest.mark.parametrize("size", [(224, 224), (225, 209)])
def test_one_image_in_bands_matches_the_model(dtype, n_threads, size, rng):
    """Bands of unequal heights (odd sizes, three threads on any machine) give the model's
    logits; the plan is one that runs in bands."""
    model = random_model("torch", "relu6", 6, 0, dtype, alpha=0.25)
    engine = _fused(model, threads.Runner(n_threads))
    x = rng.uniform(-1, 1, (1, 3, *size)).astype(dtype)
    assert engine._plan(x.shape, x.dtype)[0]["bands"]
    _assert_matches(engine(x), model.forward, x, dtype)
    _assert_matches(engine(x), model.forward, x, dtype)  # buffers reused


def test_bands_give_the_layer_by_layer_result(rng):
    """Two threads in bands and one thread layer by layer compute the same sums (the GEMMs
    perhaps blocked differently): the logits agree to float64 rounding."""
    model = random_model("torch", "relu", 6, 0, np.float64, alpha=0.25)
    x = rng.uniform(-1, 1, (1, 3, 224, 224))
    banded = _fused(model, threads.Runner(2))(x)
    serial = _fused(model, threads.Runner(1))(x)
    np.testing.assert_allclose(banded, serial, rtol=1e-12, atol=1e-12)
    other = _fused(model, threads.Runner(2))(np.ascontiguousarray(x[:, :, ::-1]))
    assert np.abs(other - banded).max() > 1e-3  # the logits depend on the image


def test_profile_of_one_image_in_bands(rng):
    """The profile of a banded forward times the steps it knows and gives the same logits."""
    model = random_model("torch", "relu6", 6, 0, np.float32, alpha=0.25)
    engine = _fused(model, threads.Runner(2))
    x = rng.uniform(-1, 1, (1, 3, 224, 224)).astype(np.float32)
    expected = engine(x)
    times = engine.profile(x)
    assert set(times) == {"first conv", "depthwise", "pointwise GEMM", "bias+act+pool", "linear"}
    np.testing.assert_array_equal(engine(x), expected)


def test_plans_that_do_not_fit_bands_run_layer_by_layer(rng):
    """Other paddings, full 3x3 convs and max pooling take the layer-by-layer path and still
    match the model."""
    for kw, padding in (({}, "tf_same"), ({"conv": "full"}, "torch"),
                        ({"global_pool": "max"}, "torch")):  # fmt: skip
        model = random_model(padding, "relu", 6, 0, np.float64, alpha=0.25, **kw)
        engine = _fused(model, threads.Runner(2))
        x = rng.uniform(-1, 1, (1, 3, 96, 96))
        plan = engine._plan(x.shape, x.dtype)
        if kw.get("global_pool") != "max":
            assert not bands.runs_in_bands(engine.layers, plan)
        _assert_matches(engine(x), model.forward, x, np.float64)


def test_blas_threads_restored_after_a_banded_forward(rng):
    model = random_model("torch", "relu6", 6, 0, np.float32, alpha=0.25)
    x = rng.uniform(-1, 1, (1, 3, 224, 224)).astype(np.float32)
    before = threads.blas_num_threads()
    _fused(model, threads.Runner(2))(x)
    assert threads.blas_num_threads() == before


def test_one_image_inside_another_map_runs_without_waiting_forever(rng):
    """Called from inside a map that holds the runner's threads, the bands run one after the
    other in the calling thread (no barrier waits for a thread that never comes), and give the
    model's logits."""
    model = random_model("torch", "relu6", 6, 0, np.float64, alpha=0.25)
    runner = threads.Runner(2)
    engine = _fused(model, runner)
    x = rng.uniform(-1, 1, (1, 3, 224, 224))
    parts = runner.map(lambda lo, hi: engine(x), 2, threads.MIN_SLICE_ELEMENTS)
    assert len(parts) == 2
    for logits in parts:
        _assert_matches(logits, model.forward, x, np.float64)


def test_a_failing_band_raises_and_the_next_call_works(rng, monkeypatch):
    """An exception in one thread's band is raised by the call (the other thread stops waiting
    for it at the barrier), and the engine works afterwards."""
    model = random_model("torch", "relu6", 6, 0, np.float64, alpha=0.25)
    engine = _fused(model, threads.Runner(2))
    x = rng.uniform(-1, 1, (1, 3, 224, 224))
    calls = {"n": 0}
    real = bands.bias_clamp_depthwise3x3

    def fail_once_in_a_worker(*args):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("band failed")
        return real(*args)

    monkeypatch.setattr(bands, "bias_clamp_depthwise3x3", fail_once_in_a_worker)
    with pytest.raises(RuntimeError, match="band failed"):
        engine(x)
    monkeypatch.setattr(bands, "bias_clamp_depthwise3x3", real)
    _assert_matches(engine(x), model.forward, x, np.float64)
