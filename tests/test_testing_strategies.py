"""The public Hypothesis strategies of npmobilenet.testing draw only valid configurations.

Every drawn configuration is run through the op it describes and through PyTorch's functional
counterpart (the independent reference): both must accept it, agree with each other, and
produce the output shape the configuration promises.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import TOL
from hypothesis import given, settings
from hypothesis import strategies as st

from npmobilenet import nn, ops
from npmobilenet.gradcheck import check_module
from npmobilenet.models import MobileNetV1
from npmobilenet.testing import (
    batch_norm_configs,
    batch_norm_kwargs,
    cross_entropy_configs,
    cross_entropy_kwargs,
    dropout_configs,
    dropout_kwargs,
    linear_configs,
    make_batch_norm_inputs,
    make_cross_entropy_inputs,
    make_linear_inputs,
    module_inputs,
    softmax_configs,
)

SEEDS = st.integers(0, 2**16)


def _t(torch, a):
    return None if a is None else torch.from_numpy(np.array(a))


def _close(got, want, dtype):
    np.testing.assert_allclose(got, want, **TOL[np.dtype(dtype).type])


@given(cfg=batch_norm_configs(), seed=SEEDS)
def test_batch_norm_configs(torch, cfg, seed):
    a = make_batch_norm_inputs(cfg, seed)
    ours = {k: (v.copy() if v is not None else None) for k, v in a.items()}
    out, cache = ops.batch_norm_forward(**ours, **batch_norm_kwargs(cfg))
    assert out.shape == cfg["out_shape"] and out.dtype == cfg["dtype"]
    dx, dw, db = ops.batch_norm_backward(np.ones_like(out), cache)
    assert dx.shape == out.shape and (dw is None) == (not cfg["affine"])
    rm, rv = _t(torch, a["running_mean"]), _t(torch, a["running_var"])
    want = torch.nn.functional.batch_norm(
        _t(torch, a["x"]), rm, rv, _t(torch, a["weight"]), _t(torch, a["bias"]),
        **batch_norm_kwargs(cfg),
    )  # fmt: skip
    _close(out, want.numpy(), cfg["dtype"])
    _close(ours["running_mean"], rm.numpy(), cfg["dtype"])
    _close(ours["running_var"], rv.numpy(), cfg["dtype"])


@given(cfg=linear_configs(), seed=SEEDS)
def test_linear_configs(torch, cfg, seed):
    a = make_linear_inputs(cfg, seed)
    out, cache = ops.linear_forward(**a)
    assert out.shape == cfg["out_shape"] and out.dtype == cfg["dtype"]
    dx, dw, db = ops.linear_backward(np.ones_like(out), cache)
    assert dx.shape == cfg["x_shape"] and dw.shape == cfg["weight_shape"]
    assert (db is None) == (not cfg["bias"])
    want = torch.nn.functional.linear(*(_t(torch, a[k]) for k in ("x", "weight", "bias")))
    _close(out, want.numpy(), cfg["dtype"])


@given(cfg=softmax_configs(), seed=SEEDS)
def test_softmax_configs(torch, cfg, seed):
    x = (np.random.default_rng(seed).standard_normal(cfg["x_shape"]) * cfg["scale"]).astype(
        cfg["dtype"]
    )
    p, logp = ops.softmax(x, axis=cfg["axis"]), ops.log_softmax(x, axis=cfg["axis"])
    assert p.shape == logp.shape == cfg["out_shape"]
    assert np.all(np.isfinite(logp))
    _close(p.sum(axis=cfg["axis"]), np.ones(np.delete(cfg["x_shape"], cfg["axis"])), p.dtype)
    _close(logp, torch.log_softmax(_t(torch, x), dim=cfg["axis"]).numpy(), cfg["dtype"])


@given(cfg=cross_entropy_configs(), seed=SEEDS)
def test_cross_entropy_configs(torch, cfg, seed):
    a = make_cross_entropy_inputs(cfg, seed)
    loss, cache = ops.cross_entropy_forward(**a, **cross_entropy_kwargs(cfg))
    assert np.shape(loss) == cfg["out_shape"] and np.all(np.isfinite(loss))
    dloss = np.ones(cfg["out_shape"], cfg["dtype"]) if cfg["reduction"] == "none" else 1.0
    assert ops.cross_entropy_backward(dloss, cache).shape == cfg["logits_shape"]
    want = torch.nn.functional.cross_entropy(
        _t(torch, a["logits"]), _t(torch, a["target"]), **cross_entropy_kwargs(cfg)
    )
    _close(loss, want.numpy(), cfg["dtype"])


@given(cfg=dropout_configs(), seed=SEEDS)
def test_dropout_configs(cfg, seed):
    x = np.random.default_rng(seed).uniform(1, 2, cfg["x_shape"]).astype(cfg["dtype"])
    out, cache = ops.dropout_forward(x, **dropout_kwargs(cfg))
    assert out.shape == cfg["out_shape"] and out.dtype == cfg["dtype"]
    if not cfg["training"] or cfg["p"] == 0:
        np.testing.assert_array_equal(out, x)
    elif cfg["p"] == 1:
        assert not np.any(out)
    else:  # every element dropped or scaled by 1 / (1 - p), independently of the torch RNG
        kept = out != 0
        _close(out[kept], x[kept] / (1 - cfg["p"]), cfg["dtype"])
    assert ops.dropout_backward(np.ones_like(out), cache).shape == cfg["x_shape"]


MODULES = {
    "conv": lambda: nn.Conv2d(2, 3, 3, stride=2, rng=0),
    "batch norm (train)": lambda: nn.BatchNorm2d(3),
    "linear": lambda: nn.Linear(5, 2, rng=0),
    "max pool": lambda: nn.MaxPool2d(3, stride=2),
    "relu only": lambda: nn.Sequential(nn.ReLU(), nn.Dropout(0.3, rng=0)),
    "conv-flatten-linear": lambda: nn.Sequential(
        nn.Conv2d(1, 2, 3, rng=0), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 3 * 3, 2, rng=1)
    ),
    "pool-bn": lambda: nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.BatchNorm2d(4)),
}


@pytest.mark.parametrize("name", list(MODULES))
@given(data=st.data())
def test_module_inputs_run_forward_and_backward(name, data):
    module = MODULES[name]()
    x = data.draw(module_inputs(module, max_size=6))
    dtype = next((p.dtype for p in module.parameters()), np.dtype(np.float64))
    assert x.dtype == dtype
    out = module.forward(x)
    assert module.backward(np.ones_like(out)).shape == x.shape


@settings(max_examples=5)  # a whole model per example
@given(data=st.data())
def test_module_inputs_for_a_whole_model(data):
    model = MobileNetV1(alpha=0.25, num_classes=3, seed=0)
    x = data.draw(module_inputs(model, max_size=4))
    assert x.shape[1] == 3 and x.shape[0] >= 2 and x.dtype == np.float32
    out = model.forward(x)
    assert out.shape == (x.shape[0], 3)
    assert model.backward(np.ones_like(out)).shape == x.shape


@given(data=st.data())
def test_module_inputs_feed_check_module(data):
    block = nn.Sequential(nn.Conv2d(2, 2, 3, padding=1, rng=0), nn.BatchNorm2d(2), nn.ReLU6())
    x = data.draw(module_inputs(block, max_batch=2, max_size=3))
    assert x.shape[:2] in ((2, 2),) and x.ndim == 4  # batch norm in training: N >= 2
    check_module(block, x, fast=True, atol=1e-6)


def test_module_inputs_refuses_a_module_it_cannot_read():
    class Custom(nn.Module):
        def forward(self, x):
            return x

    with pytest.raises(TypeError, match="module_inputs: cannot tell the input layout of Custom"):
        module_inputs(Custom())
    with pytest.raises(TypeError, match="module_inputs: module must be an npmobilenet.nn.Module"):
        module_inputs("conv")
