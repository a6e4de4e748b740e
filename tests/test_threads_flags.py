"""The flag hand-over of npmobilenet.threads: spinning inside a session, locks after it."""

from __future__ import annotations

import functools
import os
import signal
import threading
import time

import numpy as np
import pytest

from npmobilenet import _flags, threads
from npmobilenet.threads import Runner


def _until(predicate, seconds=10.0):
    end = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > end:
            return False
        time.sleep(0.001)
    return True


def test_flags_are_built_here():
    assert _flags.available  # x86-64 and aarch64 with llvmlite: CI must run the spinning path


ON = np.ones(1, np.int64)  # spinning allowed
OFF = np.zeros(1, np.int64)


def test_wait_swaps_an_unset_flag_to_asleep_and_returns_a_set_one():
    flag = np.zeros(1, np.int64)
    assert _flags.wait(flag.ctypes.data, ON.ctypes.data, 100, -1, 0) == 0  # nothing came
    assert flag[0] == -1
    flag[0] = 7
    assert _flags.wait(flag.ctypes.data, ON.ctypes.data, 100, -1, 10) == 7  # left in place
    assert flag[0] == 7
    flag[0] = 0
    assert _flags.swap(flag.ctypes.data, 1) == 0 and flag[0] == 1  # swapped
    assert _flags.swap(flag.ctypes.data, 5) == 1 and flag[0] == 1  # held 1: not swapped


def test_wait_sees_a_value_another_thread_stores_while_it_spins():
    flag = np.zeros(1, np.int64)
    got = []
    allowed = np.ones(1, np.int64)
    args = (flag.ctypes.data, allowed.ctypes.data, 10**12, -1, 0)  # hours of spinning
    for stop in ("set", "disallow"):
        got = []
        t = threading.Thread(target=lambda got=got: got.append(_flags.wait(*args)))
        t.start()  # spins without the GIL: this thread keeps running
        time.sleep(0.02)
        assert t.is_alive()
        if stop == "set":
            assert _flags.swap(flag.ctypes.data, 3) == 0
        else:
            allowed[0] = 0  # stops spinning: swaps the flag to asleep
        t.join(10)
        assert got == ([3] if stop == "set" else [0]) and flag[0] == (3 if stop == "set" else -1)
        flag[0], allowed[0] = 0, 1


def test_hand_over_reports_a_sleeping_waiter_or_waits_for_the_next_job():
    flags = np.zeros(16, np.int64)
    done, job = flags.ctypes.data, flags.ctypes.data + 64
    flags[0] = -1  # the caller sleeps on its lock
    assert _flags.hand_over(done, job, ON.ctypes.data, 100, -1, 0) == _flags.CALLER_ASLEEP
    assert flags[0] == -1 and flags[8] == 0  # nothing else touched
    flags[0] = 0
    assert _flags.hand_over(done, job, OFF.ctypes.data, 10**12, -1, 0) == 0  # no job: asleep
    assert flags[0] == 1 and flags[8] == -1
    flags[:] = 0
    flags[8] = 1
    assert _flags.hand_over(done, job, ON.ctypes.data, 100, -1, 0) == 1 and flags[0] == 1


def _worker_flag(k):
    return threads._workers[0]._flags[k]


def test_a_job_posted_while_the_worker_spins_and_after_it_fell_asleep(
    split_everything, monkeypatch
):
    monkeypatch.setattr(threads, "SPIN_MICROSECONDS", 200_000)  # 0.2 s: surely still spinning
    runner = Runner(2)
    with runner.session() as r:
        assert r.map(lambda lo, hi: (lo, hi), 6) == [(0, 3), (3, 6)]
        assert _worker_flag(threads._JOB) == threads._EMPTY  # spinning, not asleep
        assert r.map(lambda lo, hi: (lo, hi), 8) == [(0, 4), (4, 8)]
        monkeypatch.setattr(threads, "SPIN_MICROSECONDS", 50)
        r.map(lambda lo, hi: None, 2)  # the worker's next wait is 50 us long
        assert _until(lambda: _worker_flag(threads._JOB) == threads._ASLEEP)
        assert r.map(lambda lo, hi: (lo, hi), 4) == [(0, 2), (2, 4)]  # woken through its lock
        assert _worker_flag(threads._DONE) == threads._EMPTY


def test_nothing_spins_outside_a_session(split_everything, monkeypatch):
    monkeypatch.setattr(threads, "SPIN_MICROSECONDS", 10**8)  # 100 s, were it spinning
    assert Runner(2).map(lambda lo, hi: hi, 4) == [2, 4]
    assert _until(lambda: _worker_flag(threads._JOB) == threads._ASLEEP, 5.0)
    with Runner(2).session() as r:
        assert r.map(lambda lo, hi: hi, 4) == [2, 4]
        time.sleep(0.05)
        assert _worker_flag(threads._JOB) == threads._EMPTY  # spinning inside
    assert _until(lambda: _worker_flag(threads._JOB) == threads._ASLEEP, 5.0)  # stopped at exit


def test_a_caller_that_fell_asleep_is_woken_with_the_worker_result(
    split_everything, monkeypatch
):
    monkeypatch.setattr(threads, "SPIN_MICROSECONDS", 20)
    caller = threading.get_ident()

    def fn(lo, hi):
        if threading.get_ident() != caller:
            time.sleep(0.05)  # far longer than the caller spins
        return lo

    with Runner(2).session() as r:
        assert r.map(fn, 4) == [0, 2]
        assert _worker_flag(threads._DONE) == threads._EMPTY


def test_slice_errors_and_nested_maps_inside_a_session(split_everything):
    done = []

    def fails(lo, hi):
        if lo == 0:
            raise ZeroDivisionError("worker's slice")
        time.sleep(0.01)
        done.append(lo)

    def nested(lo, hi):
        return Runner(2).map(lambda a, b: (lo + a, lo + b), 4)  # runs in this thread

    with Runner(2).session() as r:
        with pytest.raises(ZeroDivisionError, match="worker's slice"):
            r.map(fails, 4)
        assert done == [2]  # the caller's slice had ended
        assert r.map(nested, 4) == [[(0, 2), (2, 4)], [(2, 4), (4, 6)]]
        assert r.map(lambda lo, hi: hi - lo, 10) == [5, 5]  # the workers serve on


@pytest.mark.parametrize("spin_us", [0, 1, 5, 30])
def test_many_maps_at_the_spin_limit_keep_their_results(split_everything, monkeypatch, spin_us):
    """Maps of slices that end before, around and after the wait gives up: each hand-over
    takes either path, and every result comes back to the right map."""
    monkeypatch.setattr(threads, "SPIN_MICROSECONDS", spin_us)
    rng = np.random.default_rng(spin_us)
    pauses = rng.choice([0.0, 0.0, 2e-5, 1e-4], size=(300, 3))

    def fn(lo, hi, i, p):
        if p[lo]:
            time.sleep(p[lo])
        return i, lo

    with Runner(3).session() as r:
        for i, p in enumerate(pauses):
            assert r.map(functools.partial(fn, i=i, p=p), 3) == [(i, 0), (i, 1), (i, 2)]


def test_a_child_forked_inside_a_session_maps(split_everything):
    with Runner(2).session() as r:
        assert r.map(lambda lo, hi: hi - lo, 8) == [4, 4]
        pid = os.fork()
        if pid == 0:
            signal.alarm(60)
            with Runner(2).session() as rc:
                ok = rc.map(lambda lo, hi: (lo, hi), 6) == [(0, 3), (3, 6)]
            os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_without_the_flags_the_locks_hand_over_alone(split_everything, monkeypatch):
    monkeypatch.setattr(_flags, "available", False)
    threads._workers.clear()  # new workers, started on the lock-only path
    with Runner(3).session() as r:
        for n in (3, 9, 12):
            assert r.map(lambda lo, hi: (lo, hi), n) == Runner(3).slices(n)

    def fails(lo, hi):  # in the worker's slice
        if lo == 0:
            raise ValueError(f"slice {lo}")

    with pytest.raises(ValueError, match="slice 0"):
        Runner(2).map(fails, 4)
    threads._workers.clear()  # the flag-path workers come back for the other tests
