"""Bad conv2d inputs raise TypeError/ValueError naming the argument, before any kernel runs."""

from __future__ import annotations

import re

import numpy as np
import pytest

from npmobilenet.ops.conv import conv2d_backward, conv2d_forward


def arrays(x_shape=(2, 4, 6, 6), w_shape=(4, 4, 3, 3), dtype=np.float64):
    rng = np.random.default_rng(0)
    return rng.standard_normal(x_shape).astype(dtype), rng.standard_normal(w_shape).astype(dtype)


G2 = {"groups": 2}


def raises(exc, pattern, **kwargs):
    """conv2d_forward(**kwargs) raises ``exc`` whose message matches ``pattern`` (a literal)."""
    x, w = arrays()
    args = {"x": x, "weight": w, **kwargs}
    with pytest.raises(exc, match=re.escape(pattern)):
        conv2d_forward(**args)


@pytest.mark.parametrize(
    "x_shape,w_shape,kwargs,pattern",
    [
        ((4, 6), (4, 4, 3, 3), {}, "x must be 3-D or 4-D, got 2-D shape (4, 6)"),
        ((1, 2, 4, 6, 6), (4, 4, 3, 3), {}, "x must be 3-D or 4-D, got 5-D"),
        ((2, 4, 6, 6), (4, 4, 3), {}, "weight must be 4-D, got 3-D shape (4, 4, 3)"),
        ((2, 6, 6, 6), (4, 4, 3, 3), G2, "x has 6 channels but weight expects 4 per group x"),
        ((2, 5, 6, 6), (4, 2, 3, 3), G2, "groups=2 must divide the input channels, x has 5"),
        ((2, 4, 6, 6), (3, 2, 3, 3), G2, "groups=2 must divide the output channels, weight has 3"),
        ((2, 4, 6, 6), (4, 4, 7, 7), {}, "(size 7, dilation 1, so it spans 7) is larger than the"),
        ((2, 4, 6, 6), (4, 4, 7, 7), {"padding": (1, 0)}, "padded input width 6 + padding 0 = 6"),
        ((2, 4, 6, 6), (4, 4, 3, 3), {"dilation": 3}, "(size 3, dilation 3, so it spans 7)"),
        ((2, 4, 6, 6), (0, 4, 3, 3), {}, "no zero-sized dimension, got shape (0, 4, 3, 3)"),
    ],
    ids=[
        "x-2d",
        "x-5d",
        "weight-3d",
        "channels-vs-groups",
        "groups-vs-input-channels",
        "groups-vs-output-channels",
        "kernel-taller-than-input",
        "kernel-wider-than-input",
        "dilated-kernel-too-large",
        "zero-sized-weight",
    ],
)
def test_bad_shapes(x_shape, w_shape, kwargs, pattern):
    """Each message names conv2d first, then says what was expected and what it got."""
    x, w = arrays(x_shape, w_shape)
    with pytest.raises(ValueError, match="^conv2d: .*" + re.escape(pattern)):
        conv2d_forward(x, w, **kwargs)


@pytest.mark.parametrize(
    "groups,exc,pattern",
    [
        (0, ValueError, "conv2d: groups must be >= 1, got 0"),
        (1.5, TypeError, "conv2d: groups must be an int, got float 1.5"),
        (True, TypeError, "conv2d: groups must be an int, got bool True"),
    ],
)
def test_bad_groups(groups, exc, pattern):
    raises(exc, pattern, groups=groups)


@pytest.mark.parametrize("name", ["stride", "dilation"])
@pytest.mark.parametrize("value,shown", [(0, "0"), (-1, "-1"), ((1, 0), "0")])
def test_non_positive_stride_and_dilation(name, value, shown):
    suffix = "[1]" if isinstance(value, tuple) else ""
    raises(ValueError, f"conv2d: {name}{suffix} must be >= 1, got {shown}", **{name: value})


@pytest.mark.parametrize(
    "value,pattern",
    [
        (-1, "conv2d: padding must be >= 0, got -1"),
        ((0, -2), "conv2d: padding[1] must be >= 0, got -2"),
        ((1, 1, 1), "conv2d: padding must be an int or a pair of ints, got (1, 1, 1)"),
    ],
)
def test_negative_or_malformed_padding(value, pattern):
    raises(ValueError, pattern, padding=value)


def test_unknown_padding_string():
    raises(
        ValueError,
        "conv2d: padding must be one of ['same', 'tf_same', 'valid'], got 'full'",
        padding="full",
    )


def test_same_padding_with_stride():
    raises(
        ValueError,
        "conv2d: padding='same' needs stride 1 (as in PyTorch), got stride=(2, 2)",
        padding="same",
        stride=2,
    )


def test_unknown_method():
    raises(
        ValueError,
        "conv2d: method must be one of ['auto', 'direct', 'im2col'], got 'fft'",
        method="fft",
    )


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.bool_, np.complex128, np.float16])
def test_non_float_dtypes(dtype):
    x, w = arrays()
    raises(
        TypeError,
        f"conv2d: x must have dtype float32 or float64, got dtype {np.dtype(dtype)}",
        x=x.astype(dtype),
    )
    raises(
        TypeError,
        f"conv2d: weight must have dtype float32 or float64, got dtype {np.dtype(dtype)}",
        weight=w.astype(dtype),
    )


def test_not_an_array():
    raises(TypeError, "conv2d: x must be a numpy array of float32 or float64, got list", x=[[1.0]])


def test_x_and_weight_dtypes_differ():
    x, w = arrays()
    raises(
        TypeError,
        "conv2d: weight has dtype float32 but x has dtype float64",
        x=x,
        weight=w.astype(np.float32),
    )


def test_bias_dtype_differs():
    raises(
        TypeError,
        "conv2d: bias has dtype float32 but x has dtype float64",
        bias=np.zeros(4, np.float32),
    )


@pytest.mark.parametrize("shape", [(3,), (4, 1), (5,)])
def test_bias_wrong_shape(shape):
    raises(
        ValueError,
        f"conv2d: bias must have shape (4,) (one per output channel), got {shape}",
        bias=np.zeros(shape),
    )


def _cache(**kwargs):
    x, w = arrays()
    return conv2d_forward(x, w, **kwargs)


def _backward_raises(exc, pattern, dout, cache):
    """conv2d_backward(dout, cache) raises ``exc`` whose message matches ``pattern`` (a literal)."""
    with pytest.raises(exc, match=re.escape(pattern)):
        conv2d_backward(dout, cache)


@pytest.mark.parametrize("method", ["direct", "im2col"])
def test_dout_shape_mismatch(method):
    out, cache = _cache(method=method)
    _backward_raises(
        ValueError,
        "conv2d_backward: dout has shape (2, 4, 4, 5) but the forward output had shape"
        f" {out.shape}",
        np.zeros((2, 4, 4, 5)),
        cache,
    )


def test_dout_unbatched_shape_mismatch():
    x, w = arrays((4, 6, 6), (4, 4, 3, 3))
    out, cache = conv2d_forward(x, w)
    _backward_raises(
        ValueError,
        "dout has shape (1, 4, 4, 4) but the forward output had shape (4, 4, 4)",
        out[None],
        cache,
    )


@pytest.mark.parametrize(
    "dtype,pattern",
    [
        (np.float32, "conv2d_backward: dout has dtype float32 but the forward ran in float64"),
        (np.int64, "conv2d_backward: dout must have dtype float32 or float64, got dtype int64"),
    ],
)
def test_dout_dtype(dtype, pattern):
    out, cache = _cache()
    _backward_raises(TypeError, pattern, out.astype(dtype), cache)


def test_cache_of_wrong_kind():
    out, _ = _cache()
    _backward_raises(
        TypeError,
        "conv2d_backward: cache must be the cache returned by conv2d_forward, got tuple",
        out,
        (1, 2),
    )


@pytest.mark.parametrize(
    "kwargs",
    [{"stride": True}, {"stride": 1.0}, {"stride": (1, 1.0)}, {"padding": (True, 1)},
     {"padding": (1, 1.0)}, {"stride": np.float32(1)}],
)  # fmt: skip
def test_geometry_equal_to_an_accepted_one_is_still_refused(kwargs):
    # stride=True == 1 and 1.0 == 1: a remembered geometry for (stride=1, padding=1) must not
    # be handed to them (each of these is refused naming the argument)
    x, w = np.zeros((1, 2, 5, 5), np.float32), np.zeros((3, 2, 3, 3), np.float32)
    out, _ = conv2d_forward(x, w, None, 1, 1)
    assert out.shape == (1, 3, 5, 5)
    name = next(iter(kwargs))
    with pytest.raises(TypeError, match=rf"conv2d.*{name}(\[\d\])? must be an int"):
        conv2d_forward(x, w, None, **{"stride": 1, "padding": 1, **kwargs})
