"""Tell the user when Numba compiles kernels, which happens once per install.

Numba compiles each kernel the first time it runs and caches the machine code on disk
(``cache=True``), so only a first run pays. Inside ``announce_compilation()`` the first real
compilation (not a load from the cache) prints one line to stderr saying so, progress follows at
most every few seconds, and leaving the block prints the total. A warm run prints nothing.

The announced duration is how much longer the default ``npmobilenet train`` took with an empty
cache than with a warm one on a 2-core machine (13.4 s instead of 6.4 s); the printed total counts
the compilations of this process (the depthwise kernels compile meanwhile in a worker, see
``npmobilenet.compile_ahead``).
"""

from __future__ import annotations

import sys
import threading
import time
from contextlib import contextmanager

from numba.core import event

FIRST_RUN_SECONDS = 7  # about: what compiling adds to the default `npmobilenet train`
PROGRESS_EVERY_S = 3.0


class CompileProgress(event.Listener):
    """A numba ``numba:compile`` event listener that counts top-level compilations."""

    def __init__(self, stream=None, expected_s: float = FIRST_RUN_SECONDS):
        self.stream = stream if stream is not None else sys.stderr
        self.expected_s = expected_s
        self.compiled = 0
        self.seconds = 0.0  # time spent inside top-level compilations
        self._depth = threading.local()
        self._lock = threading.Lock()
        self._started = None
        self._last_print = 0.0

    def _say(self, text: str) -> None:
        print(f"npmobilenet: {text}", file=self.stream, flush=True)

    def on_start(self, event) -> None:
        depth = getattr(self._depth, "n", 0)
        self._depth.n = depth + 1
        if depth:
            return  # a kernel compiled as part of another one
        with self._lock:
            now = time.perf_counter()
            if self._started is None:
                self._started = self._last_print = now
                self._say(f"compiling kernels, first run only, about {self.expected_s} s "
                          "(cached for later runs)")  # fmt: skip
            self._depth.t0 = now

    def on_end(self, event) -> None:
        self._depth.n -= 1
        if self._depth.n:
            return
        with self._lock:
            now = time.perf_counter()
            self.compiled += 1
            self.seconds += now - self._depth.t0
            if now - self._last_print >= PROGRESS_EVERY_S:
                self._last_print = now
                self._say(f"compiling kernels: {self.compiled} done, {self.seconds:.0f} s")

    def finish(self) -> None:
        if self.compiled:
            self._say(f"compiled {self.compiled} kernels in {self.seconds:.1f} s; "
                      "later runs load them from the cache")  # fmt: skip


@contextmanager
def announce_compilation(stream=None, expected_s: float = FIRST_RUN_SECONDS):
    """Within the block, report Numba compilations (not cache loads) on ``stream`` (stderr)."""
    progress = CompileProgress(stream, expected_s)
    event.register("numba:compile", progress)
    try:
        yield progress
    finally:
        event.unregister("numba:compile", progress)
        progress.finish()
