"""Compile a model's slow kernels in a second process while this one compiles the others.

With an empty Numba cache a first forward or training step spends most of its time compiling
kernels, one at a time on one core. A model knows which depthwise and batch-norm kernels its
forward (and, in training, its backward) will run and with which argument types, so before its
first forward it hands them to :func:`plan`, in the order it will call them; a layer's training
forward hands its backward's kernels to :func:`submit`. One worker process (``_WORKER_MAIN``:
this package, from where this process imported it) compiles them into Numba's on-disk cache
while this process compiles the rest: it takes the top of a stack, where :func:`plan` puts the
first needed and :func:`submit` the most recently submitted (the backward visits the layers in
reverse; submitting a queued kernel again moves it to the top unless its place came from a
plan). Before the first call of a handed-on kernel this process calls :func:`wait`: a kernel
the worker is compiling is waited for and then loaded from the cache (meanwhile this process
compiles queued kernels, the last needed first); one it has not started is taken back and
compiled here as usual.

A kernel already compiled in this process or found in the on-disk cache is never submitted, so
a warm run starts no worker. The worker exits when this process closes its end of the pipe.
``NPMOBILENET_COMPILE_AHEAD=0`` (read at import) turns compiling ahead off; so does a single
core, where it would gain nothing.
"""

from __future__ import annotations

import atexit
import importlib
import json
import os
import subprocess
import sys
import threading
from functools import cache

import numpy as np
from numba.core import event, types
from numba.core.dispatcher import Dispatcher
from numba.np.numpy_support import from_dtype

ENV = "NPMOBILENET_COMPILE_AHEAD"
WAIT_S = 300.0  # longest wait for one kernel (the worker compiles one in about a second)
PACKAGE = __package__  # "npmobilenet", also when run with -m


class Signature(tuple):
    """A tuple of Numba argument types that hashes once (a training step looks its kernels up
    by (kernel, signature) every layer; hashing Numba types each time would cost more)."""

    def __new__(cls, argtypes):
        self = super().__new__(cls, argtypes)
        self._hash = tuple.__hash__(self)
        return self

    def __hash__(self):
        return self._hash


@cache
def signature(dtype, arrays: int, ndim: int = 4, ints: int = 4, affine: bool = False) -> Signature:
    """Argument types of a kernel taking ``arrays`` C-contiguous (ndim) arrays of ``dtype``,
    then ``ints`` Python ints: what Numba sees when a wrapper passes contiguous arrays.
    ``affine``: then scale and shift, (C,) float64, and an int (the depthwise kernels of
    ``npmobilenet.kernels.tuned.AFFINE_INPUT``)."""
    array = types.Array(from_dtype(np.dtype(dtype)), ndim, "C")
    tail = (types.Array(types.float64, 1, "C"),) * 2 + (types.int64,) if affine else ()
    return Signature((array,) * arrays + (types.int64,) * ints + tail)


def submit(kernel: Dispatcher, sig: tuple) -> None:
    """Have the worker compile ``kernel`` for the argument types ``sig``, unless it is cached."""
    if _ENABLED and isinstance(kernel, Dispatcher):  # not a plain function (NUMBA_DISABLE_JIT)
        _WORKER.submit(kernel, sig)


def plan(kernels) -> None:
    """Have the worker compile ``kernels``, ``(kernel, sig)`` pairs in the order a run will
    first call them: the worker takes the first needed first, this process takes back (in
    :func:`wait`) what the worker has not started when it needs it. Cached ones are skipped."""
    if not _ENABLED:
        return
    for kernel, sig in reversed(list(dict.fromkeys(kernels))):  # the first needed on top
        if isinstance(kernel, Dispatcher):
            _WORKER.submit(kernel, sig, planned=True)


def enabled() -> bool:
    """Whether kernels are compiled ahead at all (a second core, not turned off)."""
    return _ENABLED


def expect_backward() -> None:
    """A training forward is starting: from now on, the first compilation of a kernel of this
    package (so the cache is cold) starts the worker, so that it is ready by the time the
    depthwise layers submit. Cheap after the first call."""
    global _armed
    if _armed or not _ENABLED:
        return
    _armed = True
    event.register("numba:compile", _StartOnCompile())


class _StartOnCompile(event.Listener):
    def on_start(self, ev) -> None:
        if ev.data["dispatcher"].py_func.__module__.startswith(PACKAGE + "."):
            _WORKER.start()

    def on_end(self, ev) -> None:
        pass


def wait(kernel: Dispatcher, sig: tuple) -> None:
    """Before the first call of ``kernel`` with ``sig``: wait for the worker if it is compiling
    it; take it back if the worker has not started it."""
    _WORKER.wait(kernel, sig)


def _enabled() -> bool:
    """Compiling ahead needs a second core, a Python to start, and not to be turned off."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return os.environ.get(ENV, "1") != "0" and bool(sys.executable) and cores > 1


def is_cached(kernel: Dispatcher, sig: tuple) -> bool:
    """Whether ``kernel`` is compiled for ``sig`` in this process or in Numba's disk cache
    (True when that cannot be told, so that nothing is compiled twice)."""
    if sig in kernel.overloads:
        return True
    try:
        cache = kernel._cache
        key = cache._index_key(sig, kernel.targetctx.codegen())
        return key in cache._cache_file._load_index()
    except Exception:  # a Numba without these internals, or no usable cache
        return True


_SETTLED = ("done", "taken")  # states that never change again


class _Worker:
    """The worker process and the kernels it was given, by state: "queued" (not sent yet),
    "compiling" (sent), "done" (in the cache, or its compilation failed) or "taken" (this
    process compiles it)."""

    def __init__(self):
        self.cond = threading.Condition()
        self.state: dict = {}
        self.queued: list = []  # a stack: the most recently (re)submitted is sent first
        self.planned: set = set()  # keys placed by plan()
        self.sent: dict = {}  # request id -> (kernel, sig)
        self.proc = None
        self.busy = False
        self.dead = False
        self.pid = os.getpid()  # a forked child must not talk to its parent's worker

    def submit(self, kernel, sig, planned: bool = False) -> None:
        """Queue ``(kernel, sig)`` on top; ``planned``: its place comes from :func:`plan`,
        which a later plain submit does not change."""
        key = (kernel, sig)
        if self.state.get(key) in _SETTLED:  # every step of a warm run: no lock needed
            return
        with self.cond:
            status = self.state.get(key)
            if status == "queued" and (planned or key not in self.planned):
                self.queued.remove(key)  # wanted by a later layer: its backward comes sooner
                self.queued.append(key)
            if planned:
                self.planned.add(key)
            if status is not None or self.dead or os.getpid() != self.pid:
                return
            self.state[key] = "checking"
        cached = is_cached(kernel, sig)  # reads the disk: outside the lock
        with self.cond:
            if self.state.get(key) != "checking":
                return
            if cached:
                self.state[key] = "done"
                return
            self.state[key] = "queued"
            self.queued.append(key)
            if self.proc is None and not self._start():
                return
            self._send_next()

    def start(self) -> None:
        """Start the worker now if it has not been (it waits for kernels to compile)."""
        if self.proc is not None or self.dead or os.getpid() != self.pid:
            return
        with self.cond:
            if self.proc is None and not self.dead:
                self._start()

    def wait(self, kernel, sig) -> None:
        if self.proc is None:  # no worker: nothing it could be compiling
            return
        key = (kernel, sig)
        if self.state.get(key, "done") in _SETTLED:
            return
        if os.getpid() != self.pid:  # a forked child: its parent's worker is not its own
            return
        with self.cond:
            status = self.state.get(key)
            if status == "queued":
                self.queued.remove(key)
                self.state[key] = "taken"
            while self.state.get(key) == "compiling" and self.queued and not self.dead:
                self._compile_here(self.queued.pop(0))  # rather than wait idle: the last needed
            if self.state.get(key) == "compiling":
                self.cond.wait_for(lambda: self.state[key] != "compiling", timeout=WAIT_S)

    def _compile_here(self, key) -> None:
        """With the lock held: compile a queued kernel in this process while the worker compiles
        the one this process is waiting for. The caller takes the bottom of the stack, the one
        needed last: the worker keeps the order of need, and this process is not held up by a
        long compilation of a kernel it needs only later while the one it waits for is ready."""
        self.state[key] = "taken"
        kernel, sig = key
        self.cond.release()
        try:
            kernel.compile(tuple(sig))
        except Exception:  # compiled (or the error raised) again at its first call
            pass
        finally:
            self.cond.acquire()

    def _start(self) -> bool:
        """Start the worker (importing this very package); False if it cannot start."""
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _WORKER_MAIN, root, PACKAGE], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            )  # fmt: skip
        except OSError:
            self._give_up()
            return False
        self.busy = True  # until the worker says it is ready: the stack may still change
        threading.Thread(target=self._read, args=(self.proc,), daemon=True).start()
        atexit.register(_close, self.proc)
        return True

    def _send_next(self) -> None:
        """With the lock held: send the top of the stack if the worker is idle."""
        if self.busy or self.dead or not self.queued:
            return
        key = self.queued.pop()
        kernel, sig = key
        rid = len(self.sent)
        self.sent[rid] = key
        request = {"id": rid, "module": kernel.py_func.__module__,
                   "name": kernel.py_func.__name__, "args": _encode(sig)}  # fmt: skip
        try:
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
        except (OSError, ValueError):
            self.queued.append(key)
            self._give_up()
            return
        self.state[key] = "compiling"
        self.busy = True

    def _read(self, proc) -> None:
        """The reader thread: mark each kernel the worker reports, send it the next one."""
        for line in proc.stdout:
            try:
                message = json.loads(line)
                rid = message["id"]  # None: ready, after its imports
            except (ValueError, KeyError, TypeError):
                break
            if rid is None and message.get("file") != os.path.abspath(__file__):
                break  # another copy of the package: its cache entries are not this one's
            with self.cond:
                if rid is not None:
                    self.state[self.sent[rid]] = "done"
                self.busy = False
                self._send_next()
                self.cond.notify_all()
        with self.cond:
            self._give_up()

    def _give_up(self) -> None:
        """With the lock held: no worker from now on; this process compiles everything."""
        self.dead = True
        for key, status in self.state.items():
            if status in ("queued", "compiling"):
                self.state[key] = "taken"
        self.queued.clear()
        self.cond.notify_all()


def _close(proc) -> None:
    """At exit: close the worker's input; it exits after the kernel it is compiling."""
    try:
        proc.stdin.close()
    except (OSError, ValueError):
        pass


def _encode(sig: tuple) -> list:
    """Argument types as JSON: ["array", dtype, ndim, layout] or ["scalar", name]."""
    return [
        ["array", str(t.dtype), t.ndim, t.layout] if isinstance(t, types.Array) else
        ["scalar", str(t)]
        for t in sig
    ]  # fmt: skip


def _decode(args: list) -> tuple:
    """The inverse of ``_encode`` (only plain numeric types)."""

    def scalar(name):
        t = getattr(types, name, None)
        if not isinstance(t, (types.Integer, types.Float, types.Boolean)):
            raise ValueError(f"compile_ahead: not a numeric type: {name!r}")
        return t

    return tuple(
        types.Array(scalar(a[1]), int(a[2]), a[3]) if a[0] == "array" else scalar(a[1])
        for a in args
    )


def _compile(module: str, name: str, args: list) -> None:
    """Compile the kernel ``module.name`` for ``args`` (it writes itself into the cache)."""
    if not module.startswith(PACKAGE + "."):
        raise ValueError(f"compile_ahead: not a {PACKAGE} module: {module!r}")
    kernel = getattr(importlib.import_module(module), name)
    if not isinstance(kernel, Dispatcher):
        raise ValueError(f"compile_ahead: not a Numba kernel: {module}.{name}")
    kernel.compile(_decode(args))


def serve(stdin, stdout) -> None:
    """The worker: say it is ready (id None, and which file it runs from), then compile each
    requested kernel and report its id (also on failure)."""
    stdout.write(json.dumps({"id": None, "file": os.path.abspath(__file__)}) + "\n")
    stdout.flush()
    for line in stdin:
        request = json.loads(line)
        try:
            _compile(request["module"], request["name"], request["args"])
        except Exception:  # the caller compiles it itself
            pass
        stdout.write(json.dumps({"id": request["id"]}) + "\n")
        stdout.flush()


def _serve_pipe() -> None:
    """``serve`` on the process's stdin and stdout; anything else written to stdout (Numba's
    NUMBA_DEBUG_CACHE log, say) goes to stderr instead of into the replies."""
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    serve(sys.stdin, replies)


# The worker's program: the package from the directory this one was imported from, ahead of
# the working directory that ``python -c`` and ``-m`` put first on the path (a checkout there
# would be another copy, with other cache entries). The package itself is an empty module with
# the package's directory as its path: its ``__init__`` (models, ops, the fused engine...) is
# not run, so the worker imports only this module and the kernel modules it is asked for, and
# is ready sooner. argv: [-c, root, package].
_WORKER_MAIN = (
    "import importlib, os, sys, types; p, name = sys.path, sys.argv[2]\n"
    "if p and p[0] in ('', os.getcwd()): del p[0]\n"
    "p.insert(0, sys.argv[1])\n"
    "package = sys.modules[name] = types.ModuleType(name)\n"
    "package.__path__ = [os.path.join(sys.argv[1], name)]\n"
    "importlib.import_module(name + '.compile_ahead')._serve_pipe()"
)


_ENABLED = _enabled()
_armed = False
_WORKER = _Worker()

if __name__ == "__main__":
    _serve_pipe()
