"""The floor: the least time each layer type of a benchmark case can take on this machine, measured.

Run from the repository root (every case in its own fresh process, best of the rounds)::

    python benchmarks/floor.py                      # every case, a ready Markdown table
    python benchmarks/floor.py --cases train-b16-224 --compare benchmarks/results/model.json

``bench_model.py --floor`` runs the same measurement beside the cases and their breakdowns.

What the floor of each layer type is:

* **pointwise**: the sgemm calls of exactly the layer's shapes, timed with NumPy/OpenBLAS on
  preallocated operands and outputs, nothing else: forward ``Y = W @ X`` and, for training,
  ``dX = W^T @ dY`` and ``dW = dY @ X^T``. Each is timed in the layout and threading the
  package runs it (the fused engine: pixel-major ``(N*L, C) @ (C, K)``, one image on BLAS's
  threads, a batch split over the runner's threads at one BLAS thread each; training: NCHW, one
  GEMM per image, the batch split likewise, ``dW`` over the whole slice for small planes) and in
  two single-GEMM layouts over the whole batch at BLAS's full thread count, channel-major
  ``(K, C) @ (C, N*L)`` and pixel-major ``(N*L, C) @ (C, K)``; the floor is the fastest.
* **everything else** (first conv, depthwise, batch norm with its activation, pooling, linear,
  optimizer): the larger of two bounds, the bytes the pass must read and write at the streaming
  rate measured for arrays of those sizes (a Numba kernel reading and writing as many elements,
  on one thread and on two, the faster), and its FLOPs at the sgemm peak measured in the same
  process. What each pass must move is in :func:`passes`: every input read once and every
  output written once. Batch norm in training: forward, one read of x for its statistics where
  the convolution after it applies it as it reads x (the model's blocks), else two reads of x
  and one write; backward, two reads of dout and x for the sums, then two reads and a write for
  dx. Batch norm and the activations cost nothing at inference (folded into the weights; the
  clamp rides on a pass that runs anyway); the training step's activations are counted in
  batch norm, whose kernels apply them.

The floor is a bound for this design (separate BLAS calls, one pass per layer but for the
batch norms the convolutions apply), not a bound on any program: fusing more passes across
layers would lower it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import breakdown
import cases
import numba
import numpy as np
import timing

from npmobilenet import nn, ops
from npmobilenet.ops import conv
from npmobilenet.threads import MIN_SLICE_ELEMENTS, Runner

RESULTS = Path(__file__).resolve().parent / "results"
TYPES = ["first conv", "depthwise", "pointwise", "BN", "activation", "pooling", "linear",
         "optimizer"]  # fmt: skip
PHASES = ("forward", "backward")
# Rows beside the floor: the pointwise GEMMs as the package lays them out, and (training) the
# package's pointwise op timed on the same shapes.
EXTRA_ROWS = ("pointwise GEMMs, package layout", "pointwise op, ops.conv2d")
# Each case's targets: a share of the sgemm peak, a ratio to torch (None: no such target).
TARGETS = {
    "infer-b1-224": (0.75, None),
    "infer-b32-224": (0.85, None),
    "train-b16-224": (0.70, 0.5),
    "train-a0.25-32px-b64": (None, 0.5),
}
ITEM = 4  # bytes per float32 element
# Seconds to wait after a multi-threaded BLAS call before timing one-thread calls split over
# the cores: OpenBLAS's idle worker keeps spinning for a while (its THREAD_TIMEOUT), and split
# GEMMs measured at half speed 50 ms after a two-thread call, at full speed 200 ms after.
SPIN_DOWN = 0.2


# ---------------------------------------------------------------- the work of a case


@dataclass(frozen=True)
class Layer:
    """One leaf layer of a case's model: its layer type, shapes (whole batch) and mult-adds."""

    name: str
    type: str  # one of breakdown.CATEGORIES
    in_shape: tuple
    out_shape: tuple
    mult_adds: int  # summary()'s count for the whole batch


@dataclass(frozen=True)
class Gemm:
    """The three GEMMs of a pointwise layer: N images, C in, K out channels, L pixels."""

    name: str
    n: int
    c: int
    k: int
    l: int  # noqa: E741 - the shape legend's L

    def flops(self) -> int:
        """FLOPs of one of its GEMMs (forward, dx or dW: the same count)."""
        return 2 * self.n * self.c * self.k * self.l


@dataclass(frozen=True)
class Pass:
    """A memory-bound pass: elements it must read and write, and its FLOPs."""

    type: str
    phase: str  # "forward", "backward" (the optimizer's step counts as backward)
    reads: int
    writes: int
    flops: int = 0

    @property
    def bytes(self) -> int:
        return ITEM * (self.reads + self.writes)


def layers(case) -> list[Layer]:
    """The case's leaf layers in forward order, from ``MobileNetV1.summary`` of its batch."""
    model = cases.seeded_model(case)
    summary = model.summary((3, case.res, case.res), case.batch)
    modules = dict(model.named_modules())
    out, shape = [], summary.input_shape
    for row in summary.rows:
        if not row.is_leaf:
            continue
        kind = breakdown.category(nn, row.name, modules[row.name])
        if kind is not None:
            out.append(Layer(row.name, kind, tuple(shape), row.output_shape, row.mult_adds))
        shape = row.output_shape
    return out


def gemms(layer_list) -> list[Gemm]:
    """The pointwise layers as GEMM shapes."""
    out = []
    for layer in layer_list:
        if layer.type == "pointwise":
            n, c, h, w = layer.in_shape
            out.append(Gemm(layer.name, n, c, layer.out_shape[1], h * w))
    return out


def passes(layer_list, training: bool, params: int) -> list[Pass]:
    """The memory-bound passes of a forward (inference) or a training step (see the module
    docstring for what each must read and write); ``params``: the model's parameter count."""
    out = []
    for i, layer in enumerate(layer_list):
        x, y, mads = math.prod(layer.in_shape), math.prod(layer.out_shape), layer.mult_adds
        if layer.type in ("first conv", "depthwise"):
            out.append(Pass(layer.type, "forward", x, y, 2 * mads))
            if training:  # dW from dout and x; dx too for depthwise (the stem's input is data)
                dx = x if layer.type == "depthwise" else 0
                out.append(Pass(layer.type, "backward", x + y, dx, 2 * mads * (2 if dx else 1)))
        elif layer.type == "BN" and training:
            if _read_by_convolution(layer_list, i):  # it applies BN as it reads: statistics only
                out.append(Pass("BN", "forward", x, 0))
            else:
                out.append(Pass("BN", "forward", 2 * x, x))
            out.append(Pass("BN", "backward", 4 * x, x))
        elif layer.type == "pooling":
            out.append(Pass("pooling", "forward", x, y))
            if training:
                out.append(Pass("pooling", "backward", y, x))
        elif layer.type == "linear":
            weights = layer.in_shape[1] * layer.out_shape[1]
            out.append(Pass("linear", "forward", x + weights, y, 2 * mads))
            if training:  # dx = dout @ W, dW = dout^T @ x
                out.append(Pass("linear", "backward", x + y + weights, x + weights, 4 * mads))
    if training:  # SGD with momentum: read w, g, v; write w, v
        out.append(Pass("optimizer", "backward", 3 * params, 2 * params))
    return out


def _read_by_convolution(layer_list, i) -> bool:
    """Whether the batch norm ``layer_list[i]`` (and its activation) is read by a depthwise or
    pointwise convolution, which applies it as it reads (the model's blocks)."""
    later = [lay.type for lay in layer_list[i + 1 :] if lay.type != "activation"]
    return bool(later) and later[0] in ("depthwise", "pointwise")


# ---------------------------------------------------------------- measuring


@numba.njit(nogil=True, cache=True, fastmath=True)
def stream(src, dst):
    """Read every element of ``src`` (1-D) and write every element of ``dst`` (1-D), in one
    pass where both run (``dst[i] = 2 * src[i]``); returns the sum of the reads past
    ``dst``'s end (loops over whole slices: LLVM vectorises those)."""
    m = min(src.size, dst.size)
    head, rest, tail = dst[:m], src[m:], dst[m:]
    for i in range(m):
        head[i] = 2 * src[i]
    s = src.dtype.type(0)
    for i in range(rest.size):
        s += rest[i]
    for i in range(tail.size):
        tail[i] = 0
    return s


def stream_seconds(reads: int, writes: int, n_threads: int, reps: int) -> float:
    """Median seconds of :func:`stream` over ``reads`` and ``writes`` float32 elements, cut into
    ``n_threads`` parts run side by side."""
    src = np.ones(max(reads, 1), np.float32)
    dst = np.empty(writes, np.float32)
    runner = Runner(n_threads)

    def part(i, _):
        r0, r1 = reads * i // n_threads, reads * (i + 1) // n_threads
        w0, w1 = writes * i // n_threads, writes * (i + 1) // n_threads
        stream(src[r0:r1], dst[w0:w1])

    def call():
        runner.map(part, n_threads, MIN_SLICE_ELEMENTS)

    return _median(call, reps)


def _median(fn, reps: int) -> float:
    fn()  # warm-up: pages, caches, threads
    return statistics.median(timing.time_calls(fn, reps))


def memory_floor(all_passes, peak_flops: float, threads: int, reps: int) -> list[dict]:
    """Per pass: the streaming seconds (best of 1 and ``threads`` threads), its FLOPs at the
    peak, and the floor, the larger of the two. Passes of the same size are timed once."""
    timed: dict[tuple, dict] = {}
    rows = []
    for p in all_passes:
        key = (p.reads, p.writes)
        if key not in timed:
            timed[key] = {t: stream_seconds(p.reads, p.writes, t, reps)
                          for t in sorted({1, threads})}  # fmt: skip
        best = min(timed[key].values())
        compute = p.flops / peak_flops
        rows.append({**asdict(p), "bytes": p.bytes, "stream_s": best,
                     "compute_s": compute, "floor_s": max(best, compute)})  # fmt: skip
    return rows


def _random(shape, rng) -> np.ndarray:
    return rng.random(shape, dtype=np.float32)


def gemm_floor(g: Gemm, training: bool, threads: int, reps: int) -> list[dict]:
    """Seconds of the layer's GEMMs (forward; dx and dW when ``training``) in the package's
    layout and threading (``path_s``) and as one GEMM over the batch in the channel-major and
    pixel-major layouts at BLAS's thread count; ``floor_s`` is the fastest. Training rows also
    time the package's op on the same shapes (``op_s``: ``ops.conv2d_forward`` on the forward
    row, ``ops.conv2d_backward``, dx and dW together, on the dW row, 0 on the dx row)."""
    rng = np.random.default_rng(0)
    x, y = _random(g.n * g.c * g.l, rng), _random(g.n * g.k * g.l, rng)  # X (or dX), Y (or dY)
    w, nl = _random((g.k, g.c), rng), g.n * g.l
    xc, yc = x.reshape(g.c, nl), y.reshape(g.k, nl)  # channel-major views (C, N*L), (K, N*L)
    xp, yp = x.reshape(nl, g.c), y.reshape(nl, g.k)  # pixel-major views (N*L, C), (N*L, K)
    dw = np.empty((g.k, g.c), np.float32)
    single = {  # one GEMM over the whole batch: (channel-major, pixel-major)
        "forward": (lambda: np.matmul(w, xc, out=yc), lambda: np.matmul(xp, w.T, out=yp)),
        "dx": (lambda: np.matmul(w.T, yc, out=xc), lambda: np.matmul(yp, w, out=xp)),
        "dW": (lambda: np.matmul(yc, xc.T, out=dw), lambda: np.matmul(yp.T, xp, out=dw)),
    }
    rows = []
    time.sleep(SPIN_DOWN)  # BLAS's idle threads would take a core from the runner's slices
    split = training or g.n > 1  # one image runs on BLAS's threads, outside any slice
    with Runner(threads if split else 1).session() as runner:
        path = (_training_path(g, x, y, w, runner) if training
                else {"forward": _engine_path(g, x, y, w, runner)})  # fmt: skip
        path_s = {phase: _median(fn, reps) for phase, fn in path.items()}
        op_s = _op_seconds(g, x, y, w, runner, reps) if training else {}
    for phase in path:
        channel, pixel = (_median(fn, reps) for fn in single[phase])
        rows.append({"name": g.name, "phase": phase, "flops": g.flops(), "path_s": path_s[phase],
                     "channel_major_s": channel, "pixel_major_s": pixel,
                     "floor_s": min(path_s[phase], channel, pixel)})  # fmt: skip
        if training:
            rows[-1]["op_s"] = op_s.get(phase, 0.0)
    return rows


def _op_seconds(g: Gemm, x, y, w, runner, reps: int) -> dict:
    """Median seconds of ``ops.conv2d_forward`` (key "forward") and ``ops.conv2d_backward``
    (dx and dW, key "dW") on the layer's shapes, with the output arrays and the runner a
    training step passes them."""
    x4, out = x.reshape(g.n, g.c, 1, g.l), y.reshape(g.n, g.k, 1, g.l)  # (N, C, 1, L), (N, K, 1, L)
    w4 = w.reshape(g.k, g.c, 1, 1)
    dout, dx = np.ones_like(out), np.empty_like(x4)
    _, cache = ops.conv2d_forward(x4, w4, out=out, runner=runner)
    assert cache.method == "pointwise", cache.method  # the no-copy matmul, as in a model
    forward = _median(lambda: ops.conv2d_forward(x4, w4, out=out, runner=runner), reps)
    backward = _median(lambda: ops.conv2d_backward(dout, cache, dx=dx, runner=runner), reps)
    return {"forward": forward, "dW": backward}


def _ranges(runner, n: int, item_size: int) -> list[tuple[int, int]]:
    """The slices ``runner.map(fn, n, item_size)`` cuts."""
    return runner.slices(n, -(-MIN_SLICE_ELEMENTS // max(int(item_size), 1)))


def _engine_path(g: Gemm, x, y, w, runner):
    """The fused engine's call: per slice of the batch, ``(n*L, C) @ (C, K)`` into its buffer
    (one image: one GEMM on BLAS's threads, outside any slice)."""
    wt = np.ascontiguousarray(w.T)  # (C, K): the engine stores the weight this way
    xs, ys = x.reshape(g.n, g.l * g.c), y.reshape(g.n, g.l * g.k)  # per image, pixel-major
    if g.n == 1 or runner.threads == 1:
        return lambda: np.matmul(x.reshape(-1, g.c), wt, out=y.reshape(-1, g.k))

    def part(lo, hi):
        np.matmul(xs[lo:hi].reshape(-1, g.c), wt, out=ys[lo:hi].reshape(-1, g.k))

    return lambda: runner.map(part, g.n, g.l * max(g.c, g.k))


def _training_path(g: Gemm, x, y, w, runner) -> dict:
    """The training path's calls (``ops.conv``'s pointwise forward and backward): per image
    ``W @ X[n]``, ``W^T @ dY[n]``, ``dY[n] @ X[n]^T``, the batch split by ``runner``. As in
    ``ops.conv``, slices that ``conv._one_gemm_pays`` picks run the forward and dx as one GEMM
    per slice (``conv._one_gemm``, with its transposing copies), and slices that
    ``conv._batched_dweight_pays`` picks run ``dW`` as one GEMM per slice on operands laid out
    ``(K, n*L)``, ``(C, n*L)`` beforehand. dx and dW are timed apart (on large slices the op
    runs an image's dx product right after its dW product, ``conv._dweight_per_image``)."""
    x4, y4 = x.reshape(g.n, 1, g.c, g.l), y.reshape(g.n, 1, g.k, g.l)  # (N, G, C or K, L)
    w3 = w.reshape(1, g.k, g.c)  # (G, K, C)
    work = conv._pointwise_work(x4, y4)
    scratch = {lo: _dw_operands(y4[lo:hi], x4[lo:hi], conv._batched_dweight_pays(
                   hi - lo, g.l, g.k, g.c, y4[lo:hi].nbytes))
               for lo, hi in _ranges(runner, g.n, work)}  # fmt: skip

    def dweight(lo, hi):  # returns the slice's dW (batched), or its last image's product
        d2, x2, out = scratch[lo]
        if d2 is not None:
            return np.matmul(d2, x2.transpose(0, 2, 1), out=out)
        for i in range(lo, hi):
            np.matmul(y4[i], x4[i].transpose(0, 2, 1), out=out)
        return out

    def forward(lo, hi):
        if conv._one_gemm_pays(hi - lo, g.l, g.c, g.k):
            conv._one_gemm(w3, x4[lo:hi], y4[lo:hi])
        else:
            np.matmul(w3, x4[lo:hi], out=y4[lo:hi])

    def dx(lo, hi):
        if conv._one_gemm_pays(hi - lo, g.l, g.k, g.c):
            conv._one_gemm(w3.transpose(0, 2, 1), y4[lo:hi], x4[lo:hi])
        else:
            np.matmul(w3.transpose(0, 2, 1), y4[lo:hi], out=x4[lo:hi])

    return {phase: (lambda f=f: runner.map(f, g.n, work))
            for phase, f in (("forward", forward), ("dx", dx), ("dW", dweight))}  # fmt: skip


def measure(case, threads: int, reps: int) -> dict:
    """The floor of every pass and GEMM of ``case`` in this process (``worker.py --floor``)."""
    peak = timing.sgemm_gflops()
    time.sleep(SPIN_DOWN)  # before the streams, which run one thread per core
    layer_list = layers(case)
    training = case.kind == "train"
    params = sum(p.data.size for p in cases.seeded_model(case).parameters())
    mem = memory_floor(passes(layer_list, training, params), peak * 1e9, threads, reps)
    gem = [row for g in gemms(layer_list) for row in gemm_floor(g, training, threads, reps)]
    return {"case": case.name, "threads": threads, "sgemm_gflops": peak, "passes": mem,
            "gemms": gem}  # fmt: skip


# ---------------------------------------------------------------- combining and reporting


def best_of(results: list[dict]) -> dict:
    """Several processes' :func:`measure` results of one case: each time the fastest."""
    out = json.loads(json.dumps(results[0]))  # a deep copy
    out["sgemm_gflops"] = max(r["sgemm_gflops"] for r in results)
    for part in ("passes", "gemms"):
        for i, row in enumerate(out[part]):
            for key in row:
                if key.endswith("_s"):
                    row[key] = min(r[part][i][key] for r in results)
    return out


def by_type(result: dict) -> dict:
    """Floor seconds per layer type and phase; beside them, the pointwise GEMMs in the package's
    layout and (training) the package's pointwise op on the same shapes."""
    out = {t: dict.fromkeys(PHASES, 0.0) for t in [*TYPES, *EXTRA_ROWS]}
    for row in result["passes"]:
        out[row["type"]][row["phase"]] += row["floor_s"]
    for row in result["gemms"]:
        phase = "forward" if row["phase"] == "forward" else "backward"
        out["pointwise"][phase] += row["floor_s"]
        out[EXTRA_ROWS[0]][phase] += row["path_s"]
        out[EXTRA_ROWS[1]][phase] += row.get("op_s", 0.0)
    return out


def totals(result: dict) -> dict:
    """Seconds: the floor, its GEMM part (best layout; the package's layout; the package's op,
    0 for inference), its memory-bound part."""
    gemm = sum(r["floor_s"] for r in result["gemms"])
    memory = sum(r["floor_s"] for r in result["passes"])
    return {"floor": gemm + memory, "gemm": gemm, "memory": memory,
            "gemm_package": sum(r["path_s"] for r in result["gemms"]),
            "pointwise_op": sum(r.get("op_s", 0.0) for r in result["gemms"])}  # fmt: skip


def _ms(s) -> str:
    return "-" if s is None else f"{s * 1e3:.1f}" if s >= 0.01 else f"{s * 1e3:.2f}"


def _breakdown_cell(bd, kind, layer_type, phase):
    """A breakdown's seconds for a layer type and phase (None: not measured)."""
    if bd is None:
        return None
    if kind == "inference":
        return bd.get(layer_type)
    if layer_type == "optimizer":
        return bd["optimizer"] if phase == "backward" else None
    return bd[phase].get(layer_type)


def type_table(case, result: dict, breakdowns: dict | None = None) -> list[str]:
    """Markdown: per layer type, the floor beside each library's measured time (when
    ``breakdowns`` maps a library to its ``breakdown.py`` result for this case)."""
    floors, breakdowns = by_type(result), breakdowns or {}
    phases = ("forward",) if case.kind == "inference" else PHASES
    names = list(breakdowns)
    heads = ["floor", *names]
    if case.kind == "inference":
        lines = ["| layer type | " + " | ".join(heads) + " |"]
    else:
        lines = ["| layer type | " + " | ".join(f"{h} fwd / bwd" for h in heads) + " |"]
    lines.append("|---" * (len(heads) + 1) + "|")
    for t in [*TYPES, *EXTRA_ROWS]:
        if case.kind == "inference" and t in ("optimizer", EXTRA_ROWS[1]):
            continue
        cells = []
        for source in [None, *names]:
            values = [floors[t][p] if source is None
                      else _breakdown_cell(breakdowns[source], case.kind, t, p)
                      for p in phases]  # fmt: skip
            cells.append(" / ".join(_ms(v) for v in values))
        if t in EXTRA_ROWS:
            cells[1:] = [""] * len(names)
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    return lines


def verdict(case, result: dict, peak_gflops: float, measured: dict | None = None) -> list[str]:
    """Sentences: the floor and its parts, each target as a time set against the floor, and
    the measured times (``measured``: library -> seconds per call)."""
    t, flops, measured = totals(result), case.flops(), measured or {}
    share = flops / t["floor"] / (peak_gflops * 1e9)
    lines = [
        f"{case.name}: {flops / 1e9:.2f} GFLOP per call; sgemm peak {peak_gflops:.0f} GFLOP/s."
        f" Floor {_ms(t['floor'])} ms ({share:.0%} of peak): the pointwise GEMMs at the measured"
        f" rate of their shapes {_ms(t['gemm'])} ms ({_ms(t['gemm_package'])} ms in the"
        f" package's layout{_op_note(t)}), the memory-bound passes at least"
        f" {_ms(t['memory'])} ms."
    ]
    target_share, target_ratio = TARGETS.get(case.name, (None, None))
    if target_share is not None:
        need = flops / (target_share * peak_gflops * 1e9)
        lines.append(f"{target_share:.0%} of peak needs {_ms(need)} ms, {_against(need, t)}.")
    if target_ratio is not None and "torch" in measured:
        need = target_ratio * measured["torch"]
        lines.append(f"{target_ratio}x torch needs {_ms(need)} ms, {_against(need, t)}.")
    for name, seconds in measured.items():
        lines.append(f"{name}: {_ms(seconds)} ms = {seconds / t['floor']:.2f}x the floor,"
                     f" {flops / seconds / (peak_gflops * 1e9):.0%} of peak.")  # fmt: skip
    return lines


def _op_note(t: dict) -> str:
    return f"; the package's op on them {_ms(t['pointwise_op'])} ms" if t["pointwise_op"] else ""


def _against(need: float, t: dict) -> str:
    """A target's time against the floor ``t`` (:func:`totals`)."""
    if need < t["floor"]:
        return f"{need / t['floor']:.2f}x the floor: below it, out of reach of this design"
    return f"{need / t['floor']:.2f}x the floor: above it, reachable in principle"


def _dw_operands(d4, x4, batched: bool):
    """A slice's dW operands and output: ``dout`` as (G, K, n*L) and ``x`` as (G, C, n*L), laid
    out as ``ops.conv`` copies them when dW is one GEMM (None, None otherwise), and (G, K, C)."""
    n, g, k, l = d4.shape  # noqa: E741
    c = x4.shape[2]
    out = np.empty((g, k, c), np.float32)
    if not batched:
        return None, None, out
    d2 = np.ascontiguousarray(d4.transpose(1, 2, 0, 3)).reshape(g, k, n * l)
    x2 = np.ascontiguousarray(x4.transpose(1, 2, 0, 3)).reshape(g, c, n * l)
    return d2, x2, out


# ---------------------------------------------------------------- running


def run(names, threads: int, rounds: int, reps: int) -> dict:
    """Each case's floor: one fresh process per case and round (alternating), the best of them."""
    raw = timing.alternate({n: ["--floor", "--case", n, "--reps", str(reps)] for n in names},
                           rounds, threads)  # fmt: skip
    return {n: best_of([r["floor"] for r in results]) for n, results in raw.items()}


def measured_times(bench: dict, name: str) -> dict:
    """Library -> seconds per call of case ``name`` in a ``bench_model.py`` report."""
    case = bench.get("cases", {}).get(name)
    if case is None:
        return {}
    ours = "fused" if "fused" in case["variants"] else "npmobilenet"
    return {"npmobilenet": case["variants"][ours]["seconds"],
            "torch": case["variants"]["torch"]["seconds"]}  # fmt: skip


def case_breakdowns(bench: dict, name: str) -> dict | None:
    """Library -> per-layer-type breakdown of case ``name`` in a ``bench_model.py`` report."""
    bd = bench.get("breakdowns", {}).get(name)
    if bd is None:
        return None
    return {("npmobilenet" if k in ("fused", "npmobilenet") else k): v for k, v in bd.items()}


def summary_table(floors: dict, bench: dict | None = None) -> list[str]:
    """Markdown: one row per case, its floor and parts, its targets as times, the measured
    times (when ``bench``, a ``bench_model.py`` report, has them). Milliseconds."""
    bench = bench or {}
    lines = ["| case | floor (share of peak) | pointwise GEMMs | other passes | target: needs |"
             " npmobilenet | torch |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, result in floors.items():
        case, t = cases.CASES[name], totals(result)
        peak = _peak(bench, result) * 1e9
        measured = measured_times(bench, name)
        share, ratio = TARGETS.get(name, (None, None))
        needs = []
        if share is not None:
            needs.append(f"{share:.0%} of peak: {_ms(case.flops() / (share * peak))}")
        if ratio is not None and "torch" in measured:
            needs.append(f"{ratio}x torch: {_ms(ratio * measured['torch'])}")
        cells = [f"{_ms(t['floor'])} ({case.flops() / t['floor'] / peak:.0%})", _ms(t["gemm"]),
                 _ms(t["memory"]), "; ".join(needs) or "-"]  # fmt: skip
        cells += [_ms(measured.get(k)) for k in ("npmobilenet", "torch")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _peak(bench: dict, result: dict) -> float:
    """The sgemm peak (GFLOP/s) the targets are set against: the benchmark run's, when given,
    else the floor processes' own."""
    return bench.get("sgemm_peak", {}).get("gflops") or result["sgemm_gflops"]


def print_report(floors: dict, bench: dict | None = None) -> None:
    """The floor of every case as Markdown, against a benchmark report's times when given
    (whose sgemm peak then sets the targets; otherwise the floor processes' own)."""
    bench = bench or {}
    for name, result in floors.items():
        case = cases.CASES[name]
        peak = _peak(bench, result)
        print(f"\n#### {name} (floor at {result['threads']} threads, ms)\n")
        print("\n".join(type_table(case, result, case_breakdowns(bench, name))))
        print()
        print("\n".join(verdict(case, result, peak, measured_times(bench, name))))
    print("\n#### Every case against its floor (ms)\n")
    print("\n".join(summary_table(floors, bench)))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", default=",".join(cases.CASES),
                   help=f"comma-separated, from: {', '.join(cases.CASES)}")  # fmt: skip
    p.add_argument("--rounds", type=int, default=2, help="processes per case (default 2)")
    p.add_argument("--reps", type=int, default=5, help="timed calls per measurement")
    p.add_argument("--threads", type=int, default=min(os.cpu_count() or 1, 4),
                   help="threads, as bench_model.py (default: the cores, at most 4)")  # fmt: skip
    p.add_argument("--compare", help="a bench_model.py JSON report to set the floor against")
    p.add_argument("--out", default=str(RESULTS / "floor.json"), help="the JSON results file")
    args = p.parse_args(argv)
    names = args.cases.split(",")
    unknown = sorted(set(names) - set(cases.CASES))
    if unknown:
        p.error(f"unknown case(s) {unknown}; known: {', '.join(cases.CASES)}")
    print(f"load average at the start: {list(os.getloadavg())}")
    floors = run(names, args.threads, args.rounds, args.reps)
    bench = json.loads(Path(args.compare).read_text()) if args.compare else None
    print_report(floors, bench)
    report = {"machine": timing.machine(), "threads": args.threads, "rounds": args.rounds,
              "floors": floors}  # fmt: skip
    timing.write_json(args.out, report)
    print(f"\nload average at the end: {list(os.getloadavg())}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
