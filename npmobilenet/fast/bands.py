"""One image through the fused engine on several threads: every layer cut into bands of rows.

For one image, the fused engine can leave the cores to BLAS (``np.matmul`` splits each GEMM
over its threads), but then the depthwise layers and the epilogues between the GEMMs run on one
core while the other waits. Here a :class:`npmobilenet.threads.Runner` owns the cores instead
(BLAS at one thread, :meth:`~npmobilenet.threads.Runner.session`), and each thread takes one
band of output rows through a whole depthwise-separable block:

1. the previous GEMM's bias and activation and the depthwise conv
   (``bias_clamp_depthwise3x3``, rows of the band, reading one row above and below it);
2. the pointwise GEMM of the band's pixels (a 1x1 conv needs no neighbours).

The next block's depthwise conv reads rows of the neighbouring band, so the threads meet after
each block (one :meth:`~npmobilenet.threads.Runner.map` per block), and consecutive GEMMs write
two buffers in turn (``y`` and ``y2`` of the plan): a thread's GEMM never overwrites rows that
the other thread's depthwise conv still reads. The stem works the same way (im2col and GEMM of
a band of its output rows), and the last GEMM's epilogue pools the image in the calling thread.

A band's data stays in its core's cache from the depthwise conv to the GEMM's output.
"""

from __future__ import annotations

import numpy as np

from npmobilenet import threads
from npmobilenet.kernels.fused_conv3x3 import bias_clamp_depthwise3x3, im2col3x3_nchw
from npmobilenet.kernels.fused_epilogue import bias_clamp_mean


def runs_in_bands(layers, plan) -> bool:
    """Whether a plan for one image fits :func:`forward_bands`: a stem reading the NCHW input,
    then depthwise/pointwise pairs whose depthwise input has a one-pixel border, average
    pooling after the last, and two buffers for the GEMM outputs, used in turn (``make_plan``
    for one image)."""
    if layers[0].kind != "stem" or "xpad" in plan[0] or plan[0]["a"].shape[0] != 1:
        return False
    gemms = [arrays["y"] for arrays in plan if "y" in arrays]
    if any(np.may_share_memory(u, v) for u, v in zip(gemms, gemms[1:])):
        return False
    pairs = layers[1:]
    if len(pairs) % 2 or any(layer.kind != kind for layer, kind in
                             zip(pairs, ("depthwise", "pointwise") * len(pairs))):  # fmt: skip
        return False
    return all(plan[i]["pads"] == (1, 1, 1, 1) for i in range(0, len(layers) - 1, 2))


def forward_bands(layers, plan, x, runner: threads.Runner, clock=None):
    """x (1, C, H, W) -> the pooled features (1, K) (``plan[-1]["dst"]``), every block split
    into bands of rows over ``runner``'s threads (call inside ``runner.session()``).

    ``clock(kind)`` (``FusedMobileNetV1.profile``) is called after each step; with a clock,
    the threads also meet between a block's depthwise conv and its GEMM, so that each is timed.
    """
    clock = clock or _no_clock
    dtype = x.dtype.type
    stem = layers[0]
    y = _stem(stem, x, plan[0], runner)
    clock("first conv")
    prev = stem
    for i in range(1, len(layers), 2):
        y = _block(prev, layers[i], layers[i + 1], y, plan[i], plan[i + 1], runner, clock)
        prev = layers[i + 1]
    n, oh, ow, k = y.shape
    pooled = plan[-1]["dst"]
    bias_clamp_mean(y.reshape(n, oh * ow, k), prev.bias, dtype(prev.lo), dtype(prev.hi), pooled)
    clock("bias+act+pool")
    return pooled


def _stem(stem, x, arrays, runner):
    """im2col + GEMM of the stem, a band of output rows per thread -> y (1, OH, OW, K)."""
    a, w = arrays["a"], stem.weight  # (1, OH, OW, 9*C), (9*C, K)
    _, oh, ow, c9 = a.shape
    y = arrays["y"]  # (OH*OW, K)
    bands = runner.slices(oh)

    def part(lo, hi):
        for r0, r1 in bands[lo:hi]:
            im2col3x3_nchw(x, stem.stride, a[:, r0:r1], r0)
            np.matmul(a[0, r0:r1].reshape(-1, c9), w, out=y[r0 * ow : r1 * ow])

    runner.map(part, len(bands), threads.MIN_SLICE_ELEMENTS)  # a thread per band
    return y.reshape(1, oh, ow, -1)


def _block(prev, dw, pw, y, dw_arrays, pw_arrays, runner, clock):
    """``prev``'s epilogue, depthwise layer ``dw`` and pointwise GEMM ``pw``, a band of rows per
    thread: y (1, H, W, C) ``prev``'s GEMM output -> ``pw``'s GEMM output (1, OH, OW, K)."""
    dtype = y.dtype.type
    a = dw_arrays["a"]  # (1, OH, OW, C)
    _, oh, ow, c = a.shape
    out = pw_arrays["y"]  # (OH*OW, K), not the buffer y is in
    args = (y, prev.bias, dtype(prev.lo), dtype(prev.hi), dw.weight, dw.bias, dw.stride,
            dtype(dw.lo), dtype(dw.hi))  # fmt: skip
    bands = runner.slices(oh)
    rings = dw_arrays["rings"]
    while len(rings) < len(bands):  # (3, W+2, C): three bordered input rows
        rings.append(np.empty((3, y.shape[2] + 2, c), y.dtype))

    def depthwise(lo, hi):
        for k in range(lo, hi):
            bias_clamp_depthwise3x3(*args, rings[k], a, *bands[k])

    def gemm(lo, hi):
        for r0, r1 in bands[lo:hi]:
            np.matmul(a[0, r0:r1].reshape(-1, c), pw.weight, out=out[r0 * ow : r1 * ow])

    if clock is _no_clock:  # a thread per band, both steps
        runner.map(lambda lo, hi: (depthwise(lo, hi), gemm(lo, hi)), len(bands),
                   threads.MIN_SLICE_ELEMENTS)  # fmt: skip
    else:
        runner.map(depthwise, len(bands), threads.MIN_SLICE_ELEMENTS)
        clock("depthwise")
        runner.map(gemm, len(bands), threads.MIN_SLICE_ELEMENTS)
        clock("pointwise GEMM")
    return out.reshape(1, oh, ow, -1)


def _no_clock(kind):
    pass
