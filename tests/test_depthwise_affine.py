"""The depthwise kernels that read z = act(y * scale + shift) while copying their input
(``npmobilenet.kernels.tuned.AFFINE_INPUT``) against two references: batch norm's apply kernel
writing z followed by the plain kernel on z (bit for bit, NaN, inf and -0.0 in y included), and
the naive loops on z in float64.

Geometries: every depthwise plane of MobileNet at 224 (stride 1 and 2, padding 1), at small
batch and channel counts, and odd, one-row and one-column planes each kernel accepts.
"""

from __future__ import annotations

import numpy as np
import pytest

from npmobilenet.kernels import batchnorm as bnk
from npmobilenet.kernels import tuned
from npmobilenet.kernels.conv_direct import conv2d_backward_naive, conv2d_forward_naive
from npmobilenet.kernels.tuned import depthwise3x3 as dw

FORWARD = {
    "flat_bands": dw.depthwise3x3_forward_flat_bands,
    "split_columns": dw.depthwise3x3_forward_split_columns,
}
BACKWARD = {
    "stacked": dw.depthwise3x3_backward_stacked,
    "stride2_pad1": dw.depthwise3x3_backward_stride2_pad1,
}

# (kernel, (H, W), (sh, sw), (pt, pb, pl, pr), depth multiplier)
_PAD1 = (1, 1, 1, 1)
_MOBILENET = [(s, 1) for s in (112, 56, 28, 14, 7)] + [(s, 2) for s in (112, 56, 28, 14)]
CASES = (
    [("flat_bands", (s, s), (1, 1), _PAD1, 1) for s, st in _MOBILENET if st == 1]
    + [("stacked", (s, s), (1, 1), _PAD1, 1) for s, st in _MOBILENET if st == 1]
    + [("split_columns", (s, s), (2, 2), _PAD1, 1) for s, st in _MOBILENET if st == 2]
    + [("stride2_pad1", (s, s), (2, 2), _PAD1, 1) for s, st in _MOBILENET if st == 2]
    + [("flat_bands", hw, (1, 1), _PAD1, 1) for hw in ((1, 1), (1, 5), (5, 1), (3, 7), (9, 13))]
    + [("flat_bands", (6, 9), (1, 1), (1, 1, 1, 1), 2),  # depth multiplier 2
       ("flat_bands", (5, 8), (1, 1), (0, 2, 0, 2), 1),  # left padding not 1: z written
       ("flat_bands", (5, 8), (1, 1), (2, 0, 2, 0), 1)]
    + [("stacked", hw, (1, 1), _PAD1, 1) for hw in ((1, 1), (1, 5), (5, 1), (3, 7), (9, 13))]
    + [("stacked", (6, 7), (1, 1), (0, 2, 0, 2), 1), ("stacked", (6, 7), (1, 1), (2, 0, 2, 0), 1)]
    + [("split_columns", hw, (2, 2), _PAD1, 1) for hw in ((1, 1), (1, 9), (4, 1), (5, 7))]
    + [("split_columns", (7, 9), (1, 2), (0, 1, 0, 1), 1),
       ("split_columns", (6, 10), (2, 2), _PAD1, 2)]
    + [("stride2_pad1", hw, (2, 2), _PAD1, 1) for hw in ((2, 2), (2, 6), (6, 2), (10, 14))]
)  # fmt: skip
SPECIALS = [np.nan, np.inf, -np.inf, -0.0, 0.0, 3e38, -3e38, 6.0, -1e-30]


def _ids(case):
    name, (H, W), (sh, sw), pads, m = case
    return f"{name}-{H}x{W}-s{sh}{sw}-p{''.join(map(str, pads))}-m{m}"


def _inputs(case, dtype, specials, seed=0):
    """y (N, C, H, W), scale and shift (C,) float64 (one scale negative, one zero), w, dout."""
    _, (H, W), (sh, sw), (pt, pb, pl, pr), m = case
    rng = np.random.default_rng(seed)
    N, C = 2, 3
    OH, OW = (H + pt + pb - 3) // sh + 1, (W + pl + pr - 3) // sw + 1
    y = (rng.standard_normal((N, C, H, W)) * 3 + 0.5).astype(dtype)
    if specials:
        flat = y.reshape(-1)
        at = rng.choice(flat.size, min(flat.size, 3 * len(SPECIALS)), replace=False)
        flat[at] = np.resize(np.array(SPECIALS, dtype=dtype), at.size)
    scale = rng.standard_normal(C) + 0.5
    scale[0], scale[1] = -abs(scale[0]), 0.0
    shift = rng.standard_normal(C)
    w = rng.standard_normal((C * m, 1, 3, 3)).astype(dtype)
    dout = rng.standard_normal((N, C * m, OH, OW)).astype(dtype)
    return y, scale, shift, w, dout


def _z_apply(y, scale, shift, act):
    """z written by batch norm's apply kernel."""
    N, C = y.shape[:2]
    z = np.empty_like(y)
    bnk.apply_channels(y.reshape(N, C, -1), scale, shift, z.reshape(N, C, -1), act, 0, C)
    return z


def _z_naive(y, scale, shift, act):
    """z from NumPy: the float64 affine value rounded to y's dtype, then clamped."""
    z = np.empty_like(y)
    bnk.scale_shift_naive(y.reshape(*y.shape[:2], -1), scale, shift, z.reshape(*y.shape[:2], -1))
    return np.clip(z, 0, 6 if act == 2 else None) if act else z


def _same_bits(a, b):
    """NaN at the same places, every other element the same bits (-0.0 is not 0.0). A NaN's
    sign may differ: several NaNs summed in another order keep another one's sign."""
    nan = np.isnan(a)
    if a.dtype != b.dtype or not np.array_equal(nan, np.isnan(b)):
        return False
    return np.array_equal(np.where(nan, 0, a).view(np.uint8), np.where(nan, 0, b).view(np.uint8))


def _geometry(case):
    _, _, (sh, sw), (pt, _, pl, _), _ = case
    return sh, sw, pt, pl


def _forward(name, affine, x, w, dout, geom, scale, shift, act):
    out = np.full(dout.shape, np.nan, dtype=x.dtype)  # the forward kernels write out
    kernel = tuned.AFFINE_INPUT[FORWARD[name]] if affine else FORWARD[name]
    kernel(x, w, out, *geom, *((scale, shift, act) if affine else ()))
    return out


def _backward(name, affine, x, w, dout, geom, scale, shift, act):
    dx, dweight = np.full_like(x, np.nan), np.zeros_like(w)  # dx written, dweight added into
    kernel = tuned.AFFINE_INPUT[BACKWARD[name]] if affine else BACKWARD[name]
    kernel(dout, x, w, dx, dweight, *geom, *((scale, shift, act) if affine else ()))
    return dx, dweight


def _run(name, affine, x, w, dout, geom, scale, shift, act):
    """The kernel's outputs, a tuple of arrays."""
    if name in FORWARD:
        return (_forward(name, affine, x, w, dout, geom, scale, shift, act),)
    return _backward(name, affine, x, w, dout, geom, scale, shift, act)


@pytest.mark.parametrize("act", [0, 1, 2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_affine_kernel_is_apply_then_plain_kernel_bit_for_bit(case, dtype, act):
    """y with NaN, inf, -0.0 and huge values, one scale negative and one zero: the twin's
    outputs are the plain kernel's on the z batch norm's apply kernel writes, every bit (but
    a NaN's sign)."""
    y, scale, shift, w, dout = _inputs(case, dtype, specials=True)
    geom = _geometry(case)
    plain = _run(case[0], False, _z_apply(y, scale, shift, act), w, dout, geom, None, None, None)
    fused = _run(case[0], True, y, w, dout, geom, scale, shift, act)
    for a, b in zip(plain, fused, strict=True):
        assert _same_bits(a, b), (np.isnan(a).sum(), np.isnan(b).sum())


def _naive(name, z64, w64, dout64, geom):
    """Naive loops on z in float64: out, or (dx, dweight)."""
    sh, sw, pt, pl = geom
    args = (sh, sw, pt, pl, 1, 1, z64.shape[1])
    if name in FORWARD:
        out = np.zeros(dout64.shape)
        conv2d_forward_naive(z64, w64, out, *args)
        return (out,)
    dx, dweight = np.zeros_like(z64), np.zeros_like(w64)
    conv2d_backward_naive(dout64, z64, w64, dx, dweight, *args)
    return dx, dweight


@pytest.mark.parametrize("act", [0, 1, 2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_affine_kernel_matches_naive_loops_on_z(case, dtype, act):
    """The twin against the naive convolution loops, in float64, on z computed by NumPy."""
    y, scale, shift, w, dout = _inputs(case, dtype, specials=False, seed=1)
    geom = _geometry(case)
    z64 = _z_naive(y, scale, shift, act).astype(np.float64)
    want = _naive(case[0], z64, w.astype(np.float64), dout.astype(np.float64), geom)
    got = _run(case[0], True, y, w, dout, geom, scale, shift, act)
    tol = 2e-5 if dtype == np.float32 else 1e-12
    for a, b in zip(got, want, strict=True):
        assert a.dtype == dtype
        scale_of = max(1.0, float(np.abs(b).max(initial=0.0)))
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol * scale_of)


def test_relu6_clamps_above_six_and_relu_does_not():
    """A plane of y = 10 with scale 1, shift 0: z is 6 under ReLU6 and 10 under ReLU, so the
    centre output of an all-ones filter is 9 * 6 or 9 * 10 (the act argument is honoured)."""
    y, w = np.full((1, 1, 3, 3), 10.0), np.ones((1, 1, 3, 3))
    one, zero = np.ones(1), np.zeros(1)
    for act, want in ((2, 54.0), (1, 90.0), (0, 90.0)):
        out = np.empty((1, 1, 3, 3))
        dw.depthwise3x3_forward_flat_bands_affine(y, w, out, 1, 1, 1, 1, one, zero, act)
        assert out[0, 0, 1, 1] == want


def test_affine_table_maps_table_kernels_to_their_twins():
    """AFFINE_INPUT holds the training step's four table kernels, each to its _affine twin."""
    table = {v.kernel for v in tuned.DEPTHWISE3X3}
    assert set(tuned.AFFINE_INPUT) <= table
    assert set(tuned.AFFINE_INPUT) == set(FORWARD.values()) | set(BACKWARD.values())
    for plain, twin in tuned.AFFINE_INPUT.items():
        assert twin.__name__ == plain.__name__ + "_affine"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_compiled_signature_is_what_a_call_compiles(dtype):
    """``compiled_signature`` names the kernel and argument types a call of a table kernel or
    its twin compiles, so that a kernel compiled ahead is the one the call then finds."""
    for name in ("flat_bands", "split_columns", "stacked", "stride2_pad1"):
        stride = 2 if name in ("split_columns", "stride2_pad1") else 1
        case = (name, (4, 6), (stride, stride), _PAD1, 1)
        y, scale, shift, w, dout = _inputs(case, dtype, specials=False)
        plain = FORWARD.get(name) or BACKWARD[name]
        for affine, kernel in ((False, plain), (True, tuned.AFFINE_INPUT[plain])):
            _run(name, affine, y, w, dout, _geometry(case), scale, shift, 1)
            target, sig = tuned.compiled_signature(kernel, dtype)
            assert sig in target.overloads, (kernel.__name__, list(target.overloads))
