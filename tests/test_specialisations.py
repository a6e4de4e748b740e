"""A first run compiles each Numba kernel once per dtype.

Numba compiles a kernel once for every distinct combination of argument types it sees, array
layouts included: a kernel called once with a C-contiguous array and once with a strided view
compiles twice, and a first run pays both. These tests run a training step and an eval forward
in a fresh interpreter and read back, from every npmobilenet dispatcher, the signatures it
compiled (or loaded from the cache; a cached kernel brings the helpers it calls with it, so
those appear only on a cold cache).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

RUN = textwrap.dedent(
    """
    import gc, json, sys
    import numpy as np
    from numba.core import types
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
    found = {}
    for obj in gc.get_objects():
        if isinstance(obj, Dispatcher) and obj.py_func.__module__.startswith("npmobilenet"):
            # literal arguments (a constant stride passed by another kernel) are not counted
            sigs = {str(tuple(types.unliteral(t) for t in sig)) for sig in obj.signatures}
            if sigs:
                found[obj.py_func.__module__ + "." + obj.py_func.__name__] = sorted(sigs)
    print(json.dumps(found))
    """
)


@pytest.mark.parametrize("dtype, size", [("float32", 32), ("float64", 64)])
def test_first_run_compiles_each_kernel_once(dtype, size):
    """Training step, eval forward and the fused engine: one signature per kernel."""
    out = subprocess.run(
        [sys.executable, "-c", RUN, dtype, str(size)], capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-2000:]
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(found) >= 10, found  # the run reached the kernels at all
    repeated = {name: sigs for name, sigs in found.items() if len(sigs) > 1}
    assert not repeated, f"kernels compiled more than once: {repeated}"
    assert any(dtype in sig for sigs in found.values() for sig in sigs), found
