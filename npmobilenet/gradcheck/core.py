"""Numerical gradient checks: compare a hand-written gradient with central differences.

Two entry points:

* :func:`check_grad` checks the gradient of any scalar function ``fn(**inputs)``.
* :func:`check_op` checks a forward/backward pair of this library's convention
  (``forward(...) -> (out, cache)``, ``backward(dout, cache) -> grads``).

Everything is evaluated in float64, whatever the dtype of the arrays you pass in: the check makes
float64 copies (in the memory layout of yours: a transposed or sliced input stays one) and never
modifies your arrays.

Pass criterion (the same as ``np.isclose(analytic, numeric, rtol, atol)``, made symmetric)::

    |a - n| <= atol + rtol * max(|a|, |n|)        for every element

where ``a`` is the analytic and ``n`` the numeric value. The *relative error* of an element is
``|a - n| / max(|a|, |n|)`` (0 when both are 0). The *worst* element is the one furthest beyond
its tolerance, i.e. with the largest ``|a - n| / (atol + rtol * max(|a|, |n|))``; a check passes
when that ratio is at most 1.
"""

from __future__ import annotations

import copy
import numbers
from dataclasses import dataclass, field

import numpy as np

from npmobilenet._checks import describe

__all__ = ["GradcheckError", "GradcheckReport", "InputReport", "check_grad", "check_op"]

# pytest leaves this module's frames out of a failure's traceback: a failing check shows the
# test's own line and the report, not the checker's source (``--fulltrace`` shows them).
__tracebackhide__ = True

# The random upstream gradient and fast mode's directions come from their own streams of the
# seed: not from ``default_rng(seed)`` itself, which a test may well have used to draw x (with
# dout equal to x, ``dout.T @ x`` is symmetric and a transposed weight gradient would pass).
_UPSTREAM_STREAM, _DIRECTIONS_STREAM = 0x6772, 0x6164


def upstream_gradient(seed: int, shape: tuple) -> np.ndarray:
    """The seeded standard-normal upstream gradient ``g`` of a check, float64."""
    return np.random.default_rng([seed, _UPSTREAM_STREAM]).standard_normal(shape)


# Default settings of every check (check_grad, check_op, check_module and the pytest plugin).
EPS, RTOL, ATOL, DIRECTIONS = 1e-6, 1e-5, 1e-8, 2


class GradcheckError(AssertionError):
    """An analytic gradient disagrees with the numerical one (raised by the check functions).

    A subclass of ``AssertionError``, so pytest shows it as an ordinary test failure.
    ``report`` holds the :class:`GradcheckReport` of the failing check (None when the backward
    failed before any comparison, for example by returning the wrong number of gradients).
    """

    def __init__(self, message: str, report: GradcheckReport | None = None):
        super().__init__(message)
        self.report = report


GradcheckError.__module__ = "npmobilenet.gradcheck"  # the public name, in tracebacks


@dataclass
class InputReport:
    """Comparison result for one input.

    In full mode ``checked`` counts elements and ``worst_index`` is the index of the worst element
    in the input's shape; in fast mode ``checked`` counts random directions and ``worst_index``
    is ``(k,)``, the number of the worst direction.
    """

    name: str
    shape: tuple
    checked: int
    max_abs_err: float
    max_rel_err: float
    worst_ratio: float  # max |a - n| / (atol + rtol * max(|a|, |n|)); <= 1 passes
    worst_index: tuple
    worst_analytic: float
    worst_numeric: float
    n_failed: int

    @property
    def passed(self) -> bool:
        return self.n_failed == 0


@dataclass
class GradcheckReport:
    """What a gradient check compared; ``str(report)`` prints it as a table.

    ``mode`` is ``"full"`` (every element) or ``"fast"`` (random directional derivatives);
    ``evaluations`` counts the calls of ``fn``; ``inputs`` has one :class:`InputReport` per input
    (in fast mode there is one more row, ``"(joint)"``, for the directions across all inputs).
    """

    mode: str
    evaluations: int
    eps: float
    rtol: float
    atol: float
    inputs: list[InputReport] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.inputs)

    def __getitem__(self, name: str) -> InputReport:
        for r in self.inputs:
            if r.name == name:
                return r
        raise KeyError(name)

    def __str__(self) -> str:
        unit = "elements" if self.mode == "full" else "directions"
        nw = max([16] + [len(r.name) for r in self.inputs])  # column widths grow with the names
        sw = max([18] + [len(str(r.shape)) for r in self.inputs])
        lines = [
            f"gradcheck ({self.mode} mode, {self.evaluations} evaluations, eps={self.eps:g}, "
            f"rtol={self.rtol:g}, atol={self.atol:g})",
            f"{'input':<{nw}} {'shape':<{sw}} {unit:>10} {'max abs err':>12} {'max rel err':>12}"
            f" {'err/tol':>9}  ok",
        ]
        for r in self.inputs:
            lines.append(
                f"{r.name:<{nw}} {str(r.shape):<{sw}} {r.checked:>10} {r.max_abs_err:>12.2e} "
                f"{r.max_rel_err:>12.2e} {r.worst_ratio:>9.2e}  {'yes' if r.passed else 'NO'}"
            )
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# validation


def _validate_settings(eps, rtol, atol, fast, seed, directions, op="check_grad") -> None:
    for name, v, positive in (("eps", eps, True), ("rtol", rtol, False), ("atol", atol, False)):
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise TypeError(f"{op}: {name} must be a real number, got {describe(v)}")
        if not np.isfinite(v) or v < 0 or (positive and v == 0):
            want = "> 0" if positive else ">= 0"
            raise ValueError(f"{op}: {name} must be finite and {want}, got {v}")
    if not isinstance(fast, bool):
        raise TypeError(f"{op}: fast must be True or False, got {describe(fast)}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"{op}: seed must be an int, got {describe(seed)}")
    if isinstance(directions, bool) or not isinstance(directions, numbers.Integral):
        raise TypeError(f"{op}: directions must be an int, got {describe(directions)}")
    if directions < 1:
        raise ValueError(f"{op}: directions must be >= 1, got {directions}")


def _validate_dicts(fn, inputs, analytic, op="check_grad") -> None:
    if not callable(fn):
        raise TypeError(f"{op}: fn must be callable, got {describe(fn)}")
    for name, d in (("inputs", inputs), ("analytic", analytic)):
        if not isinstance(d, dict):
            raise TypeError(f"{op}: {name} must be a dict of name -> array, got {describe(d)}")
    if not inputs:
        raise ValueError(f"{op}: inputs is empty; give at least one array to check")
    missing = [k for k in inputs if k not in analytic]
    extra = [k for k in analytic if k not in inputs]
    if missing or extra:
        raise ValueError(
            f"{op}: analytic must have the same keys as inputs; missing {missing}, extra {extra}"
        )
    for k, x in inputs.items():
        if not isinstance(k, str):
            raise TypeError(f"{op}: input names must be str (fn(**inputs)), got {k!r}")
        if not isinstance(x, np.ndarray) or x.dtype.kind != "f":
            raise TypeError(
                f"{op}: inputs[{k!r}] must be a floating-point numpy array, got {describe(x)}"
                " (pass arrays you do not differentiate by closing over them in fn)"
            )
        a = analytic[k]
        if not isinstance(a, np.ndarray) or a.dtype.kind not in "fiu":
            raise TypeError(f"{op}: analytic[{k!r}] must be a real numpy array, got {describe(a)}")
        if a.shape != x.shape:
            raise ValueError(
                f"{op}: analytic[{k!r}] has shape {a.shape} but inputs[{k!r}] has shape {x.shape}"
            )


def _scalar(out, op="check_grad") -> float:
    """``fn``'s output as a Python float, or a clear error if it is not a finite real scalar."""
    if isinstance(out, np.ndarray) and out.ndim == 0:
        out = out[()]
    if isinstance(out, bool) or not isinstance(out, numbers.Real):
        raise TypeError(f"{op}: fn must return a real scalar, got {describe(out)}")
    out = float(out)
    if not np.isfinite(out):
        raise ValueError(f"{op}: fn returned {out}; it must be finite")
    return out


# --------------------------------------------------------------------------------------------
# comparison


def _compare(name, shape, a, n, rtol, atol, index_of) -> InputReport:
    """Compare flat analytic ``a`` with flat numeric ``n`` element by element.

    A non-finite analytic value (nan, inf) always fails, with an infinite error ratio.
    """
    if a.size == 0:
        return InputReport(name, shape, 0, 0.0, 0.0, 0.0, (), 0.0, 0.0, 0)
    finite = np.isfinite(a) & np.isfinite(n)
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.where(finite, np.abs(a - n), np.inf)
        scale = np.where(finite, np.maximum(np.abs(a), np.abs(n)), np.inf)
    tol = atol + rtol * scale
    passed = finite & (diff <= tol)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(finite & (scale > 0), diff / np.where(scale > 0, scale, 1.0), 0.0)
        ratio = np.where(tol > 0, diff / np.where(tol > 0, tol, 1.0), np.where(diff > 0, np.inf, 0))
    rel[~finite] = np.inf
    ratio[~finite] = np.inf
    k = int(np.argmax(ratio))
    return InputReport(
        name=name,
        shape=shape,
        checked=int(a.size),
        max_abs_err=float(diff.max()),
        max_rel_err=float(rel.max()),
        worst_ratio=float(ratio[k]),
        worst_index=index_of(k),
        worst_analytic=float(a[k]),
        worst_numeric=float(n[k]),
        n_failed=int(np.count_nonzero(~passed)),
    )


def _failure_message(report: GradcheckReport, op: str = "check_grad") -> str:
    failed = [r for r in report.inputs if not r.passed]
    # name an input when one fails on its own; the joint row only when none does
    own = [r for r in failed if r.name != "(joint)"] or failed
    worst = max(own, key=lambda r: r.worst_ratio)
    a, n = worst.worst_analytic, worst.worst_numeric
    diff = abs(a - n)
    tol = report.atol + report.rtol * max(abs(a), abs(n))
    scale = max(abs(a), abs(n))
    rel = diff / scale if scale > 0 else 0.0
    if not (np.isfinite(a) and np.isfinite(n)):
        diff = rel = tol = float("inf") if np.isinf(a) else float("nan")
    if report.mode == "full":
        where = f"gradient of {worst.name!r} is wrong at index {worst.worst_index}"
        count = f"{worst.n_failed} of {worst.checked} elements of {worst.name!r} fail"
    elif worst.name == "(joint)":
        where = f"directional derivative along joint random direction {worst.worst_index[0]}"
        where += " (all inputs at once) is wrong"
        count = f"{worst.n_failed} of {worst.checked} joint directions fail"
    else:
        where = (
            f"gradient of {worst.name!r} is wrong: directional derivative along random "
            f"direction {worst.worst_index[0]} of {worst.name!r}"
        )
        count = f"{worst.n_failed} of {worst.checked} directions of {worst.name!r} fail"
    others = [f"{r.name!r} (relative error {r.max_rel_err:.3g})" for r in failed if r is not worst]
    # "check_op (full mode)", or "check_module (Conv2d in train mode; full mode)"
    head = f"{op[:-1]}; {report.mode} mode)" if op.endswith(")") else f"{op} ({report.mode} mode)"
    msg = (
        f"{head}: {where}: analytic {a:.10g}, numeric {n:.10g}, "
        f"|a - n| = {diff:.3g}, relative error {rel:.3g} "
        f"(pass needs |a - n| <= atol + rtol * max(|a|, |n|) = {tol:.3g}). {count}."
    )
    if others:
        msg += " Also failing: " + ", ".join(others) + "."
    return msg + "\n" + str(report)


# --------------------------------------------------------------------------------------------
# the two modes


def _full(fn, xs, grads, eps, rtol, atol, op):
    """Central difference for every element of every input; returns (reports, evaluations)."""
    reports, evals = [], 0
    for name, x in xs.items():
        numeric = np.empty(x.size)
        for i, at in enumerate(np.ndindex(x.shape)):  # C order, whatever x's layout
            orig = x[at]
            x[at] = orig + eps
            f_plus = _scalar(fn(**xs), op)
            x[at] = orig - eps
            f_minus = _scalar(fn(**xs), op)
            x[at] = orig  # restore before the next element
            numeric[i] = (f_plus - f_minus) / (2.0 * eps)
        evals += 2 * x.size
        a = grads[name].reshape(-1)
        reports.append(
            _compare(name, x.shape, a, numeric, rtol, atol, lambda k, s=x.shape: _index(k, s))
        )
    return reports, evals


def _index(k: int, shape: tuple) -> tuple:
    return tuple(int(i) for i in np.unravel_index(k, shape)) if shape else ()


def _directional(fn, xs, base, direction, eps, op) -> float:
    """(f(x + eps v) - f(x - eps v)) / 2 eps for a direction ``v`` given per input."""
    f = []
    for sign in (1.0, -1.0):
        for name, v in direction.items():
            np.add(base[name], sign * eps * v, out=xs[name])
        f.append(_scalar(fn(**xs), op))
    for name in direction:
        xs[name][...] = base[name]  # restore
    return (f[0] - f[1]) / (2.0 * eps)


def _unit(rng, shapes: dict) -> dict:
    """A standard-normal random direction over the given shapes, scaled to unit total norm."""
    v = {name: rng.standard_normal(shape) for name, shape in shapes.items()}
    norm = np.sqrt(sum(float(np.sum(a * a)) for a in v.values()))
    return {name: a / norm for name, a in v.items()} if norm > 0 else v


def _fast(fn, xs, grads, eps, rtol, atol, seed, directions, op):
    """``directions`` random directions per input and ``directions`` across all inputs jointly."""
    rng = np.random.default_rng([seed, _DIRECTIONS_STREAM])
    base = {name: x.copy() for name, x in xs.items()}
    reports, evals = [], 0
    for name, x in xs.items():
        if x.size == 0:
            reports.append(_compare(name, x.shape, np.zeros(0), np.zeros(0), rtol, atol, _index))
            continue
        a, n = np.empty(directions), np.empty(directions)
        for k in range(directions):
            v = _unit(rng, {name: x.shape})
            a[k] = float(np.sum(v[name] * grads[name]))
            n[k] = _directional(fn, xs, base, v, eps, op)
        evals += 2 * directions
        reports.append(_compare(name, x.shape, a, n, rtol, atol, lambda k: (k,)))
    if len(xs) > 1:
        a, n = np.empty(directions), np.empty(directions)
        shapes = {name: x.shape for name, x in xs.items()}
        for k in range(directions):
            v = _unit(rng, shapes)
            a[k] = sum(float(np.sum(v[name] * grads[name])) for name in xs)
            n[k] = _directional(fn, xs, base, v, eps, op)
        evals += 2 * directions
        reports.append(_compare("(joint)", (), a, n, rtol, atol, lambda k: (k,)))
    return reports, evals


# --------------------------------------------------------------------------------------------
# public API


def check_grad(
    fn,
    inputs: dict,
    analytic: dict,
    *,
    eps: float = EPS,
    rtol: float = RTOL,
    atol: float = ATOL,
    fast: bool = False,
    seed: int = 0,
    directions: int = DIRECTIONS,
) -> GradcheckReport:
    """Check ``analytic`` gradients of the scalar ``fn(**inputs)`` against central differences.

    Args:
        fn: called as ``fn(**inputs)``; must return a real scalar (Python number or 0-d array)
            and must not modify its arguments in place.
        inputs: name -> floating-point array, the point at which to check. Float64 copies are
            used (float32 inputs are promoted); your arrays are never modified.
        analytic: name -> gradient of ``fn`` with respect to that input; same keys and shapes.
        eps: step of the central difference ``(f(x + eps) - f(x - eps)) / (2 eps)``.
        rtol, atol: an element passes when ``|a - n| <= atol + rtol * max(|a|, |n|)``.
        fast: False checks every element of every input (``2 * total size`` calls of ``fn``).
            True checks directional derivatives ``v . grad`` against
            ``(f(x + eps v) - f(x - eps v)) / (2 eps)`` along seeded random unit directions:
            ``directions`` of them in each input alone, then ``directions`` across all inputs
            jointly (skipped when there is one input), i.e. ``2 * directions * (number of
            inputs + 1)`` calls of ``fn`` whatever the sizes.
            A failure names the input whose own directions fail worst. Fast mode catches any
            gradient that is wrong in bulk (a scale, a transpose, a missing term) but may miss an
            error confined to a few elements of a large array; use full mode on small shapes for
            that.
        seed: seeds the random directions of fast mode.
        directions: number of random directions per input (and jointly) in fast mode.

    Choosing eps and atol: the central difference has a truncation error of order ``eps**2``
    times f's third derivative and a rounding error of order ``1e-16 * |f| / eps``; with the
    defaults that is about ``1e-10 * |f|``, so for a large ``|f|`` raise ``atol``. Kinks (ReLU
    at 0, ties in max pooling) are the other trap: when ``x +- eps`` straddles one, the numeric
    value is wrong although the gradient is right. Keep single-op inputs away from kinks; for a
    deep ReLU network, whose loss has kinks everywhere at the 1e-6 scale, use ``eps=1e-8`` and
    ``atol=1e-5``. A real error stays put as eps shrinks; a kink artefact moves or vanishes.

    Returns:
        A :class:`GradcheckReport` (``print`` it for a table) when every comparison passes.

    Raises:
        GradcheckError: (an ``AssertionError``) when a comparison fails, or when ``fn``
            writes to its arguments. The message names the input, the index of the worst
            element (full mode) or direction (fast mode), the analytic and numeric values,
            ``|a - n|`` and the relative error, then the table.
        TypeError, ValueError: bad arguments (missing or extra keys, shape mismatch, a
            non-scalar or non-finite output of ``fn``).
    """
    return _check(fn, inputs, analytic, "check_grad", eps, rtol, atol, fast, seed, directions)


def _check(fn, inputs, analytic, op, eps, rtol, atol, fast, seed, directions, what="fn"):
    """:func:`check_grad` with ``op`` (the public function called) naming it in every message,
    and ``what`` naming the code that evaluates ``fn`` (for the in-place-write check)."""
    _validate_settings(eps, rtol, atol, fast, seed, directions, op)
    _validate_dicts(fn, inputs, analytic, op)
    if all(x.size == 0 for x in inputs.values()):
        shapes = {k: x.shape for k, x in inputs.items()}
        raise ValueError(f"{op}: nothing to check: every input is empty {shapes}")
    xs = {k: _laid_out_like(x, x) for k, x in inputs.items()}  # a transposed x stays one
    grads = {k: np.asarray(a, dtype=np.float64) for k, a in analytic.items()}
    pristine = {k: x.copy() for k, x in xs.items()}
    _scalar(fn(**xs), op)  # validates the output once at the input point
    _check_unmodified(xs, pristine, op, what)
    if fast:
        reports, evals = _fast(fn, xs, grads, eps, rtol, atol, seed, directions, op)
    else:
        reports, evals = _full(fn, xs, grads, eps, rtol, atol, op)
    _check_unmodified(xs, pristine, op, what)
    report = GradcheckReport("fast" if fast else "full", evals + 1, eps, rtol, atol, reports)
    if not report.passed:
        raise GradcheckError(_failure_message(report, op), report)
    return report


def _laid_out_like(template: np.ndarray, values, dtype=np.float64) -> np.ndarray:
    """A copy of ``values`` (float64 unless ``dtype``) with the memory layout of ``template``
    (same shape): the same element strides, so a transposed, reversed or sliced input stays one
    (an input whose elements overlap, such as a broadcast view, is copied contiguous)."""
    item, shape = template.itemsize, template.shape
    if template.flags.c_contiguous or any(s % item for s in template.strides):
        return np.array(values, dtype=dtype, order="C")
    el = [s // item if n > 1 else 0 for n, s in zip(shape, template.strides)]
    span = 0  # the elements are distinct when each step clears the span of the smaller ones
    for s, n in sorted((abs(s), n) for n, s in zip(shape, el) if n > 1):
        if s <= span:
            return np.array(values, dtype=dtype, order="C")
        span += (n - 1) * s
    lo = sum((n - 1) * s for n, s in zip(shape, el) if s < 0)
    buf = np.zeros(span + 1, dtype=dtype)
    out = np.lib.stride_tricks.as_strided(buf[-lo:], shape, [buf.itemsize * s for s in el])
    out[...] = values
    return out


def _agrees(where, name, what, low, high, largest) -> None:
    """``low`` (a lower precision result) within 1e4 roundoff units of ``high``'s largest value
    and 1e3 of ``largest`` (the largest value of all the gradients compared)."""
    low = np.asarray(low, dtype=np.float64)
    eps = np.finfo(np.dtype(name)).eps
    tol = 1e4 * eps * float(np.max(np.abs(high), initial=0.0)) + 1e3 * eps * largest
    err = np.where(np.isfinite(low), np.abs(low - high), np.inf)
    if err.size and not np.all(err <= tol):
        k = np.unravel_index(int(np.argmax(err)), err.shape)
        raise GradcheckError(
            f"{where}: run in {name}, {what} is {low[k]:.8g} at index "
            f"{tuple(int(i) for i in k)} but {high[k]:.8g} in float64 (which the numerical "
            f"check confirmed): off by {err[k]:.3g}, more than {name} roundoff allows "
            f"({tol:.3g}); the {name} path of the "
            "forward or backward is wrong"
        )


def _check_unmodified(xs: dict, pristine: dict, op: str, what: str) -> None:
    """A function under a check that writes to its arguments is a bug: it would also corrupt
    the arrays a network keeps for its backward pass."""
    for k, x in xs.items():
        if x is not None and not np.array_equal(x, pristine[k], equal_nan=True):
            raise GradcheckError(
                f"{op}: {what} modified its input {k!r} in place; a function under a gradient"
                " check must not write to its arguments (work on a copy): a layer's caller"
                " keeps them (the previous layer keeps x for its own backward)"
            )


def check_op(
    forward,
    backward,
    inputs: dict,
    *,
    config: dict | None = None,
    eps: float = EPS,
    rtol: float = RTOL,
    atol: float = ATOL,
    fast: bool = False,
    seed: int = 0,
    directions: int = DIRECTIONS,
) -> GradcheckReport:
    """Check a forward/backward pair of this library's convention, in float64.

    The scalar checked is ``loss = sum(forward(**inputs, **config)[0] * g)`` with a seeded
    random upstream gradient ``g`` (standard normal, the shape of the forward's output); the
    analytic gradients are ``backward(g, cache)``.

    ``inputs`` holds exactly the arguments the backward differentiates, in the order of its
    gradients (dict order): the first gradient belongs to the first entry, and so on. A backward
    that returns a single array (not a tuple) gives the gradient of the only entry. Every array
    entry must get a gradient: a missing one, an extra one, or None for an array all fail and
    name the input. An entry may be None (an absent bias); its gradient must then be None or
    absent. Trailing None gradients need no entry, so ``{"x": x, "weight": w}`` works for a
    bias-free conv whose backward returns ``(dx, dw, None)``. For conv:
    ``inputs={"x": x, "weight": w, "bias": b}``.

    Everything else the forward takes goes in ``config``, a dict of further keyword arguments
    passed through and never differentiated: settings (``stride``, ``groups``, ``training``,
    ``rng``...) and arrays without a gradient (batch norm's ``running_mean`` and
    ``running_var``, cross-entropy's ``target``).

    State: every call of ``forward`` (the analytic pass and each numerical evaluation) gets
    fresh deep copies of ``config``, so an op that mutates state cannot drift between
    evaluations: batch norm's running statistics start from the same values each time, and a
    ``np.random.Generator`` in ``config`` starts from the same state, so dropout draws the same
    mask every time. Your own objects are never modified.

    Precision: every floating-point array in ``inputs`` and ``config`` is copied to float64
    first (integer arrays such as class targets are left as they are). When those arrays
    share one other dtype (float32), the forward and backward also run once on them as given:
    the output and every gradient must come out in that dtype, each gradient within roundoff
    of the float64 one the numerical check confirmed (1e4 float32 units of its array's
    largest value, plus 1e3 of all the gradients').

    Args:
        forward: ``forward(**inputs, **config) -> (out, cache)``.
        backward: ``backward(dout, cache) -> grad`` or a tuple of gradients.
        inputs: name -> float array (or None), in the order of the backward's gradients.
        config: further keyword arguments for ``forward``, not differentiated.
        eps, rtol, atol, fast, seed, directions: as for :func:`check_grad`; ``seed`` also
            seeds ``g``.

    Returns:
        The :class:`GradcheckReport` of the checked inputs.

    Raises:
        GradcheckError: a gradient is wrong; the backward returns a gradient too few or too
            many, one of the wrong shape or dtype, or None for an array input; the forward
            writes to an input; the backward writes to an input the forward kept or to
            ``dout``.
        TypeError, ValueError: bad arguments.
    """
    op = "check_op"
    _validate_settings(eps, rtol, atol, fast, seed, directions, op)
    raw = inputs, ({} if config is None else config)
    inputs, config = _validate_op_args(op, forward, backward, inputs, config, seed)
    given = {k: _to_float64(v) for k, v in inputs.items()}  # what the forward may keep
    out, cache = forward(**given, **copy.deepcopy(config))
    _check_unmodified(given, inputs, op, "forward")
    out = np.asarray(out)
    if out.size == 0:
        raise ValueError(
            f"{op}: nothing to check: the forward's output is empty (shape {out.shape}), so "
            "every gradient is zero whatever the backward computes"
        )
    g = upstream_gradient(seed, out.shape).astype(out.dtype)
    dout = g.copy()
    grads = backward(dout, cache)
    _check_unmodified({**given, "dout": dout}, {**inputs, "dout": g}, op, "backward")
    checked, analytic = _match(inputs, grads, op)

    def loss(**xs):
        rest = {k: v for k, v in inputs.items() if k not in xs}  # the None entries
        out, _ = forward(**xs, **rest, **copy.deepcopy(config))
        return float(np.sum(np.asarray(out, dtype=np.float64) * g))

    report = _check(loss, checked, analytic, op, eps, rtol, atol, fast, seed, directions, "forward")
    _check_op_own_dtype(op, forward, backward, raw, g, analytic)
    return report


def _check_op_own_dtype(op, forward, backward, raw, g, analytic) -> None:
    """One forward and backward on the arrays as given, when they share one dtype other than
    float64 (float32 inputs, float32 running statistics): the output and gradients in that
    dtype, every gradient within roundoff (see :func:`_agrees`) of the float64 one."""
    inputs, config = raw
    arrays = [v for v in (*inputs.values(), *config.values()) if isinstance(v, np.ndarray)]
    dtypes = {v.dtype for v in arrays if v.dtype.kind == "f"}
    if len(dtypes) != 1 or np.dtype(np.float64) in dtypes:
        return
    dtype = dtypes.pop()
    given = {k: None if v is None else _laid_out_like(v, v, dtype) for k, v in inputs.items()}
    out, cache = forward(**given, **copy.deepcopy(config))
    if not isinstance(out, (np.ndarray, np.generic)) or out.dtype != dtype:  # a 0-d loss too
        raise GradcheckError(
            f"{op}: run in {dtype} (the inputs' dtype), the forward returned {describe(out)}; "
            f"it must be a {dtype} array (dtype follows the input's)"
        )
    _, low = _match(given, backward(g.astype(dtype), cache), op)
    largest = max(float(np.max(np.abs(a), initial=0.0)) for a in analytic.values())
    for name, high in analytic.items():
        _agrees(op, dtype.name, f"the gradient of {name!r}", low[name], high, largest)


def _validate_op_args(op, forward, backward, inputs, config, seed):
    """Check check_op's arguments; return float64 copies of ``inputs`` and ``config``."""
    for name, f in (("forward", forward), ("backward", backward)):
        if not callable(f):
            raise TypeError(f"{op}: {name} must be callable, got {describe(f)}")
    if not isinstance(inputs, dict) or not inputs:
        raise TypeError(
            f"{op}: inputs must be a non-empty dict of name -> array, got {describe(inputs)}"
        )
    config = {} if config is None else config
    if not isinstance(config, dict):
        raise TypeError(f"{op}: config must be a dict of keyword arguments, got {describe(config)}")
    both = sorted(set(inputs) & set(config))
    if both:
        raise ValueError(f"{op}: {both} given in both inputs and config")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"{op}: seed must be an int, got {describe(seed)}")
    for name, x in inputs.items():
        if x is not None and not (isinstance(x, np.ndarray) and x.dtype.kind == "f"):
            raise TypeError(
                f"{op}: inputs[{name!r}] must be a floating-point array (or None): inputs holds"
                f" the arguments the backward differentiates; got {describe(x)}. Put settings"
                " and arrays without a gradient in config=..."
            )
    if all(x is None for x in inputs.values()):
        raise ValueError(f"{op}: nothing to check: every entry of inputs is None")
    return (
        {k: _to_float64(v) for k, v in inputs.items()},
        {k: _to_float64(v) for k, v in config.items()},
    )


def _to_float64(v):
    if isinstance(v, np.ndarray) and v.dtype.kind == "f":
        return _laid_out_like(v, v)  # a copy, also for float64 input, in v's layout
    return v


def _match(inputs: dict, grads, op: str):
    """Pair the backward's gradients with the entries of ``inputs`` in order; every array entry
    needs exactly one gradient."""
    grads = tuple(grads) if isinstance(grads, (tuple, list)) else (grads,)
    names = list(inputs)
    while len(grads) > len(names) and grads[-1] is None:
        grads = grads[:-1]  # a trailing None (dbias without bias) needs no entry in inputs
    if len(grads) > len(names):
        raise GradcheckError(
            f"{op}: backward returned {len(grads)} gradients but inputs has only "
            f"{len(names)} entries {names}; list the inputs in the backward's order"
        )
    missing = [k for k in names[len(grads) :] if inputs[k] is not None]
    if missing:
        raise GradcheckError(
            f"{op}: backward returned {len(grads)} gradient(s) for the {len(names)} inputs "
            f"{names}: no gradient for {missing[0]!r}"
        )
    checked, analytic = {}, {}
    for name, gr in zip(names, grads):
        x = inputs[name]
        if x is None:
            if gr is not None:
                raise GradcheckError(
                    f"{op}: backward returned a gradient for {name!r}, which is None"
                )
            continue
        if gr is None:
            raise GradcheckError(f"{op}: backward returned None as the gradient of {name!r}")
        if not isinstance(gr, np.ndarray) or gr.shape != x.shape or gr.dtype != x.dtype:
            raise GradcheckError(
                f"{op}: the gradient of {name!r} must be an array of shape {x.shape} and dtype "
                f"{x.dtype} like the input, got {describe(gr)}" + _order_hint(inputs, name, gr)
            )
        checked[name], analytic[name] = x, gr
    return checked, analytic


def _order_hint(inputs: dict, name: str, gr) -> str:
    """A hint when a misplaced gradient has the shape of another input."""
    shape = getattr(gr, "shape", None)
    for other, x in inputs.items():
        if other != name and x is not None and x.shape == shape:
            return (
                f"; it has the shape of {other!r}: are the gradients returned in the order of"
                " inputs?"
            )
    return ""
