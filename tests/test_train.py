"""The Trainer: its steps against torch, clipping, schedules, progress, a non-finite stop."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest

from npmobilenet.data import ArrayDataset, DataLoader, load_digits_dataset
from npmobilenet.models import MobileNetV1
from npmobilenet.nn.parameter import Parameter
from npmobilenet.optim import SGD
from npmobilenet.optim.lr_scheduler import OneCycleLR, StepLR
from npmobilenet.train import (
    NonFiniteLossError,
    Trainer,
    clip_grad_norm_,
    confusion_matrix,
    evaluate,
    format_confusion,
    load_checkpoint,
)


def digits(n=64, resolution=32, dtype=np.float32):
    train, _ = load_digits_dataset(resolution, channels=1)
    return ArrayDataset(train.x[:n].astype(dtype), train.y[:n], train.classes)


def make_trainer(dtype=np.float32, scheduler="onecycle", **kw):
    model = MobileNetV1(alpha=0.25, num_classes=10, in_channels=1, dtype=dtype, seed=0)
    opt = SGD(list(model.parameters()), lr=0.05, momentum=0.9, nesterov=True)
    loader = DataLoader(digits(64, 32, dtype), 16, shuffle=True, seed=0)
    sched = {"onecycle": lambda: OneCycleLR(opt, 0.05, epochs=2, steps_per_epoch=len(loader)),
             "step": lambda: StepLR(opt, step_size=1, gamma=0.5), "none": lambda: None}  # fmt: skip
    kw.setdefault("progress", "none")
    kw.setdefault("log", None)
    return Trainer(model, opt, loader, None, sched[scheduler](), **kw)


@pytest.mark.torch
@pytest.mark.parametrize("norm_type", [2.0, math.inf])
def test_clip_grad_norm_matches_torch(torch, rng, norm_type):
    shapes = [(4, 3), (5,), (2, 1, 3, 3)]
    for max_norm in (0.5, 1e3):  # clips / leaves alone
        grads = [rng.standard_normal(s) for s in shapes]
        params = [Parameter(np.zeros(s)) for s in shapes]
        for p, g in zip(params, grads):
            p.grad[...] = g
        tparams = [torch.zeros(s, dtype=torch.float64, requires_grad=True) for s in shapes]
        for t, g in zip(tparams, grads):
            t.grad = torch.from_numpy(g.copy())
        total = clip_grad_norm_(params, max_norm, norm_type)
        ttotal = torch.nn.utils.clip_grad_norm_(tparams, max_norm, norm_type)
        assert total == pytest.approx(ttotal.item(), rel=1e-12)
        for p, t in zip(params, tparams):
            np.testing.assert_allclose(p.grad, t.grad.numpy(), rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="clip_grad_norm_: norm_type must be 2 or inf, got 1"):
        clip_grad_norm_(params, 1.0, 1)


@pytest.mark.torch
def test_train_steps_match_torch_with_smoothing_and_clipping(torch):
    """Three float64 steps (forward, smoothed loss, backward, clip, Nesterov SGD, one-cycle) give
    torch's losses and weights; only three, since BN training is chaotic (see test_train_torch)."""
    from torch_reference import build_seed_mobilenet

    t = make_trainer(np.float64, label_smoothing=0.1, max_grad_norm=0.5)
    ref = build_seed_mobilenet(torch, alpha=0.25, num_classes=10, in_channels=1).double()
    ref.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in t.model.state_dict().items()})
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    ref_sched = torch.optim.lr_scheduler.OneCycleLR(ref_opt, 0.05, epochs=2, steps_per_epoch=4)
    batches = list(DataLoader(digits(64, 32, np.float64), 16, shuffle=True, seed=0))[:3]
    t.model.train()
    for x, y in batches:
        loss, correct = t.train_step(x, y)
        ref_opt.zero_grad()
        logits = ref(torch.from_numpy(x))
        tloss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(y), label_smoothing=0.1)
        tloss.backward()
        torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.5)
        ref_opt.step()
        ref_sched.step()
        assert loss == pytest.approx(tloss.item(), rel=1e-9)
        assert correct == int((logits.argmax(1).numpy() == y).sum())
    tparams = dict(ref.named_parameters())
    for name, p in t.model.named_parameters():
        np.testing.assert_allclose(p.data, tparams[name].detach().numpy(), rtol=1e-7, atol=1e-9)


def test_scheduler_steps_per_batch_for_one_cycle_and_per_epoch_otherwise():
    t = make_trainer(scheduler="onecycle")
    assert t.scheduler_interval == "batch"
    t.fit(1)
    assert t.scheduler.last_epoch == 4  # 4 batches
    s = make_trainer(scheduler="step")
    assert s.scheduler_interval == "epoch"
    s.fit(2)
    assert s.scheduler.last_epoch == 2
    assert s.history["lr"] == [0.05, 0.025]  # the rate each epoch trained with
    with pytest.raises(ValueError, match="scheduler_interval must be 'batch' or 'epoch'"):
        make_trainer(scheduler_interval="step")


def test_history_and_plain_progress_lines():
    lines = []
    t = make_trainer(progress="plain", log=lines.append)
    t.test_loader = DataLoader(digits(32), 32)
    t.fit(2)
    assert t.epoch == 2 and t.history["epoch"] == [1, 2]
    assert len(lines) == 2 and lines[1].startswith("epoch 2/2  lr ")
    assert "train loss" in lines[1] and "test loss" in lines[1] and "img/s" in lines[1]
    assert all(0 <= a <= 1 for a in t.history["train_accuracy"] + t.history["test_accuracy"])


def test_forced_progress_bar_shows_loss_accuracy_and_speed(monkeypatch):
    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    t = make_trainer(progress="bar")
    t.fit(1)
    text = err.getvalue()
    assert "epoch 1" in text and "loss " in text and "acc " in text and "img/s" in text


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    t = make_trainer(scheduler="none")
    path = tmp_path / "ckpt.safetensors"
    t.fit(1, checkpoint_path=path)
    good = {k: v.copy() for k, v in t.model.state_dict().items()}
    for g in t.optimizer.param_groups:
        g["lr"] = 1e30  # the weights overflow within a step or two
    with np.errstate(all="ignore"):  # the overflow itself is the point here
        with pytest.raises(NonFiniteLossError, match=r"loss is (nan|inf) at epoch 2, batch"):
            t.fit(2, checkpoint_path=path)
    ckpt = load_checkpoint(path)
    assert ckpt["epoch"] == 1
    for k, v in good.items():
        np.testing.assert_array_equal(ckpt["model"][k], v)


def test_evaluate_and_confusion_matrix():
    t = make_trainer()
    data = digits(40)
    t.model.eval()
    result = evaluate(t.model, DataLoader(data, 16), 10)
    logits = t.model.forward(data.x)
    pred = logits.argmax(axis=1)
    want = np.zeros((10, 10), np.int64)
    for a, b in zip(data.y, pred):
        want[a, b] += 1
    np.testing.assert_array_equal(result["confusion"], want)
    assert result["accuracy"] == pytest.approx(np.mean(pred == data.y))
    logp = logits - logits.max(1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(1, keepdims=True))
    assert result["loss"] == pytest.approx(-logp[np.arange(40), data.y].mean(), rel=1e-5)
    np.testing.assert_array_equal(confusion_matrix(np.array([0, 1, 1]), np.array([1, 1, 0]), 2),
                                  [[0, 1], [1, 1]])  # fmt: skip
    text = format_confusion(np.array([[3, 1], [0, 4]]), ["cat", "dog"])
    assert text.splitlines()[-1].split() == ["dog", "|", "0", "4"]


def test_trainer_argument_errors():
    with pytest.raises(ValueError, match="Trainer: label_smoothing must be <= 1"):
        make_trainer(label_smoothing=1.5)
    with pytest.raises(ValueError, match="Trainer: max_grad_norm must be > 0"):
        make_trainer(max_grad_norm=0)
    with pytest.raises(ValueError, match="Trainer: progress must be 'auto', 'bar', 'plain'"):
        make_trainer(progress="fancy")


@pytest.mark.torch
def test_clipping_covers_the_parameters_unfrozen_after_the_trainer_was_built(torch):
    """Fine-tuning: built with the features frozen, then everything unfrozen (as a user's
    on_epoch_end does): the clip's norm takes in every gradient trained now, as torch's
    clip_grad_norm_(model.parameters()) does."""
    from torch_reference import build_seed_mobilenet

    t = make_trainer(np.float64, scheduler="none", max_grad_norm=0.05)
    t.model.freeze()
    t.model.unfreeze("fc")
    t = Trainer(t.model, SGD(list(t.model.parameters()), lr=0.05), t.train_loader,
                progress="none", log=None, max_grad_norm=0.05)  # fmt: skip
    t.model.unfreeze()
    ref = build_seed_mobilenet(torch, alpha=0.25, num_classes=10, in_channels=1).double()
    ref.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in t.model.state_dict().items()})
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.05)
    x, y = next(iter(DataLoader(digits(16, 32, np.float64), 16)))
    t.model.train()
    t.train_step(x, y)
    torch.nn.functional.cross_entropy(ref(torch.from_numpy(x)), torch.from_numpy(y)).backward()
    torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.05)
    ref_opt.step()
    tparams = dict(ref.named_parameters())
    for name, p in t.model.named_parameters():
        np.testing.assert_allclose(p.data, tparams[name].detach().numpy(), rtol=1e-7, atol=1e-9)


def test_a_model_of_your_own_trains_evaluates_and_checkpoints(tmp_path):
    from npmobilenet import nn

    def net(seed):
        return nn.Sequential(nn.Conv2d(1, 4, 3, stride=2, rng=seed), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(4, 10, rng=seed))  # fmt: skip

    data = digits(32, 16)
    model = net(0)
    t = Trainer(model, SGD(list(model.parameters()), lr=0.1), DataLoader(data, 8, seed=0),
                DataLoader(data, 8), progress="none", log=None)  # fmt: skip
    t.fit(1, checkpoint_path=tmp_path / "own.ckpt")
    model.eval()
    logits = np.concatenate([model(x) for x, _ in DataLoader(data, 8)]).astype(np.float64)
    shifted = logits - logits.max(1, keepdims=True)  # naive log-softmax
    nll = np.log(np.exp(shifted).sum(1)) - shifted[np.arange(len(data.y)), data.y]
    assert t.history["test_loss"][0] == pytest.approx(nll.mean(), rel=1e-5)
    result = t.evaluate(DataLoader(data, 8))
    naive = np.zeros((10, 10), np.int64)
    for true, guess in zip(data.y, logits.argmax(1)):
        naive[true, guess] += 1
    np.testing.assert_array_equal(result["confusion"], naive)
    other = net(1)
    back = Trainer(other, SGD(list(other.parameters()), lr=0.1), DataLoader(data, 8, seed=0),
                   progress="none", log=None)  # fmt: skip
    back.load_checkpoint(tmp_path / "own.ckpt")
    assert back.epoch == 1
    for (name, a), b in zip(model.state_dict().items(), other.state_dict().values()):
        np.testing.assert_array_equal(a, b, err_msg=name)
