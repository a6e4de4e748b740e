"""A ``forward`` or ``backward`` a user sets on a module instance, and a subclass of a library
module, is what runs: the model does not fuse it away (batch norm with its activation, a
convolution applying the batch norm before it), and the fused engine refuses it, so that
``predict_proba``, ``evaluate`` and the ``Trainer`` fall back to the module path.

The reference for a method set on an instance is the same model with that child replaced by a
wrapper module computing the same function (the replaced-child path, itself tested against
PyTorch in ``test_residual.py`` and ``test_model_torch.py``)."""

from __future__ import annotations

import numpy as np
import pytest

from npmobilenet import nn, ops
from npmobilenet.data import ArrayDataset, DataLoader
from npmobilenet.fast import UnsupportedModuleError
from npmobilenet.models import MobileNetV1
from npmobilenet.models.mobilenet import DepthwiseSeparableConv
from npmobilenet.train import evaluate

# alpha 1 at 128x128, batch 2: large enough that the first block's pointwise conv applies its
# batch norm as it reads (an activation of 1 MiB) and that every block hands its output to the
# next one unwritten, the paths a method set on an instance must switch off
RES, BATCH = 128, 2
LEAVES = [
    "first_conv.conv", "first_conv.bn", "first_conv.relu",
    "depthwise_sep_conv0.dwconv", "depthwise_sep_conv0.bn0", "depthwise_sep_conv0.relu0",
    "depthwise_sep_conv0.pwconv", "depthwise_sep_conv0.bn1", "depthwise_sep_conv0.relu1",
    "depthwise_sep_conv1.dwconv",
]  # fmt: skip


def _model(alpha=1.0, seed=0):
    """A model whose batch norms have non-trivial statistics and whose classifier is not zero."""
    model = MobileNetV1(alpha=alpha, num_classes=10, seed=seed)
    rng = np.random.default_rng(seed)
    for _, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean[...] = 0.2 * rng.standard_normal(m.num_features)
            m.running_var[...] = rng.uniform(0.5, 1.5, m.num_features)
    model.fc.weight.data[...] = rng.normal(0.0, 0.3, model.fc.weight.data.shape)
    return model


def _input(res=RES, batch=BATCH):
    return np.random.default_rng(1).standard_normal((batch, 3, res, res)).astype(np.float32)


def _set(model, path, module):
    parent, _, name = path.rpartition(".")
    setattr(dict(model.named_modules())[parent] if parent else model, name, module)


CAP = 0.5


class Capped(nn.Module):
    """A user's wrapper: the inner module's output capped at ``CAP`` (not a change of scale or
    shift, which a training-mode batch norm after it would undo)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        out = self.inner.forward(x)
        self.kept = out < CAP
        return np.minimum(out, CAP)

    def backward(self, dout):
        return self.inner.backward(dout * self.kept)


def _cap_on_instance(module):
    """The same function as ``Capped(module)``, set as methods on the instance itself."""
    forward, backward, kept = module.forward, module.backward, []

    def capped(x):
        out = forward(x)
        kept[:] = [out < CAP]
        return np.minimum(out, CAP)

    module.forward = capped
    module.backward = lambda dout: backward(dout * kept[0])


def _step(model, x):
    """A training step's logits, input gradient and parameter gradients (by parameter name,
    the wrapper's ``inner.`` taken out)."""
    model.train()
    logits = model.forward(x)
    dx = model.backward(np.linspace(-1, 1, logits.size, dtype=x.dtype).reshape(logits.shape))
    grads = {name.replace("inner.", ""): p.grad.copy() for name, p in model.named_parameters()}
    return logits, dx, grads


@pytest.mark.parametrize("path", LEAVES)
def test_methods_set_on_a_leaf_run_as_a_replaced_child_would(path):
    x = _input()
    wrapped, patched = _model(), _model()
    _set(wrapped, path, Capped(dict(wrapped.named_modules())[path]))
    _cap_on_instance(dict(patched.named_modules())[path])
    want, got = _step(wrapped, x), _step(patched, x)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-4, atol=1e-6)
    assert got[2].keys() == want[2].keys()
    for name in want[2]:
        np.testing.assert_allclose(got[2][name], want[2][name], rtol=1e-4, atol=1e-6,
                                   err_msg=name)  # fmt: skip
    wrapped.eval(), patched.eval()
    np.testing.assert_allclose(patched.forward(x), wrapped.forward(x), rtol=1e-5, atol=1e-6)
    # and the change is real: the untouched model computes something else
    assert np.abs(_step(_model(), x)[0] - want[0]).max() > 1e-3


@pytest.mark.parametrize("method", ["forward", "backward"])
def test_a_function_without_keywords_set_on_an_instance_gets_none(method):
    """``workspace=``, ``consume=``, ``keep_input=``, ``input_affine=`` are offered only to a
    function that names them."""
    x = _input()
    model, seen = _model(), []
    conv = model.depthwise_sep_conv1.dwconv
    original = getattr(conv, method)

    def plain(a):
        seen.append(a.copy())
        return original(a)

    setattr(conv, method, plain)
    _step(model, x)
    assert len(seen) == 1
    if method == "forward":  # the written activation of the block before, ReLU's output
        assert seen[0].min() == 0.0 and seen[0].shape == (BATCH, 64, RES // 2, RES // 2)


def _subclassed_block(model, name):
    class Doubled(DepthwiseSeparableConv):
        def forward(self, x, **kwargs):
            return super().forward(x, **kwargs) * 2.0

        def backward(self, dout, **kwargs):
            return super().backward(dout * 2.0, **kwargs)

    block = getattr(model, name)
    stride, out = block.dwconv.stride[0], block.pwconv.out_channels
    new = Doubled(block.dwconv.in_channels, out, stride, "relu", model.dtype)
    new.load_state_dict(block.state_dict())
    setattr(model, name, new.train(model.training))
    return model


def _softmax(logits):
    return ops.softmax(logits, axis=1)


@pytest.mark.parametrize("change", ["subclassed block", "method on a leaf", "method on a block",
                                    "model subclass"])  # fmt: skip
def test_the_engine_refuses_what_it_cannot_know_and_inference_falls_back(change):
    x = _input(64, 4)
    model = _model(alpha=0.25).eval()
    if change == "subclassed block":
        model, where = _subclassed_block(model, "depthwise_sep_conv8"), "depthwise_sep_conv8"
    elif change == "method on a leaf":
        _cap_on_instance(model.depthwise_sep_conv8.relu1)
        where = "depthwise_sep_conv8.relu1"
    elif change == "method on a block":
        _cap_on_instance(model.depthwise_sep_conv8)
        where = "depthwise_sep_conv8"
    else:
        class Tempered(MobileNetV1):
            def forward(self, x):
                return super().forward(x) / 3.0

        state = model.state_dict()
        model = Tempered(alpha=0.25, num_classes=10, seed=0).eval()
        model.load_state_dict(state)
        where = "Tempered"
    with pytest.raises(UnsupportedModuleError, match=where) as info:
        model.fuse()
    assert len(str(info.value)) < 400
    logits = model.forward(x)
    plain = _model(alpha=0.25).eval().forward(x)
    assert np.abs(logits - plain).max() > 1e-3  # the change is real
    np.testing.assert_allclose(model.predict_proba(x), _softmax(logits), rtol=1e-5, atol=1e-7)
    y = np.arange(4) % 10
    result = evaluate(model, DataLoader(ArrayDataset(x, y), 2), 10)
    loss, _ = ops.cross_entropy_forward(logits.astype(np.float64), y)
    assert result["loss"] == pytest.approx(float(loss), rel=1e-5)


def test_a_model_subclass_that_keeps_the_forward_is_fused():
    class Renamed(MobileNetV1):
        def describe(self):
            return "mine"

    x = _input(64, 4)
    model = Renamed(alpha=0.25, num_classes=10, seed=0)
    model.load_state_dict(_model(alpha=0.25).state_dict())
    model.eval()
    engine = model.fuse()  # does not raise
    np.testing.assert_allclose(engine(x), model.forward(x), rtol=1e-4, atol=1e-5)
