"""Timing shared by the benchmark scripts: each library in its own process, alternating, medians.

Why processes: torch's OpenMP threads and OpenBLAS's threads keep spinning for a while after
each call, and take the cores from whichever library runs next in the same process (measured:
torch 11.6 -> 23.4 ms and the fused engine 9.0 -> 15.8 ms when interleaved in one process). So
every measurement here is one fresh Python process (``worker.py``) that builds one thing, calls
it once untimed (compilation, allocation, thread pools), then times ``reps`` calls and reports
their median. The parent runs the processes in alternation, A B A B ..., so that load from other
programs on the machine hits every variant alike, and keeps each process's median: the result
of a variant is the best of its process medians, with the spread shown beside it.

The sgemm peak (numpy float32 2048^3 matmul) is measured the same way, in its own processes,
in the same run: a case's share of it is ``FLOPs per call / seconds per call / peak``.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).resolve().parent / "worker.py"
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def time_calls(fn, reps: int) -> list[float]:
    """Seconds of each of ``reps`` calls of ``fn`` (warm it up first)."""
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def sgemm_gflops(n: int = 2048, reps: int = 5) -> float:
    """numpy float32 ``(n, n) @ (n, n)`` throughput in GFLOP/s (median of ``reps`` calls)."""
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    out = np.empty_like(a)
    np.matmul(a, a, out=out)  # warm-up: BLAS's threads and caches
    times = time_calls(lambda: np.matmul(a, a, out=out), reps)
    return 2 * n**3 / statistics.median(times) / 1e9


def run_worker(args: list[str], threads: int, timeout: float = 1800) -> dict:
    """Run ``worker.py ARGS`` in a fresh process at ``threads`` threads; its JSON result."""
    env = {**os.environ, **dict.fromkeys(THREAD_VARIABLES, str(threads))}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "tests"),
                                         env.get("PYTHONPATH", "")])  # fmt: skip
    cmd = [sys.executable, str(WORKER), *args, "--threads", str(threads)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[1:])} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def alternate(jobs: dict[str, list[str]], rounds: int, threads: int, pause: float = 0.5) -> dict:
    """Run every job's worker once per round, in the same order each round (A B A B ...).

    ``jobs``: name -> worker arguments. Returns name -> list of the worker results, one per
    round.
    """
    results = {name: [] for name in jobs}
    for _ in range(rounds):
        for name, args in jobs.items():
            time.sleep(pause)  # let the previous process's threads wind down
            results[name].append(run_worker(args, threads))
    return results


def summarize(results: list[dict]) -> dict:
    """Per-process medians of one variant, the best of them (seconds), and its first call."""
    medians = [statistics.median(r["times"]) for r in results]
    return {
        "seconds": min(medians),
        "process_medians": medians,
        "first_call": min(r["first_call"] for r in results),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in results),
    }


# Environment variables that choose OpenBLAS's kernels. Set, they override its detection of the
# CPU: OPENBLAS_CORETYPE=Haswell on an AVX-512 machine runs the AVX2 kernels, at about half the
# sgemm throughput where the cores execute 512-bit instructions at full width.
BLAS_KERNEL_VARIABLES = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def cpu_model() -> str:
    """The CPU's name, family and model as Linux reports them ('' elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    fields = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
        if not line.strip():  # the first processor's block is enough
            break
    return (f"{fields.get('model name', '?')}, family {fields.get('cpu family', '?')}"
            f" model {fields.get('model', '?')}")  # fmt: skip


def blas_kernel_warning() -> str | None:
    """A warning when the environment pins OpenBLAS's kernels (None when it does not)."""
    pinned = {k: os.environ[k] for k in BLAS_KERNEL_VARIABLES if k in os.environ}
    if not pinned:
        return None
    names = " ".join(f"-u {k}" for k in BLAS_KERNEL_VARIABLES)
    return (f"warning: {', '.join(f'{k}={v}' for k, v in pinned.items())} pins OpenBLAS's"
            f" kernels for numpy, this benchmark and its peak; to time what OpenBLAS picks for"
            f" this CPU, run it as: env {names} python benchmarks/...")  # fmt: skip


def machine() -> dict:
    """What the numbers depend on: the machine, its load, the library versions, the BLAS kernels
    (``npmobilenet.threads.describe``: library, kernel set, threads, the variables that
    choose them)."""
    import numba

    from npmobilenet import threads

    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu": cpu_model(),
        "blas": threads.describe(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "time_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
    }
    if hasattr(os, "getloadavg"):
        info["load_average"] = list(os.getloadavg())
    return info


def write_json(path, data: dict) -> None:
    """Write ``data`` to ``path`` as indented JSON (via a temporary file, then renamed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)
