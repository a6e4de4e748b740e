"""3x3 convolution kernels for eval-mode inference, channels-last (NHWC).

MobileNetV1 has two kinds of 3x3 convolution, both with padding 1 and batch norm folded into the
weight and a bias (see ``npmobilenet.fast.folding``):

* the dense stem conv ``(K, C, 3, 3)``, stride 2, on the public NCHW input: done as
  :func:`im2col3x3_nchw` (gather each output pixel's ``C*9`` input values into one row, reading
  NCHW and writing pixel-major, so the layout change costs nothing) followed by one GEMM
  ``(N*OH*OW, C*9) @ (C*9, K)`` in BLAS;
* the depthwise conv (groups = C), stride 1 or 2: :func:`depthwise3x3_nhwc`, with the bias and
  the activation applied in the same pass (the "epilogue"), so its output is written once
  instead of three times (conv, BN, activation). When the layer before it is a GEMM,
  :func:`bias_clamp_depthwise3x3` also applies that GEMM's bias and activation, a few rows at a
  time into a small buffer that stays in cache, so the activation between them is never written
  to memory.

**Zero padding is stored, not tested**: the depthwise kernel reads an input that already carries
its zero border, ``(N, H+2, W+2, C)`` for padding 1, written by the previous layer's epilogue
(``fused_epilogue.bias_clamp_pad``, or :func:`bias_clamp_depthwise3x3` into its row buffer). So
every output pixel takes all 9 taps with no bounds test, and the innermost loop runs over
contiguous channels, which LLVM turns into SIMD code.

The activation is a clamp ``min(max(v, lo), hi)``: ReLU is ``lo=0, hi=inf``, ReLU6 is
``lo=0, hi=6``. A clamp has no branch, so it vectorizes too. Pass ``lo``/``hi`` as scalars of
the arrays' dtype (a float64 bound would promote float32 arithmetic).

Each kernel has a plain NumPy reference beside it (``*_naive``); the tests compare them.

Shape legend: N batch, C input channels, K output channels, H, W input size, OH, OW output size.
All arrays share one float dtype; the engine in ``npmobilenet.fast`` validates and allocates,
these kernels trust their inputs.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from npmobilenet._geometry import output_size
from npmobilenet.kernels.fastmath import CONTRACT


def conv_out_size(size: int, stride: int) -> int:
    """Output length of a 3x3 convolution with padding 1 (``(size - 1) // stride + 1``)."""
    return output_size(size, 3, stride, 1)


@njit(cache=True, nogil=True, fastmath=CONTRACT)
def im2col3x3_nchw(x, stride, cols, row0=0):
    """Gather 3x3 patches (padding 1) of an NCHW image batch into pixel-major rows.

    x:    (N, C, H, W) input.
    cols: (N, R, OW, C*9) output rows ``row0 .. row0+R-1`` of the convolution (all OH of them
          by default), written in place:
          ``cols[n, r, ow, c*9 + kh*3 + kw] = x[n, c, (row0 + r)*s - 1 + kh, ow*s - 1 + kw]``
          (0 outside the image), so ``cols @ weight.reshape(K, C*9).T`` is the convolution.
    """
    N, C, H, W = x.shape
    OH, OW = cols.shape[1], cols.shape[2]
    for n in range(N):
        for oh in range(OH):
            for ow in range(OW):
                q = 0
                for c in range(C):
                    for kh in range(3):
                        ih = (row0 + oh) * stride - 1 + kh
                        for kw in range(3):
                            iw = ow * stride - 1 + kw
                            inside = 0 <= ih < H and 0 <= iw < W
                            cols[n, oh, ow, q] = x[n, c, ih, iw] if inside else 0.0
                            q += 1


def im2col3x3_nchw_naive(x, stride):
    """NumPy reference for :func:`im2col3x3_nchw`: (N, C, H, W) -> (N, OH, OW, C*9)."""
    N, C, H, W = x.shape
    OH, OW = conv_out_size(H, stride), conv_out_size(W, stride)
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))  # (N, C, H+2, W+2)
    taps = [
        xp[:, :, kh : kh + stride * (OH - 1) + 1 : stride, kw : kw + stride * (OW - 1) + 1 : stride]
        for kh in range(3)
        for kw in range(3)
    ]  # 9 x (N, C, OH, OW)
    cols = np.stack(taps, axis=2)  # (N, C, 9, OH, OW)
    return cols.transpose(0, 3, 4, 1, 2).reshape(N, OH, OW, C * 9)


@njit(cache=True, nogil=True, fastmath=CONTRACT)
def depthwise3x3_nhwc(xp, w, b, stride, lo, hi, out):
    """Depthwise 3x3 conv on a zero-bordered NHWC input, bias and clamp fused.

    xp:  (N, H+2, W+2, C) input with its padding already in place (border = 0).
    w:   (3, 3, C) weight (PyTorch's ``(C, 1, 3, 3)`` transposed, BN scale folded in).
    b:   (C,) bias (the folded BN shift).
    stride: 1 or 2.  lo, hi: the activation clamp.
    out: (N, OH, OW, C), OH = (H - 1) // stride + 1 (same for OW), written in place:
         ``out[n,oh,ow,c] = clamp(b[c] + sum_{kh,kw} xp[n, oh*s+kh, ow*s+kw, c] * w[kh,kw,c])``

    One output row at a time (:func:`depthwise3x3_row`).
    """
    N, OH = out.shape[0], out.shape[1]
    for n in range(N):
        for oh in range(OH):
            i = oh * stride
            depthwise3x3_row(xp[n, i], xp[n, i + 1], xp[n, i + 2], w, b, stride, lo, hi,
                             out[n, oh])  # fmt: skip


# inline="always": called as a function, LLVM cannot hoist the rows' address arithmetic out of
# the call, and the conv takes nearly twice as long
@njit(cache=True, nogil=True, fastmath=CONTRACT, inline="always")
def depthwise3x3_row(r0, r1, r2, w, b, stride, lo, hi, o):
    """One output row of :func:`depthwise3x3_nhwc`: r0, r1, r2 (W+2, C) the three zero-bordered
    input rows under it, o (OW, C) the output row, written in place.

    The innermost loops run over the contiguous channels, which LLVM turns into SIMD code, with
    the 9 taps written out. A vector of outputs needs 19 vector loads (9 inputs, 9 weights, the
    bias), so the loop is load-bound. At stride 1 the output pixels therefore come in pairs:
    the two windows share two of their three columns and the nine weights, 22 loads for two
    vectors of outputs. At stride 2 (a fifth of MobileNet's depthwise outputs) and for an odd
    row's last pixel, one pixel at a time: a second copy of the pair loop would cost more
    compile time than it saves. Both sum the taps in the same order.
    """
    OW, C = o.shape
    single = OW - OW % 2 if stride == 1 else 0  # the first pixel computed alone
    for j in range(0, single, 2):  # stride 1: pixels j and j + 1
        for c in range(C):
            w00, w01, w02 = w[0, 0, c], w[0, 1, c], w[0, 2, c]
            w10, w11, w12 = w[1, 0, c], w[1, 1, c], w[1, 2, c]
            w20, w21, w22 = w[2, 0, c], w[2, 1, c], w[2, 2, c]
            a = b[c] + (r0[j, c] * w00 + r0[j + 1, c] * w01 + r0[j + 2, c] * w02)
            a += r1[j, c] * w10 + r1[j + 1, c] * w11 + r1[j + 2, c] * w12
            a += r2[j, c] * w20 + r2[j + 1, c] * w21 + r2[j + 2, c] * w22
            z = b[c] + (r0[j + 1, c] * w00 + r0[j + 2, c] * w01 + r0[j + 3, c] * w02)
            z += r1[j + 1, c] * w10 + r1[j + 2, c] * w11 + r1[j + 3, c] * w12
            z += r2[j + 1, c] * w20 + r2[j + 2, c] * w21 + r2[j + 3, c] * w22
            o[j, c] = min(max(a, lo), hi)
            o[j + 1, c] = min(max(z, lo), hi)
    for ow in range(single, OW):
        j = ow * stride
        for c in range(C):
            w00, w01, w02 = w[0, 0, c], w[0, 1, c], w[0, 2, c]
            w10, w11, w12 = w[1, 0, c], w[1, 1, c], w[1, 2, c]
            w20, w21, w22 = w[2, 0, c], w[2, 1, c], w[2, 2, c]
            a = b[c] + (r0[j, c] * w00 + r0[j + 1, c] * w01 + r0[j + 2, c] * w02)
            a += r1[j, c] * w10 + r1[j + 1, c] * w11 + r1[j + 2, c] * w12
            a += r2[j, c] * w20 + r2[j + 1, c] * w21 + r2[j + 2, c] * w22
            o[ow, c] = min(max(a, lo), hi)


@njit(cache=True, nogil=True, fastmath=CONTRACT)
def bias_clamp_depthwise3x3(y, b0, lo0, hi0, top, left, w, b, stride, lo, hi, ring, out):
    """The previous GEMM's epilogue and a depthwise 3x3 conv in one pass.

    y:    (N, H, W, C) the previous GEMM's output, before its bias ``b0`` (C,) and its clamp
          ``(lo0, hi0)``.
    top, left: the depthwise conv's padding above and left of the image; ``ring``'s width gives
          the padding on the right, the output's height the rows below (any padding: 1 on every
          side, or TensorFlow's "same", which may have none above and left).
    w, b, stride, lo, hi: the depthwise layer, as in :func:`depthwise3x3_nhwc`.
    ring: (3, left+W+right, C) scratch: the three zero-bordered input rows under an output row.
    out:  (N, OH, OW, C), written in place: ``depthwise3x3_nhwc(xp, w, b, stride, lo, hi)`` of
          ``xp = clamp(y + b0, lo0, hi0)`` with ``top`` and ``left`` zeros before it, and
          zeros after it up to the ring's width and the height the output needs.

    Each bordered input row is computed into the ring (row ``i`` into slot ``i % 3``) when the
    first output row that needs it comes, and read from there while it is in the core's cache:
    the activation between the two layers is never written to memory.
    """
    N, H, W, C = y.shape
    for n in range(N):
        filled = -1  # the last bordered input row in the ring
        for oh in range(out.shape[1]):
            i0 = oh * stride  # the first of the three input rows under output row oh
            for i in range(max(filled + 1, i0), i0 + 3):
                slot = ring[i % 3]  # (left+W+right, C)
                if i < top or i >= top + H:  # a zero row above or below the image
                    slot[:, :] = 0.0
                    continue
                yrow = y[n, i - top]  # (W, C)
                for j in range(left):
                    slot[j, :] = 0.0
                for j in range(left + W, slot.shape[0]):
                    slot[j, :] = 0.0
                for j in range(W):
                    for c in range(C):
                        slot[left + j, c] = min(max(yrow[j, c] + b0[c], lo0), hi0)
            filled = i0 + 2
            depthwise3x3_row(ring[i0 % 3], ring[(i0 + 1) % 3], ring[(i0 + 2) % 3], w, b,
                             stride, lo, hi, out[n, oh])  # fmt: skip


def depthwise3x3_nhwc_naive(xp, w, b, stride, lo, hi):
    """NumPy reference for :func:`depthwise3x3_nhwc`: sum of 9 strided slices.

    xp (N, H+2, W+2, C) zero-bordered, w (3, 3, C), b (C,) -> (N, OH, OW, C).
    """
    N, Hp, Wp, C = xp.shape
    OH, OW = conv_out_size(Hp - 2, stride), conv_out_size(Wp - 2, stride)
    out = np.broadcast_to(b, (N, OH, OW, C)).copy()
    for kh in range(3):
        for kw in range(3):
            # tap (kh, kw) of every output pixel
            tap = xp[
                :,
                kh : kh + stride * (OH - 1) + 1 : stride,
                kw : kw + stride * (OW - 1) + 1 : stride,
            ]
            out += tap * w[kh, kw]  # (N, OH, OW, C) * (C,)
    return np.clip(out, lo, hi)


def bias_clamp_depthwise3x3_naive(y, b0, lo0, hi0, pads, w, b, stride, lo, hi):
    """NumPy reference for :func:`bias_clamp_depthwise3x3`: y (N, H, W, C) and the depthwise
    conv's padding ``pads`` (top, bottom, left, right) -> (N, OH, OW, C)."""
    top, bottom, left, right = pads
    xp = np.pad(np.clip(y + b0, lo0, hi0), ((0, 0), (top, bottom), (left, right), (0, 0)))
    return depthwise3x3_nhwc_naive(xp, w, b, stride, lo, hi)
