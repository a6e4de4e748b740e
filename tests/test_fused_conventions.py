"""The fused engine against the model for every padding convention and activation, both
conv kinds, odd and tiny sizes (float64, so any wrong border shows far above rounding)."""

from __future__ import annotations

import numpy as np
import pytest
from test_onnx import random_model

from npmobilenet import threads
from npmobilenet.fast import FusedMobileNetV1
from npmobilenet.fast import engine as engine_module
from npmobilenet.models import MobileNetV1

pytestmark = pytest.mark.kernels


@pytest.mark.parametrize("padding", ["torch", "tf_same", "keras"])
@pytest.mark.parametrize("activation", ["relu", "relu6"])
def test_engine_matches_the_model(padding, activation):
    model = random_model(padding, activation=activation, dtype=np.float64)
    engine = model.fuse()
    rng = np.random.default_rng(1)
    for shape in ((1, 3, 225, 201), (3, 3, 67, 45), (2, 3, 32, 33), (1, 3, 31, 40)):
        x = rng.uniform(-1, 1, shape)
        ref = model(x)
        assert np.abs(engine(x) - ref).max() <= 1e-10 * max(1.0, np.abs(ref).max()), shape


@pytest.mark.parametrize("padding", ["tf_same", "keras"])
def test_engine_runs_the_full_conv_baseline(padding):
    model = MobileNetV1(alpha=0.25, num_classes=5, conv="full", padding=padding, seed=0,
                        dtype=np.float64).eval()  # fmt: skip
    x = np.random.default_rng(2).uniform(-1, 1, (2, 3, 45, 38))
    np.testing.assert_allclose(model.fuse()(x), model(x), rtol=1e-10, atol=1e-12)


def test_a_stem_padding_per_size_is_resolved_per_input_shape():
    """tf_same pads an even side 0/1 and an odd side 1/1: one engine, both parities."""
    model = random_model("tf_same", dtype=np.float64)
    engine = model.fuse()
    for h, w in ((64, 64), (65, 63), (64, 63)):
        x = np.random.default_rng(h + w).uniform(-1, 1, (2, 3, h, w))
        np.testing.assert_allclose(engine(x), model(x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("padding", ["torch", "tf_same", "keras"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_split_batch_matches_the_model(monkeypatch, padding, dtype):
    """A batch split over two threads (every slice worth splitting), each slice in groups of
    two images: odd sizes, each convention's borders, both dtypes."""
    monkeypatch.setattr(threads, "MIN_SLICE_ELEMENTS", 1)
    monkeypatch.setattr(engine_module, "GROUP", 2)
    model = random_model(padding, dtype=dtype)
    engine = FusedMobileNetV1(model, runner=threads.Runner(2))
    rng = np.random.default_rng(3)
    for shape in ((5, 3, 67, 45), (4, 3, 32, 33)):
        x = rng.uniform(-1, 1, shape).astype(dtype)
        ref = model(x)
        assert np.abs(ref - ref[::-1]).max() > 0.01  # the images' logits differ
        tol = 1e-10 if dtype == np.float64 else 1e-5
        assert np.abs(engine(x) - ref).max() <= tol * max(1.0, np.abs(ref).max()), shape
