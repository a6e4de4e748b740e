"""The benchmark scripts' arithmetic and variants (not their timings): FLOP counts against the
paper's mult-adds, the ablation's variants against the model's own forward."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import TOL

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import ablation  # noqa: E402
import cases  # noqa: E402
import timing  # noqa: E402
from bench_model import agreement  # noqa: E402


def test_flops_are_the_papers_mult_adds():
    """Table 8 of the paper: 1.0 MobileNet-224 has 569 million mult-adds."""
    infer = cases.CASES["infer-b32-224"]
    assert infer.flops() / (2 * 32) == pytest.approx(569e6, rel=1e-3)
    train = cases.CASES["train-b16-224"]
    assert train.flops() == pytest.approx(3 * 16 / 32 * infer.flops())


def test_agreement_refuses_a_variant_that_differs_from_torch():
    raw = {"torch": [{"check": [1.0, 2.0]}], "fused": [{"check": [1.0, 2.0 + 1e-6]}]}
    assert agreement(raw)["fused"] == pytest.approx(5e-7)
    raw["eval"] = [{"check": [1.0, 2.1]}]
    with pytest.raises(AssertionError, match="eval disagrees with torch"):
        agreement(raw)


def test_the_run_warns_when_the_environment_pins_openblas(monkeypatch):
    """A pinned kernel set halves the sgemm peak on AVX-512 cores: the run must say so."""
    for name in timing.BLAS_KERNEL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert timing.blas_kernel_warning() is None
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    warning = timing.blas_kernel_warning()
    assert "OPENBLAS_CORETYPE=Haswell" in warning
    assert "env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE" in warning


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_ablation_variants_compute_the_models_logits(dtype):
    case = cases.Case("small", "inference", 2, 40, alpha=0.25, classes=7)
    model = cases.seeded_model(case).eval()
    x = cases.batch(case)[0]
    if dtype == np.float64:
        model = cases.MobileNetV1(0.25, 7, dtype=np.float64, seed=0).eval()
        model.load_state_dict(cases.seeded_model(case).state_dict())
        x = x.astype(np.float64)
    expected = model.forward(x)
    for name, fn in ablation.variants(model, x).items():
        np.testing.assert_allclose(fn(), expected, **TOL[dtype], err_msg=name)


def test_the_training_breakdown_times_the_step_the_benchmark_runs(tmp_path):
    """The per-layer timers must not change what runs: batch norm and its ReLU stay one op
    (activation time 0, as in the timed step), the parameters end as after the same steps
    untimed, bit for bit, and the classes' methods are restored."""
    import breakdown

    from npmobilenet import nn

    case = cases.CASES["train-a0.25-32px-b64"]
    before = {cls: dict(vars(cls)) for cls in (nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.Linear)}
    cases.write_weights(case, tmp_path / "w.safetensors")
    step, model = cases.ours(case, "npmobilenet", tmp_path / "w.safetensors")
    plain_step, plain = cases.ours(case, "npmobilenet", tmp_path / "w.safetensors")
    times = breakdown.train_ours(model, step, 2)  # three steps, the first not counted
    for _ in range(3):
        plain_step()
    for (name, p), (_, q) in zip(model.named_parameters(), plain.named_parameters()):
        np.testing.assert_array_equal(p.data, q.data, err_msg=name)
    for phase in ("forward", "backward"):
        assert times[phase]["activation"] == 0.0, phase
        assert times[phase]["BN"] > 0 and times[phase]["pointwise"] > 0
        layers = sum(v for k, v in times[phase].items() if k not in ("other", "total"))
        assert layers <= times[phase]["total"]
    assert {cls: dict(vars(cls)) for cls in before} == before
    assert not any("forward" in vars(m) or "backward" in vars(m) for _, m in model.named_modules())
