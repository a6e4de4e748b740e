"""``FusedMobileNetV1``: a fast eval-mode inference engine for MobileNetV1-shaped models.

``model.fuse()`` (or ``FusedMobileNetV1(model)``) walks the model's modules
(``npmobilenet.fast.walk``) and computes exactly what the model computes in eval mode (up to
float rounding), in fewer and faster passes:

1. **BN folded** into each conv's weight and a bias once, at construction (``folding.py``).
2. **Channels-last (NHWC) inside**: the stem's im2col reads the public NCHW input and writes
   pixel-major rows; from then on every activation is ``(N, H, W, C)``, so
3. **a 1x1 conv is one GEMM** over all pixels of the batch, ``(N*H*W, C) @ (C, K)``, handed to
   BLAS by ``np.matmul(..., out=buffer)`` (the stem and full 3x3 convs too, after im2col);
4. **bias + activation fused**: the depthwise 3x3 kernel adds the bias and clamps in the same
   pass. A GEMM followed by a depthwise conv has its bias and clamp applied by that conv's
   kernel, which computes the zero-bordered input rows it needs into a ring of three rows in
   cache just before using them (``bias_clamp_depthwise3x3``, so padding is never tested and
   the activation between them never goes to memory); any other GEMM is followed by one fused
   bias+clamp pass that writes straight into the next 3x3 conv's zero-bordered input, and the
   last one also does the global pooling (``npmobilenet.kernels.fused_*``);
5. **buffers reused**: activation buffers per input shape (GEMM left operands, GEMM outputs,
   and two for the zero-bordered 3x3 inputs, used in turn), allocated on the first call with
   that shape and reused;
6. **large layers in blocks of rows**: when a layer's GEMM input and output for one image
   exceed a core's cache (:data:`BLOCK_BYTES`), a depthwise layer and its pointwise layer
   (or the stem) run a few image rows at a time: depthwise conv (or im2col), GEMM and epilogue
   on one block while it is in cache, so the GEMM output never goes to memory (a blocked
   GEMM's epilogue is its own pass, on the block, writing the next conv's bordered input);
7. **a batch split over threads**: several images are cut into slices that npmobilenet's threads
   run through the whole network side by side, each slice with its own buffers and BLAS at one
   thread (``npmobilenet.threads``): one hand-off per call, and the depthwise kernels and
   epilogues run on every core too; a slice goes through the network :data:`GROUP` images at
   a time, whose activations stay in the shared cache from layer to layer.

Numba kernels here are serial. One image runs on BLAS's threads (see ``npmobilenet.threads``).
Dropout is the identity in eval mode.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict

import numpy as np

from npmobilenet import _checks, threads
from npmobilenet._geometry import output_size
from npmobilenet.fast.walk import OP, Head, Layer, fused_layers, stem_reads_nchw
from npmobilenet.kernels.fused_conv3x3 import (
    bias_clamp_depthwise3x3,
    conv_out_size,
    depthwise3x3_nhwc,
    im2col3x3_nchw,
)
from npmobilenet.kernels.fused_epilogue import bias_clamp_mean, bias_clamp_pad
from npmobilenet.ops.conv import resolve_padding

_MAX_PLANS = 8  # input shapes whose buffers are kept (least recently used dropped first)
# A layer whose GEMM input and output take more than BLOCKED_ABOVE * BLOCK_BYTES over the batch
# (more than the shared 32 MiB L3 cache) runs in blocks of image rows of about BLOCK_BYTES each,
# every block's epilogue following its GEMM while the GEMM output is in the core's cache (L2).
# Below that, the depthwise conv applying the GEMM's epilogue itself reads the GEMM output from
# L3, and blocks would only add hand-offs between BLAS's threads. Measured on 2 threads against
# blocking above 8 MiB: batch 32 at 224 2-5% faster, batch 2 at 448 1-2% faster, batch 4 at 448
# 1-2% slower, one image at 224 unblocked either way.
BLOCK_BYTES = 2**20
BLOCKED_ABOVE = 32
# Images a slice of a batch runs through the whole network at a time: four 224 x 224 images'
# activations (a few MB per layer) stay in the shared L3 cache from one layer to the next.
GROUP = 4


class FusedMobileNetV1:
    """Eval-mode inference with BN folded and conv + bias + activation fused.

    ``FusedMobileNetV1(model)`` (what ``model.fuse()`` returns) snapshots the model's current
    modules, weights and running statistics; rebuild it after changing the model. A batch is
    split over ``runner``'s threads (default: the model's ``runner``). Calling it on
    an NCHW batch ``x`` (N, C, H, W), float32 or float64, returns what ``model.eval();
    model(x)`` returns, in x's dtype: logits (N, classes), or the pooled features (N, K) of a
    model without a classifier. A module the engine does not know raises
    :class:`npmobilenet.fast.UnsupportedModuleError` naming the module's path and type.

    Calls are serialised by a lock (the activation buffers are shared between calls).
    """

    def __init__(self, model, runner: threads.Runner | None = None):
        layers, head = fused_layers(model)
        # the threads a batch is split over: the model's runner unless one is given
        self.runner = runner or getattr(model, "runner", None) or threads.Runner()
        self.layers: tuple[Layer, ...] = layers  # float64, in forward order
        self.head: Head = head
        self._by_dtype = {np.dtype(np.float64): (layers, head)}
        self._plans: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ properties

    @property
    def in_channels(self) -> int:
        return self.layers[0].weight.shape[0] // 9

    @property
    def num_features(self) -> int:
        """Channels of the last feature map (the pooled features)."""
        return self.layers[-1].weight.shape[1]

    @property
    def num_classes(self) -> int:
        """Classifier outputs; 0 for a model without a classifier."""
        return 0 if self.head.weight is None else self.head.weight.shape[0]

    # ------------------------------------------------------------------ inference

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Logits (N, classes) (pooled features (N, K) when headless) for x (N, C, H, W).

        A batch of several images is split into slices that npmobilenet's threads run through
        the whole network side by side, BLAS at one thread each (``npmobilenet.threads``);
        one image runs on BLAS's threads.
        """
        x = self._check_input(x)
        with self._lock:
            weights = self._weights(x.dtype)
            n = x.shape[0]
            per_image = self._largest_per_image(x.shape)  # decides whether to split
            min_images = -(-threads.MIN_SLICE_ELEMENTS // per_image)
            if self.runner.threads == 1 or n < 2 * min_images:  # BLAS's threads, one slice
                return self._forward_groups(x, self._group_plans(x.shape, x.dtype), weights)
            with self.runner.session() as runner:
                slices = runner.slices(n, min_images)
                if len(slices) == 1:  # splitting declined (BLAS could not be limited)
                    return self._forward_groups(x, self._group_plans(x.shape, x.dtype), weights)
                # each slice its own buffers (its own plans: a plan's layers share memory)
                plans = {lo: self._group_plans(x[lo:hi].shape, x.dtype, part=i)
                         for i, (lo, hi) in enumerate(slices)}  # fmt: skip
                parts = runner.map(
                    lambda lo, hi: self._forward_groups(x[lo:hi], plans[lo], weights),
                    n, per_image,
                )  # fmt: skip
            return np.concatenate(parts)

    def _forward_groups(self, x, plans: dict, weights) -> np.ndarray:
        """x (N, C, H, W) -> logits, :data:`GROUP` images at a time through the whole network
        (``plans``: group size -> plan, from ``_group_plans``)."""
        n = x.shape[0]
        if n <= GROUP:
            return self._forward(x, plans[n], weights)
        groups = [x[g : g + GROUP] for g in range(0, n, GROUP)]
        return np.concatenate([self._forward(xg, plans[len(xg)], weights) for xg in groups])

    def _group_plans(self, shape, dtype, part: int = 0) -> dict:
        """The plans ``_forward_groups`` uses for a batch of ``shape``: group size -> plan."""
        n = shape[0]
        sizes = {n} if n <= GROUP else {GROUP, n % GROUP or GROUP}
        return {k: self._plan((k, *shape[1:]), dtype, part) for k in sizes}

    def profile(self, x: np.ndarray) -> dict[str, float]:
        """Run one forward and return seconds spent per step kind.

        Kinds: ``first conv``, ``full conv`` (im2col + GEMM), ``depthwise``, ``pointwise GEMM``,
        ``bias+act`` (a GEMM epilogue on its own), ``bias+act+depthwise`` (a GEMM epilogue and
        the depthwise conv after it in one pass), ``bias+act+pool`` (the last epilogue),
        ``linear``.
        """
        x = self._check_input(x)
        times: dict[str, float] = {}
        last = [time.perf_counter()]

        def clock(kind):
            now = time.perf_counter()
            times[kind] = times.get(kind, 0.0) + now - last[0]
            last[0] = now

        with self._lock:
            plan, weights = self._plan(x.shape, x.dtype), self._weights(x.dtype)
            last[0] = time.perf_counter()
            self._forward(x, plan, weights, clock)
        return times

    def _forward(self, x, plan: list, weights, clock=None):
        """x (N, C, H, W) -> logits (N, classes) through the preallocated ``plan``.

        ``plan[i]`` holds layer i's arrays: ``a`` its GEMM's left operand (im2col rows
        (N, OH, OW, 9*C) or the depthwise output (N, OH, OW, C)), ``y`` its GEMM output
        (N*OH*OW, K), ``dst`` where its epilogue writes (the next 3x3 conv's zero-bordered input
        (N, OH+top+bottom, OW+left+right, K), its border that conv's padding), or the pooled
        features (N, K) after the last layer).
        """
        layers, head = weights
        src, i = x, 0
        while i < len(layers):
            rows = plan[i + 1]["rows"] if layers[i].kind == "depthwise" else 0
            if rows:  # a depthwise layer and its pointwise layer, a block of rows at a time
                src = _run_separable_blocked(layers[i], layers[i + 1], src, plan[i], plan[i + 1],
                                             rows, clock or _no_clock)  # fmt: skip
                i += 2
            elif i + 1 < len(plan) and "ring" in plan[i + 1]:
                # a GEMM layer whose bias and activation the depthwise layer after it applies
                src = _run_gemm_depthwise(layers[i], layers[i + 1], src, plan[i], plan[i + 1],
                                          clock or _no_clock)  # fmt: skip
                i += 2
            else:
                src = _run_layer(layers[i], src, plan[i], head.pool, clock or _no_clock)
                i += 1
        if head.weight is None:
            return src.copy()  # the pooled features, a new array (the buffer is reused)
        logits = src @ head.weight.T + head.bias  # (N, K) @ (K, classes): a new array
        if clock:
            clock("linear")
        return logits

    # ------------------------------------------------------------------ helpers

    def _check_input(self, x) -> np.ndarray:
        x = _checks.float_array(OP, "x", x, ndim=4)
        n, c, h, w = x.shape
        if c != self.in_channels:
            raise ValueError(
                f"{OP}: x must have {self.in_channels} channels (NCHW layout, shape (N, C, H, W)),"
                f" got shape {x.shape} with {c} channels"
            )
        if n < 1 or h < 1 or w < 1:
            raise ValueError(f"{OP}: x must have N, H and W >= 1, got shape {x.shape}")
        return np.ascontiguousarray(x)

    def _weights(self, dtype) -> tuple[tuple[Layer, ...], Head]:
        dtype = np.dtype(dtype)
        if dtype not in self._by_dtype:
            self._by_dtype[dtype] = (
                tuple(layer.astype(dtype) for layer in self.layers),
                self.head.astype(dtype),
            )
        return self._by_dtype[dtype]

    def _largest_per_image(self, shape) -> int:
        """Elements per image of the stem's arrays (its im2col rows and output), a forward's
        largest."""
        _, c, h, w = shape
        stride, k = self.layers[0].stride, self.layers[0].weight.shape[1]
        oh, ow = conv_out_size(h, stride), conv_out_size(w, stride)
        return oh * ow * c * 9 + (oh + 2) * (ow + 2) * k

    def _plan(self, shape, dtype, part: int = 0) -> list:
        """The buffers for inputs of ``shape``; ``part``: which slice of a split batch."""
        key = (tuple(shape), np.dtype(dtype), part)
        if key in self._plans:
            self._plans.move_to_end(key)
        else:
            self._plans[key] = make_plan(self.layers, key[0], key[1])
            if len(self._plans) > _MAX_PLANS:
                self._plans.popitem(last=False)
        return self._plans[key]


def make_plan(layers, shape, dtype) -> list[dict]:
    """Per layer, views ``a``, ``y``, ``dst`` (see ``FusedMobileNetV1._forward``) into three
    flat buffers: GEMM left operands, GEMM outputs, zero-bordered 3x3 inputs (bordered by the
    next 3x3 conv's padding at that size, ``pads``). Every layer reads one buffer and writes
    another, so one of each is enough, except that consecutive ``dst`` arrays alternate two
    buffers: a depthwise layer and the pointwise layer after it may run block by block
    (``_run_separable_blocked``), the pointwise layer writing while the depthwise one still
    reads. A stem whose padding is not 1 also gets ``xpad``, the input copied into a
    zero-bordered NHWC buffer."""
    n, c, h, w = shape
    shapes, pads = [], []
    for i, layer in enumerate(layers):
        one = {}
        if layer.kind in ("stem", "full", "depthwise"):
            p = _pads(layer, h, w)
            if layer.kind == "stem" and not stem_reads_nchw(layer.padding):
                one["xpad"] = (n, h + p[0] + p[1], w + p[2] + p[3], c)
            h, w = (output_size(s, 3, layer.stride, q) for s, q in ((h, p[:2]), (w, p[2:])))
            if h < 1 or w < 1:
                raise ValueError(
                    f"{OP}: x of shape {tuple(shape)} is too small: the 3x3 conv {layer.path!r}"
                    f" (stride {layer.stride}, padding {layer.padding!r}) would give a {h}x{w}"
                    " output; use a larger input"
                )
        c_in = layer.weight.shape[-1] if layer.kind == "depthwise" else layer.weight.shape[0]
        k = layer.weight.shape[-1]
        if layer.kind != "pointwise":
            one["a"] = (n, h, w, c_in)
        nxt = _pads(layers[i + 1], h, w) if i + 1 < len(layers) else None
        if layer.kind != "depthwise":
            one["y"] = (n * h * w, k)
            one["dst"] = (n, k) if nxt is None else (n, h + nxt[0] + nxt[1], w + nxt[2] + nxt[3], k)
        shapes.append(one)
        pads.append(nxt)
    writers = [one for one in shapes if "dst" in one]
    for j, one in enumerate(writers):  # "dst" then "dst2", in turn
        one["dst" if j % 2 == 0 else "dst2"] = one.pop("dst")
    flat = {}
    for role in ("a", "y", "dst", "dst2", "xpad"):  # a flat buffer per role, big enough for all
        sizes = [int(np.prod(s[role])) for s in shapes if role in s]
        if sizes:
            flat[role] = np.empty(max(sizes), dtype)
    last = shapes[-1].get("dst", shapes[-1].get("dst2"))
    pooled = np.empty(last, dtype)  # the last epilogue's output stays separate
    plan = []
    for i, one in enumerate(shapes):
        views = {r.rstrip("2"): flat[r][: int(np.prod(s))].reshape(s) for r, s in one.items()}
        if i == len(shapes) - 1:
            views["dst"] = pooled
        plan.append({**views, "pads": pads[i]})
    for i, layer in enumerate(layers):  # blocks of rows, decided once per shape
        plan[i]["rows"] = _block_rows(layer, plan[i - 1].get("a") if i else None, plan[i])
    _add_rings(layers, plan, dtype)
    return plan


def _add_rings(layers, plan: list[dict], dtype) -> None:
    """Give each depthwise layer that applies the previous GEMM's epilogue itself
    (``_run_gemm_depthwise``) its ring of three bordered input rows, ``plan[i]["ring"]``
    (3, W+left+right, C), views of one small buffer. It does so unless either GEMM beside it
    runs in blocks of rows (the blocks' epilogues write the bordered buffer, and their GEMM
    outputs share the buffer the depthwise layer would read)."""
    rings = {}
    for i in range(1, len(layers)):
        gemm, after = plan[i - 1], plan[i + 1] if i + 1 < len(plan) else {}
        if layers[i].kind != "depthwise" or layers[i - 1].kind == "depthwise":
            continue
        if not gemm["rows"] and not after.get("rows"):
            _, h, w, c = gemm["dst"].shape  # the bordered input the ring replaces
            rings[i] = (3, w, c)
    if rings:
        flat = np.empty(max(int(np.prod(s)) for s in rings.values()), dtype)
        for i, shape in rings.items():
            plan[i]["ring"] = flat[: int(np.prod(shape))].reshape(shape)


def _pads(layer: Layer, h: int, w: int) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of a 3x3 layer's input of size h x w (the conv op's rule)."""
    s = layer.stride
    return resolve_padding(OP, layer.padding, (3, 3), (1, 1), (s, s), (h, w))


def _bordered(y, b, lo, hi, dst, pads) -> None:
    """``clamp(y + b)`` into ``dst``'s interior at offset (top, left), zeros around it: the
    padding of the next 3x3 conv. A one-pixel border on every side runs the fused kernel."""
    if pads == (1, 1, 1, 1):
        bias_clamp_pad(y, b, lo, hi, dst, 1)
        return
    top, _, left, _ = pads
    n, oh, ow, _ = y.shape
    dst.fill(0)
    inner = dst[:, top : top + oh, left : left + ow]
    np.add(y, b, out=inner)
    np.clip(inner, lo, hi, out=inner)


def _no_clock(kind):
    pass


def _run_layer(layer: Layer, src, arrays, pool, clock):
    """One layer: ``src`` (NCHW input for the stem, else NHWC) -> what the next one reads."""
    dtype = src.dtype.type
    lo, hi = dtype(layer.lo), dtype(layer.hi)
    if layer.kind == "depthwise":
        depthwise3x3_nhwc(src, layer.weight, layer.bias, layer.stride, lo, hi, arrays["a"])
        clock("depthwise")
        return arrays["a"]
    rows = arrays["rows"]
    if rows:  # bordered output, and a GEMM output larger than a cache: a few rows at a time
        _run_blocked(layer, src, arrays, lo, hi, rows, clock)
        return arrays["dst"]
    y = _gemm(layer, src, arrays, clock)  # (N, OH, OW, K)
    n, oh, ow, _ = y.shape
    dst = arrays["dst"]
    if dst.ndim == 4:  # bias + activation, written into the next 3x3 conv's input interior
        _bordered(y, layer.bias, lo, hi, dst, arrays["pads"])
        clock("bias+act")
    elif pool == "avg":  # bias + activation + global average pool in one pass
        bias_clamp_mean(y.reshape(n, oh * ow, -1), layer.bias, lo, hi, dst)
        clock("bias+act+pool")
    else:  # max: clamp(. + b) is non-decreasing, so max_p clamp(y_p + b) = clamp(max_p y_p + b)
        np.clip(y.reshape(n, oh * ow, -1).max(axis=1) + layer.bias, lo, hi, out=dst)
        clock("bias+act+pool")
    return dst


def _gemm(layer: Layer, src, arrays, clock) -> np.ndarray:
    """A stem, full or pointwise layer's GEMM (after im2col for a 3x3 conv) into
    ``arrays["y"]``, before bias and activation: returned as (N, OH, OW, K)."""
    if layer.kind == "stem" and "xpad" in arrays:  # padding other than 1: copy, then im2col
        xp = arrays["xpad"]  # (N, H + top + bottom, W + left + right, C)
        top, left = _pads(layer, src.shape[2], src.shape[3])[::2]
        xp.fill(0)
        xp[:, top : top + src.shape[2], left : left + src.shape[3]] = src.transpose(0, 2, 3, 1)
        a = im2col3x3_padded(xp, layer.stride, arrays["a"])
    elif layer.kind == "stem":
        im2col3x3_nchw(src, layer.stride, arrays["a"], 0)
        a = arrays["a"]
    elif layer.kind == "full":
        a = im2col3x3_padded(src, layer.stride, arrays["a"])
    else:  # pointwise: the depthwise output is the GEMM's left operand
        a = src
    n, oh, ow, c = a.shape
    y = np.matmul(a.reshape(n * oh * ow, c), layer.weight, out=arrays["y"])  # (N*OH*OW, K)
    clock({"stem": "first conv", "full": "full conv"}.get(layer.kind, "pointwise GEMM"))
    return y.reshape(n, oh, ow, -1)


def _run_gemm_depthwise(layer: Layer, dw: Layer, src, arrays, dw_arrays, clock):
    """A GEMM layer and the depthwise layer after it: the GEMM, then its bias and activation
    and the depthwise conv in one pass (``bias_clamp_depthwise3x3``), the activation between
    them held a few rows at a time in ``dw_arrays["ring"]``. Returns the depthwise output
    ``dw_arrays["a"]`` (N, OH, OW, C)."""
    dtype = src.dtype.type
    y = _gemm(layer, src, arrays, clock)  # (N, H, W, C)
    top, _, left, _ = arrays["pads"]  # the depthwise conv's padding
    bias_clamp_depthwise3x3(y, layer.bias, dtype(layer.lo), dtype(layer.hi), top, left,
                            dw.weight, dw.bias, dw.stride, dtype(dw.lo), dtype(dw.hi),
                            dw_arrays["ring"], dw_arrays["a"])  # fmt: skip
    clock("bias+act+depthwise")
    return dw_arrays["a"]


def _block_rows(layer: Layer, a, arrays) -> int:
    """Image rows per block for a stem or pointwise layer whose GEMM input and output are
    bigger than ``BLOCKED_ABOVE * BLOCK_BYTES`` and whose epilogue writes a one-pixel zero
    border; else 0. ``a``: a pointwise layer's input (the depthwise output, N, H, W, C);
    ``arrays``: the layer's plan entry."""
    dst = arrays.get("dst")
    if layer.kind not in ("stem", "pointwise") or "xpad" in arrays or dst.ndim != 4:
        return 0
    if arrays["pads"] != (1, 1, 1, 1):
        return 0
    n, oh, ow, c = arrays["a"].shape if layer.kind == "stem" else a.shape  # the GEMM's input
    per_row = ow * (c + layer.weight.shape[1]) * arrays["y"].itemsize  # a row's input + output
    if n * oh * per_row <= BLOCKED_ABOVE * BLOCK_BYTES:
        return 0
    return min(oh, max(1, BLOCK_BYTES // per_row))


def _run_blocked(layer: Layer, src, arrays, lo, hi, rows: int, clock) -> None:
    """A stem or pointwise layer ``rows`` image rows at a time: (im2col,) GEMM and epilogue on
    one block while its GEMM output is still in cache. Writes ``arrays["dst"]`` (N, OH+2,
    OW+2, K); ``arrays["a"]`` and ``arrays["y"]`` are the blocks' scratch."""
    dst, y, w = arrays["dst"], arrays["y"], layer.weight
    n_images, oh, ow = dst.shape[0], dst.shape[1] - 2, dst.shape[2] - 2
    for n in range(n_images):
        for h0 in range(0, oh, rows):
            h1 = min(oh, h0 + rows)
            if layer.kind == "stem":  # the block's im2col rows, at the start of ``a``
                a = arrays["a"][:1, : h1 - h0]  # (1, R, OW, 9*C)
                im2col3x3_nchw(src[n : n + 1], layer.stride, a, h0)
            else:
                a = src[n, h0:h1]  # (R, OW, C): the depthwise output's rows
            yb = np.matmul(a.reshape(-1, w.shape[0]), w, out=y[: (h1 - h0) * ow])  # (R*OW, K)
            clock("first conv" if layer.kind == "stem" else "pointwise GEMM")
            top, bottom = int(h0 == 0), int(h1 == oh)
            bias_clamp_pad(yb.reshape(1, h1 - h0, ow, -1), layer.bias, lo, hi,
                           dst[n : n + 1, h0 + 1 - top : h1 + 1 + bottom], top)  # fmt: skip
            clock("bias+act")


def _run_separable_blocked(dw: Layer, pw: Layer, xp, dw_arrays, pw_arrays, rows, clock):
    """A depthwise layer and the pointwise layer after it, ``rows`` output rows at a time:
    depthwise conv, GEMM and epilogue on one block while it is in cache (``_block_rows``).

    xp (N, H+top+bottom, W+left+right, C): the depthwise layer's zero-bordered input. Writes
    ``pw_arrays["dst"]`` (N, OH+2, OW+2, K) and returns it; ``dw_arrays["a"]`` and
    ``pw_arrays["y"]`` are the blocks' scratch.
    """
    dtype, s = xp.dtype.type, dw.stride
    dst, y = pw_arrays["dst"], pw_arrays["y"]
    n_images, oh, ow, c = dw_arrays["a"].shape
    for n in range(n_images):
        for h0 in range(0, oh, rows):
            h1 = min(oh, h0 + rows)
            a = dw_arrays["a"][:1, : h1 - h0]  # (1, R, OW, C), at the start of the buffer
            depthwise3x3_nhwc(xp[n : n + 1, h0 * s : (h1 - 1) * s + 3], dw.weight, dw.bias, s,
                              dtype(dw.lo), dtype(dw.hi), a)  # fmt: skip
            clock("depthwise")
            yb = np.matmul(a.reshape(-1, c), pw.weight, out=y[: (h1 - h0) * ow])  # (R*OW, K)
            clock("pointwise GEMM")
            top, bottom = int(h0 == 0), int(h1 == oh)
            bias_clamp_pad(yb.reshape(1, h1 - h0, ow, -1), pw.bias, dtype(pw.lo), dtype(pw.hi),
                           dst[n : n + 1, h0 + 1 - top : h1 + 1 + bottom], top)  # fmt: skip
            clock("bias+act")
    return dst


def im2col3x3_padded(xp: np.ndarray, stride: int, cols: np.ndarray) -> np.ndarray:
    """3x3 patches of a zero-bordered NHWC input as GEMM rows, in place.

    xp (N, H+top+bottom, W+left+right, C) -> cols (N, OH, OW, 9*C) with
    ``cols[n, oh, ow, (kh*3 + kw)*C + c] = xp[n, oh*s + kh, ow*s + kw, c]``.
    """
    n, oh, ow, c9 = cols.shape
    c = c9 // 9
    for kh in range(3):
        for kw in range(3):
            t = kh * 3 + kw
            cols[..., t * c : (t + 1) * c] = xp[
                :,
                kh : kh + stride * (oh - 1) + 1 : stride,
                kw : kw + stride * (ow - 1) + 1 : stride,
            ]
    return cols
