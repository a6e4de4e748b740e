"""The package's own inference runs on the fused engine: ``evaluate``, ``Trainer.evaluate``,
``predict_proba`` in eval mode, ``npmobilenet evaluate`` / ``predict``. Each is checked against
the module path (``model.eval(); model.forward(x)``) and shown not to call it."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import TOL, Residual

from npmobilenet import ops
from npmobilenet.data import ArrayDataset, DataLoader, load_digits_dataset
from npmobilenet.models import MobileNetV1
from npmobilenet.nn import BatchNorm2d
from npmobilenet.optim import SGD
from npmobilenet.train import Trainer, evaluate


def _model(dtype=np.float32, seed=0):
    """A small model with non-trivial batch-norm statistics, in eval mode."""
    model = MobileNetV1(alpha=0.25, num_classes=10, in_channels=1, dtype=dtype, seed=seed)
    rng = np.random.default_rng(seed)
    for _, m in model.named_modules():
        if isinstance(m, BatchNorm2d):
            m.running_mean[...] = 0.2 * rng.standard_normal(m.num_features)
            m.running_var[...] = rng.uniform(0.5, 1.5, m.num_features)
    return model.eval()


def _data(n=40, dtype=np.float32):
    train, _ = load_digits_dataset(32, channels=1)
    return ArrayDataset(train.x[:n].astype(dtype), train.y[:n], train.classes)


def _module_path_result(model, data):
    """Loss, accuracy and predictions computed from the module path, written out."""
    logits = model.forward(data.x)  # (N, K)
    loss, _ = ops.cross_entropy_forward(logits.astype(np.float64), data.y)
    return float(loss), logits.argmax(axis=1)


def _forbid_forward(monkeypatch, model):
    """Make the model's class's forward raise (a forward set on the instance would be the
    user's own, which the engine must not replace)."""

    def refuse(self, x):
        raise AssertionError("the module path ran")

    monkeypatch.setattr(type(model), "forward", refuse)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_evaluate_in_eval_mode_runs_the_engine_and_matches_the_module_path(monkeypatch, dtype):
    model, data = _model(dtype), _data(dtype=dtype)
    loss, pred = _module_path_result(model, data)
    _forbid_forward(monkeypatch, model)
    result = evaluate(model, DataLoader(data, 16), 10)
    assert result["loss"] == pytest.approx(loss, rel=TOL[dtype]["rtol"] * 10)
    assert result["accuracy"] == pytest.approx(np.mean(pred == data.y))
    assert result["confusion"].sum() == 40


def test_trainer_evaluate_runs_the_engine(monkeypatch):
    model, data = _model(), _data()
    loss, pred = _module_path_result(model, data)
    model.train()
    trainer = Trainer(model, SGD(list(model.parameters()), lr=0.1), DataLoader(data, 16),
                      progress="none", log=None)  # fmt: skip
    _forbid_forward(monkeypatch, model)
    result = trainer.evaluate(DataLoader(data, 16))
    assert not model.training
    assert result["loss"] == pytest.approx(loss, rel=1e-5)
    assert result["accuracy"] == pytest.approx(np.mean(pred == data.y))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_predict_proba_in_eval_mode_runs_the_engine(monkeypatch, dtype):
    model, data = _model(dtype), _data(8, dtype)
    logits = model.forward(data.x)
    expected = np.exp(logits - logits.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    _forbid_forward(monkeypatch, model)
    probs = model.predict_proba(data.x)
    assert probs.dtype == dtype
    np.testing.assert_allclose(probs, expected, **TOL[dtype])
    with pytest.raises(TypeError, match="predict_proba: x has dtype"):  # checked like forward
        model.predict_proba(data.x.astype(np.float64 if dtype == np.float32 else np.float32))


def test_predict_proba_in_training_mode_uses_the_module_path(monkeypatch):
    model, data = _model(), _data(8)
    model.train()
    _forbid_forward(monkeypatch, model)
    with pytest.raises(AssertionError, match="the module path ran"):
        model.predict_proba(data.x)


def test_a_model_the_engine_cannot_fuse_is_evaluated_by_its_own_forward():
    model, data = _model(), _data()
    model.depthwise_sep_conv4 = Residual(model.depthwise_sep_conv4)
    calls = []
    forward = model.forward
    model.forward = lambda x: calls.append(len(x)) or forward(x)
    result = evaluate(model, DataLoader(data, 16), 10)
    assert calls == [16, 16, 8]
    probs = model.predict_proba(data.x[:4])
    assert probs.shape == (4, 10) and calls[-1] == 4
    assert result["n"] == 40
