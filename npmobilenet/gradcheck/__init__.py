"""Gradient checks for hand-written backward passes: yours and this library's.

>>> import numpy as np
>>> from npmobilenet.gradcheck import check_grad
>>> x = np.array([1.0, 2.0])
>>> report = check_grad(lambda x: np.sum(x**3), {"x": x}, {"x": 3 * x**2})
>>> report.passed
True

See :func:`check_grad` (any scalar function), :func:`check_op` (a forward/backward pair
following this library's ``(out, cache)`` / ``backward(dout, cache)`` convention) and
:func:`check_module` (a :class:`npmobilenet.nn.Module`: ``dx``, every ``Parameter.grad``,
accumulation); ``print(format_results(check_every_op()))`` checks every op of
:mod:`npmobilenet.ops`. Installing npmobilenet also installs a pytest plugin
(the top-level module ``npmobilenet_pytest``): a ``gradcheck`` fixture with these checks.
"""

from npmobilenet.gradcheck.core import (
    GradcheckError,
    GradcheckReport,
    InputReport,
    check_grad,
    check_op,
)
from npmobilenet.gradcheck.module import ModuleReport, check_module
from npmobilenet.gradcheck.suite import check_every_op, format_results

__all__ = [
    "GradcheckError",
    "GradcheckReport",
    "InputReport",
    "check_grad",
    "check_op",
    "check_module",
    "ModuleReport",
    "check_every_op",
    "format_results",
]
