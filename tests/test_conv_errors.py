"""Bad conv2d inputs raise TypeError/ValueError naming the argument, before any kernel runs."""

from __future__ import annotations

import re

import numpy as np
import pytest

from npmobilenet.ops.conv import conv2d_backward, conv2d_forward


def arrays(x_shape=(2, 4, 6, 6), w_shape=(4, 4, 3, 3), dtype=np.float64):
    rng = np.random.default_rng(0)
    return rng.standard_normal(x_shape).astype(dtype), rng.standard_normal(w_shape).astype(dtype)


def raises(exc, pattern, **kwargs):
    """conv2d_forward(**kwargs) raises ``exc`` whose message matches ``pattern`` (a literal)."""
    x, w = arrays()
    args = {"x": x, "weight": w, **kwargs}
    with pytest.raises(exc, match=re.escape(pattern)):
        conv2d_forward(**args)


@pytest.mark.parametrize(
    "x_shape,w_shape,pattern",
    [
        ((4, 6), (4, 4, 3, 3), "conv2d: x must be 3-D or 4-D, got 2-D shape (4, 6)"),
        ((1, 2, 4, 6, 6), (4, 4, 3, 3), "conv2d: x must be 3-D or 4-D, got 5-D"),
        ((2, 4, 6, 6), (4, 4, 3), "conv2d: weight must be 4-D, got 3-D shape (4, 4, 3)"),
    ],
)
def test_wrong_ndim(x_shape, w_shape, pattern):
    x, w = arrays(x_shape, w_shape)
    raises(ValueError, pattern, x=x, weight=w)


def test_channel_group_mismatch():
    x, w = arrays((2, 6, 6, 6), (4, 4, 3, 3))
    raises(
        ValueError,
        "conv2d: x has 6 channels but weight expects 4 per group x groups=2 = 8",
        x=x,
        weight=w,
        groups=2,
    )


def test_groups_must_divide_input_channels():
    x, w = arrays((2, 5, 6, 6), (4, 2, 3, 3))
    raises(
        ValueError,
        "conv2d: groups=2 must divide the input channels, x has 5",
        x=x,
        weight=w,
        groups=2,
    )


def test_groups_must_divide_output_channels():
    x, w = arrays((2, 4, 6, 6), (3, 2, 3, 3))
    raises(
        ValueError,
        "conv2d: groups=2 must divide the output channels, weight has 3",
        x=x,
        weight=w,
        groups=2,
    )


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
        ValueError, "conv2d: padding must be one of ['same', 'valid'], got 'full'", padding="full"
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


@pytest.mark.parametrize(
    "kwargs,pattern",
    [
        (
            dict(),
            "conv2d: the kernel (size 7, dilation 1, so it spans 7) is larger than the padded"
            " input height 6 + padding 0 = 6",
        ),
        (dict(padding=(1, 0)), "larger than the padded input width 6 + padding 0 = 6"),
    ],
)
def test_kernel_larger_than_padded_input(kwargs, pattern):
    x, w = arrays((2, 4, 6, 6), (4, 4, 7, 7))
    raises(ValueError, pattern, x=x, weight=w, **kwargs)


def test_dilated_kernel_larger_than_input():
    x, w = arrays((2, 4, 6, 6), (4, 4, 3, 3))
    raises(
        ValueError,
        "(size 3, dilation 3, so it spans 7) is larger than the padded input height 6",
        x=x,
        weight=w,
        dilation=3,
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


def test_zero_sized_weight():
    x, w = arrays((2, 4, 6, 6), (0, 4, 3, 3))
    raises(
        ValueError,
        "conv2d: weight must have no zero-sized dimension, got shape (0, 4, 3, 3)",
        x=x,
        weight=w,
    )


def _cache(**kwargs):
    x, w = arrays()
    return conv2d_forward(x, w, **kwargs)


@pytest.mark.parametrize("method", ["direct", "im2col"])
def test_dout_shape_mismatch(method):
    out, cache = _cache(method=method)
    with pytest.raises(
        ValueError,
        match=re.escape(
            "conv2d_backward: dout has shape (2, 4, 4, 5) but the forward output had shape"
            f" {out.shape}"
        ),
    ):
        conv2d_backward(np.zeros((2, 4, 4, 5)), cache)


def test_dout_unbatched_shape_mismatch():
    x, w = arrays((4, 6, 6), (4, 4, 3, 3))
    out, cache = conv2d_forward(x, w)
    with pytest.raises(
        ValueError,
        match=re.escape("dout has shape (1, 4, 4, 4) but the forward output had shape (4, 4, 4)"),
    ):
        conv2d_backward(out[None], cache)


def test_dout_dtype_mismatch():
    out, cache = _cache()
    with pytest.raises(
        TypeError,
        match=re.escape("conv2d_backward: dout has dtype float32 but the forward ran in float64"),
    ):
        conv2d_backward(out.astype(np.float32), cache)


def test_dout_not_float():
    out, cache = _cache()
    with pytest.raises(
        TypeError,
        match=re.escape(
            "conv2d_backward: dout must have dtype float32 or float64, got dtype int64"
        ),
    ):
        conv2d_backward(out.astype(np.int64), cache)


def test_cache_of_wrong_kind():
    out, _ = _cache()
    with pytest.raises(
        TypeError,
        match=re.escape(
            "conv2d_backward: cache must be the cache returned by conv2d_forward, got tuple"
        ),
    ):
        conv2d_backward(out, (1, 2))
