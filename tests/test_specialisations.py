"""A first run compiles each Numba kernel once per dtype, and a second run compiles nothing.

Numba compiles a kernel once for every distinct combination of argument types it sees, array
layouts and literal arguments included: a kernel called once with a C-contiguous array and once
with a strided view compiles twice, and so does a helper called once with a constant stride and
once with a variable one. A first run pays every one of them. These tests run a training step
and an eval forward in a fresh interpreter and read back, from every npmobilenet dispatcher, the
signatures it compiled (or loaded from the cache; a cached kernel brings the helpers it calls
with it, so those appear only on a cold cache), and how many of them came from Numba's on-disk
cache.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

RUN = textwrap.dedent(
    """
    import gc, json, sys
    import numpy as np
    from numba.core.dispatcher import Dispatcher
    from npmobilenet import MobileNetV1, ops, optim

    dtype = np.dtype(sys.argv[1])
    model = MobileNetV1(alpha=0.25, num_classes=10, dtype=dtype, seed=0)
    opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = np.random.default_rng(0).standard_normal((4, 3, int(sys.argv[2]), int(sys.argv[2])))
    x = x.astype(dtype)
    loss, cache = ops.cross_entropy_forward(model(x), np.arange(4))
    model.backward(ops.cross_entropy_backward(1.0, cache), input_grad=False)
    opt.step()
    model.eval()
    model(x[:1])
    model.fuse()(x[:1])
    found, loaded, compiled = {}, {}, {}
    for obj in gc.get_objects():
        if isinstance(obj, Dispatcher) and obj.py_func.__module__.startswith("npmobilenet"):
            name = obj.py_func.__module__ + "." + obj.py_func.__name__
            if obj.signatures:  # literal arguments (Literal[int](1)) count as their own
                found[name] = sorted(str(sig) for sig in obj.signatures)
            loaded[name] = sum(obj.stats.cache_hits.values())
            compiled[name] = sum(obj.stats.cache_misses.values())
    print(json.dumps({"signatures": found, "loaded": loaded, "compiled": compiled}))
    """
)


def _run(dtype: str, size: int, env=None) -> dict:
    """RUN in a fresh interpreter; its signatures, cache loads and compilations per kernel."""
    out = subprocess.run(
        [sys.executable, "-c", RUN, dtype, str(size)],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _assert_once_each(found: dict, dtype: str) -> None:
    assert len(found) >= 10, found  # the run reached the kernels at all
    repeated = {name: sigs for name, sigs in found.items() if len(sigs) > 1}
    assert not repeated, f"kernels compiled more than once: {repeated}"
    assert any(dtype in sig for sigs in found.values() for sig in sigs), found


@pytest.mark.parametrize("dtype, size", [("float32", 32), ("float64", 64)])
def test_first_run_compiles_each_kernel_once(dtype, size):
    """Training step, eval forward and the fused engine: one signature per kernel."""
    _assert_once_each(_run(dtype, size)["signatures"], dtype)


@pytest.mark.slow
def test_second_run_loads_every_kernel_from_the_cache(tmp_path):
    """With an empty cache the first run compiles (each kernel once, helpers included); a
    second process with the same cache compiles nothing and loads every kernel it calls."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    first = _run("float32", 32, env)
    _assert_once_each(first["signatures"], "float32")
    assert sum(first["compiled"].values()) >= 10, first["compiled"]  # the cache was empty
    second = _run("float32", 32, env)
    recompiled = {name: n for name, n in second["compiled"].items() if n}
    assert not recompiled, f"compiled again despite the cache: {recompiled}"
    entry_points = {name for name, n in second["loaded"].items() if n}
    assert entry_points == set(second["signatures"]), second
    assert entry_points <= set(first["signatures"]), (entry_points, first["signatures"])
