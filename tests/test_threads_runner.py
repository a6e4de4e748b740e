"""Splitting work over slices of the batch (npmobilenet.threads.Runner) against serial runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from npmobilenet import ops, threads
from npmobilenet.kernels.batchnorm import FLAT_MAX_L
from npmobilenet.models import MobileNetV1
from npmobilenet.ops.batchnorm import batch_norm_act_backward, batch_norm_act_forward
from npmobilenet.ops.conv import conv2d_backward, conv2d_forward
from npmobilenet.testing.conv import conv2d_configs, conv2d_kwargs, make_conv2d_inputs
from npmobilenet.threads import SERIAL, Runner

pytestmark = pytest.mark.kernels  # also run under NUMBA_BOUNDSCHECK=1 in CI: kernels on slices


@given(n=st.integers(0, 50), parts=st.integers(1, 5), min_items=st.integers(1, 7),
       extra=st.integers(0, 30), numpy_ints=st.booleans())  # fmt: skip
def test_slices_cover_the_items_in_order(n, parts, min_items, extra, numpy_ints):
    # plain ints take the remembered answers, NumPy ints the computation afresh
    args = tuple(map(np.int64, (n, min_items, extra))) if numpy_ints else (n, min_items, extra)
    ranges = Runner(parts).slices(*args)
    assert isinstance(ranges, list)
    assert ranges[0][0] == 0 and ranges[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    assert 1 <= len(ranges) <= parts
    if len(ranges) > 1:
        k = len(ranges)
        assert all(hi - lo >= min_items for lo, hi in ranges)
        lengths = [hi - lo for lo, hi in ranges]
        if extra == 0:  # even: lengths differ by at most one
            assert max(lengths) - min(lengths) <= 1
        else:  # the others equal, the last longer by the extra (capped), plus rounding
            (step,) = set(lengths[:-1])
            want = min(extra, n // (2 * k), n - k * min_items)
            assert want <= lengths[-1] - step <= want + k - 1


def test_serial_runs_once_and_a_runner_splits_in_order(split_everything):
    assert SERIAL.map(lambda lo, hi: (lo, hi), 10) == [(0, 10)]
    assert Runner(3).map(lambda lo, hi: (lo, hi), 10) == [(0, 3), (3, 6), (6, 10)]
    assert Runner(3).map(lambda lo, hi: (lo, hi), 0) == [(0, 0)]  # an empty batch: one call
    seen = []
    Runner(3).map(lambda lo, hi: seen.append(threading.current_thread().name), 9)
    caller = threading.current_thread().name  # runs one slice itself, the pool the others
    assert len(seen) == 3 and seen.count(caller) == 1
    assert all(name.startswith("npmobilenet") for name in seen if name != caller)


def test_maps_from_two_threads_or_nested_get_their_own_results(split_everything):
    """The workers serve one map at a time: a map started meanwhile (from another thread, or
    from inside a slice) runs its slices in its own thread, with the same results."""
    inner = []

    def nested(lo, hi):
        inner.append(Runner(2).map(lambda a, b: (a + lo, b + lo), 4))
        return lo

    got = []
    t = threading.Thread(target=lambda: got.append(Runner(3).map(nested, 9)), daemon=True)
    t.start()
    t.join(timeout=60)  # a map waiting for workers its own slices hold would never return
    assert got == [[0, 3, 6]]
    assert sorted(inner) == [[(k, k + 2), (k + 2, k + 4)] for k in (0, 3, 6)]
    outs = {}
    barrier = threading.Barrier(2)

    def run(key):
        barrier.wait()
        outs[key] = [Runner(2).map(lambda lo, hi: (key, lo, hi), 6) for _ in range(200)]

    workers = [threading.Thread(target=run, args=(k,)) for k in "ab"]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    for k in "ab":
        assert outs[k] == [[(k, 0, 3), (k, 3, 6)]] * 200


def test_a_forked_child_maps_with_workers_of_its_own(split_everything):
    assert Runner(2).map(lambda lo, hi: hi - lo, 8) == [4, 4]  # the parent's workers exist
    pid = os.fork()
    if pid == 0:  # the child: exit code 0 only if the map comes back right
        signal.alarm(60)  # waiting for the parent's workers (absent here) would never end
        ok = Runner(3).map(lambda lo, hi: (lo, hi), 9) == [(0, 3), (3, 6), (6, 9)]
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_a_runner_without_a_count_follows_set_threads():
    saved = threads.num_threads()
    try:
        threads.set_threads(2)
        assert Runner().threads == 2 and Runner(3).threads == 3
        threads.set_threads(1)
        assert Runner().threads == 1
    finally:
        threads.set_threads(saved)


def test_map_raises_a_slice_error_after_every_slice_finished(split_everything):
    done = []

    def fn(lo, hi):
        if lo == 0:
            raise ZeroDivisionError("first slice")
        done.append(lo)

    with pytest.raises(ZeroDivisionError, match="first slice"):
        Runner(3).map(fn, 9)
    assert sorted(done) == [3, 6]


def test_session_runs_blas_on_one_thread_and_restores_it(split_everything):
    if threads.blas_num_threads() is None:
        pytest.fail("threadpoolctl should be installed with npmobilenet")
    threads.set_blas_threads(2)
    runner = Runner(3)
    with runner.session() as r:
        assert r is runner and threads.blas_num_threads() == 1
    assert threads.blas_num_threads() == 2
    with Runner(1).session() as r:
        assert r is SERIAL and threads.blas_num_threads() == 2


def test_session_never_splits_beside_a_multithreaded_blas(split_everything):
    """In a thread other than the main one OpenBLAS may ignore a new thread count: the session
    must then hand out the serial runner rather than split beside a 2-thread BLAS."""
    threads.set_blas_threads(2)
    seen = {}

    def worker():
        with Runner(3).session() as r:
            seen["threads"], seen["blas"] = r.threads, threads.blas_num_threads()

    t = threading.Thread(target=worker)
    t.start()
    t.join(30)
    assert seen["threads"] == 1 or seen["blas"] == 1, seen
    assert threads.blas_num_threads() == 2


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_thread_counts_are_checked(bad):
    with pytest.raises(ValueError, match="set_threads: n must be an int >= 1"):
        threads.set_threads(bad)
    with pytest.raises(ValueError, match="Runner: n must be an int >= 1"):
        Runner(bad)


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])  # same set-up for all
@given(
    cfg=conv2d_configs(dtypes=(np.float64,), allow_unbatched=False),
    method=st.sampled_from(["direct", "im2col", "auto"]),
    ahead=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_conv_split_over_the_batch_equals_serial(split_everything, cfg, method, ahead, seed):
    """Split over three threads: the serial numbers (``ahead``: the split forward announces
    its backward, which then reuses the im2col columns each slice built)."""
    arrays = make_conv2d_inputs(cfg, seed)
    dout = np.random.default_rng(seed + 1).standard_normal(cfg["out_shape"])
    out, cache = conv2d_forward(**arrays, **conv2d_kwargs(cfg), method=method)
    grads = conv2d_backward(dout, cache)
    runner = Runner(3)
    out_s, cache_s = conv2d_forward(**arrays, **conv2d_kwargs(cfg), method=method, runner=runner,
                                    backward_ahead=ahead)  # fmt: skip
    grads_s = conv2d_backward(dout, cache_s, runner=runner)
    np.testing.assert_array_equal(out_s, out)  # per image: the same sums
    for g, g_s in zip(grads, grads_s):  # dW, db: the slices' sums added (rounding only)
        if g is None:
            assert g_s is None
        else:
            np.testing.assert_allclose(g_s, g, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("activation", ["relu", "relu6"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("hw", [6, 3])  # planes of 36 pixels split by channels; 9, by images
@pytest.mark.parametrize("C, n_threads", [(5, 3), (41, 2), (41, 3)])  # 41: the caller's range
def test_batch_norm_split_equals_serial(split_everything, activation, dtype, hw, C, n_threads):
    """Planes walked as rows are split by channels (each channel summed by one thread: the
    same bits as serial), flat planes by images (the slices' sums added: rounding only)."""
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((7, C, hw, hw)) * 3 + 1).astype(dtype)
    w, b = rng.standard_normal(C).astype(dtype), rng.standard_normal(C).astype(dtype)
    dout = rng.standard_normal(x.shape).astype(dtype)
    stats, stats_s = (
        [np.zeros(C, dtype), np.ones(C, dtype)],
        [np.zeros(C, dtype), np.ones(C, dtype)],
    )
    out, cache = batch_norm_act_forward(x, w, b, *stats, True, activation=activation)
    grads = batch_norm_act_backward(dout, cache)
    r = Runner(n_threads)
    out_s, cache_s = batch_norm_act_forward(
        x, w, b, *stats_s, True, activation=activation, runner=r
    )
    grads_s = batch_norm_act_backward(dout, cache_s, runner=r)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == np.float64 else dict(rtol=1e-5, atol=1e-6)
    if hw * hw >= FLAT_MAX_L:
        tol = dict(rtol=0, atol=0)
    for got, want in zip((out_s, *grads_s, *stats_s), (out, *grads, *stats)):
        np.testing.assert_allclose(got, want, **tol)


@pytest.mark.parametrize("n_threads", [2, 3, 4])
@pytest.mark.parametrize(
    "C, per_channel, lead",
    [(41, 252, 2**17), (41, 3136, 2**16), (64, 200704, 2**17), (3, 10, 2**17)],
)
def test_map_gives_the_caller_a_longer_slice(split_everything, n_threads, C,
                                                        per_channel, lead):  # fmt: skip
    """The channel kernels' ranges cover the channels once, in order, one per thread; the other
    threads' are equal, the calling thread's (the last) longer than theirs by lead //
    per_channel channels (at most half of an even share; rounding adds fewer than k)."""
    calls = []
    record = lambda lo, hi: calls.append((lo, hi, threading.get_ident()))  # noqa: E731
    Runner(n_threads).map(record, C, per_channel, caller_lead=lead)
    calls.sort()
    k = min(n_threads, C)
    assert [lo for lo, _, _ in calls] == [0] + [hi for _, hi, _ in calls[:-1]]
    assert calls[-1][1] == C and len(calls) == k
    assert calls[-1][2] == threading.get_ident()  # the caller's
    assert len({t for _, _, t in calls}) == k
    (step,) = {hi - lo for lo, hi, _ in calls[:-1]}
    extra = min(lead // per_channel, C // (2 * k))
    assert extra <= (C - calls[-1][0]) - step <= extra + k - 1


def test_model_training_step_split_equals_serial(split_everything):
    """A whole MobileNetV1 step on 3 threads against the same step on 1 (float64)."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 3, 40, 40))
    y = np.array([0, 1, 2, 3, 4])

    def step(n_threads):
        model = MobileNetV1(alpha=0.25, num_classes=5, dtype=np.float64, seed=1).train()
        model.runner = Runner(n_threads)
        loss, cache = ops.cross_entropy_forward(model.forward(x), y)
        dx = model.backward(ops.cross_entropy_backward(1.0, cache))
        return [float(loss), dx, *(p.grad for p in model.parameters()),
                *model.state_dict().values()]  # fmt: skip

    serial, split = step(1), step(3)
    for a, b in zip(split, serial):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("min_slice, split", [(1, True), (10**9, False)])
def test_model_splits_only_batches_worth_it_and_leaves_blas_its_threads_otherwise(
    monkeypatch, min_slice, split
):
    """A batch whose largest activation holds fewer than two slices of MIN_SLICE_ELEMENTS runs
    its layers on the serial runner with BLAS at its own thread count; a larger one gets the
    model's runner (and its session)."""
    monkeypatch.setattr(threads, "MIN_SLICE_ELEMENTS", min_slice)
    before = threads.blas_num_threads()
    threads.set_blas_threads(2)
    model = MobileNetV1(alpha=0.25, num_classes=3, dtype=np.float64, seed=0).train()
    model.runner = Runner(2)
    seen = []
    for name in ("fc", "first_conv"):  # the last forward and the last backward
        for method in ("forward", "backward"):
            bound = getattr(getattr(model, name), method)
            monkeypatch.setattr(getattr(model, name), method, lambda *a, _f=bound, **kw: (
                seen.append((model._workspace.runner, threads.blas_num_threads())),
                _f(*a, **kw))[1])  # fmt: skip
    try:
        x = np.random.default_rng(0).standard_normal((4, 3, 32, 32))
        loss, cache = ops.cross_entropy_forward(model.forward(x), np.arange(4) % 3)
        model.backward(ops.cross_entropy_backward(1.0, cache))
    finally:
        threads.set_blas_threads(before or 2)
    assert len(seen) == 4
    if split:
        assert all(runner is model.runner for runner, _ in seen), seen
    else:
        assert seen == [(SERIAL, 2)] * 4


def test_session_limits_a_blas_library_loaded_after_its_first_use():
    # SciPy ships its own OpenBLAS, loaded on import: a session entered before and after that
    # import must hold every BLAS in the process at one thread (threadpoolctl's own count)
    code = (
        "from npmobilenet import threads\n"
        "threads.set_blas_threads(2)\n"
        "with threads.Runner(2).session(): pass\n"
        "import scipy.linalg\n"
        "threads.set_blas_threads(2)\n"
        "with threads.Runner(2).session():\n"
        "    print(len(threads.blas_info()), threads.blas_num_threads())\n"
        "print(threads.blas_num_threads())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["2", "1", "2"]
