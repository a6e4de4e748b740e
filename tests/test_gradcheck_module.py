"""check_module and check_op against deliberately buggy user layers: every bug is caught.

Each buggy layer is a small ``npmobilenet.nn.Module`` (or forward/backward pair) written here
the way a user would, with one bug switched on by name; the same layer without the bug must
pass. The reference is always central differences in float64, computed by the checker from the
forward alone.
"""

from __future__ import annotations

import numpy as np
import pytest

from npmobilenet import nn
from npmobilenet.gradcheck import (
    GradcheckError,
    ModuleReport,
    check_grad,
    check_module,
    check_op,
)
from npmobilenet.nn import Parameter


class Dense(nn.Module):
    """``y = x @ weight.T + bias``: x (N, D), weight (D, D), bias (D,).

    The weight is square, so a transposed weight gradient still has the right shape.
    """

    def __init__(self, d: int = 3, bug: str | None = None):
        super().__init__()
        r = np.random.default_rng(0)
        self.weight = Parameter(r.standard_normal((d, d)))
        self.bias = Parameter(r.standard_normal(d))
        self.bug = bug

    def forward(self, x):
        if self.bug == "mutates input":
            np.multiply(x, 1.5, out=x)  # scales the caller's array in place
            self.saved = x
            return x @ self.weight.data.T + self.bias.data
        self.saved = x
        return x @ self.weight.data.T + self.bias.data

    def backward(self, dout):
        x = self.saved
        dw, db = dout.T @ x, dout.sum(axis=0)  # (D, D), (D,)
        if self.bug == "transposed weight grad":
            dw = dw.T
        if self.bug == "wrong sign in one element":
            dw[1, 0] = -dw[1, 0]
        if self.bug == "overwrites grad":
            self.weight.grad[...] = dw
        else:
            self.weight.grad += dw
        if self.bug != "missing bias grad":
            self.bias.grad += db
        return dout @ self.weight.data


class UserBatchNorm(nn.Module):
    """Batch norm over the batch of an (N, C) input, written by hand."""

    def __init__(self, c: int = 3, ignore_mean_term: bool = False):
        super().__init__()
        r = np.random.default_rng(1)
        self.weight = Parameter(r.uniform(0.5, 1.5, c))
        self.bias = Parameter(r.standard_normal(c))
        self.register_buffer("running_mean", r.standard_normal(c))
        self.register_buffer("running_var", r.uniform(0.5, 2.0, c))
        self.ignore_mean_term = ignore_mean_term

    def forward(self, x):
        if self.training:
            mean, var = x.mean(axis=0), x.var(axis=0)
            self.running_mean[...] = 0.9 * self.running_mean + 0.1 * mean
            self.running_var[...] = 0.9 * self.running_var + 0.1 * var
        else:
            mean, var = self.running_mean, self.running_var
        invstd = 1.0 / np.sqrt(var + 1e-5)
        xhat = (x - mean) * invstd
        self.saved = (xhat, invstd)
        return xhat * self.weight.data + self.bias.data

    def backward(self, dout):
        xhat, invstd = self.saved
        self.weight.grad += (dout * xhat).sum(axis=0)
        self.bias.grad += dout.sum(axis=0)
        dxhat = dout * self.weight.data
        if not self.training:
            return dxhat * invstd
        mean_term = 0.0 if self.ignore_mean_term else dxhat.mean(axis=0)
        return invstd * (dxhat - mean_term - xhat * (dxhat * xhat).mean(axis=0))


@pytest.fixture
def x(rng):
    return rng.standard_normal((4, 3))


def test_correct_layers_pass(x):
    report = check_module(Dense(), x)
    assert isinstance(report, ModuleReport) and report.passed
    assert [r.name for r in report["train"].inputs] == ["x", "weight", "bias"]
    assert ".grad accumulates" in report.checks
    report = check_module(UserBatchNorm(), x)
    assert list(report.reports) == ["train", "eval"]  # batch norm differs between the modes
    check_module(Dense(), x, fast=True)
    check_module(UserBatchNorm(), x, fast=True)


@pytest.mark.parametrize("fast", [False, True])
@pytest.mark.parametrize(
    "bug, match",
    [
        ("missing bias grad", r"of 'bias' is wrong.*\n(.*\n)*'bias'.grad stayed all zeros"),
        ("transposed weight grad", "gradient of 'weight' is wrong"),
        ("wrong sign in one element", "gradient of 'weight' is wrong"),
        ("overwrites grad", "backward must add to 'weight'.grad .* overwrote it"),
        ("mutates input", r"Dense.forward modified its input x in place"),
    ],
)  # fmt: skip
def test_buggy_dense_layers_are_caught(x, bug, match, fast):
    with pytest.raises(GradcheckError, match=match) as info:
        check_module(Dense(bug=bug), x, fast=fast)
    assert str(info.value).startswith("check_module (Dense in train mode")


def test_wrong_sign_in_one_element_is_pinpointed(x):
    with pytest.raises(GradcheckError) as info:
        check_module(Dense(bug="wrong sign in one element"), x)
    first = str(info.value).splitlines()[0]
    assert "gradient of 'weight' is wrong at index (1, 0)" in first
    assert "1 of 9 elements of 'weight' fail" in first
    row = info.value.report["weight"]
    assert row.worst_analytic == pytest.approx(-row.worst_numeric, rel=1e-6)


def test_a_parameter_inside_a_container_is_named_by_its_dotted_name(x):
    model = nn.Sequential(Dense(), Dense(bug="wrong sign in one element"))
    with pytest.raises(GradcheckError) as info:
        check_module(model, x)
    first = str(info.value).splitlines()[0]
    assert first.startswith("check_module (Sequential in train mode; full mode): gradient of "
                            "'1.weight' is wrong at index (1, 0): analytic ")  # fmt: skip
    assert "relative error 2 " in first  # a flipped sign: |a - n| / max(|a|, |n|) = 2
    rows = {r.name: r.passed for r in info.value.report.inputs}
    assert rows == {"x": True, "0.weight": True, "0.bias": True, "1.weight": False,
                    "1.bias": True}  # fmt: skip


def test_x_drawn_with_the_checks_seed_does_not_hide_a_transposed_gradient():
    """With dout equal to x, ``dout.T @ x`` is symmetric and its transpose would pass: the
    checker's upstream gradient must not be ``default_rng(seed).standard_normal``."""
    x = np.random.default_rng(0).standard_normal((4, 3))  # what a test might well write
    for fast in (False, True):
        with pytest.raises(GradcheckError, match="gradient of 'weight' is wrong"):
            check_module(Dense(bug="transposed weight grad"), x, seed=0, fast=fast)


def test_batch_norm_ignoring_the_mean_term_is_caught_in_train_mode(x):
    with pytest.raises(GradcheckError, match=r"BatchNorm in train mode.*gradient of 'x' is wrong"):
        check_module(UserBatchNorm(ignore_mean_term=True), x)
    # the mean term only exists in train mode: eval mode alone cannot see the bug, which is
    # why check_module checks both modes when they differ
    check_module(UserBatchNorm(ignore_mean_term=True), x, modes="eval")


def _product_forward(x, w):
    """The elementwise product op the check_op tests use: ``x * w``, its cache (x, w)."""
    return x * w, (x, w)


def _product_backward(dout, cache):
    x, w = cache
    return dout * w, dout * x


def test_the_same_bugs_through_check_op(rng):
    forward, backward = _product_forward, _product_backward

    def wrong_order(dout, cache):
        return backward(dout, cache)[::-1]

    def mutating_forward(x, w):
        x *= w
        return x.copy(), (x / w, w)

    def one_sign(dout, cache):
        dx, dw = backward(dout, cache)
        dw[2] = -dw[2]
        return dx, dw

    inputs = {"x": rng.standard_normal(5), "w": rng.standard_normal(5)}
    check_op(forward, backward, inputs)
    for fast in (False, True):
        with pytest.raises(GradcheckError, match="^check_op .*gradient of '[xw]' is wrong"):
            check_op(forward, wrong_order, inputs, fast=fast)
        with pytest.raises(GradcheckError, match="gradient of 'w' is wrong"):
            check_op(forward, one_sign, inputs, fast=fast)
        with pytest.raises(GradcheckError, match="forward modified its input 'x' in place"):
            check_op(mutating_forward, backward, inputs, fast=fast)
        with pytest.raises(GradcheckError, match="no gradient for 'w'"):
            check_op(forward, lambda dout, cache: backward(dout, cache)[0], inputs, fast=fast)


# ------------------------------------------------------------------------------------------
# the library's own layers, and the module-level properties


def test_library_layers_pass_in_float32_through_a_float64_copy(rng):
    conv = nn.Conv2d(2, 4, 3, padding=1, groups=2, rng=0)  # float32
    w0 = conv.weight.data.copy()
    x = rng.standard_normal((2, 2, 4, 4)).astype(np.float32)
    x0 = x.copy()
    report = check_module(conv, x)
    assert list(report.reports) == ["train"]  # a convolution is the same in both modes
    np.testing.assert_array_equal(conv.weight.data, w0)  # the module itself is untouched
    np.testing.assert_array_equal(x, x0)
    assert conv.weight.dtype == np.float32 and not np.any(conv.weight.grad)
    bn = nn.BatchNorm2d(3)
    bn.running_mean[...] = rng.standard_normal(3)
    report = check_module(bn, rng.standard_normal((2, 3, 2, 2)).astype(np.float32))
    assert list(report.reports) == ["train", "eval"]
    assert [r.name for r in report["eval"].inputs] == ["x", "weight", "bias"]
    np.testing.assert_array_equal(bn.num_batches_tracked, 0)


def test_a_model_with_dropout_is_checked_in_both_modes(rng):
    """Each evaluation starts from the same generator state, so dropout keeps one mask."""
    model = nn.Sequential(nn.Linear(4, 3, rng=0), nn.Dropout(0.5, rng=1), nn.Linear(3, 2, rng=2))
    report = check_module(model, rng.standard_normal((5, 4)))
    assert list(report.reports) == ["train", "eval"]
    assert [r.name for r in report["train"].inputs] == [
        "x", "0.weight", "0.bias", "2.weight", "2.bias"
    ]  # fmt: skip
    report = check_module(model.eval(), rng.standard_normal((5, 4)), modes=("eval",))
    assert list(report.reports) == ["eval"]


def test_params_selects_and_frozen_parameters_are_skipped(rng):
    model = nn.Sequential(nn.Linear(4, 3, rng=0), nn.Linear(3, 2, rng=2))
    x = rng.standard_normal((2, 4))
    report = check_module(model, x, params=["1.bias"], input_grad=False)
    assert [r.name for r in report["train"].inputs] == ["1.bias"]
    model[0].weight.requires_grad = False
    report = check_module(model, x)
    assert "0.weight" not in [r.name for r in report["train"].inputs]
    with pytest.raises(ValueError, match="check_module: no parameter named '2.weight'"):
        check_module(model, x, params=["2.weight"])


class NoisyLayer(nn.Module):
    """Draws from NumPy's global generator: not reproducible from the module's state."""

    def forward(self, x):
        return x * np.random.random(x.shape)

    def backward(self, dout):
        raise AssertionError("never reached")


class WritesDout(nn.Module):
    def forward(self, x):
        return 2 * x

    def backward(self, dout):
        dout *= 2  # in place: the caller's array
        return dout


class ReturnsNone(nn.Module):
    def forward(self, x):
        return 2 * x

    def backward(self, dout):
        return None


class LeavesGradAfterZeroGrad(Dense):
    def zero_grad(self):
        self.weight.zero_grad()  # forgets the bias


def test_module_contract_violations_are_caught(x):
    with pytest.raises(GradcheckError, match="two forwards from the same state .* differ"):
        check_module(NoisyLayer(), x)
    with pytest.raises(GradcheckError, match="WritesDout.backward modified dout in place"):
        check_module(WritesDout(), x)
    with pytest.raises(GradcheckError, match="must return dx of shape .* input_grad=False"):
        check_module(ReturnsNone(), x)
    with pytest.raises(ValueError, match="nothing to check"):
        check_module(ReturnsNone(), x, input_grad=False)
    with pytest.raises(GradcheckError, match=r"zero_grad\(\) did not clear 'bias'.grad"):
        check_module(LeavesGradAfterZeroGrad(), x)
    check_module(LeavesGradAfterZeroGrad(), x, accumulate=False)


def test_check_module_bad_arguments(x):
    cases = [
        (dict(module="layer"), TypeError, "module must be an npmobilenet.nn.Module, got str"),
        (dict(x=[1.0]), TypeError, "x must be a floating-point numpy array, got list"),
        (dict(dout=np.ones(2)), ValueError, r"dout has shape \(2,\) but the output has shape"),
        (dict(params="weight"), TypeError, "params must be True, False or a list"),
        (dict(modes="test"), ValueError, "modes must be 'train', 'eval' or both"),
        (dict(accumulate=1), TypeError, "accumulate must be True or False"),
        (dict(rtol=-1.0), ValueError, "rtol must be finite"),
    ]
    for kwargs, error, match in cases:
        args = {"module": Dense(), "x": x, **kwargs}
        with pytest.raises(error, match=f"check_module: {match}"):
            check_module(args.pop("module"), args.pop("x"), **args)


# ------------------------------------------------------------------------------------------
# bugs that only show on a layer's second call, in what its backward writes, or in a layout


class Scaler(nn.Module):
    """``y = x * weight`` over the last axis: x (N, D), weight (D,), with one bug by name."""

    def __init__(self, d: int = 3, bug: str | None = None):
        super().__init__()
        self.weight = Parameter(np.random.default_rng(0).uniform(0.5, 2.0, d))
        self.bug = bug
        self.scratch = np.zeros(d)
        self.slope = None
        self.dx = None

    def forward(self, x):
        self.saved = x
        return np.where(x > 0, x, 0.5 * x) * self.weight.data

    def backward(self, dout):
        x = self.saved
        if self.slope is None or self.bug != "keeps the first call's slope":
            self.slope = np.where(x > 0, 1.0, 0.5)  # with the bug: stale from the second call
        slope = self.slope
        dw = (dout * slope * x).sum(axis=0)
        if self.bug == "never resets its scratch":
            self.scratch += dw  # the first call is right, the second adds both calls' dw
            dw = self.scratch
        if self.bug == "wrong for a non-contiguous x" and not x.flags.c_contiguous:
            dw = dw * 1.01
        self.weight.grad += dw
        dx = dout * slope * self.weight.data
        if self.bug == "writes over its cached x":
            np.multiply(x, 0.0, out=x)  # frees "memory" that belongs to the caller
        if self.bug == "returns a buffer it reuses":
            self.dx = np.empty_like(dx) if self.dx is None else self.dx
            self.dx[...] = dx
            return self.dx
        return dx


@pytest.mark.parametrize("fast", [False, True])
@pytest.mark.parametrize(
    "bug, match",
    [
        ("never resets its scratch",
         r"second forward and backward on the same module; fast mode\): gradient of 'weight'"),
        ("keeps the first call's slope",
         r"second forward and backward on the same module; fast mode\): gradient of"),
        ("writes over its cached x", r"Scaler.backward modified its input x in place"),
        ("returns a buffer it reuses", "the dx a backward returned changed"),
    ],
)  # fmt: skip
def test_bugs_of_a_second_call_and_of_what_backward_writes_are_caught(bug, match, fast):
    """Each layer's first forward and backward is right; training calls them step after step."""
    x = np.random.default_rng(3).standard_normal((4, 3))
    check_module(Scaler(), x, fast=fast)
    with pytest.raises(GradcheckError, match=match):
        check_module(Scaler(bug=bug), x, fast=fast)


def test_a_second_call_is_checked_with_a_dropout_layer_and_batch_norm(rng):
    """The second call starts from the state the first left (the generator moved on, the
    running statistics updated): the library's own layers pass."""
    model = nn.Sequential(nn.Linear(4, 3, rng=0), nn.Dropout(0.5, rng=1), nn.Linear(3, 2, rng=2))
    report = check_module(model, rng.standard_normal((5, 4)))
    assert "a second forward and backward on the same module" in report.checks
    check_module(UserBatchNorm(), rng.standard_normal((4, 3)))
    bn = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, rng=0), nn.BatchNorm2d(3), nn.ReLU())
    check_module(bn, rng.standard_normal((2, 2, 3, 3)), fast=True, accumulate=False)


@pytest.mark.parametrize("fast", [False, True])
def test_a_layer_wrong_only_for_a_non_contiguous_x_is_caught_when_given_one(fast):
    """A transposed, reversed or sliced x reaches the forward laid out as the caller's."""
    base = np.random.default_rng(4).standard_normal((6, 6))
    layer = Scaler(bug="wrong for a non-contiguous x")
    check_module(layer, np.ascontiguousarray(base.T[:, ::2]))  # the contiguous path is right
    for x in (base.T[:, ::2], base[::2].T[::-1], base.astype(np.float32).T[:, ::2]):
        assert not x.flags.c_contiguous
        with pytest.raises(GradcheckError, match="gradient of 'weight' is wrong"):
            check_module(layer, x, fast=fast)


@pytest.mark.parametrize("fast", [False, True])
def test_check_op_and_check_grad_keep_a_non_contiguous_layout(fast):
    forward = _product_forward

    def backward(dout, cache):
        x, w = cache
        dw = dout * x if x.flags.c_contiguous else dout * x * 1.01
        return dout * w, dw

    def loss(x):
        return float(np.sum(x**2 if x.flags.c_contiguous else 1.01 * x**2))

    base = np.random.default_rng(5).standard_normal((4, 6))
    contiguous = np.ascontiguousarray(base.T)
    check_op(forward, backward, {"x": contiguous, "w": contiguous + 1})
    check_grad(loss, {"x": contiguous}, {"x": 2 * contiguous})
    for x in (base.T, base[:, ::-2]):
        with pytest.raises(GradcheckError, match="gradient of 'w' is wrong"):
            check_op(forward, backward, {"x": x, "w": np.ones_like(x)}, fast=fast)
        with pytest.raises(GradcheckError, match="gradient of 'x' is wrong"):
            check_grad(loss, {"x": x}, {"x": 2 * x}, fast=fast)


def test_check_op_catches_a_backward_writing_to_x_or_dout(rng):
    forward = _product_forward

    def clobbers_x(dout, cache):
        x, w = cache
        dw = dout * x
        x[...] = 0.0  # the caller keeps x for its own backward
        return dout * w, dw

    def clobbers_dout(dout, cache):
        x, w = cache
        dout *= w  # in place: the caller's array
        return dout, dout / w * x

    inputs = {"x": rng.standard_normal(5), "w": rng.standard_normal(5)}
    with pytest.raises(GradcheckError, match="check_op: backward modified its input 'x' in place"):
        check_op(forward, clobbers_x, inputs)
    with pytest.raises(GradcheckError, match="check_op: backward modified its input 'dout'"):
        check_op(forward, clobbers_dout, inputs)


class EvalScaled(Dense):
    """Right in train mode; in eval mode (same forward) both gradients come out 1.5 times."""

    def backward(self, dout):
        dx = super().backward(dout * (1.0 if self.training else 1.5))
        return dx


def test_a_backward_wrong_only_in_the_other_mode_is_caught(x):
    """The forward is the same in both modes, the backward is not: both modes are checked."""
    check_module(Dense(), x)  # the same layer without the bug: one mode, passes
    assert list(check_module(Dense(), x).reports) == ["train"]
    for layer in (EvalScaled(), EvalScaled().eval()):
        with pytest.raises(GradcheckError, match="EvalScaled in eval mode; full mode"):
            check_module(layer, x)


def test_a_check_that_compares_nothing_is_an_error_not_a_pass(x):
    """An empty output or an all-zero dout makes every gradient zero whatever the backward
    computes: such a check is refused, never reported as passed."""
    bad = EvalScaled().eval()
    with pytest.raises(ValueError, match=r"check_module: nothing to check: the output is empty"):
        check_module(bad, np.zeros((0, 3)))
    with pytest.raises(ValueError, match="check_module: nothing to check: dout is all zeros"):
        check_module(bad, x, dout=np.zeros((4, 3)))
    with pytest.raises(ValueError, match=r"check_grad: nothing to check: every input is empty"):
        check_grad(lambda x: 0.0, {"x": np.zeros(0)}, {"x": np.zeros(0)})

    forward = _product_forward

    def wrong(dout, cache):
        return dout, dout  # both gradients wrong, but of nothing

    with pytest.raises(ValueError, match="check_op: nothing to check: the forward's output is"):
        check_op(forward, wrong, {"x": np.zeros((0, 2)), "w": np.ones(2)})


class Dense32(nn.Module):
    """``y = x @ weight.T`` in the dtype of x and weight, with a bug of its float32 path only."""

    def __init__(self, bug: str | None = None):
        super().__init__()
        self.weight = Parameter(np.random.default_rng(0).standard_normal((3, 3)).astype(np.float32))
        self.bug = bug

    def forward(self, x):
        self.saved = x
        out = x @ self.weight.data.T
        return out.astype(np.float64) if self.bug == "float64 output" else out

    def backward(self, dout):
        dw = dout.T @ self.saved
        if self.bug == "float32 weight grad 1% off" and dout.dtype == np.float32:
            dw = dw * np.float32(1.01)  # e.g. a float32-only kernel with a wrong constant
        self.weight.grad += dw.astype(self.weight.grad.dtype)
        dx = dout @ self.weight.data
        return dx.astype(np.float64) if self.bug == "float64 dx" else dx


@pytest.mark.parametrize("fast", [False, True])
@pytest.mark.parametrize(
    "bug, match",
    [
        ("float32 weight grad 1% off",
         r"run in float32, the gradient of 'weight' is .* but .* in float64"),
        ("float64 output", "run in float32, the output is array of shape .* dtype float64"),
        ("float64 dx", "run in float32, the dx is array of shape .* dtype float64"),
    ],
)  # fmt: skip
def test_a_float32_layer_is_also_run_in_float32(bug, match, fast):
    """The numerical check runs on a float64 copy; the float32 path the user's layer takes on
    the float32 x it was given is run too, and held to the checked float64 gradients."""
    x = np.random.default_rng(6).standard_normal((4, 3)).astype(np.float32)
    report = check_module(Dense32(), x, fast=fast)
    assert "the float32 forward and backward agree with float64" in report.checks
    check_module(Dense32(bug=bug), x.astype(np.float64), fast=fast)  # float64 x: not run
    with pytest.raises(GradcheckError, match=match):
        check_module(Dense32(bug=bug), x, fast=fast)


def test_check_op_runs_float32_inputs_in_float32_too(rng):
    forward, backward = _product_forward, _product_backward

    def off_in_float32(dout, cache):
        dx, dw = backward(dout, cache)
        return dx, (dw * np.float32(1.01) if dw.dtype == np.float32 else dw)

    def float64_grads(dout, cache):
        return tuple(g.astype(np.float64) for g in backward(dout, cache))

    x = rng.standard_normal(6).astype(np.float32)
    inputs = {"x": x, "w": x[::-1] + np.float32(1)}
    check_op(forward, backward, inputs)
    for fast in (False, True):
        with pytest.raises(GradcheckError, match="check_op: run in float32, the gradient of 'w'"):
            check_op(forward, off_in_float32, inputs, fast=fast)
        with pytest.raises(GradcheckError, match="gradient of 'x' must be .* dtype float32"):
            check_op(forward, float64_grads, inputs, fast=fast)
