"""npmobilenet vs PyTorch on whole-model MobileNetV1: inference (and training steps), side by side.

Run from the repository root::

    python benchmarks/bench_model.py                 # every case, ~3-6 minutes on 2 cores
    python benchmarks/bench_model.py --quick         # fewer repetitions, no memory/ablation
    python benchmarks/bench_model.py --cases infer-b1-224,infer-b32-224 --json out.json
    python benchmarks/bench_model.py --ablation      # also: what each optimisation buys

It prints a table (median ms of npmobilenet and torch, their ratio and the target, GFLOP/s and
share of the sgemm peak measured in the same run), a per-layer-type breakdown of batch-1
inference, first-call latency (import + first forward in a fresh process, warm and cold Numba
cache), and writes everything to JSON (``--json``, default ``benchmarks/results/model.json``) plus
a PNG bar chart of the breakdown when matplotlib is installed (``--png``).

**How it times.** Both libraries run in this one process on identical weights (the seed-shaped
torch model, its state_dict folded into ``FusedMobileNetV1``), in alternating *blocks*: each block
sleeps ``--pause`` seconds, runs one discarded warm-up call, then ``--reps`` timed calls; blocks
alternate npmobilenet/torch (ABBA order) for ``--rounds`` rounds; medians are reported. Blocks
and pauses matter on this 2-core machine: OpenBLAS's and PyTorch's OpenMP worker threads spin for
a while after each call, and a call made while the other library's threads still spin is slowed
(measured: torch 1.4x to 6x slower right after an npmobilenet call). The machine's load average
is recorded with the results: other processes on the machine slow multi-threaded BLAS the most.

Cases live in the ``CASES`` registry below: inference cases use the fused engine; training-step
cases (forward, cross-entropy, backward, SGD ``p -= lr * grad``) use ``npmobilenet.MobileNetV1``
against the same torch model in train mode. ``--memory`` (on by default without ``--quick``)
measures peak RSS of a batch-32, 224 training step for each library in its own subprocess.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # torch_reference: the seed-shaped torch model

from npmobilenet import threads  # noqa: E402
from npmobilenet.fast import FusedMobileNetV1  # noqa: E402

# ---------------------------------------------------------------- arithmetic


def mult_adds(alpha=1.0, res=224, classes=1000, in_ch=3):
    """Mult-adds of one MobileNetV1 forward (convolutions and fc), for one image."""
    chans = [int(c * alpha) for c in (32, 64, 128, 128, 256, 256, *[512] * 6, 1024, 1024)]
    strides = [1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1]
    h = w = (res - 1) // 2 + 1
    total = h * w * chans[0] * in_ch * 9
    for i, s in enumerate(strides):
        h, w = (h - 1) // s + 1, (w - 1) // s + 1
        total += h * w * chans[i] * 9 + h * w * chans[i] * chans[i + 1]
    return total + chans[-1] * classes


def sgemm_peak(n=2048, reps=5):
    """numpy float32 GEMM throughput in GFLOP/s (median of ``reps`` n^3 matmuls)."""
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    c = np.empty_like(a)
    np.matmul(a, a, out=c)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        np.matmul(a, a, out=c)
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times) / 1e9


# ---------------------------------------------------------------- timing


def timed_blocks(fns: dict, rounds: int, reps: int, pause: float) -> dict:
    """Seconds per call of each function: alternating blocks (ABBA), warm-up call discarded."""
    times = {name: [] for name in fns}
    names = list(fns)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            time.sleep(pause)
            fns[name]()  # warm-up: wakes this library's thread pool; not timed
            for _ in range(reps):
                t = time.perf_counter()
                fns[name]()
                times[name].append(time.perf_counter() - t)
    return times


# ---------------------------------------------------------------- models


def seed_torch_model(torch, alpha, classes, in_ch=3, seed=0):
    """The seed-shaped torch model with non-trivial BN statistics (eval mode)."""
    from torch_reference import build_seed_mobilenet

    torch.manual_seed(seed)
    model = build_seed_mobilenet(torch, alpha, classes, in_ch)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(0.2 * torch.randn(n, generator=g))
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))
                m.weight.copy_(0.5 + torch.rand(n, generator=g))
                m.bias.copy_(0.2 * torch.randn(n, generator=g))
    return model.eval()


def numpy_state(model):
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


@dataclass
class Case:
    """One benchmark case: what to run, at which size, and the target ratio (ours / torch)."""

    name: str
    kind: str  # "inference" or "train"
    batch: int
    res: int
    alpha: float = 1.0
    classes: int = 1000
    target: float | None = None
    quick: bool = True  # included in --quick runs
    notes: str = ""
    max_rounds: int | None = None  # caps for slow cases (seconds per call)
    max_reps: int | None = None
    flops_per_call: float = field(init=False, default=0.0)

    def __post_init__(self):
        forward = 2 * mult_adds(self.alpha, self.res, self.classes) * self.batch
        self.flops_per_call = forward * (3 if self.kind == "train" else 1)  # bwd ~ 2x fwd

    def build(self, torch):
        """Return (ours, theirs): two zero-argument callables doing the same work."""
        rng = np.random.default_rng(0)
        x = rng.standard_normal((self.batch, 3, self.res, self.res), dtype=np.float32)
        tmodel = seed_torch_model(torch, self.alpha, self.classes)
        if self.kind == "inference":
            return _inference_pair(torch, tmodel, x)
        y = rng.integers(0, self.classes, self.batch)
        return _train_pair(torch, tmodel, x, y, self.alpha, self.classes)


def _inference_pair(torch, tmodel, x):
    engine = FusedMobileNetV1.from_state_dict(numpy_state(tmodel))
    xt = torch.from_numpy(x)
    with torch.no_grad():
        ref = tmodel(xt).numpy()
    err = np.abs(engine(x) - ref).max() / max(np.abs(ref).max(), 1e-30)
    if err > 1e-4:
        raise AssertionError(f"fused engine disagrees with torch: relative error {err:.2e}")

    def theirs():
        with torch.no_grad():
            return tmodel(xt)

    return (lambda: engine(x)), theirs


def _train_pair(torch, tmodel, x, y, alpha, classes, lr=1e-3):
    from npmobilenet import ops
    from npmobilenet.models import MobileNetV1

    model = MobileNetV1(alpha, classes, seed=0)
    model.load_state_dict(numpy_state(tmodel))
    model.train()
    tmodel.train()
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)

    def ours():
        model.zero_grad()
        loss, cache = ops.cross_entropy_forward(model.forward(x), y)
        model.backward(ops.cross_entropy_backward(np.float32(1.0), cache))
        for p in model.parameters():
            p.data -= lr * p.grad
        return loss

    def theirs():
        tmodel.zero_grad()
        loss = torch.nn.functional.cross_entropy(tmodel(xt), yt)
        loss.backward()
        with torch.no_grad():
            for p in tmodel.parameters():
                p -= lr * p.grad
        return loss

    return ours, theirs


CASES = [
    Case("infer-b1-224", "inference", 1, 224, target=0.5, notes="and >= 35% of sgemm peak"),
    Case("infer-b8-224", "inference", 8, 224, target=None),
    Case("infer-b32-224", "inference", 32, 224, target=0.8),
    Case("train-b16-224", "train", 16, 224, target=1.0, quick=False, max_rounds=2, max_reps=2),
    Case("train-a0.25-32px-b64", "train", 64, 32, alpha=0.25, classes=10, target=1.0),
]


# ---------------------------------------------------------------- per-layer breakdown

CATEGORIES = ["first conv", "depthwise", "pointwise", "BN", "activation", "pooling", "linear"]
# The fused engine's steps -> the categories (BN is folded away; activations are fused
# into the depthwise kernel and the pointwise epilogue, which also does the pooling at the end).
OURS_STEP_CATEGORY = {
    "first conv": "first conv",
    "depthwise": "depthwise",
    "pointwise GEMM": "pointwise",
    "pointwise bias+act": "activation",
    "pointwise bias+act+pool": "pooling",
    "linear": "linear",
}


def ours_breakdown(engine, x, reps):
    runs = [engine.profile(x) for _ in range(reps)]
    out = dict.fromkeys(CATEGORIES, 0.0)
    for step, cat in OURS_STEP_CATEGORY.items():
        out[cat] += statistics.median(r.get(step, 0.0) for r in runs)
    return out


def torch_breakdown(torch, tmodel, x, reps):
    """Per-category time of torch's eval forward, from forward pre/post hooks on leaf modules."""
    nn = torch.nn

    def category(name, m):
        if isinstance(m, nn.Conv2d):
            if name.startswith("first_conv"):
                return "first conv"
            return "depthwise" if m.groups > 1 else "pointwise"
        if isinstance(m, nn.BatchNorm2d):
            return "BN"
        if isinstance(m, (nn.ReLU, nn.ReLU6)):
            return "activation"
        if isinstance(m, nn.AdaptiveAvgPool2d):
            return "pooling"
        if isinstance(m, nn.Linear):
            return "linear"
        return None

    acc, start, handles = dict.fromkeys(CATEGORIES, 0.0), {}, []
    for name, m in tmodel.named_modules():
        cat = category(name, m)
        if cat is None:
            continue

        def pre(mod, args):
            start[id(mod)] = time.perf_counter()

        def post(mod, args, out, _cat=cat):
            acc[_cat] += time.perf_counter() - start[id(mod)]

        handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    runs = []
    xt = torch.from_numpy(x)
    try:
        with torch.no_grad():
            for _ in range(reps + 1):
                for k in acc:
                    acc[k] = 0.0
                tmodel(xt)
                runs.append(dict(acc))
    finally:
        for h in handles:
            h.remove()
    return {k: statistics.median(r[k] for r in runs[1:]) for k in CATEGORIES}


def plot_breakdown(breakdown, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.4
    xs = np.arange(len(CATEGORIES))
    for i, (label, values) in enumerate(breakdown.items()):
        ax.bar(xs + (i - 0.5) * width, [values[c] * 1e3 for c in CATEGORIES], width, label=label)
    ax.set_xticks(xs, CATEGORIES)
    ax.set_ylabel("ms per forward (median)")
    ax.set_title("MobileNetV1 inference, batch 1, 224x224, float32: time per layer type")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return str(path)


# ---------------------------------------------------------------- first-call latency

FIRST_CALL = textwrap.dedent(
    """
    import time
    t0 = time.perf_counter()
    import numpy as np
    import npmobilenet
    from npmobilenet.models import MobileNetV1
    from npmobilenet.fast import FusedMobileNetV1
    t_import = time.perf_counter() - t0
    model = MobileNetV1(seed=0).eval()
    x = np.zeros((1, 3, 224, 224), np.float32)
    t = time.perf_counter(); engine = FusedMobileNetV1.from_model(model); engine(x)
    t_engine = time.perf_counter() - t
    t = time.perf_counter(); model.forward(x); t_model = time.perf_counter() - t
    print(t_import, t_engine, t_model, time.perf_counter() - t0)
    """
)


def first_call_latency():
    """Import + first forward in fresh processes: warm Numba cache, then a cold (empty) one."""
    env = dict(os.environ)
    results = {}
    run = [sys.executable, "-c", FIRST_CALL]
    subprocess.run(run, env=env, check=True, capture_output=True, cwd=ROOT)  # warm the cache
    for label, cache_dir in (("warm cache", None), ("cold cache", tempfile.mkdtemp())):
        e = dict(env, NUMBA_CACHE_DIR=cache_dir) if cache_dir else env
        out = subprocess.run(run, env=e, check=True, capture_output=True, text=True, cwd=ROOT)
        t_import, t_engine, t_model, total = map(float, out.stdout.split())
        results[label] = dict(
            import_s=t_import, engine_first_forward_s=t_engine, model_first_forward_s=t_model,
            total_s=total,
        )  # fmt: skip
    return results


# ---------------------------------------------------------------- peak memory

MEMORY = textwrap.dedent(
    """
    import sys
    import numpy as np
    lib, batch, res = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

    def status_mib(key):  # VmRSS (now) or VmHWM (peak) of this process, from /proc
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) / 1024 for line in f if line.startswith(key))

    if lib == "npmobilenet":
        from npmobilenet import ops
        from npmobilenet.models import MobileNetV1

        model = MobileNetV1(seed=0)

        def step(x, y):
            model.zero_grad()
            loss, cache = ops.cross_entropy_forward(model.forward(x), y)
            model.backward(ops.cross_entropy_backward(np.float32(1.0), cache))
            for p in model.parameters():
                p.data -= 1e-3 * p.grad
    else:
        import torch
        torch.set_num_threads(2)
        sys.path.insert(0, "tests")
        from torch_reference import build_seed_mobilenet

        model = build_seed_mobilenet(torch)

        def step(x, y):
            model.zero_grad()
            logits = model(torch.from_numpy(x))
            loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(y))
            loss.backward()
            with torch.no_grad():
                for p in model.parameters():
                    p -= 1e-3 * p.grad

    rng = np.random.default_rng(0)
    step(rng.standard_normal((2, 3, 32, 32), dtype=np.float32), np.array([1, 2]))  # warm-up
    x = rng.standard_normal((batch, 3, res, res), dtype=np.float32)
    y = rng.integers(0, 1000, batch)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak (VmHWM) to the current RSS
    except OSError:
        pass
    before = status_mib("VmHWM:")
    step(x, y)
    print(before, status_mib("VmHWM:"))
    """
)


def training_peak_memory(batch=32, res=224):
    """Peak RSS (MiB) of one training step, each library alone in a fresh process.

    Reads Linux's VmHWM (peak resident set) from /proc, reset just before the step (``ru_maxrss``
    would not do: Linux carries it over from the parent process across exec).
    ``rss_before_mib``: resident after import, model construction, a small warm-up step (Numba
    compilation, allocator pools) and the batch; ``step_growth_mib``: how far the step pushed the
    peak above that.
    """
    out = {}
    for lib in ("npmobilenet", "torch"):
        res_ = subprocess.run(
            [sys.executable, "-c", MEMORY, lib, str(batch), str(res)],
            capture_output=True, text=True, cwd=ROOT,
        )  # fmt: skip
        if res_.returncode != 0:
            out[lib] = dict(error=res_.stderr.strip().splitlines()[-1:])
            continue
        before, after = map(float, res_.stdout.split())
        out[lib] = dict(rss_before_mib=before, rss_peak_mib=after, step_growth_mib=after - before)
    return out


# ---------------------------------------------------------------- ablation


def ablation(torch, rounds, reps, pause):
    """Batch-1 224 inference, one optimisation at a time, plus the thread set-ups."""
    import ablation as ab

    import npmobilenet.fast.engine as eng_mod

    tmodel = seed_torch_model(torch, 1.0, 1000)
    state = numpy_state(tmodel)
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224), dtype=np.float32)
    engine = FusedMobileNetV1.from_state_dict(state)
    fresh = FusedMobileNetV1.from_state_dict(state)
    fresh.reuse_buffers = False
    spec = ab.layer_spec(state)
    unfolded, folded = ab.cast_spec(spec, np.float32, False), ab.cast_spec(spec, np.float32, True)
    from npmobilenet.models import MobileNetV1

    model = MobileNetV1(seed=0)
    model.load_state_dict(state)
    model.eval()
    variants = {
        "npmobilenet.MobileNetV1 eval forward (reference ops, NCHW)": lambda: model.forward(x),
        "NHWC + GEMM pointwise, separate conv/BN/act passes": lambda: ab.unfused_forward(
            unfolded, x
        ),
        "+ BN folded into the weights": lambda: ab.unfused_forward(folded, x),
        "+ fused bias+act epilogues, stored padding": lambda: fresh(x),
        "+ buffers reused (FusedMobileNetV1)": lambda: engine(x),
    }
    ref = engine(x)
    for name, fn in variants.items():
        err = np.abs(fn() - ref).max() / np.abs(ref).max()
        assert err < 1e-3, (name, err)
    steps = timed_blocks(variants, rounds, reps, pause)
    results = {"optimisations": {k: statistics.median(v) for k, v in steps.items()}}

    # threads: BLAS 1 vs 2 threads (Numba serial), and a Numba parallel region beside 2-thread BLAS
    def with_blas(n):
        def run():
            with threads.blas_threads(n):
                engine(x)

        return run

    def oversubscribed():
        saved = eng_mod.depthwise3x3_nhwc
        eng_mod.depthwise3x3_nhwc = ab.parallel_depthwise
        try:
            engine(x)
        finally:
            eng_mod.depthwise3x3_nhwc = saved

    thread_variants = {
        "Numba serial + BLAS 1 thread": with_blas(1),
        "Numba serial + BLAS 2 threads (default)": with_blas(2),
        "Numba parallel depthwise + BLAS 2 threads": oversubscribed,
    }
    t = timed_blocks(thread_variants, rounds, reps, pause)
    results["threads"] = {k: statistics.median(v) for k, v in t.items()}
    return results


# ---------------------------------------------------------------- main


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions; quick cases only")
    ap.add_argument("--cases", help="comma-separated case names (default: all)")
    ap.add_argument("--rounds", type=int, help="ABBA rounds per case (default 6, quick 2)")
    ap.add_argument("--reps", type=int, help="timed calls per block (default 5, quick 3)")
    ap.add_argument("--pause", type=float, default=0.3, help="seconds of sleep before a block")
    ap.add_argument("--json", default=str(ROOT / "benchmarks/results/model.json"))
    ap.add_argument("--png", default=str(ROOT / "benchmarks/results/model_breakdown.png"))
    ap.add_argument("--ablation", action="store_true", help="measure each optimisation")
    ap.add_argument(
        "--threads",
        type=int,
        help="BLAS threads for npmobilenet and torch threads (default: cores)",
    )
    ap.add_argument("--memory", action=argparse.BooleanOptionalAction, default=None)
    ap.add_argument("--no-first-call", action="store_true")
    args = ap.parse_args(argv)
    rounds = args.rounds or (2 if args.quick else 6)
    reps = args.reps or (3 if args.quick else 5)
    memory = (not args.quick) if args.memory is None else args.memory

    try:
        import torch
    except ImportError:
        sys.exit("bench_model: torch is needed as the reference (pip install '.[test]')")
    n_threads = args.threads or os.cpu_count() or 2
    torch.set_num_threads(n_threads)
    threads.set_blas_threads(n_threads)
    cases = [c for c in CASES if not args.quick or c.quick]
    if args.cases:
        wanted = args.cases.split(",")
        unknown = set(wanted) - {c.name for c in CASES}
        if unknown:
            sys.exit(
                f"bench_model: unknown cases {sorted(unknown)}; known: {[c.name for c in CASES]}"
            )
        cases = [c for c in CASES if c.name in wanted]

    report = dict(
        machine=dict(
            platform=platform.platform(), processor=_cpu_name(), cores=os.cpu_count(),
            threads=threads.describe(), torch=torch.__version__, numpy=np.__version__,
            torch_threads=torch.get_num_threads(), loadavg_start=os.getloadavg(),
        ),
        settings=dict(rounds=rounds, reps=reps, pause_s=args.pause),
        cases={},
    )  # fmt: skip
    print(report["machine"]["threads"])
    print(f"load average at start: {os.getloadavg()}")
    peak_before = sgemm_peak()
    print(f"sgemm peak (2048^3, numpy): {peak_before:.0f} GFLOP/s")

    rows = []
    for case in cases:
        try:
            ours, theirs = case.build(torch)
        except Exception as exc:  # a training case before the model's train path exists
            print(f"{case.name}: skipped ({type(exc).__name__}: {exc})")
            report["cases"][case.name] = dict(skipped=f"{type(exc).__name__}: {exc}")
            continue
        t = timed_blocks(
            {"npmobilenet": ours, "torch": theirs},
            min(rounds, case.max_rounds or rounds), min(reps, case.max_reps or reps), args.pause,
        )  # fmt: skip
        ours_s, torch_s = statistics.median(t["npmobilenet"]), statistics.median(t["torch"])
        rows.append((case, ours_s, torch_s))
        report["cases"][case.name] = dict(
            kind=case.kind, batch=case.batch, res=case.res, alpha=case.alpha,
            npmobilenet_ms=ours_s * 1e3, torch_ms=torch_s * 1e3, ratio=ours_s / torch_s,
            target_ratio=case.target, gflop_per_call=case.flops_per_call / 1e9,
            npmobilenet_gflops=case.flops_per_call / ours_s / 1e9,
            torch_gflops=case.flops_per_call / torch_s / 1e9,
            npmobilenet_samples_ms=[v * 1e3 for v in t["npmobilenet"]],
            torch_samples_ms=[v * 1e3 for v in t["torch"]],
        )  # fmt: skip
        print(f"  {case.name}: npmobilenet {ours_s * 1e3:.2f} ms, torch {torch_s * 1e3:.2f} ms")
        del ours, theirs
    peak_after = sgemm_peak()
    peak = max(peak_before, peak_after)
    report["sgemm_peak_gflops"] = dict(before=peak_before, after=peak_after, used=peak)
    for case, ours_s, _ in rows:
        report["cases"][case.name]["share_of_sgemm_peak"] = (
            case.flops_per_call / ours_s / 1e9 / peak
        )
    print_table(rows, peak)

    if not args.quick or args.cases is None:
        breakdown = breakdown_b1(torch, reps=max(reps, 5))
        report["breakdown_b1_224_ms"] = {
            k: {c: v * 1e3 for c, v in d.items()} for k, d in breakdown.items()
        }
        print_breakdown(breakdown)
        if args.png:
            Path(args.png).parent.mkdir(parents=True, exist_ok=True)
            report["breakdown_png"] = plot_breakdown(breakdown, args.png)
    if not args.no_first_call and not args.quick:
        report["first_call"] = first_call_latency()
        for label, r in report["first_call"].items():
            print(
                f"first call ({label}): import {r['import_s']:.2f} s, engine build + first forward"
                f" {r['engine_first_forward_s']:.2f} s, model first forward"
                f" {r['model_first_forward_s']:.2f} s, total {r['total_s']:.2f} s"
            )
    if memory:
        report["train_b32_224_peak_memory"] = training_peak_memory()
        for lib, r in report["train_b32_224_peak_memory"].items():
            print(f"peak memory, batch-32 224 training step, {lib}: {r}")
    if args.ablation:
        report["ablation_b1_224_ms"] = ablation(torch, rounds, reps, args.pause)
        for group, d in report["ablation_b1_224_ms"].items():
            print(f"ablation ({group}):")
            for name, s in d.items():
                print(f"  {s * 1e3:8.2f} ms  {name}")
    report["machine"]["loadavg_end"] = os.getloadavg()
    print(f"load average at end: {os.getloadavg()}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2, default=float))
        print(f"wrote {args.json}")
    return report


def breakdown_b1(torch, reps):
    tmodel = seed_torch_model(torch, 1.0, 1000)
    engine = FusedMobileNetV1.from_state_dict(numpy_state(tmodel))
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224), dtype=np.float32)
    engine(x)
    time.sleep(0.3)
    ours = ours_breakdown(engine, x, reps)
    time.sleep(0.3)
    theirs = torch_breakdown(torch, tmodel, x, reps)
    return {"npmobilenet (fused)": ours, "torch": theirs}


def print_table(rows, peak):
    head = f"{'case':<22} {'npmobilenet ms':>14} {'torch ms':>10} {'ratio':>6} {'target':>7}"
    head += f" {'GFLOP/s':>8} {'torch GFLOP/s':>13} {'% sgemm peak':>12}"
    print("\n" + head)
    print("-" * len(head))
    for case, ours_s, torch_s in rows:
        gf = case.flops_per_call / ours_s / 1e9
        target = f"<={case.target}" if case.target else "-"
        print(
            f"{case.name:<22} {ours_s * 1e3:>14.2f} {torch_s * 1e3:>10.2f}"
            f" {ours_s / torch_s:>6.2f} {target:>7} {gf:>8.1f}"
            f" {case.flops_per_call / torch_s / 1e9:>13.1f} {100 * gf / peak:>11.0f}%"
        )
    print(f"(sgemm peak used: {peak:.0f} GFLOP/s; GFLOP = 2 x mult-adds, training = 3 x forward)\n")


def print_breakdown(breakdown):
    names = list(breakdown)
    print("per-layer-type time, batch 1, 224, float32 (ms, median):")
    print(f"  {'layer type':<12}" + "".join(f"{n:>22}" for n in names))
    for c in CATEGORIES:
        print(f"  {c:<12}" + "".join(f"{breakdown[n][c] * 1e3:>22.3f}" for n in names))
    print(
        "  (npmobilenet: BN folded into the weights = 0; 'activation' = the fused bias+act pass"
        " after each pointwise GEMM; 'pooling' = the last one, fused with the pool)"
    )


def _cpu_name():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
