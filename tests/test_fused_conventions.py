"""The fused engine against the model for every padding convention and activation, both
conv kinds, odd and tiny sizes (float64, so any wrong border shows far above rounding). Every
model has batch-norm statistics measured on data and every comparison is ``assert_matches``, which
first checks that the model's logits tell the images apart."""

from __future__ import annotations

import numpy as np
import pytest
from logit_checks import assert_matches
from test_onnx import random_model

from npmobilenet import threads
from npmobilenet.fast import FusedMobileNetV1
from npmobilenet.fast import engine as engine_module

pytestmark = pytest.mark.kernels


@pytest.mark.parametrize("padding", ["torch", "tf_same", "keras"])
@pytest.mark.parametrize("activation", ["relu", "relu6"])
def test_engine_matches_the_model(padding, activation):
    model = random_model(padding, activation=activation, dtype=np.float64)
    engine = model.fuse()
    rng = np.random.default_rng(1)
    for shape in ((1, 3, 225, 201), (3, 3, 67, 45), (2, 3, 32, 33), (1, 3, 31, 40)):
        x = rng.uniform(-1, 1, shape)
        assert_matches(engine(x), model, x, np.float64)


@pytest.mark.parametrize("padding", ["tf_same", "keras"])
def test_engine_runs_the_full_conv_baseline(padding):
    model = random_model(padding, classes=5, dtype=np.float64, conv="full")
    x = np.random.default_rng(2).uniform(-1, 1, (2, 3, 45, 38))
    assert_matches(model.fuse()(x), model, x, np.float64)


def test_a_stem_padding_per_size_is_resolved_per_input_shape():
    """tf_same pads an even side 0/1 and an odd side 1/1: one engine, both parities."""
    model = random_model("tf_same", dtype=np.float64)
    engine = model.fuse()
    for h, w in ((64, 64), (65, 63), (64, 63)):
        x = np.random.default_rng(h + w).uniform(-1, 1, (2, 3, h, w))
        assert_matches(engine(x), model, x, np.float64)


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
        assert_matches(engine(x), model, x, dtype)
