"""The model API fine-tuning code reaches for: a replaced head, reset_classifier, the feature
map and its backward, headless models, max pooling and frozen parameters, each against the
same network in float64 PyTorch (tests/torch_reference.py) holding the same weights."""

from __future__ import annotations

import numpy as np
import pytest
from torch_reference import build_seed_mobilenet, randomize_batch_norm

from npmobilenet import nn
from npmobilenet.models import DepthwiseSeparableConv, MobileNetV1

pytestmark = [pytest.mark.torch, pytest.mark.kernels]
X_SHAPE = (2, 3, 40, 36)  # final map 2x2: ceil(40/32) x ceil(36/32)


def _close(ours, theirs, msg=""):
    theirs = theirs.detach().numpy() if hasattr(theirs, "detach") else theirs
    atol = 1e-9 * max(1.0, float(np.abs(theirs).max(initial=0.0)))
    np.testing.assert_allclose(ours, theirs, rtol=1e-7, atol=atol, err_msg=msg)


def _pair(torch, num_classes=4, **kw):
    """Our float64 model and the torch reference with the same (random BN) weights."""
    torch.manual_seed(0)
    ref = randomize_batch_norm(torch, build_seed_mobilenet(torch, 0.25, max(num_classes, 1)))
    ref = ref.double()
    m = MobileNetV1(0.25, num_classes, dtype=np.float64, seed=0, **kw)
    return m, ref


def _load(m, ref, torch):
    ref.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in m.state_dict().items()})


def _x(seed=1):
    return np.random.default_rng(seed).standard_normal(X_SHAPE)


def _step_both(torch, m, ref, x, ours_fwd, ours_bwd, ref_fwd, input_grad=True):
    m.zero_grad()
    out = ours_fwd(x)
    dout = np.random.default_rng(2).standard_normal(out.shape)
    dx = ours_bwd(dout.copy(), input_grad=input_grad)
    xt = torch.from_numpy(x).requires_grad_(True)
    ref.zero_grad()
    out_t = ref_fwd(xt)
    out_t.backward(torch.from_numpy(dout))
    _close(out, out_t, "out")
    if input_grad:
        _close(dx, xt.grad, "dx")
    return {n: p.grad for n, p in ref.named_parameters()}


def test_a_replaced_head_is_the_one_forward_runs(torch):
    m, ref = _pair(torch, num_classes=10)
    m.fc = nn.Linear(m.num_features, 3, dtype=np.float64, rng=5)
    assert list(m._modules)[-1] == "fc" and m.output_shape(X_SHAPE) == (2, 3)
    rows = {r.name: r for r in m.summary(X_SHAPE[1:], batch_size=2).rows}
    assert rows["fc"].output_shape == (2, 3) and rows["fc"].params == 256 * 3 + 3
    ref.fc = torch.nn.Linear(256, 3).double()
    _load(m, ref, torch)
    grads = _step_both(torch, m, ref, _x(), m.forward, m.backward, ref)
    for name, p in m.named_parameters():
        _close(p.grad, grads[name], name)


def test_reset_classifier_replaces_fc_in_place_with_a_fresh_init(torch):
    m, ref = _pair(torch, num_classes=10)
    m.reset_classifier(7, seed=3)
    assert list(m._modules)[-1] == "fc" and m.config["num_classes"] == 7
    assert m.fc.weight.shape == (7, 256) and not m.fc.bias.data.any()
    assert 0.005 < m.fc.weight.data.std() < 0.015  # N(0, 0.01^2), as reset_parameters
    ref.fc = torch.nn.Linear(256, 7).double()
    _load(m, ref, torch)
    m.eval(), ref.eval()
    _close(m(_x()), ref(torch.from_numpy(_x())), "logits")
    m.reset_classifier(0)
    assert isinstance(m.fc, nn.Identity) and m(_x()).shape == (2, 256)


def _torch_features(ref, x):
    x = ref.first_conv(x)
    for name, child in ref.named_children():
        if name.startswith("depthwise_sep_conv"):
            for block in child if isinstance(child, type(ref.depthwise_sep_conv6)) else [child]:
                x = block(x)
    return x


def test_forward_features_and_backward_features_match_torch(torch):
    m, ref = _pair(torch)
    _load(m, ref, torch)
    feat = m.forward_features(_x())
    assert feat.shape == (2, 256, 2, 2) == m.output_shape_features(X_SHAPE)
    grads = _step_both(torch, m, ref, _x(), m.forward_features, m.backward_features,
                       lambda xt: _torch_features(ref, xt))  # fmt: skip
    for name, p in m.named_parameters():
        if name.startswith("fc."):
            assert not p.grad.any()  # the head did not run
        else:
            _close(p.grad, grads[name], name)
    with pytest.raises(RuntimeError, match="backward_features: backward called twice"):
        m.backward_features(np.ones((2, 256, 2, 2)))


def test_headless_model_returns_pooled_features(torch):
    m, ref = _pair(torch, num_classes=0)
    assert m.output_shape(X_SHAPE) == (2, 256) and m.num_features == 256
    assert not any(n.startswith("fc.") for n in m.state_dict())
    ref.fc = torch.nn.Identity()
    _load(m, ref, torch)
    grads = _step_both(torch, m, ref, _x(), m.forward, m.backward, ref)
    for name, p in m.named_parameters():
        _close(p.grad, grads[name], name)


def test_global_max_pool_matches_torch(torch):
    m, ref = _pair(torch, global_pool="max")
    assert "maxpool" in m._modules and "avgpool" not in m._modules
    ref.avgpool = torch.nn.AdaptiveMaxPool2d(1)
    _load(m, ref, torch)
    grads = _step_both(torch, m, ref, _x(), m.forward, m.backward, ref)
    for name, p in m.named_parameters():
        _close(p.grad, grads[name], name)


def test_frozen_parameters_get_no_gradient_and_the_rest_match_torch(torch):
    m, ref = _pair(torch)
    _load(m, ref, torch)
    frozen = m.freeze("depthwise_sep_conv1")
    assert frozen == [n for n, _ in m.named_parameters() if n.startswith("depthwise_sep_conv1.")]
    for name, p in ref.named_parameters():
        p.requires_grad_(not name.startswith("depthwise_sep_conv1."))
    grads = _step_both(torch, m, ref, _x(), m.forward, m.backward, ref)
    for name, p in m.named_parameters():
        if name in frozen:
            assert not p.requires_grad and not p.grad.any(), name
        else:
            _close(p.grad, grads[name], name)
    assert m.unfreeze() and all(p.requires_grad for p in m.parameters())


def test_a_model_frozen_up_to_its_head_runs_only_the_head_backward(monkeypatch):
    """requires_grad_(False) then fc.requires_grad_(True): with input_grad=False the backward
    stops at fc (no block backward runs), and fc's gradient equals the full backward's."""
    m = MobileNetV1(0.25, 4, dtype=np.float64, seed=0)
    x, dout = _x(), np.random.default_rng(3).standard_normal((2, 4))
    m.forward(x)
    m.backward(dout.copy())
    want = m.fc.weight.grad.copy()
    assert m.requires_grad_(False) is m
    m.fc.requires_grad_(True)
    m.zero_grad()
    calls = []
    real = DepthwiseSeparableConv.backward
    monkeypatch.setattr(DepthwiseSeparableConv, "backward",
                        lambda self, d, **kw: calls.append(1) or real(self, d, **kw))  # fmt: skip
    m.forward(x)
    assert m.backward(dout.copy(), input_grad=False) is None
    assert calls == [] and not m.first_conv.conv.weight.grad.any()
    np.testing.assert_allclose(m.fc.weight.grad, want, rtol=1e-12)


def test_freeze_refuses_unknown_prefixes_and_non_bool_flags():
    m = MobileNetV1(0.25, 4, seed=0)
    with pytest.raises(ValueError, match=r"freeze: no parameter is named 'first_cnv'"):
        m.freeze("first_cnv")
    with pytest.raises(ValueError, match="no parameter is named 'depthwise_sep_conv'"):
        m.freeze("depthwise_sep_conv")  # a prefix matches whole dotted names only
    with pytest.raises(TypeError, match="requires_grad must be True or False, got str"):
        m.requires_grad_("False")


def test_units_walk_current_children_in_registration_order():
    m = MobileNetV1(0.25, 4, seed=0)
    labels = [label for label, _ in m.units()]
    assert labels[:2] == ["first_conv", "depthwise_sep_conv0"]
    assert labels[7:12] == [f"depthwise_sep_conv6 #{i}" for i in range(5)]
    assert labels[-4:] == ["avgpool", "flatten", "dropout", "fc"]
    block = m.depthwise_sep_conv6[2]
    m.depthwise_sep_conv6 = nn.ModuleList([block])  # a shorter stage, in the same place
    assert [label for label, _ in m.units()][7:9] == ["depthwise_sep_conv6 #0",
                                                      "depthwise_sep_conv7"]  # fmt: skip


def test_blocks_deleted_inserted_and_replaced_like_torch(torch):
    """Model surgery with the containers' list methods and ``del``, the same on both sides:
    the forward runs the blocks the model now holds, in training and through the fused engine,
    and the state_dict names follow torch's renumbering."""
    m, ref = _pair(torch)
    ours, theirs = m.depthwise_sep_conv6, ref.depthwise_sep_conv6
    block = type(theirs[0])

    def new(seed):
        return DepthwiseSeparableConv(128, 128, 1, "relu", np.float64).train()

    for side, make in ((ours, new), (theirs, lambda seed: block(512, 512).double())):
        del side[0]
        side.insert(1, make(0))
        side.append(make(1))
        side[-2] = make(2)
        del side[1:2]
        side.extend([make(3)])
    assert len(ours) == len(theirs) == 6
    assert list(m.state_dict()) == list(ref.state_dict())
    assert [type(b).__name__ for b in ours[2:]] == ["DepthwiseSeparableConv"] * 4
    assert list(ours[2:4].state_dict()) == list(theirs[2:4].state_dict())  # numbered from 0
    seq, tseq = nn.Sequential(nn.ReLU(), nn.Identity()), torch.nn.Sequential(
        torch.nn.ReLU(), torch.nn.Identity())  # fmt: skip
    assert list(seq[1:]._modules) == list(tseq[1:]._modules) == ["1"]  # names kept
    m.reset_parameters(3)
    _load(m, ref, torch)
    grads = _step_both(torch, m, ref, _x(), m.forward, m.backward, ref)
    for name, p in m.named_parameters():
        _close(p.grad, grads[name], name)
    m.eval(), ref.eval()
    _close(m.predict_proba(_x(4)), torch.softmax(ref(torch.from_numpy(_x(4))), 1), "fused")


def test_del_unregisters_a_parameter_or_a_block_like_torch(torch):
    lin, tlin = nn.Linear(3, 2, rng=0), torch.nn.Linear(3, 2)
    del lin.bias, tlin.bias
    assert list(lin.state_dict()) == list(tlin.state_dict()) == ["weight"]
    assert len(list(lin.parameters())) == 1
    m, ref = _pair(torch)
    del m.depthwise_sep_conv8  # 256 -> 256 channels: the model without it still fits
    ref.depthwise_sep_conv8 = torch.nn.Identity()
    assert list(m.state_dict()) == list(ref.state_dict())
    _load(m, ref, torch)
    grads = _step_both(torch, m, ref, _x(), m.forward, m.backward, ref)
    for name, p in m.named_parameters():
        _close(p.grad, grads[name], name)


def test_one_model_called_from_several_threads_gives_each_its_own_logits(torch):
    """Threads sharing one model (a server's pool calling model(x)) get the logits of their
    own input: forward and backward share the model's workspace, so they run one at a time."""
    import copy
    import time
    from concurrent.futures import ThreadPoolExecutor

    m, ref = _pair(torch)
    _load(m, ref, torch)
    m.eval(), ref.eval()
    inside, most = [], []  # the forwards of the model under way at once

    def enter(x, plain=m.first_conv.relu.forward):
        inside.append(x)
        most.append(len(inside))
        time.sleep(0.005)  # the other threads' turn
        return plain(x)

    def leave(x, plain=m.fc.forward):
        inside.pop()
        return plain(x)

    m.first_conv.relu.forward, m.fc.forward = enter, leave
    xs = [np.random.default_rng(i).standard_normal((2, 3, 64, 48)) for i in range(8)]
    for model in (m, copy.deepcopy(m)):  # a copy has a lock of its own
        with ThreadPoolExecutor(4) as pool:
            outs = list(pool.map(model, xs))
        for x, out in zip(xs, outs):
            _close(out, ref(torch.from_numpy(x)))
    assert max(most) == 1 and len(most) == 2 * len(xs)


def test_a_block_tied_in_two_places_is_counted_once_and_runs_twice_like_torch(torch):
    m, ref = _pair(torch)
    m.depthwise_sep_conv6[1] = m.depthwise_sep_conv6[0]  # weight tying
    ref.depthwise_sep_conv6[1] = ref.depthwise_sep_conv6[0]
    assert list(m.state_dict()) == list(ref.state_dict())
    assert [n for n, _ in m.named_parameters()] == [n for n, _ in ref.named_parameters()]
    s = m.summary(X_SHAPE[1:], batch_size=2)
    assert s.total_params == sum(p.numel() for p in ref.parameters())
    assert "depthwise_sep_conv6.1.dwconv" in [r.name for r in s.rows]
    _load(m, ref, torch)
    m.eval(), ref.eval()
    _close(m.predict_proba(_x()), torch.softmax(ref(torch.from_numpy(_x())), 1), "fused")
