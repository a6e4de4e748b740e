"""Compiling a model's depthwise kernels in a worker process (npmobilenet.compile_ahead).

On an empty Numba cache the worker must compile kernels this process then loads from the cache
(it did real work), the gradients (or an eval forward's logits) must be bit for bit those of a
run without it (the same kernels ran), and a warm run must not start it at all.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from numba.core import types

from npmobilenet import compile_ahead, ops
from npmobilenet.ops.conv import conv2d_kernels

STEP = textwrap.dedent(
    """
    import gc, hashlib, json, sys
    import numpy as np
    from numba.core.dispatcher import Dispatcher
    from npmobilenet import MobileNetV1, compile_ahead, ops

    model = MobileNetV1(alpha=0.25, num_classes=10, seed=0)
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    if sys.argv[1] == "eval":
        model.eval()
        grads = model(x).tobytes()  # the logits
    else:
        loss, cache = ops.cross_entropy_forward(model(x), np.arange(4))
        model.backward(ops.cross_entropy_backward(1.0, cache), input_grad=False)
        grads = b"".join(p.grad.tobytes() for p in model.parameters())
    loaded, compiled = {}, {}
    for obj in gc.get_objects():
        if isinstance(obj, Dispatcher) and obj.py_func.__module__.startswith("npmobilenet"):
            name = obj.py_func.__name__
            loaded[name] = sum(obj.stats.cache_hits.values())
            compiled[name] = sum(obj.stats.cache_misses.values())
    print(json.dumps({"worker": compile_ahead._WORKER.proc is not None,
                      "grads": hashlib.sha256(grads).hexdigest(),
                      "loaded": loaded, "compiled": compiled}))
    """
)


def _step(cache_dir, ahead: bool, mode: str = "train") -> dict:
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache_dir)}
    env[compile_ahead.ENV] = "1" if ahead else "0"
    out = subprocess.run(
        [sys.executable, "-c", STEP, mode], capture_output=True, text=True, timeout=600, env=env
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_argument_types_round_trip_through_the_pipe(dtype):
    sig = compile_ahead.signature(dtype, 3) + (types.boolean, types.float64)
    assert compile_ahead._decode(json.loads(json.dumps(compile_ahead._encode(sig)))) == sig
    assert sig[0] == types.Array(getattr(types, dtype), 4, "C")


def test_worker_compiles_only_numeric_kernels_of_this_package():
    with pytest.raises(ValueError, match="not a numeric type"):
        compile_ahead._decode([["scalar", "pyobject"]])
    with pytest.raises(ValueError, match="not a npmobilenet module"):
        compile_ahead._compile("os", "system", [])
    with pytest.raises(ValueError, match="not a Numba kernel"):
        compile_ahead._compile("npmobilenet.kernels.tuned", "depthwise3x3_kernel", [])


def test_worker_reports_every_request_even_a_failed_one():
    from io import StringIO

    requests = [
        {"id": 0, "module": "os", "name": "system", "args": []},
        {"id": 1, "module": "npmobilenet.kernels.conv_direct", "name": "all_finite",
         "args": compile_ahead._encode((types.Array(types.float64, 1, "C"),))},
    ]  # fmt: skip
    out = StringIO()
    compile_ahead.serve(StringIO("".join(json.dumps(r) + "\n" for r in requests)), out)
    assert [json.loads(line)["id"] for line in out.getvalue().splitlines()] == [None, 0, 1]
    from npmobilenet.kernels.conv_direct import all_finite

    assert (types.Array(types.float64, 1, "C"),) in all_finite.overloads
    assert all_finite(np.array([1.0, np.inf])) is False


@pytest.mark.slow
def test_cold_step_loads_the_workers_kernels_and_gives_the_same_gradients(tmp_path):
    with_worker = _step(tmp_path / "ahead", ahead=True)
    alone = _step(tmp_path / "alone", ahead=False)
    assert with_worker["worker"] and not alone["worker"]
    assert with_worker["grads"] == alone["grads"]
    backward = [n for n in with_worker["loaded"] if n.startswith("depthwise3x3_backward")]
    from_worker = [n for n in backward if with_worker["loaded"][n]]
    assert from_worker, with_worker  # compiled by the worker, loaded here from the cache
    # nothing compiled twice in this process, and each depthwise kernel the run without the
    # worker compiled was either compiled here or loaded (helpers come inside their callers)
    assert all(n <= 1 for n in with_worker["compiled"].values()), with_worker["compiled"]
    for name, n in alone["compiled"].items():
        if n and name.startswith("depthwise3x3"):
            assert with_worker["compiled"][name] + with_worker["loaded"][name] == 1, name
    warm = _step(tmp_path / "ahead", ahead=True)
    assert not warm["worker"] and warm["grads"] == alone["grads"]
    assert not any(warm["compiled"].values()), warm["compiled"]


def test_plain_functions_and_forked_children_are_left_alone(monkeypatch):
    """Under NUMBA_DISABLE_JIT the kernels are plain functions: nothing to compile. A child
    forked after the worker started must neither talk to it nor wait for it."""
    worker = compile_ahead._Worker()
    monkeypatch.setattr(compile_ahead, "_WORKER", worker)
    monkeypatch.setattr(compile_ahead, "WAIT_S", 5.0)  # a wrong wait fails fast
    compile_ahead.submit(lambda x: x, compile_ahead.signature("float32", 1))
    assert worker.state == {} and worker.proc is None
    from npmobilenet.kernels.conv_direct import all_finite

    sig = compile_ahead.signature("float32", 1, ndim=1, ints=0)
    worker.state[(all_finite, sig)] = "compiling"  # as a parent's worker left it
    worker.pid = -1  # this process is not the one that started it
    started = time.perf_counter()
    compile_ahead.wait(all_finite, sig)  # returns at once instead of waiting
    assert time.perf_counter() - started < 1.0
    compile_ahead.submit(all_finite, compile_ahead.signature("float64", 1, ndim=1, ints=0))
    assert worker.proc is None and worker.queued == []


@pytest.mark.slow
def test_cold_eval_forward_loads_the_workers_forward_kernels(tmp_path):
    """An eval forward hands its depthwise kernels on too: the same logits, bit for bit."""
    with_worker = _step(tmp_path / "ahead", ahead=True, mode="eval")
    alone = _step(tmp_path / "alone", ahead=False, mode="eval")
    assert with_worker["worker"] and not alone["worker"]
    assert with_worker["grads"] == alone["grads"]
    forward = [n for n in with_worker["loaded"] if n.startswith("depthwise3x3_forward")]
    assert any(with_worker["loaded"][n] for n in forward), with_worker
    cached = [f.name for f in (tmp_path / "ahead").rglob("*.nbi")]  # Numba's cache indexes
    assert any("depthwise3x3_forward" in f for f in cached), cached
    assert not any("backward" in f for f in cached), cached  # no training kernels compiled
    assert all(n <= 1 for n in with_worker["compiled"].values()), with_worker["compiled"]
    warm = _step(tmp_path / "ahead", ahead=True, mode="eval")
    assert not warm["worker"] and warm["grads"] == alone["grads"]
    assert not any(warm["compiled"].values()), warm["compiled"]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "shape, stride, padding",
    [((2, 4, 14, 14), 1, 1), ((2, 4, 17, 17), 1, 1), ((2, 4, 15, 16), 2, 1),
     ((3, 4, 4, 4), 1, 1), ((1, 4, 9, 9), 2, "tf_same"), ((2, 4, 5, 5), 1, 0)],
)  # fmt: skip
def test_conv2d_kernels_are_the_kernels_the_ops_run(monkeypatch, shape, stride, padding, dtype):
    """What a model hands on ahead is what the depthwise forward and backward then call, in
    that order and with those argument types (so the worker's kernels are the ones loaded)."""
    called = []
    monkeypatch.setattr(compile_ahead, "wait", lambda kernel, sig: called.append((kernel, sig)))
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(dtype)
    w = rng.standard_normal((shape[1], 1, 3, 3)).astype(dtype)
    out, cache = ops.conv2d_forward(x, w, stride=stride, padding=padding, groups=shape[1])
    ops.conv2d_backward(np.ones_like(out), cache)
    forward, backward = conv2d_kernels(shape, w.shape, stride, padding, 1, shape[1], "auto", dtype)
    assert called == [*forward, *backward]
    assert all(tuple(sig) in kernel.overloads for kernel, sig in called)  # the types that ran


def test_conv2d_kernels_of_other_convolutions_and_bad_arguments_are_empty():
    assert conv2d_kernels((2, 3, 8, 8), (4, 3, 3, 3), 1, 1) == ((), ())  # im2col
    assert conv2d_kernels((2, 4, 8, 8), (8, 4, 1, 1)) == ((), ())  # pointwise
    assert conv2d_kernels((2, 4, 8, 8), (4, 1, 3, 3), 1, 1, dilation=2, groups=4) == ((), ())
    assert conv2d_kernels((2, 4, 2, 2), (4, 1, 3, 3), 1, 0, groups=4) == ((), ())  # too small
    assert conv2d_kernels((2, 4, 8, 8), (4, 1, 3, 3), 0, 1, groups=4) == ((), ())  # stride 0


@pytest.mark.parametrize("training, channels", [(True, 3), (False, 3), (True, 1)])
def test_a_models_plan_is_the_kernels_its_step_runs_in_order(monkeypatch, training, channels):
    """MobileNetV1 hands on, before its first forward, the kernels its forward and backward
    then call one by one: the blocks' forwards in order, their backwards in reverse."""
    from npmobilenet import MobileNetV1

    planned, called = [], []
    monkeypatch.setattr(compile_ahead, "plan", lambda kernels: planned.extend(kernels))
    monkeypatch.setattr(compile_ahead, "wait", lambda kernel, sig: called.append((kernel, sig)))
    monkeypatch.setattr(compile_ahead, "_ENABLED", True)
    model = MobileNetV1(alpha=0.25, num_classes=10, in_channels=channels, seed=0)
    model.train(training)
    x = np.random.default_rng(0).standard_normal((2, channels, 64, 48)).astype(np.float32)
    logits = model(x)
    if training:
        model.backward(np.ones_like(logits), input_grad=False)
    assert planned == called
    assert len({kernel for kernel, _ in planned}) >= (5 if training else 2), planned
    before = len(planned)
    model(x)  # the same shape and mode again: planned once
    assert len(planned) == before


@pytest.fixture
def busy_worker(monkeypatch):
    """A started worker that is busy (nothing is sent to it), installed as this process's, and
    four uncompiled kernel keys ``(kernel, signature)`` to queue on it."""
    from npmobilenet.kernels.conv_direct import all_finite, valid_range
    from npmobilenet.kernels.im2col import col2im, im2col_images

    worker = compile_ahead._Worker()
    monkeypatch.setattr(compile_ahead, "_WORKER", worker)
    monkeypatch.setattr(compile_ahead, "_ENABLED", True)
    monkeypatch.setattr(compile_ahead, "is_cached", lambda kernel, sig: False)
    worker.proc, worker.busy = object(), True
    sig = compile_ahead.signature("float32", 1, ndim=1, ints=0)
    return worker, [(k, sig) for k in (all_finite, valid_range, col2im, im2col_images)]


def test_a_plan_puts_the_first_needed_on_top_and_later_submits_keep_its_order(busy_worker):
    """The worker takes the top of the stack: after plan([a, b, c]) that is a; a layer's
    later submit of c (already planned) leaves it where the plan put it, while a submit of a
    kernel outside the plan goes on top; taken back in wait(), a kernel leaves the stack."""
    worker, (a, b, c, d) = busy_worker
    compile_ahead.plan([a, b, a, c])
    assert worker.queued == [c, b, a]  # the top (the end) is the first needed
    compile_ahead.submit(*c)
    compile_ahead.submit(*d)
    assert worker.queued == [c, b, a, d]
    compile_ahead.wait(*b)  # not started: taken back, compiled by the caller
    assert worker.queued == [c, a, d] and worker.state[b] == "taken"


def test_while_the_worker_compiles_what_is_awaited_the_caller_takes_the_last_needed(
    busy_worker, monkeypatch
):
    """wait() for a kernel the worker is compiling compiles queued kernels in the meantime,
    from the bottom of the stack (the one needed last), and stops once the awaited one is
    done: the worker keeps taking kernels in the order they are needed."""
    worker, (a, b, c, d) = busy_worker
    compile_ahead.plan([a, b, c])
    worker.state[d] = "compiling"  # sent to the worker
    compiled = []

    def compile_here(key):  # the worker finishes d while the caller compiles one kernel
        compiled.append(key)
        worker.state[key], worker.state[d] = "taken", "done"

    monkeypatch.setattr(worker, "_compile_here", compile_here)
    compile_ahead.wait(*d)
    assert compiled == [c] and worker.queued == [b, a]


def test_worker_imports_this_package_not_a_copy_in_the_working_directory(tmp_path):
    """``python -c`` puts the working directory first on the path: a checkout of another
    version there must not be what the worker compiles (its cache entries would be another
    file's); and what else the worker prints to stdout stays out of the replies."""
    fake = tmp_path / compile_ahead.PACKAGE
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('the copy in the working directory')\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(compile_ahead.__file__)))
    request = {"id": 0, "module": "npmobilenet.kernels.conv_direct", "name": "all_finite",
               "args": compile_ahead._encode((types.Array(types.float64, 1, "C"),))}  # fmt: skip
    env = {**os.environ, "NUMBA_DEBUG_CACHE": "1", "NUMBA_CACHE_DIR": str(tmp_path / "cache")}
    out = subprocess.run(
        [sys.executable, "-c", compile_ahead._WORKER_MAIN, root, compile_ahead.PACKAGE],
        input=json.dumps(request) + "\n", capture_output=True, text=True, timeout=120,
        cwd=tmp_path, env=env,
    )  # fmt: skip
    replies = [json.loads(line) for line in out.stdout.splitlines()]
    assert replies == [{"id": None, "file": os.path.abspath(compile_ahead.__file__)}, {"id": 0}]
    assert "[cache]" in out.stderr  # Numba's cache log went to stderr
    assert list((tmp_path / "cache").rglob("*all_finite*.nbi"))  # compiled into the cache


def test_worker_does_not_run_the_package_init(tmp_path):
    """The worker imports only compile_ahead and the kernel modules it is asked for: a package
    whose ``__init__`` fails still gives a worker that starts, says where it runs from and
    compiles a kernel of a module beside it."""
    package = tmp_path / compile_ahead.PACKAGE
    package.mkdir()
    (package / "__init__.py").write_text("raise ImportError('the package init ran')\n")
    (package / "compile_ahead.py").write_text(open(compile_ahead.__file__).read())
    (package / "k.py").write_text(
        "from numba import njit\n\n\n@njit(cache=True)\ndef twice(x):\n    return 2 * x\n"
    )
    request = {"id": 0, "module": f"{compile_ahead.PACKAGE}.k", "name": "twice",
               "args": compile_ahead._encode((types.float64,))}  # fmt: skip
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache")}
    out = subprocess.run(
        [sys.executable, "-c", compile_ahead._WORKER_MAIN, str(tmp_path), compile_ahead.PACKAGE],
        input=json.dumps(request) + "\n", capture_output=True, text=True, timeout=120,
        cwd=tmp_path, env=env,
    )  # fmt: skip
    replies = [json.loads(line) for line in out.stdout.splitlines()]
    assert replies == [{"id": None, "file": str(package / "compile_ahead.py")}, {"id": 0}]
    assert list((tmp_path / "cache").rglob("*twice*.nbi"))  # compiled into the cache
