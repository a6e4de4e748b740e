"""npmobilenet's pytest plugin: the ``gradcheck`` fixture, ini options, a flag and a marker.

Installing npmobilenet registers this module through the ``pytest11`` entry point, so every
pytest run in that environment has:

* the session fixture ``gradcheck``, with ``gradcheck.check_op``, ``gradcheck.check_grad`` and
  ``gradcheck.check_module``: the functions of :mod:`npmobilenet.gradcheck` with their
  ``rtol``, ``atol``, ``eps`` and ``fast`` defaults taken from the ini options below (arguments
  given in a call win);
* ini options ``gradcheck_rtol``, ``gradcheck_atol``, ``gradcheck_eps`` (unset: the defaults
  of :func:`npmobilenet.gradcheck.check_grad`) and ``gradcheck_fast`` (true: random
  directional derivatives, a cost independent of the sizes);
* ``--gradcheck-full``: full mode (every element) as the default, whatever ``gradcheck_fast``
  says;
* the marker ``gradcheck``, put on every test that uses the fixture, so ``-m gradcheck`` or
  ``-m "not gradcheck"`` selects or deselects the gradient checks.

A failing check shows the test's own line and the checker's report (the checker's frames are
hidden). Disable the plugin with ``-p no:npmobilenet_pytest``.

The plugin is a module of its own, outside the ``npmobilenet`` package, so that pytest's start
imports nothing of npmobilenet (nor Numba, nor torch): every pytest run in the environment loads
it, and only a test that uses the fixture imports the library.
"""

from __future__ import annotations

import math
import os
import sys

import pytest

_FLOATS = ("gradcheck_rtol", "gradcheck_atol", "gradcheck_eps")


def pytest_addoption(parser) -> None:
    group = parser.getgroup("gradcheck", "npmobilenet gradient checks")
    group.addoption(
        "--gradcheck-full",
        action="store_true",
        default=False,
        help="gradcheck fixture: check every element (full mode) instead of random directions",
    )
    for name in _FLOATS:
        setting = name.removeprefix("gradcheck_")
        parser.addini(name, f"gradcheck fixture: default {setting} (check_grad's)", default=None)
    parser.addini(
        "gradcheck_fast",
        "gradcheck fixture: random directional derivatives by default (true)",
        type="bool",
        default=True,
    )


def pytest_configure(config) -> None:
    config.addinivalue_line(
        "markers", "gradcheck: a gradient check (every test using the gradcheck fixture has it)"
    )


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(items) -> None:
    for item in items:
        if "gradcheck" in getattr(item, "fixturenames", ()):
            item.add_marker("gradcheck")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Trim what does not locate the bug from a failed check's report: Hypothesis's generated
    wrapper frame (the test's signature shown a second time); the checker's own lines in
    Hypothesis's "lines always and only run by failing test cases" note (the lines that build
    the report, which only failing checks run); and, in the one-line summary, everything after
    the message's first line (pytest prints the whole message there under CI)."""
    core = sys.modules.get("npmobilenet.gradcheck.core")  # no check ran if it is not imported
    exc = call.excinfo.value if call.excinfo is not None else None
    failed_check = core is not None and isinstance(exc, core.GradcheckError)
    if failed_check:
        tb = call.excinfo.traceback
        kept = tb.filter(lambda entry: not entry.frame.f_globals.get("__hypothesistracebackhide__"))
        if len(kept):
            call.excinfo.traceback = kept
        if getattr(exc, "__notes__", None):
            checker = os.path.dirname(os.path.abspath(core.__file__)) + os.sep
            exc.__notes__ = _without_checker_lines(exc.__notes__, checker)
    outcome = yield
    crash = getattr(outcome.get_result().longrepr, "reprcrash", None) if failed_check else None
    if crash is not None and crash.message:
        crash.message = crash.message.split("\n", 1)[0]


_EXPLANATION = "These lines were always and only run by failing test cases:"


def _without_checker_lines(notes: list, checker: str) -> list:
    lines = [line for note in notes for line in str(note).split("\n")]
    lines = [line for line in lines if not line.strip().startswith(checker)]
    for i, line in enumerate(lines):  # an explanation left with no locations goes too
        following = lines[i + 1] if i + 1 < len(lines) else ""
        if line.strip() == _EXPLANATION and not following.startswith(" " * 8):
            drop = 2 if i > 0 and lines[i - 1].strip() == "Explanation:" else 1
            return lines[: i + 1 - drop] + lines[i + 1 :]
    return lines


class Gradcheck:
    """The ``gradcheck`` fixture: the check functions with the session's default settings."""

    def __init__(self, rtol: float, atol: float, eps: float, fast: bool) -> None:
        self.defaults = {"rtol": rtol, "atol": atol, "eps": eps, "fast": fast}

    @classmethod
    def from_config(cls, config) -> Gradcheck:
        from npmobilenet.gradcheck import core  # the defaults are the checks' own

        settings = {}
        for name in _FLOATS:
            raw = config.getini(name)
            default = getattr(core, name.removeprefix("gradcheck_").upper())
            try:
                value = default if raw in (None, "") else float(raw)
            except ValueError:
                value = math.nan
            if not math.isfinite(value) or value < 0 or (name == "gradcheck_eps" and value == 0):
                raise pytest.UsageError(
                    f"ini option {name} must be a finite number >= 0 (> 0 for eps), got {raw!r}"
                )
            settings[name.removeprefix("gradcheck_")] = value
        fast = bool(config.getini("gradcheck_fast")) and not config.getoption("gradcheck_full")
        return cls(fast=fast, **settings)

    def check_op(self, forward, backward, inputs, **kwargs):
        """:func:`npmobilenet.gradcheck.check_op` with this session's defaults."""
        __tracebackhide__ = True
        from npmobilenet.gradcheck.core import check_op

        return check_op(forward, backward, inputs, **{**self.defaults, **kwargs})

    def check_grad(self, fn, inputs, analytic, **kwargs):
        """:func:`npmobilenet.gradcheck.check_grad` with this session's defaults."""
        __tracebackhide__ = True
        from npmobilenet.gradcheck.core import check_grad

        return check_grad(fn, inputs, analytic, **{**self.defaults, **kwargs})

    def check_module(self, module, x, **kwargs):
        """:func:`npmobilenet.gradcheck.check_module` with this session's defaults."""
        __tracebackhide__ = True
        from npmobilenet.gradcheck.module import check_module

        return check_module(module, x, **{**self.defaults, **kwargs})

    def __repr__(self) -> str:
        d = self.defaults
        mode = "fast" if d["fast"] else "full"
        return f"<gradcheck {mode} mode, rtol={d['rtol']:g}, atol={d['atol']:g}, eps={d['eps']:g}>"


@pytest.fixture(scope="session")
def gradcheck(pytestconfig) -> Gradcheck:
    """``check_op``, ``check_grad`` and ``check_module`` with the ini options' defaults.

    Session-scoped, so Hypothesis ``@given`` tests can use it.
    """
    return Gradcheck.from_config(pytestconfig)
