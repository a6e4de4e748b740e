"""npmobilenet against PyTorch on whole-model MobileNetV1: the project's one benchmark command.

Run from the repository root::

    python benchmarks/bench_model.py            # every case and both breakdowns
    python benchmarks/bench_model.py --quick    # a smoke run: one round, two calls per process
    python benchmarks/bench_model.py --cases infer-b1-224,train-b16-224 --rounds 6
    python benchmarks/bench_model.py --floor    # also each case's floor per layer type

It prints one table (per case and variant: the best of the per-process medians, the spread of
those medians, the ratio to torch, GFLOP/s and the share of the sgemm peak measured in the same
run) and per-layer-type breakdowns of batch-1 inference and of a batch-16 training step. The
same numbers, with the machine and its load average, go to ``benchmarks/results/model.json``
(``model_quick.json`` for ``--quick``; ``--out`` chooses another file), and the breakdown chart
beside it (``model_breakdown.png``; ``<out>_breakdown.png``) when matplotlib is installed.
``--floor`` adds each case's floor (``floor.py``): the least time each layer type can take on
this machine, measured in the same run, set against the targets and the breakdowns.

The cases and how each library runs them: ``cases.py``. How it times (each library in its own
process, alternating, medians): ``timing.py``. Per layer type: ``breakdown.py``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from dataclasses import asdict
from pathlib import Path

import breakdown
import cases
import floor
import numpy as np
import timing

RESULTS = Path(__file__).resolve().parent / "results"
AGREEMENT = 1e-4  # relative: logits or first-step loss, npmobilenet against torch


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="one round, two calls per process")
    p.add_argument("--cases", default=",".join(cases.CASES),
                   help=f"comma-separated, from: {', '.join(cases.CASES)}")  # fmt: skip
    p.add_argument("--rounds", type=int, help="processes per variant (default 4; quick 1)")
    p.add_argument("--reps", type=int, help="timed calls per process (default: per case)")
    p.add_argument("--threads", type=int, default=min(os.cpu_count() or 1, 4),
                   help="threads for both libraries (default: the cores, at most 4)")  # fmt: skip
    p.add_argument("--no-breakdown", action="store_true", help="skip the per-layer breakdowns")
    p.add_argument("--floor", action="store_true", help="measure each case's floor (floor.py)")
    p.add_argument("--out", help="JSON file (default benchmarks/results/model[_quick].json)")
    args = p.parse_args(argv)
    unknown = sorted(set(args.cases.split(",")) - set(cases.CASES))
    if unknown:
        p.error(f"unknown case(s) {unknown}; known: {', '.join(cases.CASES)}")
    args.rounds = args.rounds or (1 if args.quick else 4)
    return args


def sgemm_peak(threads: int, rounds: int) -> dict:
    """The numpy sgemm 2048^3 GFLOP/s, best of ``rounds`` fresh processes."""
    runs = [timing.run_worker(["--sgemm"], threads)["gflops"] for _ in range(rounds)]
    return {"gflops": max(runs), "runs": runs}


def run_case(case, args, folder) -> dict:
    """Every variant of ``case``, alternating processes; checked against torch."""
    weights = Path(folder) / f"{case.name}.safetensors"
    cases.write_weights(case, weights)
    reps = args.reps or (2 if args.quick else case.reps)
    jobs = {v: ["--case", case.name, "--variant", v, "--weights", str(weights),
                "--reps", str(reps)] for v in case.variants}  # fmt: skip
    raw = timing.alternate(jobs, args.rounds, args.threads)
    errors = agreement(raw)
    variants = {v: timing.summarize(results) for v, results in raw.items()}
    flops = case.flops()
    for v in variants.values():
        v["gflops"] = flops / v["seconds"] / 1e9
        v["ratio_to_torch"] = v["seconds"] / variants["torch"]["seconds"]
    return {"case": asdict(case), "flops": flops, "reps": reps, "agreement": errors,
            "variants": variants}  # fmt: skip


def agreement(raw: dict) -> dict:
    """Relative difference of each variant's fingerprint from torch's; an error past 1e-4."""
    ref = np.asarray(raw["torch"][0]["check"])
    errors = {}
    for variant, results in raw.items():
        got = np.asarray(results[0]["check"])
        errors[variant] = float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-30))
        if errors[variant] > AGREEMENT:
            raise AssertionError(f"{variant} disagrees with torch: relative {errors[variant]:.2e}")
    return errors


def run_breakdowns(args, folder) -> dict:
    """Per-layer-type times: batch-1 inference (fused, torch), training batch 16 (both)."""
    out = {}
    for name, variants in (("infer-b1-224", ("fused", "torch")),
                           ("train-b16-224", ("npmobilenet", "torch"))):  # fmt: skip
        case = cases.CASES[name]
        weights = Path(folder) / f"{name}.safetensors"
        if not weights.exists():
            cases.write_weights(case, weights)
        reps = 2 if args.quick else case.reps
        out[name] = {
            v: timing.run_worker(["--case", name, "--variant", v, "--weights", str(weights),
                                  "--reps", str(reps), "--breakdown"], args.threads)["breakdown"]
            for v in variants
        }  # fmt: skip
    return out


def print_table(results: dict, peak: dict) -> None:
    print(f"numpy sgemm 2048^3 peak: {peak['gflops']:.0f} GFLOP/s")
    head = f"{'case':<22}{'variant':<13}{'ms':>9}{'spread':>16}{'x torch':>9}{'GFLOP/s':>9}"
    print(head + f"{'% peak':>8}")
    for name, r in results.items():
        for variant, v in r["variants"].items():
            spread = f"{min(v['process_medians']) * 1e3:.1f}-{max(v['process_medians']) * 1e3:.1f}"
            print(f"{name:<22}{variant:<13}{v['seconds'] * 1e3:>9.1f}{spread:>16}"
                  f"{v['ratio_to_torch']:>9.2f}{v['gflops']:>9.1f}"
                  f"{100 * v['gflops'] / peak['gflops']:>7.0f}%")  # fmt: skip


def main(argv=None) -> int:
    args = parse_args(argv)
    report = {"machine": timing.machine(), "threads": args.threads, "rounds": args.rounds,
              "quick": args.quick}  # fmt: skip
    print(f"load average at the start: {report['machine'].get('load_average')}")
    print(f"CPU: {report['machine']['cpu']}\n{report['machine']['blas']}")
    if timing.blas_kernel_warning():
        print(timing.blas_kernel_warning())
    with tempfile.TemporaryDirectory() as folder:
        report["sgemm_peak"] = sgemm_peak(args.threads, args.rounds)
        names = args.cases.split(",")
        report["cases"] = {n: run_case(cases.CASES[n], args, folder) for n in names}
        if not args.no_breakdown:
            report["breakdowns"] = run_breakdowns(args, folder)
    if args.floor:
        report["floors"] = floor.run(names, args.threads, 1 if args.quick else 2,
                                     2 if args.quick else 5)  # fmt: skip
    report["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    for v in (v for r in report["cases"].values() for v in r["variants"].values()):
        v["share_of_peak"] = v["gflops"] / report["sgemm_peak"]["gflops"]
    print_table(report["cases"], report["sgemm_peak"])
    out = Path(args.out) if args.out else RESULTS / f"model{'_quick' if args.quick else ''}.json"
    if "breakdowns" in report:
        chart = out.with_name(f"{out.stem}_breakdown.png")
        show_breakdowns(report["breakdowns"], args.quick, chart)
    if "floors" in report:
        floor.print_report(report["floors"], report)
    timing.write_json(out, report)
    print(f"load average at the end: {report['load_average_end']}; wrote {out}")
    return 0


def show_breakdowns(breakdowns: dict, quick: bool, chart_path: Path) -> None:
    inference, training = breakdowns["infer-b1-224"], breakdowns["train-b16-224"]
    breakdown.print_inference({"npmobilenet (fused)": inference["fused"],
                               "torch": inference["torch"]})  # fmt: skip
    training = {"npmobilenet": training["npmobilenet"], "torch": training["torch"]}
    breakdown.print_training(training, 16, 2 if quick else cases.CASES["train-b16-224"].reps)
    if not quick:
        chart = breakdown.plot({"npmobilenet (fused)": inference["fused"],
                                "torch": inference["torch"]}, training,
                               chart_path)  # fmt: skip
        if chart:
            print(f"wrote {chart}")


if __name__ == "__main__":
    raise SystemExit(main())
