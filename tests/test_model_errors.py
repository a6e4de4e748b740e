"""Bad input to MobileNetV1 (issue 3, section 7): each a clear TypeError/ValueError naming the
function, the argument, what was expected and what was received, raised before any op runs."""

from __future__ import annotations

import numpy as np
import pytest

from npmobilenet.models import MobileNetV1


@pytest.fixture(scope="module")
def tiny():
    return MobileNetV1(alpha=0.25, num_classes=5, seed=0)


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(alpha=0.0), ValueError, r"MobileNetV1: alpha must be > 0.0, got 0.0"),
        (dict(alpha=-0.5), ValueError, r"MobileNetV1: alpha must be > 0.0, got -0.5"),
        (dict(alpha=float("nan")), ValueError, r"MobileNetV1: alpha must be finite"),
        (dict(alpha="1"), TypeError, r"MobileNetV1: alpha must be a real number, got str"),
        (dict(alpha=0.03), ValueError, r"int\(32 \* alpha\) = 0 channels; alpha must be at least"),
        (dict(num_classes=-1), ValueError, r"MobileNetV1: num_classes must be >= 0, got -1"),
        (dict(global_pool="mean"), ValueError, r"global_pool must be one of \['avg', 'max'\]"),
        (dict(num_classes=2.0), TypeError, r"MobileNetV1: num_classes must be an int, got float"),
        (dict(num_classes=True), TypeError, r"MobileNetV1: num_classes must be an int, got bool"),
        (dict(in_channels=0), ValueError, r"MobileNetV1: in_channels must be >= 1, got 0"),
        (dict(activation="gelu"), ValueError, r"activation must be one of \['relu', 'relu6'\]"),
        (dict(conv="dw"), ValueError, r"conv must be one of \['full', 'separable'\], got 'dw'"),
        (dict(dtype=np.int32), TypeError, r"MobileNetV1: dtype must be float32 or float64"),
        (dict(dtype=np.float16), TypeError, r"MobileNetV1: dtype must be float32 or float64"),
        (dict(dropout=1.0), ValueError, r"MobileNetV1: dropout must be < 1.0, got 1.0"),
        (dict(dropout=-0.1), ValueError, r"MobileNetV1: dropout must be >= 0.0, got -0.1"),
        (dict(seed=-1), ValueError, r"MobileNetV1: seed must be >= 0, got -1"),
        (dict(seed="a"), TypeError, r"MobileNetV1: seed must be an int, got str"),
    ],
)
def test_bad_constructor_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        MobileNetV1(**kwargs)


def test_smallest_alpha_is_accepted():
    m = MobileNetV1(alpha=1 / 32, num_classes=3)
    assert m.first_conv.conv.weight.shape == (1, 3, 3, 3)
    assert m.fc.weight.shape == (3, 32)


@pytest.mark.parametrize(
    "x,exc,match",
    [
        (np.zeros((2, 1, 32, 32), np.float32), ValueError,
         r"forward: x has 1 channels \(shape \(2, 1, 32, 32\)\) but the model was built with"
         r" in_channels=3"),
        (np.zeros((3, 32, 32), np.float32), ValueError,
         r"forward: x must be 4-D \(N, C, H, W\), got 3-D shape \(3, 32, 32\); for one image"
         r" use x\[None\]"),
        (np.zeros((2, 3, 32), np.float32), ValueError, r"x must be 4-D \(N, C, H, W\), got 3-D"),
        (np.zeros((2, 3, 32, 32), np.uint8), TypeError,
         r"forward: x must be a float32 or float64 numpy array of shape \(N, C, H, W\), got"
         r" array of shape \(2, 3, 32, 32\) and dtype uint8"),
        (np.zeros((2, 3, 32, 32), np.int64), TypeError, r"got array .* dtype int64"),
        ([[[[0.0]]]], TypeError, r"forward: x must be a float32 or float64 numpy array"),
        (np.zeros((2, 3, 32, 32), np.float64), TypeError,
         r"forward: x has dtype float64 but the model's parameters are float32"),
        (np.zeros((2, 3, 0, 32), np.float32), ValueError,
         r"forward: x must hold at least one image of at least 1x1 pixels .* any H, W >= 1"),
        (np.zeros((0, 3, 32, 32), np.float32), ValueError, r"at least one image"),
        (np.zeros((1, 3, 32, 32), np.float32), ValueError,
         r"forward: in training mode batch norm needs more than one value per channel, but x of"
         r" shape \(1, 3, 32, 32\) leaves one value after the five stride-2 stages \(1x1 map"),
    ],
)  # fmt: skip
def test_bad_forward_input(tiny, x, exc, match):
    tiny.train()
    with pytest.raises(exc, match=match):
        tiny.forward(x)


def test_trace_and_predict_proba_validate_too(tiny):
    with pytest.raises(ValueError, match=r"MobileNetV1.trace: x must be 4-D"):
        tiny.trace(np.zeros((3, 32, 32), np.float32))
    with pytest.raises(TypeError, match=r"MobileNetV1.forward: x must be a float32 or float64"):
        tiny.predict_proba(np.zeros((2, 3, 32, 32), np.int32))


def test_backward_before_forward():
    m = MobileNetV1(alpha=0.25, num_classes=5)
    with pytest.raises(RuntimeError, match=r"MobileNetV1.backward: backward called before forward"):
        m.backward(np.zeros((2, 5), np.float32))


@pytest.mark.kernels
def test_bad_backward_input():
    m = MobileNetV1(alpha=0.25, num_classes=5, seed=0)
    m.forward(np.zeros((2, 3, 32, 32), np.float32))
    with pytest.raises(ValueError, match=r"backward: dout has shape \(2, 4\) but the forward"):
        m.backward(np.zeros((2, 4), np.float32))
    with pytest.raises(TypeError, match=r"backward: dout has dtype float64 but the forward ran"):
        m.backward(np.zeros((2, 5), np.float64))
    with pytest.raises(TypeError, match=r"backward: dout must have dtype float32 or float64"):
        m.backward(np.zeros((2, 5), np.int64))
    for bad in ("no", 0, None):
        with pytest.raises(TypeError, match=r"MobileNetV1.backward: input_grad must be True or"):
            m.backward(np.ones((2, 5), np.float32), input_grad=bad)
    with pytest.raises(TypeError, match=r"Conv2d.backward: input_grad must be True or False"):
        m.first_conv.conv.backward(np.ones((2, 8, 16, 16), np.float32), input_grad=1)
    dx = m.backward(np.ones((2, 5), np.float32))  # the checks consumed nothing
    assert dx.shape == (2, 3, 32, 32)
    with pytest.raises(RuntimeError, match="MobileNetV1.backward: backward called twice after"):
        m.backward(np.ones((2, 5), np.float32))  # the caches were used up
    with pytest.raises(RuntimeError, match="backward called before forward"):
        MobileNetV1(alpha=0.25, num_classes=5, seed=0).backward(np.ones((2, 5), np.float32))


@pytest.mark.kernels
def test_batch_of_one_is_fine_in_eval_mode_and_above_32_pixels():
    m = MobileNetV1(alpha=0.25, num_classes=5, seed=0)
    assert m.eval().forward(np.zeros((1, 3, 32, 32), np.float32)).shape == (1, 5)
    assert m.train().forward(np.zeros((1, 3, 33, 33), np.float32)).shape == (1, 5)  # 2x2 map
    assert m.eval().forward(np.zeros((1, 3, 1, 1), np.float32)).shape == (1, 5)  # H, W >= 1


@pytest.mark.parametrize("attr,value,match", [
    ("runner", 4, r"MobileNetV1.runner: expected an npmobilenet.threads.Runner .* got int 4"),
    ("runner", None, "MobileNetV1.runner: expected an npmobilenet.threads.Runner"),
    ("recompute_block_outputs", "no", "recompute_block_outputs must be True or False, got str"),
])  # fmt: skip
def test_runner_and_recompute_are_checked_where_they_are_set(attr, value, match):
    """A wrong runner failed at the next forward with a bare AttributeError, and the string
    'no' turned recomputation on."""
    from npmobilenet import threads

    m = MobileNetV1(alpha=0.25, num_classes=3, seed=0)
    runner = m.runner
    with pytest.raises(TypeError, match=match):
        setattr(m, attr, value)
    assert m.runner is runner and m.recompute_block_outputs is False
    m.runner, m.recompute_block_outputs = threads.Runner(1), np.True_
    assert m.runner.threads == 1 and m.recompute_block_outputs is True
