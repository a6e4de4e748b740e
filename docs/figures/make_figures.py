"""Regenerate every figure and generated table of the documentation site.

Run from anywhere (CI runs it before ``mkdocs build --strict``)::

    python docs/figures/make_figures.py            # everything
    python docs/figures/make_figures.py im2col     # only the named figures

The concept pictures (filter blocks, the sliding window, the 1x1 matrix multiply, the backward
data flow, the network's shapes) are drawn in ``diagrams.py`` beside this file. Every figure is
computed by the library itself: parameter counts from its layers, the im2col
matrix from its Numba kernel, the per-layer chart from ``MobileNetV1.summary()``, the timings from
its convolution op, the schedules from its schedulers. One is only copied: the per-layer-type
timing breakdown that ``benchmarks/bench_model.py`` draws (a run of minutes) is published from
``benchmarks/results/``.

Outputs go to ``docs/assets/``: PNGs (matplotlib, Agg backend, no timestamps in the metadata, so
a rerun gives the same bytes unless the data changed) and small Markdown tables that the pages
include with ``--8<--``. Only the timing table and chart change between
runs (they are measurements); everything else is deterministic.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from diagrams import DIAGRAMS  # noqa: E402  (the concept pictures, beside this file)

ASSETS = ROOT / "docs" / "assets"
PNG_META = {"Software": None}  # no matplotlib version or date: reproducible bytes

plt.rcParams.update({"figure.dpi": 100, "savefig.dpi": 110, "font.size": 10})


def save(fig, name: str) -> None:
    fig.savefig(ASSETS / name, metadata=PNG_META, bbox_inches="tight")
    plt.close(fig)
    print(f"wrote docs/assets/{name}")


def write_text(name: str, text: str) -> None:
    (ASSETS / name).write_text(text)
    print(f"wrote docs/assets/{name}")


# ---------------------------------------------------------------------------------------------
# Depthwise separable cost ratio (depthwise-separable.md)
# ---------------------------------------------------------------------------------------------


def cost_ratio() -> None:
    """Separable / standard cost against N, counted from the library's Conv2d layers."""
    from npmobilenet import nn

    def n_params(*modules):
        return sum(p.data.size for m in modules for p in m.parameters())

    m = 32
    ns = np.unique(np.geomspace(4, 1024, 40).astype(int))
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for dk, colour in ((3, "tab:blue"), (5, "tab:orange")):
        ratios = []
        for n in ns:
            std = nn.Conv2d(m, n, dk, padding=dk // 2, bias=False)
            dw = nn.Conv2d(m, m, dk, padding=dk // 2, groups=m, bias=False)
            pw = nn.Conv2d(m, n, 1, bias=False)
            ratios.append(n_params(dw, pw) / n_params(std))
        ax.plot(ns, ratios, color=colour, label=f"{dk}x{dk} kernel: 1/N + 1/{dk * dk}")
        ax.axhline(1 / dk**2, color=colour, ls="--", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("output channels N")
    ax.set_ylabel("separable cost / standard cost")
    ax.set_ylim(0, 0.35)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("Depthwise separable vs standard convolution (counted by nn.Conv2d)")
    save(fig, "cost_ratio.png")


# ---------------------------------------------------------------------------------------------
# The im2col matrix of a small input (kernels.md)
# ---------------------------------------------------------------------------------------------


def im2col_matrix() -> None:
    """Input planes and their im2col matrix, filled by the real Numba kernel."""
    from npmobilenet.kernels.im2col import im2col

    C, H, W, k, pad = 2, 4, 4, 3, 1
    x = (np.arange(C * H * W, dtype=np.float64) + 1).reshape(C, H, W)  # values 1..32
    OH, OW = H, W
    cols = np.empty((C * k * k, OH * OW))
    im2col(x, k, k, 1, 1, pad, pad, 1, 1, OH, OW, cols)

    fig = plt.figure(figsize=(11, 5.2))
    grid = fig.add_gridspec(2, 2, width_ratios=[1, 3.6], wspace=0.3, hspace=0.35)
    for c in range(C):
        ax = fig.add_subplot(grid[c, 0])
        ax.imshow(x[c], cmap="Blues", vmin=-8, vmax=C * H * W + 4)
        for (i, j), v in np.ndenumerate(x[c]):
            ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=9)
        ax.set_title(f"input channel {c}  (H=W=4)", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    ax = fig.add_subplot(grid[:, 1])
    shown = np.where(cols == 0, np.nan, cols)
    ax.imshow(shown, cmap="Blues", vmin=-8, vmax=C * H * W + 4, aspect="auto")
    for (r, col), v in np.ndenumerate(cols):
        ax.text(col, r, f"{v:.0f}" if v else "0", ha="center", va="center", fontsize=7,
                color="black" if v else "0.6")  # fmt: skip
    ax.set_yticks(range(C * k * k))
    ax.set_yticklabels([f"c{r // 9} ({r % 9 // 3},{r % 3})" for r in range(C * k * k)], fontsize=7)
    ax.set_xticks(range(OH * OW))
    ax.set_xticklabels([f"{p // OW},{p % OW}" for p in range(OH * OW)], fontsize=7)
    ax.axhline(8.5, color="black", lw=1)
    ax.set_xlabel("output pixel (oh, ow): one column each")
    ax.set_ylabel("row = channel c, kernel tap (i, j)")
    ax.set_title(
        f"im2col matrix cols, shape (C*kH*kW, OH*OW) = ({C * k * k}, {OH * OW}); "
        "3x3 kernel, padding 1, grey 0 = padding",
        fontsize=9,
    )
    save(fig, "im2col_matrix.png")


# ---------------------------------------------------------------------------------------------
# Direct loop vs im2col + GEMM, measured (kernels.md)
# ---------------------------------------------------------------------------------------------

# (label, C, K, groups, kernel, stride, H=W): MobileNet's depthwise layers, its first (dense)
# layer, a pointwise layer, and grouped and dense 3x3 layers in between.
TIMED_SHAPES = [
    ("depthwise 32 ch, 112x112", 32, 32, 32, 3, 1, 112),
    ("depthwise 64 ch, 112x112, s2", 64, 64, 64, 3, 2, 112),
    ("depthwise 256 ch, 28x28", 256, 256, 256, 3, 1, 28),
    ("depthwise 1024 ch, 7x7", 1024, 1024, 1024, 3, 1, 7),
    ("grouped 64->64, G=32, 28x28", 64, 64, 32, 3, 1, 28),
    ("grouped 64->64, G=8, 28x28", 64, 64, 8, 3, 1, 28),
    ("dense 3->32, 224x224, s2", 3, 32, 1, 3, 2, 224),
    ("dense 64->64, 28x28", 64, 64, 1, 3, 1, 28),
    ("pointwise 256->256, 28x28", 256, 256, 1, 1, 1, 28),
]
TIMED_BATCH = 2
TIMED_REPS = 5


def _best_times(fns: dict, reps: int = TIMED_REPS, budget: float = 2.0) -> dict:
    """Best-of-``reps`` seconds for each callable, run alternately so load hits all alike.

    The minimum, not the median: on a shared machine other processes only ever add time, so
    the fastest run is the best estimate of what the code itself costs.
    """
    for fn in fns.values():
        fn()  # warm-up (and Numba compilation on a cold cache)
    best = {name: float("inf") for name in fns}
    start = time.perf_counter()
    for rep in range(reps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
        if rep >= 1 and time.perf_counter() - start > budget:
            break
    return best


def _generic_direct_step(x, w, s, pad, G):
    """Forward + backward through the generic direct kernels, bypassing the 3x3 fast path."""
    from npmobilenet._geometry import output_size
    from npmobilenet.kernels.conv_direct import (
        conv2d_direct_backward_input,
        conv2d_direct_backward_weight,
        conv2d_direct_forward,
    )

    N, K, k = x.shape[0], w.shape[0], w.shape[2]
    OH = output_size(x.shape[2], k, s, pad)
    out = np.zeros((N, K, OH, OH), dtype=x.dtype)
    conv2d_direct_forward(x, w, out, s, s, pad, pad, 1, 1, G)
    dx, dw = np.zeros_like(x), np.zeros_like(w)
    conv2d_direct_backward_input(out, w, dx, s, s, pad, pad, 1, 1, G)
    conv2d_direct_backward_weight(out, x, dw, s, s, pad, pad, 1, 1, G)


def conv_timing() -> None:
    """Forward + backward time of method="direct" vs "im2col" through ops.conv2d_*.

    For depthwise 3x3 layers, ``method="direct"`` runs the specialised kernels of
    ``kernels/conv_depthwise.py``; the extra column times the generic direct loop on them.
    Everything runs on one core (the Numba kernels are serial; BLAS is limited to one thread),
    which compares the algorithms rather than the thread scheduling of a shared machine.
    """
    from npmobilenet.threads import blas_threads

    with blas_threads(1):
        rows, ratios = _conv_timing_rows()
    header = (
        f"| layer (batch {TIMED_BATCH}, float32, 3x3 unless pointwise) | per group C/G x K/G | "
        "direct ms | generic loop ms | im2col ms | im2col / direct | faster | auto picks | "
        "im2col buffer MiB |\n"
        "|---|---|---|---|---|---|---|---|---|\n"
    )
    write_text("conv_timing.md", header + "\n".join(rows) + "\n")

    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    labels = [r[0] for r in ratios]
    vals = [r[1] for r in ratios]
    colours = ["tab:green" if v > 1 else "tab:purple" for v in vals]
    ax.barh(labels[::-1], vals[::-1], color=colours[::-1])
    ax.axvline(1, color="black", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("time(im2col) / time(direct), forward + backward  (>1: direct is faster)")
    ax.set_title(f"Direct loop vs im2col + GEMM, batch {TIMED_BATCH}, float32, one core")
    ax.grid(alpha=0.3, axis="x")
    save(fig, "conv_timing.png")


def _conv_timing_rows():
    """Time every TIMED_SHAPES layer; return (markdown rows, [(label, im2col/direct)])."""
    from npmobilenet import ops
    from npmobilenet.ops.conv import choose_method

    rng = np.random.default_rng(0)
    rows, ratios = [], []
    for label, C, K, G, k, s, H in TIMED_SHAPES:
        x = rng.standard_normal((TIMED_BATCH, C, H, H), dtype=np.float32)
        w = rng.standard_normal((K, C // G, k, k), dtype=np.float32)
        pad = k // 2

        def step(method, x=x, w=w, s=s, pad=pad, G=G):
            out, cache = ops.conv2d_forward(x, w, None, s, pad, 1, G, method=method)
            ops.conv2d_backward(out, cache)

        fns = {m: (lambda m=m: step(m)) for m in ("direct", "im2col")}
        depthwise3x3 = C // G == 1 and k == 3
        if depthwise3x3:
            fns["generic"] = lambda x=x, w=w, s=s, pad=pad, G=G: _generic_direct_step(
                x, w, s, pad, G
            )
        ms = {m: 1e3 * t for m, t in _best_times(fns).items()}
        picked = choose_method(x.shape, w.shape, (s, s), (pad,) * 4, G)
        picked = "im2col" if picked == "pointwise" else picked
        winner = min(("direct", "im2col"), key=ms.get)
        ratio = ms["im2col"] / ms["direct"]
        ratios.append((label, ratio))
        cols_mb = 0.0 if k == 1 else C * k * k * (-(-H // s)) ** 2 * 4 / 2**20  # 1x1: no copy
        generic = f"{ms['generic']:.1f}" if depthwise3x3 else "="
        rows.append(
            f"| {label} | {C // G}x{K // G} | {ms['direct']:.1f} | {generic} | "
            f"{ms['im2col']:.1f} | {ratio:.2f} | {winner} | {picked} | {cols_mb:.1f} |"
        )
    return rows, ratios


# ---------------------------------------------------------------------------------------------
# MobileNetV1 per layer, and the width x resolution grid (architecture.md)
# ---------------------------------------------------------------------------------------------

TYPE_COLOURS = {
    "Conv 3x3": "tab:red",
    "Conv DW 3x3": "tab:orange",
    "Conv 1x1": "tab:blue",
    "Fully Connected": "tab:green",
}


def mobilenet_layers() -> None:
    """Params and mult-adds of every conv / linear layer, from MobileNetV1().summary()."""
    from npmobilenet.models import MobileNetV1
    from npmobilenet.models.summary import layer_type

    model = MobileNetV1()
    modules = dict(model.named_modules())
    rows = [r for r in model.summary().rows if layer_type(modules[r.name]) in TYPE_COLOURS]
    types = [layer_type(modules[r.name]) for r in rows]
    labels, block = [], 0
    for t in types:
        if t == "Conv DW 3x3":
            labels.append(f"dw{block}")
        elif t == "Conv 1x1":
            labels.append(f"pw{block}")
            block += 1
        else:
            labels.append("conv" if t == "Conv 3x3" else "fc")
    colours = [TYPE_COLOURS[t] for t in types]
    pos = np.arange(len(rows))
    fig, axes = plt.subplots(2, 1, figsize=(10, 5.6), sharex=True)
    for ax, attr, unit, title in (
        (axes[0], "params", 1e3, "parameters (thousands)"),
        (axes[1], "mult_adds", 1e6, "mult-adds (millions)"),
    ):
        ax.bar(pos, [getattr(r, attr) / unit for r in rows], color=colours)
        ax.set_ylabel(title)
        ax.grid(alpha=0.3, axis="y")
    axes[1].set_xticks(pos)
    axes[1].set_xticklabels(labels, rotation=90, fontsize=8)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in TYPE_COLOURS.values()]
    axes[0].legend(handles, list(TYPE_COLOURS), ncol=4, fontsize=8, loc="upper left")
    axes[0].set_title("MobileNetV1, alpha 1, 224x224: cost of each layer (from summary())")
    save(fig, "mobilenet_layers.png")


def width_resolution() -> None:
    """Mult-adds over alpha x resolution: the paper's Tables 6 and 7 as one grid."""
    from npmobilenet.models import MobileNetV1

    alphas = (1.0, 0.75, 0.5, 0.25)
    sizes = (224, 192, 160, 128)
    grid = np.zeros((len(alphas), len(sizes)))
    params = []
    for i, alpha in enumerate(alphas):
        model = MobileNetV1(alpha=alpha)
        for j, r in enumerate(sizes):
            s = model.summary(input_size=(3, r, r))
            grid[i, j] = s.mult_adds / 1e6
        params.append(s.total_params / 1e6)
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    ax.imshow(np.log(grid), cmap="Blues", aspect="auto")
    for (i, j), v in np.ndenumerate(grid):
        ax.text(j, i, f"{v:.0f} M", ha="center", va="center",
                color="white" if v > 150 else "black")  # fmt: skip
    ax.set_xticks(range(len(sizes)))
    ax.set_xticklabels([f"{r}x{r}" for r in sizes])
    ax.set_yticks(range(len(alphas)))
    ax.set_yticklabels([f"alpha {a}  ({p:.1f} M params)" for a, p in zip(alphas, params)])
    ax.set_xlabel("input resolution (resolution multiplier)")
    ax.set_title("MobileNetV1 mult-adds by width and resolution (from summary())", fontsize=10)
    save(fig, "width_resolution.png")


# ---------------------------------------------------------------------------------------------
# Learning-rate schedules (training.md)
# ---------------------------------------------------------------------------------------------


def lr_schedules() -> None:
    """The learning rate per step under each npmobilenet.optim.lr_scheduler schedule."""
    from npmobilenet.nn import Parameter
    from npmobilenet.optim import SGD, lr_scheduler

    steps = 100

    def trace(make):
        opt = SGD([Parameter(np.zeros(1))], lr=0.1, momentum=0.9)
        sched = make(opt)
        rates = []
        for _ in range(steps):
            rates.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return rates

    schedules = {
        "OneCycleLR(max_lr=0.1)": lambda o: lr_scheduler.OneCycleLR(o, 0.1, total_steps=steps),
        "CosineAnnealingLR(T_max=100)": lambda o: lr_scheduler.CosineAnnealingLR(o, T_max=steps),
        "StepLR(step_size=30, gamma=0.3)": lambda o: lr_scheduler.StepLR(o, 30, gamma=0.3),
        "LinearLR warm-up, then cosine": lambda o: lr_scheduler.SequentialLR(
            o,
            [
                lr_scheduler.LinearLR(o, 0.1, total_iters=10),
                lr_scheduler.CosineAnnealingLR(o, T_max=steps - 10),
            ],
            milestones=[10],
        ),  # fmt: skip
    }
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    for label, make in schedules.items():
        ax.plot(range(steps), trace(make), label=label)
    ax.set_xlabel("step (optimizer.step() calls)")
    ax.set_ylabel("learning rate")
    ax.set_title("npmobilenet.optim.lr_scheduler, base lr 0.1")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save(fig, "lr_schedules.png")


# ---------------------------------------------------------------------------------------------
# The benchmark's per-layer-type breakdown (performance.md)
# ---------------------------------------------------------------------------------------------


def benchmark_breakdown() -> None:
    """Copy the PNGs that ``benchmarks/bench_model.py`` draws into docs/assets/.

    The benchmark takes minutes, so this script does not rerun it; it publishes the figure from
    the benchmark's last committed results (``benchmarks/results/``), where the site can show it.
    """
    import shutil

    for name in ("model_breakdown.png", "model_breakdown_1thread.png"):
        src = ROOT / "benchmarks" / "results" / name
        if not src.is_file():
            print(f"  skipped: {src.relative_to(ROOT)} not found (run benchmarks/bench_model.py)")
            continue
        shutil.copyfile(src, ASSETS / name)
        print(f"wrote docs/assets/{name} (from benchmarks/results/)")


def _diagram(draw):
    """Wrap a concept picture of ``diagrams.py`` (which takes the save function) as a figure."""
    return lambda: draw(save)


FIGURES = {
    **{name: _diagram(draw) for name, draw in DIAGRAMS.items()},
    "cost_ratio": cost_ratio,
    "im2col": im2col_matrix,
    "conv_timing": conv_timing,
    "mobilenet_layers": mobilenet_layers,
    "width_resolution": width_resolution,
    "lr_schedules": lr_schedules,
    "benchmark_breakdown": benchmark_breakdown,
}


def main(argv: list[str]) -> int:
    ASSETS.mkdir(parents=True, exist_ok=True)
    names = argv or list(FIGURES)
    unknown = [n for n in names if n not in FIGURES]
    if unknown:
        print(f"make_figures: unknown figure(s) {unknown}; choose from {list(FIGURES)}")
        return 2
    for name in names:
        t0 = time.perf_counter()
        FIGURES[name]()
        print(f"  {name}: {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
