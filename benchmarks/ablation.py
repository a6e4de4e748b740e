"""Step-by-step variants of fused inference, to measure what each optimisation buys.

Used by ``bench_model.py --ablation``. Each variant computes the same logits as
``FusedMobileNetV1`` (checked by the benchmark before timing) with one optimisation fewer:

* ``unfused_forward(spec, x, fold=False)``: NHWC and one GEMM per pointwise conv, but conv, BN
  and activation as separate NumPy passes, padding by ``np.pad`` copies, fresh arrays per call.
* ``unfused_forward(spec, x, fold=True)``: the same with BN folded into the weights (one bias add
  left instead of the BN multiply-add).
* The engine with ``reuse_buffers = False``: fused epilogues, but buffers allocated per call.
* The engine as shipped.

``parallel_depthwise`` is the anti-pattern the thread rule exists for: a Numba ``prange`` copy of
the depthwise kernel, swapped into the engine to run a Numba parallel region beside a
multi-threaded BLAS. It lives here, not in the package, on purpose.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from npmobilenet.fast.engine import BLOCKS, STEM_STRIDE
from npmobilenet.kernels.fused_conv3x3 import conv_out_size, depthwise3x3_nhwc, im2col3x3_nchw


def layer_spec(state, eps=1e-5):
    """Per conv: (weight in the kernel layout, BN scale, BN shift), unfolded, float64.

    Returns dict(stem=(w (C*9, K), scale, shift), blocks=[(dw, pw), ...], fc=(w, b)) where dw is
    (w (3, 3, C), scale, shift) and pw is (w (C, K), scale, shift).
    """

    def conv_bn(conv, bn):
        w = np.asarray(state[f"{conv}.weight"], np.float64)
        scale = np.asarray(state[f"{bn}.weight"], np.float64) / np.sqrt(
            np.asarray(state[f"{bn}.running_var"], np.float64) + eps
        )
        shift = state[f"{bn}.bias"] - state[f"{bn}.running_mean"] * scale  # as fold_batch_norm
        return w, scale, shift

    w, s, b = conv_bn("first_conv.conv", "first_conv.bn")
    spec = dict(stem=(w.reshape(w.shape[0], -1).T, s, b), blocks=[])
    for prefix, _stride in BLOCKS:
        w, s, b = conv_bn(f"{prefix}.dwconv", f"{prefix}.bn0")
        dw = (w[:, 0].transpose(1, 2, 0), s, b)
        w, s, b = conv_bn(f"{prefix}.pwconv", f"{prefix}.bn1")
        spec["blocks"].append((dw, (w[:, :, 0, 0].T, s, b)))
    spec["fc"] = (np.asarray(state["fc.weight"]), np.asarray(state["fc.bias"]))
    return spec


def cast_spec(spec, dtype, fold):
    """The spec in ``dtype``; ``fold`` multiplies the BN scale into the weights (scale=None)."""

    def one(w, s, b):
        if fold:
            w, s = w * s, None  # the output channel is the last axis in every kernel layout
        return (w.astype(dtype), None if s is None else s.astype(dtype), b.astype(dtype))

    return dict(
        stem=one(*spec["stem"]),
        blocks=[(one(*dw), one(*pw)) for dw, pw in spec["blocks"]],
        fc=tuple(a.astype(dtype) for a in spec["fc"]),
    )


def unfused_forward(spec, x, activation="relu"):
    """NHWC inference with separate passes (conv, BN or bias, activation, padding), no reuse."""
    hi = 6.0 if activation == "relu6" else np.inf

    def bn_act(y, scale, shift):  # separate NumPy passes, in place
        if scale is not None:
            y *= scale
        y += shift
        np.maximum(y, 0, out=y)
        if hi != np.inf:
            np.minimum(y, hi, out=y)
        return y

    n, c, h, w = x.shape
    oh, ow = conv_out_size(h, STEM_STRIDE), conv_out_size(w, STEM_STRIDE)
    cols = np.empty((n, oh, ow, c * 9), x.dtype)
    im2col3x3_nchw(x, STEM_STRIDE, cols)
    wt, s, b = spec["stem"]
    y = bn_act(cols.reshape(-1, c * 9) @ wt, s, b).reshape(n, oh, ow, -1)
    none = (x.dtype.type(-np.inf), x.dtype.type(np.inf))
    for ((dw_w, dw_s, dw_b), (pw_w, pw_s, pw_b)), (_p, stride) in zip(spec["blocks"], BLOCKS):
        xp = np.pad(y, ((0, 0), (1, 1), (1, 1), (0, 0)))
        oh, ow = conv_out_size(y.shape[1], stride), conv_out_size(y.shape[2], stride)
        d = np.empty((n, oh, ow, y.shape[3]), x.dtype)
        depthwise3x3_nhwc(xp, dw_w, np.zeros_like(dw_b), stride, *none, d)  # conv only
        d = bn_act(d, dw_s, dw_b)
        y = bn_act(d.reshape(n * oh * ow, -1) @ pw_w, pw_s, pw_b).reshape(n, oh, ow, -1)
    fc_w, fc_b = spec["fc"]
    return y.mean(axis=(1, 2)) @ fc_w.T + fc_b


@njit(cache=True, parallel=True)
def parallel_depthwise(xp, w, b, stride, lo, hi, out):
    """``depthwise3x3_nhwc`` with ``prange`` over output rows (the anti-pattern; see module doc)."""
    N, OH, OW, C = out.shape
    for n in range(N):
        for oh in prange(OH):
            for ow in range(OW):
                for c in range(C):
                    acc = b[c]
                    for kh in range(3):
                        for kw in range(3):
                            acc += xp[n, oh * stride + kh, ow * stride + kw, c] * w[kh, kw, c]
                    out[n, oh, ow, c] = min(max(acc, lo), hi)
