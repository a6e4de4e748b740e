"""A block's last batch norm + activation computed by the next block's depthwise convolution as
it reads (``forward_deferred`` -> ``input_affine``), never written: the same numbers as the
written path, bit for bit, and only between library modules that can do it."""

from __future__ import annotations

import numpy as np
import pytest

from npmobilenet import ops, threads
from npmobilenet.kernels.tuned import AFFINE_INPUT
from npmobilenet.models import MobileNetV1, mobilenet
from npmobilenet.nn import BatchNorm2d, Conv2d

pytestmark = pytest.mark.kernels


def _step(model, x, dlogits):
    logits = model.forward(x)
    dx = model.backward(dlogits)
    grads = {name: p.grad.copy() for name, p in model.named_parameters()}
    model.zero_grad()
    return logits, dx, grads, {k: v.copy() for k, v in model.state_dict().items()}


def _assert_same(a, b):
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert a[2].keys() == b[2].keys()
    for name in a[2]:
        np.testing.assert_array_equal(a[2][name], b[2][name], err_msg=name)
    for name in a[3]:  # running statistics and the weights
        np.testing.assert_array_equal(a[3][name], b[3][name], err_msg=name)


def _written(mp):
    """Turn the deferrals off: every batch norm output written (the reference path)."""
    mp.setattr(mobilenet, "_deferrals", lambda units, *_: [False] * len(units))
    mp.setattr(mobilenet.DepthwiseSeparableConv, "_pointwise_applies_bn0", lambda *_: False)


def _models(dtype, activation="relu", n=2):
    return [MobileNetV1(0.25, 10, dtype=dtype, seed=0, activation=activation)
            for _ in range(n)]  # fmt: skip


def test_every_depthwise_conv_of_mobilenet_at_224_reads_its_input_unwritten():
    """At 224 every block's output but the last (read by the pool) and the first convolution's
    go to the next depthwise conv unwritten: 13 of Table 1's 14 convolution blocks."""
    model = MobileNetV1()
    deferred = mobilenet._deferrals(model.units(), (2, 3, 224, 224), np.dtype(np.float32))
    labels = [label for label, _ in model.units()]
    assert [lab for lab, d in zip(labels, deferred) if d] == labels[:13]
    assert labels[13] == "depthwise_sep_conv8" and not any(deferred[13:])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("activation", ["relu", "relu6"])
@pytest.mark.parametrize("recompute", [False, True])
@pytest.mark.parametrize("split", [False, True])
@pytest.mark.parametrize("release_all", [False, True])
def test_training_steps_equal_the_written_path_bit_for_bit(dtype, activation, recompute, split,
                                                           release_all, monkeypatch):  # fmt: skip
    """Two training steps (forward, backward, gradients, running statistics) with the outputs
    deferred equal the same model with every output written (deferral turned off), in both
    dtypes and activations, with block outputs recomputed or kept, serial or split over two
    threads; ``release_all``: every block's pointwise conv also applies bn0 itself (by
    default only for activations of at least ``RELEASE_MIN_BYTES``, none here)."""
    if release_all:
        monkeypatch.setattr(mobilenet, "RELEASE_MIN_BYTES", 0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3, 64, 64)).astype(dtype)
    dlogits = rng.standard_normal((4, 10)).astype(dtype)
    model, written = _models(dtype, activation)
    for m in (model, written):
        m.recompute_block_outputs = recompute
        m.runner = threads.Runner(2 if split else 1)
    assert sum(mobilenet._deferrals(model.units(), x.shape, x.dtype)) >= 4
    for _ in range(2):
        got = _step(model, x, dlogits)
        with monkeypatch.context() as mp:
            _written(mp)
            want = _step(written, x, dlogits)
        _assert_same(got, want)


def test_eval_forward_equals_the_written_path(monkeypatch):
    """Eval mode (the running statistics' coefficients), on a non-square input."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 96, 80)).astype(np.float32)
    model, written = _models(np.float32)
    for m in (model, written):
        m.load_state_dict(_randomised_bn(m))
        m.eval()
    assert any(mobilenet._deferrals(model.units(), x.shape, x.dtype))
    got = model.forward(x)
    _written(monkeypatch)
    np.testing.assert_array_equal(got, written.forward(x))


def _randomised_bn(model):
    rng = np.random.default_rng(5)
    state = model.state_dict()
    for k, v in state.items():
        if k.endswith(("running_mean", "bias")):
            state[k] = rng.uniform(-0.5, 0.5, v.shape).astype(v.dtype)
        elif k.endswith(("running_var", "weight")) and v.ndim == 1:
            state[k] = rng.uniform(0.5, 1.5, v.shape).astype(v.dtype)
    return state


class _MyConv(Conv2d):
    """A user's convolution: a Conv2d subclass (its forward may differ: never given an
    input_affine)."""


class _MyBatchNorm(BatchNorm2d):
    pass


@pytest.mark.parametrize("recompute", [False, True])
def test_a_replaced_depthwise_conv_or_batch_norm_gets_written_inputs_and_the_same_numbers(
    recompute, monkeypatch
):
    """A user's conv in place of block 1's depthwise conv is not handed an unwritten input, nor
    is block 2 handed block 1's output when block 1's last batch norm is the user's: the steps
    equal the fully written path's."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 3, 64, 64)).astype(np.float64)
    dlogits = rng.standard_normal((2, 10))
    model, written = _models(np.float64)
    for m in (model, written):
        old = m.depthwise_sep_conv1.dwconv
        conv = _MyConv(old.in_channels, old.out_channels, 3, stride=old.stride, padding=1,
                       groups=old.groups, bias=False, dtype=np.float64)  # fmt: skip
        conv.weight.data[...] = old.weight.data
        m.depthwise_sep_conv1.dwconv = conv
        bn = _MyBatchNorm(m.depthwise_sep_conv2.bn1.num_features, dtype=np.float64)
        m.depthwise_sep_conv2.bn1 = bn
        m.recompute_block_outputs = recompute
    deferred = mobilenet._deferrals(model.units(), x.shape, x.dtype)
    labels = [label for label, _ in model.units()]
    assert not deferred[labels.index("depthwise_sep_conv0")]  # read by the user's conv
    assert not deferred[labels.index("depthwise_sep_conv2")]  # ends in the user's batch norm
    assert deferred[labels.index("first_conv")] and deferred[labels.index("depthwise_sep_conv1")]
    got = _step(model, x, dlogits)
    _written(monkeypatch)
    _assert_same(got, _step(written, x, dlogits))


def test_a_forward_set_on_a_block_instance_is_called_as_it_is():
    """A user who wraps a block's ``forward`` on the instance (a spy, a hook) sees it called
    with the written output as input, and its output written: neither it nor its neighbours
    defer through it."""
    model = MobileNetV1(0.25, 10, seed=0).train()
    block = model.depthwise_sep_conv1
    seen = []
    bound = block.forward
    block.forward = lambda x, **kw: seen.append((x.copy(), sorted(kw))) or bound(x, **kw)
    labels = [label for label, _ in model.units()]
    x = np.random.default_rng(4).standard_normal((2, 3, 64, 64)).astype(np.float32)
    deferred = mobilenet._deferrals(model.units(), x.shape, x.dtype)
    assert not deferred[labels.index("depthwise_sep_conv0")]
    assert not deferred[labels.index("depthwise_sep_conv1")]
    assert deferred[labels.index("depthwise_sep_conv2")]
    model.forward(x)
    want = model.depthwise_sep_conv0.forward(model.first_conv.forward(x))
    assert len(seen) == 1 and "input_affine" not in seen[0][1]
    np.testing.assert_array_equal(seen[0][0], want)


def test_block_forward_deferred_then_input_affine_equals_two_forwards():
    """The block API by hand: ``forward_deferred`` hands (y, affine) whose ``channel_affine``
    is ``forward``'s output, and the next block's ``forward(y, input_affine=affine)`` and
    backward equal the written path's."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 8, 32, 32)).astype(np.float32)
    a, b = _models(np.float32)
    first, second = a.depthwise_sep_conv0, a.depthwise_sep_conv1
    first_w, second_w = b.depthwise_sep_conv0, b.depthwise_sep_conv1
    for m in (first, second, first_w, second_w):
        m.train()
    z = first_w.forward(x)
    y, affine = first.forward_deferred(x)
    np.testing.assert_array_equal(ops.channel_affine(y, affine), z)
    out = second.forward(y, input_affine=affine)
    np.testing.assert_array_equal(out, second_w.forward(z))
    dout = rng.standard_normal(out.shape).astype(np.float32)
    np.testing.assert_array_equal(second.backward(dout.copy()), d := second_w.backward(dout))
    np.testing.assert_array_equal(first.backward(d.copy()), first_w.backward(d))
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        np.testing.assert_array_equal(p.grad, q.grad, err_msg=name)


def test_forward_deferred_needs_a_fused_batch_norm_and_activation():
    block = MobileNetV1(0.25, 10).depthwise_sep_conv0
    block.bn1 = _MyBatchNorm(block.bn1.num_features)
    with pytest.raises(ValueError, match=r"DepthwiseSeparableConv.forward_deferred: the output"
                                         r" can be deferred only.*_MyBatchNorm"):  # fmt: skip
        block.forward_deferred(np.zeros((1, 8, 16, 16), np.float32))


# ------------------------------------------------------------------------------------------
# the ops


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "shape, stride, method",
    [((2, 4, 12, 12), 1, "auto"), ((2, 4, 12, 12), 2, "auto"), ((2, 4, 4, 4), 2, "auto"),
     ((2, 4, 9, 7), 1, "im2col"), ((1, 4, 6, 6), 1, "direct")],
)  # fmt: skip
def test_conv_input_affine_equals_the_affine_written_first(dtype, shape, stride, method):
    """``conv2d_forward(y, input_affine=a)`` equals ``conv2d_forward(channel_affine(y, a))``
    bit for bit, and its backward returns the same gradients with respect to that input and
    the weight, whether a kernel applies it as it reads (``AFFINE_INPUT``) or the op writes it
    first (other kernels and methods)."""
    rng = np.random.default_rng(4)
    C = shape[1]
    y = rng.standard_normal(shape).astype(dtype)
    y.flat[::7] = 0.0
    w = rng.standard_normal((C, 1, 3, 3)).astype(dtype)
    affine = ops.batchnorm.ChannelAffine(rng.uniform(-2, 2, C), rng.uniform(-1, 1, C), "relu6")
    z = ops.channel_affine(y, affine)
    kw = dict(stride=stride, padding=1, groups=C, method=method)
    out, cache = ops.conv2d_forward(y, w, **kw, input_affine=affine)
    want, want_cache = ops.conv2d_forward(z, w, **kw)
    np.testing.assert_array_equal(out, want)
    dout = rng.standard_normal(out.shape).astype(dtype)
    for got, ref in zip(ops.conv2d_backward(dout, cache), ops.conv2d_backward(dout, want_cache)):
        np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("hw, c_in, c_out, groups", [((20, 18), 16, 24, 1), ((7, 7), 32, 32, 1),
                                                     ((3, 3), 8, 16, 1), ((6, 5), 8, 12, 4)])
@pytest.mark.parametrize("interleave", [False, True])
@pytest.mark.parametrize("chunk", [1, 2**20])
@pytest.mark.parametrize("threads_", [1, 2])
def test_pointwise_input_affine_equals_the_affine_written_first(
    dtype, hw, c_in, c_out, groups, interleave, chunk, threads_, monkeypatch
):
    """A pointwise conv given ``input_affine`` applies it a few images at a time (``chunk``
    bytes: one image, or several) as it multiplies them, forward and backward: the same output,
    dx and dW, bit for bit, as the conv of the written activation, on each of the op's paths
    (one GEMM per image or per slice; dW per image, interleaved with dx or not, or batched)."""
    from npmobilenet.ops import conv as conv_ops

    monkeypatch.setattr(conv_ops, "POINTWISE_AFFINE_BYTES", chunk)
    monkeypatch.setattr(conv_ops, "POINTWISE_INTERLEAVE_MIN_BYTES", 0 if interleave else 2**40)
    rng = np.random.default_rng(8)
    y = rng.standard_normal((5, c_in, *hw)).astype(dtype)
    w = rng.standard_normal((c_out, c_in // groups, 1, 1)).astype(dtype)
    affine = ops.batchnorm.ChannelAffine(rng.uniform(-2, 2, c_in), rng.uniform(-1, 1, c_in),
                                         "relu")  # fmt: skip
    runner = threads.Runner(threads_)
    out, cache = ops.conv2d_forward(y, w, groups=groups, input_affine=affine, runner=runner,
                                    backward_ahead=True)  # fmt: skip
    z = ops.channel_affine(y, affine)
    want, want_cache = ops.conv2d_forward(z, w, groups=groups, runner=runner)
    assert cache.method == "pointwise" and cache.input_affine is affine
    np.testing.assert_array_equal(out, want)
    dout = rng.standard_normal(out.shape).astype(dtype)
    got = ops.conv2d_backward(dout, cache, runner=runner)
    for g, r in zip(got, ops.conv2d_backward(dout, want_cache, runner=runner)):
        np.testing.assert_array_equal(g, r)


def test_conv_input_affine_with_a_non_finite_weight_equals_the_written_input():
    """An inf in the weight: the weight gradient falls back to the readable kernel on the
    convolution's real input (the affine applied), as without input_affine."""
    rng = np.random.default_rng(6)
    y = rng.standard_normal((2, 3, 8, 8))
    w = rng.standard_normal((3, 1, 3, 3))
    w[1, 0, 0, 0] = np.inf
    affine = ops.batchnorm.ChannelAffine(rng.uniform(0.5, 2, 3), rng.uniform(-1, 1, 3), "relu")
    out, cache = ops.conv2d_forward(y, w, padding=1, groups=3, input_affine=affine)
    want, want_cache = ops.conv2d_forward(ops.channel_affine(y, affine), w, padding=1, groups=3)
    np.testing.assert_array_equal(out, want)
    dout = rng.standard_normal(out.shape)
    for got, ref in zip(ops.conv2d_backward(dout, cache), ops.conv2d_backward(dout, want_cache)):
        np.testing.assert_array_equal(got, ref)


def test_the_step_kernels_have_affine_variants():
    """The depthwise kernels a 224 training step runs each have their input_affine variant
    (else the deferral would write the activation after all)."""
    from npmobilenet.kernels.tuned import depthwise3x3 as T

    for k in (T.depthwise3x3_forward_flat_bands, T.depthwise3x3_forward_split_columns,
              T.depthwise3x3_backward_stacked, T.depthwise3x3_backward_stride2_pad1):  # fmt: skip
        assert k in AFFINE_INPUT, k.__name__


@pytest.mark.parametrize("L", [9, 49])  # a flat walk and a channel walk
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_coefficients_equal_the_forward_and_its_backward(L, training):
    """``batch_norm_act_coefficients`` updates the running statistics as the forward does, its
    ``channel_affine`` is the forward's output, and the backward from its cache (no output
    kept) equals the backward from the forward's."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((3, 5, L)).astype(np.float32)
    w, b = rng.standard_normal(5).astype(np.float32), rng.standard_normal(5).astype(np.float32)
    stats = [rng.standard_normal(5).astype(np.float32), rng.uniform(0.5, 2, 5).astype(np.float32)]
    s1, s2 = [s.copy() for s in stats], [s.copy() for s in stats]
    out, c1 = ops.batch_norm_act_forward(x, w, b, *s1, training, activation="relu")
    affine, c2 = ops.batch_norm_act_coefficients(x, w, b, *s2, training, activation="relu")
    assert c2.out3 is None
    np.testing.assert_array_equal(ops.channel_affine(x, affine), out)
    for got, want in zip(s2, s1):
        np.testing.assert_array_equal(got, want)
    dout = rng.standard_normal(x.shape).astype(np.float32)
    for got, want in zip(ops.batch_norm_act_backward(dout, c2),
                         ops.batch_norm_act_backward(dout, c1)):  # fmt: skip
        np.testing.assert_array_equal(got, want)


def test_bad_affines_are_named():
    x = np.zeros((1, 3, 5, 5), np.float32)
    w = np.zeros((3, 1, 3, 3), np.float32)
    good = ops.batchnorm.ChannelAffine(np.ones(3), np.zeros(3), "relu")
    with pytest.raises(TypeError, match=r"conv2d: input_affine must be a ChannelAffine, got"
                                        r" tuple"):  # fmt: skip
        ops.conv2d_forward(x, w, groups=3, input_affine=(np.ones(3), np.zeros(3), "relu"))
    with pytest.raises(ValueError, match=r"conv2d: input_affine.scale must be a \(3,\) float64"):
        ops.conv2d_forward(x, w, groups=3, input_affine=good._replace(scale=np.ones(4)))
    with pytest.raises(ValueError, match=r"conv2d: input_affine.act must be one of"):
        ops.conv2d_forward(x, w, groups=3, input_affine=good._replace(act="tanh"))
    with pytest.raises(TypeError, match=r"channel_affine: affine must be a ChannelAffine"):
        ops.channel_affine(x, None)
    with pytest.raises(ValueError, match=r"channel_affine: affine.shift must be a \(3,\) float64"
                                         r" array \(one per channel of x\)"):  # fmt: skip
        ops.channel_affine(x, good._replace(shift=np.zeros(3, np.float32)))
    with pytest.raises(ValueError, match=r"channel_affine: x must be \(N, C\) or \(N, C, \*\)"):
        ops.channel_affine(np.zeros(3, np.float32), good)
