"""Peak memory of training steps, npmobilenet against PyTorch, each library alone in a process.

Run from the repository root::

    python benchmarks/bench_memory.py                  # batch 32 at 224, 3 steps, 2 rounds
    python benchmarks/bench_memory.py --recompute      # with model.recompute_block_outputs

Each process builds one library's model on the same weights and batch (``cases.py``: SGD with
momentum, no input gradient), notes its resident memory, then runs ``--steps`` training steps.
Before each step it resets the peak resident memory of the process (``/proc/self/clear_refs``),
and after it reads the peak (``VmHWM`` of ``/proc/self/status``): the whole process counts,
the library's own allocations, its thread pools and the interpreter alike. The first step's
peak includes what the first step allocates once; the steady peak is the largest of the later
steps'. The processes alternate (npmobilenet, torch, npmobilenet, ...) and a library's result
is the smallest peak of its processes; both must compute the same first loss. Results go to
``benchmarks/results/memory.json`` (``memory_recompute.json`` with ``--recompute``). Linux
only (``/proc``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cases  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
LIBRARIES = ("npmobilenet", "torch")
AGREEMENT = 1e-4  # relative, first-step losses of the two libraries


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--res", type=int, default=224)
    p.add_argument("--alpha", type=float, default=1.0)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--steps", type=int, default=3, help="training steps per process (>= 2)")
    p.add_argument("--rounds", type=int, default=2, help="processes per library")
    p.add_argument("--threads", type=int, default=min(os.cpu_count() or 1, 4))
    p.add_argument("--recompute", action="store_true",
                   help="npmobilenet with recompute_block_outputs = True")  # fmt: skip
    p.add_argument("--out", help="JSON file (default benchmarks/results/memory[_recompute].json)")
    p.add_argument("--worker", choices=LIBRARIES, help=argparse.SUPPRESS)
    p.add_argument("--weights", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.steps < 2:
        p.error("--steps must be at least 2 (the first step, then the steady ones)")
    return args


def case_of(args) -> cases.Case:
    return cases.Case("train-memory", "train", args.batch, args.res, args.alpha, args.classes)


def _status_mib(key: str) -> float:
    with open("/proc/self/status") as f:
        line = next(ln for ln in f if ln.startswith(key))
    return int(line.split()[1]) / 1024


def peak_mib() -> float:
    """The process's peak resident memory since the last :func:`reset_peak`, in MiB."""
    return _status_mib("VmHWM:")


def resident_mib() -> float:
    """The process's resident memory now, in MiB."""
    return _status_mib("VmRSS:")


def reset_peak() -> None:
    """Start a new peak from the current resident memory (Linux's ``clear_refs`` 5)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def build_step(args):
    """A zero-argument training step of ``args.worker`` on the case's weights; returns loss."""
    case = case_of(args)
    if args.worker == "torch":
        import torch

        torch.set_num_threads(args.threads)
        return cases.theirs(torch, case, args.weights)[0]
    from npmobilenet import threads

    threads.set_threads(args.threads)
    step, model = cases.ours(case, "npmobilenet", args.weights)
    model.recompute_block_outputs = args.recompute
    return step


def measure(args) -> dict:
    """Run the steps in this process: the peak of each, and the first step's loss."""
    step = build_step(args)
    before = resident_mib()
    peaks, loss = [], None
    for _ in range(args.steps):
        reset_peak()
        value = float(step())
        loss = value if loss is None else loss
        peaks.append(peak_mib())
    return {"before": before, "first": peaks[0], "steady": max(peaks[1:]), "peaks": peaks,
            "loss": loss}  # fmt: skip


def run_process(library: str, args, weights: str) -> dict:
    """:func:`measure` for ``library`` in a fresh process; its result."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}  # fmt: skip
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[name] = str(args.threads)
    flags = ["--batch", args.batch, "--res", args.res, "--alpha", args.alpha, "--classes",
             args.classes, "--steps", args.steps, "--threads", args.threads]  # fmt: skip
    cmd = [sys.executable, __file__, "--worker", library, "--weights", weights,
           *map(str, flags), *(["--recompute"] if args.recompute else [])]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"{library} process failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare(args) -> dict:
    """The processes in alternation; per library the smallest first and steady peaks."""
    runs = {lib: [] for lib in LIBRARIES}
    with tempfile.TemporaryDirectory() as folder:
        weights = str(Path(folder) / "weights.safetensors")
        cases.write_weights(case_of(args), weights)
        for _ in range(args.rounds):
            for lib in LIBRARIES:
                runs[lib].append(run_process(lib, args, weights))
    losses = [runs[lib][0]["loss"] for lib in LIBRARIES]
    if abs(losses[0] - losses[1]) > AGREEMENT * abs(losses[1]):
        raise AssertionError(f"first-step losses disagree: {dict(zip(LIBRARIES, losses))}")
    best = {lib: {k: min(r[k] for r in runs[lib]) for k in ("first", "steady")}
            for lib in LIBRARIES}  # fmt: skip
    return {"best": best, "runs": runs}


def print_table(result: dict, args) -> None:
    best = result["best"]
    print(f"batch {args.batch}, {args.res}x{args.res}, alpha {args.alpha:g}, {args.steps} steps,"
          f" {args.rounds} processes each; peak resident memory, MiB")  # fmt: skip
    print(f"{'':<14}{'first step':>12}{'steady':>10}{'of torch':>10}")
    for lib in LIBRARIES:
        ratio = best[lib]["steady"] / best["torch"]["steady"]
        print(f"{lib:<14}{best[lib]['first']:>12.0f}{best[lib]['steady']:>10.0f}{ratio:>10.2f}")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(measure(args)))
        return 0
    result = compare(args)
    print_table(result, args)
    out = Path(args.out) if args.out else RESULTS / f"memory{'_recompute' * args.recompute}.json"
    load = [round(v, 2) for v in os.getloadavg()]
    settings = {k: v for k, v in vars(args).items() if k not in ("worker", "weights", "out")}
    out.write_text(json.dumps({"settings": settings, "loadavg": load, **result}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
