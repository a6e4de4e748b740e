"""The floor benchmark's arithmetic (not its timings): the layer shapes against the paper's
Table 1, the FLOP and byte counts against hand counts and ``summary()``, the streaming kernel
and the replayed GEMMs against NumPy, and the report's sums."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import cases  # noqa: E402
import floor  # noqa: E402

from npmobilenet.ops import conv  # noqa: E402
from npmobilenet.threads import Runner  # noqa: E402

TRAIN = cases.CASES["train-b16-224"]

# The paper's Table 1 (224x224, alpha 1): each pointwise layer's input channels, output
# channels and input size, in order.
TABLE1_POINTWISE = [
    (32, 64, 112), (64, 128, 56), (128, 128, 56), (128, 256, 28), (256, 256, 28),
    (256, 512, 14), *[(512, 512, 14)] * 5, (512, 1024, 7), (1024, 1024, 7),
]  # fmt: skip
# Its depthwise layers: channels, input size, stride.
TABLE1_DEPTHWISE = [
    (32, 112, 1), (64, 112, 2), (128, 56, 1), (128, 56, 2), (256, 28, 1), (256, 28, 2),
    *[(512, 14, 1)] * 5, (512, 14, 2), (1024, 7, 1),
]  # fmt: skip


@pytest.fixture(scope="module")
def train_layers():
    return floor.layers(TRAIN)


def test_pointwise_gemms_are_table_1(train_layers):
    got = [(g.n, g.c, g.k, g.l) for g in floor.gemms(train_layers)]
    assert got == [(16, c, k, s * s) for c, k, s in TABLE1_POINTWISE]


def test_pointwise_flops_are_the_summarys_1x1_mult_adds(train_layers):
    summary = cases.seeded_model(TRAIN).summary((3, 224, 224), 16)
    (conv1x1,) = (row for row in summary.by_type if row.type == "Conv 1x1")
    assert sum(g.flops() for g in floor.gemms(train_layers)) == 2 * conv1x1.mult_adds
    # and the total, three GEMMs per layer, is 95% of a training step's FLOPs (paper: 94.86%)
    step = 3 * sum(g.flops() for g in floor.gemms(train_layers))
    assert step / TRAIN.flops() == pytest.approx(0.9486, abs=5e-4)


def _passes(layer_list, kind, phase, training=True):
    return [p for p in floor.passes(layer_list, training, 0) if (p.type, p.phase) == (kind, phase)]


def test_depthwise_bytes_and_flops_by_hand(train_layers):
    fwd, bwd = (_passes(train_layers, "depthwise", ph) for ph in floor.PHASES)
    assert len(fwd) == len(bwd) == len(TABLE1_DEPTHWISE)
    for f, b, (c, size, stride) in zip(fwd, bwd, TABLE1_DEPTHWISE):
        x, y = 16 * c * size * size, 16 * c * (size // stride) ** 2
        assert (f.reads, f.writes, f.flops) == (x, y, 2 * 9 * y)  # 9 mult-adds per output
        assert (b.reads, b.writes, b.flops) == (x + y, x, 4 * 9 * y)  # dx and dW
        assert f.bytes == 4 * (x + y)
    first = fwd[0]
    assert first.bytes == 4 * 2 * 16 * 32 * 112 * 112  # 51.4 MB


def test_batch_norm_and_optimizer_traffic(train_layers):
    fwd, bwd = (_passes(train_layers, "BN", ph) for ph in floor.PHASES)
    bn_sizes = [math.prod(layer.in_shape) for layer in train_layers if layer.type == "BN"]
    assert len(bn_sizes) == 27  # the stem's and two per block
    # each is read by the next convolution, which applies it (statistics only), but the last
    # block's, which the pool reads
    assert [(p.reads, p.writes) for p in fwd] == [(x, 0) for x in bn_sizes[:-1]] + [
        (2 * bn_sizes[-1], bn_sizes[-1])
    ]
    assert [(p.reads, p.writes) for p in bwd] == [(4 * x, x) for x in bn_sizes]
    assert _passes(train_layers, "BN", "forward", training=False) == []  # folded
    params = cases.seeded_model(TRAIN).summary().trainable_params
    assert params == 4_231_976
    (opt,) = [p for p in floor.passes(train_layers, True, params) if p.type == "optimizer"]
    assert (opt.reads, opt.writes) == (3 * params, 2 * params)


def test_first_conv_and_linear_flops_are_the_summarys(train_layers):
    summary = cases.seeded_model(TRAIN).summary((3, 224, 224), 16)
    madds = {row.type: row.mult_adds for row in summary.by_type}
    (stem,) = _passes(train_layers, "first conv", "forward")
    (stem_bwd,) = _passes(train_layers, "first conv", "backward")
    assert stem.flops == stem_bwd.flops == 2 * madds["Conv 3x3"]  # no dx for the image
    assert stem_bwd.writes == 0
    (fc,) = _passes(train_layers, "linear", "forward")
    assert fc.flops == 2 * madds["Fully Connected"] == 2 * 16 * 1024 * 1000


@pytest.mark.parametrize("reads,writes", [(1000, 1000), (4000, 1000), (1000, 0), (10, 300)])
def test_stream_reads_and_writes_what_it_counts(reads, writes):
    rng = np.random.default_rng(0)
    src = rng.random(reads, dtype=np.float32)
    dst = np.full(writes, np.nan, np.float32)
    total = floor.stream(src, dst)
    m = min(reads, writes)
    np.testing.assert_array_equal(dst[:m], 2 * src[:m])
    np.testing.assert_array_equal(dst[m:], 0)
    assert total == pytest.approx(src[m:].astype(np.float64).sum(), rel=1e-5)


# 9 pixels: dW as one GEMM per slice; <= 4 pixels: forward and dx as one GEMM per slice too
@pytest.mark.parametrize("pixels", [9, 4, 1])
def test_replayed_training_gemms_compute_the_layers_products(pixels, monkeypatch):
    g = floor.Gemm("p", 4, 6, 5, pixels)
    one_gemm_calls = []  # the replay must take the package's route (ops.conv) for this plane
    package_one_gemm = conv._one_gemm
    monkeypatch.setattr(conv, "_one_gemm", lambda *a: one_gemm_calls.append(package_one_gemm(*a)))
    rng = np.random.default_rng(0)
    x, y, w = (rng.random(s, dtype=np.float32)
               for s in (4 * 6 * pixels, 4 * 5 * pixels, (5, 6)))  # fmt: skip
    x4, y4 = x.reshape(4, 6, pixels).copy(), y.reshape(4, 5, pixels).copy()  # references
    runner = Runner(2)
    calls = floor._training_path(g, x, y, w, runner)
    dw = sum(calls["dW"]())  # the slices' partial sums
    np.testing.assert_allclose(dw, np.einsum("nkl,ncl->kc", y4, x4)[None], rtol=1e-5)
    calls["forward"]()  # writes Y = W @ X into y
    y_now = y.reshape(4, 5, pixels).copy()
    np.testing.assert_allclose(y_now, np.einsum("kc,ncl->nkl", w, x4), rtol=1e-5)
    calls["dx"]()  # writes dX = W^T @ dY into x
    dx = np.einsum("kc,nkl->ncl", w, y_now)
    np.testing.assert_allclose(x.reshape(4, 6, pixels), dx, rtol=1e-5)
    slices = floor._ranges(runner, 4, conv._pointwise_work(x4[:, None], y4[:, None]))
    package_batches = any(conv._one_gemm_pays(hi - lo, pixels, 6, 5) for lo, hi in slices)
    assert bool(one_gemm_calls) == package_batches


def _result(gemm_s, pass_s):
    gemms = [{"name": "p", "phase": ph, "flops": 1, "path_s": 2 * s, "floor_s": s, "op_s": op}
             for ph, s, op in zip(("forward", "dx", "dW"), gemm_s, (0.3, 0.0, 0.9))]  # fmt: skip
    passes = [{"type": "BN", "phase": ph, "floor_s": s} for ph, s in zip(floor.PHASES, pass_s)]
    return {"case": TRAIN.name, "threads": 2, "sgemm_gflops": 100.0, "gemms": gemms,
            "passes": passes}  # fmt: skip


def test_best_of_sums_and_the_verdict():
    a, b = _result((0.1, 0.2, 0.3), (0.05, 0.07)), _result((0.2, 0.1, 0.3), (0.04, 0.08))
    b["sgemm_gflops"] = 120.0
    best = floor.best_of([a, b])
    assert [r["floor_s"] for r in best["gemms"]] == [0.1, 0.1, 0.3]
    assert [r["floor_s"] for r in best["passes"]] == [0.04, 0.07]
    assert best["sgemm_gflops"] == 120.0
    types = floor.by_type(best)
    assert types["pointwise"] == {"forward": 0.1, "backward": pytest.approx(0.4)}
    package_layout, package_op = (types[row] for row in floor.EXTRA_ROWS)
    assert package_layout == {"forward": 0.2, "backward": pytest.approx(0.8)}
    assert package_op == {"forward": 0.3, "backward": 0.9}
    t = floor.totals(best)
    assert (t["gemm"], t["memory"], t["floor"]) == pytest.approx((0.5, 0.11, 0.61))
    assert t["pointwise_op"] == pytest.approx(1.2)
    lines = floor.verdict(TRAIN, best, 250.0, {"npmobilenet": 0.7, "torch": 1.0})
    need = TRAIN.flops() / (0.7 * 250e9)  # 70% of peak
    assert f"70% of peak needs {need * 1e3:.1f} ms" in lines[1]
    assert "0.5x torch needs 500.0 ms, 0.82x the floor: below it" in lines[2]
    assert "npmobilenet: 700.0 ms = 1.15x the floor" in lines[3]


def test_type_table_sets_each_library_beside_the_floor():
    result = _result((0.1, 0.2, 0.3), (0.05, 0.07))
    phase = {"BN": 0.03, "pointwise": 0.2}
    ours = {"forward": phase, "backward": {"BN": 0.09, "pointwise": 0.6}, "optimizer": 0.004}
    lines = floor.type_table(TRAIN, result, {"npmobilenet": ours})
    assert lines[0] == "| layer type | floor fwd / bwd | npmobilenet fwd / bwd |"
    rows = {line.split(" | ")[0][2:]: line for line in lines[2:]}
    assert rows["BN"] == "| BN | 50.0 / 70.0 | 30.0 / 90.0 |"
    assert rows["pointwise"] == "| pointwise | 100.0 / 500.0 | 200.0 / 600.0 |"
    assert rows["optimizer"] == "| optimizer | 0.00 / 0.00 | - / 4.00 |"
    assert rows[floor.EXTRA_ROWS[0]] == f"| {floor.EXTRA_ROWS[0]} | 200.0 / 1000.0 |  |"
    infer = floor.type_table(cases.CASES["infer-b1-224"], result, {"torch": {"BN": 0.001}})
    assert "optimizer" not in "".join(infer) and floor.EXTRA_ROWS[1] not in "".join(infer)
    assert "| BN | 50.0 | 1.00 |" in infer
