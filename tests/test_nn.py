"""npmobilenet.nn: modules as thin shells over the ops, checked against torch.nn modules with the
same weights (forward, dx, every parameter gradient, buffers), plus the Module machinery:
registration and naming, gradient accumulation, train/eval, state_dict and load_state_dict."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import TOL

from npmobilenet import nn


def _t(torch, a):
    return torch.from_numpy(np.ascontiguousarray(a))


def _copy_into_torch(torch, ours, ref):
    """Load our state_dict into the torch module (same key names)."""
    ref.load_state_dict({k: _t(torch, v) for k, v in ours.state_dict().items()})


# (our layer, the equivalent torch layer, input shape); built per dtype.
LAYERS = {
    "conv_bias": (
        lambda dt: nn.Conv2d(4, 6, 3, stride=2, padding=1, dtype=dt, rng=0),
        lambda tnn: tnn.Conv2d(4, 6, 3, stride=2, padding=1),
        (2, 4, 7, 6),
    ),
    "conv_depthwise": (
        lambda dt: nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False, dtype=dt, rng=1),
        lambda tnn: tnn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False),
        (2, 4, 5, 5),
    ),
    "batchnorm": (
        lambda dt: nn.BatchNorm2d(3, momentum=0.2, dtype=dt),
        lambda tnn: tnn.BatchNorm2d(3, momentum=0.2),
        (4, 3, 5, 5),
    ),
    "relu": (lambda dt: nn.ReLU(), lambda tnn: tnn.ReLU(), (2, 3, 4, 4)),
    "relu6": (lambda dt: nn.ReLU6(), lambda tnn: tnn.ReLU6(), (2, 3, 4, 4)),
    "maxpool": (lambda dt: nn.MaxPool2d(3, 2, 1), lambda tnn: tnn.MaxPool2d(3, 2, 1), (2, 3, 7, 6)),
    "avgpool": (
        lambda dt: nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False),
        lambda tnn: tnn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False),
        (2, 3, 8, 7),
    ),
    "adaptive": (
        lambda dt: nn.AdaptiveAvgPool2d((2, 3)),
        lambda tnn: tnn.AdaptiveAvgPool2d((2, 3)),
        (2, 3, 5, 7),
    ),
    "linear": (lambda dt: nn.Linear(5, 3, dtype=dt, rng=2), lambda tnn: tnn.Linear(5, 3), (4, 5)),
    "flatten": (lambda dt: nn.Flatten(), lambda tnn: tnn.Flatten(), (2, 3, 2, 2)),
    "sequential": (
        lambda dt: nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1, bias=False, dtype=dt, rng=3),
            nn.BatchNorm2d(4, dtype=dt),
            nn.ReLU6(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(4, 2, dtype=dt, rng=4),
        ),
        lambda tnn: tnn.Sequential(
            tnn.Conv2d(3, 4, 3, padding=1, bias=False),
            tnn.BatchNorm2d(4),
            tnn.ReLU6(),
            tnn.AdaptiveAvgPool2d(1),
            tnn.Flatten(),
            tnn.Linear(4, 2),
        ),
        (3, 3, 6, 6),
    ),
}


@pytest.mark.torch
@pytest.mark.kernels
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_layer_matches_torch_forward_backward(torch, rng, kind, dtype):
    make_ours, make_ref, shape = LAYERS[kind]
    ours = make_ours(dtype)
    ref = make_ref(torch.nn).to(torch.float64 if dtype == np.float64 else torch.float32)
    _copy_into_torch(torch, ours, ref)
    x = rng.standard_normal(shape).astype(dtype) * 3
    dout_shape = ours.output_shape(x.shape)
    dout = rng.standard_normal(dout_shape).astype(dtype)

    out = ours.forward(x)
    dx = ours.backward(dout)
    xt = _t(torch, x).requires_grad_(True)
    out_t = ref(xt)
    out_t.backward(_t(torch, dout))

    tol = TOL[dtype]
    assert out.dtype == dtype and dx.dtype == dtype
    assert out.shape == tuple(out_t.shape) == dout_shape  # output_shape is right
    np.testing.assert_allclose(out, out_t.detach().numpy(), **tol)
    np.testing.assert_allclose(dx, xt.grad.numpy(), **tol)
    ref_params = dict(ref.named_parameters())
    assert [n for n, _ in ours.named_parameters()] == list(ref_params)
    for name, p in ours.named_parameters():
        np.testing.assert_allclose(p.grad, ref_params[name].grad.numpy(), **tol, err_msg=name)
    ref_state = ref.state_dict()
    for name, v in ours.state_dict().items():  # running statistics, num_batches_tracked
        np.testing.assert_allclose(v, ref_state[name].numpy(), **tol, err_msg=name)


@pytest.mark.torch
@pytest.mark.kernels
def test_batchnorm_eval_mode_and_cumulative_momentum_match_torch(torch, rng):
    ours = nn.BatchNorm2d(3, momentum=None, dtype=np.float64)
    ref = torch.nn.BatchNorm2d(3, momentum=None).double()
    for _ in range(3):  # momentum None: running stats are the plain average of batch stats
        x = rng.standard_normal((4, 3, 3, 3)) * 2 + 1
        ours.forward(x)
        ref(_t(torch, x))
    for name, v in ours.state_dict().items():
        np.testing.assert_allclose(v, ref.state_dict()[name].numpy(), **TOL[np.float64])
    assert ours.num_batches_tracked.dtype == np.int64 and int(ours.num_batches_tracked) == 3
    ours.eval()
    ref.eval()
    x = rng.standard_normal((2, 3, 3, 3))
    np.testing.assert_allclose(
        ours.forward(x), ref(_t(torch, x)).detach().numpy(), **TOL[np.float64]
    )
    assert int(ours.num_batches_tracked) == 3  # eval mode does not count


@pytest.mark.kernels
def test_dropout_train_scales_kept_and_eval_is_identity(rng):
    d = nn.Dropout(0.25, rng=7)
    x = rng.standard_normal((50, 40)) + 5  # no zeros in x
    out = d.forward(x)
    kept = out != 0
    assert 0.65 < kept.mean() < 0.85
    np.testing.assert_allclose(out[kept], x[kept] / 0.75)
    dx = d.backward(np.ones_like(x))
    np.testing.assert_array_equal(dx != 0, kept)  # the same mask differentiates the forward
    d.eval()
    np.testing.assert_array_equal(d.forward(x), x)
    np.testing.assert_array_equal(d.backward(np.ones_like(x)), np.ones_like(x))


@pytest.mark.kernels
def test_gradients_accumulate_until_zero_grad(rng):
    lin = nn.Linear(4, 3, dtype=np.float64, rng=0)
    x = rng.standard_normal((5, 4))
    dout = rng.standard_normal((5, 3))
    lin.forward(x)
    lin.backward(dout)
    once = lin.weight.grad.copy()
    np.testing.assert_allclose(once, dout.T @ x)  # dW = dout^T x, by hand
    lin.forward(x)
    lin.backward(dout)
    np.testing.assert_allclose(lin.weight.grad, 2 * once)
    np.testing.assert_allclose(lin.bias.grad, 2 * dout.sum(0))
    lin.zero_grad()
    assert not lin.weight.grad.any() and not lin.bias.grad.any()


@pytest.mark.kernels
def test_frozen_parameter_gets_no_gradient(rng):
    lin = nn.Linear(4, 3, dtype=np.float64, rng=0)
    lin.weight.requires_grad = False
    lin.forward(rng.standard_normal((2, 4)))
    lin.backward(np.ones((2, 3)))
    assert not lin.weight.grad.any() and lin.bias.grad.tolist() == [2.0, 2.0, 2.0]


@pytest.mark.kernels
def test_backward_needs_a_fresh_forward(rng):
    seq = nn.Sequential(nn.Linear(4, 3, rng=0), nn.ReLU())
    with pytest.raises(RuntimeError, match=r"ReLU.backward: backward called before forward"):
        seq.backward(np.ones((2, 3), np.float32))
    seq.forward(rng.standard_normal((2, 4)).astype(np.float32))
    seq.backward(np.ones((2, 3), np.float32))
    with pytest.raises(RuntimeError, match="ReLU.backward: backward called twice after one"):
        seq.backward(np.ones((2, 3), np.float32))


def _small_net():
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, bias=False, rng=0), nn.BatchNorm2d(4), nn.ReLU(), nn.Linear(4, 2, rng=1)
    )


@pytest.mark.torch
def test_state_dict_keys_and_order_match_torch(torch):
    tnn = torch.nn
    ref = tnn.Sequential(tnn.Conv2d(3, 4, 3, bias=False), tnn.BatchNorm2d(4), tnn.ReLU(),
                         tnn.Linear(4, 2))  # fmt: skip
    ours = _small_net()
    assert list(ours.state_dict()) == list(ref.state_dict())
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in ref.named_parameters()]
    for k, v in ours.state_dict().items():
        assert v.shape == tuple(ref.state_dict()[k].shape), k
    assert ours.state_dict()["1.num_batches_tracked"].dtype == np.int64


def test_named_parameters_are_the_parameter_objects():
    net = _small_net()
    named = dict(net.named_parameters())
    assert named["0.weight"] is net[0].weight and named["3.bias"] is net[3].bias
    assert list(net.parameters()) == list(named.values())
    assert net.state_dict()["0.weight"] is net[0].weight.data  # shared, as in torch


@pytest.mark.torch
def test_parameters_walk_nested_modules_in_torchs_order(torch):
    def tree(m):  # the same nesting in either library: modules at three depths, siblings after
        return m.Sequential(
            m.Sequential(m.Conv2d(3, 4, 1), m.Sequential(m.BatchNorm2d(4), m.Linear(4, 5))),
            m.Linear(5, 2), m.Sequential(), m.Sequential(m.Linear(2, 3), m.Conv2d(3, 6, 2)),
        )  # fmt: skip

    ours, ref = tree(nn), tree(torch.nn)
    assert [p.data.shape for p in ours.parameters()] == [tuple(p.shape) for p in ref.parameters()]
    assert list(ours.parameters()) == [p for _, p in ours.named_parameters()]
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in ref.named_parameters()]


def test_train_and_eval_reach_every_module():
    net = _small_net()
    assert all(m.training for _, m in net.named_modules())
    assert net.eval() is net and not any(m.training for _, m in net.named_modules())
    net.train()
    assert all(m.training for _, m in net.named_modules())


def test_load_state_dict_round_trip_in_place_with_cast():
    src, dst = _small_net(), _small_net()
    src[0].weight.data[...] = 1.5
    src[1].running_var[...] = 4.0
    src[1].num_batches_tracked[...] = 9
    weight_array = dst[0].weight.data
    state = {k: v.astype(np.float64) if v.dtype.kind == "f" else v
             for k, v in src.state_dict().items()}  # fmt: skip
    assert dst.load_state_dict(state) == ([], [])
    assert dst[0].weight.data is weight_array and weight_array.dtype == np.float32  # in place
    assert (weight_array == 1.5).all() and (dst[1].running_var == 4).all()
    assert int(dst[1].num_batches_tracked) == 9


def test_load_state_dict_reports_every_problem_and_loads_nothing():
    net = _small_net()
    before = {k: v.copy() for k, v in net.state_dict().items()}
    state = {k: np.full_like(v, 7) for k, v in net.state_dict().items()}
    del state["1.bias"]
    state["extra.weight"] = np.zeros(3, np.float32)
    state["3.weight"] = np.zeros((2, 5), np.float32)
    state["1.num_batches_tracked"] = np.array(1.5)
    state["1.running_mean"] = "zeros"
    with pytest.raises(ValueError) as info:
        net.load_state_dict(state)
    msg = str(info.value)
    assert "Sequential.load_state_dict: 5 problem(s), nothing was loaded" in msg
    assert "missing keys: ['1.bias']" in msg and "unexpected keys: ['extra.weight']" in msg
    assert "3.weight: shape (2, 5) in the state, (2, 4) in the model" in msg
    assert "1.num_batches_tracked: dtype float64 cannot be loaded into int64" in msg
    assert "1.running_mean: expected a numpy array, got str 'zeros'" in msg
    for k, v in net.state_dict().items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)


def test_load_state_dict_non_strict_returns_missing_and_unexpected():
    net = _small_net()
    state = {"0.weight": np.ones((4, 3, 3, 3), np.float32), "head.bias": np.zeros(2)}
    result = net.load_state_dict(state, strict=False)
    assert isinstance(result, nn.IncompatibleKeys)
    assert result.unexpected_keys == ["head.bias"]
    assert "0.weight" not in result.missing_keys and "3.bias" in result.missing_keys
    assert (net[0].weight.data == 1).all()
    with pytest.raises(ValueError, match=r"0.weight: shape \(1,\) in the state"):
        net.load_state_dict({"0.weight": np.ones(1)}, strict=False)  # shapes always checked
    with pytest.raises(TypeError, match="state must be a mapping of name -> array, got list"):
        net.load_state_dict([1, 2])


def test_default_init_matches_torchs_bounds():
    conv = nn.Conv2d(8, 16, 3, groups=2, rng=0)  # fan_in = 4 * 3 * 3 = 36
    lin = nn.Linear(400, 10, rng=0)
    for w, fan_in in ((conv.weight.data, 36), (lin.weight.data, 400)):
        bound = 1 / np.sqrt(fan_in)
        assert np.abs(w).max() <= bound and w.std() == pytest.approx(bound / np.sqrt(3), rel=0.15)
    assert conv.weight.dtype == np.float32
    np.testing.assert_array_equal(nn.Linear(3, 2, rng=5).weight.data,
                                  nn.Linear(3, 2, rng=5).weight.data)  # fmt: skip


@pytest.mark.parametrize(
    "make,exc,match",
    [
        (lambda: nn.Conv2d(4, 6, 3, groups=4), ValueError, r"Conv2d: groups=4 must divide"),
        (lambda: nn.Conv2d(0, 6, 3), ValueError, r"Conv2d: in_channels must be >= 1, got 0"),
        (lambda: nn.Conv2d(4, 6, 0), ValueError, r"Conv2d: kernel_size must be >= 1, got 0"),
        (lambda: nn.Conv2d(4, 6, 3, padding=-1), ValueError, r"Conv2d: padding must be >= 0"),
        (lambda: nn.Conv2d(4, 6, 3, dtype=np.int8), TypeError, r"Conv2d: dtype must be float32"),
        (lambda: nn.Conv2d(4, 6, 3, rng="x"), TypeError, r"rng must be None, an int seed or"),
        (lambda: nn.BatchNorm2d(3, eps=0), ValueError, r"BatchNorm2d: eps must be > 0.0"),
        (lambda: nn.BatchNorm2d(3, momentum=2), ValueError, r"BatchNorm2d: momentum must be <="),
        (lambda: nn.Linear(3, 0), ValueError, r"Linear: out_features must be >= 1, got 0"),
        (lambda: nn.Dropout(1.5), ValueError, r"Dropout: p must be <= 1.0, got 1.5"),
        (lambda: nn.MaxPool2d((2, 2, 2)), ValueError, r"MaxPool2d: kernel_size must be an int"),
        (lambda: nn.AdaptiveAvgPool2d(0), ValueError, r"AdaptiveAvgPool2d: output_size must be"),
        (lambda: nn.Sequential(nn.ReLU(), 3), TypeError, r"Sequential: item 1 must be a Module"),
        (lambda: nn.ModuleList([None]), TypeError, r"ModuleList: item 0 must be a Module"),
    ],
)
def test_bad_layer_arguments(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


def test_bad_layer_input_is_reported_by_the_op():
    with pytest.raises(TypeError, match=r"Flatten: x must be a numpy array"):
        nn.Flatten().forward([1, 2])
    with pytest.raises(TypeError, match=r"linear"):
        nn.Linear(3, 2).forward(np.ones((2, 3), np.int64))


@pytest.mark.torch
@pytest.mark.parametrize("shape, start, end", [
    ((), 1, -1), ((), 0, -1), ((2, 3), 5, -1), ((2, 3), 0, 2), ((2,), 1, -1), ((2, 3), -3, -1),
    ((2, 3), 0, -1), ((2, 3, 4), -2, -1), ((3,), 0, 0), ((2, 3, 4, 5), 1, 2),
])  # fmt: skip
def test_flatten_takes_the_dims_pytorch_takes(torch, shape, start, end):
    """Dims outside PyTorch's range (0-d input included) raise a ValueError naming them, where
    PyTorch raises IndexError; the others give PyTorch's shape."""
    try:
        want = tuple(torch.nn.Flatten(start, end)(torch.ones(shape)).shape)
    except IndexError:
        with pytest.raises(ValueError, match=r"Flatten: (start|end)_dim -?\d+ is out of range"):
            nn.Flatten(start, end).forward(np.ones(shape, np.float32))
        return
    assert nn.Flatten(start, end).forward(np.ones(shape, np.float32)).shape == want


def test_subclass_must_call_init_first():
    class Broken(nn.Module):
        def __init__(self):
            self.w = 1

    with pytest.raises(AttributeError, match=r"Broken: call super\(\).__init__\(\) before"):
        Broken()


def test_layers_check_every_new_input_signature_after_a_good_call(rng):
    """Conv2d and BatchNorm2d validate once per input signature: a later bad input still gets
    the op's error, and a changed layer setting is planned afresh."""
    conv, bn = nn.Conv2d(3, 4, 3, padding=1, dtype=np.float32, rng=0), nn.BatchNorm2d(3)
    x = rng.standard_normal((2, 3, 5, 5)).astype(np.float32)
    for _ in range(2):
        conv.forward(x)
        bn.forward(x)
    with pytest.raises(ValueError, match=r"conv2d: x has 2 channels"):
        conv.forward(x[:, :2])
    with pytest.raises(
        TypeError, match=r"conv2d: weight has dtype float32 but x has dtype float64"
    ):
        conv.forward(x.astype(np.float64))
    with pytest.raises(TypeError, match=r"conv2d: x must be a numpy array"):
        conv.forward(x.tolist())
    with pytest.raises(ValueError, match=r"batch_norm_forward: weight must have shape \(2,\)"):
        bn.forward(x[:, :2])
    with pytest.raises(ValueError, match=r"batch_norm_act_forward: activation must be one of"):
        bn.forward_act(x, "tanh")
    bn.eps = -1.0
    with pytest.raises(ValueError, match=r"batch_norm_forward: eps must be > 0"):
        bn.forward(x)
    conv.stride = (2, 2)
    assert conv.forward(x).shape == (2, 4, 3, 3)


@pytest.mark.parametrize("act", ["relu", "relu6"])
def test_batchnorm_forward_act_is_bn_then_activation_module(rng, act):
    """forward_act + backward against the two modules in a row (each checked against torch)."""
    fused, plain = nn.BatchNorm2d(3, dtype=np.float64), nn.BatchNorm2d(3, dtype=np.float64)
    for m in (fused, plain):
        m.weight.data[...] = [2.0, -1.0, 3.0]
    relu = nn.ReLU() if act == "relu" else nn.ReLU6()
    x, dout = rng.standard_normal((4, 3, 3, 3)) * 4, rng.standard_normal((4, 3, 3, 3))
    out = fused.forward_act(x, act)
    np.testing.assert_array_equal(out, relu.forward(plain.forward(x)))
    dx = fused.backward(dout)
    np.testing.assert_allclose(dx, plain.backward(relu.backward(dout)), rtol=1e-12, atol=1e-14)
    for p, q in zip(fused.parameters(), plain.parameters()):
        np.testing.assert_allclose(p.grad, q.grad, rtol=1e-12, atol=1e-14)
    for k, v in plain.state_dict().items():
        np.testing.assert_array_equal(fused.state_dict()[k], v)


def test_plain_layer_calls_never_overwrite_what_they_returned(rng):
    """Called without a workspace, Conv2d and BatchNorm2d return fresh arrays: outputs and
    gradients a caller kept from one call are intact after the next, and the caller's dout is
    never written over unless it passes consume=True."""
    conv, bn = nn.Conv2d(3, 4, 1, bias=False, rng=0), nn.BatchNorm2d(4)
    x1, x2 = (rng.standard_normal((2, 3, 5, 5)).astype(np.float32) for _ in range(2))
    dout = rng.standard_normal((2, 4, 5, 5)).astype(np.float32)
    saved_dout = dout.copy()

    def step(x):
        y = bn.forward_act(conv.forward(x), "relu")
        return y, conv.backward(bn.backward(dout))

    y1, dx1 = step(x1)
    kept = y1.copy(), dx1.copy()
    y2, dx2 = step(x2)
    assert not np.shares_memory(y1, y2) and not np.shares_memory(dx1, dx2)
    np.testing.assert_array_equal(y1, kept[0])
    np.testing.assert_array_equal(dx1, kept[1])
    np.testing.assert_array_equal(dout, saved_dout)
    y3, dx3 = step(x1)
    np.testing.assert_array_equal(y3, kept[0])
    np.testing.assert_array_equal(dx3, kept[1])
    bn.forward_act(conv.forward(x1), "relu")
    owned = dout.copy()
    dx_bn = bn.backward(owned, consume=True)  # the caller gives dout away: dx written over it
    assert np.shares_memory(dx_bn, owned)


def test_layers_reuse_the_arrays_of_a_workspace_their_owner_passes(rng):
    """With a Workspace, a layer's output is the owner's array until the layer's backward
    releases it (then it may hold a gradient); the owner's new_step() makes every array free
    again, so step 2 writes into step 1's arrays and gives the same numbers as plain calls."""
    conv, bn = nn.Conv2d(3, 4, 1, bias=False, rng=0), nn.BatchNorm2d(4)
    ws = nn.Workspace()
    x = rng.standard_normal((2, 3, 5, 5)).astype(np.float32)
    dout = rng.standard_normal((2, 4, 5, 5)).astype(np.float32)

    def step(workspace):
        y = bn.forward_act(conv.forward(x, workspace=workspace), "relu", workspace=workspace)
        forward = y.copy()  # y is bn's until bn.backward releases it
        dx = conv.backward(bn.backward(dout.copy(), consume=True))
        return y, forward, dx

    _, *want = step(None)
    ws.new_step()
    y1, _, dx1 = step(ws)
    assert ws.owns(y1) and ws.owns(dx1)
    arrays = len(ws)
    ws.new_step()
    y2, forward2, dx2 = step(ws)
    assert y2 is y1 and len(ws) == arrays  # reused, nothing new allocated
    np.testing.assert_array_equal(forward2, want[0])
    np.testing.assert_array_equal(dx2, want[1])


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: nn.Conv2d(3, 4, 3, bias="False"), "Conv2d: bias must be True or False, got str"),
        (lambda: nn.Linear(3, 4, bias="no"), "Linear: bias must be True or False, got str"),
        (lambda: nn.AvgPool2d(2, ceil_mode="False"), "AvgPool2d: ceil_mode must be True or"),
        (lambda: nn.AvgPool2d(2, count_include_pad="0"), "AvgPool2d: count_include_pad must be"),
        (lambda: nn.Parameter(np.zeros(2), requires_grad="False"), "requires_grad must be True"),
        (lambda: nn.ReLU().train("False"), "ReLU.train: mode must be True or False, got str"),
        (lambda: nn.ReLU().train(0), "ReLU.train: mode must be True or False, got int"),
    ],
)
def test_string_booleans_are_refused(make, match):
    """A string such as "False" is truthy: read as a flag it would silently mean True."""
    with pytest.raises(TypeError, match=match):
        make()


def test_numpy_booleans_are_flags():
    assert nn.Conv2d(3, 4, 3, bias=np.bool_(False)).bias is None
    assert nn.ReLU().train(np.bool_(False)).training is False


def test_containers_pass_consume_only_where_taken_and_never_over_the_callers_dout():
    """The rule of npmobilenet.nn.module: consume=True goes to a backward with a ``consume``
    parameter, for a gradient the container owns (not the caller's dout, nor a view of it)."""
    seen = []

    class Plain(nn.Module):
        def __init__(self, copy):
            super().__init__()
            self.copy = copy

        def forward(self, x):
            return x

        def backward(self, dout):
            seen.append("plain")
            return dout.copy() if self.copy else dout[:]  # a new array, or a view of dout

    class Taker(Plain):
        def backward(self, dout, *, consume=False):
            seen.append(consume)
            return dout.copy() if self.copy else dout

    dout = np.ones((2, 3))
    nn.Sequential(Taker(False), Plain(False), Taker(False)).backward(dout)
    assert seen == [False, "plain", False]  # every gradient here is the caller's dout
    seen.clear()
    nn.Sequential(Taker(False), Plain(True), Taker(False)).backward(dout)
    assert seen == [False, "plain", True]  # Plain returned a new array: the container's own
    seen.clear()
    nn.Sequential(Taker(False), Plain(False)).backward(dout, consume=True)
    assert seen == ["plain", True]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("groups", [1, 4])
def test_conv_without_its_input_takes_it_again_in_backward(rng, dtype, groups):
    """``Conv2d.forward(x, keep_input=False)`` keeps no reference to x; ``backward(dout, x=x)``
    then gives exactly the gradients of a forward that kept it, which the naive loops of
    test_conv.py check."""
    conv = nn.Conv2d(4, 8, 3, padding=1, groups=groups, rng=0, dtype=dtype)
    x = rng.standard_normal((2, 4, 6, 5)).astype(dtype)
    dout = rng.standard_normal((2, 8, 6, 5)).astype(dtype)
    out = conv.forward(x)
    dx = conv.backward(dout)
    dw, db = conv.weight.grad.copy(), conv.bias.grad.copy()
    conv.zero_grad()
    given = x.copy()
    np.testing.assert_array_equal(conv.forward(given, keep_input=False), out)
    given[...] = np.nan  # the caller's memory held something else in between
    np.testing.assert_array_equal(conv.backward(dout, x=x), dx)
    np.testing.assert_array_equal(conv.weight.grad, dw)
    np.testing.assert_array_equal(conv.bias.grad, db)
    conv.forward(x[0], keep_input=False)  # unbatched: x again as given to the forward
    conv.backward(dout[0], x=x[0])


def test_conv_backward_refuses_a_missing_or_wrong_input(rng):
    conv = nn.Conv2d(3, 4, 1, rng=0)
    x = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    dout = np.ones((2, 4, 4, 4), np.float32)
    conv.forward(x, keep_input=False)
    with pytest.raises(ValueError, match="Conv2d.backward: the forward ran with keep_input=False"):
        conv.backward(dout)
    wrong = r"Conv2d.backward: x must be the forward's input, of shape \(2, 3, 4, 4\) and dtype"
    with pytest.raises(ValueError, match=wrong):
        conv.backward(dout, x=x[:1])
    conv.forward(x)
    with pytest.raises(ValueError, match="Conv2d.backward: x is only passed for a forward run"):
        conv.backward(dout, x=x)
    with pytest.raises(TypeError, match="Conv2d.forward: keep_input must be True or False"):
        conv.forward(x, keep_input="no")


@pytest.mark.parametrize("workspace", [False, True])
@pytest.mark.parametrize("activation", [None, "relu", "relu6"])
def test_batch_norm_output_let_go_then_computed_again(rng, workspace, activation):
    """After ``release_output()`` the output's memory may hold anything; ``recompute_output()``
    gives the forward's output back exactly, and the backward (which reads the output after
    ``forward_act``) gives the gradients of a layer that kept it, recomputed or not."""
    x = (rng.standard_normal((2, 3, 4, 4)) * 3).astype(np.float64)
    dout = rng.standard_normal(x.shape)
    bn = nn.BatchNorm2d(3, dtype=np.float64)
    bn.weight.data[...] = [0.5, -1.5, 2.0]
    bn.bias.data[...] = [0.3, 0.0, -0.4]

    def forward(ws):
        stats = bn.running_mean.copy(), bn.running_var.copy()
        out = bn.forward(x, workspace=ws) if activation is None else bn.forward_act(
            x, activation, workspace=ws)  # fmt: skip
        bn.running_mean[...], bn.running_var[...] = stats
        return out

    want = forward(None).copy()
    dx = bn.backward(dout)
    grads = bn.weight.grad.copy(), bn.bias.grad.copy()
    for recompute in (True, False):
        ws = nn.Workspace() if workspace else None
        bn.zero_grad()
        out = forward(ws)
        bn.release_output()
        out[...] = np.nan
        if recompute:
            np.testing.assert_array_equal(bn.recompute_output(), want)
        np.testing.assert_array_equal(bn.backward(dout), dx)
        np.testing.assert_array_equal(bn.weight.grad, grads[0])
        np.testing.assert_array_equal(bn.bias.grad, grads[1])


def test_conv2d_output_shape_follows_the_layer_s_current_arguments():
    """Shape arithmetic (remembered per argument set) against the forward's real output, as a
    user changes the stride and the padding (a list: not hashable, worked out afresh)."""
    from npmobilenet.nn import Conv2d

    conv = Conv2d(3, 4, 3, stride=1, padding=1)
    x = np.zeros((2, 3, 9, 8), np.float32)
    for attr, value, expected in (("stride", (1, 1), (9, 8)), ("stride", (2, 2), (5, 4)),
                                  ("padding", [0, 0], (4, 3)), ("padding", (0, 2, 1, 0), (5, 4)),
                                  ("stride", (1, 1), (9, 7)), ("padding", "valid", (7, 6))):
        setattr(conv, attr, value)
        assert conv.output_shape(x.shape) == conv(x).shape == (2, 4, *expected)


@pytest.mark.torch
def test_a_layer_registered_twice_is_one_set_of_parameters_like_torch(torch):
    def shared(m):
        lin = m.Linear(3, 3)
        return m.Sequential(lin, m.ReLU(), lin), lin

    (ours, lin), (ref, tlin) = shared(nn), shared(torch.nn)
    tlin.load_state_dict({k: _t(torch, v) for k, v in lin.state_dict().items()})
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in ref.named_parameters()]
    assert [n for n, _ in ours.named_modules()] == [n for n, _ in ref.named_modules()]
    assert list(ours.state_dict()) == list(ref.state_dict())  # every name, as torch
    assert ours.freeze("2") == ["2.weight", "2.bias"] and not lin.weight.requires_grad
    ours.unfreeze()
    from npmobilenet.optim import SGD

    opt, topt = SGD(ours.parameters(), lr=0.1), torch.optim.SGD(ref.parameters(), lr=0.1)
    for p, tp in zip(ours.parameters(), ref.parameters()):
        p.grad[...] = 1.0
        tp.grad = torch.ones_like(tp)
    opt.step()
    topt.step()  # one update per parameter, not one per name
    np.testing.assert_array_equal(lin.weight.data, tlin.weight.detach().numpy())
    np.testing.assert_array_equal(lin.bias.data, tlin.bias.detach().numpy())


@pytest.mark.torch
def test_a_plain_value_cannot_silently_unregister_a_parameter_child_or_buffer(torch):
    lin, tlin = nn.Linear(3, 2, rng=0), torch.nn.Linear(3, 2)
    with pytest.raises(TypeError):  # torch refuses too
        tlin.weight = torch.zeros(2, 3)
    with pytest.raises(TypeError, match=r"Linear: cannot assign array .* as parameter 'weight'"):
        lin.weight = np.zeros((2, 3), np.float32)
    assert list(lin.state_dict()) == ["weight", "bias"] and isinstance(lin.weight, nn.Parameter)
    net, bn = nn.Sequential(nn.ReLU()), nn.BatchNorm2d(2)
    with pytest.raises(TypeError, match="Sequential: cannot assign .* as child module '0'"):
        setattr(net, "0", np.zeros(3))
    with pytest.raises(TypeError, match="BatchNorm2d: cannot assign .* as buffer 'running_var'"):
        bn.running_var = [1.0, 1.0]
    assert len(net) == 1 and list(bn.state_dict())[3] == "running_var"
    bn.running_var = np.full(2, 4.0, np.float32)  # an array replaces a buffer
    lin.bias = None  # None unregisters, a Parameter replaces
    lin.weight = nn.Parameter(np.ones((2, 3), np.float32))
    assert list(lin.state_dict()) == ["weight"] and bn.state_dict()["running_var"][0] == 4.0


@pytest.mark.parametrize("value", [None, np.zeros(3, np.float32), [[0.0] * 3] * 2])
def test_a_gradient_cannot_be_set_to_none_or_a_wrong_shape(value):
    """torch's ``p.grad = None`` idiom: refused where it is written, with the way to zero it,
    instead of an AttributeError on None in the next zero_grad, backward or step."""
    lin = nn.Linear(3, 2, rng=0)
    grad = lin.weight.grad
    with pytest.raises(TypeError, match=r"Parameter.grad: expected an array of shape \(2, 3\)"
                                        r" .*zero_grad\(\)"):  # fmt: skip
        lin.weight.grad = value
    assert lin.weight.grad is grad
    lin.weight.grad = np.ones((2, 3), np.float32)  # an array of the right shape replaces it
    lin.zero_grad()
    assert not lin.weight.grad.any()


def test_a_layer_run_twice_in_one_forward_is_refused_in_backward_with_the_reason(rng):
    lin = nn.Linear(3, 3, rng=0)
    net = nn.Sequential(lin, nn.ReLU(), lin)
    net(rng.standard_normal((2, 3)).astype(np.float32))
    with pytest.raises(RuntimeError, match="Linear.backward: .* or the module ran twice in one"
                                           " forward"):  # fmt: skip
        net.backward(np.ones((2, 3), np.float32))


@pytest.mark.torch
def test_modules_children_get_submodule_and_apply_walk_like_torch(torch):
    def tree(m):
        shared = m.ReLU()
        last = m.Sequential(m.BatchNorm2d(4), m.Sequential(m.Linear(4, 2)))
        return m.Sequential(m.Sequential(m.Conv2d(3, 4, 1), shared), shared, last)

    ours, ref = tree(nn), tree(torch.nn)
    assert [type(m).__name__ for m in ours.modules()] == [type(m).__name__ for m in ref.modules()]
    assert [n for n, _ in ours.named_children()] == [n for n, _ in ref.named_children()]
    assert len(list(ours.children())) == len(list(ref.children()))
    for path in ("", "0.1", "2.1.0"):
        assert type(ours.get_submodule(path)).__name__ == type(ref.get_submodule(path)).__name__
        assert ours.get_submodule(path) is (ours if not path else
                                           dict(ours.named_modules(remove_duplicate=False))[path])
    with pytest.raises(AttributeError):
        ref.get_submodule("2.5")
    with pytest.raises(AttributeError, match=r"get_submodule: 2 \(Sequential\) has no child '5'"):
        ours.get_submodule("2.5")
    seen, tseen = [], []
    assert ours.apply(lambda m: seen.append(type(m).__name__)) is ours
    ref.apply(lambda m: tseen.append(type(m).__name__))
    assert seen == tseen  # children first, each once
