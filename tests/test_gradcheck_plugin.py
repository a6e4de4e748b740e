"""The pytest plugin, run the way users run it: real pytest sessions on generated test files.

The plugin is registered by the ``pytest11`` entry point of the installed package (CI installs
it; a development checkout needs ``pip install -e .``). The checks in the generated files use
real buggy and correct layers; the expectations come from what those layers are.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from importlib.metadata import entry_points

pytest_plugins = ["pytester"]

PLUGIN = "npmobilenet_pytest"

# A user's layer, in the test files below: y = scale * x over the channel axis of (N, C).
LAYER = """
import numpy as np
from npmobilenet import nn


def scale_forward(x, scale):
    return x * scale, (x, scale)


def scale_backward(dout, cache):
    x, scale = cache
    return dout * scale, (dout * x).sum(axis=0)


def scale_backward_first_sample(dout, cache):  # the bug: the batch is not summed
    x, scale = cache
    return dout * scale, dout[0] * x[0]


class Scale(nn.Module):
    def __init__(self, c, bug=False):
        super().__init__()
        self.scale = nn.Parameter(np.linspace(0.5, 1.5, c))
        self.bug = bug

    def forward(self, x):
        self.saved = x
        return x * self.scale.data

    def backward(self, dout):
        x = self.saved
        self.scale.grad += dout[0] * x[0] if self.bug else (dout * x).sum(axis=0)
        return dout * self.scale.data
"""


def test_the_plugin_is_registered_by_the_installed_entry_point(pytestconfig):
    names = {ep.name: ep.value for ep in entry_points(group="pytest11")}
    assert names.get(PLUGIN) == PLUGIN, "pip install -e . (the entry point is package metadata)"
    assert pytestconfig.pluginmanager.has_plugin(PLUGIN)


def test_loading_the_plugin_imports_neither_the_library_nor_numba_nor_torch():
    """Every pytest run in the environment loads the plugin: it must stay cheap and must not
    break anyone's tests when the library itself cannot be imported."""
    code = "import sys, npmobilenet_pytest; print(sorted({m.split('.')[0] for m in sys.modules}"
    code += " & {'npmobilenet', 'numba', 'torch', 'hypothesis'}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_fixture_defaults_come_from_the_ini_options_and_the_flag(pytester):
    pytester.makepyfile(
        test_defaults="""
        def test_show(gradcheck):
            print("DEFAULTS", gradcheck.defaults)
        """
    )
    result = pytester.runpytest("-s")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        ["*DEFAULTS {'rtol': 1e-05, 'atol': 1e-08, 'eps': 1e-06, 'fast': True}"]
    )
    result = pytester.runpytest("-s", "--gradcheck-full")
    result.stdout.fnmatch_lines(["*DEFAULTS *'fast': False}"])
    pytester.makeini(
        """
        [pytest]
        gradcheck_rtol = 1e-3
        gradcheck_atol = 0
        gradcheck_eps = 1e-5
        gradcheck_fast = false
        """
    )
    result = pytester.runpytest("-s")
    result.stdout.fnmatch_lines(
        ["*DEFAULTS {'rtol': 0.001, 'atol': 0.0, 'eps': 1e-05, 'fast': False}"]
    )


def test_the_ini_tolerance_decides_a_check(pytester):
    """A gradient 1e-4 off in relative terms fails at the default rtol, passes at 1e-3."""
    pytester.makepyfile(
        test_tolerance="""
        import numpy as np

        def test_cube(gradcheck):
            x = np.array([1.0, 2.0, 3.0])
            gradcheck.check_grad(lambda x: np.sum(x**3), {"x": x}, {"x": 3 * x**2 * (1 + 1e-4)})
        """
    )
    pytester.runpytest().assert_outcomes(failed=1)
    pytester.makeini("[pytest]\ngradcheck_rtol = 1e-3\n")
    pytester.runpytest().assert_outcomes(passed=1)
    result = pytester.runpytest("-o", "gradcheck_rtol=-1")
    result.stdout.fnmatch_lines(["*ini option gradcheck_rtol must be a finite number >= 0*"])


def test_full_flag_switches_the_mode_of_every_call(pytester):
    pytester.makepyfile(
        test_mode=LAYER
        + """
def test_mode(gradcheck):
    x = np.random.default_rng(0).standard_normal((3, 2))
    report = gradcheck.check_op(scale_forward, scale_backward, {"x": x, "scale": np.ones(2)})
    print("MODE", report.mode)
"""
    )
    pytester.runpytest("-s").stdout.fnmatch_lines(["*MODE fast"])
    pytester.runpytest("-s", "--gradcheck-full").stdout.fnmatch_lines(["*MODE full"])


def test_marker_selects_and_deselects_gradient_checks(pytester):
    pytester.makepyfile(
        test_marks="""
        import pytest

        def test_uses_fixture(gradcheck):
            pass

        @pytest.mark.gradcheck
        def test_marked():
            pass

        def test_other():
            pass
        """
    )
    result = pytester.runpytest("-v", "--strict-markers", "-m", "gradcheck")
    result.assert_outcomes(passed=2, deselected=1)
    result.stdout.fnmatch_lines(["*test_uses_fixture PASSED*", "*test_marked PASSED*"])
    result = pytester.runpytest("-v", "--strict-markers", "-m", "not gradcheck")
    result.assert_outcomes(passed=1, deselected=2)
    result.stdout.fnmatch_lines(["*test_other PASSED*"])


def test_a_conftest_listing_the_plugin_does_not_register_it_twice(pytester):
    pytester.makeconftest(f"pytest_plugins = [{PLUGIN!r}]")
    pytester.makepyfile(test_twice="def test_ok(gradcheck):\n    pass\n")
    pytester.runpytest().assert_outcomes(passed=1)


def _failure_output(pytester, body: str, *args: str) -> list[str]:
    pytester.makepyfile(test_failing=LAYER + textwrap.dedent(body))
    result = pytester.runpytest(*args)
    result.assert_outcomes(failed=1)
    return result.outlines


def test_a_failing_module_check_prints_a_short_report(pytester):
    lines = _failure_output(
        pytester,
        """
        def test_layer(gradcheck):
            x = np.random.default_rng(0).standard_normal((3, 2))
            gradcheck.check_module(Scale(2, bug=True), x)
        """,
    )
    text = "\n".join(lines)
    assert len(lines) < 40, text
    assert ">       gradcheck.check_module(Scale(2, bug=True), x)" in lines
    head = "E       npmobilenet.gradcheck.GradcheckError: check_module (Scale in train mode; fast"
    assert head + " mode): gradient of 'scale' is wrong" in text
    assert any(line.startswith("E       scale ") and line.endswith("NO") for line in lines)
    assert "def check_module" not in text and "core.py" not in text  # no checker source


def test_a_failing_hypothesis_check_prints_a_short_shrunk_report(pytester):
    lines = _failure_output(
        pytester,
        """
        from hypothesis import given, settings, strategies as st

        @settings(database=None, derandomize=True)
        @given(n=st.integers(1, 4), c=st.integers(1, 4))
        def test_op(gradcheck, n, c):
            x = np.random.default_rng(0).standard_normal((n, c))
            inputs = {"x": x, "scale": np.linspace(0.5, 1.5, c)}
            gradcheck.check_op(scale_forward, scale_backward_first_sample, inputs)
        """,
        "-p",
        "no:cacheprovider",
    )
    text = "\n".join(lines)
    assert len(lines) < 40, text
    assert "E       npmobilenet.gradcheck.GradcheckError: check_op (fast mode): gradient of" in text
    # shrunk to the smallest batch that shows the bug (one sample sums correctly)
    assert "E           n=2," in lines
    assert any(line.startswith("E           c=1,") for line in lines)
    assert "gradcheck/core.py" not in text and "gradcheck/module.py" not in text


def test_hypothesis_explanations_lose_the_checkers_own_lines():
    from npmobilenet_pytest import _without_checker_lines

    checker = "/site/npmobilenet/gradcheck/"
    notes = [
        "Failing test case: test_op(n=2)",
        "Explanation:",
        "    These lines were always and only run by failing test cases:",
        "        /site/npmobilenet/gradcheck/core.py:240",
        "        /home/me/my_layer.py:12",
    ]
    assert _without_checker_lines(notes, checker) == notes[:3] + notes[4:]
    assert _without_checker_lines(notes[:4], checker) == notes[:1]  # nothing left to explain
