"""What each optimisation of the fused engine buys: the same inference with one fewer each step.

Run from the repository root::

    python benchmarks/ablation.py                  # batch 1, 224x224, alpha 1
    python benchmarks/ablation.py --batch 8 --quick

Variants, all computing the same logits (checked against the engine before timing):

* ``module path``: ``model.eval(); model(x)``, NCHW, one op per layer;
* ``unfused passes``: the engine's folded weights, NHWC and one GEMM per 1x1 conv, but the bias,
  the activation and the padding as separate NumPy passes into fresh arrays;
* ``fresh buffers``: the engine's fused epilogues writing the stored zero padding, with its
  activation buffers allocated on every call (:class:`FreshBuffers`);
* ``engine``: ``model.fuse()`` as shipped.

All variants are npmobilenet, so they share one process; they alternate (A B C D A B C D ...)
and each reports the median of its calls. Results go to ``benchmarks/results/ablation.json``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import cases
import numpy as np
import timing

from npmobilenet.fast import FusedMobileNetV1
from npmobilenet.fast.engine import im2col3x3_padded, make_plan
from npmobilenet.kernels.fused_conv3x3 import conv_out_size, depthwise3x3_nhwc, im2col3x3_nchw


class FreshBuffers(FusedMobileNetV1):
    """The engine with its activation buffers allocated on every call, never reused."""

    def _plan(self, shape, dtype, part: int = 0) -> list:
        return make_plan(self.layers, tuple(shape), np.dtype(dtype))


def unfused_forward(engine: FusedMobileNetV1, x: np.ndarray) -> np.ndarray:
    """The engine's layers (folded, float32) with bias, clamp and padding as separate passes."""
    layers, head = engine._weights(x.dtype)
    a = x
    for layer in layers:
        lo, hi = x.dtype.type(layer.lo), x.dtype.type(layer.hi)
        if layer.kind == "depthwise":  # (N, H+2, W+2, C) -> (N, OH, OW, C), conv only
            n, h, w, c = a.shape
            out = np.empty((n, conv_out_size(h - 2, layer.stride),
                            conv_out_size(w - 2, layer.stride), c), x.dtype)  # fmt: skip
            depthwise3x3_nhwc(a, layer.weight, np.zeros_like(layer.bias), layer.stride,
                              x.dtype.type(-np.inf), x.dtype.type(np.inf), out)  # fmt: skip
            a = np.minimum(np.maximum(out + layer.bias, lo), hi)
            continue
        a = _gemm_input(layer, a, x.dtype)
        y = a @ layer.weight  # (N, OH, OW, K)
        y = np.minimum(np.maximum(y + layer.bias, lo), hi)
        a = np.pad(y, ((0, 0), (1, 1), (1, 1), (0, 0)))
    interior = a[:, 1:-1, 1:-1]  # (N, H, W, K) without the padding
    features = interior.mean(axis=(1, 2)) if head.pool == "avg" else interior.max(axis=(1, 2))
    return features if head.weight is None else features @ head.weight.T + head.bias


def _gemm_input(layer, a, dtype):
    """The left GEMM operand (N, OH, OW, C or 9C) of a stem, full or pointwise layer."""
    if layer.kind == "pointwise":
        return a
    if layer.kind == "stem":
        n, c, h, w = a.shape
        cols = np.empty((n, conv_out_size(h, layer.stride), conv_out_size(w, layer.stride),
                         9 * c), dtype)  # fmt: skip
        im2col3x3_nchw(a, layer.stride, cols)
        return cols
    n, h, w, c = a.shape
    cols = np.empty((n, conv_out_size(h - 2, layer.stride), conv_out_size(w - 2, layer.stride),
                     9 * c), dtype)  # fmt: skip
    return im2col3x3_padded(a, layer.stride, cols)


def variants(model, x) -> dict:
    engine = model.fuse()
    fresh = FreshBuffers(model)
    return {
        "module path": lambda: model(x),
        "unfused passes": lambda: unfused_forward(engine, x),
        "fresh buffers": lambda: fresh(x),
        "engine": lambda: engine(x),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--res", type=int, default=224)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--quick", action="store_true", help="2 rounds of 2 calls")
    args = p.parse_args(argv)
    rounds, reps = (2, 2) if args.quick else (args.rounds, args.reps)
    case = cases.Case("ablation", "inference", args.batch, args.res)
    model = cases.seeded_model(case).eval()
    x = cases.batch(case)[0]
    fns = variants(model, x)
    ref = fns["engine"]()
    for name, fn in fns.items():  # warm-up, and the check
        err = np.abs(fn() - ref).max() / np.abs(ref).max()
        assert err < 1e-4, f"{name} disagrees with the engine: relative {err:.2e}"
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            time.sleep(0.2)
            times[name] += timing.time_calls(fn, reps)
    result = {name: statistics.median(t) for name, t in times.items()}
    for name, seconds in result.items():
        print(f"{name:<16}{seconds * 1e3:9.2f} ms")
    name = "ablation_quick.json" if args.quick else "ablation.json"
    timing.write_json(timing.ROOT / "benchmarks" / "results" / name,
                      {"machine": timing.machine(), "batch": args.batch, "res": args.res,
                       "seconds": result})  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
