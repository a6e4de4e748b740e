"""The memory benchmark's measurement (not its numbers): both libraries run the same step, and
the peak it reports sees what a step must hold."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from npmobilenet.memory import layer_sizes

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_memory  # noqa: E402


@pytest.mark.slow
@pytest.mark.torch
def test_memory_benchmark_sees_the_step_s_activations(torch, tmp_path):
    """One process per library, a small case: the first-step losses agree (``compare`` checks
    it), every step has its peak, and npmobilenet's first step peaks at least one copy of the
    convolution outputs above the memory it had before (backward needs batch norm's inputs),
    counted from the architecture table."""
    out = tmp_path / "memory.json"
    argv = ["--batch", "8", "--res", "128", "--alpha", "0.5", "--classes", "10", "--steps", "2",
            "--rounds", "1", "--threads", "1", "--out", str(out)]  # fmt: skip
    assert bench_memory.main(argv) == 0
    result = json.loads(out.read_text())
    for lib in bench_memory.LIBRARIES:
        (run,) = result["runs"][lib]
        assert len(run["peaks"]) == 2 and run["steady"] == run["peaks"][1]
    run = result["runs"]["npmobilenet"][0]
    _, outputs = layer_sizes(0.5, 3, 128, 128)
    copy_mib = sum(outputs) * 8 * 4 / 2**20
    assert run["first"] - run["before"] >= copy_mib
    assert result["best"]["npmobilenet"]["steady"] <= run["steady"]
