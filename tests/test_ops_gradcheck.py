"""Every op of ``npmobilenet.ops`` passes a float64 numerical gradient check.

Each forward/backward pair goes through :func:`npmobilenet.gradcheck.check_op` (full mode: every
element, central differences, random upstream gradient). Shapes are tiny because full mode costs
two forward calls per input element. Inputs of piecewise ops stay away from their kinks (ReLU at
0, ReLU6 at 0 and 6, ties in max pooling), where a central difference straddles two pieces.
"""

from __future__ import annotations

import numpy as np
import pytest

from npmobilenet import ops
from npmobilenet.gradcheck import GradcheckError, check_grad, check_op

pytestmark = pytest.mark.kernels


def away_from(rng, shape, kinks, gap=0.1, low=-1.0, high=7.0):
    """Uniform values in [low, high] at least ``gap`` away from every kink."""
    x = rng.uniform(low, high, size=shape)
    for k in kinks:
        near = np.abs(x - k) < gap
        x[near] = k + np.where(x[near] < k, -gap, gap) * rng.uniform(1.0, 2.0, near.sum())
    return x


def distinct(rng, shape, spacing=0.01):
    """Values spaced at least ``spacing`` apart, so max pooling has no ties."""
    n = int(np.prod(shape))
    return (rng.permutation(n) * spacing - n * spacing / 2).reshape(shape)


# ------------------------------------------------------------------------------------------
# convolution

# (x shape, weight shape, with bias, config)
CONV_CASES = {
    "groups1": ((2, 3, 5, 5), (4, 3, 3, 3), True, dict(stride=1, padding=1)),
    "groups2-stride2": ((1, 4, 5, 6), (6, 2, 3, 3), True, dict(stride=2, padding=1, groups=2)),
    "depthwise": ((2, 3, 5, 5), (3, 1, 3, 3), True, dict(padding=1, groups=3)),
    "depthwise-stride2": ((1, 4, 7, 6), (4, 1, 3, 3), False, dict(stride=2, padding=1, groups=4)),
    "depth-multiplier": ((1, 2, 5, 5), (6, 1, 3, 3), False, dict(stride=2, groups=2)),
    "pointwise": ((2, 4, 3, 3), (3, 4, 1, 1), True, dict()),
    "stride-dilation-pairs": (
        (1, 2, 7, 6),
        (3, 2, 3, 2),
        False,
        dict(stride=(2, 1), padding=(1, 2), dilation=(2, 1)),
    ),
    "same-even-kernel": ((1, 2, 5, 6), (3, 2, 2, 4), True, dict(padding="same")),
    "same-dilated-depthwise": (
        (1, 2, 6, 5), (2, 1, 2, 2), False, dict(padding="same", dilation=3, groups=2)
    ),
    "valid": ((1, 3, 4, 5), (2, 3, 3, 2), True, dict(padding="valid")),
    "unbatched": ((2, 4, 4), (3, 2, 3, 3), True, dict(padding=1, groups=1)),
}  # fmt: skip


@pytest.mark.parametrize("method", ["direct", "im2col"])
@pytest.mark.parametrize("case", list(CONV_CASES))
def test_conv2d(rng, case, method):
    xs, ws, with_bias, config = CONV_CASES[case]
    inputs = {
        "x": rng.standard_normal(xs),
        "weight": rng.standard_normal(ws),
        "bias": rng.standard_normal(ws[0]) if with_bias else None,
    }
    report = check_op(
        ops.conv2d_forward, ops.conv2d_backward, inputs, config={**config, "method": method}
    )
    assert [r.name for r in report.inputs] == ["x", "weight"] + ["bias"] * with_bias


def test_conv2d_wrong_backward_fails(rng):
    """A dweight off by 1% must be caught, and the message must say where."""

    def bad_backward(dout, cache):
        dx, dweight, dbias = ops.conv2d_backward(dout, cache)
        return dx, dweight * 1.01, dbias

    inputs = {
        "x": rng.standard_normal((1, 2, 4, 4)),
        "weight": rng.standard_normal((2, 1, 3, 3)),
        "bias": rng.standard_normal(2),
    }
    config = dict(padding=1, groups=2)
    with pytest.raises(GradcheckError, match=r"gradient of 'weight' is wrong at index \(") as e:
        check_op(ops.conv2d_forward, bad_backward, inputs, config=config)
    assert e.value.report["x"].passed and e.value.report["bias"].passed
    with pytest.raises(GradcheckError, match="gradient of 'weight' is wrong"):
        check_op(ops.conv2d_forward, bad_backward, inputs, config=config, fast=True)


# ------------------------------------------------------------------------------------------
# batch norm


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", [(4, 3), (2, 3, 2, 3)])
def test_batch_norm(rng, shape, training):
    C = shape[1]
    inputs = {
        "x": rng.standard_normal(shape) * 2 + 1,
        "weight": rng.uniform(0.5, 1.5, C),
        "bias": rng.standard_normal(C),
    }
    running = {"running_mean": rng.standard_normal(C), "running_var": rng.uniform(0.5, 2.0, C)}
    before = {k: v.copy() for k, v in {**inputs, **running}.items()}
    report = check_op(
        ops.batch_norm_forward,
        ops.batch_norm_backward,
        inputs,
        config=dict(**running, training=training, momentum=0.1, eps=1e-5),
    )
    assert [r.name for r in report.inputs] == ["x", "weight", "bias"]
    for k, v in {**inputs, **running}.items():  # the caller's running statistics are untouched
        np.testing.assert_array_equal(v, before[k])


# ------------------------------------------------------------------------------------------
# activations


def test_relu(rng):
    x = away_from(rng, (2, 3, 4), kinks=[0.0], low=-2, high=2)
    check_op(ops.relu_forward, ops.relu_backward, {"x": x})


def test_relu6(rng):
    x = away_from(rng, (2, 3, 5), kinks=[0.0, 6.0], low=-2, high=8)
    assert (x < 0).any() and ((x > 0) & (x < 6)).any() and (x > 6).any()
    check_op(ops.relu6_forward, ops.relu6_backward, {"x": x})


# ------------------------------------------------------------------------------------------
# pooling

MAX_POOL_CASES = [
    dict(kernel_size=2),
    dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=(2, 3), stride=(1, 2)),
]

AVG_POOL_CASES = [
    dict(kernel_size=2),
    dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=3, stride=2, padding=1, count_include_pad=False),
    dict(kernel_size=2, stride=2, ceil_mode=True),
    dict(kernel_size=(3, 2), stride=(2, 1), padding=(1, 0), ceil_mode=True,
         count_include_pad=False),
]  # fmt: skip


@pytest.mark.parametrize("config", MAX_POOL_CASES)
def test_max_pool2d(rng, config):
    x = distinct(rng, (2, 2, 5, 5))
    check_op(ops.max_pool2d_forward, ops.max_pool2d_backward, {"x": x}, config=config)


@pytest.mark.parametrize("config", AVG_POOL_CASES)
def test_avg_pool2d(rng, config):
    x = rng.standard_normal((2, 2, 5, 5))
    check_op(ops.avg_pool2d_forward, ops.avg_pool2d_backward, {"x": x}, config=config)


@pytest.mark.parametrize("output_size", [1, (1, 1), (2, 3), (3, 5)])
def test_adaptive_avg_pool2d(rng, output_size):
    x = rng.standard_normal((2, 2, 5, 7))
    check_op(
        ops.adaptive_avg_pool2d_forward,
        ops.adaptive_avg_pool2d_backward,
        {"x": x},
        config=dict(output_size=output_size),
    )


# ------------------------------------------------------------------------------------------
# linear


@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("x_shape", [(3, 4), (2, 3, 4)])
def test_linear(rng, x_shape, with_bias):
    inputs = {
        "x": rng.standard_normal(x_shape),
        "weight": rng.standard_normal((5, 4)),
        "bias": rng.standard_normal(5) if with_bias else None,
    }
    check_op(ops.linear_forward, ops.linear_backward, inputs)


# ------------------------------------------------------------------------------------------
# softmax and cross-entropy


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("target_kind", ["class", "probability"])
def test_cross_entropy(rng, target_kind, label_smoothing, reduction):
    N, C = 4, 5
    if target_kind == "class":
        target = rng.integers(0, C, N)
    else:
        target = rng.dirichlet(np.ones(C), N)
    report = check_op(
        ops.cross_entropy_forward,
        ops.cross_entropy_backward,
        {"logits": rng.standard_normal((N, C)) * 2},
        config=dict(target=target, reduction=reduction, label_smoothing=label_smoothing),
    )
    assert [r.name for r in report.inputs] == ["logits"]


@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_softmax_and_log_softmax_through_a_weighted_sum(rng, axis):
    """f(x) = sum(W * softmax(x)); with s = softmax(x): df/dx = s * (W - sum(W * s, axis)).

    For log_softmax, f(x) = sum(W * log_softmax(x)): df/dx = W - s * sum(W, axis).
    The expected gradients are derived here from numpy's exp, not from the library.
    """
    x = rng.standard_normal((3, 4, 2)) * 3 + 50.0  # a large common offset: stability matters
    W = rng.standard_normal(x.shape)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    s = e / e.sum(axis=axis, keepdims=True)
    check_grad(
        lambda x: np.sum(W * ops.softmax(x, axis=axis)),
        {"x": x},
        {"x": s * (W - np.sum(W * s, axis=axis, keepdims=True))},
    )
    check_grad(
        lambda x: np.sum(W * ops.log_softmax(x, axis=axis)),
        {"x": x},
        {"x": W - s * np.sum(W, axis=axis, keepdims=True)},
    )


# ------------------------------------------------------------------------------------------
# dropout


@pytest.mark.parametrize("training", [True, False])
def test_dropout(rng, training):
    """check_op gives every evaluation a fresh copy of the generator: the same mask each time."""
    x = rng.standard_normal((3, 4, 2))
    gen = np.random.default_rng(5)
    check_op(
        ops.dropout_forward,
        ops.dropout_backward,
        {"x": x},
        config=dict(p=0.4, training=training, rng=gen),
    )


# ------------------------------------------------------------------------------------------
# a chain of ops: the backward passes compose


def small_net(params, x, target):
    """conv -> batch norm (train) -> relu6 -> depthwise conv (stride 2) -> max pool ->
    adaptive avg pool -> linear -> cross-entropy. Returns (loss, caches)."""
    p = params
    h, c1 = ops.conv2d_forward(x, p["w1"], p["b1"], padding=1)
    rm, rv = np.zeros(4), np.ones(4)  # fresh running stats every call: nothing drifts
    h, c2 = ops.batch_norm_forward(h, p["gamma"], p["beta"], rm, rv, training=True)
    h, c3 = ops.relu6_forward(h)
    h, c4 = ops.conv2d_forward(h, p["w2"], None, stride=2, padding=1, groups=4)
    h, c5 = ops.max_pool2d_forward(h, 2)
    h, c6 = ops.adaptive_avg_pool2d_forward(h, 1)
    logits, c7 = ops.linear_forward(h.reshape(h.shape[0], -1), p["fc_w"], p["fc_b"])
    loss, c8 = ops.cross_entropy_forward(logits, target)
    return loss, (c1, c2, c3, c4, c5, c6, c7, c8, h.shape)


def small_net_backward(caches):
    """Every op's backward in reverse order, as a model would chain them."""
    c1, c2, c3, c4, c5, c6, c7, c8, pooled_shape = caches
    dlogits = ops.cross_entropy_backward(np.float64(1.0), c8)
    dh, dfc_w, dfc_b = ops.linear_backward(dlogits, c7)
    dh = ops.adaptive_avg_pool2d_backward(dh.reshape(pooled_shape), c6)
    dh = ops.max_pool2d_backward(dh, c5)
    dh, dw2, _ = ops.conv2d_backward(dh, c4)
    dh = ops.relu6_backward(dh, c3)
    dh, dgamma, dbeta = ops.batch_norm_backward(dh, c2)
    dx, dw1, db1 = ops.conv2d_backward(dh, c1)
    grads = dict(w1=dw1, b1=db1, gamma=dgamma, beta=dbeta, w2=dw2, fc_w=dfc_w, fc_b=dfc_b)
    return dx, grads


def test_a_chain_of_ops(rng):
    params = {
        "w1": rng.standard_normal((4, 2, 3, 3)) * 0.5,
        "b1": rng.standard_normal(4),
        "gamma": rng.uniform(0.5, 1.5, 4),
        "beta": rng.standard_normal(4),
        "w2": rng.standard_normal((4, 1, 3, 3)),
        "fc_w": rng.standard_normal((3, 4)),
        "fc_b": rng.standard_normal(3),
    }
    x, target = rng.standard_normal((2, 2, 8, 8)), np.array([0, 2])
    loss, caches = small_net(params, x, target)
    dx, grads = small_net_backward(caches)

    def fn(x, **params):
        return small_net(params, x, target)[0]

    inputs, analytic = {"x": x, **params}, {"x": dx, **grads}
    check_grad(fn, inputs, analytic)
    report = check_grad(fn, inputs, analytic, fast=True)
    assert report.evaluations == 2 * 2 * (len(inputs) + 1) + 1
    grads["w2"] = grads["w2"] * 1.01
    with pytest.raises(GradcheckError, match="gradient of 'w2' is wrong"):
        check_grad(fn, inputs, {"x": dx, **grads}, fast=True)


# ------------------------------------------------------------------------------------------
# the whole model, in fast mode


@pytest.mark.slow
def test_whole_mobilenet_fast_mode():
    """Every parameter of a (narrow) MobileNetV1 in one fast check: about 350 forward passes.

    A deep ReLU network's loss has kinks everywhere at the 1e-6 scale (the central difference
    straddles some), so eps is 1e-8; see check_grad's docstring. If this fails, first rerun
    with a smaller eps: a kink artefact moves, a wrong gradient stays.
    """
    from npmobilenet.models.mobilenet import MobileNetV1

    model = MobileNetV1(alpha=0.25, num_classes=5, dtype=np.float64, seed=0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 64, 64))
    g = rng.standard_normal((2, 5))
    params = dict(model.named_parameters())
    model.zero_grad()
    model.forward(x)
    dx = model.backward(g)
    inputs = {"x": x, **{k: p.data.copy() for k, p in params.items()}}
    analytic = {"x": dx, **{k: p.grad.copy() for k, p in params.items()}}

    def loss(x, **values):
        for k, v in values.items():
            params[k].data[...] = v
        return np.sum(model.forward(x) * g)

    settings = dict(fast=True, eps=1e-8, rtol=1e-4, atol=1e-5)
    report = check_grad(loss, inputs, analytic, **settings)
    assert len(report.inputs) == len(params) + 2  # x, every parameter, the joint directions
    name = "depthwise_sep_conv6.2.dwconv.weight"
    analytic[name] = analytic[name] * 1.01
    with pytest.raises(GradcheckError, match=f"gradient of '{name}' is wrong"):
        check_grad(loss, inputs, analytic, **settings, directions=1)
