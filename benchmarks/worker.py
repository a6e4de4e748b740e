"""One measurement in a fresh process; prints its result as one line of JSON.

Run by ``timing.run_worker`` (which sets the thread counts in the environment)::

    python benchmarks/worker.py --sgemm --threads 2
    python benchmarks/worker.py --case infer-b1-224 --variant fused --weights W.safetensors \\
        --reps 20 --threads 2 [--breakdown]

A case variant is built (``cases.py``), called once untimed (its result is the fingerprint the
parent compares across libraries, its time the first call's), then timed ``--reps`` times.
``--breakdown`` times it per layer type instead (``breakdown.py``); ``--floor`` measures the
case's floor instead (``floor.py``; no model runs).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import breakdown  # noqa: E402
import cases  # noqa: E402
import floor  # noqa: E402
import timing  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sgemm", action="store_true", help="measure the numpy sgemm peak")
    p.add_argument("--case", choices=sorted(cases.CASES))
    p.add_argument("--variant", help="fused, eval, npmobilenet or torch")
    p.add_argument("--weights", help="the case's safetensors weights")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--breakdown", action="store_true", help="per-layer-type times instead")
    p.add_argument("--floor", action="store_true", help="the case's floor (floor.py) instead")
    return p.parse_args(argv)


def build(case, variant, weights, n_threads):
    """``(call, model, torch or None)`` for one variant, at ``n_threads`` threads."""
    if variant == "torch":
        import torch

        torch.set_num_threads(n_threads)
        return (*cases.theirs(torch, case, weights), torch)
    from npmobilenet import threads

    threads.set_threads(n_threads)
    return (*cases.ours(case, variant, weights), None)


def layer_times(case, variant, call, model, torch, reps) -> dict:
    """Per-layer-type seconds of the variant (breakdown.py)."""
    if case.kind == "train":
        if torch is not None:
            return breakdown.train_torch(torch, model, call, reps)
        return breakdown.train_ours(model, call, reps)
    x, _ = cases.batch(case)
    if torch is not None:
        return breakdown.infer_torch(torch, model, x, reps)
    if variant != "fused":
        raise SystemExit("--breakdown of inference times the fused engine or torch")
    return breakdown.infer_ours(model.fuse(), x, reps)


def measure(args) -> dict:
    case = cases.CASES[args.case]
    if args.floor:
        return {"floor": floor.measure(case, args.threads, args.reps)}
    call, model, torch = build(case, args.variant, args.weights, args.threads)
    t = time.perf_counter()
    first = call()
    result = {"first_call": time.perf_counter() - t, "check": cases.fingerprint(case, first)}
    if args.breakdown:
        result["breakdown"] = layer_times(case, args.variant, call, model, torch, args.reps)
    else:
        result["times"] = timing.time_calls(call, args.reps)
    return result


def main(argv=None) -> None:
    args = parse_args(argv)
    result = {"gflops": timing.sgemm_gflops()} if args.sgemm else measure(args)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


if __name__ == "__main__":
    main()
