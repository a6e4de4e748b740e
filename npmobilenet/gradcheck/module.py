"""Gradient checks of a whole :class:`npmobilenet.nn.Module`: ``dx`` and every ``Parameter.grad``.

:func:`check_module` runs a module the way training does (``forward(x)``, then
``backward(dout)`` adding into each ``Parameter.grad``) and checks, in float64 on an upcast copy:

* ``dx`` and the gradient of every parameter against central differences (as :func:`check_grad`);
* that a backward *adds* to ``.grad`` (gradients accumulate until ``zero_grad()``, as in
  PyTorch) and that ``zero_grad()`` clears it;
* that ``forward`` leaves its input alone, ``backward`` leaves ``x`` and ``dout`` alone, and two
  forwards from the same state give the same output;
* a second forward and backward on the same module (as training runs a layer step after step),
  at another input and upstream gradient: what it adds to each ``.grad`` and its ``dx`` against
  central differences from the state the first call left (fast mode), and that the first call's
  ``dx`` is not written again;
* both train and eval mode when the module behaves differently in each (its output, ``dx`` or
  a parameter's gradient).

Every forward (the analytic pass and each numerical evaluation) runs on a fresh deep copy of the
module, so state a forward changes (batch norm's running statistics, a dropout generator) starts
from the same values each time, and your module is never modified. The input each forward gets
has the memory layout of your ``x`` (a transposed or sliced ``x`` is checked as one).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np

from npmobilenet._checks import describe, short_repr
from npmobilenet.gradcheck.core import (
    ATOL,
    DIRECTIONS,
    EPS,
    RTOL,
    GradcheckError,
    GradcheckReport,
    _agrees,
    _check,
    _laid_out_like,
    _validate_settings,
    upstream_gradient,
)

__all__ = ["ModuleReport", "check_module"]

__tracebackhide__ = True  # pytest shows the test's line and the report, not this module

_OP = "check_module"


@dataclass
class ModuleReport:
    """What :func:`check_module` checked; ``str(report)`` prints one table per mode.

    ``reports`` maps each checked mode (``"train"``, ``"eval"``) to the
    :class:`GradcheckReport` of ``dx`` (row ``"x"``) and the parameters (rows named by their
    dotted names); ``checks`` lists the other properties that held.
    """

    module: str
    reports: dict[str, GradcheckReport] = field(default_factory=dict)
    checks: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.reports.values())

    def __getitem__(self, mode: str) -> GradcheckReport:
        return self.reports[mode]

    def __str__(self) -> str:
        parts = [f"{self.module} in {mode} mode: {report}" for mode, report in self.reports.items()]
        return "\n".join(parts + [f"also checked: {', '.join(self.checks)}"])


def check_module(
    module,
    x: np.ndarray,
    *,
    dout: np.ndarray | None = None,
    params=True,
    input_grad: bool = True,
    accumulate: bool = True,
    modes=None,
    eps: float = EPS,
    rtol: float = RTOL,
    atol: float = ATOL,
    fast: bool = False,
    seed: int = 0,
    directions: int = DIRECTIONS,
) -> ModuleReport:
    """Check a module's backward: ``dx`` and every ``Parameter.grad``, in float64.

    The scalar checked is ``loss = sum(module.forward(x) * dout)``; ``dout`` defaults to a
    seeded standard-normal array of the output's shape. A float32 module is checked through a
    float64 copy (parameters and floating-point buffers upcast); your module and ``x`` are
    never modified. When ``x`` and every parameter are float32, a copy of the module also runs
    forward and backward once in float32: the output, ``dx`` and every ``.grad`` must be
    float32 and within roundoff of the float64 gradients the numerical check confirmed.

    Args:
        module: any :class:`npmobilenet.nn.Module` (your own subclasses included): it needs
            ``forward(x)``, ``backward(dout) -> dx``, ``named_parameters()``, ``zero_grad()``
            and ``train()``/``eval()``.
        x: the input, a floating-point array.
        dout: the upstream gradient (the output's shape), or None for a seeded random one.
        params: True checks every parameter that requires a gradient, False none, or an
            iterable of dotted names (``["0.weight", "1.bias"]``) checks those.
        input_grad: check ``dx`` (False when the backward returns None for a data input).
        accumulate: check that a backward adds to ``.grad`` and that ``zero_grad()`` clears it.
        modes: ``"train"``, ``"eval"`` or both in a tuple; None checks the module's current
            mode, and the other one too when the module's output, ``dx`` or a parameter's
            gradient differs between them.
        eps, rtol, atol, fast, seed, directions: as for :func:`check_grad`.

    Returns:
        A :class:`ModuleReport` (``print`` it for the tables) when everything passes.

    Raises:
        GradcheckError: a gradient is wrong (named by the parameter's dotted name, with the
            worst element, both values and the relative error), on the first call or the
            second, ``.grad`` is overwritten instead of accumulated or not cleared by
            ``zero_grad()``, ``forward`` writes to ``x`` or is not deterministic, ``backward``
            writes to ``x`` or ``dout``, returns a ``dx`` of the wrong shape or dtype, or
            writes a returned ``dx`` again on the next call.
        TypeError, ValueError: bad arguments.
    """
    _validate_settings(eps, rtol, atol, fast, seed, directions, _OP)
    _validate_args(module, x, dout, input_grad, accumulate)
    base = _upcast(module)
    names = _param_names(base, params)
    if not names and not input_grad:
        raise ValueError(f"{_OP}: nothing to check: params selects no parameter and input_grad "
                         "is False")  # fmt: skip
    layout, x = x, np.array(x, dtype=np.float64, order="C")
    dout = None if dout is None else np.array(dout, dtype=np.float64)
    settings = dict(eps=eps, rtol=rtol, atol=atol, fast=fast, seed=seed, directions=directions)
    report = ModuleReport(type(module).__name__)
    current = "train" if base.training else "eval"
    for mode in _modes(base, x, modes, dout, seed, layout):
        # the current mode keeps each child's own flag (a frozen batch norm stays in eval)
        snap = (
            copy.deepcopy(base) if mode == current else copy.deepcopy(base).train(mode == "train")
        )
        where = f"{_OP} ({report.module} in {mode} mode)"
        case = _Case(snap, x, dout, names, where, seed, layout)
        report.reports[mode] = case.check_gradients(input_grad, settings)
        own = _check_own_dtype(module, layout, mode, case, input_grad)
        if accumulate and names:
            case.check_accumulation()
        case.check_second_call(input_grad, accumulate, settings)
    report.checks = ["forward leaves x alone", "backward leaves x and dout alone",
                     "deterministic"]  # fmt: skip
    if accumulate and names:
        report.checks += [".grad accumulates", "zero_grad() clears"]
    report.checks += ["a second forward and backward on the same module"]
    if own:
        report.checks += [f"the {own} forward and backward agree with float64"]
    return report


# --------------------------------------------------------------------------------------------
# arguments


def _validate_args(module, x, dout, input_grad, accumulate) -> None:
    from npmobilenet.nn.module import Module  # here: importing nn loads the Numba kernels

    if not isinstance(module, Module):
        raise TypeError(f"{_OP}: module must be an npmobilenet.nn.Module, got {describe(module)}")
    for name, v in (("x", x), ("dout", dout)):
        if (v is not None or name == "x") and not (
            isinstance(v, np.ndarray) and v.dtype.kind == "f"
        ):
            raise TypeError(f"{_OP}: {name} must be a floating-point numpy array, got "
                            f"{describe(v)}")  # fmt: skip
    for name, v in (("input_grad", input_grad), ("accumulate", accumulate)):
        if not isinstance(v, bool):
            raise TypeError(f"{_OP}: {name} must be True or False, got {describe(v)}")


def _upcast(module):
    """A deep copy of ``module`` with float64 parameters (zeroed grads) and float buffers."""
    m = copy.deepcopy(module)
    for _, p in _unique_parameters(m):
        p.data = np.array(p.data, dtype=np.float64)
        p.grad = np.zeros_like(p.data)
    owners = dict(m.named_modules())
    for name, buf in list(m.named_buffers()):
        if buf.dtype.kind == "f":
            owner, _, attr = name.rpartition(".")
            setattr(owners[owner], attr, buf.astype(np.float64))  # stays a registered buffer
    return m


def _unique_parameters(m):
    """``(dotted name, Parameter)`` once per Parameter (a shared one under its first name)."""
    seen = set()
    for name, p in m.named_parameters():
        if id(p) not in seen:
            seen.add(id(p))
            yield name, p


def _param_names(m, params) -> list[str]:
    """The dotted names of the parameters to check."""
    available = {name: p for name, p in _unique_parameters(m)}
    if isinstance(params, bool):
        if not params:
            return []
        return [n for n, p in available.items() if getattr(p, "requires_grad", True)]
    if isinstance(params, str) or not hasattr(params, "__iter__"):
        raise TypeError(f"{_OP}: params must be True, False or a list of parameter names, got "
                        f"{describe(params)}")  # fmt: skip
    names = list(params)
    unknown = [n for n in names if n not in available]
    if unknown:
        raise ValueError(f"{_OP}: no parameter named {unknown[0]!r}; the module has "
                         f"{list(available)[:8]}")  # fmt: skip
    return names


def _modes(base, x, modes, dout, seed, layout) -> list[str]:
    """The modes to check: the given ones, or the current one and the other if the module's
    forward or backward (output, dx or a parameter's gradient) differs between them."""
    if modes is not None:
        modes = (modes,) if isinstance(modes, str) else tuple(modes)
        if not modes or any(m not in ("train", "eval") for m in modes):
            raise ValueError(
                f"{_OP}: modes must be 'train', 'eval' or both, got {short_repr(modes)}"
            )
        return list(dict.fromkeys(modes))
    current = "train" if base.training else "eval"
    other = "eval" if current == "train" else "train"
    runs = []
    for m in (copy.deepcopy(base), copy.deepcopy(base).train(other == "train")):
        try:
            out = np.array(m.forward(_laid_out_like(layout, x)), dtype=np.float64)
            same_shape = dout is not None and dout.shape == out.shape
            dx = m.backward(dout.copy() if same_shape else upstream_gradient(seed, out.shape))
        except Exception:  # noqa: BLE001 - e.g. batch norm training on one value per channel
            return [current]
        runs.append([out, dx] + [p.grad for _, p in _unique_parameters(m)])
    same = all(_same(a, b) for a, b in zip(*runs))
    return [current] if same else [current, other]


def _same(a, b) -> bool:
    """Whether two results of a forward or backward are equal (None only equals None)."""
    if a is None or b is None:
        return a is b
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and np.array_equal(a, b, equal_nan=True)


# --------------------------------------------------------------------------------------------
# one mode


class _Case:
    """One module state (a snapshot never run itself), input and upstream gradient.

    ``layout`` is the array whose memory layout every input handed to ``forward`` copies (the
    caller's own ``x``: a transposed or sliced input is checked as one).
    """

    def __init__(self, snap, x, dout, names, where, seed, layout):
        self.snap, self.x, self.names, self.where = snap, x, names, where
        self.seed, self.layout = seed, layout
        self.label = type(snap).__name__
        out = self._forward(copy.deepcopy(snap), x)
        again = self._forward(copy.deepcopy(snap), x)
        if not np.array_equal(out, again, equal_nan=True):
            raise GradcheckError(
                f"{where}: two forwards from the same state on the same input differ; the "
                "module draws random numbers that are not part of its state (keep a "
                "np.random.Generator on the module), so no gradient check can hold"
            )
        if dout is None:
            dout = upstream_gradient(seed, out.shape)
        elif dout.shape != out.shape:
            raise ValueError(f"{_OP}: dout has shape {dout.shape} but the output has shape "
                             f"{out.shape}")  # fmt: skip
        if not np.any(dout):
            raise ValueError(
                f"{_OP}: nothing to check: " + ("dout is all zeros" if out.size else
                f"the output is empty (shape {out.shape})") + ", so every gradient is zero "
                "whatever the backward computes (dout=None draws a random one)"
            )  # fmt: skip
        self.g = dout

    def _forward(self, m, x) -> np.ndarray:
        """``m.forward`` on a copy of ``x``: checks x is left alone, returns a float64 copy."""
        return self._run_forward(m, x)[0]

    def _run_forward(self, m, x):
        """``m.forward`` on a copy of ``x`` laid out as the caller's: (float64 output, input)."""
        x_in = _laid_out_like(self.layout, x)
        out = m.forward(x_in)
        if not np.array_equal(x_in, x, equal_nan=True):
            raise GradcheckError(
                f"{self.where}: {self.label}.forward modified its input x in place; a layer "
                "must not write to x (the previous layer keeps it for its backward)"
            )
        if not isinstance(out, np.ndarray) or out.dtype != np.float64:
            raise GradcheckError(
                f"{self.where}: {self.label}.forward returned {describe(out)} for a float64 "
                "input; the output must be an array of the input's dtype"
            )
        return out.copy(), x_in  # a layer may reuse its output array on the next call

    def _backward(self, m, prefill: dict | None = None, x=None, g=None, zero=True):
        """Forward and backward on ``m`` (at ``x`` and ``g``, default the case's), with the
        grads set first unless ``zero`` is False; returns (dx, {name: grad})."""
        x, g = (self.x if x is None else x), (self.g if g is None else g)
        params = dict(_unique_parameters(m))
        for name, p in params.items():
            if zero:
                p.grad[...] = 0.0 if prefill is None else prefill.get(name, 0.0)
        _, x_in = self._run_forward(m, x)
        dout = g.copy()
        dx = m.backward(dout)
        for arg, what, want in ((dout, "dout", g), (x_in, "its input x", x)):
            if not np.array_equal(arg, want, equal_nan=True):
                raise GradcheckError(
                    f"{self.where}: {self.label}.backward modified {what} in place; the "
                    "arrays a layer is given belong to the caller (the previous layer keeps x "
                    "for its own backward)"
                )
        for name in self.names:
            gr = params[name].grad
            if not isinstance(gr, np.ndarray) or gr.shape != params[name].data.shape:
                raise GradcheckError(
                    f"{self.where}: {name!r}.grad must be an array of the parameter's shape "
                    f"{params[name].data.shape}, got {describe(gr)}"
                )
        return dx, {name: params[name].grad.copy() for name in self.names}

    def check_gradients(self, input_grad: bool, settings: dict) -> GradcheckReport:
        """dx and the parameters' grads against central differences."""
        dx, grads = self._backward(copy.deepcopy(self.snap))
        self.analytic = dx, grads  # the float64 values a lower precision run is held to
        return self.compare(dx, grads, input_grad, settings)

    def compare(self, dx, grads, input_grad: bool, settings: dict) -> GradcheckReport:
        """The analytic ``dx`` and ``grads`` at this case against central differences."""
        xname = "input" if "x" in self.names else "x"
        inputs, analytic = {}, {}
        if input_grad:
            if not isinstance(dx, np.ndarray) or dx.shape != self.x.shape or dx.dtype != np.float64:
                raise GradcheckError(
                    f"{self.where}: {self.label}.backward must return dx of shape {self.x.shape}"
                    f" and dtype float64 like x, got {describe(dx)}"
                    + (" (pass input_grad=False if it returns None on purpose)" if dx is None
                       else "")
                )  # fmt: skip
            inputs[xname], analytic[xname] = self.x, dx
        for name in self.names:
            inputs[name] = self.snap_params[name].data
            analytic[name] = grads[name]
        try:
            return _check(self._loss(xname), inputs, analytic, self.where, what=f"{self.label}"
                          ".forward", **settings)  # fmt: skip
        except GradcheckError as err:
            hint = _untouched_hint(err.report, analytic)
            raise GradcheckError(str(err) + hint, err.report) from None

    @property
    def snap_params(self) -> dict:
        return dict(_unique_parameters(self.snap))

    def _loss(self, xname: str):
        def loss(**arrays):
            m = copy.deepcopy(self.snap)
            params = dict(_unique_parameters(m))
            for name in self.names:
                np.copyto(params[name].data, arrays[name])
            x = arrays[xname] if xname in arrays else self.x
            out = m.forward(_laid_out_like(self.layout, x))
            return float(np.sum(np.asarray(out, dtype=np.float64) * self.g))

        return loss

    def check_accumulation(self) -> None:
        """A backward adds to whatever .grad holds; zero_grad() then clears every .grad."""
        _, grads = self._backward(copy.deepcopy(self.snap))
        rng = np.random.default_rng(1)
        prefill = {n: rng.standard_normal(g.shape) for n, g in grads.items()}
        m = copy.deepcopy(self.snap)
        _, after = self._backward(m, prefill)
        for name in self.names:
            want = prefill[name] + grads[name]
            err = np.abs(after[name] - want)
            if not np.all(err <= 1e-9 * (np.abs(prefill[name]) + np.abs(grads[name])) + 1e-12):
                k = np.unravel_index(int(np.argmax(err)), err.shape)
                how = (
                    "overwrote it instead of adding to it"
                    if np.allclose(after[name], grads[name])
                    else "did not add its gradient"
                )
                raise GradcheckError(
                    f"{self.where}: backward must add to {name!r}.grad (gradients accumulate "
                    f"until zero_grad()), but {how}: at index {tuple(int(i) for i in k)} .grad "
                    f"held {prefill[name][k]:.6g} and this backward's gradient is "
                    f"{grads[name][k]:.6g}, so {want[k]:.6g} was expected; got {after[name][k]:.6g}"
                )  # fmt: skip
        m.zero_grad()
        for name, p in _unique_parameters(m):
            if not (isinstance(p.grad, np.ndarray) and p.grad.shape == p.data.shape
                    and not np.any(p.grad)):  # fmt: skip
                raise GradcheckError(f"{self.where}: zero_grad() did not clear {name!r}.grad")

    def check_second_call(self, input_grad: bool, accumulate: bool, settings: dict) -> None:
        """A second forward and backward on the same module instance, at the input reversed
        along its first axis and another upstream gradient, as training runs a layer step
        after step: what that backward adds to each .grad, and its dx, against central
        differences (fast mode) from the state the first call left; the first call's dx must
        survive the second (a backward returns an array the caller owns)."""
        m = copy.deepcopy(self.snap)
        dx1, first = self._backward(m)
        kept = np.array(dx1, copy=True) if isinstance(dx1, np.ndarray) else None
        state = copy.deepcopy(m)  # what the second forward starts from
        x2 = np.ascontiguousarray(self.x[::-1]) if self.x.ndim else self.x
        g2 = upstream_gradient(self.seed + 1, self.g.shape)
        if not accumulate:
            for _, p in _unique_parameters(m):
                p.grad[...] = 0.0
        dx2, after = self._backward(m, x=x2, g=g2, zero=False)
        if kept is not None and not np.array_equal(dx1, kept, equal_nan=True):
            raise GradcheckError(
                f"{self.where}: the dx a backward returned changed when the module ran "
                "forward and backward again; return a new array (or dout passed through), "
                "never a buffer the module writes again"
            )
        grads = {n: after[n] - first[n] if accumulate else after[n] for n in self.names}
        where = f"{self.where[:-1]}, second forward and backward on the same module)"
        case = _Case(state, x2, g2, self.names, where, self.seed, self.layout)
        case.compare(dx2, grads, input_grad, {**settings, "fast": True})


def _check_own_dtype(module, layout, mode, case, input_grad) -> str | None:
    """One forward and backward of the module as it is, in its own dtype (a float32 layer on
    the float32 x it was given), held to the float64 analytic gradients of ``case``: the
    output's, ``dx``'s and each ``.grad``'s dtype, and every value within ``1e4`` units of
    roundoff of its array's largest value (plus ``1e3`` of all the gradients'). Returns the
    dtype's name; None (nothing run) when x is float64 or a parameter's dtype is not x's."""
    m = copy.deepcopy(module)
    if mode != ("train" if module.training else "eval"):
        m.train(mode == "train")
    params = dict(_unique_parameters(m))
    dtype = layout.dtype
    if dtype == np.float64 or any(p.data.dtype != dtype for p in params.values()):
        return None
    for p in params.values():
        p.grad[...] = 0.0
    out = m.forward(_laid_out_like(layout, layout, dtype))
    dx = m.backward(case.g.astype(dtype))
    got = [("output", out)] + ([("dx", dx)] if input_grad else [])
    got += [(f"{n!r}.grad", params[n].grad) for n in case.names]
    for what, a in got:
        if not isinstance(a, np.ndarray) or a.dtype != dtype:
            raise GradcheckError(
                f"{case.where}: run in {dtype}, the {what} is {describe(a)}; it must be a "
                f"{dtype} array like x and the parameters (dtype follows the input's)"
            )
    dx64, grads64 = case.analytic
    pairs = ([("dx", dx, dx64)] if input_grad else []) + [
        (f"the gradient of {n!r}", params[n].grad, grads64[n]) for n in case.names
    ]
    # a gradient that is zero in exact arithmetic (a conv bias before batch norm) is a
    # cancellation of terms the size of the largest gradient: its roundoff is theirs
    largest = max(float(np.max(np.abs(high), initial=0.0)) for _, _, high in pairs)
    for what, low, high in pairs:
        _agrees(case.where, dtype.name, what, low, high, largest)
    return dtype.name


def _untouched_hint(report, analytic) -> str:
    """A hint for parameters whose .grad the backward never wrote (all zeros, but wrong)."""
    if report is None:
        return ""
    names = [r.name for r in report.inputs if not r.passed and r.name in analytic
             and r.name not in ("x", "input") and not np.any(analytic[r.name])]  # fmt: skip
    if not names:
        return ""
    return (f"\n{names[0]!r}.grad stayed all zeros: does backward add the gradient of "
            f"{names[0]!r} into its .grad?")  # fmt: skip
