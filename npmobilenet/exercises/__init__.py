"""Exercises a learner can check: write a layer's forward or backward, let the library judge it.

    npmobilenet exercise list
    npmobilenet exercise start depthwise_forward mywork/     # copies the skeleton
    npmobilenet exercise check depthwise_forward mywork/depthwise_forward.py

``check`` runs the learner's function on configurations drawn by Hypothesis (small shapes,
strides, paddings, groups), compares each answer with the library's own ops and kernels and,
for gradients, with the numerical gradient checker, and reports the first failing
configuration, shrunk by Hypothesis to the smallest one that still fails, with a hint. The
library ships the skeletons, never the solutions. Needs the ``hypothesis`` package.
"""

from __future__ import annotations

import importlib.util
import shutil
import textwrap
from dataclasses import dataclass
from pathlib import Path

from npmobilenet.exercises import catalog
from npmobilenet.exercises.catalog import Exercise

__all__ = [
    "EXERCISES",
    "CheckResult",
    "check",
    "check_function",
    "get",
    "load_function",
    "reference",
    "start",
]

SKELETONS = Path(__file__).resolve().parent / "skeletons"

EXERCISES = {
    e.name: e
    for e in (
        Exercise(
            "depthwise_forward", "depthwise_conv_forward",
            "naive depthwise convolution, forward",
            lambda: catalog.conv_configs(depthwise=True), catalog.run_depthwise_forward,
            "OH = (H + 2*padding - kH) // stride + 1. Output (i, j) reads the window of the "
            "zero-padded input that starts at row i*stride, column j*stride, and channel c "
            "uses only w[c, 0]: no sum over channels.",
        ),
        Exercise(
            "depthwise_backward", "depthwise_conv_backward",
            "naive depthwise convolution, backward (dx and dw)",
            lambda: catalog.conv_configs(depthwise=True), catalog.run_depthwise_backward,
            "dw[c, 0, u, v] = sum over n, i, j of dout[n, c, i, j] * xpad[n, c, i*stride + u, "
            "j*stride + v]. For dx, add dout[n, c, i, j] * w[c, 0] into the same window of a "
            "padded zero buffer (+=, windows overlap when stride < k), then cut the padding off.",
        ),
        Exercise(
            "im2col_grouped", "im2col_grouped",
            "the im2col matrix of a grouped convolution",
            lambda: catalog.conv_configs(depthwise=False), catalog.run_im2col_grouped,
            "Row (c*kH + u)*kW + v of group g reads channel g*(C//groups) + c at offset (u, v) "
            "of each window; column (n*OH + i)*OW + j is image n's output pixel (i, j); "
            "positions in the padding are 0.",
        ),
        Exercise(
            "batchnorm_backward", "batchnorm_backward",
            "batch normalisation, backward in training mode",
            catalog.bn_configs, catalog.run_batchnorm_backward,
            "Statistics are over axes (0, 2, 3), the variance is biased (divide by M = N*H*W). "
            "dbeta = sum(dout), dgamma = sum(dout * xhat), and dx = gamma / sqrt(var + eps) * "
            "(dout - mean(dout) - xhat * mean(dout * xhat)), the means per channel.",
        ),
        Exercise(
            "fold_bn", "fold_bn",
            "fold an eval-mode batch norm into the convolution before it",
            catalog.fold_configs, catalog.run_fold_bn,
            "scale = gamma / sqrt(var + eps) per output channel; w_folded = w * scale over the "
            "first axis (scale[:, None, None, None]); b_folded = beta - mean * scale.",
        ),
    )
}  # fmt: skip


@dataclass
class CheckResult:
    """What ``check`` found: ``passed``, how many configurations ran, the first failure."""

    name: str
    passed: bool
    examples: int
    config: dict | None = None  # the shrunk failing configuration
    problem: str | None = None
    hint: str | None = None

    def __str__(self) -> str:
        if self.passed:
            return (f"{self.name}: passed on {self.examples} drawn configurations "
                    "(reference: the library's ops, and the gradient checker)")  # fmt: skip
        cfg = ", ".join(f"{k}={v}" for k, v in (self.config or {}).items())
        hint = textwrap.fill(self.hint or "", 96, subsequent_indent="        ")
        return (f"{self.name}: FAILED\n  smallest failing case: {cfg}\n  problem: {self.problem}"
                f"\n  hint: {hint}")  # fmt: skip


def get(name: str) -> Exercise:
    if name not in EXERCISES:
        raise ValueError(f"exercise: unknown exercise {name!r}; choose from {list(EXERCISES)}")
    return EXERCISES[name]


def start(name: str, directory) -> Path:
    """Copy exercise ``name``'s skeleton into ``directory`` (created); refuses to overwrite."""
    get(name)
    target = Path(directory) / f"{name}.py"
    if target.exists():
        raise ValueError(f"exercise start: {target} exists already; not overwriting your work")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(SKELETONS / f"{name}.py", target)
    return target


def load_function(name: str, path):
    """Import the learner's file at ``path`` and return the exercise's function from it."""
    exercise, path = get(name), Path(path)
    if not path.is_file():
        raise ValueError(f"exercise check: no file at {path}")
    spec = importlib.util.spec_from_file_location(f"_exercise_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fn = getattr(module, exercise.function, None)
    if not callable(fn):
        raise ValueError(f"exercise check: {path} defines no function {exercise.function}()")
    return fn


def _attempt(exercise: Exercise, fn, config: dict) -> str | None:
    try:
        return exercise.run(fn, config)
    except NotImplementedError as err:
        return f"raised NotImplementedError ({err}): the TODO is still to do"
    except Exception as err:  # the learner's code may fail in any way: report, don't crash
        return f"raised {type(err).__name__}: {err}"


def check_function(name: str, fn, *, max_examples: int = 60) -> CheckResult:
    """Run ``fn`` on drawn configurations of exercise ``name``; the first failure is shrunk."""
    try:
        from hypothesis import HealthCheck, given, settings
    except ImportError as exc:
        raise ImportError("exercise check needs hypothesis: pip install hypothesis") from exc
    exercise = get(name)
    seen, failures = [], []

    @settings(max_examples=max_examples, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck), print_blob=False)  # fmt: skip
    @given(exercise.configs())
    def trial(config):
        seen.append(config)
        problem = _attempt(exercise, fn, config)
        if problem:
            failures.append((config, problem))
            raise AssertionError(problem)

    try:
        trial()
    except Exception:  # Hypothesis re-raises after shrinking; the last failure is the smallest
        if not failures:
            raise
        config, problem = failures[-1]
        return CheckResult(name, False, len(seen), config, problem, exercise.hint)
    return CheckResult(name, True, len(seen))


def check(name: str, path, *, max_examples: int = 60) -> CheckResult:
    """Load the learner's file and check it: ``npmobilenet exercise check NAME PATH``."""
    return check_function(name, load_function(name, path), max_examples=max_examples)


def reference(name: str):
    """The library's own implementation with the exercise's signature (for notebooks and tests)."""
    from npmobilenet.exercises import references

    return getattr(references, get(name).function)
