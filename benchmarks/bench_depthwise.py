"""Depthwise 3x3 convolution speed at every MobileNetV1 layer shape: direct vs im2col vs torch.

Usage::

    python benchmarks/bench_depthwise.py                 # batch 1, about a minute
    python benchmarks/bench_depthwise.py --batch 1 32    # add batch 32 (a few minutes)
    python benchmarks/bench_depthwise.py --torch-threads 1 2 --no-compile

For each depthwise layer of MobileNetV1 (alpha 1, 224x224 input: C channels, H x H input,
stride s, 3x3 kernel, padding 1, float32) it times ``conv2d_forward`` and ``conv2d_backward``
with ``method="direct"`` and ``method="im2col"``, and torch.nn.functional.conv2d forward and
autograd backward (dx and dweight) when torch is installed. Runs alternate between the
implementations (direct, im2col, torch, direct, ...) so that load from other processes hits all
of them alike; each cell is the median of the rounds. Ratios are our time / torch's time:
below 1 means faster than torch.

Then it measures first-call latency (Numba compilation) in fresh subprocesses: once with an
empty ``NUMBA_CACHE_DIR`` (cold: every kernel is compiled) and once more with the cache that
run left behind (warm: kernels are loaded from disk).

Threading, which must be controlled explicitly on a small machine:

* Our Numba kernels are serial (no ``parallel=True``), so ``NUMBA_NUM_THREADS`` does not matter.
* ``method="im2col"`` (and every pointwise convolution) calls BLAS through ``np.matmul``. Its
  thread count is set here with threadpoolctl (``--blas-threads``, default 1); without
  threadpoolctl, set ``OPENBLAS_NUM_THREADS`` / ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` before
  starting Python. Never let a multi-threaded Numba region and a multi-threaded BLAS share the
  cores: they oversubscribe and both slow down many times.
* torch uses ``torch.set_num_threads`` (``--torch-threads``, default 1, i.e. serial against
  serial; pass ``1 2`` to also see torch on both cores). The ratio columns compare against the
  first value given.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def depthwise_layers(res: int = 224) -> list[tuple[int, int, int]]:
    """(C, H, stride) of each distinct depthwise layer of MobileNetV1 (alpha 1) at ``res``,
    read off the model's fused layers."""
    from npmobilenet import MobileNetV1
    from npmobilenet.kernels.fused_conv3x3 import conv_out_size

    layers = MobileNetV1(seed=0).fuse().layers
    h, out = conv_out_size(res, layers[0].stride), []
    for layer in layers[1:]:
        if layer.kind == "depthwise":
            out.append((layer.weight.shape[-1], h, layer.stride))
            h = conv_out_size(h, layer.stride)
    return list(dict.fromkeys(out))


def ours(method, x, w, dout, stride):
    """Forward and backward closures for one of our methods."""
    from npmobilenet.ops import conv2d_backward, conv2d_forward

    C = x.shape[1]

    def fwd():
        return conv2d_forward(x, w, stride=stride, padding=1, groups=C, method=method)

    _, cache = fwd()

    def bwd():
        return conv2d_backward(dout, cache)

    return fwd, bwd


def theirs(torch, x, w, dout, stride):
    """torch forward and autograd-backward closures (dx and dweight, as ours compute)."""
    C = x.shape[1]
    tx = torch.from_numpy(x).requires_grad_(True)
    tw = torch.from_numpy(w).requires_grad_(True)
    td = torch.from_numpy(dout)

    def fwd():
        with torch.no_grad():
            return torch.nn.functional.conv2d(tx, tw, stride=stride, padding=1, groups=C)

    out = torch.nn.functional.conv2d(tx, tw, stride=stride, padding=1, groups=C)

    def bwd():
        return torch.autograd.grad(out, (tx, tw), td, retain_graph=True)

    return fwd, bwd


def time_alternating(fns, rounds):
    """Median seconds of each callable, calling them in turn ``rounds`` times after a warm-up."""
    for f in fns:
        f()
    samples = [[] for _ in fns]
    for _ in range(rounds):
        for i, f in enumerate(fns):
            t0 = time.perf_counter()
            f()
            samples[i].append(time.perf_counter() - t0)
    return [statistics.median(s) for s in samples]


def set_threads(blas_threads):
    """Limit BLAS threads (threadpoolctl if present, else env vars only); return a description."""
    try:
        from threadpoolctl import threadpool_info, threadpool_limits
    except ImportError:
        return "threadpoolctl not installed: BLAS threads as set by OPENBLAS_NUM_THREADS etc."
    threadpool_limits(blas_threads, user_api="blas")
    libs = [f"{i['internal_api']} x{i['num_threads']}" for i in threadpool_info()]
    return "BLAS via threadpoolctl: " + ", ".join(libs)


def bench(batches, torch_threads, rounds, torch):
    rng = np.random.default_rng(0)
    names = ["direct", "im2col"] + [f"torch@{t}" for t in torch_threads] * (torch is not None)
    ref = names[2] if len(names) > 2 else "(no torch)"
    print(f"\nmedian ms per call over alternating rounds; ratio = direct / {ref}")
    header = (
        f"{'C':>5} {'H':>4} {'s':>2} {'N':>3} | fwd: "
        + " ".join(f"{n:>9}" for n in names)
        + "  ratio | bwd: "
        + " ".join(f"{n:>9}" for n in names)
        + "  ratio"
    )
    print(header)
    print("-" * len(header))
    worst = {}
    for N in batches:
        r = rounds if N == 1 else max(3, rounds // 3)
        for C, H, s in depthwise_layers():
            OH = (H - 1) // s + 1
            x = rng.standard_normal((N, C, H, H)).astype(np.float32)
            w = (rng.standard_normal((C, 1, 3, 3)) / 3).astype(np.float32)
            dout = rng.standard_normal((N, C, OH, OH)).astype(np.float32)
            pairs = [ours("direct", x, w, dout, s), ours("im2col", x, w, dout, s)]
            for _ in torch_threads if torch is not None else []:
                pairs.append(theirs(torch, x, w, dout, s))
            # torch's thread count is process-wide: time each torch column at its own setting
            fwd_t = _time_pairs(torch, torch_threads, pairs, 0, r)
            bwd_t = _time_pairs(torch, torch_threads, pairs, 1, r)
            ratio_f = fwd_t[0] / fwd_t[2] if len(fwd_t) > 2 else float("nan")
            ratio_b = bwd_t[0] / bwd_t[2] if len(bwd_t) > 2 else float("nan")
            worst[N] = max(worst.get(N, 0.0), ratio_f)
            print(
                f"{C:>5} {H:>4} {s:>2} {N:>3} | fwd: "
                + " ".join(f"{1e3 * t:9.3f}" for t in fwd_t)
                + f"  {ratio_f:5.2f} | bwd: "
                + " ".join(f"{1e3 * t:9.3f}" for t in bwd_t)
                + f"  {ratio_b:5.2f}",
                flush=True,
            )
    for N, v in worst.items():
        print(f"batch {N}: worst direct/torch forward ratio {v:.2f}")


def _time_pairs(torch, torch_threads, pairs, which, rounds):
    """Median times of ours and torch's, alternating; one pass per torch thread count.

    torch's thread count is process-wide and changing it rebuilds its thread pool, so it is set
    once per pass, never between calls. Ours are taken from the first pass.
    """
    fns = [p[which] for p in pairs]
    if torch is None:
        return time_alternating(fns, rounds)
    times = None
    for t, f in zip(torch_threads, fns[2:]):
        torch.set_num_threads(t)
        res = time_alternating(fns[:2] + [f], rounds)
        times = res if times is None else times + res[2:]
    torch.set_num_threads(torch_threads[0])
    return times


def first_call_probe() -> None:
    """Print the seconds of the import and of each first conv call (run in a fresh process by
    :func:`compile_latency`, with ``--first-call-probe``)."""
    t0 = time.perf_counter()
    from npmobilenet.ops import conv2d_backward, conv2d_forward

    res = [time.perf_counter() - t0]
    x, w = np.ones((1, 8, 9, 9), np.float32), np.ones((8, 1, 3, 3), np.float32)
    for method in ("direct", "im2col"):
        t = time.perf_counter()
        out, cache = conv2d_forward(x, w, stride=1, padding=1, groups=8, method=method)
        t2 = time.perf_counter()
        conv2d_backward(np.ones_like(out), cache)
        res += [t2 - t, time.perf_counter() - t2]
    print(" ".join(f"{v:.3f}" for v in res))


def compile_latency():
    """First-call seconds in a fresh interpreter: cold (empty Numba cache), then warm."""
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    print("\nfirst-call latency in a fresh process, seconds (float32 depthwise 3x3)")
    print(f"{'cache':>6} | import | direct fwd | direct bwd | im2col fwd | im2col bwd")
    with tempfile.TemporaryDirectory() as cache_dir:
        env["NUMBA_CACHE_DIR"] = cache_dir
        for label in ("cold", "warm"):
            res = subprocess.run(
                [sys.executable, os.path.abspath(__file__), "--first-call-probe"],
                env=env,
                capture_output=True,
                text=True,
            )
            if res.returncode:
                print(f"{label:>6} | failed: {res.stderr.strip().splitlines()[-1]}")
                continue
            v = res.stdout.split()
            print(f"{label:>6} | " + " | ".join(f"{float(t):>6.2f}" for t in v))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, nargs="+", default=[1], help="batch sizes (default 1)")
    p.add_argument("--torch-threads", type=int, nargs="+", default=[1])
    p.add_argument("--blas-threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=15, help="timing rounds at batch 1")
    p.add_argument("--no-compile", action="store_true", help="skip the compile-latency runs")
    p.add_argument("--no-torch", action="store_true", help="do not compare with torch")
    p.add_argument("--first-call-probe", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.first_call_probe:
        return first_call_probe()
    torch = None
    if not args.no_torch:
        try:
            import torch
        except ImportError:
            print("torch not installed: timing ours only")
    print("numpy", np.__version__, "|", set_threads(args.blas_threads))
    if torch is not None:
        print("torch", torch.__version__, "threads", args.torch_threads)
    bench(args.batch, args.torch_threads, args.rounds, torch)
    if not args.no_compile:
        compile_latency()


if __name__ == "__main__":
    main()
