"""The exercises: what the learner writes, the configurations drawn, and the reference check.

Each exercise's ``run(fn, config)`` calls the learner's function on inputs made from a drawn
configuration and returns None when the answer matches the library's reference (its own ops and
kernels, and for gradients also the numerical gradient checker), else a short description of the
first mismatch. Inputs are float64 and seeded by the configuration, so a failure is reproducible.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from npmobilenet import ops
from npmobilenet.exercises import references as ref
from npmobilenet.gradcheck import GradcheckError, check_grad

TOL = 1e-9  # float64 answers agree with the reference to rounding


@dataclass(frozen=True)
class Exercise:
    name: str
    function: str  # the function the skeleton asks for
    summary: str
    configs: Callable  # () -> a Hypothesis strategy of configuration dicts
    run: Callable  # (fn, config) -> None or a description of the mismatch
    hint: str


def compare(name: str, got, expected) -> str | None:
    """None when ``got`` equals ``expected`` to TOL, else what differs (shape or worst cell)."""
    if not isinstance(got, np.ndarray):
        return f"{name} is a {type(got).__name__}, expected an array of shape {expected.shape}"
    if got.shape != expected.shape:
        return f"{name} has shape {got.shape}, expected {expected.shape}"
    err = np.abs(got - expected)
    bad = ~(err <= TOL * (1 + np.abs(expected)))  # NaN counts as bad
    if not bad.any():
        return None
    idx = tuple(int(i) for i in np.argwhere(bad)[0])
    return (f"{name}{list(idx)} is {got[idx]:.10g}, expected {expected[idx]:.10g} "
            f"({int(bad.sum())} of {bad.size} elements differ)")  # fmt: skip


def unpack(result, names: tuple) -> tuple | str:
    """The learner's tuple of arrays, or a description of what came back instead."""
    if not isinstance(result, tuple) or len(result) != len(names):
        return f"returned {type(result).__name__}, expected a tuple ({', '.join(names)})"
    return result


def gradcheck(forward, inputs: dict, dout, analytic: dict) -> str | None:
    """The learner's gradients vs central differences of sum(forward(**inputs) * dout)."""
    try:
        check_grad(lambda **kw: float((forward(**kw) * dout).sum()), inputs, analytic,
                   rtol=1e-6, atol=1e-8)  # fmt: skip
    except GradcheckError as err:
        return "gradient checker: " + str(err).split("\n")[0]
    return None


# ------------------------------------------------------------------------------ strategies


def conv_configs(depthwise: bool):
    """Small (N, C, H, W, k, stride, padding[, groups]) drawings with an output of >= 1 pixel."""
    from hypothesis import assume
    from hypothesis import strategies as st

    @st.composite
    def draw(draw):
        groups = 1 if depthwise else draw(st.integers(1, 3))
        cfg = {
            "N": draw(st.integers(1, 2)),
            "C": draw(st.integers(1, 3)) * groups,
            "H": draw(st.integers(1, 7)),
            "W": draw(st.integers(1, 7)),
            "k": draw(st.sampled_from((1, 2, 3))),
            "stride": draw(st.integers(1, 3)),
            "padding": draw(st.integers(0, 2)),
            "seed": draw(st.integers(0, 2**16)),
        }
        if not depthwise:
            cfg["groups"] = groups
        assume(min(cfg["H"], cfg["W"]) + 2 * cfg["padding"] >= cfg["k"])
        return cfg

    return draw()


def bn_configs():
    from hypothesis import strategies as st

    return st.fixed_dictionaries({
        "N": st.integers(2, 3), "C": st.integers(1, 3), "H": st.integers(1, 3),
        "W": st.integers(1, 3), "seed": st.integers(0, 2**16),
    })  # fmt: skip


def fold_configs():
    from hypothesis import strategies as st

    return st.fixed_dictionaries({
        "K": st.integers(1, 4), "Cg": st.integers(1, 3), "k": st.sampled_from((1, 3)),
        "seed": st.integers(0, 2**16),
    })  # fmt: skip


# ------------------------------------------------------------------------------ runs


def conv_inputs(cfg):
    rng = np.random.default_rng(cfg["seed"])
    x = rng.standard_normal((cfg["N"], cfg["C"], cfg["H"], cfg["W"]))
    w = rng.standard_normal((cfg["C"], 1, cfg["k"], cfg["k"]))
    return rng, x, w


def run_depthwise_forward(fn, cfg):
    _, x, w = conv_inputs(cfg)
    s, p = cfg["stride"], cfg["padding"]
    expected = ref.depthwise_conv_forward(x, w, s, p)
    return compare("out", fn(x.copy(), w.copy(), s, p), expected)


def run_depthwise_backward(fn, cfg):
    rng, x, w = conv_inputs(cfg)
    s, p, C = cfg["stride"], cfg["padding"], cfg["C"]
    dout = rng.standard_normal(ref.depthwise_conv_forward(x, w, s, p).shape)
    dx_ref, dw_ref = ref.depthwise_conv_backward(dout, x, w, s, p)
    got = unpack(fn(dout.copy(), x.copy(), w.copy(), s, p), ("dx", "dw"))
    if isinstance(got, str):
        return got
    problem = compare("dx", got[0], dx_ref) or compare("dw", got[1], dw_ref)
    forward = lambda x, w: ops.conv2d_forward(x, w, stride=s, padding=p, groups=C)[0]  # noqa: E731
    return problem or gradcheck(forward, {"x": x, "w": w}, dout, {"x": got[0], "w": got[1]})


def run_im2col_grouped(fn, cfg):
    _, x, _ = conv_inputs(cfg)
    k, s, p, G = cfg["k"], cfg["stride"], cfg["padding"], cfg["groups"]
    return compare("cols", fn(x.copy(), k, k, s, p, G), ref.im2col_grouped(x, k, k, s, p, G))


def run_batchnorm_backward(fn, cfg):
    rng = np.random.default_rng(cfg["seed"])
    shape = (cfg["N"], cfg["C"], cfg["H"], cfg["W"])
    x = rng.standard_normal(shape) * 2 + 1
    gamma, beta = rng.standard_normal(cfg["C"]), rng.standard_normal(cfg["C"])
    dout = rng.standard_normal(shape)
    expected = ref.batchnorm_backward(dout, x, gamma, 1e-5)
    got = unpack(fn(dout.copy(), x.copy(), gamma.copy(), 1e-5), ("dx", "dgamma", "dbeta"))
    if isinstance(got, str):
        return got
    problem = (compare("dx", got[0], expected[0]) or compare("dgamma", got[1], expected[1])
               or compare("dbeta", got[2], expected[2]))  # fmt: skip

    def forward(x, gamma, beta):
        return ops.batch_norm_forward(x, gamma, beta, None, None, training=True)[0]

    inputs = {"x": x, "gamma": gamma, "beta": beta}
    return problem or gradcheck(forward, inputs, dout, dict(zip(inputs, got)))


def run_fold_bn(fn, cfg):
    rng = np.random.default_rng(cfg["seed"])
    K, Cg, k = cfg["K"], cfg["Cg"], cfg["k"]
    w = rng.standard_normal((K, Cg, k, k))
    gamma, beta, mean = (rng.standard_normal(K) for _ in range(3))
    var = rng.uniform(0.1, 2.0, K)
    w_ref, b_ref = ref.fold_bn(w, gamma, beta, mean, var, 1e-5)
    got = unpack(fn(w.copy(), gamma.copy(), beta.copy(), mean.copy(), var.copy(), 1e-5),
                 ("w_folded", "b_folded"))  # fmt: skip
    if isinstance(got, str):
        return got
    return compare("w_folded", got[0], w_ref) or compare("b_folded", got[1], b_ref)
