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

import os
import threading

import numpy as np

from npmobilenet import threads
from npmobilenet.kernels.fused_barrier import FAILED, arrive, wait_all
from npmobilenet.kernels.fused_conv3x3 import bias_clamp_depthwise3x3, im2col3x3_nchw
from npmobilenet.kernels.fused_epilogue import bias_clamp_mean

# A pointwise GEMM of fewer rows (pixels) is split over the threads by its output channels, so
# that each thread packs only its part of the weight; a larger one by its rows.
COLUMNS_BELOW = 1024
# Rounds of a barrier's spin (about 50 us) before a waiting thread yields its core (a thread
# it waits for may be waiting for that core) and spins again.
_SPINS = 2**16


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

    The threads meet after each block at a spinning barrier (``fused_barrier``), all blocks in
    one :meth:`~npmobilenet.threads.Runner.map`. ``clock(kind)`` (``FusedMobileNetV1.profile``)
    is called after each step instead: one map per step, and a block's depthwise conv and its
    GEMM are separate steps, so that each is timed.
    """
    dtype = x.dtype.type
    steps = [("first conv", True, *_stem(layers[0], x, plan[0], runner))]
    y = plan[0]["y"].reshape(1, *plan[0]["a"].shape[1:3], -1)
    for i in range(1, len(layers), 2):
        y, *block = _block(layers[i - 1], layers[i], layers[i + 1], y, plan[i], plan[i + 1],
                           runner)  # fmt: skip
        steps += block
    if clock is None:
        _run_together(runner, steps)
    else:
        for kind, _, bands, work in steps:
            runner.map(lambda lo, hi: [work(k) for k in range(lo, hi)], len(bands),  # noqa: B023
                       threads.MIN_SLICE_ELEMENTS)  # fmt: skip
            clock(kind)
    n, oh, ow, k = y.shape
    last, pooled = layers[-1], plan[-1]["dst"]
    bias_clamp_mean(y.reshape(n, oh * ow, k), last.bias, dtype(last.lo), dtype(last.hi), pooled)
    if clock is not None:
        clock("bias+act+pool")
    return pooled


def _stem(stem, x, arrays, runner):
    """The stem's bands of output rows and ``work(k)``: im2col + GEMM of band k into
    ``arrays["y"]`` (OH*OW, K)."""
    a, w = arrays["a"], stem.weight  # (1, OH, OW, 9*C), (9*C, K)
    _, oh, ow, c9 = a.shape
    y = arrays["y"]  # (OH*OW, K)
    bands = runner.slices(oh)

    def work(k):
        r0, r1 = bands[k]
        im2col3x3_nchw(x, stem.stride, a[:, r0:r1], r0)
        np.matmul(a[0, r0:r1].reshape(-1, c9), w, out=y[r0 * ow : r1 * ow])

    return bands, work


def _block(prev, dw, pw, y, dw_arrays, pw_arrays, runner):
    """``prev``'s epilogue, depthwise layer ``dw`` and pointwise GEMM ``pw`` on y (1, H, W, C),
    ``prev``'s GEMM output: ``(out, depthwise step, GEMM step)``, out (1, OH, OW, K) the GEMM
    output (not the buffer y is in).

    A step is ``(kind, meet, bands, work)``: ``work(k)`` computes band k (the depthwise conv
    a band of rows; the GEMM the same band's pixels, or, when the GEMM has fewer than
    :data:`COLUMNS_BELOW` rows, a band of its output channels, after the threads have met)."""
    dtype = y.dtype.type
    a = dw_arrays["a"]  # (1, OH, OW, C)
    _, oh, ow, c = a.shape
    out = pw_arrays["y"]  # (OH*OW, K)
    args = (y, prev.bias, dtype(prev.lo), dtype(prev.hi), dw.weight, dw.bias, dw.stride,
            dtype(dw.lo), dtype(dw.hi))  # fmt: skip
    bands = runner.slices(oh)
    rings = dw_arrays["rings"]
    while len(rings) < len(bands):  # (3, W+2, C): three bordered input rows
        rings.append(np.empty((3, y.shape[2] + 2, c), y.dtype))

    def depthwise(k):
        bias_clamp_depthwise3x3(*args, rings[k], a, *bands[k])

    def gemm(k):
        r0, r1 = bands[k]
        np.matmul(a[0, r0:r1].reshape(-1, c), pw.weight, out=out[r0 * ow : r1 * ow])

    steps = [("depthwise", False, bands, depthwise), ("pointwise GEMM", True, bands, gemm)]
    if oh * ow < COLUMNS_BELOW:  # all rows of a, each thread a band of W's columns
        k = pw.weight.shape[1]
        columns = [(lo * 16, min(k, hi * 16)) for lo, hi in runner.slices(-(-k // 16))]

        def gemm_columns(j):
            k0, k1 = columns[j]
            np.matmul(a.reshape(-1, c), pw.weight[:, k0:k1], out=out[:, k0:k1])

        steps = [("depthwise", True, bands, depthwise),
                 ("pointwise GEMM", True, columns, gemm_columns)]  # fmt: skip
    return out.reshape(1, oh, ow, -1), *steps


def _run_together(runner, steps) -> None:
    """Every step's bands, thread t taking band t of each, the threads meeting at a spinning
    barrier after each step that says so (one whose bands other threads read next).

    The steps run in one ``runner.map`` over the threads. If that map runs its slices one
    after the other in the calling thread (another map holds the workers), the first slice
    runs every band of every step itself and the others return: a barrier would wait forever.
    """
    n_threads = runner.threads
    flags = np.zeros(n_threads, np.int64)
    caller, state = threading.get_ident(), {"serial": False}

    def thread(lo, hi):
        if state["serial"]:
            return
        if hi - lo > 1 or (lo < n_threads - 1 and threading.get_ident() == caller):
            state["serial"] = True  # not on threads of their own: no barriers
            for _, _, bands, work in steps:
                for k in range(len(bands)):
                    work(k)
            return
        _run_thread(lo, steps, flags)

    runner.map(thread, n_threads, threads.MIN_SLICE_ELEMENTS)


def _run_thread(t, steps, flags) -> None:
    """Thread t's band of each step; after a step that meets, it arrives at the barrier and
    waits for the others (except after the last step: the map's end is the barrier)."""
    try:
        for s, (_, meet, bands, work) in enumerate(steps):
            if t < len(bands):
                work(t)
            if meet and s + 1 < len(steps):
                arrive(flags, t, s + 1)
                while not wait_all(flags, s + 1, _SPINS):
                    os.sched_yield()  # a thread is late: let it have the core
    except BaseException:
        arrive(flags, t, FAILED)  # the others stop waiting for this thread
        raise
