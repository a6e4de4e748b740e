"""Splitting a training step across npmobilenet's own threads, one slice of the batch each.

Why not BLAS's threads and Numba's ``parallel=True``: on a small machine the two thread pools
fight. After each multi-threaded GEMM, OpenBLAS's idle worker spins for a while on a core; a
Numba kernel split over two threads right then runs no faster than on one (measured here: 4.8 ms
either way for a batch-16 depthwise layer), and a Numba parallel region beside a 2-thread BLAS
was 15x slower than serial in an early prototype (see ``npmobilenet.threads``).

So inside a model's training step the work is split by *images*, by one pool of Python threads
that both engines share: each thread takes a contiguous slice of the batch and runs the serial
kernels on it, Numba kernels (compiled ``nogil=True``) and one-thread BLAS calls alike (NumPy
releases the GIL around both). Then nothing spins: measured at batch 16 on 2 cores, a depthwise
layer 2.96 instead of 4.84 ms, a pointwise GEMM as fast as 2-thread BLAS (10.9 vs 11.1 ms), and
a weight gradient (a GEMM summing over pixels, which BLAS does not split) 1.2-2x faster.

Sums over the batch (weight gradients, batch-norm statistics) are added slice by slice in
slice order: the result is deterministic for a given number of threads, and differs from the
serial one only by float rounding (like a different BLAS thread count).

Use: a model enters :func:`splitting` around its forward and backward; ops call :func:`run`,
which outside that block (an op called on its own) runs the whole batch at once, serially.
Splitting needs BLAS at one thread; where BLAS will not be limited (OpenBLAS takes a thread
count only from the program's main thread), the step runs serially instead.
:func:`set_threads` chooses the thread count (default: the machine's cores, at most 4).
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

__all__ = [
    "threads", "set_threads", "splitting", "run", "slices", "parts", "MIN_SLICE_ELEMENTS",
    "MACS_PER_ELEMENT",
]  # fmt: skip

_local = threading.local()
_threads = max(1, min(os.cpu_count() or 1, 4))
_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()
_blas_controllers = None  # threadpoolctl's per-library controllers for BLAS, found once


def threads() -> int:
    """How many threads a model's training step is split across."""
    return _threads


def set_threads(n: int) -> None:
    """Split training steps across ``n`` threads (1: serial, the kernels' order of sums)."""
    global _threads, _executor
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"set_threads: n must be an int >= 1, got {n!r}")
    with _executor_lock:
        if _executor is not None and n != _threads:
            _executor.shutdown(wait=True)
            _executor = None
        _threads = n


def _pool() -> ThreadPoolExecutor:
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(_threads - 1, thread_name_prefix="npmobilenet")
        return _executor


def _blas():
    global _blas_controllers
    if _blas_controllers is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:
            _blas_controllers = []
        else:
            libs = ThreadpoolController().lib_controllers
            _blas_controllers = [c for c in libs if c.user_api == "blas"]
    return _blas_controllers


@contextmanager
def splitting():
    """Inside the block (in this thread), :func:`run` splits work across :func:`threads`
    threads, and BLAS runs with one thread (each of ours calls it); restored afterwards."""
    n = _threads
    if n == 1 or getattr(_local, "parts", 1) > 1:  # serial, or already inside
        yield
        return
    saved = [(c, c.num_threads) for c in _blas()]
    for c, _ in saved:
        c.set_num_threads(1)
    if any(c.num_threads > 1 for c, _ in saved):
        # BLAS did not take it: OpenBLAS ignores a thread count set from any thread but the
        # main one (measured here). Splitting beside a multi-threaded BLAS would oversubscribe
        # the cores, so this block runs serially with BLAS as it is.
        for c, num in saved:
            c.set_num_threads(num)
        yield
        return
    _local.parts = n
    try:
        yield
    finally:
        _local.parts = 1
        for c, num in saved:
            c.set_num_threads(num)


def parts() -> int:
    """Into how many slices :func:`run` splits work here (1 outside :func:`splitting`)."""
    return getattr(_local, "parts", 1)


def slices(n_items: int, min_items: int = 1) -> list[tuple[int, int]]:
    """``n_items`` cut into contiguous ``(lo, hi)`` ranges, one per thread, each at least
    ``min_items`` long (fewer ranges when the work is too small to be worth splitting)."""
    k = max(1, min(parts(), n_items // max(min_items, 1)))
    bounds = [n_items * i // k for i in range(k + 1)]
    return [(bounds[i], bounds[i + 1]) for i in range(k)]


# A slice of fewer elements (of the largest array an op touches) is not worth a thread: handing
# work to another thread costs tens of microseconds. Measured: alpha 0.25 at 32x32, batch 64
# (arrays of 2^17 elements and less) ran 21 ms per step serially and 28-36 ms split in two.
MIN_SLICE_ELEMENTS = 2**18
# A GEMM's multiply-adds per element of memory-bound work taking about as long (~100 GFLOP/s
# per core against ~1 ns per element): ops weigh their GEMMs' work in elements with it.
MACS_PER_ELEMENT = 20


def run(fn, n_items: int, item_size: int = MIN_SLICE_ELEMENTS) -> list:
    """``[fn(lo, hi) for (lo, hi) in slices(...)]``, the slices in parallel.

    ``item_size``: elements per item (per image) of the largest array the op touches; slices
    hold at least :data:`MIN_SLICE_ELEMENTS` elements, so small work is not split at all.
    The calling thread runs the last slice itself; an exception in any slice is raised here
    (after every slice has finished, so no thread still writes into the caller's arrays).
    """
    ranges = slices(n_items, -(-MIN_SLICE_ELEMENTS // max(int(item_size), 1)))
    if len(ranges) == 1:
        return [fn(*ranges[0])]
    pool = _pool()
    futures = [pool.submit(fn, lo, hi) for lo, hi in ranges[:-1]]
    try:
        last = fn(*ranges[-1])
    finally:
        results = []
        for f in futures:
            try:
                results.append(f.result())
            except BaseException as e:  # noqa: BLE001 - re-raised below
                results.append(e)
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return [*results, last]
