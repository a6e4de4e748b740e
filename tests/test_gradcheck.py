"""The gradient-check API itself, on numpy functions whose gradients are derived here by hand.

Nothing in this file uses the library's ops: the references are closed-form derivatives, so a
bug in an op cannot make these tests pass or fail.
"""

from __future__ import annotations

import numpy as np
import pytest

from npmobilenet.gradcheck import GradcheckError, GradcheckReport, check_grad, check_op

# ------------------------------------------------------------------------------------------
# scalar functions and their hand-derived gradients


def sin_sq(x):
    """f(x) = sum(sin(x) * x^2);  df/dx = cos(x) x^2 + 2 x sin(x)."""
    return np.sum(np.sin(x) * x**2)


def sin_sq_grad(x):
    return np.cos(x) * x**2 + 2 * x * np.sin(x)


def bilinear(A, B, W):
    """f(A, B) = sum(W * (A @ B));  df/dA = W @ B.T,  df/dB = A.T @ W."""
    return np.sum(W * (A @ B))


def logsumexp(x):
    """f(x) = log(sum(exp(x)));  df/dx = softmax(x)."""
    m = x.max()
    return m + np.log(np.sum(np.exp(x - m)))


@pytest.fixture
def mats(rng):
    A = rng.standard_normal((3, 4))
    B = rng.standard_normal((4, 5))
    W = rng.standard_normal((3, 5))
    return A, B, W


def test_right_gradients_pass_full_mode(rng, mats):
    x = rng.standard_normal((2, 3, 4))
    report = check_grad(sin_sq, {"x": x}, {"x": sin_sq_grad(x)})
    assert isinstance(report, GradcheckReport) and report.passed
    assert report.mode == "full"
    assert report.evaluations == 2 * x.size + 1  # two per element plus the first call
    assert report["x"].checked == x.size and report["x"].worst_ratio <= 1
    assert report["x"].max_rel_err < 1e-6

    A, B, W = mats
    report = check_grad(
        lambda A, B: bilinear(A, B, W), {"A": A, "B": B}, {"A": W @ B.T, "B": A.T @ W}
    )
    assert [r.name for r in report.inputs] == ["A", "B"]
    assert report.evaluations == 2 * (A.size + B.size) + 1

    z = rng.standard_normal(7) * 3
    e = np.exp(z - z.max())
    check_grad(logsumexp, {"x": z}, {"x": e / e.sum()}, rtol=1e-6)


def test_report_prints_a_table(rng):
    x = rng.standard_normal((2, 3))
    text = str(check_grad(sin_sq, {"x": x}, {"x": sin_sq_grad(x)}))
    lines = text.splitlines()
    assert "full mode" in lines[0] and "13 evaluations" in lines[0]
    assert "max rel err" in lines[1]
    assert lines[2].split()[0] == "x" and "(2, 3)" in lines[2] and lines[2].endswith("yes")


def test_wrong_element_is_pinpointed(mats):
    A, B, W = mats
    dA, dB = W @ B.T, A.T @ W
    dB_wrong = dB.copy()
    dB_wrong[1, 2] *= 1.01  # one wrong element
    with pytest.raises(GradcheckError) as info:
        check_grad(lambda A, B: bilinear(A, B, W), {"A": A, "B": B}, {"A": dA, "B": dB_wrong})
    msg = str(info.value)
    assert isinstance(info.value, AssertionError)
    assert "gradient of 'B' is wrong at index (1, 2)" in msg
    assert f"analytic {dB_wrong[1, 2]:.10g}" in msg
    # the numeric value printed is the true derivative, to the shown precision
    numeric = float(msg.split("numeric ")[1].split(",")[0])
    assert numeric == pytest.approx(dB[1, 2], rel=1e-7)
    assert "relative error 0.0099" in msg
    assert "1 of 20 elements of 'B' fail" in msg
    report = info.value.report
    assert report["A"].passed and not report["B"].passed
    assert report["B"].worst_index == (1, 2)


def test_transposed_gradient_fails(rng):
    A = rng.standard_normal((3, 3))
    W = rng.standard_normal((3, 3))
    # f(A) = sum(W * A) has gradient W, not W.T
    with pytest.raises(GradcheckError, match="gradient of 'A' is wrong at index"):
        check_grad(lambda A: np.sum(W * A), {"A": A}, {"A": W.T})


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_analytic_fails(rng, bad):
    x = rng.standard_normal(4)
    g = sin_sq_grad(x)
    g[2] = bad
    with pytest.raises(GradcheckError, match=rf"'x' is wrong at index \(2,\): analytic {bad}"):
        check_grad(sin_sq, {"x": x}, {"x": g})
    with pytest.raises(GradcheckError, match="gradient of 'x' is wrong"):
        check_grad(sin_sq, {"x": x}, {"x": g}, fast=True)


def test_tolerances_decide(rng):
    x = rng.standard_normal(5)
    g = sin_sq_grad(x) * (1 + 1e-4)
    with pytest.raises(GradcheckError):
        check_grad(sin_sq, {"x": x}, {"x": g})  # default rtol 1e-5
    check_grad(sin_sq, {"x": x}, {"x": g}, rtol=1e-3)


def test_fast_mode_passes_right_and_catches_wrong(mats):
    A, B, W = mats
    dA, dB = W @ B.T, A.T @ W
    fn = lambda A, B: bilinear(A, B, W)  # noqa: E731
    report = check_grad(fn, {"A": A, "B": B}, {"A": dA, "B": dB}, fast=True)
    assert report.mode == "fast" and report.passed
    # 2 directions per input + 2 joint, two calls each, plus the first call
    assert report.evaluations == 2 * 2 * 3 + 1
    assert [r.name for r in report.inputs] == ["A", "B", "(joint)"]
    assert "directions" in str(report)

    with pytest.raises(GradcheckError) as info:
        check_grad(fn, {"A": A, "B": B}, {"A": dA * 1.02, "B": dB}, fast=True)
    msg = str(info.value)
    assert "fast mode" in msg and "gradient of 'A' is wrong" in msg
    assert info.value.report["B"].passed

    with pytest.raises(GradcheckError, match="gradient of 'B' is wrong"):
        check_grad(fn, {"A": A, "B": B}, {"A": dA, "B": dB.T.reshape(dB.shape)}, fast=True)


def test_fast_mode_cost_does_not_grow_with_size(rng):
    x = rng.standard_normal((100, 100))
    calls = []

    def fn(x):
        calls.append(1)
        return sin_sq(x)

    report = check_grad(fn, {"x": x}, {"x": sin_sq_grad(x)}, fast=True, directions=3)
    assert len(calls) == report.evaluations == 2 * 3 + 1


def test_fast_mode_is_seeded(mats):
    A, B, W = mats
    fn = lambda A, B: bilinear(A, B, W)  # noqa: E731
    grads = {"A": W @ B.T * 1.001, "B": A.T @ W}
    errs = []
    for seed in (3, 3, 4):
        with pytest.raises(GradcheckError) as info:
            check_grad(fn, {"A": A, "B": B}, grads, fast=True, seed=seed)
        errs.append(info.value.report["A"].worst_analytic)
    assert errs[0] == errs[1] != errs[2]


def test_float32_inputs_are_checked_in_float64(rng):
    x32 = rng.standard_normal(6).astype(np.float32)
    seen = []

    def fn(x):
        seen.append(x.dtype)
        return np.sum(x**3)

    # eps=1e-6 would be below float32 resolution: this passes only if evaluated in float64
    check_grad(fn, {"x": x32}, {"x": 3 * x32.astype(np.float64) ** 2}, rtol=1e-7)
    assert set(seen) == {np.dtype(np.float64)}


def test_caller_arrays_are_not_modified(mats):
    A, B, W = mats
    A0, B0 = A.copy(), B.copy()
    fn = lambda A, B: bilinear(A, B, W)  # noqa: E731
    check_grad(fn, {"A": A, "B": B}, {"A": W @ B.T, "B": A.T @ W})
    check_grad(fn, {"A": A, "B": B}, {"A": W @ B.T, "B": A.T @ W}, fast=True)
    with pytest.raises(GradcheckError):
        check_grad(fn, {"A": A, "B": B}, {"A": W @ B.T, "B": 2 * A.T @ W})
    np.testing.assert_array_equal(A, A0)
    np.testing.assert_array_equal(B, B0)


def test_function_writing_its_input_is_rejected(rng):
    def fn(x):
        x *= 2
        return np.sum(x)

    x = rng.standard_normal(3)
    with pytest.raises(GradcheckError, match="check_grad: fn modified its input 'x' in place"):
        check_grad(fn, {"x": x}, {"x": np.full(3, 2.0)})


@pytest.mark.parametrize(
    "fn, inputs, analytic, kwargs, error, match",
    [
        (sin_sq, {"x": np.ones(3)}, {}, {}, ValueError, r"missing \['x'\], extra \[\]"),
        (sin_sq, {"x": np.ones(3)}, {"x": np.ones(3), "y": np.ones(3)}, {}, ValueError,
         r"missing \[\], extra \['y'\]"),
        (sin_sq, {"x": np.ones(3)}, {"x": np.ones(4)}, {}, ValueError,
         r"analytic\['x'\] has shape \(4,\) but inputs\['x'\] has shape \(3,\)"),
        (lambda x: x, {"x": np.ones(2)}, {"x": np.ones(2)}, {}, TypeError,
         "fn must return a real scalar, got array of shape"),
        (lambda x: np.nan, {"x": np.ones(2)}, {"x": np.ones(2)}, {}, ValueError,
         "must be finite"),
        (sin_sq, {"x": [1.0, 2.0]}, {"x": np.ones(2)}, {}, TypeError,
         r"inputs\['x'\] must be a floating-point numpy array, got list"),
        (sin_sq, {"x": np.ones(2, dtype=np.int64)}, {"x": np.ones(2)}, {}, TypeError,
         "floating-point numpy array, got array of shape"),
        (sin_sq, {"x": np.ones(2)}, {"x": "grad"}, {}, TypeError, r"analytic\['x'\] must be"),
        ("fn", {"x": np.ones(2)}, {"x": np.ones(2)}, {}, TypeError, "fn must be callable"),
        (sin_sq, [np.ones(2)], {"x": np.ones(2)}, {}, TypeError, "inputs must be a dict"),
        (sin_sq, {}, {}, {}, ValueError, "inputs is empty"),
        (sin_sq, {1: np.ones(2)}, {1: np.ones(2)}, {}, TypeError, "input names must be str"),
        (sin_sq, {"x": np.ones(2)}, {"x": np.ones(2)}, {"eps": 0.0}, ValueError, "eps must be"),
        (sin_sq, {"x": np.ones(2)}, {"x": np.ones(2)}, {"rtol": -1.0}, ValueError, "rtol must"),
        (sin_sq, {"x": np.ones(2)}, {"x": np.ones(2)}, {"atol": "0"}, TypeError, "atol must"),
        (sin_sq, {"x": np.ones(2)}, {"x": np.ones(2)}, {"fast": 1}, TypeError, "fast must be"),
        (sin_sq, {"x": np.ones(2)}, {"x": np.ones(2)}, {"seed": 1.5}, TypeError, "seed must"),
        (sin_sq, {"x": np.ones(2)}, {"x": np.ones(2)}, {"directions": 0}, ValueError,
         "directions must be >= 1"),
    ],
)  # fmt: skip
def test_bad_arguments(fn, inputs, analytic, kwargs, error, match):
    with pytest.raises(error, match=match) as info:
        check_grad(fn, inputs, analytic, **kwargs)
    assert "check_grad" in str(info.value)


# ------------------------------------------------------------------------------------------
# check_op on forward/backward pairs written here


def affine_forward(x, w, b=None):
    """out = x @ w.T + b;  x (N, D), w (M, D), b (M,) -> out (N, M)."""
    out = x @ w.T + (0 if b is None else b)
    return out, (x, w, b is not None)


def affine_backward(dout, cache):
    x, w, has_b = cache
    return dout @ w, dout.T @ x, (dout.sum(axis=0) if has_b else None)


@pytest.fixture
def affine_inputs(rng):
    return {
        "x": rng.standard_normal((4, 3)),
        "w": rng.standard_normal((2, 3)),
        "b": rng.standard_normal(2),
    }


def test_check_op_passes_a_right_op(affine_inputs):
    report = check_op(affine_forward, affine_backward, affine_inputs)
    assert [r.name for r in report.inputs] == ["x", "w", "b"]
    report = check_op(affine_forward, affine_backward, {**affine_inputs, "b": None})
    assert [r.name for r in report.inputs] == ["x", "w"]  # the None bias is skipped
    # a trailing None gradient needs no entry: b defaults to None in the forward
    no_b = {k: v for k, v in affine_inputs.items() if k != "b"}
    report = check_op(affine_forward, affine_backward, no_b)
    assert [r.name for r in report.inputs] == ["x", "w"]


def test_check_op_catches_a_wrong_op(affine_inputs):
    def backward(dout, cache):
        dx, dw, db = affine_backward(dout, cache)
        return dx, dw * 1.01, db

    with pytest.raises(GradcheckError, match="gradient of 'w' is wrong at index"):
        check_op(affine_forward, backward, affine_inputs)
    with pytest.raises(GradcheckError, match="gradient of 'w' is wrong"):
        check_op(affine_forward, backward, affine_inputs, fast=True)


def test_check_op_uses_a_random_upstream_gradient(affine_inputs):
    """A backward that ignores dout (as if dout were all ones) must fail."""

    def backward(dout, cache):
        return affine_backward(np.ones_like(dout), cache)

    with pytest.raises(GradcheckError, match="gradient of '[xwb]' is wrong") as info:
        check_op(affine_forward, backward, affine_inputs)
    assert not any(r.passed for r in info.value.report.inputs)


def tanh_forward(x, scale):
    """out = scale * tanh(x); x (N, D) -> out (N, D)."""
    out = np.tanh(x) * scale
    return out, (out, scale)


def tanh_backward(dout, cache):
    out, scale = cache
    return dout * (scale - out**2 / scale)  # d/dx s tanh(x) = s (1 - tanh^2)


def test_check_op_single_gradient_maps_to_first_input(rng):
    x = rng.standard_normal((2, 5))
    report = check_op(tanh_forward, tanh_backward, {"x": x}, config={"scale": 1.5})
    assert [r.name for r in report.inputs] == ["x"]
    # inputs holds only what the backward differentiates: a setting there is refused
    with pytest.raises(TypeError, match=r"inputs\['scale'\] must be a floating-point array"):
        check_op(tanh_forward, tanh_backward, {"x": x, "scale": 1.5})


def test_check_op_float32_runs_in_float64(rng):
    seen = []

    def forward(x, w):
        seen.append((x.dtype, w.dtype))
        return x * w, (x, w)

    def backward(dout, cache):
        x, w = cache
        return dout * w, dout * x

    x, w = (rng.standard_normal(4).astype(np.float32) for _ in range(2))
    check_op(forward, backward, {"x": x, "w": w}, rtol=1e-8)
    # every call of the numerical check is float64; the one float32 run comes last
    assert set(seen[:-1]) == {(np.dtype(np.float64), np.dtype(np.float64))}
    assert seen[-1] == (np.dtype(np.float32), np.dtype(np.float32))


def noisy_state_forward(x, state, rng):
    """A stateful op: scales x by a random mask and by ``state``, then bumps ``state`` in place.

    out = x * mask * state,  mask ~ rng;  x, state, mask (N,).
    """
    mask = (rng.random(x.shape) < 0.5) + 0.5
    out = x * mask * state
    state += 1.0  # mutates the caller's state, like batch norm's running statistics
    return out, mask * (state - 1.0)


def noisy_state_backward(dout, cache):
    return dout * cache


def test_check_op_keeps_state_and_rng_fixed(rng):
    """Without fresh copies per evaluation the state would drift and the mask would change."""
    x, state = rng.standard_normal(6), rng.uniform(1, 2, 6)
    state0 = state.copy()
    gen = np.random.default_rng(7)
    gen_state = gen.bit_generator.state
    check_op(noisy_state_forward, noisy_state_backward, {"x": x},
             config={"state": state, "rng": gen})  # fmt: skip
    np.testing.assert_array_equal(state, state0)
    assert gen.bit_generator.state == gen_state


def test_check_op_does_not_modify_inputs(affine_inputs):
    before = {k: v.copy() for k, v in affine_inputs.items()}
    check_op(affine_forward, affine_backward, affine_inputs)
    for k, v in affine_inputs.items():
        np.testing.assert_array_equal(v, before[k])


def test_check_op_bad_backwards_fail_clearly(affine_inputs):
    def too_many(dout, cache):
        return (*affine_backward(dout, cache), dout)

    def wrong_shape(dout, cache):
        dx, dw, db = affine_backward(dout, cache)
        return dx, dw.T, db

    def wrong_dtype(dout, cache):
        dx, dw, db = affine_backward(dout, cache)
        return dx.astype(np.float32), dw, db

    def none_for_array(dout, cache):
        dx, dw, _ = affine_backward(dout, cache)
        return dx, dw, None

    cases = [
        (too_many, "backward returned 4 gradients but inputs has only 3"),
        (wrong_shape, r"gradient of 'w' must be an array of shape \(2, 3\)"),
        (wrong_dtype, "gradient of 'x' must be an array of shape .* and dtype float64"),
        (none_for_array, "backward returned None as the gradient of 'b'"),
    ]
    for backward, match in cases:
        with pytest.raises(GradcheckError, match=match):
            check_op(affine_forward, backward, affine_inputs)


def test_check_op_refuses_a_missing_gradient(affine_inputs):
    """A backward that forgets a gradient fails; it never passes on the gradients it returned."""

    def forgot_db(dout, cache):
        return affine_backward(dout, cache)[:2]

    def only_dx(dout, cache):
        return affine_backward(dout, cache)[0]

    with pytest.raises(GradcheckError, match=r"check_op: backward returned 2 gradient\(s\) for "
                       r"the 3 inputs \['x', 'w', 'b'\]: no gradient for 'b'"):  # fmt: skip
        check_op(affine_forward, forgot_db, affine_inputs)
    with pytest.raises(GradcheckError, match="no gradient for 'w'"):
        check_op(affine_forward, only_dx, affine_inputs)
    with pytest.raises(GradcheckError, match="no gradient for 'w'"):
        check_op(affine_forward, only_dx, affine_inputs, fast=True)


def test_check_op_names_gradients_in_the_wrong_order(affine_inputs):
    def swapped(dout, cache):
        dx, dw, db = affine_backward(dout, cache)
        return dw, dx, db

    with pytest.raises(GradcheckError, match=r"gradient of 'x' must be .* it has the shape of "
                       r"'w': are the gradients returned in the order of inputs\?"):  # fmt: skip
        check_op(affine_forward, swapped, affine_inputs)


def test_errors_name_the_function_called(affine_inputs):
    def wrong(dout, cache):
        dx, dw, db = affine_backward(dout, cache)
        return dx, dw, -db

    with pytest.raises(GradcheckError, match=r"^check_op \(full mode\): gradient of 'b'"):
        check_op(affine_forward, wrong, affine_inputs)
    with pytest.raises(ValueError, match="^check_op: eps must be finite"):
        check_op(affine_forward, affine_backward, affine_inputs, eps=0.0)

    def writes_its_input(x, w, b=None):
        x[0, 0] += 1.0
        return affine_forward(x, w, b)

    with pytest.raises(GradcheckError, match="^check_op: forward modified its input 'x' in place"):
        check_op(writes_its_input, affine_backward, affine_inputs)


def test_check_op_bad_arguments(affine_inputs):
    with pytest.raises(TypeError, match="check_op: forward must be callable"):
        check_op(None, affine_backward, affine_inputs)
    with pytest.raises(TypeError, match="check_op: inputs must be a non-empty dict"):
        check_op(affine_forward, affine_backward, {})
    with pytest.raises(TypeError, match="check_op: config must be a dict"):
        check_op(affine_forward, affine_backward, affine_inputs, config=[1])
    with pytest.raises(ValueError, match=r"\['b'\] given in both inputs and config"):
        check_op(affine_forward, affine_backward, affine_inputs, config={"b": None})
    # a setting placed where the backward returns a gradient
    with pytest.raises(TypeError, match=r"inputs\['scale'\] must be a floating-point array"):
        check_op(tanh_forward, tanh_backward, {"scale": 1.5, "x": affine_inputs["x"]})


# ------------------------------------------------------------------------------------------
# the every-op table (a demo of the library's own ops)


def test_check_every_op_covers_every_op_and_passes():
    from npmobilenet import ops
    from npmobilenet.gradcheck.suite import check_every_op, format_results

    results = check_every_op()
    assert all(r.passed for _, r in results)
    stems = {name.removesuffix("_forward").removesuffix("_backward") for name in ops.__all__}
    labels = " ".join(label for label, _ in results)
    assert all(stem in labels for stem in stems), stems - set(labels.split())
    table = format_results(results)
    assert table.splitlines()[-1].startswith(f"{len(results)} of {len(results)} gradient checks")


def test_check_every_op_reports_a_broken_op_as_a_row(monkeypatch):
    from npmobilenet import ops
    from npmobilenet.gradcheck.suite import check_every_op, format_results

    real = ops.relu6_backward
    monkeypatch.setattr(ops, "relu6_backward", lambda dout, cache: 1.01 * real(dout, cache))
    results = dict(check_every_op(fast=True))
    assert not results["relu6"].passed and results["relu"].passed
    rows = format_results(list(results.items())).splitlines()
    assert [r for r in rows if r.startswith("relu6 ")][0].endswith("FAIL")


def test_gradcheck_command(capsys, monkeypatch):
    import argparse

    from npmobilenet import ops
    from npmobilenet.gradcheck.command import add_gradcheck_command

    parser = argparse.ArgumentParser()
    add_gradcheck_command(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["gradcheck", "--fast", "--seed", "3"])
    assert args.func(args) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:2] == ["op", "checked"] and "gradient checks passed" in out[-1]
    real = ops.linear_backward
    monkeypatch.setattr(ops, "linear_backward", lambda d, c: real(2 * d, c))
    assert args.func(args) == 1
    assert "FAIL" in capsys.readouterr().out
