"""Per-layer-type time of MobileNetV1 in npmobilenet and PyTorch (run by ``worker.py``).

Layer types: first conv, depthwise, pointwise, BN, activation, pooling, linear.

* **Batch-1 inference forward.** npmobilenet: the fused engine's own ``profile()`` (its steps
  mapped onto the layer types: BN is folded away, activations are fused into the depthwise
  kernel and into the bias pass after each pointwise GEMM). torch: forward pre/post hooks on its
  leaf modules, eval mode, ``no_grad``.
* **Training step, forward and backward.** npmobilenet: the ``forward``, ``forward_act``,
  ``forward_act_coefficients``, ``backward`` and ``recompute_output`` methods of the leaf
  modules' classes are wrapped with timers for the step (class attributes, restored
  afterwards; a call made inside another timed call is not counted twice). Not on the
  instances: a ``forward`` or ``backward`` set on an instance is a user's own, which the model
  then calls as it is instead of fusing it with its neighbours (``nn.module.is_exactly``). In
  MobileNetV1's blocks batch norm and its activation are one op, so our "activation" is ~0;
  where the convolution after a batch norm applies it as it reads
  (``forward_act_coefficients``: the statistics only), the apply is timed with that
  convolution, so our BN forward is the statistics pass alone. ``recompute_output`` (batch
  norm's output computed again in backward, for the pointwise convolution that reads it) is
  timed as BN backward too. torch: forward pre/post
  hooks and ``register_full_backward_pre_hook`` / ``register_full_backward_hook`` on its leaf
  modules. torch does not compute the first conv's input gradient (the image does not require
  grad): its full backward hook then fires as soon as the output gradient is known, so the first
  conv's backward is timed from that moment to the end of ``loss.backward()``.
  "other" is the rest of each phase: the loss and the Python glue between layers (forward:
  forward + loss minus the layers; backward: loss backward + model backward minus the layers);
  "optimizer" is ``zero_grad`` + ``step``. Hooks and timers add their own overhead, so the
  step totals here are a little above the benchmark's.

Timings are medians over steps (each category separately), in seconds.
"""

from __future__ import annotations

import functools
import statistics
import time
import warnings

import numpy as np

CATEGORIES = ["first conv", "depthwise", "pointwise", "BN", "activation", "pooling", "linear"]
TRAIN_ROWS = [*CATEGORIES, "other"]  # per phase (forward, backward)

# The fused engine's steps -> the layer types (BN is folded away; activations are fused into
# the depthwise kernel and the pointwise epilogue, which also does the pooling at the end; a
# GEMM epilogue done inside the depthwise kernel after it counts as depthwise).
OURS_STEP_CATEGORY = {
    "first conv": "first conv",
    "depthwise": "depthwise",
    "bias+act+depthwise": "depthwise",
    "pointwise GEMM": "pointwise",
    "bias+act": "activation",
    "bias+act+pool": "pooling",
    "linear": "linear",
}


# ---------------------------------------------------------------- layer types


def category(nn, name, m):
    """The layer type of a leaf module, or None (Flatten, Dropout). ``nn`` is the module's
    library, ``npmobilenet.nn`` or ``torch.nn``: the layer classes have the same names."""
    if isinstance(m, nn.Conv2d):
        if name.startswith("first_conv"):
            return "first conv"
        if m.groups > 1:
            return "depthwise"
        return "pointwise" if tuple(m.kernel_size) == (1, 1) else None
    if isinstance(m, nn.BatchNorm2d):
        return "BN"
    if isinstance(m, (nn.ReLU, nn.ReLU6)):
        return "activation"
    if isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
        return "pooling"
    if isinstance(m, nn.Linear):
        return "linear"
    return None


def _torch_leaves(torch, tmodel):
    for name, m in tmodel.named_modules():
        cat = category(torch.nn, name, m)
        if cat is not None and next(m.children(), None) is None:
            yield cat, m


# ---------------------------------------------------------------- inference, batch 1


def infer_ours(engine, x, reps):
    """Per-category seconds of the fused engine's forward (median of ``reps`` profiles)."""
    runs = [engine.profile(x) for _ in range(reps)]
    out = dict.fromkeys(CATEGORIES, 0.0)
    for step, cat in OURS_STEP_CATEGORY.items():
        out[cat] += statistics.median(r.get(step, 0.0) for r in runs)
    return out


def infer_torch(torch, tmodel, x, reps):
    """Per-category seconds of torch's eval forward, from forward pre/post hooks on leaf modules."""
    acc, start, handles = dict.fromkeys(CATEGORIES, 0.0), {}, []
    for cat, m in _torch_leaves(torch, tmodel):

        def pre(mod, args):
            start[id(mod)] = time.perf_counter()

        def post(mod, args, out, _cat=cat):
            acc[_cat] += time.perf_counter() - start[id(mod)]

        handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    runs = []
    xt = torch.from_numpy(x)
    try:
        with torch.no_grad():
            for _ in range(reps + 1):  # the first is a warm-up
                for k in acc:
                    acc[k] = 0.0
                tmodel(xt)
                runs.append(dict(acc))
    finally:
        for h in handles:
            h.remove()
    return {k: statistics.median(r[k] for r in runs[1:]) for k in CATEGORIES}


# ---------------------------------------------------------------- training step


def _run_steps(step, fwd, bwd, reps, finish=None):
    """Run ``reps + 1`` instrumented steps (the first discarded); per-step phase/category times.

    ``step(clock)`` calls ``clock(phase)`` after each phase ("zero_grad", "forward", "backward",
    "step"); ``fwd`` / ``bwd`` are the per-category accumulators the instruments add to;
    ``finish(marks)`` completes them after a step (absolute phase end times in ``marks``).
    """
    runs = []
    for _ in range(reps + 1):
        for acc in (fwd, bwd):
            for k in acc:
                acc[k] = 0.0
        marks = {}

        def clock(phase, marks=marks):
            marks[phase] = time.perf_counter()

        t0 = time.perf_counter()
        step(clock)
        if finish is not None:
            finish(marks)
        f_total = marks["forward"] - marks["zero_grad"]
        b_total = marks["backward"] - marks["forward"]
        run = {f"forward {k}": v for k, v in fwd.items()}
        run.update({f"backward {k}": v for k, v in bwd.items()})
        run["forward other"] = f_total - sum(fwd.values())
        run["backward other"] = b_total - sum(bwd.values())
        run.update(
            {
                "forward total": f_total,
                "backward total": b_total,
                "optimizer": (marks["zero_grad"] - t0) + (marks["step"] - marks["backward"]),
                "step": marks["step"] - t0,
            }
        )
        runs.append(run)
    med = {k: statistics.median(r[k] for r in runs[1:]) for k in runs[0]}
    return {
        "forward": {k: med[f"forward {k}"] for k in [*TRAIN_ROWS, "total"]},
        "backward": {k: med[f"backward {k}"] for k in [*TRAIN_ROWS, "total"]},
        "optimizer": med["optimizer"],
        "step": med["step"],
    }


def _timer(fn, accs, cats, depth):
    """The method ``fn`` with its wall time added to ``accs[cats[id(self)]]`` (outermost timed
    call only; the instances not in ``cats`` untimed). Keeps ``fn``'s signature
    (``functools.wraps``), whose parameter names decide what a container passes."""

    @functools.wraps(fn)
    def timed(self, *args, **kwargs):
        cat = cats.get(id(self))
        if cat is None or depth[0]:
            return fn(self, *args, **kwargs)
        depth[0] += 1
        t = time.perf_counter()
        try:
            return fn(self, *args, **kwargs)
        finally:
            accs[cat] += time.perf_counter() - t
            depth[0] -= 1

    return timed


def train_ours(model, step, reps):
    """Per-category forward and backward seconds of npmobilenet's training ``step``.

    ``model``: the ``MobileNetV1`` that ``step(clock)`` trains. The ``forward``,
    ``forward_act``, ``forward_act_coefficients``, ``backward`` and ``recompute_output`` of its
    leaf modules' classes get a timing wrapper, restored at the end.
    """
    from npmobilenet import nn as npnn

    fwd, bwd = dict.fromkeys(CATEGORIES, 0.0), dict.fromkeys(CATEGORIES, 0.0)
    depth, patched, cats = [0], [], {}
    for name, m in model.named_modules():
        cat = category(npnn, name, m)
        if cat is not None and next(m.children(), None) is None:
            cats[id(m)] = cat
    classes = {type(m) for _, m in model.named_modules() if id(m) in cats}
    try:
        for cls in classes:
            for attr, acc in (("forward", fwd), ("forward_act", fwd),
                              ("forward_act_coefficients", fwd), ("backward", bwd),
                              ("recompute_output", bwd)):  # fmt: skip
                fn = getattr(cls, attr, None)
                if fn is not None:
                    patched.append((cls, attr, cls.__dict__.get(attr)))
                    setattr(cls, attr, _timer(fn, acc, cats, depth))
        return _run_steps(step, fwd, bwd, reps)
    finally:
        for cls, attr, own in reversed(patched):
            if own is None:
                delattr(cls, attr)  # it was inherited
            else:
                setattr(cls, attr, own)


def train_torch(torch, tmodel, step, reps):
    """Per-category forward and backward seconds of torch's training ``step``, from hooks.

    A module whose inputs need no gradient (the first conv) gets its full backward hook called
    with ``grad_input`` all None as soon as its output gradient exists; its backward is then
    timed from that moment to the end of the backward phase.
    """
    fwd, bwd = dict.fromkeys(CATEGORIES, 0.0), dict.fromkeys(CATEGORIES, 0.0)
    f_start, b_start, open_ended, handles = {}, {}, [], []
    for cat, m in _torch_leaves(torch, tmodel):

        def pre(mod, args):
            f_start[id(mod)] = time.perf_counter()

        def post(mod, args, out, _cat=cat):
            fwd[_cat] += time.perf_counter() - f_start[id(mod)]

        def bpre(mod, grad_output):
            b_start[id(mod)] = time.perf_counter()

        def bpost(mod, grad_input, grad_output, _cat=cat):
            if all(g is None for g in grad_input):  # no input gradient: see the docstring
                open_ended.append((_cat, b_start[id(mod)]))
            else:
                bwd[_cat] += time.perf_counter() - b_start[id(mod)]

        handles += [
            m.register_forward_pre_hook(pre),
            m.register_forward_hook(post),
            m.register_full_backward_pre_hook(bpre),
            m.register_full_backward_hook(bpost),
        ]

    def finish(marks):
        for cat, t in open_ended:
            bwd[cat] += marks["backward"] - t
        open_ended.clear()

    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Full backward hook is firing", UserWarning)
            return _run_steps(step, fwd, bwd, reps, finish)
    finally:
        for h in handles:
            h.remove()


# ---------------------------------------------------------------- printing and the chart


def print_inference(breakdown):
    names = list(breakdown)
    print("per-layer-type time, inference, batch 1, 224, float32 (ms, median):")
    print(f"  {'layer type':<12}" + "".join(f"{n:>22}" for n in names))
    for c in CATEGORIES:
        print(f"  {c:<12}" + "".join(f"{breakdown[n][c] * 1e3:>22.3f}" for n in names))
    print(
        "  (npmobilenet: BN folded into the weights = 0; 'activation' = the bias+act pass after"
        " a GEMM not followed by a depthwise conv (the others' is inside 'depthwise');"
        " 'pooling' = the last one, fused with the pool)"
    )


TRAIN_NOTES = [
    "npmobilenet's BN and activation are one op, so its 'activation' is ~0; between library"
    " blocks the convolutions apply them as they read (timed with the convolutions), and BN"
    " forward is the statistics pass",
    "neither library computes the first conv's input gradient (torch: the input does not"
    " require grad; npmobilenet: backward(..., input_grad=False))",
    "other = the loss and the Python glue of the phase; optimizer = zero_grad + step;"
    " hooks and timers add overhead, so these totals exceed the benchmark's step time",
]


def print_training(breakdown, batch, reps):
    """The table: per layer type, fwd / bwd / total ms of each library."""
    names = list(breakdown)
    print(
        f"per-layer-type time, training step, batch {batch}, 224, float32 (ms, median of {reps}):"
    )
    head = f"  {'layer type':<18}" + "".join(
        f"{n + ' fwd':>17}{'bwd':>9}{'total':>9}" for n in names
    )
    print(head)
    for row in TRAIN_ROWS:
        line = f"  {row:<18}"
        for n in names:
            f, b = breakdown[n]["forward"][row], breakdown[n]["backward"][row]
            line += f"{f * 1e3:>17.1f}{b * 1e3:>9.1f}{(f + b) * 1e3:>9.1f}"
        print(line)
    print(f"  {'optimizer':<18}" + "".join(
        f"{'-':>17}{'-':>9}{breakdown[n]['optimizer'] * 1e3:>9.1f}" for n in names
    ))  # fmt: skip
    line = f"  {'step':<18}"
    for n in names:
        d = breakdown[n]
        line += f"{d['forward']['total'] * 1e3:>17.1f}{d['backward']['total'] * 1e3:>9.1f}"
        line += f"{d['step'] * 1e3:>9.1f}"
    print(line)
    for note in TRAIN_NOTES:
        print(f"  ({note})")


def plot(inference, training, path, batch=16):
    """One PNG: batch-1 inference per layer type, and training fwd/bwd per layer type.

    Either breakdown may be None (its panel is left out); returns the path, or None when
    matplotlib is missing or there is nothing to draw.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    panels = [p for p in (("inference", inference), ("training", training)) if p[1]]
    if not panels:
        return None
    widths = [len(CATEGORIES) if k == "inference" else len(TRAIN_ROWS) + 1 for k, _ in panels]
    fig, axes = plt.subplots(
        1, len(panels), figsize=(6.5 * len(panels), 4.6), width_ratios=widths, squeeze=False
    )
    colors = ["C0", "C1", "C2", "C3"]
    for ax, (kind, data) in zip(axes[0], panels):
        if kind == "inference":
            width = 0.8 / len(data)
            xs = np.arange(len(CATEGORIES))
            for i, (label, values) in enumerate(data.items()):
                ax.bar(xs + (i - (len(data) - 1) / 2) * width,
                       [values[c] * 1e3 for c in CATEGORIES], width, label=label,
                       color=colors[i])  # fmt: skip
            ax.set_xticks(xs, CATEGORIES, rotation=30, ha="right")
            ax.set_ylabel("ms per forward (median)")
            ax.set_title("inference, batch 1, 224x224: forward")
        else:
            rows = [*TRAIN_ROWS, "optimizer"]
            width = 0.8 / len(data)
            xs = np.arange(len(rows))
            for i, (label, d) in enumerate(data.items()):
                pos = xs + (i - (len(data) - 1) / 2) * width
                f = [d["forward"].get(r, 0.0) * 1e3 for r in TRAIN_ROWS] + [d["optimizer"] * 1e3]
                b = [d["backward"].get(r, 0.0) * 1e3 for r in TRAIN_ROWS] + [0.0]
                ax.bar(pos, f, width, color=colors[i], label=f"{label} forward")
                ax.bar(pos, b, width, bottom=f, color=colors[i], alpha=0.45, hatch="//",
                       edgecolor="white", label=f"{label} backward")  # fmt: skip
            ax.set_xticks(xs, rows, rotation=30, ha="right")
            ax.set_ylabel("ms per step (median)")
            ax.set_title(f"training step, batch {batch}, 224x224: forward + backward")
            ax.set_xlabel("npmobilenet's BN includes the ReLU fused into it", fontsize=8)
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("MobileNetV1, float32: time per layer type")
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)
    return str(path)
