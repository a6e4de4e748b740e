"""Kernels tuned for particular shapes, and the one table that decides when each runs.

``kernels/`` teaches: one naive reference and one readable fast kernel per op. This package holds
the special cases that were measured faster on MobileNet's shapes, kept apart so that the
readable kernels stay readable. Each variant computes the same sums as the readable kernel it
replaces and is tested against the naive reference (``tests/test_conv.py``).
Every "forward" kernel writes its ``out`` (old contents ignored).

``DEPTHWISE3X3`` lists, per operation, ``Variant(op, when, kernel, reason)`` entries in order;
``depthwise3x3_kernel(op, shape)`` returns the first kernel whose ``when(shape)`` holds. The
measured thresholds live in the ``when`` conditions, nowhere else. The last entry of
"forward", "backward_input" and "backward_weight" is the readable kernel of
``kernels/conv_depthwise.py`` (always applicable); "backward" (both gradients from one kernel)
has no general entry, and ``None`` means: run "backward_weight" and "backward_input".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from npmobilenet.compile_ahead import signature
from npmobilenet.kernels import conv_depthwise as readable
from npmobilenet.kernels.tuned import depthwise3x3 as tuned

OPS = ("forward", "backward_input", "backward_weight", "backward")


class DepthwiseShape(NamedTuple):
    """The geometry a depthwise 3x3 call is dispatched on (weight (K, 1, 3, 3), dilation 1).

    channels C, out_channels K (= m*C), in_hw (H, W), out_hw (OH, OW), stride (sh, sw);
    finite_weight: no inf or NaN in the weight; padding: (top, left), or None where not known
    (then no kernel for one padding is chosen).
    """

    channels: int
    out_channels: int
    in_hw: tuple[int, int]
    out_hw: tuple[int, int]
    stride: tuple[int, int]
    finite_weight: bool = True
    padding: tuple[int, int] | None = None


class Variant(NamedTuple):
    """One entry of the dispatch table: run ``kernel`` for ``op`` when ``when(shape)`` holds."""

    op: str
    when: Callable[[DepthwiseShape], bool]
    kernel: Callable
    reason: str


def _tiny_planes(s: DepthwiseShape) -> bool:
    return s.out_channels == s.channels and s.out_hw[0] * s.out_hw[1] <= 16


def _same_size_stride1(s: DepthwiseShape) -> bool:
    return (s.stride == (1, 1) and s.out_hw == s.in_hw and s.out_channels == s.channels
            and s.finite_weight)  # fmt: skip


def _same_width_stride1(s: DepthwiseShape) -> bool:
    return s.stride == (1, 1) and s.out_hw[1] == s.in_hw[1]


def _stride2_single(s: DepthwiseShape) -> bool:
    return s.stride == (2, 2) and s.out_channels == s.channels and s.finite_weight


def _stride2_pad1_halved(s: DepthwiseShape) -> bool:
    (H, W), (OH, OW) = s.in_hw, s.out_hw
    return _stride2_single(s) and s.padding == (1, 1) and (H, W) == (2 * OH, 2 * OW)


def _always(s: DepthwiseShape) -> bool:
    return True


DEPTHWISE3X3: tuple[Variant, ...] = (
    Variant("forward", _tiny_planes, tuned.depthwise3x3_forward_small,
            "depth multiplier 1, at most 16 output pixels (MobileNet's last stages at small "
            "resolutions): channels innermost beats the per-plane set-up cost"),
    Variant("forward", _same_width_stride1, tuned.depthwise3x3_forward_flat_bands,
            "stride 1, output as wide as the input: bands of rows as one flat loop, whose taps "
            "are a constant apart (8 images, one thread: 14x14 0.24-0.27 ms, 7x7 0.25-0.29, "
            "28x28 0.37-0.41; 2.3x, 2.3x and 1.6x faster than a loop per row, whose rows of 14 "
            "or 7 columns do not vectorise; 112x112 and 56x56 within 0.8-1.2x); left padding 1 "
            "(MobileNet's), else as bands of rows"),
    Variant("forward", lambda s: s.stride == (1, 1), tuned.depthwise3x3_forward_rows,
            "stride 1: bands of rows, the band's scratch in L1, out written once (batch 16, "
            "2 threads: 112x112 and 56x56 1.7x faster than a flat loop over a whole-plane "
            "scratch added into a zeroed out, 28x28 1.1x; 14x14 1.1x and 7x7 1.3x slower, "
            "where a flat loop would cost a first training step 0.5 s more compiling)"),
    Variant("forward", lambda s: s.stride[1] == 2, tuned.depthwise3x3_forward_split_columns,
            "column stride 2: even and odd columns split, 9 multiply-adds per output (112 -> "
            "56 2.5x, 56 -> 28 1.6x faster than every column computed and every second kept)"),
    Variant("forward", _always, readable.depthwise3x3_forward, "the readable kernel"),
    Variant("backward", _tiny_planes, tuned.depthwise3x3_backward_small,
            "as the tiny-plane forward; both gradients in one pass over the channels-last copy"),
    Variant("backward", _same_size_stride1, tuned.depthwise3x3_backward_stacked,
            "stride 1, output the input's size, depth multiplier 1, finite weight: both "
            "gradients in one flat loop over scratch rows as long as the image's (a plane one "
            "flat copy, columns past a row's ends masked by the bits of one byte a position), "
            "over several images' planes stacked when they have at most 256 pixels (8 images, "
            "one thread: 112x112 2.3 ms, 56x56 2.2, 28x28 0.76, 14x14 0.43, 7x7 0.27; with a "
            "byte a mask 2.5, 2.5, 0.91, 0.51, 0.30, itself 1.4x, 1.4x, 1.7x, 2.4x, 2.8x faster "
            "than zero-bordered scratch rows copied one by one); one kernel for all these layers "
            "is two compilations less on a first training run"),
    Variant("backward", _stride2_pad1_halved, tuned.depthwise3x3_backward_stride2_pad1,
            "as the next entry, padding 1 at the top and left, output half the input (all "
            "MobileNet's stride-2 layers with PyTorch's padding): x split and dx written two "
            "rows a pass in whole column pairs; its twin reads batch norm's input (8 images, "
            "one thread, cold input, twin or plain: 112x112 input 4.0-4.1 ms, 56x56 1.9-2.0, "
            "28x28 0.8-0.87, 14x14 0.68-0.72)"),
    Variant("backward", _stride2_single, tuned.depthwise3x3_backward_stride2,
            "stride 2, depth multiplier 1, finite weight: both gradients in one pass over each "
            "plane, x split into the padded plane's four phases (every tap a contiguous read), "
            "dx written by pairs of columns (8 images, one thread: 112x112 input 3.6 ms, 56x56 "
            "1.7, 28x28 0.9, 14x14 0.72; 1.5x faster than one zero-bordered scratch read at "
            "every second column, itself 1.2-1.25x faster than the separate pair)"),
    Variant("backward_weight", lambda s: s.stride == (1, 1),
            tuned.depthwise3x3_backward_weight_flat,
            "stride 1: one flat loop per plane"),
    Variant("backward_weight", _always, readable.depthwise3x3_backward_weight,
            "the readable kernel"),
    Variant("backward_input", lambda s: not s.finite_weight,
            tuned.depthwise3x3_backward_input_skip_padding,
            "an inf or NaN weight: the padding's zeros must not be multiplied (0 * inf = NaN)"),
    Variant("backward_input", lambda s: s.stride == (2, 2),
            tuned.depthwise3x3_backward_input_stride2,
            "stride 2: the all-zero rows of the spread-out gradient are skipped"),
    Variant("backward_input", lambda s: s.stride == (1, 1) or s.in_hw[1] <= 32,
            tuned.depthwise3x3_backward_input_flat,
            "stride 1, or input at most 32 wide: one flat loop per plane (wider stride-1 planes "
            "as the forward)"),
    Variant("backward_input", _always, readable.depthwise3x3_backward_input,
            "the readable kernel"),
)  # fmt: skip


def depthwise3x3_kernel(op: str, shape: DepthwiseShape):
    """The kernel of the first ``DEPTHWISE3X3`` entry for ``op`` whose condition holds (or None).

    Signatures: see ``npmobilenet.kernels.tuned.depthwise3x3``.
    """
    for variant in DEPTHWISE3X3:
        if variant.op == op and variant.when(shape):
            return variant.kernel
    return None


def compiled(kernel: Callable) -> tuple[Callable, int, int, int]:
    """``(compiled kernel, arrays, ndim, ints)``: what a table kernel, or its ``AFFINE_INPUT``
    twin, compiles, for :func:`npmobilenet.compile_ahead.signature` (its arrays C-contiguous of
    ``ndim`` dimensions, then ``ints`` ints; a loop nest then takes scale, shift and act:
    ``signature(..., affine=True)``, as :func:`compiled_signature` gives). A plain function of
    the table, or a twin, gives the loop nest it calls; a compiled one is itself, (x, w, out)
    and (sh, sw, pt, pl) (a forward or one gradient) or (dout, x, w, dx, dweight) and the same
    ints (both gradients)."""
    return _COMPILED.get(kernel, (kernel, 3, 4, 4))


def compiled_signature(kernel: Callable, dtype) -> tuple[Callable, tuple]:
    """``(compiled kernel, argument types)`` a call of the table kernel or twin ``kernel`` on
    arrays of ``dtype`` compiles (for :mod:`npmobilenet.compile_ahead`)."""
    target, arrays, ndim, ints = compiled(kernel)
    return target, signature(dtype, arrays, ndim, ints, affine=kernel in _LOOP_NESTS)


# The plain functions of the table and their twins -> the compiled kernel each calls, as
# ``compiled`` gives it. The loop nests take the table kernel's arguments (the flat-band one:
# x, w, out flat, then N, C, H, W, OH, pt), then scale, shift (C,) float64 and act: a plain
# kernel and its twin compile the same specialisation (the plain one passes
# ``depthwise3x3.identity(C)``).
_COMPILED = {
    tuned.depthwise3x3_backward_stride2: (tuned.depthwise3x3_backward_stride2, 5, 4, 4),
    tuned.depthwise3x3_backward_small: (tuned.depthwise3x3_backward_small, 5, 4, 4),
}
for _plain, _twin, _loops, _arrays, _ndim, _ints in (
    (tuned.depthwise3x3_forward_flat_bands, tuned.depthwise3x3_forward_flat_bands_affine,
     tuned.depthwise3x3_forward_flat_bands_loops, 3, 1, 6),
    (tuned.depthwise3x3_forward_split_columns, tuned.depthwise3x3_forward_split_columns_affine,
     tuned.depthwise3x3_forward_split_columns_loops, 3, 4, 4),
    (tuned.depthwise3x3_backward_stacked, tuned.depthwise3x3_backward_stacked_affine,
     tuned.depthwise3x3_backward_stacked_loops, 5, 4, 4),
    (tuned.depthwise3x3_backward_stride2_pad1, tuned.depthwise3x3_backward_stride2_pad1_affine,
     tuned.depthwise3x3_backward_stride2_pad1_loops, 5, 4, 4),
):  # fmt: skip
    _COMPILED[_plain] = _COMPILED[_twin] = (_loops, _arrays, _ndim, _ints)  # + scale, shift, act

# A table kernel -> its twin that reads z = act(y * scale + shift) instead of x, computing z
# while it copies its input (batch norm's output before the convolution, never written):
# ``kernel(y, w, out, sh, sw, pt, pl, scale, shift, act)`` (forward) and
# ``kernel(dout, y, w, dx, dweight, sh, sw, pt, pl, scale, shift, act)`` (both gradients, dx
# with respect to z); scale, shift (C,) float64, act 0 none, 1 ReLU, 2 ReLU6. The plain
# kernel's result on z, bit for bit (``tests/test_depthwise_affine.py``). A twin and its plain
# kernel call one compiled loop nest with the same argument types (``compiled``).
AFFINE_INPUT: dict[Callable, Callable] = {
    tuned.depthwise3x3_forward_flat_bands: tuned.depthwise3x3_forward_flat_bands_affine,
    tuned.depthwise3x3_forward_split_columns: tuned.depthwise3x3_forward_split_columns_affine,
    tuned.depthwise3x3_backward_stacked: tuned.depthwise3x3_backward_stacked_affine,
    tuned.depthwise3x3_backward_stride2_pad1: tuned.depthwise3x3_backward_stride2_pad1_affine,
}
_LOOP_NESTS = frozenset(AFFINE_INPUT) | frozenset(AFFINE_INPUT.values())  # take scale, shift, act
