"""How to gradient-check YOUR OWN layer: a complete example for your pytest suite.

The layer below is what a user might write: a depthwise convolution (with a depth multiplier)
followed by a bias and a learnable per-channel scale, forward and backward by hand in NumPy,
following npmobilenet's convention (``forward -> (out, cache)``, ``backward(dout, cache)``).

The tests fuzz it over valid convolution geometries drawn by ``npmobilenet.testing`` and check

* the forward against a trusted implementation (``npmobilenet.ops.conv2d_forward``), and
* the hand-written backward against numerical gradients with ``npmobilenet.gradcheck.check_op``.

Copy this file, replace the layer with yours, and keep the two tests.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given

from npmobilenet import ops
from npmobilenet.gradcheck import GradcheckError, check_op
from npmobilenet.testing import conv2d_configs
from npmobilenet.testing.conv import conv2d_kwargs, make_conv2d_inputs

# ------------------------------------------------------------------------------------------
# the user's layer


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def _pads(padding, kh, kw, dh, dw):
    """((top, bottom), (left, right)) for an int, a pair, "valid" or "same" (PyTorch's split)."""
    if padding == "valid":
        return (0, 0), (0, 0)
    if padding == "same":
        th, tw = dh * (kh - 1), dw * (kw - 1)  # total padding; the extra pixel goes at the end
        return (th // 2, th - th // 2), (tw // 2, tw - tw // 2)
    ph, pw = _pair(padding)
    return (ph, ph), (pw, pw)


def scaled_depthwise_forward(x, weight, bias, scale, stride=1, padding=0, dilation=1):
    """out = scale * (depthwise_conv(x, weight) + bias), per output channel.

    x (N, C, H, W); weight (K, 1, kH, kW) with K = M * C (depth multiplier M); bias (K,) or None;
    scale (K,) -> out (N, K, OH, OW). Output channel k reads input channel k // M.
    """
    N, C, H, W = x.shape
    K, _, kh, kw = weight.shape
    (sh, sw), (dh, dw) = _pair(stride), _pair(dilation)
    (pt, pb), (pl, pr) = _pads(padding, kh, kw, dh, dw)
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    xp = np.repeat(xp, K // C, axis=1)  # (N, K, Hp, Wp): channel k holds input channel k // M
    OH = (xp.shape[2] - dh * (kh - 1) - 1) // sh + 1
    OW = (xp.shape[3] - dw * (kw - 1) - 1) // sw + 1
    taps = [
        (i, j, np.s_[:, :, i * dh : i * dh + sh * (OH - 1) + 1 : sh,
                     j * dw : j * dw + sw * (OW - 1) + 1 : sw])
        for i in range(kh) for j in range(kw)
    ]  # fmt: skip
    conv = np.zeros((N, K, OH, OW), dtype=x.dtype)
    for i, j, window in taps:
        conv += weight[:, 0, i, j, None, None] * xp[window]  # (K,1,1) * (N, K, OH, OW)
    if bias is not None:
        conv += bias[:, None, None]
    out = scale[:, None, None] * conv
    return out, (x.shape, xp, weight, bias is not None, scale, conv, taps, (pt, pl))


def scaled_depthwise_backward(dout, cache):
    """Gradients of the forward above: (dx, dweight, dbias, dscale); dbias None without bias."""
    (N, C, H, W), xp, weight, has_bias, scale, conv, taps, (pt, pl) = cache
    dscale = np.sum(dout * conv, axis=(0, 2, 3))  # out = scale * conv
    dconv = dout * scale[:, None, None]
    dbias = dconv.sum(axis=(0, 2, 3)) if has_bias else None  # conv += bias
    dweight = np.zeros_like(weight)
    dxp = np.zeros_like(xp)
    for i, j, window in taps:  # conv += weight[k, 0, i, j] * xp[window]
        dweight[:, 0, i, j] = np.sum(dconv * xp[window], axis=(0, 2, 3))
        dxp[window] += weight[:, 0, i, j, None, None] * dconv
    K = weight.shape[0]
    dx = dxp[:, :, pt : pt + H, pl : pl + W]  # undo the padding
    dx = dx.reshape(N, C, K // C, H, W).sum(axis=2)  # undo the repeat over the multiplier
    return dx, dweight, dbias, dscale


# ------------------------------------------------------------------------------------------
# the user's tests

# small geometries: a full gradient check costs two forward passes per input element
small_configs = conv2d_configs(
    max_batch=2, max_channels=4, max_size=6, max_kernel=3, dtypes=(np.float64,),
    allow_unbatched=False,
)  # fmt: skip


def layer_inputs(cfg, seed=0):
    """x, weight, bias (maybe None) from npmobilenet.testing, plus the layer's own scale."""
    arrays = make_conv2d_inputs(cfg, seed=seed)
    scale = np.random.default_rng(seed + 1).uniform(0.5, 2.0, cfg["weight_shape"][0])
    return {**arrays, "scale": scale}


def geometry(cfg):
    """stride, padding, dilation: the layer is depthwise, so groups is implied."""
    kwargs = conv2d_kwargs(cfg)
    del kwargs["groups"]
    return kwargs


@given(cfg=small_configs)
def test_forward_matches_npmobilenet(cfg):
    assume(cfg["depth_multiplier"] is not None)  # the layer is depthwise only
    inputs = layer_inputs(cfg)
    out, _ = scaled_depthwise_forward(**inputs, **geometry(cfg))
    ref, _ = ops.conv2d_forward(inputs["x"], inputs["weight"], inputs["bias"], **conv2d_kwargs(cfg))
    assert out.shape == cfg["out_shape"]
    np.testing.assert_allclose(out, inputs["scale"][:, None, None] * ref, rtol=1e-12, atol=1e-12)


@given(cfg=small_configs)
def test_backward_passes_gradcheck(cfg):
    assume(cfg["depth_multiplier"] is not None)
    report = check_op(
        scaled_depthwise_forward,
        scaled_depthwise_backward,
        layer_inputs(cfg),  # x, weight, bias, scale: the order the backward returns them
        config=geometry(cfg),
    )
    checked = [r.name for r in report.inputs]
    assert checked == ["x", "weight"] + ["bias"] * cfg["bias"] + ["scale"]


def test_a_bug_in_the_layer_is_caught():
    """What a failure looks like: dbias forgets the scale. check_op names the input."""

    def buggy_backward(dout, cache):
        dx, dweight, dbias, dscale = scaled_depthwise_backward(dout, cache)
        return dx, dweight, dout.sum(axis=(0, 2, 3)), dscale

    rng = np.random.default_rng(0)
    inputs = {
        "x": rng.standard_normal((2, 2, 4, 4)),
        "weight": rng.standard_normal((4, 1, 3, 3)),
        "bias": rng.standard_normal(4),
        "scale": rng.uniform(0.5, 2.0, 4),
    }
    with pytest.raises(GradcheckError, match="gradient of 'bias' is wrong at index"):
        check_op(scaled_depthwise_forward, buggy_backward, inputs, config=dict(padding=1))
