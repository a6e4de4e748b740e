"""npmobilenet vs PyTorch: one MobileNetV1 training step (forward, CE loss, backward, SGD).

    python benchmarks/bench_train.py            # both cases + peak memory (~5 min loaded)
    python benchmarks/bench_train.py --quick    # fewer rounds, no 224 case, no memory
    python benchmarks/bench_train.py --json benchmarks/results/train.json

Cases (float32, seed-shaped model from tests/torch_reference.py, identical weights in both):

* ``train-b16-224``: alpha 1, 224x224, batch 16, 1000 classes;
* ``train-a0.25-32px-b64``: alpha 0.25, 32x32, batch 64, 10 classes (the digits recipe's shape,
  where Python overhead per layer dominates).

A step is ``zero_grad``, forward, cross-entropy, backward and ``SGD(lr=0.01, momentum=0.9)``:
``torch.optim.SGD`` against ``npmobilenet.optim.SGD``. Each library runs at 1 and 2 threads
(BLAS threads for npmobilenet through threadpoolctl, ``torch.set_num_threads`` for torch); the
ratio compares each library's faster setting. Timing alternates blocks in ABBA order over the
four (library, threads) set-ups: each block sleeps, makes one untimed warm-up step, then times
``reps`` steps; medians are reported. Before timing, one step of each library on the same batch
must give the same loss (relative 1e-4).

Peak memory: each library alone in a fresh process runs two batch-32 224 steps; before each it
resets Linux's peak resident set (``/proc/self/clear_refs``) and after it reads ``VmHWM`` from
``/proc/self/status``: the peak RSS of the whole process during the step (import, model,
optimizer state and every NumPy / torch allocation count). The second step is the steady state
of a training run (npmobilenet's layers then hold last step's output arrays for reuse).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

CASES = {  # name: (alpha, resolution, batch, classes)
    "train-b16-224": (1.0, 224, 16, 1000),
    "train-a0.25-32px-b64": (0.25, 32, 64, 10),
}
LR, MOMENTUM = 0.01, 0.9


def build_pair(torch, alpha, res, batch, classes, seed=0):
    """Two zero-argument training steps on identical models, weights and data: (ours, theirs)."""
    from threadpoolctl import threadpool_limits  # noqa: F401 - fail early if absent
    from torch_reference import build_seed_mobilenet

    from npmobilenet import ops
    from npmobilenet.models import MobileNetV1
    from npmobilenet.optim import SGD

    torch.manual_seed(seed)
    tmodel = build_seed_mobilenet(torch, alpha, classes).train()
    model = MobileNetV1(alpha, classes, seed=seed)
    model.load_state_dict({k: v.detach().numpy() for k, v in tmodel.state_dict().items()})
    model.train()
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, 3, res, res), dtype=np.float32)
    y = rng.integers(0, classes, batch)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    topt = torch.optim.SGD(tmodel.parameters(), lr=LR, momentum=MOMENTUM)

    def ours():
        opt.zero_grad()
        loss, cache = ops.cross_entropy_forward(model.forward(x), y)
        model.backward(ops.cross_entropy_backward(np.float32(1.0), cache))
        opt.step()
        return float(loss)

    def theirs():
        topt.zero_grad()
        loss = torch.nn.functional.cross_entropy(tmodel(xt), yt)
        loss.backward()
        topt.step()
        return float(loss.detach())

    a, b = ours(), theirs()
    if abs(a - b) > 1e-4 * max(abs(b), 1.0):
        raise AssertionError(f"first-step losses differ: npmobilenet {a}, torch {b}")
    return ours, theirs


def setups(torch, ours, theirs):
    """The four (label, step) set-ups: each library at 1 and 2 threads."""
    from threadpoolctl import threadpool_limits

    def with_blas(n):
        def run():
            with threadpool_limits(limits=n, user_api="blas"):
                return ours()

        return run

    def with_torch(n):
        def run():
            torch.set_num_threads(n)
            return theirs()

        return run

    return {
        "npmobilenet@1": with_blas(1),
        "npmobilenet@2": with_blas(2),
        "torch@1": with_torch(1),
        "torch@2": with_torch(2),
    }


def timed_blocks(fns: dict, rounds: int, reps: int, pause: float) -> dict:
    """Milliseconds per call of each function: ABBA blocks, one untimed warm-up call each."""
    times = {name: [] for name in fns}
    names = list(fns)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            time.sleep(pause)
            fns[name]()
            for _ in range(reps):
                t = time.perf_counter()
                fns[name]()
                times[name].append(1000 * (time.perf_counter() - t))
    return times


def run_case(torch, name, rounds, reps, pause):
    ours, theirs = build_pair(torch, *CASES[name])
    times = timed_blocks(setups(torch, ours, theirs), rounds, reps, pause)
    med = {k: statistics.median(v) for k, v in times.items()}
    best_ours = min(("npmobilenet@1", "npmobilenet@2"), key=med.get)
    best_torch = min(("torch@1", "torch@2"), key=med.get)
    return dict(
        case=name, median_ms=med, samples=len(times[best_ours]),
        best_npmobilenet=best_ours, best_torch=best_torch,
        ratio=med[best_ours] / med[best_torch],
    )  # fmt: skip


MEMORY = textwrap.dedent(
    """
    import sys
    import numpy as np
    lib, batch, res = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

    def status_mib(key):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) / 1024 for line in f if line.startswith(key))

    if lib == "npmobilenet":
        from npmobilenet import ops
        from npmobilenet.models import MobileNetV1
        from npmobilenet.optim import SGD

        model = MobileNetV1(seed=0)
        opt = SGD(model.parameters(), lr=0.01, momentum=0.9)

        def step(x, y):
            opt.zero_grad()
            loss, cache = ops.cross_entropy_forward(model.forward(x), y)
            model.backward(ops.cross_entropy_backward(np.float32(1.0), cache))
            opt.step()
    else:
        import torch
        from torch_reference import build_seed_mobilenet

        model = build_seed_mobilenet(torch)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

        def step(x, y):
            opt.zero_grad()
            logits = model(torch.from_numpy(x))
            torch.nn.functional.cross_entropy(logits, torch.from_numpy(y)).backward()
            opt.step()

    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 3, res, res), dtype=np.float32)
    y = rng.integers(0, 1000, batch)
    peaks = []
    for _ in range(2):  # the first step, then one in the steady state of a training run
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak (VmHWM) to the current RSS
        before = status_mib("VmHWM:")
        step(x, y)
        peaks += [before, status_mib("VmHWM:")]
    print(*peaks)
    """
)


def peak_memory(batch=32, res=224):
    """Peak RSS (MiB) during one training step, each library alone in a fresh process."""
    out = {}
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]))
    for lib in ("npmobilenet", "torch"):
        r = subprocess.run(
            [sys.executable, "-c", MEMORY, lib, str(batch), str(res)],
            capture_output=True, text=True, cwd=ROOT, env=env,
        )  # fmt: skip
        if r.returncode != 0:
            out[lib] = dict(error=r.stderr.strip().splitlines()[-1:])
            continue
        before1, peak1, before2, peak2 = map(float, r.stdout.split())
        out[lib] = dict(first_step=dict(rss_before_mib=before1, rss_peak_mib=peak1),
                        second_step=dict(rss_before_mib=before2, rss_peak_mib=peak2))  # fmt: skip
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small case only, fewer rounds, no memory")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--no-memory", action="store_true")
    args = ap.parse_args(argv)
    import torch

    names = ["train-a0.25-32px-b64"] if args.quick else list(CASES)
    load0 = os.getloadavg()
    rows = []
    for name in names:
        big = CASES[name][1] >= 224
        rounds = args.rounds or (2 if args.quick else 4)
        reps = args.reps or (2 if big else (5 if args.quick else 10))
        rows.append(run_case(torch, name, rounds, reps, pause=0.5 if big else 0.2))
    report = dict(
        machine=dict(cpu_count=os.cpu_count(), platform=platform.platform(),
                     python=sys.version.split()[0], numpy=np.__version__,
                     torch=torch.__version__, load_before=load0, load_after=os.getloadavg()),
        cases=rows,
    )  # fmt: skip
    print(f"\nload average before {load0[0]:.2f}, after {report['machine']['load_after'][0]:.2f}")
    print(f"{'case':<22} {'ours@1':>9} {'ours@2':>9} {'torch@1':>9} {'torch@2':>9} {'ratio':>7}")
    for r in rows:
        m = r["median_ms"]
        print(
            f"{r['case']:<22} {m['npmobilenet@1']:9.1f} {m['npmobilenet@2']:9.1f}"
            f" {m['torch@1']:9.1f} {m['torch@2']:9.1f} {r['ratio']:7.2f}"
        )
    print("(median ms per step; ratio = faster npmobilenet setting / faster torch setting)")
    if not (args.quick or args.no_memory):
        report["peak_memory_b32_224"] = mem = peak_memory()
        for lib, r in mem.items():
            print(f"peak RSS (MiB) of batch-32 224 training steps, {lib}: {r}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
