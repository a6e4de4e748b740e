"""Threads: BLAS's thread count, and splitting a batch over npmobilenet's own threads.

npmobilenet computes with two engines: BLAS (through NumPy's ``matmul``) for every GEMM, and
Numba kernels for the rest (depthwise convolution, im2col, fused epilogues). Both can use
threads, and on a small machine they must not both do so: with a Numba parallel region beside a
multi-threaded BLAS, idle threads of one pool spin while the other pool wants the cores.

The rule this project follows:

* **Numba kernels are serial** (no ``parallel=True`` anywhere), so Numba starts no threads;
  every op is a serial function of its arguments.
* **For one image, BLAS owns the cores**: it runs the GEMMs, ~95% of MobileNetV1's arithmetic,
  with as many threads as it was given (by default one per core).
* **For a batch, a** :class:`Runner` **owns the cores**: it runs a function on contiguous slices
  of the batch, one slice per thread, with BLAS at one thread meanwhile (:meth:`Runner.session`).
  Nothing spins while another pool wants the core. An op splits its batch only when it is
  *passed* a runner (the ``runner=`` keyword of ``ops.conv2d_forward`` and friends); a model
  owns one (``MobileNetV1.runner``) and hands it to its layers for a training step.

Sums over the batch (weight gradients, batch-norm statistics) are added slice by slice in slice
order: the result is deterministic for a given thread count, and differs from the serial one
only by float rounding (like a different BLAS thread count).

There is one knob: :func:`set_threads` sets how many threads a :class:`Runner` built without an
explicit count uses (default: the machine's cores, at most 4), and :func:`blas_threads` /
:func:`set_blas_threads` set BLAS's own count, through ``threadpoolctl`` (a dependency of
npmobilenet; if an install lacks it, they warn and change nothing, and a runner stays serial).
Without threadpoolctl, set BLAS's count with an environment variable *before* Python imports
NumPy::

    OPENBLAS_NUM_THREADS=1 python my_script.py   # OpenBLAS (NumPy's wheels)
    MKL_NUM_THREADS=1 python my_script.py        # MKL builds of NumPy
    OMP_NUM_THREADS=1 python my_script.py        # OpenMP-threaded BLAS builds

When the cores are shared (other processes, several workers each running a model, or PyTorch
in the same process, whose OpenMP threads also spin), one thread per process is often faster
than two fighting for a busy core.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import threading
import time
import warnings

import numpy as np

from npmobilenet import _flags

__all__ = [
    "Runner", "SERIAL", "num_threads", "set_threads", "blas_info", "blas_num_threads",
    "blas_threads", "set_blas_threads", "describe", "MIN_SLICE_ELEMENTS", "MACS_PER_ELEMENT",
]  # fmt: skip

_ENV_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS",
             "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")  # fmt: skip

# A slice of fewer elements (of the largest array an op touches) is not worth a thread: handing
# work to another thread costs tens of microseconds, more than small arrays take to process.
MIN_SLICE_ELEMENTS = 2**18
# A GEMM's multiply-adds counted as one element of work: ops weigh their GEMMs' work in elements
# with it, so a pointwise convolution whose multiply-adds outweigh its arrays is split over threads
# from 2 * MIN_SLICE_ELEMENTS * this (10.5 M) multiply-adds in a batch. Splitting still pays there
# on 2 threads: forward and backward of 64 images of 2x2 pixels, 256 -> 256 (16.8 M), 0.16 and
# 0.26 ms split against 0.19 and 0.37 whole under OpenBLAS's SkylakeX kernels (~235 GFLOP/s per
# core), 0.22 and 0.37 against 0.31 and 0.60 under its Haswell ones; at 128 -> 128 (4.2 M) splitting
# is even.
MACS_PER_ELEMENT = 20

_default_threads = max(1, min(os.cpu_count() or 1, 4))
# threadpoolctl's per-library controllers for BLAS, and len(sys.modules) when they were found:
# a BLAS library arrives with an extension module (SciPy brings its own OpenBLAS), so the
# libraries are looked for again only after new imports (a scan takes over a millisecond)
_blas_controllers: tuple[int, list] = (-1, [])


def _check_count(name, n):
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{name}: n must be an int >= 1, got {n!r}")


def num_threads() -> int:
    """How many threads a :class:`Runner` built without an explicit count splits work over."""
    return _default_threads


def set_threads(n: int) -> None:
    """Make runners built without an explicit count (a model's default) use ``n`` threads
    (1: serial, the kernels' own order of sums)."""
    global _default_threads
    _check_count("set_threads", n)
    _default_threads = n


class Runner:
    """Runs ``fn(lo, hi)`` on contiguous slices of a batch, one slice per thread.

    ``threads``: an int >= 1, or None for :func:`num_threads` at the time of each call.
    Pass a runner to an op (``runner=``) to split its batch loop; call ops inside
    :meth:`session` so that BLAS runs one thread per slice. :data:`SERIAL` is ``Runner(1)``:
    it calls ``fn(0, n_items)`` once, in the calling thread.
    """

    def __init__(self, threads: int | None = None) -> None:
        if threads is not None:
            _check_count("Runner", threads)
        self._threads = threads

    @property
    def threads(self) -> int:
        return num_threads() if self._threads is None else self._threads

    def __repr__(self) -> str:
        return f"Runner(threads={self._threads!r})"

    def slices(
        self, n_items: int, min_items: int = 1, last_extra: int = 0
    ) -> list[tuple[int, int]]:
        """``n_items`` cut into contiguous ``(lo, hi)`` ranges, at most one per thread, each at
        least ``min_items`` long (fewer ranges when the work is too small to be worth it).
        ``last_extra``: the last range is longer than the others by that many items (at most
        half of an even share, and never leaving the others under ``min_items``; the others
        equal, rounding adds fewer than one item per range)."""
        args = (self.threads, n_items, min_items, last_extra)
        if all(type(a) is int for a in args):  # a runner's own maps: plain ints, remembered
            return list(_slice_ranges(*args))
        return list(_slice_ranges.__wrapped__(*args))

    def map(
        self, fn, n_items: int, item_size: int = MIN_SLICE_ELEMENTS, caller_lead: int = 0
    ) -> list:
        """``[fn(lo, hi) for (lo, hi) in slices]``, the slices in parallel, results in order.

        ``item_size``: elements per item (per image) of the largest array the work touches;
        slices hold at least :data:`MIN_SLICE_ELEMENTS` elements, so small work is not split.
        The calling thread runs the last slice itself; an exception in any slice is raised here
        after every slice has finished (so no thread still writes into the caller's arrays).
        ``caller_lead``: elements by which the caller's slice is made longer than the others'
        (whole items of ``item_size``). The caller starts at once, another thread some 20-30 us
        later, once woken; a lead worth that time lets the others end first, so the map need
        not wait for one more wake-up (fine-grained items only: a lead shorter than one item
        changes nothing).
        """
        if self._threads == 1:  # SERIAL: one slice, whatever the sizes
            return [fn(0, n_items)]
        size = max(int(item_size), 1)
        ranges = self.slices(n_items, -(-MIN_SLICE_ELEMENTS // size), caller_lead // size)
        if len(ranges) == 1:
            return [fn(*ranges[0])]
        return _run_ranges(fn, ranges)

    @contextlib.contextmanager
    def session(self):
        """``with runner.session() as r:`` BLAS runs one thread inside the block (restored after)
        and ``r`` is this runner; or ``r`` is :data:`SERIAL` when there is nothing to split
        (one thread) or BLAS did not take the limit (OpenBLAS takes a thread count only from
        the program's main thread), since slices beside a multi-threaded BLAS oversubscribe."""
        if self.threads == 1:
            yield SERIAL
            return
        saved = [(c, c.num_threads) for c in _blas()]
        for c, _ in saved:
            c.set_num_threads(1)
        limited = all(c.num_threads == 1 for c, _ in saved)
        _enter_session(1)
        try:
            yield self if limited else SERIAL
        finally:
            _enter_session(-1)
            for c, num in saved:
                c.set_num_threads(num)


@functools.lru_cache(maxsize=1024)
def _slice_ranges(threads: int, n_items: int, min_items: int, last_extra: int) -> tuple:
    """:meth:`Runner.slices` for a runner of ``threads`` threads: a tuple of ``(lo, hi)``.
    A function of its arguments alone; a training step asks for the same few cuts over and
    over, so the answers for plain ints are remembered (computing one again costs a few
    microseconds, some of the ~20 us a two-thread map costs inside a session)."""
    k = max(1, min(threads, n_items // max(min_items, 1)))
    if k == 1:
        return ((0, n_items),)
    if last_extra <= 0:
        bounds = [n_items * i // k for i in range(k + 1)]
    else:
        extra = min(last_extra, n_items // (2 * k), n_items - k * min_items)
        step = (n_items - extra) // k  # the other ranges' length
        bounds = [i * step for i in range(k)] + [n_items]
    return tuple((bounds[i], bounds[i + 1]) for i in range(k))


class _Worker:
    """A thread that runs one ``fn(lo, hi)`` at a time.

    A job is handed to it through its flag ``_JOB``, and its end reported back through
    ``_DONE`` (int64 flags read and swapped atomically, :mod:`npmobilenet._flags`). Whoever
    waits for a flag spins on it without the GIL for :data:`SPIN_MICROSECONDS` inside a
    :meth:`Runner.session` (not at all outside one), then swaps it from ``_EMPTY`` to
    ``_ASLEEP`` and blocks on a lock (``_go`` for the worker, ``_done`` for the caller); whoever
    sets a flag swaps it from ``_EMPTY`` to ``_SET``, or, finding ``_ASLEEP``, releases the
    lock instead. Waking a thread that sleeps costs tens of microseconds (an idle core under a
    hypervisor), so does a wait for the GIL while another thread holds it: the worker reports
    the end of a job after releasing the GIL, and, seeing a job, lets the caller run the start
    of its own slice (Python, up to its first kernel) for :data:`GIL_GRACE_MICROSECONDS`
    before it asks for the GIL.
    A ``ThreadPoolExecutor`` (queue, future, condition) cost about 40 us more per map.
    """

    def __init__(self, index: int) -> None:
        self._go, self._done = threading.Lock(), threading.Lock()
        self._go.acquire()
        self._done.acquire()
        self._flags = np.zeros(2 * _LINE, np.int64)  # each flag on a cache line of its own
        self._job_flag = self._flags.ctypes.data + 8 * _JOB
        self._done_flag = self._flags.ctypes.data + 8 * _DONE
        self._job: tuple | None = None
        self._result = None
        name = f"npmobilenet-{index}"
        threading.Thread(target=self._loop, name=name, daemon=True).start()

    def start(self, fn, lo: int, hi: int) -> None:
        self._job = (fn, lo, hi)
        if _set(self._job_flag) == _ASLEEP:
            self._go.release()

    def result(self):
        """Wait for the job to finish: what it returned, or the exception it raised."""
        if _wait(self._done_flag) == _EMPTY:
            self._done.acquire()
        self._flags[_DONE] = _EMPTY
        result, self._result = self._result, None
        return result

    def _loop(self) -> None:
        got = _wait(self._job_flag, grace=True)
        while True:
            if got == _EMPTY:
                self._go.acquire()
            self._flags[_JOB] = _EMPTY
            fn, lo, hi = self._job
            self._job = None
            try:
                self._result = fn(lo, hi)
            except BaseException as e:  # noqa: BLE001 - raised by the map that started it
                self._result = e
            got = self._finish()

    def _finish(self) -> int:
        """Report the job's end, then wait for the next job: :func:`_wait`'s answer."""
        if _flags.available:
            spins, grace = _spin_counts()
            flags = (self._done_flag, self._job_flag, _ALLOWED)
            got = _flags.hand_over(*flags, spins, _ASLEEP, grace)
            if got != _flags.CALLER_ASLEEP:
                return got
        self._done.release()
        return _wait(self._job_flag, grace=True)


_EMPTY, _SET, _ASLEEP = 0, 1, -1  # what a flag holds
_LINE = 8  # int64s in a 64-byte cache line
_JOB, _DONE = 0, _LINE  # the flags' places in a worker's array
# How long a side waiting for a flag spins before it sleeps, inside a session. Between the maps
# of a batch-16, 224 training step the worker waits 50-200 us (10th to 90th percentile) while
# the caller runs the op's Python and single-thread work; a longer spin takes a core from
# whatever else runs then (a first step's compilations in another process).
SPIN_MICROSECONDS = 300
# How long a worker that sees a job waits before it asks for the GIL, while the caller runs its
# slice's Python up to its first kernel (3-20 us in a training step's ops); asking earlier
# finds the GIL held and puts the worker to sleep until the caller releases it, some 25-45 us.
GIL_GRACE_MICROSECONDS = 20
_spin_state = {"sessions": 0, "per_us": 0.0}  # open sessions, pause instructions a microsecond
_allowed = np.zeros(1, np.int64)  # 1 while a session is open: a spinning wait stops when it is 0
_ALLOWED = _allowed.ctypes.data
_spin_lock = threading.Lock()


def _spin_counts() -> tuple[int, int]:
    """Pause instructions for :data:`SPIN_MICROSECONDS` and :data:`GIL_GRACE_MICROSECONDS`
    inside a :meth:`Runner.session`; (0, 0) outside every session."""
    if not _spin_state["sessions"]:
        return 0, 0
    per_us = _spin_state["per_us"]
    return int(per_us * SPIN_MICROSECONDS), int(per_us * GIL_GRACE_MICROSECONDS)


def _wait(address: int, grace: bool = False) -> int:
    """Wait (without the GIL) for the flag at ``address``: _SET when it came (after the GIL
    grace, if ``grace``), or _EMPTY when nothing came in time and the flag now says _ASLEEP
    (the caller must block on its lock)."""
    if not _flags.available:
        return _EMPTY
    spins, wait_gil = _spin_counts()
    return _flags.wait(address, _ALLOWED, spins, _ASLEEP, wait_gil if grace else 0)


def _set(address: int) -> int:
    """Set the flag at ``address`` unless its waiter fell asleep: _EMPTY, or _ASLEEP (then the
    caller releases the waiter's lock)."""
    return _flags.swap(address, _SET) if _flags.available else _ASLEEP


def _enter_session(delta: int) -> None:
    """Count a session in (+1) or out (-1): inside any, waiting threads spin; after the last,
    threads still spinning stop (and sleep on their locks)."""
    with _spin_lock:
        _spin_state["sessions"] += delta
        _allowed[0] = 1 if _spin_state["sessions"] else 0
        if _flags.available and not _spin_state["per_us"]:
            _spin_state["per_us"] = _pauses_per_microsecond()


def _pauses_per_microsecond() -> float:
    """Pause instructions a microsecond on this CPU (a pause lasts from a few cycles to over a
    hundred, depending on the CPU), from 2000 on a private flag."""
    flag = np.zeros(1, np.int64)
    start = time.perf_counter()
    _flags.wait(flag.ctypes.data, _ALLOWED, 2000, _ASLEEP, 0)
    return 2000 / max((time.perf_counter() - start) * 1e6, 1.0)


_workers: list[_Worker] = []
_workers_lock = threading.Lock()  # held by the map using the workers


def _forget_workers() -> None:
    """In a forked child: the parent's worker threads do not exist here (and a lock another
    thread held at the fork stays held)."""
    global _workers_lock, _spin_lock
    _workers.clear()
    _workers_lock, _spin_lock = threading.Lock(), threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_workers)


def _run_ranges(fn, ranges) -> list:
    """The slices but the last on the workers, the last in the calling thread; results in
    order, a slice's exception raised once every slice has finished. While another map holds
    the workers (another thread's, or this one's, nested), every slice runs in the caller."""
    if not _workers_lock.acquire(blocking=False):
        results = []
        for lo, hi in ranges:
            try:
                results.append(fn(lo, hi))
            except BaseException as e:  # noqa: BLE001 - re-raised below
                results.append(e)
        return _raise_or_return(results)
    try:
        while len(_workers) < len(ranges) - 1:
            _workers.append(_Worker(len(_workers)))
        workers = _workers[: len(ranges) - 1]
        for w, (lo, hi) in zip(workers, ranges[:-1]):
            w.start(fn, lo, hi)
        try:
            last = fn(*ranges[-1])
        finally:
            results = _results(workers)
    finally:
        _workers_lock.release()
    return _raise_or_return([*results, last])


def _results(workers: list[_Worker]) -> list:
    try:
        return [w.result() for w in workers]
    except BaseException:  # interrupted while waiting (Ctrl-C): a worker may still be running
        _workers.clear()  # so the next map starts new ones
        raise


def _raise_or_return(results: list) -> list:
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return results


SERIAL = Runner(1)


def _blas():
    global _blas_controllers
    imported, controllers = _blas_controllers
    if imported != len(sys.modules):
        tpc = _threadpoolctl()
        libs = [] if tpc is None else tpc.ThreadpoolController().lib_controllers
        controllers = [c for c in libs if c.user_api == "blas"]
        _blas_controllers = (len(sys.modules), controllers)
    return controllers


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
        f" batches split over {num_threads()} npmobilenet threads by default (BLAS at 1"
        f" thread inside them); thread env vars: {env}"
    )


_NO_TPC = (
    "npmobilenet.threads: threadpoolctl is not installed, so BLAS threads cannot be changed at"
    " run time; set OPENBLAS_NUM_THREADS (or MKL_NUM_THREADS / OMP_NUM_THREADS) before starting"
    " Python, or pip install threadpoolctl"
)
