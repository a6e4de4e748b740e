"""Thread control between Numba kernels and BLAS.

npmobilenet computes with two engines: BLAS (through NumPy's ``matmul``) for every GEMM, and
Numba kernels for the rest (depthwise convolution, im2col, fused epilogues). Both can use
threads, and on a small machine they must not both do so: a prototype ran 15x slower (147 ms
instead of 9 ms per image) with a Numba parallel region beside a 2-thread BLAS, because idle
threads of one pool spin while the other pool wants the cores.

The rule this project follows:

* **Numba kernels are serial** (no ``parallel=True`` anywhere), so Numba starts no threads;
* **for one image, BLAS owns the cores**: it runs the GEMMs, ~95% of MobileNetV1's
  arithmetic, with as many threads as it was given (by default one per core);
* **for a batch, npmobilenet owns the cores** (``npmobilenet.parallel``: a model's training
  step, and ``FusedMobileNetV1`` on several images): its own threads each take a slice of the
  batch and run the serial kernels and one-thread BLAS calls on it, with BLAS set to one thread
  meanwhile. One pool of threads, so none spins while another wants the core.

This module lets you see and change BLAS's thread count at run time through ``threadpoolctl``
(a dependency of npmobilenet; if an install lacks it, these functions warn and change nothing).
Without it, set the thread count with an environment variable *before* Python imports NumPy::

    OPENBLAS_NUM_THREADS=1 python my_script.py   # OpenBLAS (NumPy's wheels)
    MKL_NUM_THREADS=1 python my_script.py        # MKL builds of NumPy
    OMP_NUM_THREADS=1 python my_script.py        # OpenMP-threaded BLAS builds

When to use fewer BLAS threads: when the cores are shared (other processes, several workers
each running a model, or PyTorch in the same process, whose OpenMP threads also spin), one BLAS
thread per process is often faster than two fighting for a busy core. Measure with
``benchmarks/bench_model.py``.
"""

from __future__ import annotations

import contextlib
import os
import warnings

_ENV_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS",
             "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")  # fmt: skip


def _threadpoolctl():
    try:
        import threadpoolctl
    except ImportError:
        return None
    return threadpoolctl


def blas_info() -> list[dict]:
    """The BLAS libraries loaded in this process, as threadpoolctl reports them.

    Each entry has at least ``internal_api`` (e.g. ``"openblas"``), ``version``,
    ``num_threads`` and, for OpenBLAS, ``architecture`` (the kernel set in use). An empty list
    when threadpoolctl is not installed.
    """
    tpc = _threadpoolctl()
    if tpc is None:
        return []
    return [lib for lib in tpc.threadpool_info() if lib.get("user_api") == "blas"]


def blas_num_threads() -> int | None:
    """BLAS's current thread count (the largest over loaded BLAS libraries), or None if unknown."""
    counts = [lib["num_threads"] for lib in blas_info()]
    return max(counts) if counts else None


def _check_count(name, n):
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{name}: n must be an int >= 1, got {n!r}")


@contextlib.contextmanager
def blas_threads(n: int):
    """Inside the ``with`` block, BLAS uses at most ``n`` threads; restored afterwards.

    Without threadpoolctl this warns once and changes nothing (use the environment variables
    in this module's docstring instead).
    """
    _check_count("blas_threads", n)
    tpc = _threadpoolctl()
    if tpc is None:
        warnings.warn(_NO_TPC, RuntimeWarning, stacklevel=3)
        yield
        return
    with tpc.threadpool_limits(limits=n, user_api="blas"):
        yield


def set_blas_threads(n: int) -> bool:
    """Set BLAS's thread count for the rest of the process; False (and a warning) if it can't."""
    _check_count("set_blas_threads", n)
    tpc = _threadpoolctl()
    if tpc is None:
        warnings.warn(_NO_TPC, RuntimeWarning, stacklevel=2)
        return False
    tpc.threadpool_limits(limits=n, user_api="blas")
    return True


def describe() -> str:
    """One paragraph on the threading set-up: cores, BLAS library and threads, Numba, env vars."""
    libs = blas_info()
    if libs:
        blas = "; ".join(
            f"{lib.get('internal_api')} {lib.get('version')}"
            f" ({lib.get('architecture', '?')} kernels, {lib.get('threading_layer', '?')}),"
            f" {lib['num_threads']} threads"
            for lib in libs
        )
    else:
        blas = "unknown (threadpoolctl not installed)"
    env = ", ".join(f"{k}={os.environ[k]}" for k in _ENV_VARS if k in os.environ) or "none set"
    return (
        f"cores: {os.cpu_count()}; BLAS: {blas}; Numba kernels: serial (no parallel regions);"
        f" training steps split over {_parallel_threads()} npmobilenet threads (BLAS at 1"
        f" thread inside them); thread env vars: {env}"
    )


def _parallel_threads() -> int:
    from npmobilenet import parallel

    return parallel.threads()


_NO_TPC = (
    "npmobilenet.threads: threadpoolctl is not installed, so BLAS threads cannot be changed at"
    " run time; set OPENBLAS_NUM_THREADS (or MKL_NUM_THREADS / OMP_NUM_THREADS) before starting"
    " Python, or pip install threadpoolctl"
)
