"""npmobilenet vs PyTorch on whole-model MobileNetV1: inference and training steps, side by side.

The project's one benchmark command. Run from the repository root::

    python benchmarks/bench_model.py                 # everything below, 10-25 minutes on 2 cores
    python benchmarks/bench_model.py --quick         # ~1 minute: quick cases, batch-1 breakdown
    python benchmarks/bench_model.py --threads 1,2   # each library at 1 and at 2 threads
    python benchmarks/bench_model.py --cases infer-b1-224,infer-b32-224 --json out.json
    python benchmarks/bench_model.py --cases none --no-first-call --no-memory  # breakdowns only
    python benchmarks/bench_model.py --ablation      # also: what each optimisation buys

It prints a table (median ms of npmobilenet and torch, their ratio and the target, GFLOP/s and
share of the sgemm peak measured in the same run), per-layer-type breakdowns (batch-1 inference
forward; a 224 training step's forward and backward at ``--breakdown-batch``, default 16; see
``breakdown.py``), first-call latency (import + first forward in a fresh process, warm and cold
Numba cache) and the peak memory of batch-32 224 training steps. It writes everything to JSON
(``--json``, default ``benchmarks/results/model.json``) and both breakdowns to one PNG chart
when matplotlib is installed (``--png``).

**How it times.** Both libraries run in this one process on identical weights (the seed-shaped
torch model, its state_dict folded into ``FusedMobileNetV1`` or loaded into ``MobileNetV1``), in
alternating *blocks*: each block sleeps ``--pause`` seconds, runs one discarded warm-up call,
then ``--reps`` timed calls; blocks alternate npmobilenet/torch (ABBA order) for ``--rounds``
rounds; medians are reported. Blocks and pauses matter on this 2-core machine: OpenBLAS's and
PyTorch's OpenMP worker threads spin for a while after each call, and a call made while the
other library's threads still spin is slowed (measured: torch 1.4x to 6x slower right after an
npmobilenet call). The machine's load average is recorded with the results: other processes on
the machine slow multi-threaded BLAS the most.

**Threads.** By default each library runs at the machine's core count (BLAS threads for
npmobilenet, whose Numba kernels are serial; ``torch.set_num_threads`` for torch). With
``--threads 1,2`` every (library, thread count) pair is its own set-up with its own blocks in
the ABBA order (the thread count is set before each block, untimed), and the ratio compares
each library's fastest set-up; the sgemm peak is measured at each count, and the share of it is
taken at the count of npmobilenet's fastest set-up. Breakdowns, first call, memory and the
ablation run at the first count listed.

**Cases** live in the ``CASES`` registry below. Inference cases use the fused engine (its logits
are checked against torch's before timing). Training-step cases time ``npmobilenet.MobileNetV1``
against the same torch model in train mode: ``zero_grad``, forward, cross-entropy, backward and
``SGD(lr=0.01, momentum=0.9)`` (``npmobilenet.optim.SGD`` against ``torch.optim.SGD``); before
timing, one step of each on the same batch must give the same loss (relative 1e-4).

**Peak memory** (``--memory``, on by default without ``--quick``): each library alone in a
fresh process makes a small warm-up step, then two batch-32 224 training steps; before each it
resets Linux's peak resident set (``/proc/self/clear_refs``) and after it reads ``VmHWM`` from
``/proc/self/status``: the first step, and the steady state of a training run (npmobilenet's
layers then hold last step's output arrays for reuse).
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
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # torch_reference: the seed-shaped torch model
sys.path.insert(0, str(ROOT / "benchmarks"))  # breakdown, ablation

import breakdown as bd  # noqa: E402

from npmobilenet import threads  # noqa: E402
from npmobilenet.fast import FusedMobileNetV1  # noqa: E402

LIBS = ("npmobilenet", "torch")
LR, MOMENTUM = 0.01, 0.9  # the training steps' SGD, in both libraries

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


def sgemm_peaks(counts):
    """``{threads: sgemm GFLOP/s}`` for each BLAS thread count."""
    out = {}
    for n in counts:
        with threads.blas_threads(n):
            out[n] = sgemm_peak()
    return out


# ---------------------------------------------------------------- timing


def timed_blocks(fns: dict, rounds: int, reps: int, pause: float, prepare=None) -> dict:
    """Seconds per call of each function: alternating blocks (ABBA), warm-up call discarded.

    ``prepare[name]()``, when given, runs (untimed) before each of that function's blocks.
    """
    times = {name: [] for name in fns}
    names = list(fns)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            if prepare:
                prepare[name]()
            time.sleep(pause)
            fns[name]()  # warm-up: wakes this library's thread pool; not timed
            for _ in range(reps):
                t = time.perf_counter()
                fns[name]()
                times[name].append(time.perf_counter() - t)
    return times


def thread_setups(torch, ours, theirs, counts):
    """``(fns, prepare)``: one set-up per (library, thread count), named ``"torch@2"`` etc."""
    fns, prepare = {}, {}
    for n in counts:
        fns[f"npmobilenet@{n}"], prepare[f"npmobilenet@{n}"] = ours, partial(_set_blas, n)
        fns[f"torch@{n}"], prepare[f"torch@{n}"] = theirs, partial(torch.set_num_threads, n)
    return fns, prepare


def _set_blas(n):
    threads.set_blas_threads(n)


def thread_counts(text: str) -> list[int]:
    """``--threads``: ``"2"`` or ``"1,2"`` -> [2] or [1, 2] (duplicates dropped)."""
    try:
        counts = [int(t) for t in text.split(",")]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(
            f"expected positive integers separated by commas (e.g. 2 or 1,2), got {text!r}"
        )
    return list(dict.fromkeys(counts))


# ---------------------------------------------------------------- models


def seed_torch_model(torch, alpha, classes, in_ch=3, seed=0):
    """The seed-shaped torch model with non-trivial BN statistics (eval mode)."""
    from torch_reference import build_seed_mobilenet, randomize_batch_norm

    torch.manual_seed(seed)
    model = build_seed_mobilenet(torch, alpha, classes, in_ch)
    return randomize_batch_norm(torch, model, seed + 1).eval()


def numpy_state(model):
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


@dataclass
class Pair:
    """The same work in both libraries, and what was checked before timing.

    ``ours`` / ``theirs``: zero-argument callables (training steps also take ``clock``, see
    ``train_pair``); ``model`` / ``tmodel``: the two models (training cases).
    """

    ours: Callable
    theirs: Callable
    check: dict
    model: object = None
    tmodel: object = None


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

    def build(self, torch) -> Pair:
        """Both libraries set up on the same weights and data, checked to agree."""
        rng = np.random.default_rng(0)
        x = rng.standard_normal((self.batch, 3, self.res, self.res), dtype=np.float32)
        tmodel = seed_torch_model(torch, self.alpha, self.classes)
        if self.kind == "inference":
            return _inference_pair(torch, tmodel, x)
        y = rng.integers(0, self.classes, self.batch)
        return train_pair(torch, tmodel, x, y, self.alpha, self.classes)


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

    return Pair(lambda: engine(x), theirs, dict(logits_relative_error=float(err)))


def _no_clock(phase):
    pass


def train_pair(torch, tmodel, x, y, alpha, classes) -> Pair:
    """Training steps on identical models, weights and data; the first step's losses must agree.

    ``ours(clock)`` / ``theirs(clock)``: ``zero_grad``, forward and cross-entropy, backward,
    ``SGD(lr=0.01, momentum=0.9)`` step, calling ``clock(phase)`` after each phase
    ("zero_grad", "forward", "backward", "step"; ``breakdown.py`` times them). One step of each
    runs here: its losses must agree to a relative 1e-4.
    """
    from npmobilenet import ops
    from npmobilenet.models import MobileNetV1
    from npmobilenet.optim import SGD

    model = MobileNetV1(alpha, classes, seed=0)
    model.load_state_dict(numpy_state(tmodel))
    model.train()
    tmodel.train()
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    topt = torch.optim.SGD(tmodel.parameters(), lr=LR, momentum=MOMENTUM)

    def ours(clock=_no_clock):
        opt.zero_grad()
        clock("zero_grad")
        loss, cache = ops.cross_entropy_forward(model.forward(x), y)
        clock("forward")
        model.backward(ops.cross_entropy_backward(np.float32(1.0), cache), input_grad=False)
        clock("backward")
        opt.step()
        clock("step")
        return loss

    def theirs(clock=_no_clock):
        topt.zero_grad()
        clock("zero_grad")
        loss = torch.nn.functional.cross_entropy(tmodel(xt), yt)
        clock("forward")
        loss.backward()
        clock("backward")
        topt.step()
        clock("step")
        return loss

    a, b = float(ours()), float(theirs().detach())
    if abs(a - b) > 1e-4 * max(abs(b), 1.0):
        raise AssertionError(f"first-step losses differ: npmobilenet {a!r}, torch {b!r}")
    return Pair(ours, theirs, dict(first_step_loss=dict(npmobilenet=a, torch=b)), model, tmodel)


CASES = [
    Case("infer-b1-224", "inference", 1, 224, target=0.5, notes="and >= 35% of sgemm peak"),
    Case("infer-b8-224", "inference", 8, 224, target=None),
    Case("infer-b32-224", "inference", 32, 224, target=0.8),
    Case("train-b16-224", "train", 16, 224, target=1.0, quick=False, max_rounds=2, max_reps=2),
    Case("train-a0.25-32px-b64", "train", 64, 32, alpha=0.25, classes=10, target=1.0),
]


# ---------------------------------------------------------------- per-layer breakdowns


def breakdown_b1(torch, reps):
    """Per-layer-type seconds of batch-1 224 inference: the fused engine and torch's eval."""
    tmodel = seed_torch_model(torch, 1.0, 1000)
    engine = FusedMobileNetV1.from_state_dict(numpy_state(tmodel))
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224), dtype=np.float32)
    engine(x)
    time.sleep(0.3)
    ours = bd.infer_ours(engine, x, reps)
    time.sleep(0.3)
    theirs = bd.infer_torch(torch, tmodel, x, reps)
    return {"npmobilenet (fused)": ours, "torch": theirs}


def breakdown_train(torch, batch, reps, res=224):
    """Per-layer-type forward and backward seconds of an alpha-1 training step, both libraries."""
    pair = Case("breakdown", "train", batch, res).build(torch)
    time.sleep(0.3)
    ours = bd.train_ours(pair.model, pair.ours, reps)
    time.sleep(0.3)
    theirs = bd.train_torch(torch, pair.tmodel, pair.theirs, reps)
    return {"npmobilenet": ours, "torch": theirs}


def _ms(d):
    """Seconds -> milliseconds in nested dicts."""
    return {k: _ms(v) if isinstance(v, dict) else v * 1e3 for k, v in d.items()}


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
    lib, batch, res, n_threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])

    def status_mib(key):  # VmRSS (now) or VmHWM (peak) of this process, from /proc
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) / 1024 for line in f if line.startswith(key))

    if lib == "npmobilenet":
        from npmobilenet import ops, threads
        from npmobilenet.models import MobileNetV1
        from npmobilenet.optim import SGD

        threads.set_blas_threads(n_threads)
        model = MobileNetV1(seed=0)
        opt = SGD(model.parameters(), lr=0.01, momentum=0.9)

        def step(x, y):
            opt.zero_grad()
            loss, cache = ops.cross_entropy_forward(model.forward(x), y)
            model.backward(ops.cross_entropy_backward(np.float32(1.0), cache), input_grad=False)
            opt.step()
    else:
        import torch
        torch.set_num_threads(n_threads)
        sys.path.insert(0, "tests")
        from torch_reference import build_seed_mobilenet

        model = build_seed_mobilenet(torch)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

        def step(x, y):
            opt.zero_grad()
            logits = model(torch.from_numpy(x))
            torch.nn.functional.cross_entropy(logits, torch.from_numpy(y)).backward()
            opt.step()

    rng = np.random.default_rng(0)
    step(rng.standard_normal((2, 3, 32, 32), dtype=np.float32), np.array([1, 2]))  # warm-up
    x = rng.standard_normal((batch, 3, res, res), dtype=np.float32)
    y = rng.integers(0, 1000, batch)
    out = []
    for _ in range(2):  # the first step, then one in the steady state of a training run
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset the peak (VmHWM) to the current RSS
        except OSError:
            pass
        before = status_mib("VmHWM:")
        step(x, y)
        out += [before, status_mib("VmHWM:")]
    print(*out)
    """
)


def training_peak_memory(batch=32, res=224, n_threads=2):
    """Peak RSS (MiB) of two training steps, each library alone in a fresh process.

    Reads Linux's VmHWM (peak resident set) from /proc, reset just before each step
    (``ru_maxrss`` would not do: Linux carries it over from the parent process across exec).
    ``rss_before_mib``: resident before the step (the first time: after import, model and
    optimizer construction, a small warm-up step (Numba kernels loaded, allocator pools) and the
    batch); ``step_growth_mib``: how far the step pushed the peak above that. The second step is
    the steady state of a training run; ``rss_peak_mib`` is the larger of the two peaks.
    """
    out = {}
    for lib in LIBS:
        res_ = subprocess.run(
            [sys.executable, "-c", MEMORY, lib, str(batch), str(res), str(n_threads)],
            capture_output=True, text=True, cwd=ROOT,
        )  # fmt: skip
        if res_.returncode != 0:
            out[lib] = dict(error=res_.stderr.strip().splitlines()[-1:])
            continue
        values = list(map(float, res_.stdout.split()))
        steps = {
            name: dict(rss_before_mib=b, rss_peak_mib=p, step_growth_mib=p - b)
            for name, b, p in zip(("first_step", "second_step"), values[::2], values[1::2])
        }
        out[lib] = dict(steps, rss_peak_mib=max(d["rss_peak_mib"] for d in steps.values()))
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
    ap.add_argument("--cases", help="comma-separated case names, or none (default: all)")
    ap.add_argument("--rounds", type=int, help="ABBA rounds per case (default 6, quick 2)")
    ap.add_argument("--reps", type=int, help="timed calls per block (default 5, quick 3)")
    ap.add_argument("--pause", type=float, default=0.3, help="seconds of sleep before a block")
    ap.add_argument("--json", default=str(ROOT / "benchmarks/results/model.json"))
    ap.add_argument("--png", default=str(ROOT / "benchmarks/results/model_breakdown.png"))
    ap.add_argument("--ablation", action="store_true", help="measure each optimisation")
    ap.add_argument(
        "--threads",
        type=thread_counts,
        help="thread counts to measure each library at, e.g. 1,2: BLAS threads for npmobilenet,"
        " torch.set_num_threads for torch; the ratio takes each one's fastest (default: cores)",
    )
    ap.add_argument(
        "--breakdown",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="per-layer-type breakdowns (default: on; with --quick: batch-1 inference only,"
        " and none when --cases is given too)",
    )
    ap.add_argument(
        "--breakdown-batch",
        type=int,
        default=16,
        help="batch of the training-step breakdown (224x224; 0: leave it out)",
    )
    ap.add_argument("--memory", action=argparse.BooleanOptionalAction, default=None)
    ap.add_argument("--no-first-call", action="store_true")
    args = ap.parse_args(argv)
    rounds = args.rounds or (2 if args.quick else 6)
    reps = args.reps or (3 if args.quick else 5)
    memory = (not args.quick) if args.memory is None else args.memory
    breakdown = not (args.quick and args.cases) if args.breakdown is None else args.breakdown
    train_breakdown = breakdown and args.breakdown_batch > 0 and (not args.quick or args.breakdown)
    if args.breakdown_batch < 0:
        ap.error(f"argument --breakdown-batch: expected a batch >= 0, got {args.breakdown_batch}")

    try:
        import torch
    except ImportError:
        sys.exit("bench_model: torch is needed as the reference (pip install '.[test]')")
    counts = args.threads or [os.cpu_count() or 2]
    torch.set_num_threads(counts[0])
    threads.set_blas_threads(counts[0])
    cases = [c for c in CASES if not args.quick or c.quick]
    if args.cases:
        wanted = [] if args.cases == "none" else args.cases.split(",")
        unknown = set(wanted) - {c.name for c in CASES}
        if unknown:
            ap.error(
                f"argument --cases: unknown cases {sorted(unknown)}; known:"
                f" {[c.name for c in CASES]} or none"
            )
        cases = [c for c in CASES if c.name in wanted]

    report = dict(
        machine=dict(
            platform=platform.platform(), processor=_cpu_name(), cores=os.cpu_count(),
            threads=threads.describe(), torch=torch.__version__, numpy=np.__version__,
            torch_threads=torch.get_num_threads(), loadavg_start=os.getloadavg(),
        ),
        settings=dict(rounds=rounds, reps=reps, pause_s=args.pause, thread_counts=counts),
        cases={},
    )  # fmt: skip
    print(report["machine"]["threads"])
    print(f"load average at start: {os.getloadavg()}")
    peaks_before = sgemm_peaks(counts)
    for n, p in peaks_before.items():
        print(f"sgemm peak (2048^3, numpy, {n} BLAS threads): {p:.0f} GFLOP/s")

    rows = []
    for case in cases:
        try:
            row = run_case(torch, case, counts, rounds, reps, args.pause)
        except Exception as exc:  # a failed agreement check: reported, the other cases still run
            print(f"{case.name}: FAILED ({type(exc).__name__}: {exc})")
            report["cases"][case.name] = dict(error=f"{type(exc).__name__}: {exc}")
            continue
        rows.append(row)
        report["cases"][case.name] = row["json"]
        print(
            f"  {case.name}: " + ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in row["med"].items())
        )
    torch.set_num_threads(counts[0])
    threads.set_blas_threads(counts[0])
    peaks_after = sgemm_peaks(counts)
    peak = {n: max(peaks_before[n], peaks_after[n]) for n in counts}
    report["sgemm_peak_gflops"] = dict(
        before=peaks_before[counts[0]], after=peaks_after[counts[0]], used=peak[counts[0]],
        by_threads={n: dict(before=peaks_before[n], after=peaks_after[n], used=peak[n])
                    for n in counts},
    )  # fmt: skip
    for row in rows:
        row["json"]["share_of_sgemm_peak"] = row["json"]["npmobilenet_gflops"] / peak[row["n"]]
    print_table(rows, peak, counts)

    infer_bd = train_bd = None
    if breakdown:
        infer_bd = breakdown_b1(torch, reps=max(reps, 5))
        report["breakdown_b1_224_ms"] = _ms(infer_bd)
        bd.print_inference(infer_bd)
    if train_breakdown:
        train_bd = breakdown_train(torch, args.breakdown_batch, reps)
        report["breakdown_train_224_ms"] = dict(
            batch=args.breakdown_batch, steps=reps, notes=bd.TRAIN_NOTES, **_ms(train_bd)
        )
        bd.print_training(train_bd, args.breakdown_batch, reps)
    if args.png and (infer_bd or train_bd):
        Path(args.png).parent.mkdir(parents=True, exist_ok=True)
        report["breakdown_png"] = bd.plot(infer_bd, train_bd, args.png, args.breakdown_batch)
    if not args.no_first_call and not args.quick:
        report["first_call"] = first_call_latency()
        for label, r in report["first_call"].items():
            print(
                f"first call ({label}): import {r['import_s']:.2f} s, engine build + first forward"
                f" {r['engine_first_forward_s']:.2f} s, model first forward"
                f" {r['model_first_forward_s']:.2f} s, total {r['total_s']:.2f} s"
            )
    if memory:
        report["train_b32_224_peak_memory"] = mem = training_peak_memory(n_threads=counts[0])
        print_memory(mem)
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


def run_case(torch, case, counts, rounds, reps, pause):
    """Time one case at every (library, thread count) set-up; the row for the table and JSON."""
    pair = case.build(torch)
    fns, prepare = thread_setups(torch, pair.ours, pair.theirs, counts)
    rounds, reps = min(rounds, case.max_rounds or rounds), min(reps, case.max_reps or reps)
    t = timed_blocks(fns, rounds, reps, pause, prepare)
    med = {k: statistics.median(v) for k, v in t.items()}
    best = {lib: min((k for k in med if k.startswith(f"{lib}@")), key=med.get) for lib in LIBS}
    ours_s, torch_s = med[best["npmobilenet"]], med[best["torch"]]
    gflop = case.flops_per_call / 1e9
    out = dict(
        kind=case.kind, batch=case.batch, res=case.res, alpha=case.alpha,
        npmobilenet_ms=ours_s * 1e3, torch_ms=torch_s * 1e3, ratio=ours_s / torch_s,
        target_ratio=case.target, gflop_per_call=gflop,
        npmobilenet_gflops=gflop / ours_s, torch_gflops=gflop / torch_s,
        best_npmobilenet=best["npmobilenet"], best_torch=best["torch"],
        setups_ms={k: v * 1e3 for k, v in med.items()},
        npmobilenet_samples_ms=[v * 1e3 for v in t[best["npmobilenet"]]],
        torch_samples_ms=[v * 1e3 for v in t[best["torch"]]],
        check=pair.check,
    )  # fmt: skip
    n = int(best["npmobilenet"].split("@")[1])
    return dict(case=case, ours_s=ours_s, torch_s=torch_s, med=med, best=best, n=n, json=out)


def print_table(rows, peak, counts):
    head = f"{'case':<22} {'npmobilenet ms':>14} {'torch ms':>10} {'ratio':>6} {'target':>7}"
    head += f" {'GFLOP/s':>8} {'torch GFLOP/s':>13} {'% sgemm peak':>12}"
    print("\n" + head)
    print("-" * len(head))
    for row in rows:
        case, ours_s, torch_s = row["case"], row["ours_s"], row["torch_s"]
        gf = case.flops_per_call / ours_s / 1e9
        target = f"<={case.target}" if case.target else "-"
        print(
            f"{case.name:<22} {ours_s * 1e3:>14.2f} {torch_s * 1e3:>10.2f}"
            f" {ours_s / torch_s:>6.2f} {target:>7} {gf:>8.1f}"
            f" {case.flops_per_call / torch_s / 1e9:>13.1f} {100 * gf / peak[row['n']]:>11.0f}%"
        )
    peaks = ", ".join(
        f"{p:.0f} GFLOP/s at {n} thread{'s' if n > 1 else ''}" for n, p in peak.items()
    )
    print(f"(sgemm peak used: {peaks}; GFLOP = 2 x mult-adds, training = 3 x forward)")
    if len(counts) > 1:
        setups = list(rows[0]["med"]) if rows else []
        print("median ms per set-up (library@threads; * = the fastest, used above):")
        print(f"  {'case':<22}" + "".join(f"{s:>16}" for s in setups))
        for row in rows:
            cells = [
                f"{row['med'][s] * 1e3:.2f}" + ("*" if s in row["best"].values() else " ")
                for s in setups
            ]
            print(f"  {row['case'].name:<22}" + "".join(f"{c:>16}" for c in cells))
    print()


def print_memory(mem):
    for lib, r in mem.items():
        if "error" in r:
            print(f"peak memory, batch-32 224 training steps, {lib}: failed: {r['error']}")
            continue
        a, b = r["first_step"], r["second_step"]
        print(
            f"peak memory, batch-32 224 training steps, {lib}: first step {a['rss_peak_mib']:.0f}"
            f" MiB (+{a['step_growth_mib']:.0f}), steady state {b['rss_peak_mib']:.0f} MiB"
            f" (+{b['step_growth_mib']:.0f})"
        )
    if all("error" not in r for r in mem.values()):
        ratio = mem["npmobilenet"]["rss_peak_mib"] / mem["torch"]["rss_peak_mib"]
        print(f"  (peak of the two steps, npmobilenet / torch: {ratio:.2f}; target <= 1)")


def _cpu_name():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    failed = [k for k, v in main()["cases"].items() if "error" in v]
    sys.exit(f"bench_model: failed cases: {failed}" if failed else 0)
